//! The Persist actor: group commit. Rooms hand it sequenced messages; it writes
//! them in batches (at `batch_max` messages, or `flush_interval_ms` after the first
//! one waited) in one transaction each, one batch at a time so commit order is seq
//! order, and tells each room what committed or failed through the room's mailbox.
//!
//! A failed batch "poisons" its rooms at that generation: later items of the same
//! generation fail too, until the room rewinds its seq and sends a newer generation.
//! That is what keeps seqs gap-free when the store hiccups.

use crate::protocol::ChatMessage;
use crate::store::SharedStore;
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// One sequenced message on its way to the store.
#[derive(Clone)]
pub struct PersistItem {
    pub msg: Arc<ChatMessage>,
    /// The room's sequencing generation when the seq was assigned.
    pub generation: u64,
    pub reply: Recipient<PersistOutcome>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue(pub PersistItem);

/// A message and the generation it was sequenced in.
pub type Outcome = (Arc<ChatMessage>, u64);

/// Sent back to the room, in commit order.
#[derive(Message)]
#[rtype(result = "()")]
pub enum PersistOutcome {
    Committed(Vec<Outcome>),
    Failed(Vec<Outcome>),
}

/// Ask Persist to write everything it holds (shutdown); resolves when done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

pub struct Persist {
    store: SharedStore,
    batch_max: usize,
    flush_interval: Duration,
    buffer: Vec<PersistItem>,
    flushing: bool,
    timer: Option<SpawnHandle>,
    poisoned: HashMap<String, u64>,
    drain_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Persist {
    pub fn new(store: SharedStore, batch_max: usize, flush_interval: Duration) -> Self {
        Self {
            store,
            batch_max,
            flush_interval,
            buffer: Vec::new(),
            flushing: false,
            timer: None,
            poisoned: HashMap::new(),
            drain_waiters: Vec::new(),
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.buffer.is_empty() {
            return;
        }
        if self.buffer.len() >= self.batch_max {
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
        let take = self.buffer.len().min(self.batch_max);
        let batch: Vec<PersistItem> = self.buffer.drain(..take).collect();
        let rows: Vec<Arc<ChatMessage>> = batch.iter().map(|i| i.msg.clone()).collect();
        self.flushing = true;
        let store = self.store.clone();
        let started = std::time::Instant::now();
        ctx.spawn(
            async move { store.insert_batch(rows).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.flushing = false;
                    match result {
                        Ok(()) => {
                            tracing::trace!(rows = batch.len(), elapsed_us = started.elapsed().as_micros() as u64, "batch committed");
                            reply_grouped(batch, PersistOutcome::Committed);
                        }
                        Err(error) => {
                            tracing::error!(%error, rows = batch.len(), "batch failed; its senders get `unavailable`");
                            act.fail_batch(batch);
                        }
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

    fn fail_batch(&mut self, batch: Vec<PersistItem>) {
        for item in &batch {
            let g = self.poisoned.entry(item.msg.room.clone()).or_insert(0);
            *g = (*g).max(item.generation);
        }
        // Buffered items of a poisoned generation would leave a gap: fail them too.
        let (stale, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.buffer)
            .into_iter()
            .partition(|i| self.is_poisoned(i));
        self.buffer = keep;
        reply_grouped(batch, PersistOutcome::Failed);
        reply_grouped(stale, PersistOutcome::Failed);
    }

    fn is_poisoned(&self, item: &PersistItem) -> bool {
        self.poisoned
            .get(&item.msg.room)
            .is_some_and(|g| item.generation <= *g)
    }

    fn release_drain_waiters(&mut self) {
        if self.buffer.is_empty() && !self.flushing {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

/// Sends each room one outcome with its items, keeping seq order.
fn reply_grouped(
    items: Vec<PersistItem>,
    make: fn(Vec<(Arc<ChatMessage>, u64)>) -> PersistOutcome,
) {
    let mut groups: Vec<(Recipient<PersistOutcome>, Vec<Outcome>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for item in items {
        let slot = *index.entry(item.msg.room.clone()).or_insert_with(|| {
            groups.push((item.reply.clone(), Vec::new()));
            groups.len() - 1
        });
        groups[slot].1.push((item.msg, item.generation));
    }
    for (reply, items) in groups {
        // The room's mailbox is unbounded for outcomes: an ack must never be dropped.
        reply.do_send(make(items));
    }
}

impl Actor for Persist {
    type Context = Context<Self>;
}

impl Handler<Enqueue> for Persist {
    type Result = ();

    fn handle(&mut self, Enqueue(item): Enqueue, ctx: &mut Self::Context) {
        if self.is_poisoned(&item) {
            reply_grouped(vec![item], PersistOutcome::Failed);
            return;
        }
        self.poisoned.remove(&item.msg.room);
        self.buffer.push(item);
        self.schedule(ctx);
    }
}

impl Handler<Drain> for Persist {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
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
