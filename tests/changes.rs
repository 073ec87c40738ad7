//! Edits, deletes, reactions and replies as sequenced room events
//! (docs/protocol.md, section 7a), over real WebSockets and real HTTP, on
//! embedded SQLite, on Postgres (one instance) and on a two-instance cluster.

mod common;

use common::cluster::{Backend, ClusterEnv, Node, TestDb};
use common::*;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Frame types that carry a room seq (everything a replay can contain).
const EVENT_TYPES: [&str; 4] = ["message", "edited", "deleted", "reaction"];

/// Keys of a plain live `message` frame.
const MESSAGE_KEYS: [&str; 8] = [
    "type",
    "room",
    "seq",
    "id",
    "user",
    "user_id",
    "content",
    "timestamp",
];
const ACK_KEYS: [&str; 6] = ["type", "ref", "room", "seq", "id", "timestamp"];
const UNCHANGED_ACK_KEYS: [&str; 7] =
    ["type", "ref", "room", "seq", "id", "timestamp", "unchanged"];
const EDITED_KEYS: [&str; 9] = [
    "type",
    "room",
    "seq",
    "id",
    "target",
    "user",
    "user_id",
    "content",
    "timestamp",
];
const DELETED_KEYS: [&str; 8] = [
    "type",
    "room",
    "seq",
    "id",
    "target",
    "user",
    "user_id",
    "timestamp",
];
const REACTION_KEYS: [&str; 10] = [
    "type",
    "room",
    "seq",
    "id",
    "target",
    "user",
    "user_id",
    "emoji",
    "added",
    "timestamp",
];
/// A history object of a message never edited, replied or deleted.
/// (`reactions` appears only on a message that has some: a plain message's
/// history object is its live frame without `type`, as the contract says.)
const HISTORY_KEYS: [&str; 7] = [
    "room",
    "seq",
    "id",
    "user",
    "user_id",
    "content",
    "timestamp",
];
const TOMBSTONE_KEYS: [&str; 8] = [
    "room",
    "seq",
    "id",
    "user",
    "user_id",
    "content",
    "timestamp",
    "deleted",
];
const SEED_KEYS: [&str; 7] = [
    "client_id",
    "room_id",
    "message",
    "timestamp",
    "seq",
    "id",
    "user",
];

static REFS: AtomicU64 = AtomicU64::new(1);

/// A ref never used before in this test process.
fn fresh_ref() -> String {
    format!("c-{}", REFS.fetch_add(1, Ordering::Relaxed))
}

fn send_f(room: &str, content: &str) -> Value {
    json!({"type":"send","room":room,"content":content,"ref":fresh_ref()})
}
fn reply_f(room: &str, content: &str, to: &str) -> Value {
    json!({"type":"send","room":room,"content":content,"reply_to":to,"ref":fresh_ref()})
}
fn edit_f(room: &str, id: &str, content: &str) -> Value {
    json!({"type":"edit","room":room,"id":id,"content":content,"ref":fresh_ref()})
}
fn delete_f(room: &str, id: &str) -> Value {
    json!({"type":"delete","room":room,"id":id,"ref":fresh_ref()})
}
fn react_f(room: &str, id: &str, emoji: &str) -> Value {
    json!({"type":"react","room":room,"id":id,"emoji":emoji,"ref":fresh_ref()})
}
fn unreact_f(room: &str, id: &str, emoji: &str) -> Value {
    json!({"type":"unreact","room":room,"id":id,"emoji":emoji,"ref":fresh_ref()})
}

/// A token with the moderator claim `"mod": true`.
fn mod_token(sub: &str, name: &str) -> String {
    sign_claims(
        &json!({"sub": sub, "name": name, "exp": now_secs() + 3600, "mod": true}),
        SECRET,
    )
}

/// A token with a `roles` claim.
fn roles_token(sub: &str, name: &str, roles: &[&str]) -> String {
    sign_claims(
        &json!({"sub": sub, "name": name, "exp": now_secs() + 3600, "roles": roles}),
        SECRET,
    )
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
        .to_string()
}

fn seq_of(v: &Value) -> i64 {
    v["seq"]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer seq in {v}"))
}

fn is_event(v: &Value) -> bool {
    EVENT_TYPES.contains(&v["type"].as_str().unwrap_or(""))
}

fn assert_uuid_v7(v: &Value) {
    let id = uuid::Uuid::parse_str(v.as_str().unwrap_or_else(|| panic!("id string: {v}")))
        .unwrap_or_else(|e| panic!("{v} is not a uuid: {e}"));
    assert_eq!(id.get_version_num(), 7, "{v} must be a UUIDv7");
}

/// None of `frames` (serialized) contains any of `needles`.
fn assert_absent(frames: &[Value], needles: &[&str], what: &str) {
    for f in frames {
        let text = f.to_string();
        for n in needles {
            assert!(
                !text.contains(n),
                "{what}: deleted content {n:?} must be gone, found in {f}"
            );
        }
    }
}

/// One `/ws` connection with a buffer: frames read while waiting for an
/// answer (ack/error of a ref, joined, history) are kept in order for
/// [`Peer::event`]. Presence and typing frames are dropped.
struct Peer {
    c: Client,
    buf: VecDeque<Value>,
    id: String,
}

impl Peer {
    async fn new(server: &Server, tok: &str) -> Peer {
        let c = server.ws(tok).await;
        let id = c.user_id();
        Peer {
            c,
            buf: VecDeque::new(),
            id,
        }
    }

    /// A connection of a fresh user named `name`.
    async fn user(server: &Server, name: &str) -> Peer {
        Peer::new(server, &token(&uid(name), name)).await
    }

    async fn read(&mut self) -> Value {
        loop {
            let v = self.c.recv_json().await;
            if v["type"] != "presence" && v["type"] != "typing" {
                return v;
            }
        }
    }

    async fn next(&mut self) -> Value {
        match self.buf.pop_front() {
            Some(v) => v,
            None => self.read().await,
        }
    }

    /// Join with `history: 0` (no replay).
    async fn join(&mut self, room: &str) -> Value {
        self.join_with(json!({"type":"join","room":room,"history":0}))
            .await
    }

    async fn join_with(&mut self, frame: Value) -> Value {
        let room = frame["room"].clone();
        self.c.send_json(frame.clone()).await;
        loop {
            let v = self.read().await;
            if v["type"] == "joined" && v["room"] == room {
                return v;
            }
            assert_ne!(v["type"], "error", "{frame} refused: {v}");
            self.buf.push_back(v);
        }
    }

    /// Sends `frame` (which carries a `ref`) and returns the ack or error
    /// that carries that ref.
    async fn ask(&mut self, frame: Value) -> Value {
        let r = frame["ref"].clone();
        assert!(r.is_string(), "ask needs a ref: {frame}");
        self.c.send_json(frame).await;
        loop {
            let v = self.read().await;
            if (v["type"] == "ack" || v["type"] == "error") && v["ref"] == r {
                return v;
            }
            self.buf.push_back(v);
        }
    }

    /// `ask`, asserting an ack (without `unchanged`).
    async fn ok(&mut self, frame: Value) -> Value {
        let f = frame.clone();
        let v = self.ask(frame).await;
        assert_eq!(v["type"], "ack", "{f} must be acked, got {v}");
        assert!(
            v.get("unchanged").is_none() || v["unchanged"] == false,
            "{f} must change something, got {v}"
        );
        v
    }

    /// `ask`, asserting an ack with `"unchanged":true`.
    async fn unchanged(&mut self, frame: Value) -> Value {
        let f = frame.clone();
        let v = self.ask(frame).await;
        assert_eq!(v["type"], "ack", "{f} must be acked unchanged, got {v}");
        assert_eq!(v["unchanged"], true, "{f} must be acked unchanged, got {v}");
        v
    }

    /// `ask`, asserting an error `code` that echoes ref and room.
    /// An edit, a delete, a react, an unreact and a reply for message `id`
    /// are each refused with `code`.
    async fn refuses_changes(&mut self, room: &str, id: &str, code: &str) {
        let frames = [
            edit_f(room, id, "x"),
            delete_f(room, id),
            react_f(room, id, "👍"),
            unreact_f(room, id, "👍"),
            reply_f(room, "x", id),
        ];
        for f in frames {
            self.refused(f, code).await;
        }
    }

    async fn refused(&mut self, frame: Value, code: &str) -> Value {
        let f = frame.clone();
        let v = self.ask(frame).await;
        assert_eq!(
            (&v["type"], &v["code"]),
            (&json!("error"), &json!(code)),
            "{f} must be refused with {code}, got {v}"
        );
        assert!(v["message"].is_string(), "error needs a message: {v}");
        if f["room"].is_string() {
            assert_eq!(v["room"], f["room"], "error must echo the room: {v}");
        }
        v
    }

    async fn send(&mut self, room: &str, content: &str) -> Value {
        self.ok(send_f(room, content)).await
    }
    async fn reply(&mut self, room: &str, content: &str, to: &str) -> Value {
        self.ok(reply_f(room, content, to)).await
    }
    async fn edit(&mut self, room: &str, id: &str, content: &str) -> Value {
        self.ok(edit_f(room, id, content)).await
    }
    async fn delete(&mut self, room: &str, id: &str) -> Value {
        self.ok(delete_f(room, id)).await
    }
    async fn react(&mut self, room: &str, id: &str, emoji: &str) -> Value {
        self.ok(react_f(room, id, emoji)).await
    }
    async fn unreact(&mut self, room: &str, id: &str, emoji: &str) -> Value {
        self.ok(unreact_f(room, id, emoji)).await
    }

    /// The next frame with a seq (message or change event); acks are
    /// skipped, anything else fails.
    async fn event(&mut self) -> Value {
        loop {
            let v = self.next().await;
            if is_event(&v) {
                return v;
            }
            if v["type"] == "ack" {
                continue;
            }
            panic!("expected a message or change event, got {v}");
        }
    }

    async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.event().await);
        }
        out
    }

    /// Skips events up to the one with `seq` and returns it.
    async fn event_at(&mut self, seq: i64) -> Value {
        loop {
            let v = self.event().await;
            let got = seq_of(&v);
            if got == seq {
                return v;
            }
            assert!(got < seq, "waiting for seq {seq}, got the later {v}");
        }
    }

    /// No event with a seq above `seq` is waiting or arrives within `ms`.
    async fn quiet_after(&mut self, seq: i64, ms: u64) {
        let check = |v: &Value| {
            if is_event(v) && seq_of(v) > seq {
                panic!("expected no event after seq {seq}, got {v}");
            }
        };
        while let Some(v) = self.buf.pop_front() {
            check(&v);
        }
        let deadline = Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.c.next_frame(left).await {
                None => return,
                Some(Frame::Json(v)) => check(&v),
                Some(Frame::Closed(c)) => panic!("closed while expecting quiet: {c:?}"),
                Some(_) => {}
            }
        }
    }

    /// The WS `history` frame's answer for the newest page.
    async fn ws_history(&mut self, room: &str) -> Value {
        self.c
            .send_json(json!({"type":"history","room":room,"limit":100}))
            .await;
        loop {
            let v = self.read().await;
            if v["type"] == "history" && v["room"] == room {
                return v;
            }
            assert_ne!(v["type"], "error", "history refused: {v}");
            self.buf.push_back(v);
        }
    }
}

/// A fresh user joins `room` with `extra` join fields (`since`, `history`);
/// returns `joined` and the `want` replayed frames, and checks nothing more
/// with a seq up to `last_seq` follows.
async fn replay(server: &Server, room: &str, extra: Value, want: usize) -> (Value, Vec<Value>) {
    let mut p = Peer::user(server, "replayer").await;
    let mut frame = json!({"type":"join","room":room});
    for (k, v) in extra.as_object().unwrap() {
        frame[k] = v.clone();
    }
    let joined = p.join_with(frame).await;
    let frames = p.events(want).await;
    p.quiet_after(0, 200).await;
    p.c.close().await;
    (joined, frames)
}

fn reader() -> String {
    token(&uid("reader"), "reader")
}

/// Polls REST history of `room` on `server` until `pred` holds (cluster
/// mode persists asynchronously); returns the history.
async fn history_until(
    server: &Server,
    room: &str,
    within: Duration,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let tok = reader();
    let deadline = Instant::now() + within;
    loop {
        let resp = server.history(room, "limit=100", &tok).await;
        let last = if resp.status == 200 {
            let msgs = resp.json()["messages"].as_array().unwrap().clone();
            if pred(&msgs) {
                return msgs;
            }
            Value::Array(msgs)
        } else {
            json!(resp.text())
        };
        assert!(
            Instant::now() < deadline,
            "history of {room} did not reach the expected state within {within:?}; last: {last}"
        );
        sleep_ms(100).await;
    }
}

/// Every row of every table of the SQLite database, as text.
fn sqlite_dump(path: &std::path::Path) -> String {
    use diesel::connection::SimpleConnection;
    use diesel::sql_types::Text;
    use diesel::{Connection, QueryableByName, RunQueryDsl, SqliteConnection};
    #[derive(QueryableByName)]
    struct T {
        #[diesel(sql_type = Text)]
        t: String,
    }
    let mut conn =
        SqliteConnection::establish(path.to_str().expect("utf-8 path")).expect("open db");
    conn.batch_execute("PRAGMA busy_timeout = 10000").unwrap();
    let tables: Vec<T> =
        diesel::sql_query("SELECT name AS t FROM sqlite_master WHERE type = 'table'")
            .load(&mut conn)
            .expect("tables");
    let mut out = String::new();
    for table in tables {
        let cols: Vec<T> = diesel::sql_query(format!(
            "SELECT name AS t FROM pragma_table_info('{}')",
            table.t
        ))
        .load(&mut conn)
        .expect("columns");
        if cols.is_empty() {
            continue;
        }
        let row = cols
            .iter()
            .map(|c| format!("COALESCE(CAST(\"{}\" AS TEXT), '')", c.t))
            .collect::<Vec<_>>()
            .join(" || char(9) || ");
        let rows: Vec<T> = diesel::sql_query(format!(
            "SELECT COALESCE(group_concat({row}, char(10)), '') AS t FROM \"{}\"",
            table.t
        ))
        .load(&mut conn)
        .unwrap_or_else(|e| panic!("dump {}: {e}", table.t));
        out.push_str(&format!("== {}\n", table.t));
        for r in rows {
            out.push_str(&r.t);
            out.push('\n');
        }
    }
    out
}

/// Every row of every table of the Postgres database, as text.
fn pg_dump(db: &TestDb) -> String {
    let tables =
        db.query("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1");
    let mut out = String::new();
    for t in tables.lines().filter(|t| !t.is_empty()) {
        out.push_str(&format!("== {t}\n"));
        out.push_str(&db.query(&format!(
            "SELECT coalesce(string_agg(x::text, E'\\n'), '') FROM \"{t}\" x"
        )));
        out.push('\n');
    }
    out
}

/// The database's contents as text, to look for erased words.
fn dump(node: &Node) -> String {
    match &node.db {
        Some(db) => pg_dump(db),
        None => sqlite_dump(&node.server.dir().join("confab.db")),
    }
}

/// A reaction summary as history shows it.
fn reaction<S: AsRef<str>>(emoji: &str, count: usize, users: &[S]) -> Value {
    let users: Vec<&str> = users.iter().map(|u| u.as_ref()).collect();
    json!({"emoji": emoji, "count": count, "users": users})
}

// ---------------------------------------------------------------------------
// Edits
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_by_the_author_is_an_event_with_its_own_seq() {
    let server = Server::start();
    let mut alice = Peer::user(&server, "alice").await;
    let mut bob = Peer::user(&server, "bob").await;
    let alice_id = alice.id.clone();
    alice.join("ed").await;
    bob.join("ed").await;

    let m1 = alice.send("ed", "hello wrold").await;
    assert_eq!(m1["seq"], 1, "{m1}");
    let m1_id = s(&m1["id"]);

    let first = alice.edit("ed", &m1_id, "hello world").await;
    assert_keys(&first, &ACK_KEYS);
    assert_eq!(
        (&first["seq"], &first["room"]),
        (&json!(2), &json!("ed")),
        "{first}"
    );
    assert_ne!(first["id"], m1["id"], "an edit has its own id: {first}");
    assert_uuid_v7(&first["id"]);
    assert_timestamp(&first);

    for p in [&mut bob, &mut alice] {
        let m = p.event_at(1).await;
        assert_eq!(m["type"], "message", "{m}");
        let e = p.event_at(2).await;
        assert_keys(&e, &EDITED_KEYS);
        assert_eq!(e["type"], "edited", "{e}");
        assert_eq!(e["room"], "ed");
        assert_eq!(e["id"], first["id"], "{e}");
        assert_eq!(e["timestamp"], first["timestamp"], "{e}");
        assert_eq!(e["target"], m1["id"], "{e}");
        assert_eq!(e["user"], "alice");
        assert_eq!(e["user_id"], alice_id.as_str());
        assert_eq!(e["content"], "hello world");
    }

    // A second edit: the next seq, and history shows the latest state.
    let second = alice.edit("ed", &m1_id, "hello, world").await;
    assert_eq!(second["seq"], 3, "{second}");
    let e = bob.event_at(3).await;
    assert_eq!(
        (&e["type"], &e["content"]),
        (&json!("edited"), &json!("hello, world"))
    );

    let history = server.history_all("ed", &reader()).await;
    assert_eq!(history.len(), 1, "history holds messages only: {history:?}");
    let h = &history[0];
    assert_keys(h, &[&HISTORY_KEYS[..], &["edited_at"]].concat());
    assert_eq!(h["seq"], 1);
    assert_eq!(h["id"], m1["id"]);
    assert_eq!(
        h["timestamp"], m1["timestamp"],
        "the original timestamp stays"
    );
    assert_eq!(h["content"], "hello, world");
    assert_eq!(
        h["edited_at"], second["timestamp"],
        "edited_at = the latest edit's timestamp"
    );
    assert_eq!(h["user_id"], alice_id.as_str());
    assert_eq!(h["reactions"], Value::Null);

    // Nothing else arrived in between, and nothing more follows.
    bob.quiet_after(3, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_refusals_forbidden_not_found_not_joined_invalid_frame() {
    let server = Server::start();
    let alice_sub = uid("alice");
    let mut alice = Peer::new(&server, &token(&alice_sub, "alice")).await;
    let mut bob = Peer::user(&server, "bob").await;
    alice.join("er").await;
    alice.join("er-other").await;
    bob.join("er").await;

    let m1 = alice.send("er", "mine").await;
    let m1_id = s(&m1["id"]);
    let elsewhere = alice.send("er-other", "in another room").await;

    // Only the author edits.
    bob.refused(edit_f("er", &m1_id, "hijacked"), "forbidden")
        .await;
    // Moderators delete, they don't edit.
    let mut ann = Peer::new(&server, &mod_token(&uid("ann"), "mod-ann")).await;
    ann.join("er").await;
    ann.refused(edit_f("er", &m1_id, "moderated"), "forbidden")
        .await;

    // Unknown ids, ids of events, ids of another room's messages.
    alice
        .refused(
            edit_f("er", &uuid::Uuid::new_v4().to_string(), "x"),
            "not_found",
        )
        .await;
    alice
        .refused(edit_f("er", "no-such-message", "x"), "not_found")
        .await;
    let ed = alice.edit("er", &m1_id, "mine, edited").await;
    alice
        .refused(edit_f("er", &s(&ed["id"]), "edit of an edit"), "not_found")
        .await;
    let r = bob.react("er", &m1_id, "👍").await;
    bob.refused(
        edit_f("er", &s(&r["id"]), "edit of a reaction"),
        "not_found",
    )
    .await;
    alice
        .refused(
            edit_f("er", &s(&r["id"]), "edit of a reaction"),
            "not_found",
        )
        .await;
    alice
        .refused(
            edit_f("er", &s(&elsewhere["id"]), "wrong room"),
            "not_found",
        )
        .await;

    // The room must be joined (by this connection).
    let mut alice2 = Peer::new(&server, &token(&alice_sub, "alice")).await;
    alice2.refuses_changes("er", &m1_id, "not_joined").await;

    // Structure: id is a string of 1-64 characters, content a string.
    let r1 = fresh_ref();
    for bad in [
        json!({"type":"edit","room":"er","id":5,"content":"x","ref":r1}),
        json!({"type":"edit","room":"er","id":"","content":"x","ref":fresh_ref()}),
        json!({"type":"edit","room":"er","id":"x".repeat(65),"content":"x","ref":fresh_ref()}),
        json!({"type":"edit","room":"er","content":"x","ref":fresh_ref()}),
        json!({"type":"edit","room":"er","id":m1_id,"ref":fresh_ref()}),
        json!({"type":"edit","room":"er","id":m1_id,"content":7,"ref":fresh_ref()}),
        json!({"type":"delete","room":"er","id":null,"ref":fresh_ref()}),
        json!({"type":"delete","room":"er","ref":fresh_ref()}),
        json!({"type":"react","room":"er","id":["x"],"emoji":"👍","ref":fresh_ref()}),
        json!({"type":"unreact","room":"er","id":"x".repeat(65),"emoji":"👍","ref":fresh_ref()}),
    ] {
        alice.refused(bad, "invalid_frame").await;
    }

    // None of the refusals took a seq: 1 message, 2 other room... this room
    // has m1 (1), the edit (2), the reaction (3), so the next is 4.
    let next = alice.send("er", "next").await;
    assert_eq!(next["seq"], 4, "refused changes take no seq: {next}");
    let seen: Vec<i64> = bob.events(4).await.iter().map(seq_of).collect();
    assert_eq!(seen, vec![1, 2, 3, 4]);
    bob.quiet_after(4, 200).await;
    let history = server.history_all("er", &reader()).await;
    assert_eq!(history[0]["content"], "mine, edited", "{history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_content_follows_the_send_rules() {
    let server = Server::builder()
        .set("limits", "max_message_chars", "20")
        .set("moderation", "prohibited_words", r#"["darn"]"#)
        .set("moderation", "spam_repeats", "2")
        .set("moderation", "spam_window_secs", "60")
        .start();
    let mut alice = Peer::user(&server, "alice").await;
    alice.join("rules").await;
    let m1 = alice.send("rules", "fine").await;
    let id = s(&m1["id"]);

    alice
        .refused(edit_f("rules", &id, ""), "empty_message")
        .await;
    alice
        .refused(edit_f("rules", &id, " \n\t\u{3000}"), "empty_message")
        .await;
    alice
        .refused(edit_f("rules", &id, &"é".repeat(21)), "message_too_long")
        .await;
    alice
        .refused(edit_f("rules", &id, "oh DARN it"), "prohibited_content")
        .await;
    // At the limit (code points, not bytes) it is accepted.
    let ok = alice.edit("rules", &id, &"é".repeat(20)).await;
    assert_eq!(ok["seq"], 2, "refused edits took no seq: {ok}");

    let history = server.history_all("rules", &reader()).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["content"], "é".repeat(20));
    assert_eq!(history[0]["edited_at"], ok["timestamp"]);

    // Spam: what a third send of the same content would get.
    alice.send("rules", "buy now").await; // 3
    alice.send("rules", "buy now").await; // 4
    alice.refused(send_f("rules", "buy now"), "spam").await;
    alice.refused(edit_f("rules", &id, "buy now"), "spam").await;
    assert_eq!(alice.send("rules", "other").await["seq"], 5);

    // Reactions: a shortcode is words too, and toggling one reaction on one
    // message over and over is spam (another emoji or message is not).
    alice
        .refused(react_f("rules", &id, ":darn:"), "prohibited_content")
        .await;
    alice.ok(react_f("rules", &id, "👍")).await; // 6
    alice.ok(unreact_f("rules", &id, "👍")).await; // 7
    alice.refused(react_f("rules", &id, "👍"), "spam").await;
    alice.ok(react_f("rules", &id, "🎉")).await; // 8
    let other = s(&alice.send("rules", "another").await["id"]); // 9
    assert_eq!(alice.ok(react_f("rules", &other, "👍")).await["seq"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_counts_against_the_rate_limit() {
    let server = Server::builder()
        .set("limits", "messages_per_sec", "1")
        .set("limits", "message_burst", "3")
        .start();
    let mut alice = Peer::user(&server, "alice").await;
    alice.join("rl").await;
    let m1 = alice.send("rl", "one").await; // 1st of the burst
    let id = s(&m1["id"]);
    alice.edit("rl", &id, "one, edited").await; // 2nd
    alice.react("rl", &id, "👍").await; // 3rd
    let e = alice.refused(delete_f("rl", &id), "rate_limited").await;
    let wait = e["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("retry_after_ms: {e}"));
    assert!(wait > 0 && wait <= 1000, "{e}");
    alice
        .refused(edit_f("rl", &id, "again"), "rate_limited")
        .await;
    alice
        .refused(unreact_f("rl", &id, "👍"), "rate_limited")
        .await;
    sleep_ms(wait + 100).await;
    let del = alice.delete("rl", &id).await;
    assert_eq!(del["seq"], 4, "rate-limited changes took no seq: {del}");
}

// ---------------------------------------------------------------------------
// Deletes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_by_the_author_or_a_moderator_in_either_claim_form() {
    let server = Server::start();
    let mut alice = Peer::user(&server, "alice").await;
    let mut bob = Peer::user(&server, "bob").await;
    let alice_id = alice.id.clone();
    alice.join("del").await;
    bob.join("del").await;
    let mut m = Vec::new();
    for i in 1..=5 {
        m.push(alice.send("del", &format!("m{i}")).await);
    }
    let id = |i: usize| s(&m[i - 1]["id"]);

    // Not the author, not a moderator: refused, whatever other claims say.
    bob.refused(delete_f("del", &id(1)), "forbidden").await;
    let mut dave = Peer::new(
        &server,
        &sign_claims(
            &json!({"sub": uid("dave"), "name": "dave", "exp": now_secs() + 3600, "mod": false}),
            SECRET,
        ),
    )
    .await;
    dave.join("del").await;
    dave.refused(delete_f("del", &id(1)), "forbidden").await;
    let mut erin = Peer::new(
        &server,
        &roles_token(&uid("erin"), "erin", &["user", "admin"]),
    )
    .await;
    erin.join("del").await;
    erin.refused(delete_f("del", &id(1)), "forbidden").await;

    // The author.
    let d1 = alice.delete("del", &id(1)).await;
    assert_keys(&d1, &ACK_KEYS);
    assert_eq!(d1["seq"], 6, "{d1}");
    assert_uuid_v7(&d1["id"]);
    let f = bob.event_at(6).await;
    assert_keys(&f, &DELETED_KEYS);
    assert_eq!(f["type"], "deleted", "{f}");
    assert_eq!(f["id"], d1["id"]);
    assert_eq!(f["timestamp"], d1["timestamp"]);
    assert_eq!(f["target"], id(1).as_str());
    assert_eq!(
        (&f["user"], &f["user_id"]),
        (&json!("alice"), &json!(alice_id))
    );
    let own = alice.event_at(6).await;
    assert_eq!(
        own["type"], "deleted",
        "the sender gets the event too: {own}"
    );

    // A moderator by `"mod": true`.
    let ann_id = uid("ann");
    let mut ann = Peer::new(&server, &mod_token(&ann_id, "mod-ann")).await;
    ann.join("del").await;
    let d2 = ann.delete("del", &id(2)).await;
    assert_eq!(d2["seq"], 7, "{d2}");
    let f = bob.event_at(7).await;
    assert_eq!(f["type"], "deleted", "{f}");
    assert_eq!(f["target"], id(2).as_str());
    assert_eq!(
        (&f["user"], &f["user_id"]),
        (&json!("mod-ann"), &json!(ann_id)),
        "deleted names who deleted: {f}"
    );

    // A moderator by `"roles": [..., "mod"]`.
    let rob_id = uid("rob");
    let mut rob = Peer::new(
        &server,
        &roles_token(&rob_id, "mod-rob", &["editor", "mod"]),
    )
    .await;
    rob.join("del").await;
    let d3 = rob.delete("del", &id(3)).await;
    assert_eq!(d3["seq"], 8, "{d3}");
    let f = bob.event_at(8).await;
    assert_eq!(
        (&f["type"], &f["user_id"]),
        (&json!("deleted"), &json!(rob_id))
    );

    // Deleting again changes nothing: the target's seq, id and timestamp.
    for p in [&mut alice, &mut ann] {
        let again = p.unchanged(delete_f("del", &id(1))).await;
        assert_keys(&again, &UNCHANGED_ACK_KEYS);
        assert_eq!(again["seq"], m[0]["seq"], "{again}");
        assert_eq!(again["id"], m[0]["id"], "{again}");
        assert_eq!(again["timestamp"], m[0]["timestamp"], "{again}");
    }
    bob.quiet_after(8, 300).await;

    // A deleted message can't be edited, reacted to, un-reacted or replied to.
    alice
        .refused(edit_f("del", &id(1), "back"), "message_deleted")
        .await;
    bob.refused(react_f("del", &id(1), "👍"), "message_deleted")
        .await;
    bob.refused(unreact_f("del", &id(1), "👍"), "message_deleted")
        .await;
    bob.refused(reply_f("del", "re", &id(1)), "message_deleted")
        .await;

    let next = alice.send("del", "after").await;
    assert_eq!(
        next["seq"], 9,
        "refused and unchanged changes take no seq: {next}"
    );

    // History: tombstones keep author, seq, id and timestamp.
    let history = server.history_all("del", &reader()).await;
    assert_eq!(seqs(&history), vec![1, 2, 3, 4, 5, 9], "messages only");
    for (i, h) in history[..3].iter().enumerate() {
        assert_keys(h, &TOMBSTONE_KEYS);
        assert_eq!(h["deleted"], true, "{h}");
        assert_eq!(h["content"], "", "{h}");
        assert_eq!(h["reactions"], Value::Null, "{h}");
        assert_eq!(h["id"], m[i]["id"]);
        assert_eq!(h["timestamp"], m[i]["timestamp"]);
        assert_eq!(
            (&h["user"], &h["user_id"]),
            (&json!("alice"), &json!(alice_id))
        );
    }
    for h in &history[3..] {
        assert_keys(h, &HISTORY_KEYS);
    }
    assert_eq!(history[3]["content"], "m4");

    // `confab token --mod` mints a moderator's token.
    let config = server.config_path.display().to_string();
    let out = run_cli(
        &[
            "token", "--sub", "cli-mod", "--name", "mod-cli", "--mod", "--config", &config,
        ],
        &[],
        server.dir(),
    );
    assert_eq!(out.code(), Some(0), "confab token --mod: {out:?}");
    let mut cli = Peer::new(&server, out.stdout.trim()).await;
    cli.join("del").await;
    let d4 = cli.delete("del", &id(4)).await;
    assert_eq!(d4["seq"], 10, "{d4}");
    let f = bob.event_at(10).await;
    assert_eq!(
        (&f["type"], &f["user_id"]),
        (&json!("deleted"), &json!("cli-mod"))
    );
}

// ---------------------------------------------------------------------------
// Reactions
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_add_remove_repeat_and_history_counts() {
    let server = Server::start();
    let mut alice = Peer::user(&server, "alice").await;
    let mut bob = Peer::user(&server, "bob").await;
    let (alice_id, bob_id) = (alice.id.clone(), bob.id.clone());
    alice.join("rx").await;
    bob.join("rx").await;
    let m1 = alice.send("rx", "react to me").await;
    let id = s(&m1["id"]);

    let add = bob.react("rx", &id, "👍").await;
    assert_keys(&add, &ACK_KEYS);
    assert_eq!(add["seq"], 2, "{add}");
    assert_uuid_v7(&add["id"]);
    for p in [&mut alice, &mut bob] {
        let f = p.event_at(2).await;
        assert_keys(&f, &REACTION_KEYS);
        assert_eq!(f["type"], "reaction", "{f}");
        assert_eq!((&f["id"], &f["timestamp"]), (&add["id"], &add["timestamp"]));
        assert_eq!(f["target"], id.as_str());
        assert_eq!((&f["user"], &f["user_id"]), (&json!("bob"), &json!(bob_id)));
        assert_eq!((&f["emoji"], &f["added"]), (&json!("👍"), &json!(true)));
    }

    // The same reaction again: unchanged, no event, no seq.
    let again = bob.unchanged(react_f("rx", &id, "👍")).await;
    assert_keys(&again, &UNCHANGED_ACK_KEYS);
    assert_eq!(
        (&again["seq"], &again["id"], &again["timestamp"]),
        (&m1["seq"], &m1["id"], &m1["timestamp"]),
        "unchanged names the target message: {again}"
    );
    alice.quiet_after(2, 300).await;

    let remove = bob.unreact("rx", &id, "👍").await;
    assert_eq!(remove["seq"], 3, "{remove}");
    let f = alice.event_at(3).await;
    assert_keys(&f, &REACTION_KEYS);
    assert_eq!(
        (&f["type"], &f["emoji"], &f["added"], &f["user_id"]),
        (
            &json!("reaction"),
            &json!("👍"),
            &json!(false),
            &json!(bob_id)
        )
    );
    // Removing what is not there: unchanged.
    let gone = bob.unchanged(unreact_f("rx", &id, "👍")).await;
    assert_eq!(gone["seq"], 1, "{gone}");
    let never = alice.unchanged(unreact_f("rx", &id, "🎉")).await;
    assert_eq!(never["id"], m1["id"], "{never}");
    alice.quiet_after(3, 300).await;

    // Counts and the first five users, oldest emoji first.
    let m2 = alice.send("rx", "second").await; // seq 4
    let id2 = s(&m2["id"]);
    alice.react("rx", &id2, "❤️").await; // 5
    let mut reactors = Vec::new();
    for i in 0..7 {
        let mut u = Peer::user(&server, &format!("fan{i}")).await;
        u.join("rx").await;
        u.react("rx", &id2, "🎉").await; // 6..=12
        reactors.push(u.id.clone());
        u.c.close().await;
    }
    bob.react("rx", &id2, "🔥").await; // 13
    alice.react("rx", &id2, "🔥").await; // 14
    let mut fan0 = Peer::new(&server, &token(&reactors[0], "fan0")).await;
    fan0.join("rx").await;
    let last = fan0.unreact("rx", &id2, "🎉").await;
    assert_eq!(last["seq"], 15, "{last}");

    let history = server.history_all("rx", &reader()).await;
    assert_eq!(seqs(&history), vec![1, 4], "messages only: {history:?}");
    assert_keys(&history[0], &HISTORY_KEYS);
    assert_eq!(history[0]["reactions"], Value::Null, "bob took his 👍 back");
    let fans: Vec<&str> = reactors[1..6].iter().map(String::as_str).collect();
    assert_eq!(
        history[1]["reactions"],
        json!([
            reaction("❤️", 1, &[&alice_id]),
            reaction("🎉", 6, &fans[..]),
            reaction("🔥", 2, &[&bob_id, &alice_id]),
        ]),
        "{}",
        history[1]
    );
    // The WS history frame shows the same objects.
    let ws = alice.ws_history("rx").await;
    assert_eq!(ws["messages"], json!(history), "WS history = REST history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emoji_is_one_grapheme_or_a_shortcode() {
    let server = Server::start();
    let mut alice = Peer::user(&server, "alice").await;
    let mut bob = Peer::user(&server, "bob").await;
    alice.join("emo").await;
    bob.join("emo").await;
    let m1 = alice.send("emo", "emoji test").await;
    let id = s(&m1["id"]);

    let long_cluster = format!("a{}", "\u{301}".repeat(40)); // one grapheme, 81 bytes
    let invalid = [
        "👍👍".to_string(),
        "ab".to_string(),
        "".to_string(),
        " ".to_string(),
        "\u{3000}".to_string(),
        "👍 ".to_string(),
        "\n".to_string(),
        "\u{7}".to_string(),
        ":UPPER:".to_string(),
        ":Party_parrot:".to_string(),
        ":party parrot:".to_string(),
        ":party_parrot".to_string(),
        format!(":{}:", "a".repeat(33)),
        long_cluster,
    ];
    for e in &invalid {
        let err = bob.refused(react_f("emo", &id, e), "invalid_emoji").await;
        assert!(err["ref"].is_string(), "{err}");
        bob.refused(unreact_f("emo", &id, e), "invalid_emoji").await;
    }
    for bad in [
        json!({"type":"react","room":"emo","id":id,"emoji":5,"ref":fresh_ref()}),
        json!({"type":"react","room":"emo","id":id,"ref":fresh_ref()}),
        json!({"type":"unreact","room":"emo","id":id,"emoji":["👍"],"ref":fresh_ref()}),
    ] {
        bob.refused(bad, "invalid_frame").await;
    }

    let valid = [
        "👍".to_string(),
        "👍🏽".to_string(),
        "👨‍👩‍👧‍👦".to_string(),
        "🇫🇷".to_string(),
        "❤️".to_string(),
        "1️⃣".to_string(),
        ":party_parrot:".to_string(),
        ":+1:".to_string(),
        ":a-b_c+9:".to_string(),
        format!(":{}:", "z".repeat(32)),
    ];
    let mut seq = 1;
    for e in &valid {
        let ack = bob.react("emo", &id, e).await;
        seq += 1;
        assert_eq!(ack["seq"], seq, "{e}: invalid emoji took no seq: {ack}");
        let f = alice.event_at(seq).await;
        assert_eq!(
            (&f["type"], &f["emoji"]),
            (&json!("reaction"), &json!(e)),
            "{f}"
        );
    }
    let history = server.history_all("emo", &reader()).await;
    let emoji: Vec<Value> = history[0]["reactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["emoji"].clone())
        .collect();
    assert_eq!(emoji, valid.iter().map(|e| json!(e)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_fifty_distinct_emoji_per_message() {
    let server = Server::start();
    let mut alice = Peer::user(&server, "alice").await;
    let mut bob = Peer::user(&server, "bob").await;
    alice.join("many").await;
    bob.join("many").await;
    let m1 = alice.send("many", "popular").await;
    let id = s(&m1["id"]);
    for i in 0..50 {
        bob.react("many", &id, &format!(":e{i}:")).await;
    }
    bob.refused(react_f("many", &id, ":e50:"), "too_many_reactions")
        .await;
    alice
        .refused(react_f("many", &id, "👍"), "too_many_reactions")
        .await;
    // An emoji already there is not a new distinct one.
    alice.react("many", &id, ":e7:").await;
    // Room again once one emoji has no reaction left.
    bob.unreact("many", &id, ":e49:").await;
    let ok = alice.react("many", &id, ":e50:").await;
    assert_eq!(ok["seq"], 1 + 50 + 1 + 1 + 1, "{ok}");
    bob.refused(react_f("many", &id, ":e51:"), "too_many_reactions")
        .await;

    let history = server.history_all("many", &reader()).await;
    let r = history[0]["reactions"].as_array().unwrap();
    assert_eq!(r.len(), 50, "{}", history[0]);
    assert!(r.iter().all(|x| x["emoji"] != ":e49:"));
    let e7 = r.iter().find(|x| x["emoji"] == ":e7:").expect(":e7:");
    assert_eq!(e7["count"], 2, "{e7}");
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_carry_reply_to_and_are_checked() {
    let server = Server::start();
    let mut alice = Peer::user(&server, "alice").await;
    let mut bob = Peer::user(&server, "bob").await;
    alice.join("rp").await;
    alice.join("rp-other").await;
    bob.join("rp").await;
    let m1 = alice.send("rp", "question?").await;
    let id1 = s(&m1["id"]);
    let plain = bob.event_at(1).await;
    assert_keys(&plain, &MESSAGE_KEYS);

    let r = bob.reply("rp", "answer!", &id1).await;
    assert_keys(&r, &ACK_KEYS);
    assert_eq!(r["seq"], 2, "{r}");
    for p in [&mut alice, &mut bob] {
        let f = p.event_at(2).await;
        assert_keys(&f, &[&MESSAGE_KEYS[..], &["reply_to"]].concat());
        assert_eq!((&f["type"], &f["id"]), (&json!("message"), &r["id"]));
        assert_eq!(
            (&f["content"], &f["reply_to"]),
            (&json!("answer!"), &json!(id1))
        );
    }
    // A reply to a reply.
    let r2 = alice.reply("rp", "thanks", &s(&r["id"])).await;
    assert_eq!(r2["seq"], 3);

    // Unknown, an event's id, another room's message: not_found.
    bob.refused(
        reply_f("rp", "x", &uuid::Uuid::new_v4().to_string()),
        "not_found",
    )
    .await;
    let reacted = bob.react("rp", &id1, "👍").await;
    bob.refused(reply_f("rp", "x", &s(&reacted["id"])), "not_found")
        .await;
    let other = alice.send("rp-other", "elsewhere").await;
    alice
        .refused(reply_f("rp", "x", &s(&other["id"])), "not_found")
        .await;
    // Not a string of 1-64 characters: invalid_frame.
    for to in [
        json!(42),
        json!(""),
        json!("x".repeat(65)),
        json!({"id": id1}),
    ] {
        bob.refused(
            json!({"type":"send","room":"rp","content":"x","reply_to":to,"ref":fresh_ref()}),
            "invalid_frame",
        )
        .await;
    }
    // An edited reply stays a reply.
    let e2 = bob.edit("rp", &s(&r["id"]), "answer, edited").await;
    // A deleted message: message_deleted.
    let doomed = alice.send("rp", "soon gone").await;
    alice.delete("rp", &s(&doomed["id"])).await;
    bob.refused(
        reply_f("rp", "too late", &s(&doomed["id"])),
        "message_deleted",
    )
    .await;

    let history = server.history_all("rp", &reader()).await;
    assert_eq!(seqs(&history), vec![1, 2, 3, 6]);
    assert_keys(&history[0], &[&HISTORY_KEYS[..], &["reactions"]].concat());
    assert_keys(
        &history[1],
        &[&HISTORY_KEYS[..], &["reply_to", "edited_at"]].concat(),
    );
    assert_eq!(history[1]["reply_to"], id1.as_str());
    assert_eq!(history[1]["content"], "answer, edited");
    assert_eq!(history[1]["edited_at"], e2["timestamp"]);
    assert_eq!(history[2]["reply_to"], r["id"]);
    assert_eq!(
        history[0]["reactions"],
        json!([reaction("👍", 1, &[&bob.id])])
    );
}

// ---------------------------------------------------------------------------
// Seqs, replays, idempotency
// ---------------------------------------------------------------------------

/// Types of the events of the replay scenario, seq 1..=10.
const SCENARIO_TYPES: [&str; 10] = [
    "message", "message", "edited", "edited", "reaction", "message", "reaction", "reaction",
    "deleted", "message",
];

fn check_scenario_replay(frames: &[Value], from: i64, ids: &[String; 4]) {
    let want: Vec<i64> = (from..=10).collect();
    assert_eq!(
        frames.iter().map(seq_of).collect::<Vec<_>>(),
        want,
        "{frames:?}"
    );
    let types: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        SCENARIO_TYPES[(from - 1) as usize..].to_vec(),
        "{frames:?}"
    );
    assert_absent(frames, &["doomed"], "replay");
    for f in frames {
        assert_eq!(f["room"], "sq");
        match seq_of(f) {
            1 => {
                assert_eq!(f["id"], ids[0].as_str());
                assert!(
                    f["content"] == "first" || f["content"] == "first, fixed",
                    "original or current state: {f}"
                );
            }
            2 => {
                assert_eq!(f["id"], ids[1].as_str());
                if f.get("deleted").is_some() {
                    assert_eq!(
                        (&f["deleted"], &f["content"]),
                        (&json!(true), &json!("")),
                        "{f}"
                    );
                }
            }
            3 => assert_eq!(
                (&f["target"], &f["content"]),
                (&json!(ids[0]), &json!("first, fixed"))
            ),
            4 | 5 | 9 => assert_eq!(f["target"], ids[1].as_str(), "{f}"),
            6 => assert_eq!((&f["id"], &f["reply_to"]), (&json!(ids[2]), &json!(ids[0]))),
            7 | 8 => {
                assert_eq!((&f["target"], &f["emoji"]), (&json!(ids[0]), &json!("🎉")));
                assert_eq!(f["added"], seq_of(f) == 7, "{f}");
            }
            10 => assert_eq!((&f["id"], &f["content"]), (&json!(ids[3]), &json!("last"))),
            _ => unreachable!(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_interleave_with_messages_and_replay_in_seq_order() {
    let mut server = Server::start();
    let mut alice = Peer::user(&server, "alice").await;
    let mut bob = Peer::user(&server, "bob").await;
    // An old client: joins and reads, knows nothing of the new frames.
    let mut watcher = Peer::user(&server, "watcher").await;
    alice.join("sq").await;
    bob.join("sq").await;
    watcher.join("sq").await;

    let m1 = alice.send("sq", "first").await; // 1
    let m2 = alice.send("sq", "doomed original").await; // 2
    let (id1, id2) = (s(&m1["id"]), s(&m2["id"]));
    let e1 = alice.edit("sq", &id1, "first, fixed").await; // 3
    alice.edit("sq", &id2, "doomed edit").await; // 4
    bob.react("sq", &id2, "👍").await; // 5
    let m3 = bob.reply("sq", "a reply", &id1).await; // 6
    bob.react("sq", &id1, "🎉").await; // 7
    bob.unreact("sq", &id1, "🎉").await; // 8
    let del = alice.delete("sq", &id2).await; // 9
    let m4 = alice.send("sq", "last").await; // 10
    assert_eq!(seq_of(&del), 9);
    assert_eq!(
        seq_of(&m4),
        10,
        "events and messages share one gap-free seq"
    );
    let ids = [id1.clone(), id2.clone(), s(&m3["id"]), s(&m4["id"])];

    // Live: every member gets every event, in seq order.
    let live = watcher.events(10).await;
    assert_eq!(
        live.iter().map(seq_of).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let types: Vec<&str> = live.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(types, SCENARIO_TYPES.to_vec());
    watcher.quiet_after(10, 200).await;

    // The room is live: replays come from memory.
    for round in ["memory", "store"] {
        let (joined, frames) = replay(&server, "sq", json!({"since": 0}), 10).await;
        assert_eq!(
            (&joined["last_seq"], &joined["recovered"]),
            (&json!(10), &json!(true)),
            "{round}: {joined}"
        );
        check_scenario_replay(&frames, 1, &ids);
        let (_, frames) = replay(&server, "sq", json!({"since": 2}), 8).await;
        check_scenario_replay(&frames, 3, &ids);
        let (_, frames) = replay(&server, "sq", json!({"history": 3}), 3).await;
        check_scenario_replay(&frames, 8, &ids);
        let (_, frames) = replay(&server, "sq", json!({}), 10).await; // join_history = 50
        check_scenario_replay(&frames, 1, &ids);

        // History: messages only, current state; `limit` counts messages.
        let history = server.history_all("sq", &reader()).await;
        assert_eq!(seqs(&history), vec![1, 2, 6, 10], "{round}");
        assert_eq!(history[0]["content"], "first, fixed");
        assert_eq!(history[0]["edited_at"], e1["timestamp"]);
        assert_eq!(history[0]["reactions"], Value::Null);
        assert_keys(&history[1], &TOMBSTONE_KEYS);
        assert_eq!(
            (&history[1]["content"], &history[1]["deleted"]),
            (&json!(""), &json!(true))
        );
        assert_eq!(history[2]["reply_to"], id1.as_str());
        assert_absent(&history, &["doomed"], "history");
        let page = server.history("sq", "limit=2", &reader()).await.json();
        assert_eq!(
            seqs(page["messages"].as_array().unwrap()),
            vec![6, 10],
            "{page}"
        );
        assert_eq!(page["next_before"], 6, "{page}");
        let page = server
            .history("sq", "limit=2&before=6", &reader())
            .await
            .json();
        assert_eq!(
            seqs(page["messages"].as_array().unwrap()),
            vec![1, 2],
            "{page}"
        );
        assert_eq!(page["next_before"], json!(null), "{page}");

        if round == "memory" {
            // Start over on the same data dir: replays come from the store.
            drop((alice, bob, watcher));
            server.restart();
            alice = Peer::user(&server, "alice").await;
            bob = Peer::user(&server, "bob").await;
            watcher = Peer::user(&server, "watcher").await;
        }
    }
    // After the restart the seq continues.
    alice.join("sq").await;
    let next = alice.send("sq", "after restart").await;
    assert_eq!(next["seq"], 11, "{next}");
    drop((bob, watcher));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_reach_past_the_recent_buffer() {
    let server = Server::start();
    let mut alice = Peer::user(&server, "alice").await;
    alice.join("deep").await;
    let m1 = alice.send("deep", "deep secret original").await; // 1
    let id = s(&m1["id"]);
    alice.edit("deep", &id, "deep secret edit").await; // 2
    alice.react("deep", &id, "👀").await; // 3
    alice.delete("deep", &id).await; // 4
                                     // Push the changes out of any in-memory buffer (128 events).
    let filler = populate(&server, "deep", 200, "fill").await;
    assert_eq!(seq_of(&filler[0]), 5);
    assert_eq!(seq_of(filler.last().unwrap()), 204);

    let (joined, frames) = replay(&server, "deep", json!({"since": 0}), 204).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(
        frames.iter().map(seq_of).collect::<Vec<_>>(),
        (1..=204).collect::<Vec<_>>()
    );
    let types: Vec<&str> = frames[..4]
        .iter()
        .map(|f| f["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["message", "edited", "reaction", "deleted"]);
    assert_absent(&frames, &["deep secret"], "replay from the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_ref_gets_the_original_ack_and_no_second_event() {
    let mut server = Server::start();
    let alice_sub = uid("alice");
    let mut alice = Peer::new(&server, &token(&alice_sub, "alice")).await;
    let mut bob = Peer::user(&server, "bob").await;
    alice.join("idem").await;
    bob.join("idem").await;
    let m1 = alice.send("idem", "v1").await;
    let id = s(&m1["id"]);

    let edit = edit_f("idem", &id, "v2");
    let first = alice.ok(edit.clone()).await;
    assert_eq!(first["seq"], 2);
    let again = alice.ask(edit.clone()).await;
    assert_eq!(again, first, "same ref: the original ack");
    let mut different = edit.clone();
    different["content"] = json!("v3");
    assert_eq!(
        alice.ask(different).await,
        first,
        "the ref names the change"
    );
    // From another connection of the same user.
    let mut alice2 = Peer::new(&server, &token(&alice_sub, "alice")).await;
    alice2.join("idem").await;
    assert_eq!(alice2.ask(edit.clone()).await, first);

    let react = react_f("idem", &id, "👍");
    let r1 = bob.ok(react.clone()).await;
    assert_eq!(bob.ask(react).await, r1, "original ack, not `unchanged`");
    let del = delete_f("idem", &id);
    let d1 = alice.ok(del.clone()).await;
    assert_eq!(d1["seq"], 4);
    assert_eq!(
        alice.ask(del.clone()).await,
        d1,
        "original ack, not `unchanged`"
    );

    let seen: Vec<(i64, String)> = bob
        .events(4)
        .await
        .iter()
        .map(|f| (seq_of(f), s(&f["type"])))
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, "message".into()),
            (2, "edited".into()),
            (3, "reaction".into()),
            (4, "deleted".into())
        ]
    );
    bob.quiet_after(4, 300).await;
    // A ref names one send or change of one user, whatever frame reuses it.
    let m2 = alice
        .ok(json!({"type":"send","room":"idem","content":"v1 again","ref":"reused-ref"}))
        .await;
    assert_eq!(m2["seq"], 5);
    let mut react_again = react_f("idem", &s(&m2["id"]), "🎉");
    react_again["ref"] = json!("reused-ref");
    assert_eq!(
        alice.ask(react_again).await,
        m2,
        "a known ref is answered first"
    );
    bob.event_at(5).await;
    bob.quiet_after(5, 300).await;
    assert_eq!(alice.send("idem", "next").await["seq"], 6);

    // The ref window survives a restart (rebuilt from the store): the
    // original acks, before any rule (the message is deleted by now).
    drop((alice, alice2, bob));
    server.restart();
    let mut alice = Peer::new(&server, &token(&alice_sub, "alice")).await;
    alice.join("idem").await;
    assert_eq!(alice.ask(edit).await, first, "edit ref after a restart");
    assert_eq!(alice.ask(del).await, d1, "delete ref after a restart");
    assert_eq!(alice.send("idem", "after restart").await["seq"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_client_keeps_working_with_gap_free_seqs() {
    let server = Server::start();
    let old_sub = uid("old");
    let mut old = server.ws(&token(&old_sub, "old")).await;
    old.join("compat").await;
    let mut alice = Peer::user(&server, "alice").await;
    alice.join("compat").await;

    let m1 = alice.send("compat", "hi").await;
    let id = s(&m1["id"]);
    alice.edit("compat", &id, "hi!").await;
    alice.react("compat", &id, "👋").await;

    // The old client reads everything and sends plain messages in between.
    let mut frames: Vec<Value> = Vec::new();
    let ack = old_send(&mut old, "compat", "hello from v1", &mut frames).await;
    assert_eq!(ack["seq"], 4, "{ack}");
    alice.reply("compat", "welcome", &id).await;
    alice.delete("compat", &id).await;
    let ack = old_send(&mut old, "compat", "still here", &mut frames).await;
    assert_eq!(ack["seq"], 7, "seqs count the events too: {ack}");
    while frames.len() < 7 {
        let v = old.recv_main().await;
        assert_ne!(v["type"], "error", "{v}");
        if v["type"] != "ack" {
            frames.push(v);
        }
    }
    assert_eq!(
        frames.iter().map(seq_of).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>(),
        "every frame with a seq, gap-free: {frames:?}"
    );
    old.expect_no_type("message", 200).await;
    old.close().await;

    // Recovery with `since` counts events too.
    let mut again = server.ws(&token(&old_sub, "old")).await;
    let joined = again
        .join_with(json!({"type":"join","room":"compat","since":3}))
        .await;
    assert_eq!(
        (&joined["recovered"], &joined["last_seq"]),
        (&json!(true), &json!(7)),
        "{joined}"
    );
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(again.recv_main().await);
    }
    assert_eq!(got.iter().map(seq_of).collect::<Vec<_>>(), vec![4, 5, 6, 7]);
    assert_eq!(got[0]["content"], "hello from v1");
    again.expect_no_type("message", 200).await;
}

/// A v1 client's send: returns its ack; every other frame with a seq it
/// reads meanwhile goes to `seen`.
async fn old_send(c: &mut Client, room: &str, content: &str, seen: &mut Vec<Value>) -> Value {
    let r = fresh_ref();
    c.send_json(json!({"type":"send","room":room,"content":content,"ref":r}))
        .await;
    loop {
        let v = c.recv_main().await;
        assert_ne!(v["type"], "error", "{v}");
        if v["type"] == "ack" && v["ref"] == r.as_str() {
            return v;
        }
        if v["seq"].is_i64() && v["type"] != "ack" {
            seen.push(v);
        }
    }
}

// ---------------------------------------------------------------------------
// Seed-compatible clients
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_clients_see_original_messages_only() {
    let server = Server::start();
    let mut seed = server
        .ws_connect("/ws/chat/sd?name=seedy", &[])
        .await
        .expect("seed connect");
    let mut alice = Peer::user(&server, "alice").await;
    alice.join("sd").await;
    let m1 = alice.send("sd", "seed-doomed original").await; // 1
    let id1 = s(&m1["id"]);
    let m2 = alice.reply("sd", "a reply", &id1).await; // 2
    alice.edit("sd", &id1, "seed-doomed edit").await; // 3
    alice.react("sd", &s(&m2["id"]), "👍").await; // 4
    alice.delete("sd", &id1).await; // 5
    let m3 = alice.send("sd", "after").await; // 6

    let mut got = Vec::new();
    for _ in 0..3 {
        let v = seed.recv_json().await;
        assert_keys(&v, &SEED_KEYS);
        got.push(v);
    }
    assert_eq!(
        got.iter()
            .map(|v| (seq_of(v), s(&v["message"])))
            .collect::<Vec<_>>(),
        vec![
            (1, "seed-doomed original".to_string()),
            (2, "a reply".to_string()),
            (6, "after".to_string())
        ],
        "messages only, as first sent; a reply is a plain message"
    );
    assert_eq!(got[1]["id"], m2["id"]);
    assert_eq!(got[2]["id"], m3["id"]);
    seed.expect_silence(300).await;

    // A seed message is seen by /ws clients as usual, after the events.
    seed.send_text("from seed").await;
    let own = seed.recv_json().await;
    assert_eq!(
        (&own["seq"], &own["message"]),
        (&json!(7), &json!("from seed"))
    );
    assert_eq!(alice.event_at(7).await["content"], "from seed");

    // A replay skips deleted messages and never shows events.
    let mut late = server
        .ws_connect("/ws/chat/sd?history=50", &[])
        .await
        .expect("seed connect");
    let mut replayed = Vec::new();
    for _ in 0..3 {
        let v = late.recv_json().await;
        assert_keys(&v, &SEED_KEYS);
        replayed.push(v);
    }
    assert_eq!(
        replayed.iter().map(seq_of).collect::<Vec<_>>(),
        vec![2, 6, 7],
        "{replayed:?}"
    );
    assert_absent(&replayed, &["seed-doomed"], "seed replay");
    late.expect_silence(300).await;
}

// ---------------------------------------------------------------------------
// Both backends: the core flow, and the erasure of deleted content
// ---------------------------------------------------------------------------

async fn core_flow(backend: Backend) {
    let mut node = Node::start(backend);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let secret = format!("core-original-{tag}");
    let secret_edit = format!("core-edit-{tag}");
    let keep = format!("keep-{tag}");
    let keep_edit = format!("keep-edited-{tag}");
    let server = &node.server;
    let mut alice = Peer::user(server, "alice").await;
    let mut bob = Peer::user(server, "bob").await;
    let (alice_id, bob_id) = (alice.id.clone(), bob.id.clone());
    alice.join("core").await;
    bob.join("core").await;

    let m1 = alice.send("core", &secret).await; // 1
    let id1 = s(&m1["id"]);
    let m2 = bob.reply("core", "core-reply", &id1).await; // 2
    let id2 = s(&m2["id"]);
    alice.edit("core", &id1, &secret_edit).await; // 3
    bob.react("core", &id1, "👍").await; // 4
    alice.react("core", &id1, "👍").await; // 5
    bob.react("core", &id2, "❤️").await; // 6
    let m3 = alice.send("core", &keep).await; // 7
    let id3 = s(&m3["id"]);
    let e3 = alice.edit("core", &id3, &keep_edit).await; // 8

    let before = server.history_all("core", &reader()).await;
    assert_eq!(before[0]["content"], secret_edit.as_str());
    assert_eq!(
        before[0]["reactions"],
        json!([reaction("👍", 2, &[&bob_id, &alice_id])])
    );

    let del = alice.delete("core", &id1).await; // 9
    assert_eq!(del["seq"], 9, "{del}");
    let live = bob.events(9).await;
    assert_eq!(
        live.iter().map(|f| s(&f["type"])).collect::<Vec<_>>(),
        vec![
            "message", "message", "edited", "reaction", "reaction", "reaction", "message",
            "edited", "deleted"
        ],
        "{live:?}"
    );
    assert_eq!(
        live.iter().map(seq_of).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );

    let check_state = |history: &[Value]| {
        assert_eq!(seqs(history), vec![1, 2, 7], "{history:?}");
        assert_keys(&history[0], &TOMBSTONE_KEYS);
        assert_eq!(
            (
                &history[0]["content"],
                &history[0]["deleted"],
                &history[0]["reactions"]
            ),
            (&json!(""), &json!(true), &Value::Null),
            "{}",
            history[0]
        );
        assert_eq!(
            history[1]["reply_to"],
            id1.as_str(),
            "a reply keeps reply_to"
        );
        assert_eq!(
            history[1]["reactions"],
            json!([reaction("❤️", 1, &[&bob_id])])
        );
        assert_eq!(history[2]["content"], keep_edit.as_str());
        assert_eq!(history[2]["edited_at"], e3["timestamp"]);
        assert_absent(history, &[&secret, &secret_edit], "history");
    };
    let history = server.history_all("core", &reader()).await;
    check_state(&history);
    assert_eq!(alice.ws_history("core").await["messages"], json!(history));

    let (_, frames) = replay(server, "core", json!({"since": 0}), 9).await;
    assert_eq!(
        frames.iter().map(seq_of).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    assert_absent(&frames, &[&secret, &secret_edit], "replay");

    // Erased from the database, not hidden; left out of exports.
    let dump = dump(&node);
    assert!(
        dump.contains(&keep_edit),
        "the dump sees stored content:\n{dump}"
    );
    assert!(
        !dump.contains(&secret),
        "{backend:?}: the deleted content is still stored:\n{dump}"
    );
    assert!(
        !dump.contains(&secret_edit),
        "{backend:?}: the content of an edit of a deleted message is still stored:\n{dump}"
    );
    let export = node.export("core", &["--format", "ndjson"]).stdout;
    assert!(export.contains("core-reply"), "{export}");
    assert!(
        !export.contains(&secret) && !export.contains(&secret_edit),
        "export:\n{export}"
    );
    for line in export.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).expect("ndjson line");
        // "Deleting removes the content ... it is left out of exports": the
        // content is; a seq-keeping tombstone line may remain.
        if v["id"] == id1.as_str() || v["target"] == id1.as_str() {
            assert!(
                v.get("content").is_none() || v["content"] == "",
                "an exported line of a deleted message carries no content: {line}"
            );
        }
    }

    // After a restart (replays and history from the store).
    drop((alice, bob));
    node.server.restart();
    let server = &node.server;
    let history = server.history_all("core", &reader()).await;
    check_state(&history);
    let (joined, frames) = replay(server, "core", json!({"since": 0}), 9).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(
        frames.iter().map(seq_of).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    assert_absent(&frames, &[&secret, &secret_edit], "replay after restart");
    let mut carol = Peer::user(server, "carol").await;
    carol.join("core").await;
    carol
        .refused(react_f("core", &id1, "👍"), "message_deleted")
        .await;
    assert_eq!(carol.react("core", &id2, "👍").await["seq"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_flow_on_sqlite() {
    core_flow(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_flow_on_postgres() {
    core_flow(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------
// Cluster mode
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_changes_cross_instances_in_seq_order_and_converge() {
    let env = ClusterEnv::new();
    let (a, b) = (env.instance(), env.instance());
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let doomed = format!("cl-doomed-{tag}");
    let doomed_edit = format!("cl-doomed-edit-{tag}");
    let (alice_sub, bob_sub) = (uid("alice"), uid("bob"));
    let mut alice = Peer::new(&a, &token(&alice_sub, "alice")).await; // on A
    let mut alice_b = Peer::new(&b, &token(&alice_sub, "alice")).await; // on B
    let mut bob = Peer::new(&b, &token(&bob_sub, "bob")).await; // on B
    let mut bob_a = Peer::new(&a, &token(&bob_sub, "bob")).await; // on A
    let mut dave = Peer::user(&a, "dave").await; // watches on A
    let mut carol = Peer::user(&b, "carol").await; // watches on B
    for p in [
        &mut alice,
        &mut alice_b,
        &mut bob,
        &mut bob_a,
        &mut dave,
        &mut carol,
    ] {
        p.join("cl").await;
    }

    let m1 = alice.send("cl", "hello from A").await;
    let id1 = s(&m1["id"]);
    bob.event_at(seq_of(&m1)).await; // B has seen it
    let m2 = bob.reply("cl", "hello from B", &id1).await;
    let id2 = s(&m2["id"]);
    alice.event_at(seq_of(&m2)).await;
    let cl_edit = edit_f("cl", &id1, "hello from A, edited");
    let cl_edit_ack = alice.ok(cl_edit.clone()).await;
    // Reactions from both instances, one after the other.
    bob.react("cl", &id1, "👍").await;
    let r = alice.react("cl", &id1, "👍").await;
    bob.event_at(seq_of(&r)).await;
    // Bob's 👍 (taken by B) is known on A once A delivered it: unchanged there.
    bob_a.event_at(seq_of(&r)).await;
    let same = bob_a.unchanged(react_f("cl", &id1, "👍")).await;
    assert_eq!(same["id"], id1.as_str(), "{same}");
    alice.react("cl", &id2, "❤️").await;
    // The same user's reaction through both instances at once: one reaction.
    let (f1, f2) = (react_f("cl", &id1, "🎉"), react_f("cl", &id1, "🎉"));
    bob.c.send_json(f1.clone()).await;
    bob_a.c.send_json(f2.clone()).await;
    for (p, f) in [(&mut bob, &f1), (&mut bob_a, &f2)] {
        loop {
            let v = p.read().await;
            if v["ref"] == f["ref"] {
                assert_eq!(v["type"], "ack", "{v}");
                break;
            }
            p.buf.push_back(v);
        }
    }

    // A message deleted through A can't be edited through B once B saw it.
    let m3 = alice.send("cl", &doomed).await;
    let id3 = s(&m3["id"]);
    alice.edit("cl", &id3, &doomed_edit).await;
    bob.react("cl", &id3, "👀").await;
    let del = alice.delete("cl", &id3).await;
    let seen = alice_b.event_at(seq_of(&del)).await;
    assert_eq!(seen["type"], "deleted", "{seen}");
    alice_b
        .refused(edit_f("cl", &id3, "edit through B"), "message_deleted")
        .await;
    bob.event_at(seq_of(&del)).await;
    bob.refused(react_f("cl", &id3, "👍"), "message_deleted")
        .await;
    // A resend of a change's ref through the other instance: the original ack.
    assert_eq!(alice_b.ask(cl_edit).await, cl_edit_ack);
    let last = bob.send("cl", "the end").await;
    let last_seq = seq_of(&last);

    // Watchers on both instances saw the same events, gap-free, in seq order.
    let on_a = dave.events(last_seq as usize).await;
    let on_b = carol.events(last_seq as usize).await;
    assert_eq!(
        on_a.iter().map(seq_of).collect::<Vec<_>>(),
        (1..=last_seq).collect::<Vec<_>>()
    );
    assert_eq!(on_a, on_b, "both instances deliver the same events");
    dave.quiet_after(last_seq, 200).await;

    // History converges on both instances.
    let (alice_id, bob_id) = (alice_sub.as_str(), bob_sub.as_str());
    let want = |h: &[Value]| -> bool {
        h.len() == 4
            && h[0]["content"] == "hello from A, edited"
            && h[0]["reactions"]
                == json!([
                    reaction("👍", 2, &[bob_id, alice_id]),
                    reaction("🎉", 1, &[bob_id])
                ])
            && h[1]["reply_to"] == id1.as_str()
            && h[1]["reactions"] == json!([reaction("❤️", 1, &[alice_id])])
            && h[2]["deleted"] == true
            && h[2]["content"] == ""
            && h[2]["reactions"] == Value::Null
            && h[3]["seq"] == last_seq
    };
    let via_a = history_until(&a, "cl", Duration::from_secs(10), want).await;
    let via_b = history_until(&b, "cl", Duration::from_secs(10), want).await;
    assert_eq!(via_a, via_b);
    assert!(via_a[0]["edited_at"].is_string(), "{}", via_a[0]);
    let dump = pg_dump(&env.db);
    assert!(dump.contains("hello from A, edited"), "{dump}");
    assert!(
        !dump.contains(&doomed),
        "deleted content still in Postgres:\n{dump}"
    );

    // Replays on either instance contain no deleted content.
    for server in [&a, &b] {
        let (joined, frames) = replay(server, "cl", json!({"since": 0}), last_seq as usize).await;
        assert_eq!(joined["recovered"], true, "{joined}");
        assert_eq!(
            frames.iter().map(seq_of).collect::<Vec<_>>(),
            (1..=last_seq).collect::<Vec<_>>()
        );
        assert_absent(&frames, &[&doomed], "cluster replay");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_edit_racing_a_delete_leaves_no_content() {
    let env = ClusterEnv::new();
    let (a, b) = (env.instance(), env.instance());
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let original = format!("race-original-{tag}");
    let racing = format!("race-edit-{tag}");
    let alice_sub = uid("alice");
    let mut on_a = Peer::new(&a, &token(&alice_sub, "alice")).await;
    let mut on_b = Peer::new(&b, &token(&alice_sub, "alice")).await;
    on_a.join("race").await;
    on_b.join("race").await;
    let m = on_a.send("race", &original).await;
    let id = s(&m["id"]);
    on_b.event_at(1).await;

    // The delete through A and an edit through B, at once.
    let (del, edit) = (delete_f("race", &id), edit_f("race", &id, &racing));
    on_a.c.send_json(del.clone()).await;
    on_b.c.send_json(edit.clone()).await;
    let del_ack = loop {
        let v = on_a.read().await;
        if v["ref"] == del["ref"] {
            break v;
        }
    };
    assert_eq!(del_ack["type"], "ack", "{del_ack}");
    let edit_answer = loop {
        let v = on_b.read().await;
        if v["ref"] == edit["ref"] {
            break v;
        }
    };
    assert!(
        edit_answer["type"] == "ack" || edit_answer["code"] == "message_deleted",
        "{edit_answer}"
    );

    // Whatever the seq order, the message ends a tombstone everywhere.
    let tomb = |h: &[Value]| h.len() == 1 && h[0]["deleted"] == true && h[0]["content"] == "";
    for server in [&a, &b] {
        let h = history_until(server, "race", Duration::from_secs(10), tomb).await;
        assert_keys(&h[0], &TOMBSTONE_KEYS);
    }
    let last = on_a.send("race", "after the race").await;
    history_until(&b, "race", Duration::from_secs(10), |h| {
        h.last().map(|m| m["seq"] == last["seq"]).unwrap_or(false)
    })
    .await;
    let dump = pg_dump(&env.db);
    assert!(!dump.contains(&original), "{dump}");
    assert!(
        !dump.contains(&racing),
        "an edit after the delete is not stored:\n{dump}"
    );
    for server in [&a, &b] {
        let n = seq_of(&last) as usize;
        let (_, frames) = replay(server, "race", json!({"since": 0}), n).await;
        assert_absent(&frames, &[&original, &racing], "replay after the race");
    }
}

/// Each instance's persist consumer writes the entries it read: a change
/// taken by one instance right after its message was sequenced by the other
/// must still apply to that message (edit, delete, reaction), whatever
/// transaction commits first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_changes_right_after_their_message_all_persist() {
    let env = ClusterEnv::new();
    let (a, b) = (env.instance(), env.instance());
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let alice_sub = uid("alice");
    let mut alice = Peer::new(&a, &token(&alice_sub, "alice")).await;
    let mut alice_b = Peer::new(&b, &token(&alice_sub, "alice")).await;
    let mut bob = Peer::user(&b, "bob").await;
    let bob_id = bob.id.clone();
    for p in [&mut alice, &mut alice_b, &mut bob] {
        p.join("burst").await;
    }
    const ROUNDS: usize = 60;
    for i in 0..ROUNDS {
        let ack = alice.send("burst", &format!("burst-{i}-{tag}")).await;
        let (id, seq) = (s(&ack["id"]), seq_of(&ack));
        // Through B, as soon as B delivered the message (not waiting for acks).
        alice_b.event_at(seq).await;
        bob.event_at(seq).await;
        match i % 3 {
            0 => alice_b.c.send_json(delete_f("burst", &id)).await,
            1 => {
                alice_b
                    .c
                    .send_json(edit_f("burst", &id, &format!("burst-edit-{i}")))
                    .await
            }
            _ => bob.c.send_json(react_f("burst", &id, "👍")).await,
        }
        // The change is sequenced before the next message.
        alice.event_at(seq + 1).await;
    }
    // What differs from the expected state, per round.
    let wrong = |h: &[Value]| -> Vec<String> {
        if h.len() != ROUNDS {
            return vec![format!("{} messages in history, want {ROUNDS}", h.len())];
        }
        let mut out = Vec::new();
        for (i, m) in h.iter().enumerate() {
            let ok = match i % 3 {
                0 => m["deleted"] == true && m["content"] == "",
                1 => m["content"] == format!("burst-edit-{i}").as_str(),
                _ => m["reactions"] == json!([reaction("👍", 1, &[&bob_id])]),
            };
            if !ok {
                let change = ["delete", "edit", "react"][i % 3];
                out.push(format!("round {i} ({change} after seq {}): {m}", m["seq"]));
            }
        }
        out
    };
    for server in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let h = server.history_all("burst", &reader()).await;
            let w = wrong(&h);
            if w.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "history (port {}) lost changes applied right after their message:\n{}",
                server.port,
                w.join("\n")
            );
            sleep_ms(200).await;
        }
    }
    let dump = pg_dump(&env.db);
    for i in (0..ROUNDS).step_by(3) {
        assert!(
            !dump.contains(&format!("burst-{i}-{tag}")),
            "deleted message {i} still stored in Postgres"
        );
    }
}

/// A message retention removed is, for changes and replies, a message that
/// does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_to_a_message_retention_removed_are_not_found() {
    use confab::chat::ChatMessage;
    use std::sync::Arc;
    let mut server = Server::builder()
        .set("storage", "retention_days", "1")
        .start();
    server.kill();
    let now = confab::protocol::now_ms();
    let old_id = uuid::Uuid::now_v7().to_string();
    let rows: Vec<Arc<ChatMessage>> = [
        (1u64, &old_id, 10 * 86_400_000i64),
        (2, &uuid::Uuid::now_v7().to_string(), 3_600_000),
    ]
    .into_iter()
    .map(|(seq, id, age)| {
        Arc::new(ChatMessage {
            room: "ret".into(),
            seq,
            id: id.clone(),
            user_id: "u-old".into(),
            user_name: "old".into(),
            content: format!("message {seq}"),
            timestamp_ms: now - age,
            client_ref: None,
            ..ChatMessage::default()
        })
    })
    .collect();
    let store = confab::store::sqlite::SqliteStore::open(&server.dir().join("confab.db"), 1)
        .await
        .expect("open");
    confab::store::Store::insert_batch(&store, rows)
        .await
        .expect("insert");
    drop(store);
    server.restart();
    history_until(&server, "ret", Duration::from_secs(15), |h| {
        seqs(h) == vec![2]
    })
    .await;

    // The author, so nothing but the message's absence refuses these.
    let mut author = Peer::new(&server, &token("u-old", "old")).await;
    author.join("ret").await;
    author.refuses_changes("ret", &old_id, "not_found").await;
    assert_eq!(author.send("ret", "still works").await["seq"], 3);
}

/// Resends sent back to back, before the first's ack: in one batch with the
/// first, or in the next one after the first changed the message. Each gets
/// the original's ack, not `unchanged` and not the error the rules would now
/// give (a known ref is answered before any other check).
#[tokio::test]
async fn resends_right_behind_the_original_get_its_ack() {
    let server = Server::start();
    let mut alice = Peer::user(&server, "alice").await;
    alice.join("burst").await;
    for round in 0..5 {
        let m = alice.send("burst", &format!("round {round}")).await;
        let id = s(&m["id"]);
        let edit = edit_f("burst", &id, &format!("round {round}, edited"));
        let del = delete_f("burst", &id);
        // edit, delete, edit again, delete again: all four at once.
        for f in [&edit, &del, &edit, &del] {
            alice.c.send_json(f.clone()).await;
        }
        let mut acks: Vec<Value> = Vec::new();
        while acks.len() < 4 {
            let v = alice.next().await;
            match v["type"].as_str() {
                Some("ack") | Some("error") => acks.push(v),
                _ => {}
            }
        }
        for a in &acks {
            assert_eq!(a["type"], "ack", "round {round}: {acks:?}");
            assert!(a.get("unchanged").is_none(), "round {round}: {acks:?}");
        }
        let by_ref =
            |r: &Value| -> Vec<&Value> { acks.iter().filter(|a| &a["ref"] == r).collect() };
        for f in [&edit, &del] {
            let same = by_ref(&f["ref"]);
            assert_eq!(same.len(), 2, "round {round}: {acks:?}");
            assert_eq!(same[0], same[1], "round {round}: one change, one ack");
        }
    }
    // Every round took exactly three seqs: the message, the edit, the delete.
    let history = server.history_all("burst", &reader()).await;
    assert_eq!(seqs(&history), vec![1, 4, 7, 10, 13]);
}

/// Cluster: a change resent through another instance that never saw it (its
/// room was not open then) is answered with the original ack, even though
/// the rules would now refuse it (the message was deleted since).
#[tokio::test(flavor = "multi_thread")]
async fn cluster_a_resend_through_another_instance_gets_the_original_ack() {
    let env = ClusterEnv::new();
    let (a, b) = (env.instance(), env.instance());
    let alice_sub = uid("alice");
    let mut on_a = Peer::new(&a, &token(&alice_sub, "alice")).await;
    on_a.join("again").await;
    let m = on_a.send("again", "first words").await;
    let id = s(&m["id"]);
    let edit = edit_f("again", &id, "second words");
    let first = on_a.ok(edit.clone()).await;
    on_a.ok(delete_f("again", &id)).await;

    // B opens the room only now: its window never saw the edit's ref.
    let mut on_b = Peer::new(&b, &token(&alice_sub, "alice")).await;
    on_b.join("again").await;
    assert_eq!(
        on_b.ask(edit).await,
        first,
        "the original ack, not message_deleted"
    );
    // A new edit is refused as usual.
    let refused = on_b.ask(edit_f("again", &id, "third words")).await;
    assert_eq!(refused["code"], "message_deleted", "{refused}");
}
