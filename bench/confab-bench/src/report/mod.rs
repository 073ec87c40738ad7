//! What the scenarios print: the checks every run ends with and the pieces
//! the reports share. One file per scenario's report.

pub mod fanout;
pub mod persist;
pub mod ramp;

use crate::client::Protocol;
use crate::load::{senders_per_room, Fleet, LoadArgs};
use crate::procfs::cpus_allowed;
use crate::stats::{self, Counters};
use serde_json::json;

/// A scenario's report: one JSON object (`--json`) or a table for people.
pub trait Report {
    fn json(&self) -> serde_json::Value;
    fn print(&self);

    /// Prints the report in the form `--json` asked for.
    fn emit(&self, as_json: bool) -> serde_json::Result<()> {
        if as_json {
            println!("{}", serde_json::to_string_pretty(&self.json())?);
        } else {
            self.print();
        }
        Ok(())
    }
}

/// What a delivery is, said in every report.
pub const DELIVERY_MEANING: &str =
    "message frames received by all clients, the sender's own copy included";

pub fn cpu_text(bench: Option<f64>, server: Option<f64>, pid: Option<u32>) -> String {
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0}%"));
    match pid {
        Some(pid) => format!(
            "bench {} of a core, server {} of a core (pid {pid})",
            fmt(bench),
            fmt(server)
        ),
        None => format!(
            "bench {} of a core, server n/a (give --server-pid)",
            fmt(bench)
        ),
    }
}

/// Checks every run ends with: nothing lost, nothing out of order, no errors.
pub fn verify(totals: &Counters, members: usize, protocol: Protocol) -> Vec<String> {
    let mut failures = Vec::new();
    if totals.disconnects > 0 {
        failures.push(format!(
            "{} connections were closed or lost during the run",
            totals.disconnects
        ));
    }
    if totals.seq_violations > 0 {
        failures.push(format!(
            "{} seqs were not the one due (gap, repeat or reorder)",
            totals.seq_violations
        ));
    }
    if !totals.errors.is_empty() {
        failures.push(format!("error frames: {:?}", totals.errors));
    }
    let unanswered = totals
        .sends
        .saturating_sub(totals.acks + totals.error_count());
    if unanswered > 0 {
        let answer = match protocol {
            Protocol::V1 => "acked",
            Protocol::Seed => "echoed back to their sender",
        };
        failures.push(format!(
            "{unanswered} of {} sends were never {answer}",
            totals.sends
        ));
    }
    let expected = totals.acks * members as u64;
    if totals.deliveries != expected {
        failures.push(format!(
            "{} deliveries where {} accepted messages × {members} members = {expected} were due",
            totals.deliveries, totals.acks
        ));
    }
    if totals.unparsed > 0 {
        failures.push(format!("{} message frames had no seq", totals.unparsed));
    }
    failures
}

pub fn config_json(load: &LoadArgs, fleet: &Fleet, threads: usize) -> serde_json::Value {
    json!({
        "url": load.connect.url,
        "protocol": format!("{:?}", load.connect.protocol).to_lowercase(),
        "rooms": load.rooms,
        "clients_per_room": load.clients,
        "senders_per_room": senders_per_room(load),
        "content_bytes": load.content_bytes,
        "warmup_s": load.warmup,
        "sources": load.connect.sources,
        "threads": threads,
        "cpus_allowed": cpus_allowed(),
        "run_id": fleet.connector.run_id,
    })
}

pub fn print_verdict(failures: &[String]) {
    if failures.is_empty() {
        println!("  verify       ok: every accepted message reached every member, seqs gap-free, no errors");
    } else {
        for failure in failures {
            println!("  FAILED       {failure}");
        }
        for note in stats::notes() {
            println!("  note         {note}");
        }
    }
}
