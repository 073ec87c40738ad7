//! Embedded mode's store: one SQLite file in WAL mode, reached through
//! diesel-async's `SyncConnectionWrapper`, so every query runs on the blocking
//! pool and never on an actor thread.

use super::schema::{analytics_rooms, messages, reactions, room_activity, rooms};
use super::{
    apply_change, attach_reactions, bound, build_targets, page_span, room_heads, sqlite_params,
    tally, ActivityRow, Apply, MessageRow, Pipeline, ReactionCount, ReactionUser, RecentRef,
    RoomActivity, RoomSummary, Store, StoreError, UncountedRow,
};
use crate::changes::TargetState;
use crate::chat::{ChatMessage, Kind};
use async_trait::async_trait;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::AsyncConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use futures_util::FutureExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

type Conn = SyncConnectionWrapper<SqliteConnection>;

/// Settings for every pooled connection. `synchronous=FULL` so a commit (and so an
/// ack) survives power loss, not only a crash; busy_timeout rides out a checkpoint.
/// Checkpoints every 4,000 pages (16 MB of WAL) instead of 1,000: a page that many
/// commits touch is copied back to the database once per checkpoint, not four times.
/// `secure_delete` zeroes what a delete or an update frees, so a deleted message's
/// text is gone from the file, not left in free space (messages are only inserted
/// on the hot path, so this costs nothing there).
const CONNECTION_PRAGMAS: &str = "PRAGMA busy_timeout = 5000; PRAGMA synchronous = FULL; \
     PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 4000; PRAGMA secure_delete = ON;";

pub struct SqliteStore {
    /// Readers: history, recovery, `/readyz`.
    pool: Pool<Conn>,
    /// The one connection Persist writes through. SQLite has one writer at a
    /// time anyway, and a connection of its own keeps its page cache warm:
    /// pages another connection wrote must be read again.
    writer: Pool<Conn>,
    writes: super::WriteHealth,
    erasing: LogEraser,
}

/// When to empty the write-ahead log after deletes: at most once a second
/// (a stream of deletes must not turn every commit into a checkpoint); a
/// delete committed sooner is erased with the first write after that.
#[derive(Default)]
struct LogEraser {
    due: std::sync::atomic::AtomicBool,
    last_ms: std::sync::atomic::AtomicI64,
}

impl LogEraser {
    const EVERY_MS: i64 = 1000;

    /// Notes a batch about to be written; whether to erase after it.
    fn after(&self, batch: &[Arc<ChatMessage>]) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if batch.iter().any(|m| m.kind == Kind::Delete) {
            self.due.store(true, Relaxed);
        }
        let now = crate::protocol::now_ms();
        if !self.due.load(Relaxed) || now - self.last_ms.load(Relaxed) < Self::EVERY_MS {
            return false;
        }
        self.due.store(false, Relaxed);
        self.last_ms.store(now, Relaxed);
        true
    }
}

impl SqliteStore {
    /// Creates the file's folder, runs pending migrations, and opens the pool.
    pub async fn open(path: &Path, pool_size: usize) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking({
            let path = path.clone();
            move || migrate_blocking(&path)
        })
        .await
        .map_err(StoreError::migrate)??;

        Ok(Self {
            pool: connection_pool(&path, pool_size)?,
            writer: connection_pool(&path, 1)?,
            writes: super::WriteHealth::default(),
            erasing: LogEraser::default(),
        })
    }

    /// Runs `work` with a pooled connection on the blocking pool.
    ///
    /// The whole checkout-and-query runs as its own task on [`store_runtime`],
    /// so a caller that goes away mid-query (a client hanging up during a
    /// history request) detaches from it instead of cancelling it. Cancelling
    /// diesel-async's blocking future waits for the query with
    /// `block_in_place`, which panics on actix's single-threaded runtimes.
    async fn with_conn<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut SqliteConnection) -> QueryResult<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        Self::on(&self.pool, work).await
    }

    async fn on<R: Send + 'static>(
        pool: &Pool<Conn>,
        work: impl FnOnce(&mut SqliteConnection) -> QueryResult<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        let pool = pool.clone();
        store_runtime()
            .spawn(async move {
                let mut conn = pool.get().await.map_err(|e| StoreError::connect("", e))?;
                Ok(conn.spawn_blocking(work).await?)
            })
            .await
            .map_err(|e| StoreError::connect("the store task failed", e))?
    }
}

/// A pool of up to `size` connections to the file, each set up with
/// [`CONNECTION_PRAGMAS`].
fn connection_pool(path: &Path, size: usize) -> Result<Pool<Conn>, StoreError> {
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(setup_connection);
    let manager = AsyncDieselConnectionManager::<Conn>::new_with_config(url_of(path), config);
    Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| StoreError::connect("", e))
}

fn setup_connection(
    url: &str,
) -> futures_util::future::BoxFuture<'_, diesel::ConnectionResult<Conn>> {
    let url = url.to_string();
    async move {
        let mut conn = Conn::establish(&url).await?;
        conn.spawn_blocking(|c| c.batch_execute(CONNECTION_PRAGMAS))
            .await
            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
        Ok(conn)
    }
    .boxed()
}

/// A small multi-threaded runtime that owns every SQLite round trip (see
/// `with_conn`). Built on first use and kept for the life of the process.
fn store_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("confab-sqlite")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the SQLite store's runtime: {e}"))
    })
}

fn url_of(path: &Path) -> String {
    path.display().to_string()
}

/// `confab migrate` and startup: create the folder, switch to WAL, apply migrations.
pub fn migrate_blocking(path: &Path) -> Result<(), StoreError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::connect(dir.display().to_string(), e))?;
        }
    }
    let mut conn =
        SqliteConnection::establish(&url_of(path)).map_err(|e| StoreError::connect("", e))?;
    conn.batch_execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;")?;
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(StoreError::Migrate)?;
    Ok(())
}

/// One transaction for a batch: the messages, then each room's head (never
/// moved back). A (room, seq) that exists fails the batch, or with
/// `keep_existing` (import) is left as it is.
fn write_batch(
    c: &mut SqliteConnection,
    batch: &[Arc<ChatMessage>],
    keep_existing: bool,
) -> QueryResult<()> {
    let heads = room_heads(batch);
    c.immediate_transaction::<_, diesel::result::Error, _>(|c| {
        // One cached prepared statement for every row: a multi-row INSERT
        // would be parsed again for every batch size and need SQLite's
        // statement journal, and a derived Insertable leaves a NULL
        // `client_ref` out of the column list, which makes the SQL vary and
        // defeats the statement cache.
        let mut changes = Vec::new();
        for m in batch {
            let row = (
                messages::room.eq(&m.room),
                messages::seq.eq(m.seq as i64),
                messages::id.eq(&m.id),
                messages::user_id.eq(&m.user_id),
                messages::user_name.eq(&m.user_name),
                messages::content.eq(&m.content),
                messages::created_at_ms.eq(m.timestamp_ms),
                messages::client_ref.eq(m.client_ref.as_deref()),
                messages::kind.eq(m.kind.as_str()),
                messages::target.eq(m.target.as_deref()),
                messages::reply_to.eq(m.reply_to.as_deref()),
                messages::edited_at_ms.eq(m.edited_at_ms),
                messages::deleted.eq(m.deleted),
            );
            let inserted = if keep_existing {
                diesel::insert_or_ignore_into(messages::table)
                    .values(row)
                    .execute(c)?
            } else {
                diesel::insert_into(messages::table)
                    .values(row)
                    .execute(c)?
            };
            // A change applies once, when its row is new.
            if inserted > 0 && !m.is_message() {
                changes.push(m);
            }
        }
        for m in changes {
            apply(c, apply_change(m))?;
        }
        for (room, last_seq, created_at_ms) in heads {
            diesel::insert_into(rooms::table)
                .values((
                    rooms::name.eq(room),
                    rooms::last_seq.eq(last_seq),
                    rooms::created_at_ms.eq(created_at_ms),
                ))
                .on_conflict(rooms::name)
                .do_update()
                .set(
                    rooms::last_seq.eq(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                        "MAX(rooms.last_seq, excluded.last_seq)",
                    )),
                )
                .execute(c)?;
        }
        Ok(())
    })
}

/// After a delete commits, the write-ahead log still holds the pages as they
/// were before it, deleted text included: a checkpoint copies the erased
/// pages into the database file and empties the log. Best effort: it waits
/// at most 50 ms for readers, so Persist never stalls long; see
/// [`LogEraser`] for how often it runs.
fn erase_from_the_log(c: &mut SqliteConnection) {
    let done = c
        .batch_execute("PRAGMA busy_timeout = 50")
        .and_then(|()| c.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)"));
    if let Err(error) = done {
        tracing::debug!(%error, "checkpoint after a delete did not run");
    }
    let _ = c.batch_execute("PRAGMA busy_timeout = 5000");
}

/// Runs the statements that apply one change.
fn apply(c: &mut SqliteConnection, steps: Vec<Apply>) -> QueryResult<()> {
    for Apply(sql, params) in steps {
        bound::<diesel::sqlite::Sqlite>(sqlite_params(sql), params).execute(c)?;
    }
    Ok(())
}

/// The reactions of a page of messages.
fn load_reactions(
    c: &mut SqliteConnection,
    room: &str,
    page: &mut [ChatMessage],
) -> QueryResult<()> {
    let Some((lo, hi)) = page_span(page) else {
        return Ok(());
    };
    let counts: Vec<ReactionCount> = diesel::sql_query(sqlite_params(super::REACTION_COUNTS))
        .bind::<diesel::sql_types::Text, _>(room)
        .bind::<diesel::sql_types::BigInt, _>(lo)
        .bind::<diesel::sql_types::BigInt, _>(hi)
        .load(c)?;
    if counts.is_empty() {
        return Ok(());
    }
    let users: Vec<ReactionUser> = diesel::sql_query(sqlite_params(super::REACTION_USERS))
        .bind::<diesel::sql_types::Text, _>(room)
        .bind::<diesel::sql_types::BigInt, _>(lo)
        .bind::<diesel::sql_types::BigInt, _>(hi)
        .load(c)?;
    attach_reactions(page, counts, users);
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn concurrent_writes(&self) -> usize {
        1
    }

    async fn insert_batch(&self, batch: Vec<Arc<ChatMessage>>) -> Result<(), StoreError> {
        let erase = self.erasing.after(&batch);
        let result = Self::on(&self.writer, move |c| {
            write_batch(c, &batch, false)?;
            if erase {
                erase_from_the_log(c);
            }
            Ok(())
        })
        .await;
        self.writes.note(&result);
        result
    }

    async fn last_seq(&self, room: &str) -> Result<u64, StoreError> {
        let room = room.to_string();
        self.with_conn(move |c| {
            let head: Option<i64> = rooms::table
                .filter(rooms::name.eq(&room))
                .select(rooms::last_seq)
                .first(c)
                .optional()?;
            let newest: Option<i64> = messages::table
                .filter(messages::room.eq(&room))
                .select(diesel::dsl::max(messages::seq))
                .first(c)?;
            Ok(head.unwrap_or(0).max(newest.unwrap_or(0)).max(0) as u64)
        })
        .await
    }

    async fn range(
        &self,
        room: &str,
        after: u64,
        upto: u64,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let room = room.to_string();
        self.with_conn(move |c| {
            let rows: Vec<MessageRow> = messages::table
                .filter(messages::room.eq(&room))
                .filter(messages::seq.gt(after as i64))
                .filter(messages::seq.le(upto as i64))
                .order(messages::seq.asc())
                .select(MessageRow::as_select())
                .load(c)?;
            Ok(rows.into_iter().map(ChatMessage::from).collect())
        })
        .await
    }

    async fn page(
        &self,
        room: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let room = room.to_string();
        self.with_conn(move |c| {
            let mut query = messages::table
                .filter(messages::room.eq(&room))
                .filter(messages::kind.eq("message"))
                .order(messages::seq.desc())
                .limit(i64::from(limit))
                .select(MessageRow::as_select())
                .into_boxed();
            if let Some(before) = before {
                query = query.filter(messages::seq.lt(before.min(i64::MAX as u64) as i64));
            }
            let mut rows: Vec<MessageRow> = query.load(c)?;
            rows.reverse();
            let mut page: Vec<ChatMessage> = rows.into_iter().map(ChatMessage::from).collect();
            load_reactions(c, &room, &mut page)?;
            Ok(page)
        })
        .await
    }

    async fn targets(
        &self,
        room: &str,
        ids: Vec<String>,
        users: Vec<String>,
    ) -> Result<Vec<TargetState>, StoreError> {
        let room = room.to_string();
        self.with_conn(move |c| {
            let found = messages::table
                .filter(messages::room.eq(&room))
                .filter(messages::id.eq_any(&ids))
                .filter(messages::kind.eq("message"))
                .select((
                    messages::seq,
                    messages::id,
                    messages::user_id,
                    messages::created_at_ms,
                    messages::deleted,
                ))
                .load(c)?;
            let counts = reactions::table
                .filter(reactions::room.eq(&room))
                .filter(reactions::message_id.eq_any(&ids))
                .group_by((reactions::message_id, reactions::emoji))
                .select((
                    reactions::message_id,
                    reactions::emoji,
                    diesel::dsl::count_star(),
                ))
                .load(c)?;
            let pairs = reactions::table
                .filter(reactions::room.eq(&room))
                .filter(reactions::message_id.eq_any(&ids))
                .filter(reactions::user_id.eq_any(&users))
                .select((reactions::message_id, reactions::emoji, reactions::user_id))
                .load(c)?;
            Ok(build_targets(found, counts, pairs))
        })
        .await
    }

    async fn rooms(&self) -> Result<Vec<RoomSummary>, StoreError> {
        self.with_conn(|c| {
            let rows: Vec<(String, i64)> = rooms::table
                .select((rooms::name, rooms::last_seq))
                .order(rooms::name.asc())
                .load(c)?;
            Ok(rows
                .into_iter()
                .map(|(name, last_seq)| RoomSummary {
                    name,
                    last_seq: last_seq.max(0) as u64,
                })
                .collect())
        })
        .await
    }

    async fn recent_refs(&self, since_ms: i64) -> Result<Vec<RecentRef>, StoreError> {
        self.with_conn(move |c| {
            let rows: Vec<MessageRow> = messages::table
                .filter(messages::created_at_ms.ge(since_ms))
                .filter(messages::client_ref.is_not_null())
                .order(messages::created_at_ms.asc())
                .select(MessageRow::as_select())
                .load(c)?;
            Ok(rows
                .into_iter()
                .map(|r| RecentRef { message: r.into() })
                .collect())
        })
        .await
    }

    async fn raw_query(
        &self,
        sql: &'static str,
        params: Vec<super::Param>,
    ) -> Result<Vec<super::Row>, StoreError> {
        self.with_conn(move |c| bound::<diesel::sqlite::Sqlite>(sqlite_params(sql), params).load(c))
            .await
    }

    async fn raw_exec(&self, steps: Vec<Apply>) -> Result<Vec<usize>, StoreError> {
        Self::on(&self.writer, move |c| {
            c.immediate_transaction(|c| {
                steps
                    .into_iter()
                    .map(|Apply(sql, params)| {
                        bound::<diesel::sqlite::Sqlite>(sqlite_params(sql), params).execute(c)
                    })
                    .collect()
            })
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let probe = super::probe_sql();
        Self::on(&self.writer, move |c| c.batch_execute(&probe)).await?;
        self.writes.check()
    }
}

#[async_trait]
impl Pipeline for SqliteStore {
    async fn after(
        &self,
        room: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let room = room.to_string();
        self.with_conn(move |c| {
            let rows: Vec<MessageRow> = messages::table
                .filter(messages::room.eq(&room))
                .filter(messages::seq.gt(after.min(i64::MAX as u64) as i64))
                .order(messages::seq.asc())
                .limit(i64::from(limit))
                .select(MessageRow::as_select())
                .load(c)?;
            Ok(rows.into_iter().map(ChatMessage::from).collect())
        })
        .await
    }

    async fn import_batch(&self, batch: Vec<Arc<ChatMessage>>) -> Result<(), StoreError> {
        Self::on(&self.writer, move |c| write_batch(c, &batch, true)).await
    }

    async fn delete_older_than(&self, cutoff_ms: i64, limit: u32) -> Result<usize, StoreError> {
        Self::on(&self.writer, move |c| {
            let deleted = diesel::sql_query(
                "DELETE FROM messages WHERE rowid IN \
                 (SELECT rowid FROM messages WHERE created_at_ms < ? LIMIT ?)",
            )
            .bind::<diesel::sql_types::BigInt, _>(cutoff_ms)
            .bind::<diesel::sql_types::BigInt, _>(i64::from(limit))
            .execute(c)?;
            if deleted > 0 {
                diesel::sql_query(super::ORPHAN_REACTIONS).execute(c)?;
            }
            Ok(deleted)
        })
        .await
    }

    async fn count_activity(
        &self,
        rooms: Vec<RoomActivity>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        Self::on(&self.writer, move |c| {
            c.immediate_transaction(|c| {
                let mut counted = Vec::with_capacity(rooms.len());
                for activity in &rooms {
                    let before: Option<i64> = analytics_rooms::table
                        .filter(analytics_rooms::room.eq(&activity.room))
                        .select(analytics_rooms::counted_seq)
                        .first(c)
                        .optional()?;
                    let before = before.unwrap_or(0).max(0) as u64;
                    let Some((after, rows)) = tally(activity, before) else {
                        counted.push((activity.room.clone(), before));
                        continue;
                    };
                    for row in rows {
                        diesel::insert_into(room_activity::table)
                            .values((
                                room_activity::room.eq(&activity.room),
                                room_activity::minute_ms.eq(row.minute_ms),
                                room_activity::user_id.eq(&row.user_id),
                                room_activity::lang.eq(&row.lang),
                                room_activity::user_name.eq(&row.user_name),
                                room_activity::messages.eq(row.messages as i64),
                            ))
                            .on_conflict((
                                room_activity::room,
                                room_activity::minute_ms,
                                room_activity::user_id,
                                room_activity::lang,
                            ))
                            .do_update()
                            .set((
                                room_activity::messages
                                    .eq(room_activity::messages + row.messages as i64),
                                room_activity::user_name.eq(&row.user_name),
                            ))
                            .execute(c)?;
                    }
                    diesel::insert_into(analytics_rooms::table)
                        .values((
                            analytics_rooms::room.eq(&activity.room),
                            analytics_rooms::counted_seq.eq(after as i64),
                        ))
                        .on_conflict(analytics_rooms::room)
                        .do_update()
                        .set(analytics_rooms::counted_seq.eq(after as i64))
                        .execute(c)?;
                    counted.push((activity.room.clone(), after));
                }
                Ok(counted)
            })
        })
        .await
    }

    async fn uncounted_rooms(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        self.with_conn(|c| {
            let rows: Vec<UncountedRow> = diesel::sql_query(super::UNCOUNTED_ROOMS).load(c)?;
            Ok(rows.into_iter().map(UncountedRow::into_tuple).collect())
        })
        .await
    }

    async fn activity(&self, room: &str, since_ms: i64) -> Result<Vec<ActivityRow>, StoreError> {
        let room = room.to_string();
        self.with_conn(move |c| {
            let rows: Vec<(i64, String, String, String, i64)> = room_activity::table
                .filter(room_activity::room.eq(&room))
                .filter(room_activity::minute_ms.ge(since_ms))
                .select((
                    room_activity::minute_ms,
                    room_activity::user_id,
                    room_activity::user_name,
                    room_activity::lang,
                    room_activity::messages,
                ))
                .load(c)?;
            Ok(rows.into_iter().map(super::activity_row).collect())
        })
        .await
    }

    async fn activity_totals(&self, since_ms: i64) -> Result<Vec<(String, u64, u64)>, StoreError> {
        self.with_conn(move |c| {
            let rows: Vec<super::TotalsRow> = diesel::sql_query(super::ACTIVITY_TOTALS)
                .bind::<diesel::sql_types::BigInt, _>(since_ms)
                .load(c)?;
            Ok(rows.into_iter().map(super::TotalsRow::into_tuple).collect())
        })
        .await
    }

    async fn prune_activity(&self, before_ms: i64) -> Result<usize, StoreError> {
        Self::on(&self.writer, move |c| {
            diesel::delete(room_activity::table.filter(room_activity::minute_ms.lt(before_ms)))
                .execute(c)
        })
        .await
    }
}
