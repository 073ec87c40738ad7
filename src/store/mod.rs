//! The store seam: where accepted messages are kept. Embedded mode uses SQLite,
//! cluster mode Postgres; actors only see [`Store`].

pub mod postgres;
mod schema;
pub mod sqlite;

use crate::protocol::ChatMessage;
use async_trait::async_trait;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("migration failed: {0}")]
    Migrate(String),
}

/// A room as `GET /api/rooms` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    pub name: String,
    pub last_seq: u64,
}

/// A recently accepted send that carried a `ref`, to rebuild the dedupe window at startup.
#[derive(Debug, Clone)]
pub struct RecentRef {
    pub message: ChatMessage,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Commits a batch (in seq order per room) in one transaction; all or nothing.
    async fn insert_batch(&self, batch: Vec<Arc<ChatMessage>>) -> Result<(), StoreError>;
    /// The newest seq a room ever had (0 for a new room).
    async fn last_seq(&self, room: &str) -> Result<u64, StoreError>;
    /// Messages with `after < seq <= upto`, oldest first.
    async fn range(
        &self,
        room: &str,
        after: u64,
        upto: u64,
    ) -> Result<Vec<ChatMessage>, StoreError>;
    /// The newest `limit` messages with `seq < before` (all when `None`), oldest first.
    async fn page(
        &self,
        room: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<ChatMessage>, StoreError>;
    /// Every room that has messages, with its newest seq.
    async fn rooms(&self) -> Result<Vec<RoomSummary>, StoreError>;
    /// Messages accepted since `since_ms` that carried a client ref.
    async fn recent_refs(&self, since_ms: i64) -> Result<Vec<RecentRef>, StoreError>;
    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Transactions worth running at once: a second one overlaps the first's
    /// commit on a server with concurrent writers; SQLite has one writer, and
    /// a second transaction would only sleep in its busy handler.
    fn concurrent_writes(&self) -> usize {
        2
    }
}

pub type SharedStore = Arc<dyn Store>;

/// One row of `messages`, as both backends read and write it.
#[derive(Debug, Clone, diesel::Queryable, diesel::Selectable, diesel::Insertable)]
#[diesel(table_name = schema::messages)]
struct MessageRow {
    room: String,
    seq: i64,
    id: String,
    user_id: String,
    user_name: String,
    content: String,
    created_at_ms: i64,
    client_ref: Option<String>,
}

impl From<&ChatMessage> for MessageRow {
    fn from(m: &ChatMessage) -> Self {
        MessageRow {
            room: m.room.clone(),
            seq: m.seq as i64,
            id: m.id.clone(),
            user_id: m.user_id.clone(),
            user_name: m.user_name.clone(),
            content: m.content.clone(),
            created_at_ms: m.timestamp_ms,
            client_ref: m.client_ref.clone(),
        }
    }
}

impl From<MessageRow> for ChatMessage {
    fn from(r: MessageRow) -> Self {
        ChatMessage {
            room: r.room,
            seq: r.seq.max(0) as u64,
            id: r.id,
            user_id: r.user_id,
            user_name: r.user_name,
            content: r.content,
            timestamp_ms: r.created_at_ms,
            client_ref: r.client_ref,
        }
    }
}

/// The newest seq per room in a batch, for the `rooms` table.
fn room_heads(batch: &[Arc<ChatMessage>]) -> Vec<(String, i64, i64)> {
    let mut heads: Vec<(String, i64, i64)> = Vec::new();
    for m in batch {
        match heads.iter_mut().find(|(room, _, _)| *room == m.room) {
            Some(head) => head.1 = head.1.max(m.seq as i64),
            None => heads.push((m.room.clone(), m.seq as i64, m.timestamp_ms)),
        }
    }
    heads
}

/// Opens the configured store, running pending migrations first.
pub async fn open(config: &crate::config::Config) -> Result<SharedStore, StoreError> {
    use crate::config::StoreLocation;
    match config
        .storage
        .location()
        .map_err(|e| StoreError::Connect(e.to_string()))?
    {
        StoreLocation::Sqlite(path) => {
            let store = sqlite::SqliteStore::open(&path, config.storage.pool_size).await?;
            Ok(Arc::new(store))
        }
        StoreLocation::Postgres(url) => {
            let store = postgres::PgStore::open(&url, config.storage.pool_size).await?;
            Ok(Arc::new(store))
        }
    }
}

/// `confab migrate`: apply pending migrations and return.
pub async fn migrate(config: &crate::config::Config) -> Result<(), StoreError> {
    use crate::config::StoreLocation;
    match config
        .storage
        .location()
        .map_err(|e| StoreError::Connect(e.to_string()))?
    {
        StoreLocation::Postgres(url) => postgres::migrate(&url).await,
        StoreLocation::Sqlite(_) => open(config).await.map(|_| ()),
    }
}
