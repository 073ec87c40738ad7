//! Counters and latency histograms of the WebSocket scenarios.
//!
//! Every runtime worker thread records into its own [`Tally`] (a mutex nobody
//! else takes except the coordinator when it reads a window), so thousands of
//! connection tasks count without contending and without a histogram each.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Examples of violations, disconnects and errors kept for the report.
const MAX_NOTES: usize = 20;

/// What the connections on one thread counted: the counters (reached
/// through `Deref`) and this window's latencies.
pub struct Tally {
    counts: Counters,
    /// Send to delivery, µs.
    pub latency: Histogram<u64>,
    /// Send to ack, µs.
    pub ack_latency: Histogram<u64>,
}

impl std::ops::Deref for Tally {
    type Target = Counters;

    fn deref(&self) -> &Counters {
        &self.counts
    }
}

impl std::ops::DerefMut for Tally {
    fn deref_mut(&mut self) -> &mut Counters {
        &mut self.counts
    }
}

pub fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl Tally {
    fn new() -> Self {
        Self {
            counts: Counters::default(),
            latency: histogram(),
            ack_latency: histogram(),
        }
    }

    pub fn record_delivery(&mut self, nanos: u64) {
        self.latency.saturating_record((nanos / 1000).max(1));
    }

    pub fn record_ack(&mut self, nanos: u64) {
        self.ack_latency.saturating_record((nanos / 1000).max(1));
    }
}

static SHARDS: Mutex<Vec<Arc<Mutex<Tally>>>> = Mutex::new(Vec::new());
static NOTES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static FATAL: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    static SHARD: Arc<Mutex<Tally>> = {
        let shard = Arc::new(Mutex::new(Tally::new()));
        lock(&SHARDS).push(shard.clone());
        shard
    };
}

/// A poisoned lock only means a task panicked mid-count; the counts stay usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on this thread's tally.
pub fn record<R>(f: impl FnOnce(&mut Tally) -> R) -> R {
    SHARD.with(|shard| f(&mut lock(shard)))
}

/// Keeps an example for the report (the first few only).
pub fn note(text: String) {
    let mut notes = lock(&NOTES);
    if notes.len() < MAX_NOTES {
        notes.push(text);
    }
}

pub fn notes() -> Vec<String> {
    lock(&NOTES).clone()
}

/// Stops the run: something makes its numbers meaningless (e.g. rate limits).
pub fn set_fatal(reason: String) {
    lock(&FATAL).get_or_insert(reason);
}

pub fn fatal() -> Option<String> {
    lock(&FATAL).clone()
}

/// Counters of one thread, or cumulative of all threads.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Message frames received by any client (the sender's own copy included).
    pub deliveries: u64,
    /// Message frames whose content carries no bench timestamp (not ours).
    pub foreign: u64,
    pub sends: u64,
    /// v1: `ack` frames; seed: a sender's own copy of its message.
    pub acks: u64,
    /// Error frames by code.
    pub errors: BTreeMap<String, u64>,
    /// Seqs that were not the one due (gap, repeat, reorder).
    pub seq_violations: u64,
    /// Message frames without a seq.
    pub unparsed: u64,
    /// Connections the server closed or lost while the run needed them.
    pub disconnects: u64,
}

impl Counters {
    /// Adds another thread's counters to these.
    fn add(&mut self, other: &Counters) {
        self.deliveries += other.deliveries;
        self.foreign += other.foreign;
        self.sends += other.sends;
        self.acks += other.acks;
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
        self.seq_violations += other.seq_violations;
        self.unparsed += other.unparsed;
        self.disconnects += other.disconnects;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut errors = self.errors.clone();
        for (code, n) in &earlier.errors {
            if let Some(now) = errors.get_mut(code) {
                *now = now.saturating_sub(*n);
            }
        }
        errors.retain(|_, n| *n > 0);
        Counters {
            deliveries: self.deliveries.saturating_sub(earlier.deliveries),
            foreign: self.foreign.saturating_sub(earlier.foreign),
            sends: self.sends.saturating_sub(earlier.sends),
            acks: self.acks.saturating_sub(earlier.acks),
            errors,
            seq_violations: self.seq_violations.saturating_sub(earlier.seq_violations),
            unparsed: self.unparsed.saturating_sub(earlier.unparsed),
            disconnects: self.disconnects.saturating_sub(earlier.disconnects),
        }
    }
}

/// The counters so far, and the latencies recorded since the previous
/// snapshot (the histograms restart, so each window has its own).
pub struct Snapshot {
    pub counters: Counters,
    pub latency: Histogram<u64>,
    pub ack_latency: Histogram<u64>,
}

pub fn snapshot() -> Snapshot {
    let shards: Vec<_> = lock(&SHARDS).clone();
    let mut out = Snapshot {
        counters: Counters::default(),
        latency: histogram(),
        ack_latency: histogram(),
    };
    for shard in shards {
        let mut t = lock(&shard);
        out.counters.add(&t);
        // Same bounds on both sides, so adding cannot fail.
        let _ = out.latency.add(&t.latency);
        let _ = out.ack_latency.add(&t.ack_latency);
        t.latency.reset();
        t.ack_latency.reset();
    }
    out
}

/// Counters only, leaving the histograms alone (progress lines, drain).
pub fn counters() -> Counters {
    let shards: Vec<_> = lock(&SHARDS).clone();
    let mut c = Counters::default();
    for shard in shards {
        c.add(&lock(&shard));
    }
    c
}

/// Latency percentiles in ms, for reports.
pub fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |micros: u64| micros as f64 / 1000.0;
    if h.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "mean": h.mean() / 1000.0,
        "count": h.len(),
    })
}

/// `p50 … p99 … max` in ms on one line, for tables.
pub fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "none recorded".into();
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    )
}
