//! `ramp`: fanout with the rate raised step by step until delivery < 99% or
//! p99 > 100 ms; the highest sustained deliveries/s.

use crate::bound::{Bound, Stop};
use crate::load::{senders_per_room, validate, Fleet, LoadArgs, Pace};
use crate::procfs;
use crate::report::ramp::RampReport;
use crate::report::Report;
use crate::stats;
use crate::window::{CpuMark, Window};
use crate::{Output, Status};
use anyhow::bail;
use clap::Args;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// A ramp step fails when the tool sent less than this share of its schedule.
/// Not 99 %: after a rate change each sender waits up to one send interval
/// (its phase) before its first send at the new rate.
const TOOL_BEHIND: f64 = 0.9;

#[derive(Args, Clone, Debug)]
pub struct RampArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Seconds per step.
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    /// Total sends per second (all senders together) of the first step; a
    /// step expects this × --clients deliveries per second.
    #[arg(long, default_value_t = 1000.0)]
    pub start_rate: f64,
    /// Each step's total rate is the previous one's times this...
    #[arg(long, default_value_t = 1.25)]
    pub factor: f64,
    /// ...or plus this many sends per second, when given.
    #[arg(long)]
    pub increment: Option<f64>,
    /// A step fails when its p99 delivery latency is above this.
    #[arg(long, default_value_t = 100.0)]
    pub max_p99_ms: f64,
    /// A step fails when it delivered less than this share of what its rate
    /// asked for (sends × members).
    #[arg(long, default_value_t = 0.99)]
    pub min_delivery_ratio: f64,
}

/// One ramp step's outcome.
pub struct Step {
    /// Total sends per second asked of all senders.
    pub target: f64,
    pub window: Window,
    pub delivery_ratio: f64,
    pub send_ratio: f64,
    pub why: Vec<String>,
}

impl Step {
    pub fn pass(&self) -> bool {
        self.why.is_empty()
    }

    pub fn json(&self, members: usize) -> serde_json::Value {
        let mut j = self.window.json(members);
        j["target_sends_per_s"] = json!(self.target);
        j["expected_deliveries_per_s"] = json!(self.target * members as f64);
        j["delivery_ratio"] = json!(self.delivery_ratio);
        j["send_ratio"] = json!(self.send_ratio);
        j["pass"] = json!(self.pass());
        j["why"] = json!(self.why);
        j
    }
}

pub async fn ramp(args: RampArgs, output: Output) -> anyhow::Result<Status> {
    let load = &args.load;
    validate(load)?;
    if !(args.start_rate > 0.0 && args.step_secs > 0.0) {
        bail!("--start-rate and --step-secs must be > 0");
    }
    match args.increment {
        Some(inc) if inc <= 0.0 => bail!("--increment must be > 0"),
        None if args.factor <= 1.0 => bail!("--factor must be > 1"),
        _ => {}
    }
    let server_pid =
        procfs::server_pid_optional(load.connect.server_pid, load.connect.pid_file.as_deref());
    let mut bound = Bound::new(load.max_secs, output.progress);
    let senders = (load.rooms * senders_per_room(load)) as f64;
    let fleet = Fleet::launch(
        load,
        Pace::Rate,
        args.start_rate / senders,
        &bound,
        output.progress,
    )
    .await?;
    let members = fleet.members;
    let t0 = Instant::now();
    let mut stop = bound
        .wait_until(t0 + Duration::from_secs_f64(load.warmup), "warmup")
        .await;
    let mut steps: Vec<Step> = Vec::new();
    let mut target = args.start_rate;
    while stop.is_none() {
        fleet.control.set_rate(target / senders);
        let start = stats::snapshot();
        let start_cpu = CpuMark::now(server_pid);
        let until = start_cpu.at + Duration::from_secs_f64(args.step_secs);
        stop = bound.wait_until(until, &format!("{target:.0}/s")).await;
        let end = stats::snapshot();
        let end_cpu = CpuMark::now(server_pid);
        let window = Window::between(&start, &start_cpu, end, &end_cpu);
        if stop.is_some() && window.secs < args.step_secs * 0.9 {
            break; // a cut-short step says nothing
        }
        let asked = target * window.secs;
        let c = &window.counters;
        // Judged against what the tool sent in the step: a sender ticks every
        // 100 ms at most, so at a step's edges the schedule runs up to a tick
        // ahead of the sends, which says nothing about the server.
        let delivery_ratio = c.deliveries as f64 / (c.sends as f64 * members as f64).max(1.0);
        let send_ratio = c.sends as f64 / asked.max(1.0);
        let mut why = Vec::new();
        if delivery_ratio < args.min_delivery_ratio {
            why.push(format!(
                "delivered {:.1}% of {:.0} due",
                delivery_ratio * 100.0,
                c.sends as f64 * members as f64,
            ));
        }
        if send_ratio < TOOL_BEHIND {
            why.push(format!(
                "the tool sent only {:.1}% of its schedule (the tool is the limit)",
                send_ratio * 100.0
            ));
        }
        match window.p99_ms() {
            Some(p99) if p99 > args.max_p99_ms => {
                why.push(format!("p99 {p99:.1} ms > {} ms", args.max_p99_ms))
            }
            None => why.push("no deliveries".into()),
            _ => {}
        }
        if c.disconnects > 0 {
            why.push(format!("{} connections closed or lost", c.disconnects));
        }
        if !c.errors.is_empty() {
            why.push(format!("error frames {:?}", c.errors));
        }
        let step = Step {
            target,
            window,
            delivery_ratio,
            send_ratio,
            why,
        };
        if output.progress {
            eprintln!(
                "step {:>3}: {:.0} sends/s asked, {:.0} deliveries/s, ratio {:.3}, p99 {} -> {}",
                steps.len() + 1,
                target,
                step.window.per_sec(step.window.counters.deliveries),
                step.delivery_ratio,
                step.window
                    .p99_ms()
                    .map_or("n/a".into(), |p| format!("{p:.1} ms")),
                if step.pass() { "pass" } else { "FAIL" }
            );
        }
        let passed = step.pass();
        steps.push(step);
        if !passed {
            break;
        }
        target = match args.increment {
            Some(inc) => target + inc,
            None => target * args.factor,
        };
    }
    fleet.stop_senders();
    let totals = fleet.drain(load.drain_secs).await;

    // The ramp ends by overloading the server, so lost deliveries at the end
    // are its finding, not a failure; order violations and refusals are.
    let mut failures = Vec::new();
    if let Some(Stop::Fatal(why)) = &stop {
        failures.push(why.clone());
    }
    if totals.seq_violations > 0 {
        failures.push(format!(
            "{} seqs were not the one due (gap, repeat or reorder)",
            totals.seq_violations
        ));
    }
    let best = steps.iter().rev().find(|s| s.pass());
    let ended_by_failure = steps.last().is_some_and(|s| !s.pass());
    if best.is_none() && ended_by_failure {
        failures.push("even the first step failed: lower --start-rate".into());
    }
    let report = RampReport {
        args: &args,
        fleet: &fleet,
        threads: output.threads,
        steps: &steps,
        best,
        totals: &totals,
        failures: &failures,
        stop: stop.clone(),
        server_pid,
    };
    report.emit(output.json)?;
    fleet.shutdown();
    if !failures.is_empty() {
        bail!("ramp failed: {}", failures.join("; "));
    }
    if ended_by_failure {
        Ok(Status::Complete)
    } else {
        // Bounded before the server gave out: the ceiling is higher than this.
        Ok(Status::Stopped)
    }
}
