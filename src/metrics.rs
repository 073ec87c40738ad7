//! Prometheus metrics (`GET /metrics`). Names and meanings are documented in
//! docs/operations.md; keep the two in step.
//!
//! Handles are resolved once, after the exporter is installed, and kept in a
//! process-wide [`Metrics`], so hot paths (one delivery count per message)
//! are an atomic add, not a registry lookup. Before installation (tools,
//! tests of single modules) every handle is a no-op.

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Version and git revision, as `confab --version` prints them.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_REVISION: &str = env!("CONFAB_GIT_REVISION");
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("CONFAB_GIT_REVISION"),
    ")"
);

const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub struct Metrics {
    pub connections: Gauge,
    pub rooms: Gauge,
    pub messages_accepted: Counter,
    pub deliveries: Counter,
    pub slow_consumer_disconnects: Counter,
    pub heartbeat_timeouts: Counter,
    pub persist_batch_size: Histogram,
    pub persist_flush_seconds: Histogram,
    pub persist_failures: Counter,
    pub persist_lag: Gauge,
    pub redis_roundtrip_seconds: Histogram,
    pub accept_seconds: Histogram,
    pub retention_runs: Counter,
    pub retention_deleted: Counter,
    pub analytics_counted: Counter,
    pub analytics_lag: Gauge,
    /// One counter per error code, made on first use.
    rejected: Mutex<HashMap<&'static str, Counter>>,
}

impl Metrics {
    fn resolve() -> Self {
        Self {
            connections: metrics::gauge!("confab_connections"),
            rooms: metrics::gauge!("confab_rooms"),
            messages_accepted: metrics::counter!("confab_messages_accepted_total"),
            deliveries: metrics::counter!("confab_deliveries_total"),
            slow_consumer_disconnects: metrics::counter!("confab_slow_consumer_disconnects_total"),
            heartbeat_timeouts: metrics::counter!("confab_heartbeat_timeouts_total"),
            persist_batch_size: metrics::histogram!("confab_persist_batch_size"),
            persist_flush_seconds: metrics::histogram!("confab_persist_flush_seconds"),
            persist_failures: metrics::counter!("confab_persist_failures_total"),
            persist_lag: metrics::gauge!("confab_persist_lag"),
            redis_roundtrip_seconds: metrics::histogram!("confab_redis_roundtrip_seconds"),
            accept_seconds: metrics::histogram!("confab_accept_seconds"),
            retention_runs: metrics::counter!("confab_retention_runs_total"),
            retention_deleted: metrics::counter!("confab_retention_deleted_total"),
            analytics_counted: metrics::counter!("confab_analytics_counted_total"),
            analytics_lag: metrics::gauge!("confab_analytics_lag"),
            rejected: Mutex::new(HashMap::new()),
        }
    }

    fn noop() -> Self {
        Self {
            connections: Gauge::noop(),
            rooms: Gauge::noop(),
            messages_accepted: Counter::noop(),
            deliveries: Counter::noop(),
            slow_consumer_disconnects: Counter::noop(),
            heartbeat_timeouts: Counter::noop(),
            persist_batch_size: Histogram::noop(),
            persist_flush_seconds: Histogram::noop(),
            persist_failures: Counter::noop(),
            persist_lag: Gauge::noop(),
            redis_roundtrip_seconds: Histogram::noop(),
            accept_seconds: Histogram::noop(),
            retention_runs: Counter::noop(),
            retention_deleted: Counter::noop(),
            analytics_counted: Counter::noop(),
            analytics_lag: Gauge::noop(),
            rejected: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a refused send under its error code.
    pub fn rejected(&self, code: &'static str) {
        let mut by_code = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        by_code
            .entry(code)
            .or_insert_with(|| metrics::counter!("confab_messages_rejected_total", "code" => code))
            .increment(1);
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();
static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's metrics (no-ops until [`install`] ran).
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::noop)
}

/// Installs the Prometheus recorder once per process; later calls (a second
/// server in the same process) reuse it. Returns whether /metrics can render.
pub fn install() -> bool {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("confab_persist_batch_size".into()),
                    BATCH_SIZE_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                })
                .and_then(|b| b.install_recorder());
            match handle {
                Ok(handle) => {
                    // Resolve handles against the real recorder, unless something
                    // already asked for the no-op set.
                    let _ = METRICS.set(Metrics::resolve());
                    describe();
                    metrics::gauge!(
                        "confab_build_info",
                        "version" => VERSION,
                        "git" => GIT_REVISION
                    )
                    .set(1.0);
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics are unavailable");
                    None
                }
            }
        })
        .is_some()
}

/// One room's analytics gauges: (messages, active users) over the last hour
/// and the last day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSeries {
    pub room: String,
    pub hour: (u64, u64),
    pub day: (u64, u64),
}

/// The rooms with their own series (`metrics.room_series`, the busiest N),
/// rendered by [`render`] itself rather than registered with the recorder,
/// which never forgets a series: a room that leaves the top N must vanish.
static ROOM_SERIES: Mutex<Vec<RoomSeries>> = Mutex::new(Vec::new());

/// Replaces the set of rooms exported with their own series.
pub fn set_room_series(rooms: Vec<RoomSeries>) {
    *ROOM_SERIES.lock().unwrap_or_else(|p| p.into_inner()) = rooms;
}

/// The Prometheus text exposition, or None when no recorder is installed.
pub fn render() -> Option<String> {
    let mut text = HANDLE.get().and_then(|h| h.as_ref()).map(|h| h.render())?;
    render_room_series(
        &mut text,
        &ROOM_SERIES.lock().unwrap_or_else(|p| p.into_inner()),
    );
    Some(text)
}

fn render_room_series(text: &mut String, rooms: &[RoomSeries]) {
    use std::fmt::Write;
    if rooms.is_empty() {
        return;
    }
    /// Picks a gauge's figure out of a window's (messages, users).
    type Figure = fn(&(u64, u64)) -> u64;
    let families: [(&str, &str, Figure); 2] = [
        (
            "confab_room_messages",
            "Messages in a room over the window (1h, 24h), from the analytics counters (cluster-wide); the busiest metrics.room_series rooms only.",
            |w| w.0,
        ),
        (
            "confab_room_active_users",
            "Distinct posters in a room over the window (1h, 24h), from the analytics counters; the busiest metrics.room_series rooms only.",
            |w| w.1,
        ),
    ];
    for (name, help, value) in families {
        // Room names are [A-Za-z0-9_.:-]: nothing to escape in a label.
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge");
        for r in rooms {
            for (window, totals) in [("1h", &r.hour), ("24h", &r.day)] {
                let _ = writeln!(
                    text,
                    "{name}{{room=\"{}\",window=\"{window}\"}} {}",
                    r.room,
                    value(totals)
                );
            }
        }
        text.push('\n');
    }
}

/// Seconds as a histogram wants them.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "confab_build_info",
        "Always 1; labels carry the version and git revision."
    );
    describe_gauge!(
        "confab_connections",
        "Open WebSocket connections on this instance."
    );
    describe_gauge!("confab_rooms", "Rooms active on this instance.");
    describe_gauge!(
        "confab_analytics_lag",
        "Messages persisted but not yet in the analytics counters."
    );
    describe_counter!(
        "confab_analytics_counted_total",
        "Messages this instance added to the analytics counters."
    );
    describe_counter!(
        "confab_retention_runs_total",
        "Retention passes run by this instance."
    );
    describe_counter!(
        "confab_retention_deleted_total",
        "Messages deleted by retention on this instance."
    );
    describe_counter!(
        "confab_messages_accepted_total",
        "Sends accepted (acked) by this instance."
    );
    describe_counter!(
        "confab_messages_rejected_total",
        "Sends refused, by error code."
    );
    describe_counter!(
        "confab_deliveries_total",
        "Message frames handed to member connections on this instance."
    );
    describe_counter!(
        "confab_slow_consumer_disconnects_total",
        "Connections closed with 1013 because too many frames waited for them."
    );
    describe_counter!(
        "confab_heartbeat_timeouts_total",
        "Connections closed because the client went silent."
    );
    describe_histogram!(
        "confab_persist_batch_size",
        "Messages per database transaction."
    );
    describe_histogram!(
        "confab_persist_flush_seconds",
        Unit::Seconds,
        "Duration of one batch's database transaction."
    );
    describe_counter!(
        "confab_persist_failures_total",
        "Failed database transactions."
    );
    describe_gauge!(
        "confab_persist_lag",
        "Messages accepted but not yet committed to the database."
    );
    describe_histogram!(
        "confab_accept_seconds",
        Unit::Seconds,
        "From a send reaching its room to its ack: queueing behind the room's batch in flight, sequencing and the durable write."
    );
    describe_histogram!(
        "confab_redis_roundtrip_seconds",
        Unit::Seconds,
        "Latency of the sequencing script (one round trip per batch of sends)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_series_render_as_gauges_per_window() {
        let mut text = String::new();
        render_room_series(&mut text, &[]);
        assert!(text.is_empty());
        render_room_series(
            &mut text,
            &[RoomSeries {
                room: "general".into(),
                hour: (3, 2),
                day: (7, 4),
            }],
        );
        for line in [
            "# TYPE confab_room_messages gauge",
            "confab_room_messages{room=\"general\",window=\"1h\"} 3",
            "confab_room_messages{room=\"general\",window=\"24h\"} 7",
            "confab_room_active_users{room=\"general\",window=\"1h\"} 2",
            "confab_room_active_users{room=\"general\",window=\"24h\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
