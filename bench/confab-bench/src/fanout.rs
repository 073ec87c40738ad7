//! `fanout`: rooms × clients, some of them sending, against a running
//! server; deliveries/s and send-to-delivery latency over one measured window.

use crate::bound::{Bound, Stop};
use crate::load::{validate, Fleet, LoadArgs, Pace};
use crate::procfs;
use crate::report::fanout::FanoutReport;
use crate::report::verify;
use crate::report::Report;
use crate::stats;
use crate::window::{CpuMark, Window};
use crate::{Output, Status};
use anyhow::bail;
use clap::Args;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Args, Clone, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Messages per second per sender (a fixed-rate schedule); 0: as fast as
    /// acks allow, with --window sends in flight per sender.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Unanswered sends per sender with --rate 0.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Seconds measured after the warmup.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Fail (exit 1) when the measured p99 delivery latency is above this.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Fail (exit 1) when fewer deliveries per second were measured.
    #[arg(long)]
    pub min_deliveries_per_sec: Option<f64>,
}

pub async fn fanout(args: FanoutArgs, output: Output) -> anyhow::Result<Status> {
    let load = &args.load;
    validate(load)?;
    if !(args.rate >= 0.0 && args.duration > 0.0) {
        bail!("--rate must be >= 0 and --duration > 0");
    }
    if args.rate == 0.0 && args.window == 0 {
        bail!("--window must be at least 1 with --rate 0");
    }
    let server_pid =
        procfs::server_pid_optional(load.connect.server_pid, load.connect.pid_file.as_deref());
    let mut bound = Bound::new(load.max_secs, output.progress);
    let pace = if args.rate > 0.0 {
        Pace::Rate
    } else {
        Pace::Window(args.window)
    };
    let fleet = Fleet::launch(load, pace, args.rate, &bound, output.progress).await?;
    let t0 = Instant::now();
    let mut stop = bound
        .wait_until(t0 + Duration::from_secs_f64(load.warmup), "warmup")
        .await;
    let start = stats::snapshot();
    let start_cpu = CpuMark::now(server_pid);
    if stop.is_none() {
        let until = start_cpu.at + Duration::from_secs_f64(args.duration);
        stop = bound.wait_until(until, "measure").await;
    }
    let end = stats::snapshot();
    let end_cpu = CpuMark::now(server_pid);
    let window = Window::between(&start, &start_cpu, end, &end_cpu);
    fleet.stop_senders();
    let totals = fleet.drain(load.drain_secs).await;

    let mut failures = verify(&totals, fleet.members, load.connect.protocol);
    let measured = window.per_sec(window.counters.deliveries);
    if let (Some(max), Some(p99)) = (args.max_p99_ms, window.p99_ms()) {
        if p99 > max {
            failures.push(format!(
                "p99 delivery latency {p99:.1} ms is above --max-p99-ms {max}"
            ));
        }
    }
    if let Some(min) = args.min_deliveries_per_sec {
        if measured < min {
            failures.push(format!(
                "{measured:.0} deliveries/s is below --min-deliveries-per-sec {min}"
            ));
        }
    }
    if let Some(Stop::Fatal(why)) = &stop {
        failures.insert(0, why.clone());
    }
    let report = FanoutReport {
        args: &args,
        fleet: &fleet,
        threads: output.threads,
        window,
        totals,
        failures,
        stop: stop.clone(),
        server_pid,
    };
    report.emit(output.json)?;
    let failures = report.failures;
    fleet.shutdown();
    if !failures.is_empty() {
        bail!("fanout failed: {}", failures.join("; "));
    }
    Ok(match stop {
        None => Status::Complete,
        Some(_) => Status::Stopped,
    })
}
