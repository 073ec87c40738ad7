//! The store seam: where accepted messages are kept. Embedded mode uses SQLite,
//! cluster mode Postgres; actors only see [`Store`].

pub mod postgres;
pub mod rooms;
mod schema;
pub mod sqlite;

use crate::changes::TargetState;
use crate::chat::{ChatMessage, Kind, ReactionSummary, REACTION_USERS_SHOWN};
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
    /// The newest `limit` messages (not changes) with `seq < before` (all
    /// when `None`), oldest first, in their current state with their reactions.
    async fn page(
        &self,
        room: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<ChatMessage>, StoreError>;
    /// The state of the messages `ids` of a room (those that exist: events
    /// and other rooms' messages are not found), with the reactions of
    /// `users` on them, for the rules of changes.
    async fn targets(
        &self,
        room: &str,
        ids: Vec<String>,
        users: Vec<String>,
    ) -> Result<Vec<TargetState>, StoreError>;
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
    /// Runs a query written for both backends (`$n` parameters, columns
    /// named as [`Row`]'s fields): the rooms, members and read markers of
    /// `store::rooms` are one set of SQL for both.
    async fn raw_query(
        &self,
        sql: &'static str,
        params: Vec<Param>,
    ) -> Result<Vec<Row>, StoreError>;
    /// Runs statements in one transaction; how many rows each changed.
    async fn raw_exec(&self, steps: Vec<Apply>) -> Result<Vec<usize>, StoreError>;
}

pub type SharedStore = Arc<dyn Store>;

/// A row of a [`Store::raw_query`]: up to three texts and three integers,
/// each possibly NULL (queries select `NULL` for the ones they don't use).
#[derive(Debug, Clone, Default, diesel::QueryableByName)]
pub struct Row {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub t1: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub t2: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub t3: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pub n1: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pub n2: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pub n3: Option<i64>,
}

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
    /// A message counts; a change (edit, delete, reaction) only takes its seq.
    pub counts: bool,
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
        if m.seq > next && !(activity.skip_gap && next == counted_seq + 1) {
            break;
        }
        next = m.seq + 1;
        if !m.counts {
            continue;
        }
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
    (next > counted_seq + 1).then_some((next - 1, rows))
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
    kind: String,
    target: Option<String>,
    reply_to: Option<String>,
    edited_at_ms: Option<i64>,
    deleted: bool,
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
            kind: m.kind.as_str().to_string(),
            target: m.target.clone(),
            reply_to: m.reply_to.clone(),
            edited_at_ms: m.edited_at_ms,
            deleted: m.deleted,
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
            // A kind only a newer version knows reads as a message.
            kind: Kind::parse(&r.kind).unwrap_or_default(),
            target: r.target,
            reply_to: r.reply_to,
            edited_at_ms: r.edited_at_ms,
            deleted: r.deleted,
            reactions: Vec::new(),
        }
    }
}

// ------------------------------------------------------------------ changes
//
// A change is stored as its own row, then applied to its message in the same
// transaction, only when its row is new (a replayed entry is already
// applied). The statements give the same result whatever order changes
// commit in: in cluster mode every instance writes part of the persist stream,
// so a change may commit before an earlier one, or before its message (whose
// insert then applies the changes already there, see `PgStore`). So the
// latest edit wins, the latest reaction event per user and emoji wins, and a
// delete erases whatever comes. They are the same for both backends: `$n`
// parameters, which SQLite reads as `?n` (see [`sqlite_params`]).

/// An edit by the author of a live message replaces its content, unless a
/// later edit of it is already stored.
const EDIT_APPLY: &str = "UPDATE messages SET content = $1, edited_at_ms = $2 \
     WHERE room = $3 AND id = $4 AND kind = 'message' AND deleted = false AND user_id = $5 \
     AND NOT EXISTS (SELECT 1 FROM messages e WHERE e.room = $3 AND e.target = $4 \
     AND e.kind = 'edit' AND e.user_id = $5 AND e.seq > $6)";
/// An edit of a deleted message keeps no text.
const EDIT_ERASE: &str = "UPDATE messages SET content = '' WHERE room = $1 AND seq = $2 \
     AND EXISTS (SELECT 1 FROM messages m WHERE m.room = $1 AND m.id = $3 \
     AND m.kind = 'message' AND m.deleted = true)";
/// A delete leaves a tombstone...
const DELETE_MESSAGE: &str =
    "UPDATE messages SET content = '', deleted = true, edited_at_ms = NULL \
     WHERE room = $1 AND id = $2 AND kind = 'message'";
/// ...erases its edits' text...
const DELETE_EDITS: &str =
    "UPDATE messages SET content = '' WHERE room = $1 AND target = $2 AND kind = 'edit'";
/// ...and drops its reactions.
const DELETE_REACTIONS: &str = "DELETE FROM reactions WHERE room = $1 AND message_id = $2";
/// A reaction event sets its user's reaction with its emoji to what the
/// stored events say, whatever order they were stored in: present when the
/// latest of them added it, dated from the first addition since the last
/// removal (so emoji keep their order). First the row goes...
const REACTION_CLEAR: &str = "DELETE FROM reactions \
     WHERE room = $1 AND message_id = $2 AND emoji = $3 AND user_id = $4";
/// ...then it comes back if it should (on a live message).
const REACTION_SET: &str =
    "INSERT INTO reactions (room, message_id, emoji, user_id, message_seq, seq) \
     SELECT m.room, m.id, $1, $2, m.seq, r.first FROM messages m, \
     (SELECT MIN(e.seq) AS first FROM messages e WHERE e.room = $3 AND e.target = $4 \
      AND e.user_id = $2 AND e.kind = 'react' AND e.content = $1 AND e.seq > COALESCE( \
      (SELECT MAX(u.seq) FROM messages u WHERE u.room = $3 AND u.target = $4 \
       AND u.user_id = $2 AND u.kind = 'unreact' AND u.content = $1), 0)) r \
     WHERE m.room = $3 AND m.id = $4 AND m.kind = 'message' AND m.deleted = false \
     AND r.first IS NOT NULL";
/// Reactions whose message retention deleted.
const ORPHAN_REACTIONS: &str = "DELETE FROM reactions WHERE NOT EXISTS \
     (SELECT 1 FROM messages m WHERE m.room = reactions.room AND m.seq = reactions.message_seq)";
/// Per message of a page (by seq range) and emoji: how many, and when first.
const REACTION_COUNTS: &str = "SELECT message_seq, emoji, COUNT(*) AS n, MIN(seq) AS first_seq \
     FROM reactions WHERE room = $1 AND message_seq >= $2 AND message_seq <= $3 \
     GROUP BY message_seq, emoji";
/// Per message of a page and emoji: the first users who reacted.
const REACTION_USERS: &str = "SELECT message_seq, emoji, user_id FROM \
     (SELECT message_seq, emoji, user_id, \
      ROW_NUMBER() OVER (PARTITION BY message_seq, emoji ORDER BY seq) AS rn \
      FROM reactions WHERE room = $1 AND message_seq >= $2 AND message_seq <= $3) ranked \
     WHERE rn <= 5 ORDER BY message_seq, emoji, rn";

/// SQLite spells numbered parameters `?n`.
pub(crate) fn sqlite_params(sql: &str) -> String {
    sql.replace('$', "?")
}

/// `sql` with `params` bound in order.
pub(crate) fn bound<DB>(
    sql: String,
    params: Vec<Param>,
) -> diesel::query_builder::BoxedSqlQuery<'static, DB, diesel::query_builder::SqlQuery>
where
    DB: diesel::backend::Backend
        + diesel::sql_types::HasSqlType<diesel::sql_types::Text>
        + diesel::sql_types::HasSqlType<diesel::sql_types::BigInt>,
    String: diesel::serialize::ToSql<diesel::sql_types::Text, DB>,
    i64: diesel::serialize::ToSql<diesel::sql_types::BigInt, DB>,
    Option<String>:
        diesel::serialize::ToSql<diesel::sql_types::Nullable<diesel::sql_types::Text>, DB>,
    DB: diesel::sql_types::HasSqlType<diesel::sql_types::Nullable<diesel::sql_types::Text>>,
{
    let mut query = diesel::sql_query(sql).into_boxed::<DB>();
    for param in params {
        query = match param {
            Param::Text(t) => query.bind::<diesel::sql_types::Text, _>(t),
            Param::Int(i) => query.bind::<diesel::sql_types::BigInt, _>(i),
            Param::OptText(t) => {
                query.bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(t)
            }
        };
    }
    query
}

/// One statement (of applying a change, or of `store::rooms`), with its
/// parameters in order.
pub struct Apply(pub &'static str, pub Vec<Param>);

/// A parameter of a statement both backends run.
pub enum Param {
    Text(String),
    Int(i64),
    OptText(Option<String>),
}

/// What storing `entry` (a change) does to its message.
fn apply_change(entry: &ChatMessage) -> Vec<Apply> {
    use Param::{Int, Text};
    if entry.kind.is_membership() {
        return rooms::apply_membership(entry);
    }
    let Some(target) = entry.target.clone() else {
        return Vec::new();
    };
    let room = || Text(entry.room.clone());
    let seq = || Int(entry.seq as i64);
    match entry.kind {
        Kind::Edit => vec![
            Apply(
                EDIT_APPLY,
                vec![
                    Text(entry.content.clone()),
                    Int(entry.timestamp_ms),
                    room(),
                    Text(target.clone()),
                    Text(entry.user_id.clone()),
                    seq(),
                ],
            ),
            Apply(EDIT_ERASE, vec![room(), seq(), Text(target)]),
        ],
        Kind::Delete => vec![
            Apply(DELETE_MESSAGE, vec![room(), Text(target.clone())]),
            Apply(DELETE_EDITS, vec![room(), Text(target.clone())]),
            Apply(DELETE_REACTIONS, vec![room(), Text(target)]),
        ],
        Kind::React | Kind::Unreact => vec![
            Apply(
                REACTION_CLEAR,
                vec![
                    room(),
                    Text(target.clone()),
                    Text(entry.content.clone()),
                    Text(entry.user_id.clone()),
                ],
            ),
            Apply(
                REACTION_SET,
                vec![
                    Text(entry.content.clone()),
                    Text(entry.user_id.clone()),
                    room(),
                    Text(target),
                ],
            ),
        ],
        _ => Vec::new(),
    }
}

/// A page's reactions, per message seq and emoji.
#[derive(diesel::QueryableByName)]
struct ReactionCount {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    message_seq: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    emoji: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    first_seq: i64,
}

#[derive(diesel::QueryableByName)]
struct ReactionUser {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    message_seq: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    emoji: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    user_id: String,
}

/// The seq range a page's reactions are read for.
fn page_span(page: &[ChatMessage]) -> Option<(i64, i64)> {
    Some((page.first()?.seq as i64, page.last()?.seq as i64))
}

/// Puts each message's reactions on it: emoji in the order they were first
/// used, each with its count and first users.
fn attach_reactions(
    page: &mut [ChatMessage],
    counts: Vec<ReactionCount>,
    users: Vec<ReactionUser>,
) {
    let mut counts = counts;
    counts.sort_by_key(|c| (c.message_seq, c.first_seq));
    for c in counts {
        let Some(m) = page.iter_mut().find(|m| m.seq as i64 == c.message_seq) else {
            continue;
        };
        if m.deleted || !m.is_message() {
            continue;
        }
        let shown = users
            .iter()
            .filter(|u| u.message_seq == c.message_seq && u.emoji == c.emoji)
            .take(REACTION_USERS_SHOWN)
            .map(|u| u.user_id.clone())
            .collect();
        m.reactions.push(ReactionSummary {
            emoji: c.emoji,
            count: c.n.max(0) as u64,
            users: shown,
        });
    }
}

/// Builds the rules' view of stored messages from their rows, their
/// reaction counts and the asked-about users' reactions.
fn build_targets(
    messages: Vec<(i64, String, String, i64, bool)>,
    counts: Vec<(String, String, i64)>,
    pairs: Vec<(String, String, String)>,
) -> Vec<TargetState> {
    messages
        .into_iter()
        .map(|(seq, id, author, timestamp_ms, deleted)| {
            let mut state = TargetState {
                seq: seq.max(0) as u64,
                id,
                author,
                timestamp_ms,
                deleted,
                ..TargetState::default()
            };
            for (_, emoji, n) in counts.iter().filter(|c| c.0 == state.id) {
                state.emoji.insert(emoji.clone(), (*n).max(0) as u64);
            }
            for (_, emoji, user) in pairs.iter().filter(|p| p.0 == state.id) {
                state.reacted.insert((user.clone(), emoji.clone()));
            }
            state
        })
        .collect()
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
            counts: true,
        }
    }

    #[test]
    fn changes_take_their_seq_without_counting() {
        let mut edit = msg(2, 0, "a");
        edit.counts = false;
        let a = room(vec![msg(1, 0, "a"), edit, msg(3, 0, "a")], false);
        let (counted, rows) = tally(&a, 0).expect("counted");
        assert_eq!((counted, rows[0].messages), (3, 2));
        let only_changes = room(
            vec![CountedMessage {
                counts: false,
                ..msg(4, 0, "a")
            }],
            false,
        );
        assert_eq!(
            tally(&only_changes, 3),
            Some((4, Vec::new())),
            "the seq moves on"
        );
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
