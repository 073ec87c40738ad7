//! `persist`: sustained ingest into Postgres through the real Persist actor
//! (group commit), with producers that behave like rooms: each hands over a
//! few sequenced messages, waits for their commit, then hands over the next
//! few. Runs in one actix System, like `confab serve`.

use crate::procfs::{cpus_allowed, proc_cpu};
use crate::report::persist::PersistReport;
use crate::report::Report;
use crate::{Output, Status};
use actix::prelude::*;
use anyhow::{bail, Context as _};
use async_trait::async_trait;
use clap::Args;
use confab::chat::ChatMessage;
use confab::persist::Persist;
use confab::protocol::now_ms;
use confab::store::postgres::{redact, PgStore};
use confab::store::{RecentRef, RoomSummary, SharedStore, Store, StoreError};
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Clone)]
pub struct PersistArgs {
    /// Postgres URL, e.g. postgres://postgres@127.0.0.1:5432/confab_bench.
    #[arg(long, env = "CONFAB_BENCH_URL")]
    pub url: String,
    /// Create a fresh database named after the URL's (plus a run suffix), run
    /// the migrations into it, and drop it at the end.
    #[arg(long)]
    pub create_db: bool,
    /// Messages to write in total.
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Rooms (0: one per producer). Each room belongs to one producer, which
    /// writes its rooms round-robin, so seqs increase per room.
    #[arg(long, default_value_t = 0)]
    pub rooms: usize,
    /// Persist: flush at this many rows (`storage.batch_max`).
    #[arg(long, default_value_t = 512)]
    pub batch_max: usize,
    /// Persist: flush this long after the first row waited (`storage.flush_interval_ms`).
    #[arg(long, default_value_t = 5)]
    pub flush_interval_ms: u64,
    /// Concurrent producers, each with one write in flight (like a RoomActor).
    #[arg(long, default_value_t = 64)]
    pub producers: usize,
    /// Mean messages per `Persist::write` (each draws 1..=2*N-1, capped at
    /// --batch-max so `--batch-max 1` means one message per transaction).
    #[arg(long, default_value_t = 4)]
    pub rows_per_write: usize,
    /// Bytes of content per message.
    #[arg(long, default_value_t = 100)]
    pub content_bytes: usize,
    /// Connections in the store's pool (`storage.pool_size`).
    #[arg(long, default_value_t = 8)]
    pub pool_size: usize,
    /// Stop handing over new writes after this many seconds (the run then
    /// reports what committed and exits with status 2).
    #[arg(long, default_value_t = 300)]
    pub max_secs: u64,
}

// ------------------------------------------------------------------ persist

pub async fn persist_scenario(mut args: PersistArgs, output: Output) -> anyhow::Result<Status> {
    if args.producers == 0 || args.messages == 0 || args.batch_max == 0 {
        bail!("--producers, --messages and --batch-max must be at least 1");
    }
    if args.rows_per_write == 0 || args.pool_size == 0 {
        bail!("--rows-per-write and --pool-size must be at least 1");
    }
    if args.rooms == 0 {
        args.rooms = args.producers;
    }
    if args.rooms < args.producers {
        bail!("--rooms must be at least --producers (one sequencer per room)");
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();

    let mut created = None;
    let url = if args.create_db {
        let (admin_url, db_url, name) = fresh_database(&args.url, &run_id)?;
        create_database(&admin_url, &name).await?;
        created = Some((admin_url, name));
        db_url
    } else {
        args.url.clone()
    };
    let result = run_persist(
        &args,
        &url,
        &run_id,
        created.as_ref().map(|c| c.1.as_str()),
        output.progress,
    )
    .await;
    if let Some((admin_url, name)) = &created {
        if let Err(error) = drop_database(admin_url, name).await {
            eprintln!("confab-bench: could not drop database {name}: {error:#}");
        }
    }
    let report = result?;
    report.emit(output.json)?;
    if !report.verified() {
        bail!(
            "verification failed: {} rows and room heads summing to {} for {} committed messages",
            report.rows_in_db,
            report.head_sum,
            report.committed
        );
    }
    Ok(if report.committed == args.messages {
        Status::Complete
    } else {
        Status::Stopped
    })
}

async fn run_persist(
    args: &PersistArgs,
    url: &str,
    run_id: &str,
    database: Option<&str>,
    progress: bool,
) -> anyhow::Result<PersistReport> {
    let store = PgStore::open(url, args.pool_size)
        .await
        .with_context(|| format!("opening {}", redact(url)))?;
    let metered = Arc::new(Metered::new(store));
    let shared: SharedStore = metered.clone();
    let persist = Persist::new(
        shared,
        args.batch_max,
        Duration::from_millis(args.flush_interval_ms),
    )
    .start();

    let stop = Rc::new(Cell::new(false));
    {
        let stop = stop.clone();
        actix::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("confab-bench: interrupted; waiting for the writes in flight");
                stop.set(true);
            }
        });
    }

    let shared_state = Rc::new(Shared {
        remaining: Cell::new(args.messages),
        committed: Cell::new(0),
        writes: Cell::new(0),
        latency: RefCell::new(histogram()),
        error: RefCell::new(None),
        stop: stop.clone(),
    });
    let write_draw_max = (args.rows_per_write.saturating_mul(2) - 1).min(args.batch_max);

    let cpu_before = Cpu::sample();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_secs);
    let done = Rc::new(Cell::new(false));
    let per_second = Rc::new(RefCell::new(Vec::new()));
    let ticker = actix::spawn(tick(
        shared_state.clone(),
        done.clone(),
        per_second.clone(),
        progress,
    ));
    let producers: Vec<_> = (0..args.producers)
        .map(|index| {
            let rooms: Vec<String> = (index..args.rooms)
                .step_by(args.producers)
                .map(|r| format!("bench-{run_id}-{r}"))
                .collect();
            actix::spawn(produce(Producer {
                index,
                rooms,
                persist: persist.clone(),
                shared: shared_state.clone(),
                deadline,
                write_draw_max,
                content_bytes: args.content_bytes,
            }))
        })
        .collect();
    for producer in producers {
        producer.await.context("a producer panicked")?;
    }
    let elapsed = started.elapsed();
    let cpu_after = Cpu::sample();
    done.set(true);
    ticker.abort();
    if let Some(error) = shared_state.error.borrow_mut().take() {
        bail!("a write failed: {error}");
    }

    let (rows_in_db, head_sum) = count_rows(url, run_id).await?;
    let txns = metered.stats.lock().expect("stats lock").clone();
    let latency = shared_state.latency.borrow().clone();
    Ok(PersistReport {
        args: args.clone(),
        database: database.map(str::to_string),
        write_max: write_draw_max,
        requested: args.messages,
        committed: shared_state.committed.get(),
        writes: shared_state.writes.get(),
        elapsed,
        latency,
        txns,
        bench_cpu: cpu_after.bench.saturating_sub(cpu_before.bench),
        postgres_cpu: cpu_after.postgres_since(&cpu_before),
        cpus_allowed: cpus_allowed(),
        per_second: per_second.take(),
        rows_in_db,
        head_sum,
        stopped_early: stop.get() || shared_state.remaining.get() > 0,
    })
}

/// Every second: the messages committed in that second (and a line on stderr
/// with `--progress`).
async fn tick(shared: Rc<Shared>, done: Rc<Cell<bool>>, rates: Rc<RefCell<Vec<u64>>>, print: bool) {
    let started = Instant::now();
    let mut interval = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut last = 0;
    while !done.get() {
        interval.tick().await;
        let committed = shared.committed.get();
        rates.borrow_mut().push(committed - last);
        if print {
            eprintln!(
                "{:>6.1}s {:>10} committed {:>8} messages/s",
                started.elapsed().as_secs_f64(),
                committed,
                committed - last
            );
        }
        last = committed;
    }
}

/// State the producers share (all on the System's one thread).
struct Shared {
    pub remaining: Cell<u64>,
    pub committed: Cell<u64>,
    pub writes: Cell<u64>,
    /// Handover to commit acknowledgement, per write, in microseconds.
    pub latency: RefCell<Histogram<u64>>,
    pub error: RefCell<Option<String>>,
    pub stop: Rc<Cell<bool>>,
}

struct Producer {
    pub index: usize,
    pub rooms: Vec<String>,
    pub persist: Addr<Persist>,
    pub shared: Rc<Shared>,
    pub deadline: Instant,
    pub write_draw_max: usize,
    pub content_bytes: usize,
}

/// One producer: like a RoomActor, it has one batch in flight and waits for its
/// commit before handing over the next. It writes its rooms round-robin.
async fn produce(p: Producer) {
    let mut rng = StdRng::seed_from_u64(p.index as u64);
    let mut seqs = vec![0u64; p.rooms.len()];
    let user_id = format!("bench-user-{}", p.index);
    let user_name = format!("Bench {}", p.index);
    let mut turn = 0usize;
    loop {
        let shared = &p.shared;
        if shared.stop.get() || shared.error.borrow().is_some() {
            return;
        }
        if Instant::now() >= p.deadline {
            shared.stop.set(true);
            return;
        }
        let want = rng.random_range(1..=p.write_draw_max) as u64;
        let take = want.min(shared.remaining.get());
        if take == 0 {
            return;
        }
        shared.remaining.set(shared.remaining.get() - take);
        let slot = turn % p.rooms.len();
        turn += 1;
        let rows: Vec<Arc<ChatMessage>> = (0..take)
            .map(|_| {
                seqs[slot] += 1;
                Arc::new(ChatMessage {
                    room: p.rooms[slot].clone(),
                    seq: seqs[slot],
                    id: uuid::Uuid::now_v7().to_string(),
                    user_id: user_id.clone(),
                    user_name: user_name.clone(),
                    content: content(&mut rng, p.content_bytes),
                    timestamp_ms: now_ms(),
                    client_ref: Some(format!("r{}", rng.random::<u32>())),
                    ..ChatMessage::default()
                })
            })
            .collect();
        let handed_over = Instant::now();
        match Persist::write(&p.persist, rows).await {
            Ok(()) => {
                let micros = handed_over.elapsed().as_micros() as u64;
                shared.latency.borrow_mut().saturating_record(micros.max(1));
                shared.committed.set(shared.committed.get() + take);
                shared.writes.set(shared.writes.get() + 1);
            }
            Err(error) => {
                shared.error.borrow_mut().get_or_insert(error.to_string());
                return;
            }
        }
    }
}

const WORDS: &[&str] = &[
    "the", "deploy", "is", "green", "again", "can", "someone", "review", "my", "pull", "request",
    "lunch", "at", "noon", "?", "ok", "thanks", "looks", "good", "to", "me", "shipping", "it",
    "now", "the", "build", "broke", "on", "main", "fixed", "in", "a", "minute", "standup", "moved",
    "coffee", "anyone", "👍", "will", "check", "later",
];

/// About `bytes` bytes of chat-like text (whole characters, never more).
pub fn content(rng: &mut StdRng, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + 8);
    while out.len() < bytes {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    while out.len() > bytes {
        out.pop();
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    if out.is_empty() {
        out.push('x');
    }
    out
}

pub fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// The Postgres store with a meter on `insert_batch`: one call is one Persist
/// flush, i.e. one transaction.
struct Metered {
    pub inner: PgStore,
    pub stats: Mutex<TxnStats>,
}

#[derive(Clone)]
pub struct TxnStats {
    pub transactions: u64,
    pub rows: u64,
    pub max_rows: u64,
    /// Total time a transaction was in flight.
    pub busy: Duration,
    /// Duration of each `insert_batch` (pool checkout, INSERTs, COMMIT), µs.
    pub duration: Histogram<u64>,
}

impl Metered {
    pub fn new(inner: PgStore) -> Self {
        Self {
            inner,
            stats: Mutex::new(TxnStats {
                transactions: 0,
                rows: 0,
                max_rows: 0,
                busy: Duration::ZERO,
                duration: histogram(),
            }),
        }
    }
}

#[async_trait]
impl Store for Metered {
    fn concurrent_writes(&self) -> usize {
        self.inner.concurrent_writes()
    }

    async fn insert_batch(&self, batch: Vec<Arc<ChatMessage>>) -> Result<(), StoreError> {
        let rows = batch.len() as u64;
        let started = Instant::now();
        let result = self.inner.insert_batch(batch).await;
        let took = started.elapsed();
        if result.is_ok() {
            let mut stats = self.stats.lock().expect("stats lock");
            stats.transactions += 1;
            stats.rows += rows;
            stats.max_rows = stats.max_rows.max(rows);
            stats.busy += took;
            stats
                .duration
                .saturating_record((took.as_micros() as u64).max(1));
        }
        result
    }

    async fn last_seq(&self, room: &str) -> Result<u64, StoreError> {
        self.inner.last_seq(room).await
    }

    async fn range(
        &self,
        room: &str,
        after: u64,
        upto: u64,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.inner.range(room, after, upto).await
    }

    async fn page(
        &self,
        room: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.inner.page(room, before, limit).await
    }

    async fn targets(
        &self,
        room: &str,
        ids: Vec<String>,
        users: Vec<String>,
    ) -> Result<Vec<confab::changes::TargetState>, StoreError> {
        self.inner.targets(room, ids, users).await
    }

    async fn rooms(&self) -> Result<Vec<RoomSummary>, StoreError> {
        self.inner.rooms().await
    }

    async fn recent_refs(&self, since_ms: i64) -> Result<Vec<RecentRef>, StoreError> {
        self.inner.recent_refs(since_ms).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn raw_query(
        &self,
        sql: &'static str,
        params: Vec<confab::store::Param>,
    ) -> Result<Vec<confab::store::Row>, StoreError> {
        self.inner.raw_query(sql, params).await
    }

    async fn raw_exec(&self, steps: Vec<confab::store::Apply>) -> Result<Vec<usize>, StoreError> {
        self.inner.raw_exec(steps).await
    }
}

// ----------------------------------------------------------------- database

/// `(admin URL, URL of the fresh database, its name)`: the name is the URL's
/// database plus `_<run id>`, so concurrent runs never share a database.
fn fresh_database(url: &str, run_id: &str) -> anyhow::Result<(String, String, String)> {
    let (scheme, rest) = url
        .split_once("://")
        .context("--url must look like postgres://user@host:port/database")?;
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, base) = before_query.split_once('/').unwrap_or((before_query, ""));
    let base = if base.is_empty() {
        "confab_bench"
    } else {
        base
    };
    if !base
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        bail!("with --create-db the URL's database name must be [a-z0-9_]+, not {base:?}");
    }
    let base: String = base.chars().take(40).collect();
    let name = format!("{base}_{run_id}");
    let build = |db: &str| match query {
        Some(q) => format!("{scheme}://{authority}/{db}?{q}"),
        None => format!("{scheme}://{authority}/{db}"),
    };
    Ok((build("postgres"), build(&name), name))
}

/// How long connecting for setup, verification and cleanup may take.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

pub async fn connect(url: &str) -> anyhow::Result<AsyncPgConnection> {
    match tokio::time::timeout(CONNECT_WAIT, AsyncPgConnection::establish(url)).await {
        Ok(conn) => conn.with_context(|| format!("connecting to {}", redact(url))),
        Err(_) => bail!(
            "connecting to {}: no answer within {}s",
            redact(url),
            CONNECT_WAIT.as_secs()
        ),
    }
}

async fn create_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = connect(admin_url).await?;
    diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .with_context(|| format!("CREATE DATABASE {name}"))?;
    Ok(())
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = connect(admin_url).await?;
    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .with_context(|| format!("DROP DATABASE {name}"))?;
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct Counts {
    #[diesel(sql_type = BigInt)]
    pub message_rows: i64,
    #[diesel(sql_type = BigInt)]
    pub head_sum: i64,
}

/// This run's rows in `messages`, and the sum of its rooms' `last_seq` (equal
/// to the rows when every room's seqs 1..=last_seq all landed).
async fn count_rows(url: &str, run_id: &str) -> anyhow::Result<(u64, u64)> {
    let mut conn = connect(url).await?;
    let counts: Counts = diesel::sql_query(
        "SELECT (SELECT count(*) FROM messages WHERE room LIKE $1) AS message_rows, \
         (SELECT coalesce(sum(last_seq), 0)::bigint FROM rooms WHERE name LIKE $1) AS head_sum",
    )
    .bind::<Text, _>(format!("bench-{run_id}-%"))
    .get_result(&mut conn)
    .await
    .context("counting the committed rows")?;
    Ok((
        counts.message_rows.max(0) as u64,
        counts.head_sum.max(0) as u64,
    ))
}

// ---------------------------------------------------------------------- cpu

/// CPU time (user + system) of this process and of every `postgres` process.
struct Cpu {
    pub bench: Duration,
    pub postgres: Vec<(u32, Duration)>,
}

impl Cpu {
    fn sample() -> Self {
        let mut postgres = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Some((comm, time)) = proc_cpu(&format!("/proc/{pid}/stat")) {
                    if comm == "postgres" {
                        postgres.push((pid, time));
                    }
                }
            }
        }
        Self {
            bench: proc_cpu("/proc/self/stat").map_or(Duration::ZERO, |(_, t)| t),
            postgres,
        }
    }

    /// Postgres CPU between two samples (processes that started since count from zero).
    fn postgres_since(&self, before: &Cpu) -> Option<Duration> {
        if self.postgres.is_empty() {
            return None;
        }
        let mut total = Duration::ZERO;
        for (pid, time) in &self.postgres {
            let earlier = before
                .postgres
                .iter()
                .find(|(p, _)| p == pid)
                .map_or(Duration::ZERO, |(_, t)| *t);
            total += time.saturating_sub(earlier);
        }
        Some(total)
    }
}
