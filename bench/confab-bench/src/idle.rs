//! `idle`: hold many quiet connections and charge the server's memory growth
//! to them (VmRSS of /proc/PID/status before connecting and after all are
//! connected and settled).
//!
//! By default every 100 connections share a room, as idle chat clients
//! would: a connection's cost then includes its room membership. `--per-room
//! 0` (v1 only) measures bare connections that joined nothing.

use crate::bound::{Bound, Stop};
use crate::client::{self, ConnectArgs, Connector, Protocol, Reader};
use crate::procfs::{self, cpus_allowed, rss_kib};
use crate::stats;
use crate::{percent_of_core, Output, Status};
use anyhow::bail;
use clap::Args;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Args, Clone, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Members per room: connection i joins room i / N. 0 joins nothing (v1
    /// only): the bare cost of a connection.
    #[arg(long, default_value_t = 100)]
    pub per_room: usize,
    /// Seconds between the last connection and the RSS reading (lets joins,
    /// presence and allocator caches settle).
    #[arg(long, default_value_t = 3.0)]
    pub settle_secs: f64,
    /// Seconds to hold the connections afterwards (answering the server's
    /// pings), then read the RSS again.
    #[arg(long, default_value_t = 10.0)]
    pub hold_secs: f64,
    /// Read buffer per connection in the tool, bytes (small: they are idle).
    #[arg(long, default_value_t = 4096)]
    pub read_buffer: usize,
    /// Fail (exit 1) when the server's RSS per connection is above this (KiB).
    #[arg(long)]
    pub max_kib_per_connection: Option<f64>,
    /// Bound on the whole run; then it reports what it measured, exit 2.
    #[arg(long, default_value_t = 300)]
    pub max_secs: u64,
}

pub async fn idle(args: IdleArgs, output: Output) -> anyhow::Result<Status> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.per_room == 0 && args.connect.protocol == Protocol::Seed {
        bail!("the seed endpoint always joins a room: --per-room must be at least 1");
    }
    if !(args.settle_secs >= 0.0 && args.hold_secs >= 0.0) {
        bail!("--settle-secs and --hold-secs must be >= 0");
    }
    crate::raise_fd_limit(args.connections)?;
    let pid = procfs::server_pid(args.connect.server_pid, args.connect.pid_file.as_deref())?;
    let mut bound = Bound::new(args.max_secs, false);
    let connector = std::sync::Arc::new(Connector::new(&args.connect, args.read_buffer).await?);

    let rss_before = rss_kib(pid)?;
    let started = Instant::now();
    let per_room = args.per_room;
    let clients = tokio::select! {
        clients = client::open_all(
            &connector,
            args.connections,
            args.connect.connect_concurrency,
            |i| (per_room > 0).then(|| connector.room(i / per_room)),
            output.progress,
        ) => clients?,
        _ = tokio::time::sleep_until(bound.deadline()) => {
            bail!("could not connect {} clients within --max-secs", args.connections)
        }
    };
    let connect_secs = started.elapsed().as_secs_f64();
    let rss_connected = rss_kib(pid)?;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(index, client)| {
            let reader = Reader {
                protocol: connector.protocol,
                me: index as u64,
                expect: client.last_seq.map(|s| s + 1),
                window: None,
            };
            tokio::spawn(client::read_loop(client.ws, reader))
        })
        .collect();

    let mut stop = wait(&mut bound, args.settle_secs, "settle", pid, output.progress).await;
    let rss_settled = rss_kib(pid)?;
    let hold_started = Instant::now();
    let cpu_before = procfs::cpu_of(Some(pid));
    if stop.is_none() {
        stop = wait(&mut bound, args.hold_secs, "hold", pid, output.progress).await;
    }
    let held = hold_started.elapsed();
    let cpu_after = procfs::cpu_of(Some(pid));
    let rss_held = rss_kib(pid)?;
    let totals = stats::counters();
    let server_cpu = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) if !held.is_zero() => Some(percent_of_core(b.saturating_sub(a), held)),
        _ => None,
    };

    let n = args.connections as f64;
    let per_conn = (rss_settled as f64 - rss_before as f64) / n;
    let per_conn_held = (rss_held as f64 - rss_before as f64) / n;
    let mut failures = Vec::new();
    if let Some(Stop::Fatal(why)) = &stop {
        failures.push(why.clone());
    }
    if totals.disconnects > 0 {
        failures.push(format!(
            "{} of {} connections were closed or lost while held",
            totals.disconnects, args.connections
        ));
    }
    if totals.seq_violations > 0 {
        failures.push(format!("{} seq violations", totals.seq_violations));
    }
    if let Some(max) = args.max_kib_per_connection {
        if per_conn > max {
            failures.push(format!(
                "{per_conn:.1} KiB per connection is above --max-kib-per-connection {max}"
            ));
        }
    }
    let rooms = if per_room > 0 {
        args.connections.div_ceil(per_room)
    } else {
        0
    };
    let bench_rss = rss_kib(std::process::id()).ok();
    if output.json {
        let report = json!({
            "scenario": "idle",
            "config": {
                "url": args.connect.url,
                "protocol": format!("{:?}", args.connect.protocol).to_lowercase(),
                "connections": args.connections,
                "per_room": per_room,
                "rooms": rooms,
                "settle_s": args.settle_secs,
                "hold_s": args.hold_secs,
                "sources": args.connect.sources,
                "threads": output.threads,
                "cpus_allowed": cpus_allowed(),
                "run_id": connector.run_id,
            },
            "server_pid": pid,
            "server_cpus_allowed": procfs::cpus_allowed_of(&pid.to_string()),
            "connect_s": connect_secs,
            "rss_kib": {
                "before": rss_before,
                "connected": rss_connected,
                "settled": rss_settled,
                "after_hold": rss_held,
            },
            "kib_per_connection": per_conn,
            "kib_per_connection_after_hold": per_conn_held,
            "server_cpu_percent_of_core_while_held": server_cpu,
            "bench_rss_kib": bench_rss,
            "held_s": held.as_secs_f64(),
            "disconnects": totals.disconnects,
            "complete": stop.is_none(),
            "stopped": stop.as_ref().map(Stop::describe),
            "ok": failures.is_empty(),
            "failures": failures,
            "notes": stats::notes(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("confab-bench idle");
        println!(
            "  config       protocol={:?} url={} connections={} per_room={} ({} rooms) sources={} threads={} cpus={}",
            args.connect.protocol,
            args.connect.url,
            args.connections,
            per_room,
            rooms,
            args.connect.sources,
            output.threads,
            cpus_allowed()
        );
        println!(
            "  server       pid {pid}, cpus {}",
            procfs::cpus_allowed_of(&pid.to_string()).unwrap_or_else(|| "?".into())
        );
        println!(
            "  connected    {} in {connect_s:.2} s",
            args.connections,
            connect_s = connect_secs
        );
        println!(
            "  server RSS   before {rss_before} KiB, connected {rss_connected} KiB, settled {rss_settled} KiB, after {:.0} s held {rss_held} KiB",
            held.as_secs_f64()
        );
        println!(
            "  per conn     {per_conn:.2} KiB after settling, {per_conn_held:.2} KiB after holding (VmRSS growth / connections)"
        );
        println!(
            "  idle cpu     server {} of a core while held; bench RSS {} KiB",
            server_cpu.map_or("n/a".into(), |c| format!("{c:.1}%")),
            bench_rss.map_or("?".into(), |r| r.to_string())
        );
        if let Some(stop) = &stop {
            println!("  ended        {}", stop.describe());
        }
        if failures.is_empty() {
            println!("  verify       ok: every connection stayed open");
        } else {
            for failure in &failures {
                println!("  FAILED       {failure}");
            }
            for note in stats::notes() {
                println!("  note         {note}");
            }
        }
    }
    for task in tasks {
        task.abort();
    }
    if !failures.is_empty() {
        bail!("idle failed: {}", failures.join("; "));
    }
    Ok(match stop {
        None => Status::Complete,
        Some(_) => Status::Stopped,
    })
}

/// Waits `secs`, with a line a second about the server's RSS when asked.
async fn wait(bound: &mut Bound, secs: f64, phase: &str, pid: u32, progress: bool) -> Option<Stop> {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        let next = (Instant::now() + Duration::from_secs(1)).min(until);
        if let Some(stop) = bound.wait_until(next, phase).await {
            return Some(stop);
        }
        if progress {
            let c = stats::counters();
            eprintln!(
                "{:>6.1}s {phase:<8} server RSS {} KiB, disconnects {}",
                bound.started.elapsed().as_secs_f64(),
                rss_kib(pid).map_or("?".into(), |r| r.to_string()),
                c.disconnects
            );
        }
        if Instant::now() >= until {
            return None;
        }
    }
}
