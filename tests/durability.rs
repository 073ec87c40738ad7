//! Durability: every acked message survives SIGKILL; seq continues after a
//! restart.

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::{json, Value};

/// Check that REST history of `room` after a restart contains every acked
/// message with the same seq, id, timestamp and content, that seqs are
/// exactly 1..=M, and return M.
async fn verify_acked(
    s: &Server,
    room: &str,
    acks: &[Value],
    content_of: &HashMap<String, String>,
) -> i64 {
    let hist = s.history_all(room, &token("auditor", "auditor")).await;
    let hs = seqs(&hist);
    let m = hs.len() as i64;
    assert_eq!(
        hs,
        (1..=m).collect::<Vec<_>>(),
        "{room}: seqs 1..M without gaps or duplicates"
    );
    assert!(
        m >= acks.len() as i64,
        "{room}: {} acked but only {m} in history",
        acks.len()
    );
    for a in acks {
        let seq = a["seq"].as_i64().unwrap();
        let h = &hist[seq as usize - 1];
        assert_eq!(h["id"], a["id"], "{room}: acked {a} vs stored {h}");
        assert_eq!(
            h["timestamp"], a["timestamp"],
            "{room}: acked {a} vs stored {h}"
        );
        let r = a["ref"].as_str().unwrap();
        assert_eq!(
            h["content"],
            content_of[r].as_str(),
            "{room}: content of {r}"
        );
    }
    // Every stored message is one that was sent (no phantom content).
    let sent: std::collections::HashSet<&str> = content_of.values().map(|s| s.as_str()).collect();
    for h in &hist {
        assert!(sent.contains(h["content"].as_str().unwrap()), "phantom {h}");
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_n_acks_loses_nothing_acked() {
    const N: usize = 150;
    let mut s = Server::start();
    let rooms = ["dur-a", "dur-b", "dur-c"];
    let mut c = s.ws(&token(&uid("w"), "writer")).await;
    for r in rooms {
        c.join_with(json!({"type":"join","room":r,"history":0}))
            .await;
    }
    let mut content_of: HashMap<String, String> = HashMap::new();
    for i in 0..N {
        let room = rooms[i % 3];
        let r = format!("k{i}");
        let content = format!("durable message {i} in {room}");
        content_of.insert(r.clone(), content.clone());
        c.send_json(json!({"type":"send","room":room,"content":content,"ref":r}))
            .await;
    }
    let mut acks: Vec<Value> = Vec::new();
    while acks.len() < N {
        let v = c.recv_main().await;
        match v["type"].as_str() {
            Some("ack") => acks.push(v),
            Some("message") => {}
            _ => panic!("unexpected {v}"),
        }
    }
    // The moment the N-th ack is in: SIGKILL.
    s.kill();
    drop(c);

    s.restart();
    for room in rooms {
        let room_acks: Vec<Value> = acks.iter().filter(|a| a["room"] == room).cloned().collect();
        assert_eq!(room_acks.len(), N / 3);
        let m = verify_acked(&s, room, &room_acks, &content_of).await;
        assert_eq!(m, (N / 3) as i64);
    }

    // seq continues after the restart; no reuse.
    let mut c = s.ws(&token(&uid("w"), "writer")).await;
    let j = c
        .join_with(json!({"type":"join","room":"dur-a","history":0}))
        .await;
    assert_eq!(j["last_seq"], (N / 3) as i64, "{j}");
    let (ack, _) = c.send_and_echo("dur-a", "after restart", "after").await;
    assert_eq!(ack["seq"], (N / 3) as i64 + 1);
    let ids: std::collections::HashSet<_> = acks.iter().map(|a| a["id"].clone()).collect();
    assert!(!ids.contains(&ack["id"]), "ids are unique across restarts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_keeps_every_acked_message() {
    const SENT: usize = 400;
    const KILL_AFTER: usize = 120;
    let mut s = Server::start();
    let mut c = s.ws(&token(&uid("w"), "writer")).await;
    c.join_with(json!({"type":"join","room":"mid","history":0}))
        .await;
    let mut content_of: HashMap<String, String> = HashMap::new();
    for i in 0..SENT {
        let r = format!("m{i}");
        let content = format!("mid-stream {i}");
        content_of.insert(r.clone(), content.clone());
        c.send_json(json!({"type":"send","room":"mid","content":content,"ref":r}))
            .await;
    }
    let mut acks: Vec<Value> = Vec::new();
    while acks.len() < KILL_AFTER {
        let v = c.recv_main().await;
        if v["type"] == "ack" {
            acks.push(v);
        } else {
            assert_eq!(v["type"], "message", "{v}");
        }
    }
    s.kill(); // more sends are still in flight
              // Acks that were already on the wire before the kill are acks too.
    while let Some(Frame::Json(v)) = c.next_frame(std::time::Duration::from_millis(500)).await {
        if v["type"] == "ack" {
            acks.push(v);
        }
    }
    drop(c);
    s.restart();
    let m = verify_acked(&s, "mid", &acks, &content_of).await;
    assert!(m <= SENT as i64);

    // Resending an acked ref after the restart must not store it twice.
    let mut c = s.ws(&token(&uid("w2"), "writer2")).await;
    let j = c
        .join_with(json!({"type":"join","room":"mid","history":0}))
        .await;
    assert_eq!(j["last_seq"], m);
}

#[tokio::test]
async fn restart_keeps_history_and_recovery_with_since() {
    let mut s = Server::start();
    let sent = populate(&s, "keep", 12, "m").await;
    s.kill();
    s.restart();
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    let j = c
        .join_with(json!({"type":"join","room":"keep","since":8}))
        .await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(j["last_seq"], 12);
    let got = c.recv_messages(4).await;
    assert_eq!(
        got,
        sent[8..].to_vec(),
        "replayed frames equal the originals"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sockets_1001_exits_0_and_keeps_acked() {
    let mut s = Server::builder()
        .set("server", "shutdown_grace_secs", "5")
        .start();
    let mut c = s.ws(&token(&uid("w"), "writer")).await;
    c.join("term").await;
    let mut acks = Vec::new();
    let mut content_of: HashMap<String, String> = HashMap::new();
    for i in 0..20 {
        let r = format!("t{i}");
        let content = format!("before sigterm {i}");
        content_of.insert(r.clone(), content.clone());
        acks.push(c.send_msg("term", &content, &r).await);
    }
    let pending_close =
        tokio::spawn(async move { c.recv_close(std::time::Duration::from_secs(10)).await });
    let status = tokio::task::block_in_place(|| s.terminate(std::time::Duration::from_secs(15)));
    assert_eq!(
        status.code(),
        Some(0),
        "graceful shutdown exits 0: {status}"
    );
    let closed = pending_close.await.unwrap();
    assert_eq!(
        closed.code(),
        Some(1001),
        "server shutting down: {closed:?}"
    );
    s.restart();
    verify_acked(&s, "term", &acks, &content_of).await;
}

/// SIGINT is a graceful shutdown too, and the whole shutdown stays within
/// `shutdown_grace_secs` even when a client stopped reading (its socket
/// buffers are full, so it can't take its close frame): exit 0 in time,
/// the reading client gets 1001, and every acked message survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_with_a_stalled_reader_exits_0_within_the_grace_period() {
    const GRACE_SECS: u64 = 3;
    let mut s = Server::builder()
        .set("server", "shutdown_grace_secs", &GRACE_SECS.to_string())
        // The stalled reader must not be closed as a slow consumer first.
        .set("limits", "session_queue", "100000")
        .set("limits", "messages_per_sec", "100000")
        .set("limits", "message_burst", "100000")
        .start();
    // Never reads again after its join: the flood below fills its buffers.
    let mut stalled = s.ws_user_small_buffer(&uid("s"), "stalled").await;
    stalled.join("int").await;
    let mut reader = s.ws(&token(&uid("r"), "reader")).await;
    reader.join("int").await;
    let mut writer = s.ws(&token(&uid("w"), "writer")).await;
    writer.join("int").await;

    // The reader keeps reading from the start, so no backlog of its own
    // delays its close frame (a backlog of megabytes still unread when the
    // grace period ends is cut off with the connection, which is not what
    // this test is about: the stalled client is).
    let reader_closed = tokio::spawn(async move {
        loop {
            match reader.next_frame(std::time::Duration::from_secs(30)).await {
                Some(Frame::Closed(closed)) => return closed,
                Some(_) => continue,
                None => panic!("reader: no close frame within 30 s"),
            }
        }
    });

    let big = "x".repeat(1900);
    let mut acks = Vec::new();
    let mut content_of: HashMap<String, String> = HashMap::new();
    // ~6 MB: more than the kernel buffers of the stalled socket hold.
    for i in 0..3000 {
        let r = format!("i{i}");
        let content = format!("{i} {big}");
        content_of.insert(r.clone(), content.clone());
        acks.push(writer.send_msg("int", &content, &r).await);
    }

    let started = std::time::Instant::now();
    let status =
        tokio::task::block_in_place(|| s.signal("-INT", std::time::Duration::from_secs(20)));
    let took = started.elapsed();
    eprintln!("shutdown took {took:?}");
    assert_eq!(status.code(), Some(0), "SIGINT exits 0: {status}");
    assert!(
        took < std::time::Duration::from_millis(GRACE_SECS * 1000 + 1000),
        "shutdown took {took:?}, shutdown_grace_secs = {GRACE_SECS}"
    );
    let closed = reader_closed.await.unwrap();
    assert_eq!(closed.code(), Some(1001), "{closed:?}");
    drop(stalled);
    s.restart();
    verify_acked(&s, "int", &acks, &content_of).await;
}

/// A database written before the 2026-12-01 migration (messages as a
/// WITHOUT ROWID table) keeps every message through it: same history, same
/// ids, and the room's seq continues after the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_written_before_the_rowid_migration_survive_it() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_path_buf();
    let db = data.join("confab.db");
    let mut conn =
        diesel::SqliteConnection::establish(db.to_str().expect("utf-8 path")).expect("open");
    conn.batch_execute(include_str!(
        "../migrations/sqlite/2026-11-23-000001_init/up.sql"
    ))
    .expect("old schema");
    conn.batch_execute(
        "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL, \
         run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);
         INSERT INTO __diesel_schema_migrations (version) VALUES ('20261123000001');
         INSERT INTO messages VALUES
           ('old', 1, '019ad000-0000-7000-8000-000000000001', 'u-1', 'alice', 'first, before', 1764000000000, 'r1'),
           ('old', 2, '019ad000-0000-7000-8000-000000000002', 'u-2', 'bob', 'second, before', 1764000001000, NULL);
         INSERT INTO rooms VALUES ('old', 2, 1764000000000);",
    )
    .expect("old rows");
    drop(conn);

    let s = Server::builder()
        .set(
            "storage",
            "data_dir",
            &toml_str(data.to_str().expect("utf-8")),
        )
        .start();
    let history = s.history_all("old", &token("reader", "reader")).await;
    assert_eq!(seqs(&history), vec![1, 2]);
    assert_eq!(history[0]["id"], "019ad000-0000-7000-8000-000000000001");
    assert_eq!(history[1]["content"], "second, before");
    let mut c = s.ws(&token(&uid("w"), "writer")).await;
    c.join("old").await;
    let ack = c.send_msg("old", "after the migration", "a1").await;
    assert_eq!(ack["seq"], 3, "{ack}");
}
