//! `fanout`'s report: a table, or one JSON object.

use crate::bound::Stop;
use crate::fanout::FanoutArgs;
use crate::load::{senders_per_room, Fleet};
use crate::procfs::cpus_allowed;
use crate::report::{config_json, cpu_text, print_verdict, DELIVERY_MEANING};
use crate::stats::{self, latency_line, Counters};
use crate::window::Window;
use serde_json::json;

pub struct FanoutReport<'a> {
    pub args: &'a FanoutArgs,
    pub fleet: &'a Fleet,
    pub threads: usize,
    pub window: Window,
    pub totals: Counters,
    pub failures: Vec<String>,
    pub stop: Option<Stop>,
    pub server_pid: Option<u32>,
}

impl super::Report for FanoutReport<'_> {
    fn json(&self) -> serde_json::Value {
        let a = self.args;
        let mut config = config_json(&a.load, self.fleet, self.threads);
        config["rate_per_sender"] = json!(a.rate);
        config["window"] = json!((a.rate == 0.0).then_some(a.window));
        config["duration_s"] = json!(a.duration);
        let t = &self.totals;
        json!({
            "scenario": "fanout",
            "config": config,
            "server_pid": self.server_pid,
            "connections": self.fleet.connections,
            "senders": self.fleet.senders,
            "connect_s": self.fleet.connect_secs,
            "deliveries_counted": DELIVERY_MEANING,
            "measured": self.window.json(self.fleet.members),
            "totals": {
                "sends": t.sends,
                "acks": t.acks,
                "deliveries": t.deliveries,
                "expected_deliveries": t.acks * self.fleet.members as u64,
                "foreign_messages": t.foreign,
                "errors": t.errors,
                "seq_violations": t.seq_violations,
                "disconnects": t.disconnects,
            },
            "complete": self.stop.is_none(),
            "stopped": self.stop.as_ref().map(Stop::describe),
            "ok": self.failures.is_empty(),
            "failures": self.failures,
            "notes": stats::notes(),
        })
    }

    fn print(&self) {
        let a = self.args;
        let l = &a.load;
        let w = &self.window;
        let c = &w.counters;
        println!("confab-bench fanout");
        let pace = if a.rate > 0.0 {
            format!("rate={}/s per sender", a.rate)
        } else {
            format!("rate=as acks allow, window={}", a.window)
        };
        println!(
            "  config       protocol={:?} url={} rooms={} clients/room={} senders/room={} {pace} content={}B sources={} threads={} cpus={}",
            l.connect.protocol,
            l.connect.url,
            l.rooms,
            l.clients,
            senders_per_room(l),
            l.content_bytes,
            l.connect.sources,
            self.threads,
            cpus_allowed()
        );
        println!(
            "  connections  {} ({} senders), connected in {:.3} s",
            self.fleet.connections, self.fleet.senders, self.fleet.connect_secs
        );
        let status = self
            .stop
            .as_ref()
            .map_or(String::new(), |s| format!(" ({})", s.describe()));
        println!(
            "  measured     {:.2} s after {} s warmup{status}",
            w.secs, l.warmup
        );
        println!(
            "  deliveries   {:.0}/s ({} {DELIVERY_MEANING})",
            w.per_sec(c.deliveries),
            c.deliveries
        );
        println!(
            "  sends        {:.0}/s, acks {:.0}/s",
            w.per_sec(c.sends),
            w.per_sec(c.acks)
        );
        println!(
            "  latency      {} (send to delivery)",
            latency_line(&w.latency)
        );
        println!("  ack latency  {}", latency_line(&w.ack_latency));
        println!(
            "  cpu          {}",
            cpu_text(w.bench_cpu, w.server_cpu, self.server_pid)
        );
        let t = &self.totals;
        println!(
            "  totals       {} sends, {} acks, {} deliveries of {} due, errors {:?}, {} seq violations, {} disconnects",
            t.sends,
            t.acks,
            t.deliveries,
            t.acks * self.fleet.members as u64,
            t.errors,
            t.seq_violations,
            t.disconnects
        );
        print_verdict(&self.failures);
    }
}
