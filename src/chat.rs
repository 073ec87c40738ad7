//! The chat message, the domain type every layer passes around: rooms
//! sequence it, the broker fans it out, stores keep it. Its wire forms (frames,
//! history objects, acks) are in [`crate::protocol`].

/// One accepted chat message: its identity (room, seq, id, timestamp) is fixed
/// when it is accepted and never changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub room: String,
    pub seq: u64,
    pub id: String,
    pub user_id: String,
    pub user_name: String,
    pub content: String,
    pub timestamp_ms: i64,
    pub client_ref: Option<String>,
}

impl ChatMessage {
    /// A copy with only what an ack needs (room, seq, id, timestamp, and the
    /// sender and ref that key it): what the idempotency window keeps for ten
    /// minutes, without the content.
    pub fn ack_fields(&self) -> ChatMessage {
        ChatMessage {
            room: self.room.clone(),
            seq: self.seq,
            id: self.id.clone(),
            user_id: self.user_id.clone(),
            user_name: String::new(),
            content: String::new(),
            timestamp_ms: self.timestamp_ms,
            client_ref: self.client_ref.clone(),
        }
    }
}
