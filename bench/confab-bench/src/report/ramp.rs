//! `ramp`'s report: a table of steps, or one JSON object.

use crate::bound::Stop;
use crate::load::{senders_per_room, Fleet};
use crate::procfs::cpus_allowed;
use crate::ramp::{RampArgs, Step};
use crate::report::{config_json, DELIVERY_MEANING};
use crate::stats::{self, latency_json, Counters};
use serde_json::json;

pub struct RampReport<'a> {
    pub args: &'a RampArgs,
    pub fleet: &'a Fleet,
    pub threads: usize,
    pub steps: &'a [Step],
    pub best: Option<&'a Step>,
    pub totals: &'a Counters,
    pub failures: &'a [String],
    pub stop: Option<Stop>,
    pub server_pid: Option<u32>,
}

impl super::Report for RampReport<'_> {
    fn json(&self) -> serde_json::Value {
        let a = self.args;
        let members = self.fleet.members;
        let mut config = config_json(&a.load, self.fleet, self.threads);
        config["step_s"] = json!(a.step_secs);
        config["start_rate_sends_per_s"] = json!(a.start_rate);
        config["factor"] = json!(a.increment.is_none().then_some(a.factor));
        config["increment"] = json!(a.increment);
        config["max_p99_ms"] = json!(a.max_p99_ms);
        config["min_delivery_ratio"] = json!(a.min_delivery_ratio);
        let best = self.best.map(|s| {
            json!({
                "target_sends_per_s": s.target,
                "deliveries_per_s": s.window.per_sec(s.window.counters.deliveries),
                "p99_ms": s.window.p99_ms(),
                "latency_ms": latency_json(&s.window.latency),
                "server_cpu_percent_of_core": s.window.server_cpu,
            })
        });
        json!({
            "scenario": "ramp",
            "config": config,
            "server_pid": self.server_pid,
            "connections": self.fleet.connections,
            "senders": self.fleet.senders,
            "deliveries_counted": DELIVERY_MEANING,
            "steps": self.steps.iter().map(|s| s.json(members)).collect::<Vec<_>>(),
            "best": best,
            "ended_by": match (&self.stop, self.steps.last()) {
                (Some(stop), _) => stop.describe(),
                (None, Some(last)) if !last.pass() => format!("step failed: {}", last.why.join("; ")),
                _ => "?".into(),
            },
            "totals": {
                "sends": self.totals.sends,
                "acks": self.totals.acks,
                "deliveries": self.totals.deliveries,
                "errors": self.totals.errors,
                "seq_violations": self.totals.seq_violations,
                "disconnects": self.totals.disconnects,
            },
            "ok": self.failures.is_empty(),
            "failures": self.failures,
            "notes": stats::notes(),
        })
    }

    fn print(&self) {
        let a = self.args;
        let l = &a.load;
        let members = self.fleet.members;
        println!("confab-bench ramp");
        let growth = match a.increment {
            Some(inc) => format!("+{inc}/s"),
            None => format!("×{}", a.factor),
        };
        println!(
            "  config       protocol={:?} rooms={} clients/room={} senders/room={} start={}/s sends {growth} per {} s step, pass: ratio ≥ {} and p99 ≤ {} ms; threads={} cpus={}",
            l.connect.protocol,
            l.rooms,
            l.clients,
            senders_per_room(l),
            a.start_rate,
            a.step_secs,
            a.min_delivery_ratio,
            a.max_p99_ms,
            self.threads,
            cpus_allowed()
        );
        println!(
            "  connections  {} ({} senders); deliveries = {DELIVERY_MEANING}",
            self.fleet.connections, self.fleet.senders
        );
        println!(
            "  {:>4} {:>10} {:>12} {:>12} {:>7} {:>9} {:>9} {:>9} {:>7} {:>7}  verdict",
            "step",
            "sends/s",
            "expected/s",
            "delivered/s",
            "ratio",
            "p50 ms",
            "p99 ms",
            "max ms",
            "bench",
            "server"
        );
        for (i, s) in self.steps.iter().enumerate() {
            let w = &s.window;
            let q = |q: f64| {
                if w.latency.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.2}", w.latency.value_at_quantile(q) as f64 / 1000.0)
                }
            };
            let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}%"));
            println!(
                "  {:>4} {:>10.0} {:>12.0} {:>12.0} {:>7.3} {:>9} {:>9} {:>9} {:>7} {:>7}  {}",
                i + 1,
                s.target,
                s.target * members as f64,
                w.per_sec(w.counters.deliveries),
                s.delivery_ratio,
                q(0.5),
                q(0.99),
                if w.latency.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.2}", w.latency.max() as f64 / 1000.0)
                },
                pct(w.bench_cpu),
                pct(w.server_cpu),
                if s.pass() {
                    "pass".to_string()
                } else {
                    format!("FAIL: {}", s.why.join("; "))
                }
            );
        }
        match self.best {
            Some(s) => println!(
                "  best         {:.0} deliveries/s sustained at p99 {} ({:.0} sends/s)",
                s.window.per_sec(s.window.counters.deliveries),
                s.window
                    .p99_ms()
                    .map_or("n/a".into(), |p| format!("{p:.2} ms")),
                s.target
            ),
            None => println!("  best         none: no step passed"),
        }
        if let Some(stop) = &self.stop {
            println!("  ended        {}", stop.describe());
        }
        for failure in self.failures {
            println!("  FAILED       {failure}");
        }
        // Why the last step failed (e.g. 1013 slow consumer closes), or worse.
        for note in stats::notes()
            .iter()
            .take(if self.failures.is_empty() { 5 } else { 20 })
        {
            println!("  note         {note}");
        }
    }
}
