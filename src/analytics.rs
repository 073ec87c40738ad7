//! The analytics stage: per-room counters (messages per minute, poster and
//! language) kept off the message path, behind `GET /api/rooms/{room}/stats`
//! and the `confab_room_*` gauges.
//!
//! Messages reach it only after they are durable: in embedded mode Persist
//! hands over each committed batch; in cluster mode every instance reads the
//! persist stream in the consumer group `analytics` (`broker::feed`), so each
//! entry goes to one instance. Counting is exactly once whatever arrives
//! twice: the store adds a room's messages only above the seq its counters
//! already include, in the same transaction that moves that seq (see
//! `store::tally`). What never arrived here (a crash between commit and
//! count, an import, a stream entry trimmed before the group existed) is
//! found by a periodic scan of rooms whose newest seq is above their counted
//! seq, and read back from the store.

use crate::chat::ChatMessage;
use crate::store::{CountedMessage, RoomActivity, SharedPipeline, StoreError};
use actix::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How often waiting messages are counted: they show in stats within this
/// (plus a transaction).
const TICK: Duration = Duration::from_secs(1);
/// How often the store is scanned for rooms with uncounted messages.
const SCAN_EVERY: Duration = Duration::from_secs(10);
/// Most messages read back from the store per room and pass, and most rooms
/// read back per pass: catching up after a backlog stays gentle on the store
/// (and on the core Persist and the sessions share).
const READ_BACK: u32 = 1_000;
const READ_BACK_ROOMS: usize = 16;
/// A hole below waiting messages that the store can't fill for this long
/// (deleted by retention, or lost) is skipped so counting goes on.
const GAP_PATIENCE: Duration = Duration::from_secs(60);
/// Messages held while the store is unreachable; past it, new ones are
/// dropped here and found again by the scan once the store is back.
const HOLD_MAX: usize = 50_000;
/// Stats windows, and the oldest counters kept (the longest window, plus a day).
pub const WINDOWS: &[(&str, i64)] = &[("1h", 3_600_000), ("24h", 86_400_000), ("7d", 604_800_000)];
const KEEP_MS: i64 = 8 * 86_400_000;
/// Rooms counted per transaction (see `apply`).
const ROOMS_PER_TRANSACTION: usize = 8;
const GAUGES_EVERY: Duration = Duration::from_secs(5);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Committed messages to count. `entries` are their persist stream ids in
/// cluster mode (seq → id), acknowledged once counted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed {
    pub messages: Vec<Arc<ChatMessage>>,
    pub entries: Vec<(String, u64, String)>,
}

#[derive(Default)]
struct Waiting {
    /// With the language once detected (on the detector thread).
    messages: BTreeMap<u64, (Arc<ChatMessage>, Option<&'static str>)>,
    /// (seq, stream id) to acknowledge once the room's counted seq passes seq.
    entries: Vec<(u64, String)>,
    /// Since when a hole below the first waiting message stops counting.
    stuck_since: Option<Instant>,
}

pub struct Analytics {
    pipeline: SharedPipeline,
    waiting: HashMap<String, Waiting>,
    held: usize,
    busy: bool,
    last_scan: Option<Instant>,
    last_gauges: Option<Instant>,
    last_prune: Option<Instant>,
    /// Cluster mode: stream ids to XACK in the group `analytics`.
    acks: Option<mpsc::UnboundedSender<Vec<String>>>,
    /// `metrics.room_series`: how many rooms get their own gauges.
    room_series: usize,
}

impl Analytics {
    pub fn new(
        pipeline: SharedPipeline,
        acks: Option<mpsc::UnboundedSender<Vec<String>>>,
        room_series: usize,
    ) -> Self {
        Self {
            room_series,
            pipeline,
            waiting: HashMap::new(),
            held: 0,
            busy: false,
            last_scan: None,
            last_gauges: None,
            last_prune: None,
            acks,
        }
    }

    fn due(last: Option<Instant>, every: Duration) -> bool {
        last.is_none_or(|at| at.elapsed() >= every)
    }

    /// One pass: count what waits (reading holes back from the store), scan
    /// for rooms nothing told us about, refresh the gauges, prune old counters.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        let scan = Self::due(self.last_scan, SCAN_EVERY);
        let gauges = Self::due(self.last_gauges, GAUGES_EVERY);
        let prune = Self::due(self.last_prune, PRUNE_EVERY);
        if self.waiting.is_empty() && !scan && !gauges && !prune {
            return;
        }
        if scan {
            self.last_scan = Some(Instant::now());
        }
        if gauges {
            self.last_gauges = Some(Instant::now());
        }
        if prune {
            self.last_prune = Some(Instant::now());
        }
        self.busy = true;
        let waiting = std::mem::take(&mut self.waiting);
        self.held = 0;
        let pipeline = self.pipeline.clone();
        let room_series = self.room_series;
        ctx.spawn(
            async move {
                let result = count(&pipeline, waiting, scan).await;
                if gauges {
                    publish_gauges(&pipeline, room_series).await;
                }
                if prune {
                    let before = crate::protocol::now_ms() - KEEP_MS;
                    if let Err(error) = pipeline.prune_activity(before).await {
                        tracing::warn!(%error, "could not prune old analytics counters");
                    }
                }
                result
            }
            .into_actor(self)
            .map(|(still_waiting, acked), act, _| {
                act.busy = false;
                // What arrived meanwhile joins what still waits.
                for (room, mut w) in still_waiting {
                    let slot = act.waiting.entry(room).or_default();
                    w.messages.append(&mut slot.messages);
                    w.entries.append(&mut slot.entries);
                    act.held += w.messages.len();
                    *slot = w;
                }
                if let (Some(acks), false) = (&act.acks, acked.is_empty()) {
                    let _ = acks.send(acked);
                }
            }),
        );
    }
}

impl Actor for Analytics {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
    }
}

impl Handler<Committed> for Analytics {
    type Result = ();

    fn handle(&mut self, batch: Committed, _: &mut Self::Context) {
        if self.held + batch.messages.len() > HOLD_MAX {
            return; // the scan reads them back from the store later
        }
        for m in &batch.messages {
            let w = self.waiting.entry(m.room.clone()).or_default();
            w.messages.insert(m.seq, (m.clone(), None));
            self.held += 1;
        }
        for (room, seq, id) in batch.entries {
            self.waiting
                .entry(room)
                .or_default()
                .entries
                .push((seq, id));
        }
    }
}

/// The language of a message: ISO 639-3 when whatlang is sure, else "und".
/// Text this short is never reliable, so it isn't even tried.
pub fn language(content: &str) -> &'static str {
    if content.len() < 12 {
        return "und";
    }
    match whatlang::detect(content) {
        Some(info) if info.is_reliable() => info.lang().code(),
        _ => "und",
    }
}

fn to_counted(m: &ChatMessage, lang: &'static str) -> CountedMessage {
    CountedMessage {
        seq: m.seq,
        timestamp_ms: m.timestamp_ms,
        user_id: m.user_id.clone(),
        user_name: m.user_name.clone(),
        lang: lang.to_string(),
        counts: m.is_message(),
    }
}

type DetectJob = (Vec<Arc<ChatMessage>>, oneshot::Sender<Vec<&'static str>>);

/// Language detection is most of the stage's CPU (whatlang scores every
/// message against dozens of language profiles), so it runs on a thread of
/// its own at idle priority (`SCHED_IDLE`): it gets the CPU only when the
/// actor threads don't need it, and under load the counters lag instead of
/// deliveries.
fn detector() -> &'static std::sync::mpsc::Sender<DetectJob> {
    static DETECTOR: std::sync::OnceLock<std::sync::mpsc::Sender<DetectJob>> =
        std::sync::OnceLock::new();
    DETECTOR.get_or_init(|| {
        let (jobs, queue) = std::sync::mpsc::channel::<DetectJob>();
        let spawned = std::thread::Builder::new()
            .name("confab-analytics".into())
            .spawn(move || {
                lower_priority();
                for (messages, answer) in queue {
                    let languages = messages.iter().map(|m| match m.is_message() {
                        true => language(&m.content),
                        false => "und", // a change is not a new message
                    });
                    let _ = answer.send(languages.collect());
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the language detector; languages will be und");
        }
        jobs
    })
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler with pid 0 changes only the calling thread's
    // policy; `param` is a valid sched_param for SCHED_IDLE.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "language detection runs at normal priority"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// The languages of `messages`, in order ("und" if the detector is gone).
async fn detect(messages: Vec<Arc<ChatMessage>>) -> Vec<&'static str> {
    let count = messages.len();
    let (answer, languages) = oneshot::channel();
    if detector().send((messages, answer)).is_err() {
        return vec!["und"; count];
    }
    languages.await.unwrap_or_else(|_| vec!["und"; count])
}

/// Detects the language of every waiting message that has none yet.
async fn detect_waiting(waiting: &mut HashMap<String, Waiting>) {
    let missing: Vec<Arc<ChatMessage>> = waiting
        .values()
        .flat_map(|w| w.messages.values())
        .filter(|(_, lang)| lang.is_none())
        .map(|(m, _)| m.clone())
        .collect();
    if missing.is_empty() {
        return;
    }
    let mut languages = detect(missing).await.into_iter();
    for w in waiting.values_mut() {
        for (_, lang) in w.messages.values_mut().filter(|(_, l)| l.is_none()) {
            *lang = Some(languages.next().unwrap_or("und"));
        }
    }
}

/// Counts what waits; returns what must wait longer and the stream ids whose
/// messages are now counted.
async fn count(
    pipeline: &SharedPipeline,
    mut waiting: HashMap<String, Waiting>,
    scan: bool,
) -> (HashMap<String, Waiting>, Vec<String>) {
    if scan {
        match pipeline.uncounted_rooms().await {
            Ok(rooms) => {
                let lag: u64 = rooms.iter().map(|(_, counted, last)| last - counted).sum();
                crate::metrics::get().analytics_lag.set(lag as f64);
                // Rooms nothing told us about: read them back from the store.
                for (room, _, _) in rooms {
                    waiting.entry(room).or_default();
                }
            }
            Err(error) => tracing::warn!(%error, "analytics scan failed"),
        }
    }
    if waiting.is_empty() {
        return (waiting, Vec::new());
    }
    detect_waiting(&mut waiting).await;
    let rooms: Vec<RoomActivity> = waiting
        .iter()
        .map(|(room, w)| RoomActivity {
            room: room.clone(),
            messages: w
                .messages
                .values()
                .map(|(m, lang)| to_counted(m, lang.unwrap_or("und")))
                .collect(),
            skip_gap: false,
        })
        .collect();
    let mut counted = match apply(pipeline, rooms, &mut waiting).await {
        Ok(counted) => counted,
        Err(error) => {
            tracing::warn!(%error, "counting analytics failed; retrying");
            return (waiting, Vec::new());
        }
    };
    // Rooms still behind: a hole below what waits, or nothing waits and the
    // scan found them. Read the next messages above the counted seq back
    // from the store; a hole the store can't fill either is skipped after a
    // while (retention deleted it, or it is lost).
    let mut read_back = Vec::new();
    let mut behind: HashMap<String, u64> = HashMap::new();
    for (room, w) in &mut waiting {
        let done = counted.get(room).copied().unwrap_or(0);
        // Everything that waited is counted: nothing to read back.
        if !w.messages.is_empty() && w.messages.range(done + 1..).next().is_none() {
            continue;
        }
        if behind.len() >= READ_BACK_ROOMS {
            break; // the rest next pass
        }
        behind.insert(room.clone(), done);
        let stored = match pipeline.after(room, done, READ_BACK).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(%error, %room, "analytics read-back failed");
                continue;
            }
        };
        // What already waits here has its language: detect the rest only.
        let stored: Vec<Arc<ChatMessage>> = stored
            .into_iter()
            .filter(|m| !w.messages.contains_key(&m.seq))
            .map(Arc::new)
            .collect();
        let languages = detect(stored.clone()).await;
        let mut all: BTreeMap<u64, CountedMessage> = stored
            .iter()
            .zip(languages)
            .map(|(m, lang)| (m.seq, to_counted(m, lang)))
            .collect();
        all.extend(
            w.messages
                .iter()
                .map(|(seq, (m, lang))| (*seq, to_counted(m, lang.unwrap_or("und")))),
        );
        let Some(first) = all.keys().next().copied() else {
            w.stuck_since = None;
            continue;
        };
        let skip_gap = first > done + 1
            && w.stuck_since.get_or_insert_with(Instant::now).elapsed() >= GAP_PATIENCE;
        if first > done + 1 && !skip_gap {
            continue;
        }
        if skip_gap {
            tracing::warn!(%room, after = done, next = first, "analytics: missing seqs skipped");
        }
        read_back.push(RoomActivity {
            room: room.clone(),
            messages: all.into_values().collect(),
            skip_gap,
        });
    }
    if !read_back.is_empty() {
        match apply(pipeline, read_back, &mut waiting).await {
            Ok(more) => counted.extend(more),
            Err(error) => tracing::warn!(%error, "counting read-back analytics failed"),
        }
    }
    // Drop what is counted; collect the stream ids that can be acknowledged.
    let mut acked = Vec::new();
    waiting.retain(|room, w| {
        let done = counted.get(room).copied().unwrap_or(0);
        w.messages = w.messages.split_off(&(done + 1));
        w.entries.retain(|(seq, id)| {
            if *seq <= done {
                acked.push(id.clone());
                false
            } else {
                true
            }
        });
        if behind.get(room).is_some_and(|before| done > *before) {
            w.stuck_since = None; // moved on past the hole
        }
        !w.messages.is_empty() || !w.entries.is_empty() || w.stuck_since.is_some()
    });
    (waiting, acked)
}

/// Counts rooms, a few per transaction: each transaction holds SQLite's one
/// write lock only briefly, so Persist's commits (and so acks and deliveries)
/// never wait long behind the counters. Returns each room's counted seq.
async fn apply(
    pipeline: &SharedPipeline,
    rooms: Vec<RoomActivity>,
    waiting: &mut HashMap<String, Waiting>,
) -> Result<HashMap<String, u64>, StoreError> {
    let before: usize = rooms.iter().map(|r| r.messages.len()).sum();
    let mut counted: HashMap<String, u64> = HashMap::with_capacity(rooms.len());
    let mut rooms = rooms.into_iter().peekable();
    while rooms.peek().is_some() {
        let chunk: Vec<RoomActivity> = rooms.by_ref().take(ROOMS_PER_TRANSACTION).collect();
        counted.extend(pipeline.count_activity(chunk).await?);
    }
    let left: usize = waiting
        .iter()
        .map(|(room, w)| {
            let done = counted.get(room).copied().unwrap_or(0);
            w.messages.range(done + 1..).count()
        })
        .sum();
    crate::metrics::get()
        .analytics_counted
        .increment(before.saturating_sub(left) as u64);
    Ok(counted)
}

/// The per-room gauges of the busiest `top` rooms (by messages in the last
/// hour, then the last day): a bounded number of series however many rooms
/// exist, and a room that drops out of the top loses its series.
async fn publish_gauges(pipeline: &SharedPipeline, top: usize) {
    if top == 0 {
        crate::metrics::set_room_series(Vec::new());
        return;
    }
    let now = crate::protocol::now_ms();
    let mut totals = Vec::with_capacity(2);
    for (_, span) in &WINDOWS[..2] {
        match pipeline.activity_totals(minute_of(now - span)).await {
            Ok(rooms) => totals.push(rooms),
            Err(error) => {
                tracing::debug!(%error, "analytics gauges unavailable");
                return;
            }
        }
    }
    let day = totals.pop().unwrap_or_default();
    let hour: HashMap<String, (u64, u64)> = totals
        .pop()
        .unwrap_or_default()
        .into_iter()
        .map(|(room, messages, users)| (room, (messages, users)))
        .collect();
    crate::metrics::set_room_series(busiest_rooms(hour, day, top));
}

/// Picks the `top` busiest rooms: (room, last hour's, last day's totals).
fn busiest_rooms(
    hour: HashMap<String, (u64, u64)>,
    day: Vec<(String, u64, u64)>,
    top: usize,
) -> Vec<crate::metrics::RoomSeries> {
    let mut rooms: Vec<crate::metrics::RoomSeries> = day
        .into_iter()
        .map(|(room, messages, users)| {
            let last_hour = hour.get(&room).copied().unwrap_or((0, 0));
            crate::metrics::RoomSeries {
                room,
                hour: last_hour,
                day: (messages, users),
            }
        })
        .collect();
    rooms.sort_unstable_by(|a, b| {
        (b.hour.0, b.day.0)
            .cmp(&(a.hour.0, a.day.0))
            .then_with(|| a.room.cmp(&b.room))
    });
    rooms.truncate(top);
    rooms
}

fn minute_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(60_000)
}

/// `GET /api/rooms/{room}/stats` for a window: built from the counters.
pub async fn stats(
    pipeline: &SharedPipeline,
    room: &str,
    window: &str,
    span_ms: i64,
) -> Result<serde_json::Value, StoreError> {
    let since = minute_of(crate::protocol::now_ms() - span_ms);
    let rows = pipeline.activity(room, since).await?;
    let mut messages = 0u64;
    // Per poster: the name at their latest minute, and their messages.
    let mut posters: HashMap<&str, (&str, i64, u64)> = HashMap::new();
    let mut languages: HashMap<&str, u64> = HashMap::new();
    let mut minutes: BTreeMap<i64, u64> = BTreeMap::new();
    for row in &rows {
        messages += row.messages;
        let poster = posters
            .entry(&row.user_id)
            .or_insert((&row.user_name, row.minute_ms, 0));
        if row.minute_ms > poster.1 {
            (poster.0, poster.1) = (&row.user_name, row.minute_ms);
        }
        poster.2 += row.messages;
        *languages.entry(&row.lang).or_insert(0) += row.messages;
        *minutes.entry(row.minute_ms).or_insert(0) += row.messages;
    }
    let mut top: Vec<(&str, &str, u64)> = posters
        .iter()
        .map(|(id, (name, _, n))| (*id, *name, *n))
        .collect();
    top.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(b.0)));
    let active_users = top.len();
    top.truncate(10);
    let mut langs: Vec<(&str, u64)> = languages.into_iter().collect();
    langs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    Ok(serde_json::json!({
        "room": room,
        "window": window,
        "messages": messages,
        "active_users": active_users,
        "top_posters": top
            .iter()
            .map(|(id, name, n)| serde_json::json!({"user_id": id, "user": name, "messages": n}))
            .collect::<Vec<_>>(),
        "languages": langs
            .iter()
            .map(|(lang, n)| serde_json::json!({"lang": lang, "messages": n}))
            .collect::<Vec<_>>(),
        "per_minute": minutes
            .iter()
            .map(|(minute, n)| serde_json::json!({
                "minute": rfc3339_minute(*minute),
                "messages": n,
            }))
            .collect::<Vec<_>>(),
    }))
}

/// A minute of the stats' `per_minute`: `2026-11-23T10:00:00Z`.
pub fn rfc3339_minute(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_languages_as_iso_639_3_and_says_und_when_unsure() {
        assert_eq!(
            language("Hello everyone, I think we should meet tomorrow morning to discuss the plan"),
            "eng"
        );
        assert_eq!(
            language("Der schnelle braune Fuchs springt über den faulen Hund und läuft weiter"),
            "deu"
        );
        assert_eq!(language("ok"), "und");
        assert_eq!(language("👍👍"), "und");
    }

    #[test]
    fn the_busiest_rooms_get_series_by_last_hour_then_day() {
        let hour: HashMap<String, (u64, u64)> =
            [("b".to_string(), (5, 1)), ("c".to_string(), (9, 2))].into();
        let day = vec![
            ("a".to_string(), 100, 3),
            ("b".to_string(), 6, 1),
            ("c".to_string(), 9, 2),
            ("d".to_string(), 50, 1),
        ];
        let top: Vec<String> = busiest_rooms(hour.clone(), day.clone(), 3)
            .into_iter()
            .map(|r| r.room)
            .collect();
        assert_eq!(top, ["c", "b", "a"]);
        let all = busiest_rooms(hour, day, 10);
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].hour, (9, 2));
        assert_eq!(all[2].hour, (0, 0));
        assert_eq!(all[2].day, (100, 3));
    }

    #[test]
    fn minutes_start_on_the_minute() {
        assert_eq!(minute_of(120_001), 120_000);
        assert_eq!(minute_of(-1), -60_000);
    }
}
