//! Cluster mode's store: Postgres through diesel-async's `AsyncPgConnection`
//! (pure Rust, no libpq) and a deadpool pool.
//!
//! Only `diesel_async::RunQueryDsl` is imported here; importing
//! `diesel::prelude::*` next to it makes `.execute` ambiguous.

use super::schema::{analytics_rooms, messages, reactions, room_activity, rooms};
use super::{
    apply_change, attach_reactions, bound, build_targets, page_span, room_heads, tally,
    ActivityRow, Apply, MessageRow, Pipeline, ReactionCount, ReactionUser, RecentRef, RoomActivity,
    RoomSummary, Store, StoreError, UncountedRow,
};
use crate::changes::TargetState;
use crate::chat::ChatMessage;
use async_trait::async_trait;
use diesel::connection::SimpleConnection;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text};
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, SelectableHelper};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::sync::Arc;
use std::time::Duration;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// How long a query waits for a pooled connection (including opening one) before
/// it fails, so a database that is down or unreachable gives an error, not a hang.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// Connect timeout added to the URL when it names none (tokio-postgres'
/// `connect_timeout`, seconds), for the migration connection on a silent host.
const CONNECT_TIMEOUT_SECS: u64 = 5;

/// Session advisory lock held while migrating, so instances starting together on
/// an empty database apply the migrations once ("confabmg" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x636f_6e66_6162_6d67;

pub struct PgStore {
    pool: Pool<AsyncPgConnection>,
    pool_size: usize,
    /// The URL without its password, for error messages.
    target: String,
    /// Without Redis this instance numbers messages itself: a (room, seq)
    /// that already holds another message (an import into an open room) must
    /// fail the batch, never be acked and dropped. In cluster mode a
    /// re-delivered entry is expected to be there already.
    refuse_taken_seqs: bool,
    writes: super::WriteHealth,
}

impl PgStore {
    /// Startup: runs pending migrations (under the advisory lock), then opens the pool.
    pub async fn open(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        migrate(url).await?;
        let store = Self::connect(url, pool_size)?;
        // Fail at startup, not on the first message, when the pool cannot connect.
        store.ping().await?;
        Ok(store)
    }

    /// Builds the pool without touching the database (connections open lazily).
    pub fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let pool_size = pool_size.max(1);
        let mut config = ManagerConfig::default();
        // `Fast` skips a round trip per checkout; a connection that saw a fatal
        // error is still detected as broken and dropped.
        config.recycling_method = RecyclingMethod::Fast;
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
            with_connect_timeout(url),
            config,
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .build()
            .map_err(|e| StoreError::connect(redact(url), e))?;
        Ok(Self {
            pool,
            pool_size,
            target: redact(url),
            refuse_taken_seqs: false,
            writes: super::WriteHealth::default(),
        })
    }

    /// See `refuse_taken_seqs`: for a single instance without Redis.
    pub fn refusing_taken_seqs(mut self) -> Self {
        self.refuse_taken_seqs = true;
        self
    }

    async fn conn(&self) -> Result<Object<AsyncPgConnection>, StoreError> {
        match tokio::time::timeout(POOL_WAIT, self.pool.get()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(pool_error(&self.target, e)),
            Err(_) => Err(StoreError::Connect(
                format!(
                "{}: no connection within {}s (pool of {}); the database is down, unreachable or overloaded",
                self.target,
                POOL_WAIT.as_secs(),
                self.pool_size
            ).into())),
        }
    }
}

fn pool_error(target: &str, e: PoolError) -> StoreError {
    use diesel_async::pooled_connection::deadpool::PoolError as P;
    use diesel_async::pooled_connection::PoolError as Backend;
    match e {
        P::Backend(Backend::ConnectionError(e)) => StoreError::connect(target, e),
        P::Backend(Backend::QueryError(e)) => StoreError::Query(e),
        other => StoreError::connect(target, other),
    }
}

/// `confab migrate` and startup: apply pending migrations once, even when several
/// instances start together. Runs on the blocking pool with a sync connection
/// (`AsyncMigrationHarness` panics on actix's single-threaded runtime).
pub async fn migrate(url: &str) -> Result<(), StoreError> {
    // Connect here, where a timeout can cancel it: a host that accepts the TCP
    // connection but never answers would otherwise hold startup forever.
    let conn = match tokio::time::timeout(
        POOL_WAIT,
        AsyncPgConnection::establish(&with_connect_timeout(url)),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(StoreError::connect(redact(url), e)),
        Err(_) => {
            return Err(StoreError::Connect(
                format!("{}: no answer within {}s", redact(url), POOL_WAIT.as_secs()).into(),
            ))
        }
    };
    tokio::task::spawn_blocking(move || migrate_blocking(conn))
        .await
        .map_err(StoreError::migrate)?
}

fn migrate_blocking(conn: AsyncPgConnection) -> Result<(), StoreError> {
    // A sync `diesel::Connection` over the async one, driven by the runtime's handle.
    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
    SimpleConnection::batch_execute(
        &mut conn,
        &format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"),
    )?;
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|_| ())
        .map_err(StoreError::Migrate);
    // Closing the session would release the lock too; unlock explicitly anyway.
    let unlocked = SimpleConnection::batch_execute(
        &mut conn,
        &format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"),
    );
    applied?;
    unlocked?;
    Ok(())
}

/// Adds `connect_timeout` to a URL that has none, so connecting to a host that
/// never answers fails instead of waiting for the kernel's TCP timeout.
fn with_connect_timeout(url: &str) -> String {
    if url.contains("connect_timeout=") {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}connect_timeout={CONNECT_TIMEOUT_SECS}")
}

/// The URL with its password replaced, for error messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The userinfo ends at the last '@' before the query, even when an
    // unencoded password holds '/' or '@'.
    let query_start = rest.find('?').unwrap_or(rest.len());
    let Some(at) = rest[..query_start].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:<redacted>{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// Rows of a batch whose (room, seq) holds a message with another id.
const TAKEN_SEQS: &str = "SELECT count(*) AS taken FROM messages m \
     JOIN unnest($1::text[], $2::int8[], $3::text[]) AS b(room, seq, id) \
     ON m.room = b.room AND m.seq = b.seq WHERE m.id <> b.id";

#[derive(diesel::QueryableByName)]
struct Taken {
    #[diesel(sql_type = BigInt)]
    taken: i64,
}

/// Inserts the batch and tells how many rows were new, and which of the new
/// ones are changes (to apply to their messages).
const INSERT_UNNEST: &str = "WITH ins AS (INSERT INTO messages \
     (room, seq, id, user_id, user_name, content, created_at_ms, client_ref, \
      kind, target, reply_to, edited_at_ms, deleted) \
     SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
     $6::text[], $7::int8[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int8[], \
     $13::bool[]) \
     ON CONFLICT (room, seq) DO NOTHING RETURNING room, seq, id, kind) \
     SELECT count(*) AS inserted, \
     COALESCE(array_agg(room) FILTER (WHERE kind <> 'message'), '{}') AS change_rooms, \
     COALESCE(array_agg(seq) FILTER (WHERE kind <> 'message'), '{}') AS change_seqs, \
     COALESCE(array_agg(room) FILTER (WHERE kind = 'message'), '{}') AS message_rooms, \
     COALESCE(array_agg(id) FILTER (WHERE kind = 'message'), '{}') AS message_ids FROM ins";

#[derive(diesel::QueryableByName)]
struct Inserted {
    #[diesel(sql_type = BigInt)]
    inserted: i64,
    #[diesel(sql_type = Array<Text>)]
    change_rooms: Vec<String>,
    #[diesel(sql_type = Array<BigInt>)]
    change_seqs: Vec<i64>,
    #[diesel(sql_type = Array<Text>)]
    message_rooms: Vec<String>,
    #[diesel(sql_type = Array<Text>)]
    message_ids: Vec<String>,
}

/// Changes already stored whose message a batch just inserted: written by
/// another instance before the message was (cluster mode), they apply now.
async fn earlier_changes(
    c: &mut AsyncPgConnection,
    inserted: &Inserted,
) -> Result<Vec<Arc<ChatMessage>>, diesel::result::Error> {
    if inserted.message_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut rooms = inserted.message_rooms.clone();
    rooms.sort_unstable();
    rooms.dedup();
    let rows: Vec<MessageRow> = messages::table
        .filter(messages::room.eq_any(&rooms))
        .filter(messages::target.eq_any(&inserted.message_ids))
        .filter(messages::kind.ne("message"))
        .select(MessageRow::as_select())
        .load(c)
        .await?;
    let targets: std::collections::HashSet<(&str, &str)> = inserted
        .message_rooms
        .iter()
        .zip(&inserted.message_ids)
        .map(|(room, id)| (room.as_str(), id.as_str()))
        .collect();
    Ok(rows
        .into_iter()
        .filter(|r| {
            r.target
                .as_deref()
                .is_some_and(|t| targets.contains(&(r.room.as_str(), t)))
        })
        .map(|r| Arc::new(ChatMessage::from(r)))
        .collect())
}

/// One column of the batch, for an array parameter.
fn column<T>(rows: &[MessageRow], get: impl Fn(&MessageRow) -> T) -> Vec<T> {
    rows.iter().map(get).collect()
}

/// Runs the statements that apply one change.
async fn apply(c: &mut AsyncPgConnection, steps: Vec<Apply>) -> Result<(), diesel::result::Error> {
    for Apply(sql, params) in steps {
        bound::<diesel::pg::Pg>(sql.to_string(), params)
            .execute(c)
            .await?;
    }
    Ok(())
}

/// The reactions of a page of messages.
async fn load_reactions(
    c: &mut AsyncPgConnection,
    room: &str,
    page: &mut [ChatMessage],
) -> Result<(), diesel::result::Error> {
    let Some((lo, hi)) = page_span(page) else {
        return Ok(());
    };
    let counts: Vec<ReactionCount> = diesel::sql_query(super::REACTION_COUNTS)
        .bind::<Text, _>(room)
        .bind::<BigInt, _>(lo)
        .bind::<BigInt, _>(hi)
        .load(c)
        .await?;
    if counts.is_empty() {
        return Ok(());
    }
    let users: Vec<ReactionUser> = diesel::sql_query(super::REACTION_USERS)
        .bind::<Text, _>(room)
        .bind::<BigInt, _>(lo)
        .bind::<BigInt, _>(hi)
        .load(c)
        .await?;
    attach_reactions(page, counts, users);
    Ok(())
}

impl PgStore {
    /// One transaction for the batch; rows already there are skipped, or
    /// (with `refuse_taken`) fail the batch when they hold another message.
    async fn insert_rows(
        &self,
        batch: Vec<Arc<ChatMessage>>,
        refuse_taken: bool,
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut rows: Vec<MessageRow> =
            batch.iter().map(|m| MessageRow::from(m.as_ref())).collect();
        // One lock order for every writer, so two instances replaying overlapping
        // batches cannot deadlock.
        rows.sort_unstable_by(|a, b| (&a.room, a.seq).cmp(&(&b.room, b.seq)));
        let mut heads = room_heads(&batch);
        heads.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut conn = self.conn().await?;
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            let head_rows: Vec<_> = heads
                .iter()
                .map(|(room, last_seq, created_at_ms)| {
                    (
                        rooms::name.eq(room.as_str()),
                        rooms::last_seq.eq(*last_seq),
                        rooms::created_at_ms.eq(*created_at_ms),
                    )
                })
                .collect();
            // The rooms' heads first: their rows stay locked until commit, so
            // writers of the same room (instances persisting parts of the
            // stream) take turns, and a change always sees a message another
            // writer committed, or is seen by it (see `earlier_changes`). The
            // rows go in one order for every writer, so none can deadlock.
            // A replayed older batch never moves a room's head backwards.
            diesel::insert_into(rooms::table)
                .values(head_rows)
                .on_conflict(rooms::name)
                .do_update()
                .set(
                    rooms::last_seq.eq(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                        "GREATEST(rooms.last_seq, excluded.last_seq)",
                    )),
                )
                .execute(c)
                .await?;
            // One statement with eight array parameters, whatever the batch
            // size: far cheaper to parse and plan than a multi-row VALUES list.
            // A re-delivered entry (cluster mode after a crash) is a no-op.
            let inserted: Inserted = diesel::sql_query(INSERT_UNNEST)
                .bind::<Array<Text>, _>(column(&rows, |r| r.room.clone()))
                .bind::<Array<BigInt>, _>(column(&rows, |r| r.seq))
                .bind::<Array<Text>, _>(column(&rows, |r| r.id.clone()))
                .bind::<Array<Text>, _>(column(&rows, |r| r.user_id.clone()))
                .bind::<Array<Text>, _>(column(&rows, |r| r.user_name.clone()))
                .bind::<Array<Text>, _>(column(&rows, |r| r.content.clone()))
                .bind::<Array<BigInt>, _>(column(&rows, |r| r.created_at_ms))
                .bind::<Array<Nullable<Text>>, _>(column(&rows, |r| r.client_ref.clone()))
                .bind::<Array<Text>, _>(column(&rows, |r| r.kind.clone()))
                .bind::<Array<Nullable<Text>>, _>(column(&rows, |r| r.target.clone()))
                .bind::<Array<Nullable<Text>>, _>(column(&rows, |r| r.reply_to.clone()))
                .bind::<Array<Nullable<BigInt>>, _>(column(&rows, |r| r.edited_at_ms))
                .bind::<Array<Bool>, _>(column(&rows, |r| r.deleted))
                .get_result(c)
                .await?;
            // A change applies once, when its row is new. Where writers may
            // commit out of seq order (cluster mode, import), a new message
            // also takes the changes stored before it.
            let new_changes: std::collections::HashSet<(&str, i64)> = inserted
                .change_rooms
                .iter()
                .zip(&inserted.change_seqs)
                .map(|(room, seq)| (room.as_str(), *seq))
                .collect();
            let mut changes: Vec<Arc<ChatMessage>> = batch
                .iter()
                .filter(|m| {
                    !m.is_message() && new_changes.contains(&(m.room.as_str(), m.seq as i64))
                })
                .cloned()
                .collect();
            if !refuse_taken {
                changes.extend(earlier_changes(c, &inserted).await?);
            }
            changes.sort_unstable_by(|a, b| (&a.room, a.seq).cmp(&(&b.room, b.seq)));
            changes.dedup_by(|a, b| a.room == b.room && a.seq == b.seq);
            for m in &changes {
                apply(c, apply_change(m)).await?;
            }
            let inserted = inserted.inserted.max(0) as usize;
            if refuse_taken && inserted < rows.len() {
                let taken: Taken = diesel::sql_query(TAKEN_SEQS)
                    .bind::<Array<Text>, _>(column(&rows, |r| r.room.clone()))
                    .bind::<Array<BigInt>, _>(column(&rows, |r| r.seq))
                    .bind::<Array<Text>, _>(column(&rows, |r| r.id.clone()))
                    .get_result(c)
                    .await?;
                if taken.taken > 0 {
                    return Err(diesel::result::Error::QueryBuilderError(
                        format!(
                            "{} message(s) in the batch have a seq another message holds \
                             (an import into an open room?); nothing in it is stored",
                            taken.taken
                        )
                        .into(),
                    ));
                }
            }
            Ok(())
        })
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Store for PgStore {
    async fn insert_batch(&self, batch: Vec<Arc<ChatMessage>>) -> Result<(), StoreError> {
        let result = self.insert_rows(batch, self.refuse_taken_seqs).await;
        self.writes.note(&result);
        result
    }

    async fn last_seq(&self, room: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let head: Option<i64> = rooms::table
            .filter(rooms::name.eq(room))
            .select(rooms::last_seq)
            .first(&mut conn)
            .await
            .optional()?;
        let newest: Option<i64> = messages::table
            .filter(messages::room.eq(room))
            .select(diesel::dsl::max(messages::seq))
            .first(&mut conn)
            .await?;
        Ok(head.unwrap_or(0).max(newest.unwrap_or(0)).max(0) as u64)
    }

    async fn range(
        &self,
        room: &str,
        after: u64,
        upto: u64,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<MessageRow> = messages::table
            .filter(messages::room.eq(room))
            .filter(messages::seq.gt(after.min(i64::MAX as u64) as i64))
            .filter(messages::seq.le(upto.min(i64::MAX as u64) as i64))
            .order(messages::seq.asc())
            .select(MessageRow::as_select())
            .load(&mut conn)
            .await?;
        Ok(rows.into_iter().map(ChatMessage::from).collect())
    }

    async fn page(
        &self,
        room: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let mut conn = self.conn().await?;
        let mut query = messages::table
            .filter(messages::room.eq(room))
            .filter(messages::kind.eq("message"))
            .order(messages::seq.desc())
            .limit(i64::from(limit))
            .select(MessageRow::as_select())
            .into_boxed();
        if let Some(before) = before {
            query = query.filter(messages::seq.lt(before.min(i64::MAX as u64) as i64));
        }
        let mut rows: Vec<MessageRow> = query.load(&mut conn).await?;
        rows.reverse();
        let mut page: Vec<ChatMessage> = rows.into_iter().map(ChatMessage::from).collect();
        load_reactions(&mut conn, room, &mut page).await?;
        Ok(page)
    }

    async fn targets(
        &self,
        room: &str,
        ids: Vec<String>,
        users: Vec<String>,
    ) -> Result<Vec<TargetState>, StoreError> {
        let mut conn = self.conn().await?;
        let found = messages::table
            .filter(messages::room.eq(room))
            .filter(messages::id.eq_any(&ids))
            .filter(messages::kind.eq("message"))
            .select((
                messages::seq,
                messages::id,
                messages::user_id,
                messages::created_at_ms,
                messages::deleted,
            ))
            .load(&mut conn)
            .await?;
        let counts = reactions::table
            .filter(reactions::room.eq(room))
            .filter(reactions::message_id.eq_any(&ids))
            .group_by((reactions::message_id, reactions::emoji))
            .select((
                reactions::message_id,
                reactions::emoji,
                diesel::dsl::count_star(),
            ))
            .load(&mut conn)
            .await?;
        let pairs = reactions::table
            .filter(reactions::room.eq(room))
            .filter(reactions::message_id.eq_any(&ids))
            .filter(reactions::user_id.eq_any(&users))
            .select((reactions::message_id, reactions::emoji, reactions::user_id))
            .load(&mut conn)
            .await?;
        Ok(build_targets(found, counts, pairs))
    }

    async fn rooms(&self) -> Result<Vec<RoomSummary>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<(String, i64)> = rooms::table
            .select((rooms::name, rooms::last_seq))
            .order(rooms::name.asc())
            .load(&mut conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(name, last_seq)| RoomSummary {
                name,
                last_seq: last_seq.max(0) as u64,
            })
            .collect())
    }

    async fn recent_refs(&self, since_ms: i64) -> Result<Vec<RecentRef>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<MessageRow> = messages::table
            .filter(messages::created_at_ms.ge(since_ms))
            .filter(messages::client_ref.is_not_null())
            .order(messages::created_at_ms.asc())
            .select(MessageRow::as_select())
            .load(&mut conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| RecentRef { message: r.into() })
            .collect())
    }

    async fn raw_query(
        &self,
        sql: &'static str,
        params: Vec<super::Param>,
    ) -> Result<Vec<super::Row>, StoreError> {
        let mut conn = self.conn().await?;
        Ok(bound::<diesel::pg::Pg>(sql.to_string(), params)
            .load(&mut conn)
            .await?)
    }

    async fn raw_exec(&self, steps: Vec<Apply>) -> Result<Vec<usize>, StoreError> {
        let mut conn = self.conn().await?;
        Ok(conn
            .transaction::<_, diesel::result::Error, _>(async |c| {
                let mut changed = Vec::with_capacity(steps.len());
                for Apply(sql, params) in steps {
                    changed.push(
                        bound::<diesel::pg::Pg>(sql.to_string(), params)
                            .execute(c)
                            .await?,
                    );
                }
                Ok(changed)
            })
            .await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        SimpleAsyncConnection::batch_execute(&mut *conn, &super::probe_sql()).await?;
        self.writes.check()
    }
}

#[async_trait]
impl Pipeline for PgStore {
    async fn after(
        &self,
        room: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<MessageRow> = messages::table
            .filter(messages::room.eq(room))
            .filter(messages::seq.gt(after.min(i64::MAX as u64) as i64))
            .order(messages::seq.asc())
            .limit(i64::from(limit))
            .select(MessageRow::as_select())
            .load(&mut conn)
            .await?;
        Ok(rows.into_iter().map(ChatMessage::from).collect())
    }

    /// Existing rows are kept (import is idempotent); heads never move back.
    async fn import_batch(&self, batch: Vec<Arc<ChatMessage>>) -> Result<(), StoreError> {
        self.insert_rows(batch, false).await
    }

    async fn delete_older_than(&self, cutoff_ms: i64, limit: u32) -> Result<usize, StoreError> {
        let mut conn = self.conn().await?;
        let deleted = diesel::sql_query(
            "DELETE FROM messages WHERE ctid IN \
             (SELECT ctid FROM messages WHERE created_at_ms < $1 LIMIT $2)",
        )
        .bind::<BigInt, _>(cutoff_ms)
        .bind::<BigInt, _>(i64::from(limit))
        .execute(&mut conn)
        .await?;
        if deleted > 0 {
            diesel::sql_query(super::ORPHAN_REACTIONS)
                .execute(&mut conn)
                .await?;
        }
        Ok(deleted)
    }

    async fn count_activity(
        &self,
        rooms: Vec<RoomActivity>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut rooms = rooms;
        // One lock order for every instance: no deadlock between two counters.
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        let mut conn = self.conn().await?;
        let counted = conn
            .transaction::<_, diesel::result::Error, _>(async |c| {
                let mut counted = Vec::with_capacity(rooms.len());
                for activity in &rooms {
                    // The row must exist to be locked: two instances counting
                    // a new room's first messages queue on it.
                    diesel::insert_into(analytics_rooms::table)
                        .values((
                            analytics_rooms::room.eq(&activity.room),
                            analytics_rooms::counted_seq.eq(0i64),
                        ))
                        .on_conflict_do_nothing()
                        .execute(c)
                        .await?;
                    let before: i64 = analytics_rooms::table
                        .filter(analytics_rooms::room.eq(&activity.room))
                        .select(analytics_rooms::counted_seq)
                        .for_update()
                        .first(c)
                        .await?;
                    let before = before.max(0) as u64;
                    let Some((after, rows)) = tally(activity, before) else {
                        counted.push((activity.room.clone(), before));
                        continue;
                    };
                    let values: Vec<_> = rows
                        .iter()
                        .map(|row| {
                            (
                                room_activity::room.eq(activity.room.as_str()),
                                room_activity::minute_ms.eq(row.minute_ms),
                                room_activity::user_id.eq(row.user_id.as_str()),
                                room_activity::lang.eq(row.lang.as_str()),
                                room_activity::user_name.eq(row.user_name.as_str()),
                                room_activity::messages.eq(row.messages as i64),
                            )
                        })
                        .collect();
                    diesel::insert_into(room_activity::table)
                        .values(values)
                        .on_conflict((
                            room_activity::room,
                            room_activity::minute_ms,
                            room_activity::user_id,
                            room_activity::lang,
                        ))
                        .do_update()
                        .set((
                            room_activity::messages.eq(room_activity::messages
                                + diesel::upsert::excluded(room_activity::messages)),
                            room_activity::user_name
                                .eq(diesel::upsert::excluded(room_activity::user_name)),
                        ))
                        .execute(c)
                        .await?;
                    diesel::update(analytics_rooms::table)
                        .filter(analytics_rooms::room.eq(&activity.room))
                        .set(analytics_rooms::counted_seq.eq(after as i64))
                        .execute(c)
                        .await?;
                    counted.push((activity.room.clone(), after));
                }
                Ok(counted)
            })
            .await?;
        Ok(counted)
    }

    async fn uncounted_rooms(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<UncountedRow> = diesel::sql_query(super::UNCOUNTED_ROOMS)
            .load(&mut conn)
            .await?;
        Ok(rows.into_iter().map(UncountedRow::into_tuple).collect())
    }

    async fn activity(&self, room: &str, since_ms: i64) -> Result<Vec<ActivityRow>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<(i64, String, String, String, i64)> = room_activity::table
            .filter(room_activity::room.eq(room))
            .filter(room_activity::minute_ms.ge(since_ms))
            .select((
                room_activity::minute_ms,
                room_activity::user_id,
                room_activity::user_name,
                room_activity::lang,
                room_activity::messages,
            ))
            .load(&mut conn)
            .await?;
        Ok(rows.into_iter().map(super::activity_row).collect())
    }

    async fn activity_totals(&self, since_ms: i64) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<super::TotalsRow> = diesel::sql_query(super::ACTIVITY_TOTALS)
            .bind::<BigInt, _>(since_ms)
            .load(&mut conn)
            .await?;
        Ok(rows.into_iter().map(super::TotalsRow::into_tuple).collect())
    }

    async fn prune_activity(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut conn = self.conn().await?;
        Ok(
            diesel::delete(room_activity::table.filter(room_activity::minute_ms.lt(before_ms)))
                .execute(&mut conn)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{redact, with_connect_timeout};

    #[test]
    fn redacts_the_password_only() {
        assert_eq!(
            redact("postgres://app:s3cr%40t@db:5432/confab?sslmode=disable"),
            "postgres://app:<redacted>@db:5432/confab?sslmode=disable"
        );
        assert_eq!(
            redact("postgres://app@db/confab"),
            "postgres://app@db/confab"
        );
        assert_eq!(redact("postgres://db/confab"), "postgres://db/confab");
        assert_eq!(
            redact("postgresql://u:p@a/b@db/x"),
            "postgresql://u:<redacted>@db/x"
        );
    }

    #[test]
    fn adds_a_connect_timeout_when_missing() {
        assert_eq!(
            with_connect_timeout("postgres://u@h/d"),
            "postgres://u@h/d?connect_timeout=5"
        );
        assert_eq!(
            with_connect_timeout("postgres://u@h/d?sslmode=disable"),
            "postgres://u@h/d?sslmode=disable&connect_timeout=5"
        );
        assert_eq!(
            with_connect_timeout("postgres://u@h/d?connect_timeout=1"),
            "postgres://u@h/d?connect_timeout=1"
        );
    }
}
