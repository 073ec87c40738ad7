//! The time bound of a WebSocket scenario (`--max-secs`, Ctrl-C, a fatal
//! condition) and its progress lines.

use crate::stats;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Why a run ended before its plan.
#[derive(Clone, Debug)]
pub enum Stop {
    Deadline,
    Interrupted,
    /// The run's numbers would be meaningless (e.g. the server rate-limits).
    Fatal(String),
}

impl Stop {
    pub fn describe(&self) -> String {
        match self {
            Stop::Deadline => "stopped by --max-secs".into(),
            Stop::Interrupted => "interrupted (Ctrl-C)".into(),
            Stop::Fatal(why) => why.clone(),
        }
    }
}

pub struct Bound {
    pub started: Instant,
    deadline: Instant,
    interrupted: Arc<AtomicBool>,
    progress: bool,
    last_print: Instant,
    last_counters: stats::Counters,
}

impl Bound {
    /// Starts the clock; Ctrl-C from now on ends the run at the next check.
    pub fn new(max_secs: u64, progress: bool) -> Self {
        let interrupted = Arc::new(AtomicBool::new(false));
        {
            let interrupted = interrupted.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("confab-bench: interrupted; reporting what was measured");
                    interrupted.store(true, Ordering::Relaxed);
                }
            });
        }
        let now = Instant::now();
        Self {
            started: now,
            deadline: now + Duration::from_secs(max_secs),
            interrupted,
            progress,
            last_print: now,
            last_counters: stats::Counters::default(),
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn check(&self) -> Option<Stop> {
        if let Some(why) = stats::fatal() {
            return Some(Stop::Fatal(why));
        }
        if self.interrupted.load(Ordering::Relaxed) {
            return Some(Stop::Interrupted);
        }
        (Instant::now() >= self.deadline).then_some(Stop::Deadline)
    }

    /// Waits until `at`, checking the bound every 100 ms and printing a
    /// progress line a second (`phase` names what is going on).
    pub async fn wait_until(&mut self, at: Instant, phase: &str) -> Option<Stop> {
        loop {
            if let Some(stop) = self.check() {
                return Some(stop);
            }
            let now = Instant::now();
            if now >= at {
                return None;
            }
            let next = (now + Duration::from_millis(100))
                .min(at)
                .min(self.deadline);
            tokio::time::sleep_until(next).await;
            if self.progress && self.last_print.elapsed() >= Duration::from_secs(1) {
                self.print(phase);
            }
        }
    }

    fn print(&mut self, phase: &str) {
        let now = Instant::now();
        let secs = now.duration_since(self.last_print).as_secs_f64().max(1e-9);
        let c = stats::counters();
        let d = c.since(&self.last_counters);
        eprintln!(
            "{:>6.1}s {phase:<8} {:>9.0} deliveries/s {:>8.0} sends/s {:>8.0} acks/s  errors {} disconnects {} seq violations {}",
            now.duration_since(self.started).as_secs_f64(),
            d.deliveries as f64 / secs,
            d.sends as f64 / secs,
            d.acks as f64 / secs,
            c.error_count(),
            c.disconnects,
            c.seq_violations
        );
        self.last_print = now;
        self.last_counters = c;
    }
}
