//! The chat message, the domain type every layer passes around: rooms
//! sequence it, the broker fans it out, stores keep it. Its wire forms (frames,
//! history objects, acks) are in [`crate::protocol`].
//!
//! A room's log holds messages and the changes made to them (edits, deletes,
//! reactions), each with its own seq: a [`ChatMessage`] is either, told apart
//! by its [`Kind`]. How changes apply to a message is in [`crate::changes`].
//! Membership events (a room created, members added, removed, muted) are
//! entries too; who may do what is in [`crate::access`].

/// What an entry of a room's log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Kind {
    /// A chat message (possibly a reply).
    #[default]
    Message,
    /// New content for `target` (by its author).
    Edit,
    /// `target` deleted (by its author or a moderator).
    Delete,
    /// The sender's reaction `content` (an emoji) added to `target`.
    React,
    /// The sender's reaction `content` removed from `target`.
    Unreact,
    /// The room got its kind and first members (`content`: [`crate::access::EventBody`]).
    RoomCreated,
    /// User `target` became a member, or their role changed.
    MemberAdded,
    /// User `target` left, or was removed, kicked or banned.
    MemberRemoved,
    /// User `target` was muted until a time (or unmuted).
    MemberMuted,
    /// User `target`'s ban was lifted.
    MemberUnbanned,
}

impl Kind {
    /// The name stored in the database and carried through Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Edit => "edit",
            Kind::Delete => "delete",
            Kind::React => "react",
            Kind::Unreact => "unreact",
            Kind::RoomCreated => "room_created",
            Kind::MemberAdded => "member_added",
            Kind::MemberRemoved => "member_removed",
            Kind::MemberMuted => "member_muted",
            Kind::MemberUnbanned => "member_unbanned",
        }
    }

    /// An edit, delete or reaction: `target` is a message id.
    pub fn is_change(self) -> bool {
        matches!(
            self,
            Kind::Edit | Kind::Delete | Kind::React | Kind::Unreact
        )
    }

    /// A membership event: `target` (when there is one) is a user id.
    pub fn is_membership(self) -> bool {
        matches!(
            self,
            Kind::RoomCreated
                | Kind::MemberAdded
                | Kind::MemberRemoved
                | Kind::MemberMuted
                | Kind::MemberUnbanned
        )
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "message" => Kind::Message,
            "edit" => Kind::Edit,
            "delete" => Kind::Delete,
            "react" => Kind::React,
            "unreact" => Kind::Unreact,
            "room_created" => Kind::RoomCreated,
            "member_added" => Kind::MemberAdded,
            "member_removed" => Kind::MemberRemoved,
            "member_muted" => Kind::MemberMuted,
            "member_unbanned" => Kind::MemberUnbanned,
            _ => return None,
        })
    }
}

/// One emoji's reactions on a message, as history shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactionSummary {
    pub emoji: String,
    pub count: u64,
    /// The first few users who reacted (oldest first).
    pub users: Vec<String>,
}

/// Users listed per emoji in history objects.
pub const REACTION_USERS_SHOWN: usize = 5;

/// One entry of a room's log: its identity (room, seq, id, timestamp) is
/// fixed when it is accepted and never changes. A message read back from the
/// store carries its current state (`edited_at_ms`, `deleted`, `reactions`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChatMessage {
    pub room: String,
    pub seq: u64,
    pub id: String,
    pub user_id: String,
    pub user_name: String,
    /// A message's or an edit's text, a reaction's emoji; empty for a delete
    /// and for a deleted message.
    pub content: String,
    pub timestamp_ms: i64,
    pub client_ref: Option<String>,
    pub kind: Kind,
    /// The message a change applies to.
    pub target: Option<String>,
    /// The message a message replies to.
    pub reply_to: Option<String>,
    /// When a message was last edited (state, not part of the event).
    pub edited_at_ms: Option<i64>,
    /// A message that was deleted (its content is gone).
    pub deleted: bool,
    /// A message's reactions (filled by history reads only).
    pub reactions: Vec<ReactionSummary>,
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
            timestamp_ms: self.timestamp_ms,
            client_ref: self.client_ref.clone(),
            ..ChatMessage::default()
        }
    }

    pub fn is_message(&self) -> bool {
        self.kind == Kind::Message
    }
}
