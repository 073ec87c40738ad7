//! The Persist actor: group commit. It gathers sequenced messages (from rooms in
//! embedded mode, from the Redis persist stream in cluster mode) and writes them
//! in batches (at `batch_max` messages, or `flush_interval_ms` after the first
//! one waited) in one transaction each, one batch at a time, then answers every
//! contributor. Nothing is acknowledged to a client before its batch committed.

use crate::protocol::ChatMessage;
use crate::store::SharedStore;
use actix::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Why a batch was not written (already logged by Persist).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the store failed: {0}")]
pub struct PersistFailed(pub String);

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
    flushing: bool,
    timer: Option<SpawnHandle>,
    drain_waiters: Vec<oneshot::Sender<()>>,
}

impl Persist {
    pub fn new(store: SharedStore, batch_max: usize, flush_interval: Duration) -> Self {
        Self {
            store,
            batch_max,
            flush_interval,
            buffer: Vec::new(),
            buffered_rows: 0,
            flushing: false,
            timer: None,
            drain_waiters: Vec::new(),
        }
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
            .map_err(|e| PersistFailed(format!("persist actor gone: {e}")))?;
        outcome
            .await
            .map_err(|_| PersistFailed("persist actor dropped the batch".into()))?
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.buffer.is_empty() {
            return;
        }
        if self.buffered_rows >= self.batch_max {
            self.flush(ctx);
        } else if self.timer.is_none() {
            self.timer = Some(ctx.run_later(self.flush_interval, |act, ctx| {
                act.timer = None;
                act.flush(ctx);
            }));
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.buffer.is_empty() {
            self.release_drain_waiters();
            return;
        }
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        // Whole contributions only, so each one commits or fails as a unit.
        let mut take = 0;
        let mut rows_taken = 0;
        for item in &self.buffer {
            if take > 0 && rows_taken + item.rows.len() > self.batch_max {
                break;
            }
            take += 1;
            rows_taken += item.rows.len();
        }
        let batch: Vec<Enqueue> = self.buffer.drain(..take).collect();
        self.buffered_rows -= rows_taken;
        let rows: Vec<Arc<ChatMessage>> =
            batch.iter().flat_map(|i| i.rows.iter().cloned()).collect();
        self.flushing = true;
        let store = self.store.clone();
        let started = std::time::Instant::now();
        ctx.spawn(
            async move { store.insert_batch(rows).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.flushing = false;
                    let outcome = match result {
                        Ok(()) => {
                            tracing::trace!(
                                rows = rows_taken,
                                elapsed_us = started.elapsed().as_micros() as u64,
                                "batch committed"
                            );
                            Ok(())
                        }
                        Err(error) => {
                            tracing::error!(%error, rows = rows_taken, "batch failed; nothing in it is acknowledged");
                            Err(PersistFailed(error.to_string()))
                        }
                    };
                    for item in batch {
                        let _ = item.done.send(outcome.clone());
                    }
                    // Whatever queued during the write has waited long enough.
                    if act.buffer.is_empty() {
                        act.release_drain_waiters();
                    } else {
                        act.flush(ctx);
                    }
                }),
        );
    }

    fn release_drain_waiters(&mut self) {
        if self.buffer.is_empty() && !self.flushing {
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
    }
}

impl Handler<Drain> for Persist {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.drain_waiters.push(tx);
        if self.flushing {
            // The running flush continues with the rest of the buffer.
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
