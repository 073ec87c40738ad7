//! Cluster mode's input to the Persist actor: a consumer of the persist stream
//! in the group `persist`. Entries are read in batches, handed to Persist, and
//! acknowledged (and deleted) only after their transaction committed; entries
//! left pending by an instance that died are claimed after a while, so every
//! message an instance acked reaches the database.

use super::redis::decode_body;
use crate::persist::{Persist, PersistFailed};
use crate::protocol::ChatMessage;
use actix::prelude::*;
use deadpool_redis::redis::{
    self, aio::MultiplexedConnection, streams::StreamId, AsyncConnectionConfig, RedisResult,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

pub const GROUP: &str = "persist";
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

pub struct Feed {
    pub client: redis::Client,
    pub stream: String,
    pub consumer: String,
    pub persist: Addr<Persist>,
    pub batch_max: usize,
    pub shutdown: watch::Receiver<bool>,
}

pub fn spawn(feed: Feed) {
    actix::spawn(report_lag(
        feed.client.clone(),
        feed.stream.clone(),
        feed.shutdown.clone(),
    ));
    actix::spawn(run(feed));
}

/// Entries leave the stream only once committed (XACK + XDEL), so its length
/// is the cluster's persist lag. Measured on its own connection and task: the
/// read loop stands still exactly when the lag grows (Postgres down, Persist
/// full), and blocking reads would delay it.
async fn report_lag(client: redis::Client, stream: String, shutdown: watch::Receiver<bool>) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut every = tokio::time::interval(LAG_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if *shutdown.borrow() {
            return;
        }
        if conn.is_none() {
            conn = client.get_multiplexed_async_connection().await.ok();
        }
        if let Some(c) = conn.as_mut() {
            match redis::cmd("XLEN").arg(&stream).query_async::<u64>(c).await {
                Ok(len) => crate::metrics::get().persist_lag.set(len as f64),
                Err(_) => conn = None,
            }
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
    let created: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&feed.stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await;
    if let Err(e) = created {
        if e.code() != Some("BUSYGROUP") {
            return Err(e);
        }
    }
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

/// Waits for each batch's commit, in order, then XACKs and XDELs its entries.
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
            .unwrap_or_else(|_| Err(PersistFailed("persist dropped the batch".into())));
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
        let acked: RedisResult<()> = redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(&batch.ids)
            .ignore()
            .cmd("XDEL")
            .arg(&stream)
            .arg(&batch.ids)
            .ignore()
            .query_async(&mut conn)
            .await;
        if let Err(error) = acked {
            // The entries stay pending and are written again later (a no-op).
            tracing::warn!(%error, "could not acknowledge persisted entries");
        }
    }
}
