//! `confab export` and `confab import` (docs/operations.md, "Export and
//! import"), on SQLite and on Postgres (a fresh database per test), and the
//! Redis seq an import must raise in cluster mode.

mod common;

use common::cluster::{psql, Backend, ClusterEnv, Node, TestDb};
use common::*;
use confab::chat::ChatMessage;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Content that CSV and JSON both have to escape, and some that they don't.
const TRICKY: [&str; 9] = [
    "plain words",
    "commas, commas, and more, commas",
    "she said \"hi\", then left",
    "line one\nline two\nline three",
    "windows\r\nline\rbreaks",
    "unicode: héllo wörld — 中文, العربية, 😀👍🏽 👩‍👩‍👧",
    "\"",
    "back\\slash and a tab\there",
    "  leading and trailing spaces  ",
];

/// Sends every tricky content to `room` (and one message elsewhere) and
/// returns the room's history.
async fn fill(server: &Server, room: &str) -> Vec<Value> {
    let mut c = server.ws_user(&uid("alice"), "Alice, \"the\" first").await;
    c.join(room).await;
    c.join("elsewhere").await;
    for (i, content) in TRICKY.iter().enumerate() {
        c.send_msg(room, content, &format!("r{i}")).await;
    }
    c.send_msg("elsewhere", "not in the export", "x").await;
    c.close().await;
    let history = server.history_all(room, &token("reader", "reader")).await;
    assert_eq!(history.len(), TRICKY.len());
    history
}

/// Every line of an NDJSON export, parsed.
fn ndjson(text: &str) -> Vec<Value> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "ends with a newline"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// RFC 4180: records of fields; every record ends with CRLF.
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
                assert!(c != '\r' && c != '\n', "a bare line break outside quotes");
                assert!(c != '"', "a quote inside an unquoted field");
                field.push(c);
            }
        }
    }
    assert!(
        !quoted && field.is_empty() && record.is_empty(),
        "the last record ends with CRLF"
    );
    records
}

const COLUMNS: [&str; 7] = [
    "room",
    "seq",
    "id",
    "user",
    "user_id",
    "content",
    "timestamp",
];

/// The CSV header: the message object's fields, then what a log entry adds.
const CSV_HEADER: &str =
    "room,seq,id,user,user_id,content,timestamp,kind,target,reply_to,edited_at,deleted\r\n";

/// A plain message's CSV row: its object's fields, then kind `message`,
/// no target, reply or edit, not deleted.
fn as_row(m: &Value) -> Vec<String> {
    let mut row: Vec<String> = COLUMNS
        .iter()
        .map(|k| match &m[*k] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    row.extend(["message", "", "", "", "false"].map(String::from));
    row
}

async fn export_matches_history(backend: Backend) {
    let node = Node::start(backend);
    let history = fill(&node.server, "lobby").await;

    let lines = ndjson(&node.export("lobby", &["--format", "ndjson"]).stdout);
    assert_eq!(lines, history, "every field equals the history's");
    for m in &lines {
        assert_keys(m, &COLUMNS);
    }
    assert_eq!(seqs(&lines), (1..=TRICKY.len() as i64).collect::<Vec<_>>());
    let contents: Vec<&str> = lines
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, TRICKY);

    let since = ndjson(
        &node
            .export("lobby", &["--since", "4", "--format", "ndjson"])
            .stdout,
    );
    assert_eq!(since, history[4..], "--since 4: seq 5 on");
    let none = node.export("lobby", &["--since", "9", "--format", "ndjson"]);
    assert_eq!(none.stdout, "");
    let unknown = node.export("nobody-here", &["--format", "ndjson"]);
    assert_eq!(unknown.stdout, "");

    let csv = node.export("lobby", &["--format", "csv"]).stdout;
    assert!(csv.starts_with(CSV_HEADER));
    let records = parse_csv(&csv);
    assert_eq!(records[0].join(",") + "\r\n", CSV_HEADER);
    let rows: Vec<Vec<String>> = history.iter().map(as_row).collect();
    assert_eq!(records[1..], rows, "CSV round-trips every field");
    let csv_since = parse_csv(
        &node
            .export("lobby", &["--format", "csv", "--since", "7"])
            .stdout,
    );
    assert_eq!(csv_since[1..], rows[7..]);
    let header_only = node.export("nobody-here", &["--format", "csv"]).stdout;
    assert_eq!(header_only, CSV_HEADER);

    for bad in ["no spaces", "", "x/y", &"a".repeat(65)] {
        let out = node.cli(&["export", "--room", bad, "--format", "ndjson"]);
        assert_eq!(out.code(), Some(1), "room {bad:?}: {out:?}");
        assert!(out.stderr.contains("--room"), "{}", out.stderr);
        assert!(out.stderr.contains("room names are"), "{}", out.stderr);
        assert!(out.stdout.is_empty());
    }
    let out = node.cli(&["export", "--room", "lobby", "--format", "xml"]);
    assert_ne!(out.code(), Some(0), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_export_matches_history_in_ndjson_and_csv() {
    export_matches_history(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_export_matches_history_in_ndjson_and_csv() {
    export_matches_history(Backend::Postgres).await;
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn import_round_trips(backend: Backend) {
    let source = Node::start(backend);
    let lobby = fill(&source.server, "lobby").await;
    let other = source
        .server
        .history_all("elsewhere", &token("r", "r"))
        .await;
    let mut dump = source.export("lobby", &["--format", "ndjson"]).stdout;
    dump.push('\n'); // blank lines are skipped
    dump.push_str(&source.export("elsewhere", &["--format", "ndjson"]).stdout);
    let file = write_file(source.server.dir(), "dump.ndjson", &dump);

    // Into a fresh data dir / database, with the server stopped...
    let mut target = Node::start(backend);
    target.server.kill();
    let out = target.import(&file);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let summary = format!(
        "imported {} messages into 2 rooms from {}",
        TRICKY.len() + 1,
        file.display()
    );
    assert!(out.stderr.contains(&summary), "{}", out.stderr);
    target.server.restart();
    let reader = token("r", "r");
    assert_eq!(target.server.history_all("lobby", &reader).await, lobby);
    assert_eq!(target.server.history_all("elsewhere", &reader).await, other);

    // ...and again while it runs (into rooms not in use): nothing changes.
    let out = target.import(&file);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(target.server.history_all("lobby", &reader).await, lobby);
    assert_eq!(target.server.history_all("elsewhere", &reader).await, other);
    let exported = target.export("lobby", &["--format", "ndjson"]).stdout;
    assert_eq!(ndjson(&exported), lobby, "the same count too");

    // New messages continue after the imported ones.
    let mut c = target.server.ws_user(&uid("bob"), "bob").await;
    let joined = c
        .join_with(json!({"type":"join","room":"lobby","history":0}))
        .await;
    assert_eq!(joined["last_seq"], TRICKY.len());
    let (ack, _) = c.send_and_echo("lobby", "after the import", "a1").await;
    assert_eq!(ack["seq"], TRICKY.len() + 1, "{ack}");
    c.join_with(json!({"type":"join","room":"elsewhere","history":0}))
        .await;
    let (ack, _) = c.send_and_echo("elsewhere", "after the import", "a2").await;
    assert_eq!(ack["seq"], 2, "{ack}");
    c.close().await;
    let after = target.server.history_all("lobby", &reader).await;
    assert_eq!(after[..TRICKY.len()], lobby);
    assert_eq!(after.len(), TRICKY.len() + 1);
}

/// Edits, deletes and reactions go through export and import: the imported
/// room shows the same current state, and a deleted message's text is in
/// neither the export nor the target.
async fn changes_round_trip(backend: Backend) {
    let source = Node::start(backend);
    let mut c = source.server.ws_user(&uid("ann"), "ann").await;
    c.join("lobby").await;
    let (first, _) = c.send_and_echo("lobby", "first draft", "m1").await;
    let (gone, _) = c.send_and_echo("lobby", "a secret to delete", "m2").await;
    let changes = [
        json!({"type":"edit","room":"lobby","id":first["id"],"content":"final text","ref":"c1"}),
        json!({"type":"react","room":"lobby","id":first["id"],"emoji":"👍","ref":"c2"}),
        json!({"type":"react","room":"lobby","id":first["id"],"emoji":":tada:","ref":"c3"}),
        json!({"type":"unreact","room":"lobby","id":first["id"],"emoji":":tada:","ref":"c4"}),
        json!({"type":"edit","room":"lobby","id":gone["id"],"content":"another secret","ref":"c5"}),
        json!({"type":"delete","room":"lobby","id":gone["id"],"ref":"c6"}),
    ];
    for change in changes {
        let r = change["ref"].clone();
        c.send_json(change).await;
        let ack = c.recv_type("ack").await;
        assert_eq!(ack["ref"], r, "{ack}");
    }
    let mut reply = json!({"type":"send","room":"lobby","content":"a reply","ref":"m3"});
    reply["reply_to"] = first["id"].clone();
    c.send_json(reply).await;
    assert_eq!(c.recv_type("ack").await["seq"], 9);
    let ann = c.user_id();
    c.close().await;
    let reader = token("r", "r");
    let history = source.server.history_all("lobby", &reader).await;
    assert_eq!(history.len(), 3, "messages only: {history:?}");
    assert_eq!(history[0]["content"], "final text");
    assert_eq!(
        history[0]["reactions"],
        json!([{"emoji":"👍","count":1,"users":[ann]}])
    );
    assert_eq!(history[1]["deleted"], true);

    let dump = source.export("lobby", &["--format", "ndjson"]).stdout;
    assert!(
        !dump.contains("secret"),
        "deleted text is not exported: {dump}"
    );
    let kinds: Vec<String> = ndjson(&dump)
        .iter()
        .map(|l| l["kind"].as_str().unwrap_or("message").to_string())
        .collect();
    assert_eq!(
        kinds,
        ["message", "message", "edit", "react", "react", "unreact", "edit", "delete", "message"]
    );
    let csv = source.export("lobby", &["--format", "csv"]).stdout;
    assert!(!csv.contains("secret"));
    let file = write_file(source.server.dir(), "changes.ndjson", &dump);

    let mut target = Node::start(backend);
    target.server.kill();
    let out = target.import(&file);
    assert_eq!(out.code(), Some(0), "{out:?}");
    target.server.restart();
    assert_eq!(target.server.history_all("lobby", &reader).await, history);
    assert_eq!(target.export("lobby", &["--format", "ndjson"]).stdout, dump);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_export_and_import_carry_edits_deletes_and_reactions() {
    changes_round_trip(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_export_and_import_carry_edits_deletes_and_reactions() {
    changes_round_trip(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_import_restores_history_once_and_rooms_continue() {
    import_round_trips(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_import_restores_history_once_and_rooms_continue() {
    import_round_trips(Backend::Postgres).await;
}

fn line(room: &str, seq: u64, content: &str) -> String {
    json!({
        "room": room, "seq": seq, "id": format!("id-{seq}"), "user": "Ann",
        "user_id": "ann", "content": content, "timestamp": "2026-11-23T10:00:00.123Z"
    })
    .to_string()
}

async fn bad_lines_stop_the_import(backend: Backend) {
    let node = Node::start(backend);
    let good = format!("{}\n\n{}\n", line("imp", 1, "one"), line("imp", 2, "two"));
    let mut no_seq: Value = serde_json::from_str(&line("imp", 3, "x")).unwrap();
    no_seq.as_object_mut().unwrap().remove("seq");
    let cases = [
        ("{\"room\": \"imp\", \"seq\": ".to_string(), "EOF"),
        (no_seq.to_string(), "missing field `seq`"),
        (line("bad room", 3, "x"), "room names are"),
        (line("imp", 0, "x"), "at least 1"),
        (
            line("imp", 3, "x").replace("2026-11-23T10:00:00.123Z", "noon"),
            "RFC 3339",
        ),
        ("[1, 2, 3]".to_string(), "line 4"),
    ];
    for (i, (bad, says)) in cases.iter().enumerate() {
        let text = format!("{good}{bad}\n{}\n", line("imp", 4, "never"));
        let file = write_file(node.server.dir(), &format!("bad{i}.ndjson"), &text);
        let out = node.import(&file);
        assert_eq!(out.code(), Some(1), "{bad}: {out:?}");
        assert!(out.stderr.contains("line 4"), "{bad}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{bad}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("the lines before it were imported and stay (2 messages into 1 room)"),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    let history = node.server.history_all("imp", &token("r", "r")).await;
    assert_eq!(seqs(&history), [1, 2], "lines before the bad one stay");
    assert_eq!(history[1]["content"], "two");

    let missing = node.server.dir().join("no-such-file.ndjson");
    let out = node.import(&missing);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("no-such-file.ndjson"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_bad_line_stops_the_import_naming_it() {
    bad_lines_stop_the_import(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_bad_line_stops_the_import_naming_it() {
    bad_lines_stop_the_import(Backend::Postgres).await;
}

// ------------------------------------------------------------ constant memory

const BIG_ROOM: u64 = 200_000;
/// 200,000 of these is about 60 MB of content alone: an export that collected
/// the room would go well over the bound.
const FILLER: &str = "the quick brown fox jumps over the lazy dog, \"again\" and again; ";

/// A config for `backend` in `dir`, without a server.
fn config_file(dir: &Path, db: Option<&TestDb>) -> PathBuf {
    let mut config = common::Config::defaults(dir);
    if let Some(db) = db {
        config.set("storage", "url", &toml_str(&db.url()));
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, config.render()).unwrap();
    path
}

/// Writes `n` messages into `room` straight through the store.
async fn insert_directly(config: &Path, room: &str, n: u64) {
    let (config, _) = confab::config::Config::load(Some(config)).expect("config");
    let (store, _) = confab::store::open_with_pipeline(&config)
        .await
        .expect("store");
    let content = FILLER.repeat(4);
    let mut seq = 0;
    while seq < n {
        let batch: Vec<Arc<ChatMessage>> = (seq + 1..=(seq + 10_000).min(n))
            .map(|s| {
                Arc::new(ChatMessage {
                    room: room.into(),
                    seq: s,
                    id: format!("0190-{s:012}"),
                    user_id: format!("guest:{}", s % 7),
                    user_name: format!("User {}", s % 7),
                    content: format!("{s}: {content}"),
                    timestamp_ms: 1_795_428_000_000 + s as i64,
                    client_ref: None,
                    ..ChatMessage::default()
                })
            })
            .collect();
        seq += batch.len() as u64;
        store.insert_batch(batch).await.expect("insert");
    }
}

/// Runs `confab export` and returns (peak RSS in KiB, lines, stderr), checking
/// every line's seq follows the one before.
fn export_peak_rss(config: &Path, room: &str) -> (u64, u64, String) {
    let args = ["export", "--room", room, "--format", "ndjson", "--config"];
    let gnu_time = Path::new("/usr/bin/time").exists();
    let mut cmd = if gnu_time {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-v").arg(bin());
        c
    } else {
        Command::new(bin())
    };
    cmd.args(args)
        .arg(config)
        .env_remove("CONFAB_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn export");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = 0u64;
        let mut buf = Vec::new();
        let mut reader = BufReader::with_capacity(1 << 16, stdout);
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).unwrap() == 0 {
                break;
            }
            lines += 1;
            let text = std::str::from_utf8(&buf).unwrap();
            let at = text.find(",\"seq\":").expect("a seq") + 7;
            let digits: String = text[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            assert_eq!(digits.parse::<u64>().unwrap(), lines, "seq order");
        }
        lines
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let pid = child.id();
    let mut polled = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if !gnu_time {
            polled = polled.max(vm_hwm_kib(pid).unwrap_or(0));
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("export did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let lines = reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    assert!(status.success(), "export failed: {stderr}");
    let peak = if gnu_time {
        stderr
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Maximum resident set size (kbytes): ")
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no maximum RSS from /usr/bin/time -v:\n{stderr}"))
    } else {
        polled
    };
    (peak, lines, stderr)
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn export_runs_in_constant_memory(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = matches!(backend, Backend::Postgres).then(TestDb::create);
    let config = config_file(dir.path(), db.as_ref());
    let started = Instant::now();
    insert_directly(&config, "small", 10).await;
    insert_directly(&config, "big", BIG_ROOM).await;
    let inserted = started.elapsed();

    let (baseline, lines, _) = export_peak_rss(&config, "small");
    assert_eq!(lines, 10);
    let started = Instant::now();
    let (peak, lines, _) = export_peak_rss(&config, "big");
    let exported = started.elapsed();
    assert_eq!(lines, BIG_ROOM, "every message, in seq order");
    eprintln!(
        "{backend:?}: inserted {BIG_ROOM} in {inserted:?}, exported in {exported:?}; \
         peak RSS {peak} KiB (10-message export: {baseline} KiB)"
    );
    assert!(
        peak < 64 * 1024,
        "exporting {BIG_ROOM} messages peaked at {peak} KiB (a 10-message export: {baseline} KiB)"
    );
    assert!(
        peak < baseline + 24 * 1024,
        "exporting {BIG_ROOM} messages peaked at {peak} KiB, a 10-message export at {baseline} KiB"
    );

    // A reader that goes away ends the export quietly.
    let mut child = Command::new(bin())
        .args(["export", "--room", "big", "--format", "csv", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut header = String::new();
    stdout.read_line(&mut header).unwrap();
    assert_eq!(header, CSV_HEADER);
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a closed pipe: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    drop(db);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_export_of_a_big_room_runs_in_constant_memory() {
    export_runs_in_constant_memory(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_export_of_a_big_room_runs_in_constant_memory() {
    export_runs_in_constant_memory(Backend::Postgres).await;
}

// ---------------------------------------------------------------- cluster mode

fn redis_get(key: &str) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "GET", key])
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// In cluster mode a room's seq lives in Redis (`ns:seq:{room}`): import
/// raises it, or the next send would take an imported seq and be dropped by
/// Postgres's `ON CONFLICT DO NOTHING`.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_import_raises_the_rooms_redis_seq() {
    let env = ClusterEnv::new();
    let mut first = env.instance();
    let mut c = first.ws_user(&uid("u"), "u").await;
    c.join("used").await;
    let ack = c.send_msg("used", "live before the import", "l1").await;
    assert_eq!(ack["seq"], 1);
    c.close().await;
    let key = |room: &str| format!("{}:seq:{room}", env.ns.0);
    assert_eq!(redis_get(&key("used")), "1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while psql(&env.db.name, "SELECT count(*) FROM messages") != "1" {
        assert!(
            Instant::now() < deadline,
            "the live message reached Postgres"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    first.kill();

    // "used" has a Redis seq of 1; "unused" has none (seeded on first send).
    let mut text = String::new();
    for seq in 1..=10 {
        text.push_str(&line("used", seq, &format!("imported {seq}")));
        text.push('\n');
    }
    for seq in 1..=5 {
        text.push_str(&line("unused", seq, &format!("imported {seq}")));
        text.push('\n');
    }
    let file = write_file(first.dir(), "dump.ndjson", &text);
    let config = first.config_path.display().to_string();
    let import = |file: &Path| {
        run_cli(
            &["import", &file.display().to_string(), "--config", &config],
            &[],
            first.dir(),
        )
    };
    let out = import(&file);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.contains("imported 15 messages into 2 rooms"),
        "{}",
        out.stderr
    );
    assert_eq!(redis_get(&key("used")), "10", "raised to the imported max");
    assert_eq!(
        redis_get(&key("unused")),
        "",
        "a missing seq is left to seeding"
    );
    assert_eq!(import(&file).code(), Some(0), "twice is fine");
    assert_eq!(redis_get(&key("used")), "10");

    let second = env.instance();
    let mut c = second.ws_user(&uid("v"), "v").await;
    let joined = c
        .join_with(json!({"type":"join","room":"used","history":0}))
        .await;
    assert_eq!(joined["last_seq"], 10, "{joined}");
    assert_eq!(c.send_and_echo("used", "after", "a1").await.0["seq"], 11);
    c.join_with(json!({"type":"join","room":"unused","history":0}))
        .await;
    assert_eq!(c.send_and_echo("unused", "after", "a2").await.0["seq"], 6);
    c.close().await;
    let reader = token("r", "r");
    let deadline = Instant::now() + Duration::from_secs(10);
    let history = loop {
        let h = second.history_all("used", &reader).await;
        if h.len() == 11 || Instant::now() > deadline {
            break h;
        }
        sleep_ms(50).await;
    };
    assert_eq!(seqs(&history), (1..=11).collect::<Vec<_>>());
    assert_eq!(
        history[0]["content"], "live before the import",
        "kept as it was"
    );
    assert_eq!(history[1]["content"], "imported 2");
    assert_eq!(history[10]["content"], "after");
}

/// An import into a room that is open on a running embedded server hands the
/// room seqs it already handed out: its next sends must be refused
/// (`unavailable`), never acknowledged and then dropped.
async fn import_into_an_open_room_never_loses_an_ack(backend: Backend) {
    let node = Node::start(backend);
    let mut c = node.server.ws_user(&uid("ann"), "ann").await;
    c.join("open").await;
    let ack = c.send_msg("open", "before the import", "o1").await;
    assert_eq!(ack["seq"], 1, "{ack}");
    let lines: Vec<String> = (1..=5).map(|seq| line("open", seq, "imported")).collect();
    let file = write_file(node.server.dir(), "open.ndjson", &lines.join("\n"));
    let out = node.import(&file);
    assert_eq!(out.code(), Some(0), "{out:?}");
    // The room still numbers from 1: seq 2 now holds an imported message.
    c.send_json(json!({"type":"send","room":"open","content":"after","ref":"o2"}))
        .await;
    let answer = loop {
        let frame = c.recv_json().await;
        if frame["type"] == "ack" || frame["type"] == "error" {
            break frame;
        }
    };
    assert_eq!(answer["type"], "error", "must not be acked: {answer}");
    assert_eq!(answer["code"], "unavailable", "{answer}");
    // Whatever history holds at seq 2 is the imported message: nothing acked was lost.
    let history = node.server.history_all("open", &token("r", "r")).await;
    assert!(
        history.iter().all(|m| m["content"] != "after"),
        "a refused send is not stored: {history:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_import_into_an_open_room_never_loses_an_ack() {
    import_into_an_open_room_never_loses_an_ack(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_import_into_an_open_room_never_loses_an_ack() {
    import_into_an_open_room_never_loses_an_ack(Backend::Postgres).await;
}
