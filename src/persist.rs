//! The Persist actor: group commit. It gathers sequenced messages (from rooms in
//! embedded mode, from the Redis persist stream in cluster mode) and writes them
//! in batches, one transaction each, then answers every contributor. Nothing is
//! acknowledged to a client before its batch committed.
//!
//! When idle it writes at once; while a transaction runs, what arrives gathers
//! into the next batch, which starts at `batch_max` messages, after
//! `flush_interval_ms`, or when the running one ends. Two transactions may run
//! at once, but never two with the same room, so a room's messages commit in
//! seq order.

use crate::chat::ChatMessage;
use crate::store::SharedStore;
use actix::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

/// Why a batch was not written (already logged by Persist). Cloned to every
/// sender of the batch, so the store's error is shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PersistFailed {
    #[error("the store failed: {0}")]
    Store(#[source] Arc<crate::store::StoreError>),
    #[error("the persist actor is gone")]
    Gone,
}

/// Messages to write; `done` hears the outcome of the transaction they were in.
/// Messages of one room must be handed over in seq order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue {
    pub rows: Vec<Arc<ChatMessage>>,
    pub done: oneshot::Sender<Result<(), PersistFailed>>,
}

/// Ask Persist to write everything it holds (shutdown); resolves when done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

pub struct Persist {
    store: SharedStore,
    batch_max: usize,
    flush_interval: Duration,
    buffer: Vec<Enqueue>,
    buffered_rows: usize,
    in_flight: usize,
    /// Transactions in flight at once (the store's `concurrent_writes`).
    max_in_flight: usize,
    /// When the last transaction started (see [`Persist::paced`]).
    last_start: Option<std::time::Instant>,
    in_flight_rows: usize,
    /// Publishes `confab_persist_lag` (embedded mode; in cluster mode the
    /// persist stream's length is the lag, reported by its feed).
    reports_lag: bool,
    /// Rooms with messages in a running transaction (and how many transactions).
    busy_rooms: HashMap<String, usize>,
    timer: Option<SpawnHandle>,
    drain_waiters: Vec<oneshot::Sender<()>>,
    /// Embedded mode: committed batches go on to the analytics stage.
    analytics: Option<Recipient<crate::analytics::Committed>>,
}

impl Persist {
    pub fn new(store: SharedStore, batch_max: usize, flush_interval: Duration) -> Self {
        Self {
            max_in_flight: store.concurrent_writes().max(1),
            last_start: None,
            store,
            batch_max,
            flush_interval,
            buffer: Vec::new(),
            buffered_rows: 0,
            in_flight: 0,
            in_flight_rows: 0,
            reports_lag: false,
            busy_rooms: HashMap::new(),
            timer: None,
            drain_waiters: Vec::new(),
            analytics: None,
        }
    }

    /// Hands every committed batch on to `analytics`.
    pub fn feeding(mut self, analytics: Recipient<crate::analytics::Committed>) -> Self {
        self.analytics = Some(analytics);
        self
    }

    /// Writes `rows` through Persist and waits for the commit.
    pub async fn write(
        persist: &Addr<Persist>,
        rows: Vec<Arc<ChatMessage>>,
    ) -> Result<(), PersistFailed> {
        let (done, outcome) = oneshot::channel();
        persist
            .send(Enqueue { rows, done })
            .await
            .map_err(|_| PersistFailed::Gone)?;
        outcome.await.map_err(|_| PersistFailed::Gone)?
    }

    /// This Persist's queue is the instance's whole persist lag.
    pub fn reporting_lag(mut self) -> Self {
        self.reports_lag = true;
        self
    }

    fn report_lag(&self) {
        if self.reports_lag {
            crate::metrics::get()
                .persist_lag
                .set((self.buffered_rows + self.in_flight_rows) as f64);
        }
    }

    /// One writer (SQLite): transactions start at most once per flush
    /// interval. Each commit costs a WAL write of every page it touched and
    /// an fsync, on the same core as everything else; spacing commits makes
    /// them bigger and fewer under load, while a message still waits at most
    /// the interval plus one commit.
    fn paced(&self) -> bool {
        self.max_in_flight == 1
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if self.buffer.is_empty() || self.in_flight >= self.max_in_flight {
            return;
        }
        let now = std::time::Instant::now();
        let due = if self.paced() {
            self.last_start
                .map(|at| at + self.flush_interval)
                .filter(|due| *due > now)
        } else {
            None
        };
        if self.buffered_rows >= self.batch_max || (self.in_flight == 0 && due.is_none()) {
            self.flush(ctx);
        } else if self.timer.is_none() {
            let wait = match due {
                Some(due) if self.in_flight == 0 => due - now,
                _ => self.flush_interval,
            };
            self.timer = Some(ctx.run_later(wait, |act, ctx| {
                act.timer = None;
                act.flush(ctx);
            }));
        }
    }

    /// Picks the next batch: whole contributions, oldest first, up to
    /// `batch_max` rows, skipping any that touch a room of a running
    /// transaction (and everything after them for their rooms, to keep order).
    fn take_batch(&mut self) -> Vec<Enqueue> {
        let mut blocked: HashSet<&str> = self.busy_rooms.keys().map(String::as_str).collect();
        let mut chosen = Vec::new();
        let mut rows = 0;
        for (index, item) in self.buffer.iter().enumerate() {
            if rows > 0 && rows + item.rows.len() > self.batch_max {
                break;
            }
            if item.rows.iter().any(|m| blocked.contains(m.room.as_str())) {
                blocked.extend(item.rows.iter().map(|m| m.room.as_str()));
                continue;
            }
            chosen.push(index);
            rows += item.rows.len();
        }
        let mut batch = Vec::with_capacity(chosen.len());
        for index in chosen.into_iter().rev() {
            batch.push(self.buffer.remove(index));
        }
        batch.reverse();
        self.buffered_rows -= rows;
        batch
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight >= self.max_in_flight || self.buffer.is_empty() {
            self.release_drain_waiters();
            return;
        }
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        let batch = self.take_batch();
        if batch.is_empty() {
            return; // everything waits for a running transaction's rooms
        }
        let rows: Vec<Arc<ChatMessage>> =
            batch.iter().flat_map(|i| i.rows.iter().cloned()).collect();
        let rooms: HashSet<String> = rows.iter().map(|m| m.room.clone()).collect();
        for room in &rooms {
            *self.busy_rooms.entry(room.clone()).or_insert(0) += 1;
        }
        let row_count = rows.len();
        self.last_start = Some(std::time::Instant::now());
        self.in_flight += 1;
        self.in_flight_rows += row_count;
        let store = self.store.clone();
        let started = std::time::Instant::now();
        let committed = self.analytics.as_ref().map(|_| rows.clone());
        ctx.spawn(
            async move { store.insert_batch(rows).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.in_flight -= 1;
                    act.in_flight_rows -= row_count;
                    let metrics = crate::metrics::get();
                    metrics.persist_batch_size.record(row_count as f64);
                    metrics
                        .persist_flush_seconds
                        .record(crate::metrics::seconds(started.elapsed()));
                    if result.is_err() {
                        metrics.persist_failures.increment(1);
                    }
                    act.report_lag();
                    for room in rooms {
                        if let Some(n) = act.busy_rooms.get_mut(&room) {
                            *n -= 1;
                            if *n == 0 {
                                act.busy_rooms.remove(&room);
                            }
                        }
                    }
                    let outcome = match result {
                        Ok(()) => {
                            if let (Some(analytics), Some(messages)) = (&act.analytics, committed) {
                                analytics.do_send(crate::analytics::Committed {
                                    messages,
                                    entries: Vec::new(),
                                });
                            }
                            tracing::trace!(
                                rows = row_count,
                                elapsed_us = started.elapsed().as_micros() as u64,
                                "batch committed"
                            );
                            Ok(())
                        }
                        Err(error) => {
                            tracing::error!(%error, rows = row_count, "batch failed; nothing in it is acknowledged");
                            Err(PersistFailed::Store(Arc::new(error)))
                        }
                    };
                    for item in batch {
                        let _ = item.done.send(outcome.clone());
                    }
                    // Whatever queued during the write has waited long enough.
                    if act.buffer.is_empty() {
                        act.release_drain_waiters();
                    } else if act.paced() && act.drain_waiters.is_empty() {
                        act.schedule(ctx);
                    } else {
                        act.flush(ctx);
                    }
                }),
        );
        // A second transaction may start if enough is already waiting.
        self.schedule(ctx);
    }

    fn release_drain_waiters(&mut self) {
        if self.buffer.is_empty() && self.in_flight == 0 {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

impl Actor for Persist {
    type Context = Context<Self>;
}

impl Handler<Enqueue> for Persist {
    type Result = ();

    fn handle(&mut self, item: Enqueue, ctx: &mut Self::Context) {
        if item.rows.is_empty() {
            let _ = item.done.send(Ok(()));
            return;
        }
        self.buffered_rows += item.rows.len();
        self.buffer.push(item);
        self.schedule(ctx);
        self.report_lag();
    }
}

impl Handler<Drain> for Persist {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.drain_waiters.push(tx);
        if self.in_flight > 0 {
            // The running flushes continue with the rest of the buffer.
        } else if self.buffer.is_empty() {
            self.release_drain_waiters();
        } else {
            self.flush(ctx);
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
