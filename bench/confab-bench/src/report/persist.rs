//! `persist`'s report: a table, or one JSON object.

use crate::persist::{PersistArgs, TxnStats};
use crate::{ms, percent_of_core};
use hdrhistogram::Histogram;
use serde_json::json;
use std::time::Duration;

pub struct PersistReport {
    pub args: PersistArgs,
    pub database: Option<String>,
    pub write_max: usize,
    pub requested: u64,
    pub committed: u64,
    pub writes: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    pub txns: TxnStats,
    pub bench_cpu: Duration,
    pub postgres_cpu: Option<Duration>,
    pub cpus_allowed: String,
    /// Messages committed in each whole second of the run.
    pub per_second: Vec<u64>,
    pub rows_in_db: u64,
    pub head_sum: u64,
    pub stopped_early: bool,
}

impl PersistReport {
    pub fn verified(&self) -> bool {
        self.rows_in_db == self.committed && self.head_sum == self.committed
    }

    fn msgs_per_sec(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn rows_per_txn(&self) -> f64 {
        self.txns.rows as f64 / self.txns.transactions.max(1) as f64
    }
}

impl super::Report for PersistReport {
    fn json(&self) -> serde_json::Value {
        let a = &self.args;
        let lat = &self.latency;
        let txn = &self.txns.duration;
        json!({
            "scenario": "persist",
            "config": {
                "batch_max": a.batch_max,
                "flush_interval_ms": a.flush_interval_ms,
                "producers": a.producers,
                "rooms": a.rooms,
                "rows_per_write_mean": a.rows_per_write,
                "rows_per_write_max": self.write_max,
                "content_bytes": a.content_bytes,
                "pool_size": a.pool_size,
                "max_secs": a.max_secs,
                "database": self.database,
                "cpus_allowed": self.cpus_allowed,
            },
            "messages_requested": self.requested,
            "messages_committed": self.committed,
            "complete": !self.stopped_early && self.committed == self.requested,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "messages_per_s": self.msgs_per_sec(),
            "writes": self.writes,
            "transactions": self.txns.transactions,
            "rows_per_transaction_mean": self.rows_per_txn(),
            "rows_per_transaction_max": self.txns.max_rows,
            "commit_latency_ms": {
                "p50": ms(lat.value_at_quantile(0.50)),
                "p90": ms(lat.value_at_quantile(0.90)),
                "p99": ms(lat.value_at_quantile(0.99)),
                "max": ms(lat.max()),
                "mean": lat.mean() / 1000.0,
            },
            "transaction_ms": {
                "p50": ms(txn.value_at_quantile(0.50)),
                "p99": ms(txn.value_at_quantile(0.99)),
                "max": ms(txn.max()),
                "mean": txn.mean() / 1000.0,
            },
            "messages_per_second_series": self.per_second,
            "persist_busy_percent": percent_of_core(self.txns.busy, self.elapsed),
            "bench_cpu_percent_of_core": percent_of_core(self.bench_cpu, self.elapsed),
            "postgres_cpu_percent_of_core": self.postgres_cpu.map(|c| percent_of_core(c, self.elapsed)),
            "verify": {
                "rows_in_db": self.rows_in_db,
                "room_head_sum": self.head_sum,
                "ok": self.verified(),
            },
        })
    }

    fn print(&self) {
        let a = &self.args;
        let lat = &self.latency;
        let txn = &self.txns.duration;
        println!("confab-bench persist");
        println!(
            "  config      batch_max={} flush_interval={}ms producers={} rooms={} rows/write≈{} (max {}) content={}B pool={} cpus={}",
            a.batch_max,
            a.flush_interval_ms,
            a.producers,
            a.rooms,
            a.rows_per_write,
            self.write_max,
            a.content_bytes,
            a.pool_size,
            self.cpus_allowed
        );
        if let Some(db) = &self.database {
            println!("  database    {db} (created for this run, dropped)");
        }
        let status = if self.stopped_early {
            " (stopped early)"
        } else {
            ""
        };
        println!(
            "  messages    {} of {} in {:.2}s{}",
            self.committed,
            self.requested,
            self.elapsed.as_secs_f64(),
            status
        );
        let (low, high) = (
            self.per_second.iter().min().copied(),
            self.per_second.iter().max().copied(),
        );
        match (low, high) {
            (Some(low), Some(high)) => println!(
                "  throughput  {:.0} messages/s (whole seconds: min {low}, max {high})",
                self.msgs_per_sec()
            ),
            _ => println!("  throughput  {:.0} messages/s", self.msgs_per_sec()),
        }
        println!(
            "  batches     {} writes, {} transactions, {:.1} rows/transaction (max {})",
            self.writes,
            self.txns.transactions,
            self.rows_per_txn(),
            self.txns.max_rows
        );
        println!(
            "  commit      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms (handover to commit ack, per write)",
            ms(lat.value_at_quantile(0.50)),
            ms(lat.value_at_quantile(0.90)),
            ms(lat.value_at_quantile(0.99)),
            ms(lat.max())
        );
        println!(
            "  transaction p50 {:.2} ms  p99 {:.2} ms  mean {:.2} ms; one in flight {:.0}% of the time",
            ms(txn.value_at_quantile(0.50)),
            ms(txn.value_at_quantile(0.99)),
            txn.mean() / 1000.0,
            percent_of_core(self.txns.busy, self.elapsed)
        );
        let postgres = self.postgres_cpu.map_or("n/a".to_string(), |c| {
            format!("{:.0}%", percent_of_core(c, self.elapsed))
        });
        println!(
            "  cpu         bench {:.0}% of a core, postgres {} of a core",
            percent_of_core(self.bench_cpu, self.elapsed),
            postgres
        );
        println!(
            "  verify      {} rows in messages, room heads sum to {}: {}",
            self.rows_in_db,
            self.head_sum,
            if self.verified() { "ok" } else { "MISMATCH" }
        );
    }
}
