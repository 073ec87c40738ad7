//! The message pipeline off the hot path: analytics counters behind
//! `/api/rooms/{room}/stats` and the gauges (embedded, single Postgres and a
//! two-instance cluster), and retention (SQLite and Postgres), including
//! history and recovery at the retention boundary.

mod common;

use common::cluster::{ClusterEnv, TestDb};
use common::*;
use confab::chat::ChatMessage;
use confab::store::Store;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENGLISH: &str =
    "Hello everyone, I think we should meet tomorrow morning to discuss the new project plan";
const GERMAN: &str = "Der schnelle braune Fuchs springt über den faulen Hund und läuft weiter";

fn roomy(builder: ServerBuilder) -> ServerBuilder {
    builder
        .set("limits", "messages_per_sec", "1000")
        .set("limits", "message_burst", "1000")
        .set("moderation", "spam_repeats", "1000")
}

/// Polls the stats until `messages` reaches `want` (within `within`).
async fn stats_when(
    server: &Server,
    room: &str,
    query: &str,
    want: u64,
    within: Duration,
) -> Value {
    let tok = token("u-stats-reader", "reader");
    let deadline = Instant::now() + within;
    loop {
        let response = server
            .get_auth(&format!("/api/rooms/{room}/stats{query}"), &tok)
            .await;
        assert_eq!(response.status, 200, "{}", response.text());
        let stats = response.json();
        if stats["messages"] == want || Instant::now() >= deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// alice sends 3 English and 1 German message, bob 2 short ones ("und").
async fn chat(alice: &mut Client, bob: &mut Client, room: &str) {
    alice.join(room).await;
    bob.join(room).await;
    for i in 0..3 {
        alice
            .send_msg(room, &format!("{ENGLISH} {i}"), &format!("a{i}"))
            .await;
    }
    alice.send_msg(room, GERMAN, "a3").await;
    bob.send_msg(room, "ok", "b0").await;
    bob.send_msg(room, "k", "b1").await;
}

fn check_stats(stats: &Value, room: &str, window: &str) {
    assert_eq!(stats["room"], room, "{stats}");
    assert_eq!(stats["window"], window, "{stats}");
    assert_eq!(stats["messages"], 6, "{stats}");
    assert_eq!(stats["active_users"], 2, "{stats}");
    let top = stats["top_posters"].as_array().expect("top_posters");
    assert_eq!(top.len(), 2, "{stats}");
    assert_eq!(top[0]["user"], "alice", "most first: {stats}");
    assert_eq!(top[0]["messages"], 4);
    assert_eq!(top[1]["user_id"], "u-bob");
    assert_eq!(top[1]["messages"], 2);
    let languages: Vec<(String, u64)> = stats["languages"]
        .as_array()
        .expect("languages")
        .iter()
        .map(|l| {
            (
                l["lang"].as_str().unwrap_or_default().to_string(),
                l["messages"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        languages,
        vec![("eng".into(), 3), ("und".into(), 2), ("deu".into(), 1)],
        "{stats}"
    );
    let minutes = stats["per_minute"].as_array().expect("per_minute");
    let total: u64 = minutes
        .iter()
        .map(|m| m["messages"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, 6, "{stats}");
    for m in minutes {
        let minute = m["minute"].as_str().expect("minute");
        assert!(
            minute.len() == 20 && minute.ends_with(":00Z"),
            "minute like 2026-11-23T10:00:00Z: {minute}"
        );
    }
}

async fn stats_scenario(server: &mut Server) {
    let room = "stats-room";
    let mut alice = server.ws_user("u-alice", "alice").await;
    let mut bob = server.ws_user("u-bob", "bob").await;
    chat(&mut alice, &mut bob, room).await;
    let stats = stats_when(server, room, "", 6, Duration::from_secs(10)).await;
    check_stats(&stats, room, "24h");
    for window in ["1h", "7d"] {
        let stats = stats_when(
            server,
            room,
            &format!("?window={window}"),
            6,
            Duration::from_secs(2),
        )
        .await;
        check_stats(&stats, room, window);
    }
    // The gauges carry the same counts.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = server.get("/metrics").await.text();
        let line = format!("confab_room_messages{{room=\"{room}\",window=\"24h\"}} 6");
        let alt = format!("confab_room_messages{{window=\"24h\",room=\"{room}\"}} 6");
        if text.contains(&line) || text.contains(&alt) {
            break;
        }
        assert!(Instant::now() < deadline, "no gauge for the room:\n{text}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Edits, reactions and deletes are not new messages: they take seqs, the
    // counters skip them and count what follows.
    let mut carol = server.ws_user("u-carol", "carol").await;
    carol
        .join_with(json!({"type":"join","room":room,"history":0}))
        .await;
    let (ack, _) = carol.send_and_echo(room, "to be edited", "k2").await;
    let id = ack["id"].clone();
    for change in [
        json!({"type":"edit","room":room,"id":id,"content":"edited","ref":"e1"}),
        json!({"type":"react","room":room,"id":id,"emoji":"👍","ref":"e2"}),
        json!({"type":"delete","room":room,"id":id,"ref":"e3"}),
    ] {
        carol.send_json(change).await;
        carol.recv_type("ack").await;
    }
    carol.send_msg(room, "after the changes", "k3").await;
    let stats = stats_when(server, room, "", 8, Duration::from_secs(10)).await;
    assert_eq!(stats["messages"], 8, "changes don't count: {stats}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = stats_when(server, room, "", 8, Duration::from_secs(1)).await;
    assert_eq!(stats["messages"], 8, "{stats}");
    // Crash right after more acks: after a restart every message is counted once.
    for i in 0..5 {
        alice
            .send_msg(room, &format!("after {i}"), &format!("c{i}"))
            .await;
    }
    server.kill();
    server.restart();
    let stats = stats_when(server, room, "", 13, Duration::from_secs(15)).await;
    assert_eq!(stats["messages"], 13, "{stats}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = stats_when(server, room, "", 13, Duration::from_secs(1)).await;
    assert_eq!(stats["messages"], 13, "counted once: {stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_messages_posters_languages_and_minutes_sqlite() {
    let mut server = roomy(Server::builder()).start();
    stats_scenario(&mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_messages_posters_languages_and_minutes_postgres() {
    let db = TestDb::create();
    let mut server = roomy(Server::builder())
        .set("storage", "url", &toml_str(&db.url()))
        .start();
    stats_scenario(&mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_counts_each_message_once_across_instances() {
    let env = ClusterEnv::new();
    let a = roomy(env.builder()).start();
    let b = roomy(env.builder()).start();
    let room = "cluster-stats";
    let mut alice = a.ws_user("u-alice", "alice").await;
    let mut bob = b.ws_user("u-bob", "bob").await;
    alice.join(room).await;
    bob.join(room).await;
    for i in 0..40 {
        alice
            .send_msg(room, &format!("{ENGLISH} a{i}"), &format!("a{i}"))
            .await;
        bob.send_msg(room, &format!("{GERMAN} b{i}"), &format!("b{i}"))
            .await;
    }
    let stats = stats_when(&a, room, "", 80, Duration::from_secs(10)).await;
    assert_eq!(stats["messages"], 80, "{stats}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for server in [&a, &b] {
        let stats = stats_when(server, room, "", 80, Duration::from_secs(1)).await;
        assert_eq!(stats["messages"], 80, "each message counted once: {stats}");
        assert_eq!(stats["active_users"], 2);
    }
    // Both groups read the persist stream, and acknowledged entries leave it.
    let stream = format!("{}:persist", env.ns.0);
    let groups = common::cluster::redis_cli(&["XINFO", "GROUPS", &stream]);
    assert!(
        groups.contains("analytics") && groups.contains("persist"),
        "{groups}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let len = common::cluster::redis_cli(&["XLEN", &stream]);
        if len.trim() == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream was not trimmed: {len} entries"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn stats_refuse_bad_windows_rooms_and_tokens() {
    let server = Server::builder().set("auth", "guest", "false").start();
    let tok = token("u-s", "s");
    let bad = server.get_auth("/api/rooms/r1/stats?window=2h", &tok).await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(bad.json()["error"]["code"], "invalid_window");
    let bad_room = server.get_auth("/api/rooms/bad%20room/stats", &tok).await;
    assert_eq!(bad_room.status, 400);
    assert_eq!(bad_room.json()["error"]["code"], "invalid_room");
    let limited = token_rooms("u-s", "s", &["other"]);
    let forbidden = server.get_auth("/api/rooms/r1/stats", &limited).await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.json()["error"]["code"], "forbidden_room");
    let anonymous = server.get("/api/rooms/r1/stats").await;
    assert_eq!(anonymous.status, 401);
    let empty = server.get_auth("/api/rooms/r1/stats", &tok).await.json();
    assert_eq!(
        empty,
        json!({"room":"r1","window":"24h","messages":0,"active_users":0,
               "top_posters":[],"languages":[],"per_minute":[]})
    );
}

// ------------------------------------------------------------------ retention

const DAY_MS: i64 = 86_400_000;

fn old_and_new(room: &str) -> Vec<Arc<ChatMessage>> {
    let now = confab::protocol::now_ms();
    (1..=15u64)
        .map(|seq| {
            Arc::new(ChatMessage {
                room: room.to_string(),
                seq,
                id: uuid::Uuid::now_v7().to_string(),
                user_id: "u-old".into(),
                user_name: "old".into(),
                content: format!("message {seq}"),
                // 1..=10 are ten days old, 11..=15 an hour old.
                timestamp_ms: if seq <= 10 {
                    now - 10 * DAY_MS
                } else {
                    now - 3_600_000
                },
                client_ref: None,
                ..ChatMessage::default()
            })
        })
        .collect()
}

/// Stops the server, writes ten-day-old and hour-old messages into its SQLite
/// file, and starts it again.
async fn seed_stopped_sqlite(server: &mut Server, room: &str) {
    server.kill();
    let path = server.dir().join("confab.db");
    let store = confab::store::sqlite::SqliteStore::open(&path, 1)
        .await
        .expect("open");
    store.insert_batch(old_and_new(room)).await.expect("insert");
    drop(store);
    server.restart();
}

async fn retention_scenario(server: &Server, room: &str) {
    let tok = token("u-r", "r");
    let deadline = Instant::now() + Duration::from_secs(10);
    let seqs = loop {
        let seqs: Vec<u64> = server
            .history_all(room, &tok)
            .await
            .iter()
            .filter_map(|m| m["seq"].as_u64())
            .collect();
        if seqs.first() == Some(&11) || Instant::now() >= deadline {
            break seqs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        seqs,
        (11..=15).collect::<Vec<_>>(),
        "old messages deleted within 10 s"
    );
    // A page that reaches the boundary says there is nothing older.
    let page = server.history(room, "before=13&limit=5", &tok).await.json();
    let got: Vec<u64> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    assert_eq!(got, vec![11, 12]);
    assert_eq!(page["next_before"], Value::Null, "{page}");
    // Recovery across deleted messages is not `recovered`: nothing replayed.
    let mut c = server.ws_user("u-rec", "rec").await;
    let joined = c
        .join_with(json!({"type":"join","room":room,"since":5}))
        .await;
    assert_eq!(joined["recovered"], false, "{joined}");
    assert_eq!(joined["last_seq"], 15);
    // Recovery within what is kept replays it.
    let mut d = server.ws_user("u-rec2", "rec2").await;
    let joined = d
        .join_with(json!({"type":"join","room":room,"since":11}))
        .await;
    assert_eq!(joined["recovered"], true, "{joined}");
    for seq in 12..=15 {
        assert_eq!(d.recv_type("message").await["seq"], seq);
    }
    // Nothing was replayed to the first one: its next frame is a live message.
    d.send_msg(room, "live", "l1").await;
    let next = c.recv_type("message").await;
    assert_eq!(next["seq"], 16, "{next}");
    // New messages continue the room's seqs.
    assert!(
        server.log_text().contains("retention"),
        "a retention pass logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_messages_and_keeps_boundaries_exact_sqlite() {
    let mut server = Server::builder()
        .set("storage", "retention_days", "2")
        .start();
    seed_stopped_sqlite(&mut server, "kept").await;
    retention_scenario(&server, "kept").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_messages_and_keeps_boundaries_exact_postgres() {
    let db = TestDb::create();
    let store = confab::store::postgres::PgStore::open(&db.url(), 1)
        .await
        .expect("open");
    store
        .insert_batch(old_and_new("kept"))
        .await
        .expect("insert");
    drop(store);
    let server = Server::builder()
        .set("storage", "url", &toml_str(&db.url()))
        .set("storage", "retention_days", "2")
        .start();
    retention_scenario(&server, "kept").await;
}

#[tokio::test]
async fn retention_off_keeps_everything() {
    let mut server = Server::start();
    seed_stopped_sqlite(&mut server, "forever").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let all = server.history_all("forever", &token("u-f", "f")).await;
    assert_eq!(all.len(), 15, "retention_days = 0 keeps everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_counts_exactly_once_when_an_instance_dies_mid_count() {
    let env = ClusterEnv::new();
    let mut a = roomy(env.builder()).start();
    let b = roomy(env.builder()).start();
    let room = "crash-stats";
    let mut alice = a.ws_user("u-alice", "alice").await;
    alice.join(room).await;
    for i in 0..30 {
        alice
            .send_msg(room, &format!("{ENGLISH} {i}"), &format!("k{i}"))
            .await;
    }
    // Killed right after the acks: its entries may sit read but uncounted
    // (and unpersisted) in its name. The other instance takes them over.
    a.kill();
    let stats = stats_when(&b, room, "", 30, Duration::from_secs(45)).await;
    assert_eq!(stats["messages"], 30, "{stats}");
    // The dead instance comes back with its old entries: still counted once.
    a.restart();
    tokio::time::sleep(Duration::from_secs(4)).await;
    for server in [&a, &b] {
        let stats = stats_when(server, room, "", 30, Duration::from_secs(1)).await;
        assert_eq!(stats["messages"], 30, "counted once: {stats}");
        assert_eq!(stats["top_posters"][0]["messages"], 30);
    }
}
