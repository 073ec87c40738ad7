//! `fanout` and `ramp`: rooms × clients, some of them sending, against a
//! running server.
//!
//! Every message's content carries its send time (ns since the tool's start,
//! one monotonic clock for all tasks); every client that receives it records
//! now − send time. A delivery is one message frame received by one client,
//! the sender's own copy included, so a room of C members turns one accepted
//! send into C deliveries.

use crate::bound::{Bound, Stop};
use crate::client::{self, ConnectArgs, Connector, Protocol, Reader, Ws};
use crate::procfs::{self, cpus_allowed};
use crate::stats::{self, latency_json, latency_line, Counters, Snapshot};
use crate::{percent_of_core, Output, Status};
use anyhow::bail;
use clap::Args;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

/// A ramp step fails when the tool sent less than this share of its schedule.
/// Not 99 %: after a rate change each sender waits up to one send interval
/// (its phase) before its first send at the new rate.
const TOOL_BEHIND: f64 = 0.9;

/// Most frames one sender writes in one go (one flush).
const MAX_BATCH: u64 = 256;

/// What a delivery is, said in every report.
const DELIVERY_MEANING: &str =
    "message frames received by all clients, the sender's own copy included";

/// Senders per room: a number, or every member.
#[derive(Clone, Copy, Debug)]
pub enum Senders {
    All,
    Count(usize),
}

fn parse_senders(text: &str) -> Result<Senders, String> {
    if text == "all" {
        return Ok(Senders::All);
    }
    text.parse()
        .map(Senders::Count)
        .map_err(|_| format!("expected a number or `all`, got {text:?}"))
}

/// The room layout and run shape both scenarios share.
#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Rooms, each with --clients members.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Members per room (each its own connection and user).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Senders per room: a number, or `all`.
    #[arg(long, default_value = "10", value_parser = parse_senders)]
    pub senders: Senders,
    /// Bytes of content per message (at least the timestamp and counter).
    #[arg(long, default_value_t = 100)]
    pub content_bytes: usize,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// After the senders stop, wait up to this long for every accepted
    /// message to reach every member (the check that nothing was lost).
    #[arg(long, default_value_t = 5.0)]
    pub drain_secs: f64,
    /// Read buffer per connection, bytes.
    #[arg(long, default_value_t = 65536)]
    pub read_buffer: usize,
    /// Bound on the whole run, connecting included: then it reports what it
    /// measured and exits with status 2.
    #[arg(long, default_value_t = 300)]
    pub max_secs: u64,
}

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

/// How senders pace themselves.
#[derive(Clone, Copy, Debug)]
enum Pace {
    /// A fixed-rate schedule; the per-sender rate lives in [`Control`].
    Rate,
    /// Up to this many unanswered sends per sender.
    Window(usize),
}

/// What the coordinator changes while senders run.
struct Control {
    stop: AtomicBool,
    /// Messages per second per sender, as f64 bits.
    rate_bits: AtomicU64,
}

impl Control {
    fn rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    fn set_rate(&self, rate: f64) {
        self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Every connection of a run, and the handles to stop them.
struct Fleet {
    connector: Arc<Connector>,
    connections: usize,
    members: usize,
    senders: usize,
    control: Arc<Control>,
    windows: Vec<Arc<Semaphore>>,
    tasks: Vec<JoinHandle<()>>,
    connect_secs: f64,
}

fn senders_per_room(load: &LoadArgs) -> usize {
    match load.senders {
        Senders::All => load.clients,
        Senders::Count(n) => n.min(load.clients),
    }
}

fn validate(load: &LoadArgs) -> anyhow::Result<()> {
    if load.rooms == 0 || load.clients == 0 {
        bail!("--rooms and --clients must be at least 1");
    }
    if senders_per_room(load) == 0 {
        bail!("--senders must be at least 1 (or `all`)");
    }
    if !(load.warmup >= 0.0 && load.drain_secs >= 0.0) {
        bail!("--warmup and --drain-secs must be >= 0");
    }
    crate::raise_fd_limit(load.rooms * load.clients)?;
    Ok(())
}

impl Fleet {
    /// Connects and joins every client, then starts the readers and senders.
    async fn launch(
        load: &LoadArgs,
        pace: Pace,
        rate: f64,
        bound: &Bound,
        progress: bool,
    ) -> anyhow::Result<Self> {
        let connector = Arc::new(Connector::new(&load.connect, load.read_buffer).await?);
        let members = load.clients;
        let connections = load.rooms * members;
        let per_room = senders_per_room(load);
        let started = Instant::now();
        let clients = tokio::select! {
            clients = client::open_all(
                &connector,
                connections,
                load.connect.connect_concurrency,
                |i| Some(connector.room(i / members)),
                progress,
            ) => clients?,
            _ = tokio::time::sleep_until(bound.deadline()) => {
                bail!("could not connect {connections} clients within --max-secs")
            }
        };
        let connect_secs = started.elapsed().as_secs_f64();
        if connector.protocol == Protocol::Seed {
            // No joined frame on the seed endpoint: give the joins a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let control = Arc::new(Control {
            stop: AtomicBool::new(false),
            rate_bits: AtomicU64::new(rate.to_bits()),
        });
        let mut fleet = Fleet {
            connector: connector.clone(),
            connections,
            members,
            senders: load.rooms * per_room,
            control: control.clone(),
            windows: Vec::new(),
            tasks: Vec::with_capacity(connections * 2),
            connect_secs,
        };
        let mut rng = rand::rng();
        for (index, client) in clients.into_iter().enumerate() {
            let room = connector.room(index / members);
            let mut reader = Reader {
                protocol: connector.protocol,
                me: index as u64,
                expect: client.last_seq.map(|s| s + 1),
                window: None,
            };
            if index % members >= per_room {
                fleet
                    .tasks
                    .push(tokio::spawn(client::read_loop(client.ws, reader)));
                continue;
            }
            let window = match pace {
                Pace::Window(n) => {
                    let window = Arc::new(Semaphore::new(n));
                    fleet.windows.push(window.clone());
                    reader.window = Some(window.clone());
                    Some(window)
                }
                Pace::Rate => None,
            };
            let (sink, stream) = client.ws.split();
            fleet
                .tasks
                .push(tokio::spawn(client::read_loop(stream, reader)));
            // A random phase over one interval between sends (not the tick,
            // which is capped at 100 ms), so senders don't write in bursts.
            let phase = rng.random::<f64>();
            let sender = Sender {
                protocol: connector.protocol,
                room,
                me: index as u64,
                content_bytes: load.content_bytes,
                counter: 0,
            };
            fleet.tasks.push(tokio::spawn(sender.run(
                sink,
                window,
                control.clone(),
                phase,
            )));
        }
        Ok(fleet)
    }

    fn stop_senders(&self) {
        self.control.stop.store(true, Ordering::Relaxed);
        for window in &self.windows {
            window.close();
        }
    }

    /// Waits until every send is answered and every accepted message reached
    /// every member, or `secs` pass; returns the final counters.
    async fn drain(&self, secs: f64) -> Counters {
        let until = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            let c = stats::counters();
            let answered = c.acks + c.error_count() >= c.sends;
            let delivered = c.deliveries >= c.acks * self.members as u64;
            if (answered && delivered) || Instant::now() >= until {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn shutdown(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// The tick of a fixed-rate schedule: one message per tick up to 1,000/s,
/// several per 1 ms tick above (tokio's timer has 1 ms resolution); at most
/// 100 ms so rate changes take effect soon.
/// Seconds between two sends of one sender (0 when it sends as fast as it can).
fn send_interval(rate: f64) -> f64 {
    if rate > 0.0 {
        1.0 / rate
    } else {
        0.0
    }
}

fn period(rate: f64) -> Duration {
    if rate <= 0.0 {
        return Duration::from_millis(1);
    }
    Duration::from_secs_f64((1.0 / rate).clamp(0.001, 0.1))
}

struct Sender {
    protocol: Protocol,
    room: String,
    me: u64,
    content_bytes: usize,
    counter: u64,
}

type Sink = SplitSink<Ws, Message>;

impl Sender {
    async fn run(
        mut self,
        mut sink: Sink,
        window: Option<Arc<Semaphore>>,
        control: Arc<Control>,
        phase: f64,
    ) {
        let result = match window {
            Some(window) => self.windowed(&mut sink, &window, &control).await,
            None => self.paced(&mut sink, &control, phase).await,
        };
        if let Err(error) = result {
            if !control.stopped() {
                stats::note(format!("sender {}: write failed: {error}", self.me));
            }
        }
    }

    /// Fixed-rate schedule: at each tick, send what the schedule says is due
    /// by now (catching up after a stall instead of drifting), in one flush.
    /// Each sender's schedule starts `phase` (a fraction) of one send interval
    /// late, so senders are spread over the interval, also after a rate change.
    async fn paced(
        &mut self,
        sink: &mut Sink,
        control: &Control,
        phase: f64,
    ) -> anyhow::Result<()> {
        let start =
            |rate: f64| Instant::now() + Duration::from_secs_f64(phase * send_interval(rate));
        let mut rate = control.rate();
        let mut base = start(rate);
        let mut base_count = 0;
        let mut ticker = schedule(base, rate);
        loop {
            ticker.tick().await;
            if control.stopped() {
                return Ok(());
            }
            let now = Instant::now();
            let current = control.rate();
            if current != rate {
                rate = current;
                base = start(rate);
                base_count = self.counter;
                ticker = schedule(base, rate);
                continue;
            }
            if rate <= 0.0 {
                continue;
            }
            let elapsed = now.saturating_duration_since(base).as_secs_f64();
            let due = base_count + (rate * elapsed) as u64 + 1;
            let n = due.saturating_sub(self.counter).min(MAX_BATCH);
            self.send(sink, n).await?;
        }
    }

    /// As fast as answers come back, with the window's permits in flight.
    async fn windowed(
        &mut self,
        sink: &mut Sink,
        window: &Semaphore,
        control: &Control,
    ) -> anyhow::Result<()> {
        loop {
            let Ok(permit) = window.acquire().await else {
                return Ok(()); // closed: the run is over
            };
            permit.forget();
            let mut n = 1;
            while n < MAX_BATCH {
                match window.try_acquire() {
                    Ok(permit) => {
                        permit.forget();
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            if control.stopped() {
                return Ok(());
            }
            self.send(sink, n).await?;
        }
    }

    /// Writes `n` messages stamped now, then flushes once.
    async fn send(&mut self, sink: &mut Sink, n: u64) -> anyhow::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let ts = client::now_ns();
        for _ in 0..n {
            self.counter += 1;
            let frame = client::send_frame(
                self.protocol,
                &self.room,
                ts,
                self.me,
                self.counter,
                self.content_bytes,
            );
            sink.feed(Message::text(frame)).await?;
        }
        sink.flush().await?;
        stats::record(|t| t.sends += n);
        Ok(())
    }
}

fn schedule(start: Instant, rate: f64) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(start, period(rate));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    ticker
}

/// CPU time of the tool and the server, sampled at window edges.
#[derive(Clone, Copy)]
struct CpuMark {
    at: Instant,
    bench: Option<Duration>,
    server: Option<Duration>,
}

impl CpuMark {
    fn now(server_pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            bench: procfs::cpu_of(None),
            server: server_pid.and_then(|pid| procfs::cpu_of(Some(pid))),
        }
    }

    /// `(bench, server)` in % of one core since `earlier`.
    fn since(&self, earlier: &CpuMark) -> (Option<f64>, Option<f64>) {
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
struct Window {
    secs: f64,
    counters: Counters,
    latency: Histogram<u64>,
    ack_latency: Histogram<u64>,
    bench_cpu: Option<f64>,
    server_cpu: Option<f64>,
}

impl Window {
    fn between(start: &Snapshot, start_cpu: &CpuMark, end: Snapshot, end_cpu: &CpuMark) -> Self {
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

    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.secs.max(1e-9)
    }

    fn p99_ms(&self) -> Option<f64> {
        (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(0.99) as f64 / 1000.0)
    }

    fn json(&self, members: usize) -> serde_json::Value {
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

fn ratio(got: u64, wanted: u64) -> Option<f64> {
    (wanted > 0).then(|| got as f64 / wanted as f64)
}

fn cpu_text(bench: Option<f64>, server: Option<f64>, pid: Option<u32>) -> String {
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
fn verify(totals: &Counters, members: usize, protocol: Protocol) -> Vec<String> {
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

fn config_json(load: &LoadArgs, fleet: &Fleet, threads: usize) -> serde_json::Value {
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

// ------------------------------------------------------------------- fanout

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
    if output.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        report.print();
    }
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

struct FanoutReport<'a> {
    args: &'a FanoutArgs,
    fleet: &'a Fleet,
    threads: usize,
    window: Window,
    totals: Counters,
    failures: Vec<String>,
    stop: Option<Stop>,
    server_pid: Option<u32>,
}

impl FanoutReport<'_> {
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

fn print_verdict(failures: &[String]) {
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

// --------------------------------------------------------------------- ramp

/// One ramp step's outcome.
struct Step {
    /// Total sends per second asked of all senders.
    target: f64,
    window: Window,
    delivery_ratio: f64,
    send_ratio: f64,
    why: Vec<String>,
}

impl Step {
    fn pass(&self) -> bool {
        self.why.is_empty()
    }

    fn json(&self, members: usize) -> serde_json::Value {
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
    if output.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        report.print();
    }
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

struct RampReport<'a> {
    args: &'a RampArgs,
    fleet: &'a Fleet,
    threads: usize,
    steps: &'a [Step],
    best: Option<&'a Step>,
    totals: &'a Counters,
    failures: &'a [String],
    stop: Option<Stop>,
    server_pid: Option<u32>,
}

impl RampReport<'_> {
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
