//! Cluster mode's readers of the persist stream, each a consumer group:
//! `persist` hands entries to the Persist actor and acknowledges them only
//! after their transaction committed; `analytics` hands them to the analytics
//! stage, which acknowledges them once counted. Entries left pending by an
//! instance that died are claimed after a while, so every message an instance
//! acked reaches the database and the counters. Entries leave the stream when
//! both groups acknowledged them (`trim`).

use super::wire::decode_body;
use crate::chat::ChatMessage;
use crate::persist::{Persist, PersistFailed};
use actix::prelude::*;
use deadpool_redis::redis::{
    self, aio::MultiplexedConnection, streams::StreamId, AsyncConnectionConfig, RedisResult,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

pub const GROUP: &str = "persist";
pub const ANALYTICS_GROUP: &str = "analytics";
/// Acknowledged entries are trimmed from the stream this often.
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// Entries another consumer has held this long unacknowledged are taken over.
const CLAIM_IDLE_MS: u64 = 15_000;
const CLAIM_EVERY: Duration = Duration::from_secs(5);
/// Consumers (past instances) idle this long with nothing pending are removed.
const FORGET_CONSUMER_IDLE_MS: usize = 3_600_000;
const READ_BLOCK_MS: u64 = 1_000;
const LAG_EVERY: Duration = Duration::from_secs(1);
/// Batches handed to Persist but not yet acknowledged.
const IN_FLIGHT: usize = 4;
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Entries the analytics reader takes at once.
const ANALYTICS_READ: usize = 1_000;

pub struct Feed {
    pub client: redis::Client,
    pub stream: String,
    pub consumer: String,
    pub persist: Addr<Persist>,
    pub batch_max: usize,
    pub shutdown: watch::Receiver<bool>,
}

/// The analytics group's reader: the stage it feeds, and the stream ids the
/// stage counted, to acknowledge.
pub struct AnalyticsFeed {
    pub analytics: Addr<crate::analytics::Analytics>,
    pub acks: mpsc::UnboundedReceiver<Vec<String>>,
}

pub fn spawn(feed: Feed, analytics: AnalyticsFeed) {
    actix::spawn(report_lag(
        feed.client.clone(),
        feed.stream.clone(),
        feed.shutdown.clone(),
    ));
    actix::spawn(run_analytics(
        feed.client.clone(),
        feed.stream.clone(),
        feed.consumer.clone(),
        analytics.analytics,
        analytics.acks,
        feed.shutdown.clone(),
    ));
    actix::spawn(run(feed));
}

/// The persist lag: entries the group `persist` has not committed yet (read
/// but pending, and not read at all). Measured on its own connection and
/// task, which also trims the stream: the read loop stands still exactly when
/// the lag grows (Postgres down, Persist full), and blocking reads would
/// delay it.
async fn report_lag(client: redis::Client, stream: String, shutdown: watch::Receiver<bool>) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut every = tokio::time::interval(LAG_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_trim: Option<Instant> = None;
    loop {
        every.tick().await;
        if *shutdown.borrow() {
            return;
        }
        if conn.is_none() {
            conn = client.get_multiplexed_async_connection().await.ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        let groups: RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(c)
            .await;
        let groups = match groups {
            Ok(groups) => groups.groups,
            Err(e) if e.code() == Some("ERR") => Vec::new(), // no stream yet
            Err(_) => {
                conn = None;
                continue;
            }
        };
        if let Some(persist) = groups.iter().find(|g| g.name == GROUP) {
            let waiting = match persist.lag {
                Some(lag) => lag,
                // Unknown after some deletions: everything in the stream is the bound.
                None => redis::cmd("XLEN")
                    .arg(&stream)
                    .query_async::<usize>(c)
                    .await
                    .unwrap_or(0),
            };
            crate::metrics::get()
                .persist_lag
                .set((persist.pending + waiting) as f64);
        }
        if last_trim.is_none_or(|at| at.elapsed() >= TRIM_EVERY) {
            last_trim = Some(Instant::now());
            if let Err(error) = trim(c, &stream, &groups).await {
                tracing::debug!(%error, "could not trim the persist stream");
            }
        }
    }
}

/// Drops the entries every group has acknowledged: those below the oldest
/// entry any group still holds pending, and not past any group's read point.
async fn trim(
    conn: &mut MultiplexedConnection,
    stream: &str,
    groups: &[redis::streams::StreamInfoGroup],
) -> RedisResult<()> {
    // Both groups must exist, or entries one of them never saw would go.
    if [GROUP, ANALYTICS_GROUP]
        .iter()
        .any(|name| !groups.iter().any(|g| g.name == *name))
    {
        return Ok(());
    }
    let mut keep_from: Option<StreamIdKey> = None;
    for group in groups {
        let oldest_needed = if group.pending > 0 {
            let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
                .arg(stream)
                .arg(&group.name)
                .query_async(conn)
                .await?;
            match pending {
                redis::streams::StreamPendingReply::Data(data) => {
                    StreamIdKey::parse(&data.start_id)
                }
                _ => StreamIdKey::parse(&group.last_delivered_id).map(StreamIdKey::next),
            }
        } else {
            StreamIdKey::parse(&group.last_delivered_id).map(StreamIdKey::next)
        };
        let Some(oldest_needed) = oldest_needed else {
            return Ok(()); // unreadable id: keep everything
        };
        keep_from = Some(keep_from.map_or(oldest_needed, |k| k.min(oldest_needed)));
    }
    if let Some(keep_from) = keep_from {
        redis::cmd("XTRIM")
            .arg(stream)
            .arg("MINID")
            .arg(keep_from.to_string())
            .query_async::<()>(conn)
            .await?;
    }
    Ok(())
}

/// A stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct StreamIdKey(u64, u64);

impl StreamIdKey {
    fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }

    fn next(self) -> Self {
        match self.1.checked_add(1) {
            Some(seq) => Self(self.0, seq),
            None => Self(self.0 + 1, 0),
        }
    }
}

impl std::fmt::Display for StreamIdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// The analytics group's reader: hands entries to the analytics stage and
/// acknowledges those it counted.
async fn run_analytics(
    client: redis::Client,
    stream: String,
    consumer: String,
    analytics: Addr<crate::analytics::Analytics>,
    mut acks: mpsc::UnboundedReceiver<Vec<String>>,
    shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match analytics_session(
            &client, &stream, &consumer, &analytics, &mut acks, &shutdown,
        )
        .await
        {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, "analytics feed interrupted; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

async fn create_group(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> RedisResult<()> {
    let created: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

async fn analytics_session(
    client: &redis::Client,
    stream: &str,
    consumer: &str,
    analytics: &Addr<crate::analytics::Analytics>,
    acks: &mut mpsc::UnboundedReceiver<Vec<String>>,
    shutdown: &watch::Receiver<bool>,
) -> RedisResult<()> {
    let mut conn = connect(client).await?;
    create_group(&mut conn, stream, ANALYTICS_GROUP).await?;
    let mut last_claim: Option<Instant> = None;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        while let Ok(ids) = acks.try_recv() {
            redis::cmd("XACK")
                .arg(stream)
                .arg(ANALYTICS_GROUP)
                .arg(&ids)
                .query_async::<()>(&mut conn)
                .await?;
        }
        let mut entries: Vec<StreamId> = Vec::new();
        if last_claim.is_none_or(|at| at.elapsed() >= CLAIM_EVERY) {
            last_claim = Some(Instant::now());
            let claimed: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(ANALYTICS_GROUP)
                .arg(consumer)
                .arg(CLAIM_IDLE_MS)
                .arg("0-0")
                .arg("COUNT")
                .arg(ANALYTICS_READ)
                .query_async(&mut conn)
                .await?;
            entries = claimed.claimed;
        }
        if entries.is_empty() {
            let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(ANALYTICS_GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(ANALYTICS_READ)
                .arg("BLOCK")
                .arg(READ_BLOCK_MS)
                .arg("STREAMS")
                .arg(stream)
                .arg(">")
                .query_async(&mut conn)
                .await?;
            entries = reply
                .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                .unwrap_or_default();
        }
        if entries.is_empty() {
            continue;
        }
        let mut messages = Vec::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len());
        let mut unreadable = Vec::new();
        for entry in entries {
            match decode_entry(&entry) {
                Some(m) => {
                    ids.push((m.room.clone(), m.seq, entry.id));
                    messages.push(Arc::new(m));
                }
                None => unreadable.push(entry.id),
            }
        }
        if !unreadable.is_empty() {
            redis::cmd("XACK")
                .arg(stream)
                .arg(ANALYTICS_GROUP)
                .arg(&unreadable)
                .query_async::<()>(&mut conn)
                .await?;
        }
        // Waits while the stage's mailbox is full: backpressure on reading.
        if analytics
            .send(crate::analytics::Committed {
                messages,
                entries: ids,
            })
            .await
            .is_err()
        {
            return Ok(()); // the stage stopped: shutting down
        }
    }
}

/// One batch between read and acknowledgement.
struct Handed {
    ids: Vec<String>,
    rows: Vec<Arc<ChatMessage>>,
    done: oneshot::Receiver<Result<(), PersistFailed>>,
}

async fn run(feed: Feed) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *feed.shutdown.borrow() {
            return;
        }
        match session(&feed).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, "persist feed interrupted; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Blocking reads need their own connection with no response timeout
/// (DEPENDENCY-NOTES pitfall 4).
async fn connect(client: &redis::Client) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn session(feed: &Feed) -> RedisResult<()> {
    let mut conn = connect(&feed.client).await?;
    create_group(&mut conn, &feed.stream, GROUP).await?;
    // Acknowledging runs beside reading, so the next batch is read while the
    // previous one is being written.
    let (handed_tx, handed_rx) = mpsc::channel::<Handed>(IN_FLIGHT);
    let acker = tokio::spawn(acknowledge(
        conn.clone(),
        feed.stream.clone(),
        feed.persist.clone(),
        handed_rx,
        feed.shutdown.clone(),
    ));
    let result = read_loop(feed, &mut conn, handed_tx).await;
    // The acker finishes what was handed over (or stops at shutdown).
    let _ = acker.await;
    result
}

async fn read_loop(
    feed: &Feed,
    conn: &mut MultiplexedConnection,
    handed: mpsc::Sender<Handed>,
) -> RedisResult<()> {
    let mut last_claim: Option<Instant> = None;
    loop {
        if *feed.shutdown.borrow() {
            return Ok(());
        }
        if last_claim.is_none_or(|at| at.elapsed() >= CLAIM_EVERY) {
            last_claim = Some(Instant::now());
            let claimed: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&feed.stream)
                .arg(GROUP)
                .arg(&feed.consumer)
                .arg(CLAIM_IDLE_MS)
                .arg("0-0")
                .arg("COUNT")
                .arg(feed.batch_max)
                .query_async(conn)
                .await?;
            forget_dead_consumers(feed, conn).await?;
            if !claimed.claimed.is_empty() {
                tracing::info!(
                    entries = claimed.claimed.len(),
                    "took over messages another instance left unwritten"
                );
                hand_over(feed, claimed.claimed, &handed).await?;
            }
        }
        let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&feed.consumer)
            .arg("COUNT")
            .arg(feed.batch_max)
            .arg("BLOCK")
            .arg(READ_BLOCK_MS)
            .arg("STREAMS")
            .arg(&feed.stream)
            .arg(">")
            .query_async(conn)
            .await?;
        let entries: Vec<StreamId> = reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default();
        if !entries.is_empty() {
            hand_over(feed, entries, &handed).await?;
        }
    }
}

/// Every restart leaves a consumer name behind; drop those that hold nothing.
async fn forget_dead_consumers(feed: &Feed, conn: &mut MultiplexedConnection) -> RedisResult<()> {
    let info: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&feed.stream)
        .arg(GROUP)
        .query_async(conn)
        .await?;
    for consumer in info.consumers {
        if consumer.pending == 0
            && consumer.idle > FORGET_CONSUMER_IDLE_MS
            && consumer.name != feed.consumer
        {
            redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(&feed.stream)
                .arg(GROUP)
                .arg(&consumer.name)
                .query_async::<()>(conn)
                .await?;
        }
    }
    Ok(())
}

fn decode_entry(entry: &StreamId) -> Option<ChatMessage> {
    let room: String = entry.get("r")?;
    let seq: u64 = entry.get::<String>("s")?.parse().ok()?;
    let body: String = entry.get("b")?;
    decode_body(&room, seq, &body)
}

async fn hand_over(
    feed: &Feed,
    entries: Vec<StreamId>,
    handed: &mpsc::Sender<Handed>,
) -> RedisResult<()> {
    let mut ids = Vec::with_capacity(entries.len());
    let mut rows = Vec::with_capacity(entries.len());
    for entry in entries {
        match decode_entry(&entry) {
            Some(m) => rows.push(Arc::new(m)),
            // Not ours to fix: acknowledged with the batch so it can't block the stream.
            None => tracing::error!(id = %entry.id, "unreadable persist stream entry skipped"),
        }
        ids.push(entry.id);
    }
    let (done_tx, done) = oneshot::channel();
    feed.persist.do_send(crate::persist::Enqueue {
        rows: rows.clone(),
        done: done_tx,
    });
    handed
        .send(Handed { ids, rows, done })
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "persist feed stopped")))
}

/// Waits for each batch's commit, in order, then XACKs its entries (they leave
/// the stream once the analytics group has them too: `trim`).
/// A failed batch is written again (with backoff) before anything after it is
/// acknowledged; nothing is acknowledged before it is in the database.
async fn acknowledge(
    mut conn: MultiplexedConnection,
    stream: String,
    persist: Addr<Persist>,
    mut handed: mpsc::Receiver<Handed>,
    shutdown: watch::Receiver<bool>,
) {
    while let Some(batch) = handed.recv().await {
        let mut outcome = batch
            .done
            .await
            .unwrap_or_else(|_| Err(PersistFailed::Gone));
        let mut backoff = Duration::from_millis(100);
        while let Err(error) = outcome {
            if *shutdown.borrow() {
                return; // left pending: claimed after a restart or by another instance
            }
            tracing::warn!(%error, rows = batch.rows.len(), "persisting from the stream failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            outcome = Persist::write(&persist, batch.rows.clone()).await;
        }
        let acked: RedisResult<()> = redis::cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(&batch.ids)
            .query_async(&mut conn)
            .await;
        if let Err(error) = acked {
            // The entries stay pending and are written again later (a no-op).
            tracing::warn!(%error, "could not acknowledge persisted entries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StreamIdKey;

    #[test]
    fn stream_ids_order_and_step_like_redis() {
        let a = StreamIdKey::parse("1700000000000-5").expect("id");
        let b = StreamIdKey::parse("1700000000001-0").expect("id");
        assert!(a < b);
        assert_eq!(a.next().to_string(), "1700000000000-6");
        assert_eq!(StreamIdKey(7, u64::MAX).next().to_string(), "8-0");
        assert!(StreamIdKey::parse("nonsense").is_none());
    }
}
