//! `confab-bench`: load scenarios for confab, one subcommand each.
//!
//! - `persist` measures sustained ingest into Postgres through the real
//!   Persist actor (group commit), inside the tool (no server).
//! - `fanout`, `ramp` and `idle` are WebSocket clients against a running
//!   server: delivery throughput and latency, the highest sustained rate, and
//!   the server's memory per idle connection.
//!
//! Every scenario is bounded in time (`--max-secs`, Ctrl-C) and prints either a
//! table or, with `--json`, one JSON object on stdout. Exit status: 0 when the
//! run completed and verified, 1 on an error or a failed check, 2 when the time
//! bound (or Ctrl-C) stopped it early. See docs/benchmarks.md.

mod bound;
mod client;
mod fanout;
mod idle;
mod load;
mod persist;
mod procfs;
mod ramp;
mod report;
mod stats;
mod window;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::time::Duration;

/// The standard scenarios of issue 7, printed by `--help`.
const STANDARD: &str = "\
Standard scenarios (server on core 0, tool on core 1):

  cargo build --release -p confab -p confab-bench
  taskset -c 0 target/release/confab serve --config bench/confab-bench.toml

  # fanout: 1 room x 100 clients, 10 senders (target >= 500,000 deliveries/s at p99 <= 50 ms);
  # offered: 10 senders x 510/s x 100 members = 510,000 deliveries/s
  taskset -c 1 target/release/confab-bench fanout --jwt-secret confab-bench-secret-not-for-production \\
    --rooms 1 --clients 100 --senders 10 --rate 510 --duration 10 \\
    --max-p99-ms 50 --min-deliveries-per-sec 500000

  # 100 rooms x 10 clients, every client sending (target >= 100,000 deliveries/s at p99 <= 50 ms);
  # offered: 1,000 senders x 10.2/s x 10 members = 102,000 deliveries/s
  taskset -c 1 target/release/confab-bench fanout --jwt-secret confab-bench-secret-not-for-production \\
    --rooms 100 --clients 10 --senders all --rate 10.2 --duration 10 \\
    --max-p99-ms 50 --min-deliveries-per-sec 100000

  # 10,000 idle connections, 100 per room (target <= 10 KiB server RSS each); on a freshly
  # started server, so earlier runs' memory doesn't hide in the baseline
  taskset -c 1 target/release/confab-bench idle --jwt-secret confab-bench-secret-not-for-production \\
    --connections 10000 --per-room 100 --max-kib-per-connection 10

  # ramp: the highest sustained deliveries/s (steps end at < 99% delivered or p99 > 100 ms)
  taskset -c 1 target/release/confab-bench ramp --jwt-secret confab-bench-secret-not-for-production \\
    --rooms 1 --clients 100 --senders 10 --start-rate 2000 --factor 1.25 --step-secs 5 --max-secs 60
  taskset -c 1 target/release/confab-bench ramp --jwt-secret confab-bench-secret-not-for-production \\
    --rooms 100 --clients 10 --senders all --start-rate 2000 --factor 1.25 --step-secs 5 --max-secs 60

The rates sit 2% above the targets so that a server that meets a target is not put
under the line by messages in flight at the edges of the measured window. Add --json for
one JSON object, --progress for a line a second on stderr, --protocol seed to speak
/ws/chat/{room} instead of /ws, --server-pid when several confab processes run.";

#[derive(Parser)]
#[command(
    name = "confab-bench",
    version,
    about = "Load scenarios for confab (one subcommand per scenario)",
    after_help = STANDARD
)]
struct Cli {
    /// Print one JSON object on stdout instead of the table.
    #[arg(long, global = true)]
    json: bool,
    /// Print a progress line on stderr every second.
    #[arg(long, global = true)]
    progress: bool,
    /// Runtime worker threads of the WebSocket scenarios (1: the tool is
    /// pinned to one core with taskset).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Sustained ingest into Postgres through the Persist actor (group commit).
    Persist(persist::PersistArgs),
    /// Rooms × clients against a running server: deliveries/s and send-to-delivery latency.
    #[command(after_help = STANDARD)]
    Fanout(fanout::FanoutArgs),
    /// Fanout with the rate raised step by step until delivery < 99% or p99 > 100 ms.
    #[command(after_help = STANDARD)]
    Ramp(ramp::RampArgs),
    /// Many idle connections: the server's RSS per connection.
    #[command(after_help = STANDARD)]
    Idle(idle::IdleArgs),
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    client::now_ns(); // the shared clock starts here
    let output = Output {
        json: cli.json,
        progress: cli.progress,
        threads: cli.threads.max(1),
    };
    let outcome = match cli.scenario {
        // persist drives the real Persist actor, so it runs in an actix System.
        Scenario::Persist(args) => {
            actix::System::new().block_on(persist::persist_scenario(args, output))
        }
        Scenario::Fanout(args) => run_tokio(output, fanout::fanout(args, output)),
        Scenario::Ramp(args) => run_tokio(output, ramp::ramp(args, output)),
        Scenario::Idle(args) => run_tokio(output, idle::idle(args, output)),
    };
    match outcome {
        Ok(Status::Complete) => {}
        Ok(Status::Stopped) => std::process::exit(2),
        Err(error) => {
            eprintln!("confab-bench: {error:#}");
            std::process::exit(1);
        }
    }
}

/// The WebSocket scenarios run on a multi-threaded runtime (`--threads`).
fn run_tokio(
    output: Output,
    scenario: impl std::future::Future<Output = anyhow::Result<Status>>,
) -> anyhow::Result<Status> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(output.threads)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let outcome = runtime.block_on(scenario);
    // Connection tasks may still be parked; don't wait for them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    outcome
}

/// How a scenario reports.
#[derive(Clone, Copy)]
struct Output {
    json: bool,
    progress: bool,
    threads: usize,
}

enum Status {
    Complete,
    Stopped,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn percent_of_core(cpu: Duration, wall: Duration) -> f64 {
    100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)
}

/// Raises the open-file limit to the hard limit and says so plainly when
/// `connections` sockets still would not fit.
fn raise_fd_limit(connections: usize) -> anyhow::Result<()> {
    let limit = procfs::raise_nofile().context("raising RLIMIT_NOFILE")?;
    let needed = connections as u64 + 64;
    if needed > limit {
        anyhow::bail!(
            "{connections} connections need about {needed} open files, but this process may \
             open {limit} (the hard RLIMIT_NOFILE); raise it (ulimit -Hn, as root) or use fewer"
        );
    }
    Ok(())
}
