//! `confab export` and `confab import`: a room's messages to NDJSON or CSV, and
//! an NDJSON export back into a store. Both stream: export pages through the
//! room with [`Pipeline::after`], import reads its file line by line and writes
//! batches with [`Pipeline::import_batch`], so neither holds more than a page.

use crate::chat::{ChatMessage, Kind};
use crate::config::Config;
use crate::protocol;
use crate::store::{Pipeline, StoreError};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, Read as _, Write};
use std::path::Path;
use std::sync::Arc;

/// Messages fetched per page on export.
pub const EXPORT_PAGE: u32 = 1000;
/// Messages written per transaction on import.
pub const IMPORT_BATCH: usize = 500;
/// The longest line import accepts (a message is a few KiB at most), so a
/// broken file can't make it buffer without bound.
pub const MAX_LINE_BYTES: usize = 8 << 20;

/// The header line of a CSV export (its rows end with CRLF, as RFC 4180 says).
pub const CSV_HEADER: &str =
    "room,seq,id,user,user_id,content,timestamp,kind,target,reply_to,edited_at,deleted\r\n";

/// The format of `confab export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line: a message as history pages render it
    /// (without `reactions`), a change as its live frame with `kind`.
    Ndjson,
    /// RFC 4180: a header line, then one row per message, CRLF line ends.
    Csv,
}

// --------------------------------------------------------------------- export

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Write(#[from] io::Error),
}

/// Writes `room`'s messages with `seq > since` to `out`, oldest first, and
/// flushes it; returns how many. Holds one page of [`EXPORT_PAGE`] at a time.
pub async fn export<W: Write>(
    pipeline: &dyn Pipeline,
    room: &str,
    since: u64,
    format: Format,
    out: &mut W,
) -> Result<u64, ExportError> {
    export_paged(pipeline, room, since, format, out, EXPORT_PAGE).await
}

async fn export_paged<W: Write>(
    pipeline: &dyn Pipeline,
    room: &str,
    since: u64,
    format: Format,
    out: &mut W,
    page: u32,
) -> Result<u64, ExportError> {
    if format == Format::Csv {
        out.write_all(CSV_HEADER.as_bytes())?;
    }
    let mut line = String::new();
    let mut after = since;
    let mut written = 0u64;
    loop {
        let messages = pipeline.after(room, after, page).await?;
        for m in &messages {
            line.clear();
            match format {
                Format::Ndjson => {
                    // The history message object, so exports and history agree.
                    line.push_str(&m.export_json());
                    line.push('\n');
                }
                Format::Csv => csv_row(m, &mut line),
            }
            out.write_all(line.as_bytes())?;
        }
        written += messages.len() as u64;
        match messages.last() {
            Some(last) if messages.len() >= page as usize => after = last.seq,
            _ => break,
        }
    }
    out.flush()?;
    Ok(written)
}

/// One CSV row of a message, CRLF included, appended to `out`.
pub fn csv_row(m: &ChatMessage, out: &mut String) {
    push_csv_field(out, &m.room);
    let _ = write!(out, ",{},", m.seq);
    push_csv_field(out, &m.id);
    out.push(',');
    push_csv_field(out, &m.user_name);
    out.push(',');
    push_csv_field(out, &m.user_id);
    out.push(',');
    push_csv_field(out, &m.content);
    out.push(',');
    out.push_str(&m.timestamp());
    let _ = write!(out, ",{},", m.kind.as_str());
    push_csv_field(out, m.target.as_deref().unwrap_or(""));
    out.push(',');
    push_csv_field(out, m.reply_to.as_deref().unwrap_or(""));
    out.push(',');
    if let Some(at) = m.edited_at_ms {
        out.push_str(&protocol::format_timestamp(at));
    }
    out.push_str(if m.deleted { ",true\r\n" } else { ",false\r\n" });
}

/// Appends one RFC 4180 field: quoted when it holds a comma, a quote, CR or
/// LF, with its quotes doubled; as it is otherwise.
pub fn push_csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.reserve(field.len() + 2);
        out.push('"');
        for (i, part) in field.split('"').enumerate() {
            if i > 0 {
                out.push_str("\"\"");
            }
            out.push_str(part);
        }
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// `confab export`: checks the room, opens the store (running migrations),
/// and writes the room to stdout through one buffered lock. A reader that
/// goes away (`| head`) ends the export quietly.
pub async fn run_export(
    config: &Config,
    room: &str,
    since: u64,
    format: Format,
) -> anyhow::Result<()> {
    protocol::check_room(room).map_err(|e| anyhow::anyhow!("--room {room:?}: {}", e.message))?;
    let (_store, pipeline) = crate::store::open_with_pipeline(config).await?;
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    match export(pipeline.as_ref(), room, since, format, &mut out).await {
        Ok(n) => {
            tracing::info!(room, since, messages = n, "export finished");
            Ok(())
        }
        Err(ExportError::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            // Whatever is still buffered can't be written either: drop it
            // unflushed.
            drop(out.into_parts());
            tracing::debug!(room, "export stopped: the reader closed stdout");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

// --------------------------------------------------------------------- import

/// One line of an NDJSON export: a history message object, or a change
/// (with `kind`). Other fields (such as `type`) are ignored.
#[derive(serde::Deserialize)]
struct Line {
    room: String,
    seq: u64,
    id: String,
    user: String,
    user_id: String,
    #[serde(default)]
    content: Option<String>,
    timestamp: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    emoji: Option<String>,
    #[serde(default)]
    added: Option<bool>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    edited_at: Option<String>,
    #[serde(default)]
    deleted: bool,
}

fn parse_time(name: &str, text: &str) -> Result<i64, String> {
    Ok(chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("\"{name}\" {text:?} is not an RFC 3339 time ({e})"))?
        .timestamp_millis())
}

/// Parses one line of an export into the entry it describes (without a
/// `client_ref`), or says what is wrong with it.
pub fn parse_line(text: &str) -> Result<ChatMessage, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| {
        // A line is one line: its column is the only position worth giving.
        e.to_string()
            .replace(&format!(" at line {} column ", e.line()), " at column ")
    })?;
    protocol::check_room(&line.room).map_err(|e| format!("\"room\": {}", e.message))?;
    if line.seq == 0 {
        return Err("\"seq\" must be at least 1".into());
    }
    if line.seq > i64::MAX as u64 {
        return Err(format!("\"seq\" {} is too large", line.seq));
    }
    let timestamp_ms = parse_time("timestamp", &line.timestamp)?;
    let kind = match line.kind.as_deref() {
        None => Kind::Message,
        Some("react") if line.added == Some(false) => Kind::Unreact,
        Some(k) => {
            Kind::parse(k).ok_or_else(|| format!("\"kind\" {k:?} is not one confab writes"))?
        }
    };
    let content = match kind {
        Kind::Message | Kind::Edit => line.content.ok_or("missing field `content`")?,
        Kind::React | Kind::Unreact => line.emoji.ok_or("missing field `emoji`")?,
        Kind::Delete => String::new(),
        // A membership event's details (JSON, see `access::EventBody`).
        _ => line.content.unwrap_or_default(),
    };
    if kind != Kind::Message && kind != Kind::RoomCreated && line.target.is_none() {
        return Err("a change needs its \"target\"".into());
    }
    let edited_at_ms = match &line.edited_at {
        Some(at) => Some(parse_time("edited_at", at)?),
        None => None,
    };
    let fields = [
        ("id", Some(&line.id)),
        ("user", Some(&line.user)),
        ("user_id", Some(&line.user_id)),
        ("content", Some(&content)),
        ("target", line.target.as_ref()),
        ("reply_to", line.reply_to.as_ref()),
    ];
    for (name, value) in fields {
        // Postgres text can't hold NUL, and both backends must agree.
        if value.is_some_and(|v| v.contains('\0')) {
            return Err(format!(
                "\"{name}\" must not contain the NUL character (U+0000)"
            ));
        }
    }
    let is_message = kind == Kind::Message;
    Ok(ChatMessage {
        room: line.room,
        seq: line.seq,
        id: line.id,
        user_id: line.user_id,
        user_name: line.user,
        content,
        timestamp_ms,
        kind,
        target: line.target.filter(|_| !is_message),
        reply_to: line.reply_to.filter(|_| is_message),
        edited_at_ms: edited_at_ms.filter(|_| is_message),
        deleted: line.deleted && is_message,
        ..ChatMessage::default()
    })
}

/// What an import has written so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Messages handed to the store (ones already there were left as they were).
    pub messages: u64,
    /// The newest imported seq of each room.
    pub heads: BTreeMap<String, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("line {line}: {reason}")]
    Invalid { line: u64, reason: String },
    #[error("line {line}: cannot read it: {source}")]
    Read { line: u64, source: io::Error },
    #[error("lines {first}-{last}: cannot write them: {source}")]
    Store {
        first: u64,
        last: u64,
        source: StoreError,
    },
    /// The batch ending at `line` was written, then `after_batch` failed.
    #[error("line {line}: {source}")]
    Hook {
        line: u64,
        source: crate::broker::RaiseError,
    },
}

/// Called after each batch is committed, with the batch's newest seq per room
/// (cluster mode raises the rooms' Redis seqs with it).
pub type AfterBatch<'a> = &'a mut dyn FnMut(
    &BTreeMap<String, u64>,
) -> futures_util::future::LocalBoxFuture<
    'static,
    Result<(), crate::broker::RaiseError>,
>;

/// Reads NDJSON from `input` line by line and imports it in batches of
/// [`IMPORT_BATCH`]. Blank lines are skipped. The first bad line stops it: what
/// came before it is imported (and counted in `done`), nothing after.
pub async fn import<R: BufRead>(
    pipeline: &dyn Pipeline,
    input: R,
    done: &mut Imported,
    after_batch: AfterBatch<'_>,
) -> Result<(), ImportError> {
    import_batched(pipeline, input, done, after_batch, IMPORT_BATCH).await
}

async fn import_batched<R: BufRead>(
    pipeline: &dyn Pipeline,
    mut input: R,
    done: &mut Imported,
    after_batch: AfterBatch<'_>,
    batch_size: usize,
) -> Result<(), ImportError> {
    let mut batch: Vec<Arc<ChatMessage>> = Vec::with_capacity(batch_size);
    // The lines of the batch's first and last messages.
    let (mut first_line, mut last_line) = (0u64, 0u64);
    let mut buf: Vec<u8> = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        line_no += 1;
        let read = input
            .by_ref()
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf);
        let problem = match read {
            Ok(0) => break,
            Err(e) => Some(ImportError::Read {
                line: line_no,
                source: e,
            }),
            Ok(_) if buf.len() > MAX_LINE_BYTES => Some(ImportError::Invalid {
                line: line_no,
                reason: format!("longer than {} MiB", MAX_LINE_BYTES >> 20),
            }),
            Ok(_) => match std::str::from_utf8(&buf) {
                Err(e) => Some(ImportError::Invalid {
                    line: line_no,
                    reason: format!("not UTF-8 ({e})"),
                }),
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => match parse_line(text) {
                    Ok(m) => {
                        if batch.is_empty() {
                            first_line = line_no;
                        }
                        last_line = line_no;
                        batch.push(Arc::new(m));
                        None
                    }
                    Err(reason) => Some(ImportError::Invalid {
                        line: line_no,
                        reason,
                    }),
                },
            },
        };
        // Everything before a bad line goes in, so the message can say so.
        if problem.is_some() || batch.len() >= batch_size {
            flush(
                pipeline,
                &mut batch,
                (first_line, last_line),
                done,
                after_batch,
            )
            .await?;
        }
        if let Some(problem) = problem {
            return Err(problem);
        }
    }
    flush(
        pipeline,
        &mut batch,
        (first_line, last_line),
        done,
        after_batch,
    )
    .await
}

async fn flush(
    pipeline: &dyn Pipeline,
    batch: &mut Vec<Arc<ChatMessage>>,
    (first, last): (u64, u64),
    done: &mut Imported,
    after_batch: AfterBatch<'_>,
) -> Result<(), ImportError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut heads: BTreeMap<String, u64> = BTreeMap::new();
    for m in batch.iter() {
        let head = heads.entry(m.room.clone()).or_default();
        *head = (*head).max(m.seq);
    }
    let count = batch.len() as u64;
    pipeline
        .import_batch(std::mem::take(batch))
        .await
        .map_err(|source| ImportError::Store {
            first,
            last,
            source,
        })?;
    done.messages += count;
    for (room, seq) in &heads {
        let head = done.heads.entry(room.clone()).or_default();
        *head = (*head).max(*seq);
    }
    after_batch(&heads)
        .await
        .map_err(|source| ImportError::Hook { line: last, source })
}

/// `confab import FILE`: imports the file, then prints a summary on stderr.
/// In cluster mode every committed batch also raises its rooms' Redis seqs,
/// so new sends continue after the imported messages.
pub async fn run_import(config: &Config, file: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let input =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let (_store, pipeline) = crate::store::open_with_pipeline(config).await?;

    let raiser = crate::broker::SeqRaiser::connect(config).await?;
    let mut raise = |heads: &BTreeMap<String, u64>| raiser.raise(heads);

    let mut done = Imported::default();
    let result = import(
        pipeline.as_ref(),
        io::BufReader::with_capacity(64 * 1024, input),
        &mut done,
        &mut raise,
    )
    .await;
    let name = file.display();
    match result {
        Ok(()) => {
            eprintln!(
                "imported {} into {} from {name}",
                plural(done.messages, "message"),
                plural(done.heads.len() as u64, "room")
            );
            Ok(())
        }
        Err(e) => {
            let (which, advice) = match &e {
                ImportError::Invalid { .. } | ImportError::Read { .. } => {
                    ("before it", "fix the file and import it again")
                }
                ImportError::Store { .. } => ("before them", "import the file again"),
                ImportError::Hook { .. } => (
                    "up to it",
                    "import the file again once Redis is back, before anyone sends in these rooms",
                ),
            };
            let kept = if done.messages == 0 {
                "nothing was imported".to_string()
            } else {
                format!(
                    "the lines {which} were imported and stay ({} into {})",
                    plural(done.messages, "message"),
                    plural(done.heads.len() as u64, "room")
                )
            };
            Err(anyhow::anyhow!(
                "import of {name} stopped at {e}; {kept}; {advice} (messages already there \
                 are skipped)"
            ))
        }
    }
}

fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ActivityRow, RoomActivity};
    use async_trait::async_trait;
    use std::sync::Mutex;

    /// A room in memory, recording the page sizes asked for.
    #[derive(Default)]
    struct Memory {
        rows: Mutex<BTreeMap<(String, u64), ChatMessage>>,
        limits: Mutex<Vec<u32>>,
        batches: Mutex<Vec<usize>>,
        fail_writes: bool,
    }

    #[async_trait]
    impl Pipeline for Memory {
        async fn after(
            &self,
            room: &str,
            after: u64,
            limit: u32,
        ) -> Result<Vec<ChatMessage>, StoreError> {
            self.limits.lock().unwrap().push(limit);
            Ok(self
                .rows
                .lock()
                .unwrap()
                .range((room.to_string(), after + 1)..(room.to_string(), u64::MAX))
                .take(limit as usize)
                .map(|(_, m)| m.clone())
                .collect())
        }
        async fn import_batch(&self, batch: Vec<Arc<ChatMessage>>) -> Result<(), StoreError> {
            if self.fail_writes {
                return Err(StoreError::Connect("down".into()));
            }
            self.batches.lock().unwrap().push(batch.len());
            let mut rows = self.rows.lock().unwrap();
            for m in batch {
                rows.entry((m.room.clone(), m.seq))
                    .or_insert_with(|| (*m).clone());
            }
            Ok(())
        }
        async fn delete_older_than(&self, _: i64, _: u32) -> Result<usize, StoreError> {
            unimplemented!()
        }
        async fn count_activity(
            &self,
            _: Vec<RoomActivity>,
        ) -> Result<Vec<(String, u64)>, StoreError> {
            unimplemented!()
        }
        async fn uncounted_rooms(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
            unimplemented!()
        }
        async fn activity(&self, _: &str, _: i64) -> Result<Vec<ActivityRow>, StoreError> {
            unimplemented!()
        }
        async fn activity_totals(&self, _: i64) -> Result<Vec<(String, u64, u64)>, StoreError> {
            unimplemented!()
        }
        async fn prune_activity(&self, _: i64) -> Result<usize, StoreError> {
            unimplemented!()
        }
    }

    const TRICKY: [&str; 5] = [
        "plain",
        "a, b and \"c\"",
        "line one\nline two\r\nthree\rfour",
        "\"",
        "héllo — 中文 😀, \"quoted\"",
    ];

    fn msg(room: &str, seq: u64, content: &str) -> ChatMessage {
        ChatMessage {
            room: room.into(),
            seq,
            id: format!("id-{seq}"),
            user_id: format!("guest:u,{seq}"),
            user_name: format!("User \"{seq}\""),
            content: content.into(),
            timestamp_ms: 1_795_428_000_123 + seq as i64,
            client_ref: None,
            ..ChatMessage::default()
        }
    }

    fn memory(room: &str, n: u64) -> Memory {
        let m = Memory::default();
        for seq in 1..=n {
            let content = TRICKY[seq as usize % TRICKY.len()];
            m.rows
                .lock()
                .unwrap()
                .insert((room.into(), seq), msg(room, seq, content));
        }
        m.rows
            .lock()
            .unwrap()
            .insert(("other".into(), 1), msg("other", 1, "not this room"));
        m
    }

    fn run<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(fut)
    }

    /// RFC 4180 in reverse, for the round trip.
    fn parse_csv(text: &str) -> Vec<Vec<String>> {
        let mut records = Vec::new();
        let mut record = Vec::new();
        let mut field = String::new();
        let mut chars = text.chars().peekable();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => field.push(c),
                (false, '"') if field.is_empty() => quoted = true,
                (false, ',') => record.push(std::mem::take(&mut field)),
                (false, '\r') if chars.peek() == Some(&'\n') => {
                    chars.next();
                    record.push(std::mem::take(&mut field));
                    records.push(std::mem::take(&mut record));
                }
                (false, c) => {
                    assert!(c != '\r' && c != '\n', "bare line break outside quotes");
                    field.push(c);
                }
            }
        }
        assert!(
            !quoted && field.is_empty() && record.is_empty(),
            "ends with CRLF"
        );
        records
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        let field = |s: &str| {
            let mut out = String::new();
            push_csv_field(&mut out, s);
            out
        };
        assert_eq!(field("plain text"), "plain text");
        assert_eq!(field(""), "");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("\""), "\"\"\"\"");
        assert_eq!(field("one\ntwo"), "\"one\ntwo\"");
        assert_eq!(field("cr\r"), "\"cr\r\"");
        assert_eq!(field("héllo 😀"), "héllo 😀");
    }

    #[test]
    fn csv_round_trips_every_field() {
        let mut text = CSV_HEADER.to_string();
        let messages: Vec<ChatMessage> = TRICKY
            .iter()
            .enumerate()
            .map(|(i, c)| msg("general", i as u64 + 1, c))
            .collect();
        for m in &messages {
            csv_row(m, &mut text);
        }
        let records = parse_csv(&text);
        assert_eq!(
            records[0],
            [
                "room",
                "seq",
                "id",
                "user",
                "user_id",
                "content",
                "timestamp",
                "kind",
                "target",
                "reply_to",
                "edited_at",
                "deleted"
            ]
        );
        for (m, r) in messages.iter().zip(&records[1..]) {
            let want = [
                m.room.clone(),
                m.seq.to_string(),
                m.id.clone(),
                m.user_name.clone(),
                m.user_id.clone(),
                m.content.clone(),
                m.timestamp(),
                "message".to_string(),
                String::new(),
                String::new(),
                String::new(),
                "false".to_string(),
            ];
            assert_eq!(r, &want);
        }
        assert_eq!(records.len(), messages.len() + 1);
    }

    #[test]
    fn export_pages_through_the_room_in_seq_order() {
        let store = memory("general", 25);
        let mut out = Vec::new();
        let n = run(export_paged(
            &store,
            "general",
            0,
            Format::Ndjson,
            &mut out,
            10,
        ))
        .unwrap();
        assert_eq!(n, 25);
        let text = String::from_utf8(out).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .map(|l| {
                let m = parse_line(l).unwrap();
                assert_eq!(m.export_json(), l, "the history object, byte for byte");
                m.seq
            })
            .collect();
        assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
        assert!(store.limits.lock().unwrap().iter().all(|&l| l == 10));
        assert_eq!(store.limits.lock().unwrap().len(), 3);

        let mut out = Vec::new();
        let n = run(export_paged(
            &store,
            "general",
            20,
            Format::Csv,
            &mut out,
            10,
        ))
        .unwrap();
        assert_eq!(n, 5);
        let records = parse_csv(&String::from_utf8(out).unwrap());
        let seqs: Vec<&str> = records[1..].iter().map(|r| r[1].as_str()).collect();
        assert_eq!(seqs, ["21", "22", "23", "24", "25"]);

        let mut out = Vec::new();
        let n = run(export_paged(
            &store,
            "general",
            30,
            Format::Csv,
            &mut out,
            10,
        ))
        .unwrap();
        assert_eq!((n, out.as_slice()), (0, CSV_HEADER.as_bytes()));
        // An exact multiple of the page asks once more and finds nothing.
        let store = memory("general", 20);
        let n = run(export_paged(
            &store,
            "general",
            0,
            Format::Ndjson,
            &mut io::sink(),
            10,
        ));
        assert_eq!(n.unwrap(), 20);
        assert_eq!(store.limits.lock().unwrap().len(), 3);
    }

    #[test]
    fn a_closed_reader_is_a_write_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let store = memory("general", 3);
        let err = run(export(&store, "general", 0, Format::Ndjson, &mut Closed)).unwrap_err();
        assert!(matches!(err, ExportError::Write(e) if e.kind() == io::ErrorKind::BrokenPipe));
    }

    fn no_hook() -> impl FnMut(
        &BTreeMap<String, u64>,
    ) -> futures_util::future::LocalBoxFuture<
        'static,
        Result<(), crate::broker::RaiseError>,
    > {
        |_| Box::pin(async { Ok(()) })
    }

    #[test]
    fn import_reads_back_what_export_wrote() {
        let source = memory("general", 23);
        let mut file = Vec::new();
        run(export(&source, "general", 0, Format::Ndjson, &mut file)).unwrap();
        run(export(&source, "other", 0, Format::Ndjson, &mut file)).unwrap();
        file.extend_from_slice(b"\n  \r\n"); // blank lines are skipped

        let target = Memory::default();
        let mut done = Imported::default();
        let mut heads_seen = Vec::new();
        let mut hook = |heads: &BTreeMap<String, u64>| {
            heads_seen.push(heads.clone());
            Box::pin(async { Ok(()) }) as futures_util::future::LocalBoxFuture<'static, _>
        };
        run(import_batched(
            &target,
            file.as_slice(),
            &mut done,
            &mut hook,
            10,
        ))
        .unwrap();
        assert_eq!(done.messages, 24);
        assert_eq!(
            done.heads,
            BTreeMap::from([("general".into(), 23), ("other".into(), 1)])
        );
        assert_eq!(*target.batches.lock().unwrap(), [10, 10, 4]);
        assert_eq!(heads_seen.len(), 3);
        assert_eq!(*source.rows.lock().unwrap(), *target.rows.lock().unwrap());

        // Twice changes nothing.
        let mut again = Imported::default();
        run(import_batched(
            &target,
            file.as_slice(),
            &mut again,
            &mut no_hook(),
            10,
        ))
        .unwrap();
        assert_eq!(*source.rows.lock().unwrap(), *target.rows.lock().unwrap());
    }

    #[test]
    fn a_bad_line_stops_the_import_after_writing_what_came_before() {
        let good = |seq| msg("general", seq, "hi").export_json();
        let file = format!(
            "{}\n\n{}\n{}\n{{\"room\":\"general\",\"seq\":0}}\n{}\n",
            good(1),
            good(2),
            good(3),
            good(4)
        );
        let target = Memory::default();
        let mut done = Imported::default();
        let err = run(import_batched(
            &target,
            file.as_bytes(),
            &mut done,
            &mut no_hook(),
            2,
        ))
        .unwrap_err();
        assert!(
            matches!(&err, ImportError::Invalid { line: 5, .. }),
            "{err}"
        );
        assert_eq!(done.messages, 3, "lines 1-4 went in");
        assert_eq!(target.rows.lock().unwrap().len(), 3);

        let failing = Memory {
            fail_writes: true,
            ..Memory::default()
        };
        let mut done = Imported::default();
        let err = run(import(&failing, file.as_bytes(), &mut done, &mut no_hook())).unwrap_err();
        assert!(
            matches!(
                &err,
                ImportError::Store {
                    first: 1,
                    last: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(done.messages, 0);
    }

    #[test]
    fn lines_are_checked() {
        let ok = msg("general", 7, "a \"b\"\nc").export_json();
        let m = parse_line(&ok).unwrap();
        assert_eq!(m, msg("general", 7, "a \"b\"\nc"));
        let with = |key: &str, value: serde_json::Value| {
            let mut v: serde_json::Value = serde_json::from_str(&ok).unwrap();
            v[key] = value;
            parse_line(&v.to_string())
        };
        let without = |key: &str| {
            let mut v: serde_json::Value = serde_json::from_str(&ok).unwrap();
            v.as_object_mut().unwrap().remove(key);
            parse_line(&v.to_string())
        };
        for key in [
            "room",
            "seq",
            "id",
            "user",
            "user_id",
            "content",
            "timestamp",
        ] {
            let err = without(key).unwrap_err();
            assert!(err.contains(&format!("missing field `{key}`")), "{err}");
        }
        assert!(parse_line("{not json").is_err());
        assert!(parse_line("[]").is_err());
        assert!(with("room", "no spaces".into())
            .unwrap_err()
            .contains("room"));
        assert!(with("seq", 0.into()).unwrap_err().contains("at least 1"));
        assert!(with("seq", (-1).into()).is_err());
        assert!(with("seq", u64::MAX.into())
            .unwrap_err()
            .contains("too large"));
        assert!(with("timestamp", "yesterday".into())
            .unwrap_err()
            .contains("RFC 3339"));
        assert!(with("content", "a\0b".into()).unwrap_err().contains("NUL"));
        // Another offset is the same instant; `type` is ignored.
        let m = with("timestamp", "2026-11-23T11:00:00.130+01:00".into()).unwrap();
        assert_eq!(m.timestamp(), "2026-11-23T10:00:00.130Z");
        assert!(with("type", "message".into()).is_ok());
    }
}
