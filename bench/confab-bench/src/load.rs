//! The load engine of `fanout` and `ramp`: rooms × clients, some of them
//! sending, against a running server.
//!
//! Every message's content carries its send time (ns since the tool's start,
//! one monotonic clock for all tasks); every client that receives it records
//! now − send time. A delivery is one message frame received by one client,
//! the sender's own copy included, so a room of C members turns one accepted
//! send into C deliveries.

use crate::bound::Bound;
use crate::client::{self, ConnectArgs, Connector, Protocol, Reader, Ws};
use crate::stats::{self, Counters};
use anyhow::bail;
use clap::Args;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

/// Most frames one sender writes in one go (one flush).
const MAX_BATCH: u64 = 256;

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

#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// A fixed-rate schedule; the per-sender rate lives in [`Control`].
    Rate,
    /// Up to this many unanswered sends per sender.
    Window(usize),
}

/// What the coordinator changes while senders run.
pub struct Control {
    pub stop: AtomicBool,
    /// Messages per second per sender, as f64 bits.
    pub rate_bits: AtomicU64,
}

impl Control {
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    pub fn set_rate(&self, rate: f64) {
        self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Every connection of a run, and the handles to stop them.
pub struct Fleet {
    pub connector: Arc<Connector>,
    pub connections: usize,
    pub members: usize,
    pub senders: usize,
    pub control: Arc<Control>,
    pub windows: Vec<Arc<Semaphore>>,
    pub tasks: Vec<JoinHandle<()>>,
    pub connect_secs: f64,
}

pub fn senders_per_room(load: &LoadArgs) -> usize {
    match load.senders {
        Senders::All => load.clients,
        Senders::Count(n) => n.min(load.clients),
    }
}

pub fn validate(load: &LoadArgs) -> anyhow::Result<()> {
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
    pub async fn launch(
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

    pub fn stop_senders(&self) {
        self.control.stop.store(true, Ordering::Relaxed);
        for window in &self.windows {
            window.close();
        }
    }

    /// Waits until every send is answered and every accepted message reached
    /// every member, or `secs` pass; returns the final counters.
    pub async fn drain(&self, secs: f64) -> Counters {
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

    pub fn shutdown(self) {
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
    pub protocol: Protocol,
    pub room: String,
    pub me: u64,
    pub content_bytes: usize,
    pub counter: u64,
}

type Sink = SplitSink<Ws, Message>;

impl Sender {
    pub async fn run(
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
    pub async fn send(&mut self, sink: &mut Sink, n: u64) -> anyhow::Result<()> {
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

pub fn schedule(start: Instant, rate: f64) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(start, period(rate));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    ticker
}
