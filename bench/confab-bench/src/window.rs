//! Measured windows (fanout's one, or one ramp step) and the CPU marks at
//! their edges.

use crate::percent_of_core;
use crate::procfs;
use crate::stats::{latency_json, Counters, Snapshot};
use hdrhistogram::Histogram;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// CPU time of the tool and the server, sampled at window edges.
#[derive(Clone, Copy)]
pub struct CpuMark {
    pub at: Instant,
    pub bench: Option<Duration>,
    pub server: Option<Duration>,
}

impl CpuMark {
    pub fn now(server_pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            bench: procfs::cpu_of(None),
            server: server_pid.and_then(|pid| procfs::cpu_of(Some(pid))),
        }
    }

    /// `(bench, server)` in % of one core since `earlier`.
    pub fn since(&self, earlier: &CpuMark) -> (Option<f64>, Option<f64>) {
        let wall = self.at.duration_since(earlier.at);
        let pct = |a: Option<Duration>, b: Option<Duration>| {
            Some(percent_of_core(a?.saturating_sub(b?), wall))
        };
        (
            pct(self.bench, earlier.bench),
            pct(self.server, earlier.server),
        )
    }
}

/// One measured window (fanout's, or one ramp step).
pub struct Window {
    pub secs: f64,
    pub counters: Counters,
    pub latency: Histogram<u64>,
    pub ack_latency: Histogram<u64>,
    pub bench_cpu: Option<f64>,
    pub server_cpu: Option<f64>,
}

impl Window {
    pub fn between(
        start: &Snapshot,
        start_cpu: &CpuMark,
        end: Snapshot,
        end_cpu: &CpuMark,
    ) -> Self {
        let (bench_cpu, server_cpu) = end_cpu.since(start_cpu);
        Self {
            secs: end_cpu.at.duration_since(start_cpu.at).as_secs_f64(),
            counters: end.counters.since(&start.counters),
            latency: end.latency,
            ack_latency: end.ack_latency,
            bench_cpu,
            server_cpu,
        }
    }

    pub fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.secs.max(1e-9)
    }

    pub fn p99_ms(&self) -> Option<f64> {
        (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(0.99) as f64 / 1000.0)
    }

    pub fn json(&self, members: usize) -> serde_json::Value {
        let c = &self.counters;
        json!({
            "seconds": self.secs,
            "deliveries": c.deliveries,
            "deliveries_per_s": self.per_sec(c.deliveries),
            "sends": c.sends,
            "sends_per_s": self.per_sec(c.sends),
            "acks": c.acks,
            "acks_per_s": self.per_sec(c.acks),
            "delivery_ratio": ratio(c.deliveries, c.acks * members as u64),
            "errors": c.errors,
            "disconnects": c.disconnects,
            "latency_ms": latency_json(&self.latency),
            "ack_latency_ms": latency_json(&self.ack_latency),
            "cpu_percent_of_core": {"bench": self.bench_cpu, "server": self.server_cpu},
        })
    }
}

pub fn ratio(got: u64, wanted: u64) -> Option<f64> {
    (wanted > 0).then(|| got as f64 / wanted as f64)
}
