//! The store seam: where accepted messages are kept. Embedded mode uses SQLite,
//! cluster mode Postgres; actors only see [`Store`].

pub mod postgres;
mod schema;
pub mod sqlite;

use crate::chat::ChatMessage;
use async_trait::async_trait;
use std::sync::Arc;

/// A store operation that failed. Each variant keeps the underlying error as
/// its `source()`; the message shows it too (one line), as the logs print
/// only the message.
#[derive(Debug)]
pub enum StoreError {
    /// `database error: …`
    Query(diesel::result::Error),
    /// `cannot connect to the database: …`
    Connect(Unreachable),
    /// `migration failed: …`
    Migrate(Cause),
}

/// The error underneath a store error: a driver's, a pool's, a task's.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

impl StoreError {
    /// The database could not be reached or opened: `what` (its redacted
    /// address, a path; empty when the cause says it all) failed because of
    /// `cause`.
    pub fn connect(what: impl Into<String>, cause: impl Into<Cause>) -> Self {
        StoreError::Connect(Unreachable {
            what: what.into(),
            cause: Some(cause.into()),
        })
    }

    pub fn migrate(cause: impl Into<Cause>) -> Self {
        StoreError::Migrate(cause.into())
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Query(e) => write!(f, "database error: {e}"),
            StoreError::Connect(u) => write!(f, "cannot connect to the database: {u}"),
            StoreError::Migrate(e) => {
                write!(f, "migration failed: {}", one_line(&e.to_string()))
            }
        }
    }
}

/// The source of `Connect` is its cause itself ([`Unreachable`] is only the
/// context), so a printed chain names each error once after the message.
impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Query(e) => Some(e),
            StoreError::Connect(u) => u.cause.as_deref().map(|c| c as _),
            StoreError::Migrate(e) => Some(e.as_ref()),
        }
    }
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        StoreError::Query(e)
    }
}

/// Why the database could not be reached: what failed, and the underlying
/// error when there is one (a timeout has none). Shown as `what: cause`, the
/// cause on one line.
#[derive(Debug)]
pub struct Unreachable {
    pub what: String,
    pub cause: Option<Cause>,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.cause, self.what.is_empty()) {
            (None, _) => f.write_str(&self.what),
            (Some(cause), true) => f.write_str(&one_line(&cause.to_string())),
            (Some(cause), false) => write!(f, "{}: {}", self.what, one_line(&cause.to_string())),
        }
    }
}

/// Without a cause: `what` says why (a timeout, a failed batch).
impl From<String> for Unreachable {
    fn from(what: String) -> Self {
        Unreachable { what, cause: None }
    }
}

impl From<&str> for Unreachable {
    fn from(what: &str) -> Self {
        what.to_string().into()
    }
}

/// A database's message on one line (Postgres's span several).
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
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
    /// For `/readyz`: a real write (one row of `confab_probe` updated and
    /// committed), so a full disk or a read-only file shows, and an error if
    /// a message batch failed to commit within the last [`WRITE_FAILURE_HOLD`].
    async fn ping(&self) -> Result<(), StoreError>;
    /// Transactions worth running at once: a second one overlaps the first's
    /// commit on a server with concurrent writers; SQLite has one writer, and
    /// a second transaction would only sleep in its busy handler.
    fn concurrent_writes(&self) -> usize {
        2
    }
}

pub type SharedStore = Arc<dyn Store>;

/// How long a failed message write keeps `/readyz` at 503 (a probe row can
/// still commit while message pages can't, e.g. a corrupted page). Bounded,
/// so an instance taken out of rotation can become ready again.
pub const WRITE_FAILURE_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

/// The outcome of the store's latest message writes, for `/readyz`.
#[derive(Debug, Default)]
pub struct WriteHealth {
    /// When a batch last failed (ms since the epoch); 0 after a success.
    failed_at_ms: std::sync::atomic::AtomicI64,
}

impl WriteHealth {
    pub fn note<T>(&self, result: &Result<T, StoreError>) {
        let at = match result {
            Ok(_) => 0,
            Err(_) => crate::protocol::now_ms(),
        };
        self.failed_at_ms
            .store(at, std::sync::atomic::Ordering::Relaxed);
    }

    /// Err while the latest batch failed within [`WRITE_FAILURE_HOLD`].
    pub fn check(&self) -> Result<(), StoreError> {
        let at = self.failed_at_ms.load(std::sync::atomic::Ordering::Relaxed);
        let hold = WRITE_FAILURE_HOLD.as_millis() as i64;
        if at != 0 && crate::protocol::now_ms() - at < hold {
            return Err(StoreError::Connect(
                "the latest message batch failed to commit".into(),
            ));
        }
        Ok(())
    }
}

/// The probe `/readyz` commits (both backends speak this upsert).
pub fn probe_sql() -> String {
    format!(
        "INSERT INTO confab_probe (id, at) VALUES (1, {}) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        crate::protocol::now_ms()
    )
}

/// The pipeline's side of the store, off the message path: export, import,
/// retention and the analytics counters.
#[async_trait]
pub trait Pipeline: Send + Sync + 'static {
    /// Messages with `seq > after`, oldest first, at most `limit`: export pages
    /// through a room with this, so it never holds more than a page.
    async fn after(
        &self,
        room: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<ChatMessage>, StoreError>;
    /// Inserts messages that may already be there (import): a (room, seq)
    /// that exists is left as it is, and a room's head never moves back.
    async fn import_batch(&self, batch: Vec<Arc<ChatMessage>>) -> Result<(), StoreError>;
    /// Deletes at most `limit` messages older than `cutoff_ms`; how many went.
    async fn delete_older_than(&self, cutoff_ms: i64, limit: u32) -> Result<usize, StoreError>;
    /// Adds rooms' messages to the analytics counters, exactly once (see
    /// [`Tally`]); returns each room's counted seq afterwards.
    async fn count_activity(
        &self,
        rooms: Vec<RoomActivity>,
    ) -> Result<Vec<(String, u64)>, StoreError>;
    /// The seq each room's counters include (0 when none): what the analytics
    /// stage still has to count.
    async fn uncounted_rooms(&self) -> Result<Vec<(String, u64, u64)>, StoreError>;
    /// Every counter row of a room from `since_ms` on.
    async fn activity(&self, room: &str, since_ms: i64) -> Result<Vec<ActivityRow>, StoreError>;
    /// Per room: messages and distinct posters from `since_ms` on (the gauges).
    async fn activity_totals(&self, since_ms: i64) -> Result<Vec<(String, u64, u64)>, StoreError>;
    /// Drops counter rows older than any stats window needs.
    async fn prune_activity(&self, before_ms: i64) -> Result<usize, StoreError>;
}

pub type SharedPipeline = Arc<dyn Pipeline>;

/// One message as the analytics counters see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedMessage {
    pub seq: u64,
    pub timestamp_ms: i64,
    pub user_id: String,
    pub user_name: String,
    /// ISO 639-3 code, or "und".
    pub lang: String,
}

/// A room's messages for the counters, in seq order.
#[derive(Debug, Clone)]
pub struct RoomActivity {
    pub room: String,
    pub messages: Vec<CountedMessage>,
    /// Count from the first message above the counted seq even when seqs
    /// are missing in between (they were deleted or can't be read).
    pub skip_gap: bool,
}

/// One counter: a room's messages in one minute by one poster in one language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityRow {
    pub minute_ms: i64,
    pub user_id: String,
    pub user_name: String,
    pub lang: String,
    pub messages: u64,
}

/// What counting a room adds, given the seq its counters already include:
/// only messages above it, and only while seqs follow on without a gap
/// (unless `skip_gap`), so a message is never counted twice or skipped.
/// `None` when nothing can be counted yet.
pub fn tally(activity: &RoomActivity, counted_seq: u64) -> Option<(u64, Vec<ActivityRow>)> {
    let mut next = counted_seq + 1;
    let mut rows: Vec<ActivityRow> = Vec::new();
    for m in activity.messages.iter().filter(|m| m.seq > counted_seq) {
        if m.seq < next {
            continue; // a duplicate in the input
        }
        if m.seq > next && !(activity.skip_gap && rows.is_empty()) {
            break;
        }
        next = m.seq + 1;
        let minute_ms = m.timestamp_ms - m.timestamp_ms.rem_euclid(60_000);
        match rows
            .iter_mut()
            .find(|r| r.minute_ms == minute_ms && r.user_id == m.user_id && r.lang == m.lang)
        {
            Some(row) => {
                row.messages += 1;
                row.user_name.clone_from(&m.user_name);
            }
            None => rows.push(ActivityRow {
                minute_ms,
                user_id: m.user_id.clone(),
                user_name: m.user_name.clone(),
                lang: m.lang.clone(),
                messages: 1,
            }),
        }
    }
    (!rows.is_empty()).then_some((next - 1, rows))
}

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

/// Rooms whose newest seq is above what their counters include. `?`-free so
/// both backends run it as is.
const UNCOUNTED_ROOMS: &str = "SELECT r.name AS room, COALESCE(a.counted_seq, 0) AS counted_seq, \
     r.last_seq AS last_seq FROM rooms r LEFT JOIN analytics_rooms a ON a.room = r.name \
     WHERE r.last_seq > COALESCE(a.counted_seq, 0)";

#[derive(diesel::QueryableByName)]
struct UncountedRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    room: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    counted_seq: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    last_seq: i64,
}

impl UncountedRow {
    fn into_tuple(self) -> (String, u64, u64) {
        (
            self.room,
            self.counted_seq.max(0) as u64,
            self.last_seq.max(0) as u64,
        )
    }
}

/// Per room from a minute on: messages and distinct posters. `$1` is SQLite's
/// `?` too (numbered parameters).
const ACTIVITY_TOTALS: &str = "SELECT room, CAST(SUM(messages) AS BIGINT) AS messages, \
     COUNT(DISTINCT user_id) AS users FROM room_activity WHERE minute_ms >= $1 GROUP BY room";

#[derive(diesel::QueryableByName)]
struct TotalsRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    room: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    messages: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    users: i64,
}

impl TotalsRow {
    fn into_tuple(self) -> (String, u64, u64) {
        (
            self.room,
            self.messages.max(0) as u64,
            self.users.max(0) as u64,
        )
    }
}

fn activity_row(
    (minute_ms, user_id, user_name, lang, messages): (i64, String, String, String, i64),
) -> ActivityRow {
    ActivityRow {
        minute_ms,
        user_id,
        user_name,
        lang,
        messages: messages.max(0) as u64,
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
    open_with_pipeline(config).await.map(|(store, _)| store)
}

/// [`open`], and the same store's [`Pipeline`] side.
pub async fn open_with_pipeline(
    config: &crate::config::Config,
) -> Result<(SharedStore, SharedPipeline), StoreError> {
    use crate::config::StoreLocation;
    match config
        .storage
        .location()
        .map_err(|e| StoreError::connect("", e))?
    {
        StoreLocation::Sqlite(path) => {
            let store = Arc::new(sqlite::SqliteStore::open(&path, config.storage.pool_size).await?);
            Ok((store.clone(), store))
        }
        StoreLocation::Postgres(url) => {
            let store = postgres::PgStore::open(&url, config.storage.pool_size).await?;
            let store = Arc::new(if config.cluster_mode() {
                store
            } else {
                store.refusing_taken_seqs()
            });
            Ok((store.clone(), store))
        }
    }
}

/// `confab migrate`: apply pending migrations and return.
pub async fn migrate(config: &crate::config::Config) -> Result<(), StoreError> {
    use crate::config::StoreLocation;
    match config
        .storage
        .location()
        .map_err(|e| StoreError::connect("", e))?
    {
        StoreLocation::Postgres(url) => postgres::migrate(&url).await,
        StoreLocation::Sqlite(_) => open(config).await.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, ts: i64, user: &str) -> CountedMessage {
        CountedMessage {
            seq,
            timestamp_ms: ts,
            user_id: user.into(),
            user_name: user.to_uppercase(),
            lang: "eng".into(),
        }
    }

    fn room(messages: Vec<CountedMessage>, skip_gap: bool) -> RoomActivity {
        RoomActivity {
            room: "r".into(),
            messages,
            skip_gap,
        }
    }

    #[test]
    fn counts_only_above_the_counted_seq_and_groups_by_minute_user_and_language() {
        let a = room(
            vec![
                msg(1, 60_000, "a"),
                msg(2, 60_500, "a"),
                msg(3, 120_000, "b"),
                msg(4, 119_999, "a"),
            ],
            false,
        );
        let (counted, rows) = tally(&a, 1).expect("something to count");
        assert_eq!(counted, 4);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].minute_ms, rows[0].messages), (60_000, 2)); // seqs 2 and 4
        assert_eq!(
            (rows[1].minute_ms, rows[1].user_id.as_str()),
            (120_000, "b")
        );
        assert!(tally(&a, 4).is_none(), "everything was counted already");
    }

    #[test]
    fn stops_at_a_gap_unless_told_to_skip_it() {
        let gappy = room(vec![msg(3, 0, "a"), msg(4, 0, "a"), msg(6, 0, "a")], false);
        assert!(tally(&gappy, 1).is_none(), "seq 2 is missing: wait for it");
        let (counted, rows) = tally(&gappy, 2).expect("3 follows 2");
        assert_eq!(
            (counted, rows[0].messages),
            (4, 2),
            "stops before the gap at 5"
        );
        let skipping = RoomActivity {
            skip_gap: true,
            ..gappy
        };
        let (counted, rows) = tally(&skipping, 1).expect("skips to 3");
        assert_eq!(
            (counted, rows[0].messages),
            (4, 2),
            "skips the first gap only"
        );
    }

    #[test]
    fn negative_timestamps_still_land_on_their_minute() {
        let a = room(vec![msg(1, -1, "a")], false);
        let (_, rows) = tally(&a, 0).expect("counted");
        assert_eq!(rows[0].minute_ms, -60_000);
    }
}
