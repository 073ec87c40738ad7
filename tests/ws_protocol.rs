//! WebSocket protocol v1 (`/ws`): frames, ordering, replay/recovery,
//! presence, typing, error codes.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::Message;

fn assert_uuid(s: &Value, version: Option<usize>) {
    let s = s
        .as_str()
        .unwrap_or_else(|| panic!("uuid must be a string: {s}"));
    let u = uuid::Uuid::parse_str(s).unwrap_or_else(|e| panic!("not a uuid {s:?}: {e}"));
    if let Some(v) = version {
        assert_eq!(u.get_version_num(), v, "uuid {s} version");
    }
}

/// Assert the required fields of a live `message` frame.
fn assert_message_shape(m: &Value) {
    assert_eq!(m["type"], "message", "{m}");
    for k in [
        "room",
        "seq",
        "id",
        "user",
        "user_id",
        "content",
        "timestamp",
    ] {
        assert!(m.get(k).is_some(), "message frame lacks `{k}`: {m}");
    }
    assert!(m["seq"].is_i64(), "seq must be an integer: {m}");
    assert_uuid(&m["id"], Some(7));
    assert_timestamp(m);
}

async fn ping_pong(c: &mut Client) {
    c.send_json(json!({"type":"ping"})).await;
    let v = c.recv_main().await;
    assert_eq!(v, json!({"type":"pong"}), "connection must stay usable");
}

// ---------------------------------------------------------------------------
// welcome / join / joined
// ---------------------------------------------------------------------------

#[tokio::test]
async fn welcome_is_first_frame_with_session_and_user() {
    let s = Server::start();
    let sub = uid("u");
    let c = s.ws(&token(&sub, "alice")).await;
    let w = c.welcome.clone().unwrap();
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["v"], 1, "{w}");
    assert_uuid(&w["session"], None);
    assert_eq!(w["user"], json!({"id": sub, "name": "alice"}), "{w}");

    // Two connections get two sessions.
    let c2 = s.ws(&token(&sub, "alice")).await;
    assert_ne!(
        c2.welcome.as_ref().unwrap()["session"],
        w["session"],
        "each connection is its own session"
    );
}

#[tokio::test]
async fn join_empty_room_gives_last_seq_0_members_self_no_recovered() {
    let s = Server::start();
    let sub = uid("u");
    let mut c = s.ws(&token(&sub, "alice")).await;
    let j = c.join("empty-room").await;
    assert_eq!(j["last_seq"], 0, "{j}");
    assert!(
        j.get("recovered").is_none(),
        "recovered must be absent without since: {j}"
    );
    assert_eq!(j["members"], json!([{"id": sub, "name": "alice"}]), "{j}");
    c.expect_silence(300).await;
}

// ---------------------------------------------------------------------------
// send / ack / message
// ---------------------------------------------------------------------------

#[tokio::test]
async fn send_gives_ack_and_message_with_identical_id_seq_timestamp() {
    let s = Server::start();
    let sub = uid("u");
    let mut c = s.ws(&token(&sub, "alice")).await;
    c.join("general").await;
    for i in 1..=5i64 {
        let r = format!("c-{i}");
        let content = format!("hello {i}");
        let (ack, msg) = c.send_and_echo("general", &content, &r).await;
        assert_eq!(ack["type"], "ack");
        assert_eq!(ack["room"], "general", "{ack}");
        assert_eq!(ack["ref"], r.as_str(), "{ack}");
        assert_eq!(ack["seq"], i, "seq starts at 1 and increases by 1: {ack}");
        assert_message_shape(&msg);
        assert_eq!(msg["seq"], ack["seq"]);
        assert_eq!(msg["id"], ack["id"]);
        assert_eq!(msg["timestamp"], ack["timestamp"]);
        assert_eq!(msg["room"], "general");
        assert_eq!(msg["content"], content.as_str());
        assert_eq!(msg["user"], "alice");
        assert_eq!(msg["user_id"], sub.as_str());
    }
}

#[tokio::test]
async fn other_member_receives_message_and_seq_is_per_room() {
    let s = Server::start();
    let (ua, ub) = (uid("a"), uid("b"));
    let mut a = s.ws(&token(&ua, "alice")).await;
    let mut b = s.ws(&token(&ub, "bob")).await;
    a.join("r1").await;
    a.join("r2").await;
    b.join("r1").await;
    b.join("r2").await;

    let (ack1, _) = a.send_and_echo("r1", "in r1", "x1").await;
    let (ack2, _) = a.send_and_echo("r1", "in r1 again", "x2").await;
    let (ack3, _) = a.send_and_echo("r2", "in r2", "x3").await;
    assert_eq!(ack1["seq"], 1);
    assert_eq!(ack2["seq"], 2);
    assert_eq!(ack3["seq"], 1, "seq is per room: {ack3}");

    let got = b.recv_messages(3).await;
    let by_room: Vec<(String, i64, String)> = got
        .iter()
        .map(|m| {
            (
                m["room"].as_str().unwrap().to_string(),
                m["seq"].as_i64().unwrap(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let r1: Vec<_> = by_room.iter().filter(|x| x.0 == "r1").collect();
    assert_eq!(r1.len(), 2);
    assert_eq!((r1[0].1, r1[0].2.as_str()), (1, "in r1"));
    assert_eq!((r1[1].1, r1[1].2.as_str()), (2, "in r1 again"));
    for m in &got {
        assert_message_shape(m);
        assert_eq!(m["user"], "alice");
        assert_eq!(m["user_id"], ua.as_str());
        if m["seq"] == 1 && m["room"] == "r1" {
            assert_eq!(m["id"], ack1["id"]);
            assert_eq!(m["timestamp"], ack1["timestamp"]);
        }
    }
    // Joining again later: last_seq reflects the room's newest seq.
    let mut c = s.ws(&token(&uid("c"), "carol")).await;
    let j = c
        .join_with(json!({"type":"join","room":"r1","history":0}))
        .await;
    assert_eq!(j["last_seq"], 2, "{j}");
}

// ---------------------------------------------------------------------------
// join replay
// ---------------------------------------------------------------------------

#[tokio::test]
async fn join_replays_default_join_history_50_oldest_first() {
    let s = Server::start();
    let sent = populate(&s, "busy", 55, "m").await;
    let mut c = s.ws(&token(&uid("u"), "joiner")).await;
    let j = c.join("busy").await;
    assert_eq!(j["last_seq"], 55, "{j}");
    let replay = c.recv_messages(50).await;
    assert_eq!(seqs(&replay), (6..=55).collect::<Vec<_>>());
    for (m, orig) in replay.iter().zip(&sent[5..]) {
        assert_eq!(m, orig, "replayed frame equals the live frame");
    }
    c.expect_silence(300).await;
}

#[tokio::test]
async fn join_history_param_zero_some_and_clamped_to_100() {
    let s = Server::start();
    populate(&s, "h", 105, "m").await;
    let mut c = s.ws(&token(&uid("u"), "joiner")).await;

    let j = c
        .join_with(json!({"type":"join","room":"h","history":0}))
        .await;
    assert_eq!(j["last_seq"], 105);
    c.expect_silence(300).await;

    let mut c = s.ws(&token(&uid("u"), "joiner")).await;
    c.join_with(json!({"type":"join","room":"h","history":3}))
        .await;
    let r = c.recv_messages(3).await;
    assert_eq!(seqs(&r), vec![103, 104, 105]);
    c.expect_silence(300).await;

    let mut c = s.ws(&token(&uid("u"), "joiner")).await;
    c.join_with(json!({"type":"join","room":"h","history":500}))
        .await;
    let r = c.recv_messages(100).await;
    assert_eq!(seqs(&r), (6..=105).collect::<Vec<_>>(), "clamped to 100");
    c.expect_silence(300).await;
}

#[tokio::test]
async fn join_history_config_key_sets_default_replay() {
    let s = Server::builder().set("rooms", "join_history", "3").start();
    populate(&s, "cfg", 8, "m").await;
    let mut c = s.ws(&token(&uid("u"), "joiner")).await;
    c.join("cfg").await;
    assert_eq!(seqs(&c.recv_messages(3).await), vec![6, 7, 8]);
    c.expect_silence(300).await;
}

#[tokio::test]
async fn join_bad_history_or_since_is_invalid_frame() {
    let s = Server::start();
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    for frame in [
        json!({"type":"join","room":"r","history":-1}),
        json!({"type":"join","room":"r","history":"5"}),
        json!({"type":"join","room":"r","history":1.5}),
        json!({"type":"join","room":"r","since":-1}),
        json!({"type":"join","room":"r","since":"x"}),
    ] {
        c.send_json(frame.clone()).await;
        let e = c.recv_error().await;
        assert_eq!(e["code"], "invalid_frame", "{frame} -> {e}");
        assert_eq!(e["room"], "r", "error names the room: {e}");
    }
    ping_pong(&mut c).await;
}

/// Sends `n` messages to `room` from a fresh connection, yielding now and
/// then so a concurrent join lands in the middle. Returns when all are acked.
async fn background_sender(
    s_port: u16,
    room: String,
    n: usize,
    start: Arc<tokio::sync::Notify>,
) -> usize {
    let url = format!(
        "ws://127.0.0.1:{s_port}/ws?token={}",
        token(&uid("bg"), "bg")
    );
    let mut c = ws_connect_url(&url, &[]).await.expect("bg connect");
    let w = c.recv_json().await;
    assert_eq!(w["type"], "welcome");
    c.join_with(json!({"type":"join","room":room,"history":0}))
        .await;
    start.notify_one();
    let mut acked = 0;
    for i in 0..n {
        c.send_json(
            json!({"type":"send","room":room,"content":format!("bg {i}"),"ref":format!("bg-{i}")}),
        )
        .await;
        if i % 5 == 4 {
            // Wait for this batch's acks so the stream is spread in time.
            while acked < i + 1 {
                let v = c.recv_main().await;
                if v["type"] == "ack" {
                    acked += 1;
                } else {
                    assert_eq!(v["type"], "message", "{v}");
                }
            }
        }
    }
    while acked < n {
        let v = c.recv_main().await;
        if v["type"] == "ack" {
            acked += 1;
        }
    }
    acked
}

#[tokio::test]
async fn join_replay_then_live_has_no_gap_or_duplicate_at_seam() {
    let s = Server::start();
    populate(&s, "seam", 30, "pre").await;
    let start = Arc::new(tokio::sync::Notify::new());
    let bg = tokio::spawn(background_sender(s.port, "seam".into(), 200, start.clone()));
    start.notified().await;
    sleep_ms(30).await;
    let mut c = s.ws(&token(&uid("u"), "joiner")).await;
    let j = c
        .join_with(json!({"type":"join","room":"seam","history":10}))
        .await;
    let last = j["last_seq"].as_i64().unwrap();
    assert!((30..=230).contains(&last), "{j}");
    let expect_first = last - 9;
    let total = (230 - expect_first + 1) as usize;
    let got = c.recv_messages(total).await;
    assert_eq!(
        seqs(&got),
        (expect_first..=230).collect::<Vec<_>>(),
        "replay of 10 then live: contiguous, no duplicates (last_seq {last})"
    );
    assert_eq!(bg.await.unwrap(), 200);
    c.expect_no_type("message", 300).await;
}

#[tokio::test]
async fn join_since_recovers_missing_messages() {
    let s = Server::start();
    let sent = populate(&s, "rec", 10, "m").await;
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    let j = c
        .join_with(json!({"type":"join","room":"rec","since":4}))
        .await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(j["last_seq"], 10, "{j}");
    let got = c.recv_messages(6).await;
    assert_eq!(seqs(&got), (5..=10).collect::<Vec<_>>());
    assert_eq!(got, sent[4..].to_vec());
    c.expect_silence(300).await;

    // since == last_seq: recovered, nothing to replay, then live.
    let mut d = s.ws(&token(&uid("u"), "u")).await;
    let j = d
        .join_with(json!({"type":"join","room":"rec","since":10}))
        .await;
    assert_eq!(j["recovered"], true, "{j}");
    d.expect_silence(300).await;
    let ack = c.send_msg("rec", "live 11", "l11").await;
    assert_eq!(ack["seq"], 11);
    let m = d.recv_messages(1).await;
    assert_eq!(m[0]["seq"], 11);

    // since: 0 replays everything (10 + 1 <= recovery_max).
    let mut e = s.ws(&token(&uid("u"), "u")).await;
    let j = e
        .join_with(json!({"type":"join","room":"rec","since":0}))
        .await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(
        seqs(&e.recv_messages(11).await),
        (1..=11).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn join_since_seam_no_gap_no_duplicate_under_concurrent_sends() {
    let s = Server::start();
    populate(&s, "seam2", 20, "pre").await;
    let start = Arc::new(tokio::sync::Notify::new());
    let bg = tokio::spawn(background_sender(
        s.port,
        "seam2".into(),
        200,
        start.clone(),
    ));
    start.notified().await;
    sleep_ms(30).await;
    let mut c = s.ws(&token(&uid("u"), "recoverer")).await;
    let j = c
        .join_with(json!({"type":"join","room":"seam2","since":7}))
        .await;
    assert_eq!(j["recovered"], true, "{j}");
    let got = c.recv_messages(220 - 7).await;
    assert_eq!(
        seqs(&got),
        (8..=220).collect::<Vec<_>>(),
        "since recovery then live must be contiguous (last_seq {})",
        j["last_seq"]
    );
    assert_eq!(bg.await.unwrap(), 200);
    c.expect_no_type("message", 300).await;
}

#[tokio::test]
async fn join_since_past_recovery_max_is_not_recovered() {
    let s = Server::builder().set("rooms", "recovery_max", "5").start();
    populate(&s, "rm", 10, "m").await;

    // Exactly recovery_max missing: recovered.
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    let j = c
        .join_with(json!({"type":"join","room":"rm","since":5}))
        .await;
    assert_eq!(j["recovered"], true, "5 missing, recovery_max 5: {j}");
    assert_eq!(
        seqs(&c.recv_messages(5).await),
        (6..=10).collect::<Vec<_>>()
    );

    // More than recovery_max missing: not recovered, nothing replayed, live follows.
    let mut d = s.ws(&token(&uid("u"), "u")).await;
    let j = d
        .join_with(json!({"type":"join","room":"rm","since":4}))
        .await;
    assert_eq!(j["recovered"], false, "6 missing > recovery_max 5: {j}");
    assert_eq!(j["last_seq"], 10);
    // (Presence comes batched, so `c`'s arrival may still show up here.)
    d.expect_no_type("message", 400).await;
    c.send_msg("rm", "live", "live-1").await;
    let m = d.recv_messages(1).await;
    assert_eq!(m[0]["seq"], 11, "live messages still flow: {}", m[0]);
}

#[tokio::test]
async fn join_since_above_last_seq_is_not_recovered() {
    let s = Server::start();
    populate(&s, "ahead", 3, "m").await;
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    let j = c
        .join_with(json!({"type":"join","room":"ahead","since":50}))
        .await;
    assert_eq!(j["recovered"], false, "{j}");
    assert_eq!(j["last_seq"], 3, "{j}");
    c.expect_silence(400).await;
}

#[tokio::test]
async fn rejoin_is_answered_like_fresh_join_without_presence() {
    let s = Server::start();
    let (ua, ub) = (uid("a"), uid("b"));
    let mut a = s.ws(&token(&ua, "alice")).await;
    let mut b = s.ws(&token(&ub, "bob")).await;
    a.join("rj").await;
    b.join("rj").await;
    let p = a.recv_type("presence").await;
    assert_eq!(p["joined"], json!([{"id": ub, "name": "bob"}]), "{p}");
    a.send_msg("rj", "one", "r1").await;
    a.send_msg("rj", "two", "r2").await;
    b.recv_messages(2).await;

    // b re-joins with since: gets joined + replay, a sees no presence.
    let j = b
        .join_with(json!({"type":"join","room":"rj","since":0}))
        .await;
    assert_eq!(j["recovered"], true);
    assert_eq!(j["last_seq"], 2);
    assert_eq!(seqs(&b.recv_messages(2).await), vec![1, 2]);
    a.expect_no_type("presence", 500).await;

    // And b still receives live messages exactly once afterwards.
    a.send_msg("rj", "three", "r3").await;
    let m = b.recv_messages(1).await;
    assert_eq!(m[0]["seq"], 3);
    b.expect_no_type("message", 400).await;
}

// ---------------------------------------------------------------------------
// leave / not_joined
// ---------------------------------------------------------------------------

#[tokio::test]
async fn leave_gives_left_stops_delivery_and_informs_others() {
    let s = Server::start();
    let (ua, ub) = (uid("a"), uid("b"));
    let mut a = s.ws(&token(&ua, "alice")).await;
    let mut b = s.ws(&token(&ub, "bob")).await;
    a.join("lv").await;
    b.join("lv").await;
    a.recv_type("presence").await;

    b.send_json(json!({"type":"leave","room":"lv"})).await;
    let l = b.recv_main().await;
    assert_eq!(l, json!({"type":"left","room":"lv"}));
    let p = a.recv_type("presence").await;
    assert_eq!(p["room"], "lv");
    assert_eq!(p["left"], json!([{"id": ub, "name": "bob"}]), "{p}");

    a.send_msg("lv", "after leave", "al").await;
    b.expect_silence(400).await;

    // A second leave, a send and a typing for the left room: not_joined.
    b.send_json(json!({"type":"leave","room":"lv"})).await;
    let e = b.recv_error().await;
    assert_eq!(e["code"], "not_joined");
    assert_eq!(e["room"], "lv");
    b.send_json(json!({"type":"send","room":"lv","content":"x","ref":"b1"}))
        .await;
    let e = b.recv_error().await;
    assert_eq!(e["code"], "not_joined");
    b.send_json(json!({"type":"typing","room":"lv"})).await;
    let e = b.recv_error().await;
    assert_eq!(e["code"], "not_joined");
    ping_pong(&mut b).await;
}

#[tokio::test]
async fn not_joined_errors_echo_ref_and_room() {
    let s = Server::start();
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    c.send_json(json!({"type":"send","room":"nj","content":"hello","ref":"ref-nj-1"}))
        .await;
    let e = c.recv_error().await;
    assert_eq!(e["code"], "not_joined", "{e}");
    assert_eq!(e["ref"], "ref-nj-1", "{e}");
    assert_eq!(e["room"], "nj", "{e}");

    c.send_json(json!({"type":"leave","room":"nj2"})).await;
    let e = c.recv_error().await;
    assert_eq!(e["code"], "not_joined", "{e}");
    assert_eq!(e["room"], "nj2", "{e}");
    assert!(
        e.get("ref").is_none() || e["ref"].is_null(),
        "no ref to echo: {e}"
    );

    c.send_json(json!({"type":"typing","room":"nj3"})).await;
    let e = c.recv_error().await;
    assert_eq!(e["code"], "not_joined", "{e}");
    assert_eq!(e["room"], "nj3", "{e}");
    ping_pong(&mut c).await;
    // Not stored.
    assert!(s.history_all("nj", &token("r", "r")).await.is_empty());
}

// ---------------------------------------------------------------------------
// history over WS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ws_history_pages_oldest_first_with_next_before() {
    let s = Server::start();
    let sent = populate(&s, "wh", 30, "m").await;
    let mut c = s.ws(&token(&uid("u"), "reader")).await; // never joins

    c.send_json(json!({"type":"history","room":"wh","before":20,"limit":5}))
        .await;
    let h = c.recv_main().await;
    assert_eq!(h["type"], "history", "{h}");
    assert_eq!(h["room"], "wh");
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(seqs(msgs), vec![15, 16, 17, 18, 19]);
    assert_eq!(h["next_before"], 15);
    for m in msgs {
        let i = m["seq"].as_i64().unwrap() as usize - 1;
        assert_eq!(
            m,
            &strip_type(&sent[i]),
            "history entry = live frame minus type"
        );
    }

    // Default limit 50 and no before: the newest, here all 30, last page.
    c.send_json(json!({"type":"history","room":"wh"})).await;
    let h = c.recv_main().await;
    assert_eq!(
        seqs(h["messages"].as_array().unwrap()),
        (1..=30).collect::<Vec<_>>()
    );
    assert!(h["next_before"].is_null(), "{h}");

    // Exactly the oldest page: next_before null.
    c.send_json(json!({"type":"history","room":"wh","before":6,"limit":5}))
        .await;
    let h = c.recv_main().await;
    assert_eq!(seqs(h["messages"].as_array().unwrap()), vec![1, 2, 3, 4, 5]);
    assert!(h["next_before"].is_null(), "no older message: {h}");

    // Walk the whole room in pages of 7.
    let mut before: Option<i64> = None;
    let mut all = Vec::new();
    loop {
        let mut f = json!({"type":"history","room":"wh","limit":7});
        if let Some(b) = before {
            f["before"] = json!(b);
        }
        c.send_json(f).await;
        let h = c.recv_main().await;
        let mut page = seqs(h["messages"].as_array().unwrap());
        page.append(&mut all);
        all = page;
        match h["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(all, (1..=30).collect::<Vec<_>>());

    // Empty room.
    c.send_json(json!({"type":"history","room":"nothing-here"}))
        .await;
    let h = c.recv_main().await;
    assert_eq!(h["messages"], json!([]));
    assert!(h["next_before"].is_null());
}

#[tokio::test]
async fn ws_history_bad_cursor_is_invalid_cursor() {
    let s = Server::start();
    populate(&s, "wc", 3, "m").await;
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    for f in [
        json!({"type":"history","room":"wc","before":0}),
        json!({"type":"history","room":"wc","before":"abc"}),
        json!({"type":"history","room":"wc","before":-1}),
        json!({"type":"history","room":"wc","before":2.5}),
        json!({"type":"history","room":"wc","limit":0}),
        json!({"type":"history","room":"wc","limit":-1}),
        json!({"type":"history","room":"wc","limit":"ten"}),
    ] {
        c.send_json(f.clone()).await;
        let e = c.recv_error().await;
        assert_eq!(e["code"], "invalid_cursor", "{f} -> {e}");
        assert_eq!(e["room"], "wc", "{e}");
    }
    ping_pong(&mut c).await;
}

// ---------------------------------------------------------------------------
// typing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn typing_relayed_to_others_not_sender_and_throttled_2s() {
    let s = Server::start();
    let (ua, ub) = (uid("a"), uid("b"));
    let mut a = s.ws(&token(&ua, "alice")).await;
    let mut a2 = s.ws(&token(&ua, "alice")).await;
    let mut b = s.ws(&token(&ub, "bob")).await;
    a.join("ty").await;
    a2.join("ty").await;
    b.join("ty").await;
    a.expect_no_type("typing", 200).await;

    a.send_json(json!({"type":"typing","room":"ty"})).await;
    let t = b.recv_type("typing").await;
    assert_eq!(
        t,
        json!({"type":"typing","room":"ty","user":"alice","user_id":ua})
    );
    // Extra ones within 2 s are dropped silently.
    sleep_ms(100).await;
    a.send_json(json!({"type":"typing","room":"ty"})).await;
    a.send_json(json!({"type":"typing","room":"ty"})).await;
    b.expect_no_type("typing", 1200).await;
    // Not sent back to the sender (no connection of the sending user).
    a.expect_no_type("typing", 100).await;
    a2.expect_no_type("typing", 100).await;
    // No error either: a ping now gets a pong as the next frame.
    ping_pong(&mut a).await;

    // After 2 s the next one is relayed again.
    sleep_ms(900).await;
    a.send_json(json!({"type":"typing","room":"ty"})).await;
    let t = b.recv_type("typing").await;
    assert_eq!(t["user_id"], ua.as_str());

    // Another user's typing is independent of alice's window.
    b.send_json(json!({"type":"typing","room":"ty"})).await;
    let t = a.recv_type("typing").await;
    assert_eq!(t["user_id"], ub.as_str());

    // Typing is never stored.
    assert!(s.history_all("ty", &token("r", "r")).await.is_empty());
    let j = s.ws(&token(&uid("c"), "c")).await.join("ty").await.clone();
    assert_eq!(j["last_seq"], 0);
}

// ---------------------------------------------------------------------------
// presence
// ---------------------------------------------------------------------------

fn presence_list(p: &Value, key: &str) -> Vec<Value> {
    match p.get(key) {
        None | Some(Value::Null) => vec![],
        Some(v) => v.as_array().unwrap_or_else(|| panic!("{key}: {p}")).clone(),
    }
}

fn member_ids(j: &Value) -> Vec<String> {
    let mut ids: Vec<String> = j["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members: {j}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn presence_counts_a_user_once_across_two_connections() {
    let s = Server::start();
    let (ua, ub, uc) = (uid("a"), uid("b"), uid("c"));
    let mut a = s.ws(&token(&ua, "alice")).await;
    let j = a.join("pr").await;
    assert_eq!(member_ids(&j), vec![ua.clone()]);

    let mut b1 = s.ws(&token(&ub, "bob")).await;
    let j = b1.join("pr").await;
    let mut want = vec![ua.clone(), ub.clone()];
    want.sort();
    assert_eq!(member_ids(&j), want, "members include the joiner: {j}");
    assert!(j["members"]
        .as_array()
        .unwrap()
        .contains(&json!({"id": ub, "name": "bob"})));

    let p = a.recv_type("presence").await;
    assert_eq!(p["room"], "pr");
    assert_eq!(
        presence_list(&p, "joined"),
        vec![json!({"id": ub, "name": "bob"})]
    );
    assert!(presence_list(&p, "left").is_empty(), "{p}");

    // bob's second connection: no presence for alice, bob listed once.
    let mut b2 = s.ws(&token(&ub, "bob")).await;
    let j = b2.join("pr").await;
    assert_eq!(member_ids(&j), want, "a user counted once: {j}");
    a.expect_no_type("presence", 500).await;

    let mut c = s.ws(&token(&uc, "carol")).await;
    let j = c.join("pr").await;
    let mut want3 = vec![ua.clone(), ub.clone(), uc.clone()];
    want3.sort();
    assert_eq!(member_ids(&j), want3, "{j}");
    let p = a.recv_type("presence").await;
    assert_eq!(
        presence_list(&p, "joined"),
        vec![json!({"id": uc, "name": "carol"})]
    );

    // Online count over REST counts users.
    let rooms = s.get("/api/rooms").await.json();
    let pr = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pr")
        .cloned()
        .unwrap_or_else(|| panic!("room pr listed: {rooms}"));
    assert_eq!(pr["online"], 3, "3 users, 4 connections: {pr}");

    // bob's first connection leaves: still present through b2.
    b1.send_json(json!({"type":"leave","room":"pr"})).await;
    assert_eq!(b1.recv_main().await["type"], "left");
    a.expect_no_type("presence", 500).await;
    c.expect_no_type("presence", 10).await;

    // bob's last connection goes away (disconnect): left delta.
    b2.close().await;
    let p = a.recv_type("presence").await;
    assert_eq!(
        presence_list(&p, "left"),
        vec![json!({"id": ub, "name": "bob"})],
        "{p}"
    );
    assert!(presence_list(&p, "joined").is_empty(), "{p}");
    let p = c.recv_type("presence").await;
    assert_eq!(
        presence_list(&p, "left"),
        vec![json!({"id": ub, "name": "bob"})],
        "{p}"
    );

    let mut d = s.ws(&token(&uid("d"), "dave")).await;
    let j = d.join("pr").await;
    assert!(!member_ids(&j).contains(&ub), "bob gone: {j}");
}

// ---------------------------------------------------------------------------
// ping, errors
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ping_gets_pong() {
    let s = Server::start();
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    ping_pong(&mut c).await;
    ping_pong(&mut c).await;
}

#[tokio::test]
async fn invalid_json_error_and_connection_stays_usable() {
    let s = Server::start();
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    for bad in ["not json", "{\"type\":\"join\",", "", "{'type':'ping'}"] {
        c.send_text(bad).await;
        let e = c.recv_error().await;
        assert_eq!(e["code"], "invalid_json", "{bad:?} -> {e}");
        ping_pong(&mut c).await;
    }
    // Still able to join and send.
    c.join("after-errors").await;
    c.send_and_echo("after-errors", "ok", "ok-1").await;
}

#[tokio::test]
async fn invalid_frame_for_unknown_type_missing_or_mistyped_field_and_binary() {
    let s = Server::start();
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    c.join("if").await;
    // Collect every mismatch so one run reports all of them.
    let mut wrong: Vec<String> = Vec::new();
    for f in [
        json!({"type":"bogus"}),
        json!({"room":"if"}),
        json!({"type":"join"}),
        json!({"type":"join","room":5}),
        json!({"type":7}),
        json!({"type":"send","room":"if","content":5,"ref":"r-1"}),
        json!({"type":"send","room":"if","content":"x","ref":5}),
        json!({"type":"typing"}),
    ] {
        c.send_json(f.clone()).await;
        let e = c.recv_error().await;
        if e["code"] != "invalid_frame" {
            wrong.push(format!("{f} -> {e}"));
        }
    }
    // Missing content: echoes ref and room.
    c.send_json(json!({"type":"send","room":"if","ref":"r-miss"}))
        .await;
    let e = c.recv_error().await;
    if e["code"] != "invalid_frame" || e["ref"] != "r-miss" || e["room"] != "if" {
        wrong.push(format!(
            "missing content (want invalid_frame + ref + room) -> {e}"
        ));
    }

    c.send_binary(b"{\"type\":\"ping\"}".to_vec()).await;
    let e = c.recv_error().await;
    if e["code"] != "invalid_frame" {
        wrong.push(format!("binary message -> {e}"));
    }
    assert!(
        wrong.is_empty(),
        "expected invalid_frame:\n{}",
        wrong.join("\n")
    );
    ping_pong(&mut c).await;
    let (ack, _) = c.send_and_echo("if", "still fine", "fine").await;
    assert_eq!(ack["seq"], 1, "nothing was stored by the bad frames");
}

#[tokio::test]
async fn invalid_room_names_rejected_and_echoed() {
    let s = Server::start();
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    let long = "a".repeat(65);
    for room in [
        "",
        "has space",
        "slash/room",
        "emoji😀",
        "semi;colon",
        long.as_str(),
    ] {
        c.send_json(json!({"type":"join","room":room})).await;
        let e = c.recv_error().await;
        assert_eq!(e["code"], "invalid_room", "{room:?} -> {e}");
        assert_eq!(e["room"], room, "error carries the room: {e}");
    }
    // The whole allowed alphabet and 64 chars are fine.
    c.join("Az09_.:-").await;
    c.join(&"b".repeat(64)).await;
    ping_pong(&mut c).await;
}

#[tokio::test]
async fn empty_message_for_whitespace_only_content() {
    let s = Server::start();
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    c.join("em").await;
    for (i, content) in [
        "",
        " ",
        "\n\t \r",
        "\u{00A0}",
        "\u{3000}\u{2003}",
        "\u{2028}\u{0085}",
    ]
    .iter()
    .enumerate()
    {
        let r = format!("em-{i}");
        c.send_json(json!({"type":"send","room":"em","content":content,"ref":r}))
            .await;
        let e = c.recv_error().await;
        assert_eq!(e["code"], "empty_message", "{content:?} -> {e}");
        assert_eq!(e["ref"], r.as_str(), "{e}");
        assert_eq!(e["room"], "em", "{e}");
    }
    // U+200B is not White_Space: accepted.
    let (ack, m) = c.send_and_echo("em", "\u{200B}", "zw").await;
    assert_eq!(ack["seq"], 1);
    assert_eq!(m["content"], "\u{200B}");
}

#[tokio::test]
async fn message_too_long_counts_code_points_default_2000() {
    let s = Server::start();
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    c.join("long").await;
    let ok = "😀".repeat(2000); // 8000 bytes, 2000 code points
    let (ack, m) = c.send_and_echo("long", &ok, "ok2000").await;
    assert_eq!(ack["seq"], 1);
    assert_eq!(m["content"].as_str().unwrap().chars().count(), 2000);

    let bad = "😀".repeat(2001);
    c.send_json(json!({"type":"send","room":"long","content":bad,"ref":"bad2001"}))
        .await;
    let e = c.recv_error().await;
    assert_eq!(e["code"], "message_too_long", "{e}");
    assert_eq!(e["ref"], "bad2001");
    assert_eq!(e["room"], "long");

    let bad = "a".repeat(2001);
    c.send_json(json!({"type":"send","room":"long","content":bad,"ref":"bad-a"}))
        .await;
    assert_eq!(c.recv_error().await["code"], "message_too_long");
    let (ack, _) = c.send_and_echo("long", &"a".repeat(2000), "ok-a").await;
    assert_eq!(ack["seq"], 2, "rejected messages take no seq");
}

#[tokio::test]
async fn message_too_long_uses_configured_limit() {
    let s = Server::builder()
        .set("limits", "max_message_chars", "5")
        .start();
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    c.join("lim").await;
    c.send_and_echo("lim", "héllo", "a").await; // 5 cp, 6 bytes
    c.send_and_echo("lim", "😀😀😀😀😀", "b").await; // 5 cp, 20 bytes
    c.send_json(json!({"type":"send","room":"lim","content":"héllo!","ref":"c"}))
        .await;
    let e = c.recv_error().await;
    assert_eq!(e["code"], "message_too_long", "{e}");
    // Combining characters count as separate code points.
    c.send_json(json!({"type":"send","room":"lim","content":"e\u{301}e\u{301}e\u{301}","ref":"d"}))
        .await;
    assert_eq!(c.recv_error().await["code"], "message_too_long");
}

#[tokio::test]
async fn content_stored_and_delivered_exactly_as_sent() {
    let s = Server::start();
    let (ua, ub) = (uid("a"), uid("b"));
    let mut a = s.ws(&token(&ua, "alice")).await;
    let mut b = s.ws(&token(&ub, "bob")).await;
    a.join("exact").await;
    b.join("exact").await;
    let contents = [
        "  leading and trailing  ",
        "line1\nline2\r\n\tindented\n\n",
        "<b>bold</b> &amp; <script>alert(1)</script> \"dq\" 'sq' & < >",
        "emoji 👩‍👩‍👧 cafe\u{301} \\ backslash / slash",
        "\u{200B}zero width\u{FEFF}",
    ];
    for (i, content) in contents.iter().enumerate() {
        let (_, m) = a.send_and_echo("exact", content, &format!("x{i}")).await;
        assert_eq!(m["content"], *content);
    }
    let got = b.recv_messages(contents.len()).await;
    for (m, content) in got.iter().zip(contents) {
        assert_eq!(m["content"], content, "delivered verbatim");
    }
    let hist = s.history_all("exact", &token("r", "r")).await;
    let stored: Vec<&str> = hist
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(stored, contents.to_vec(), "stored verbatim (REST)");
    for (h, m) in hist.iter().zip(&got) {
        assert_eq!(
            h,
            &strip_type(m),
            "REST history entry = live frame minus type"
        );
    }
    b.send_json(json!({"type":"history","room":"exact"})).await;
    let h = b.recv_type("history").await;
    let ws_stored: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(ws_stored, contents.to_vec(), "stored verbatim (WS history)");
}

// ---------------------------------------------------------------------------
// ordering under concurrency
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordering_three_concurrent_senders_every_member_sees_1_to_n_once_in_order() {
    const PER: usize = 100;
    const TOTAL: usize = 3 * PER;
    let s = Server::start();
    let port = s.port;
    let barrier = Arc::new(tokio::sync::Barrier::new(5));
    let mut tasks = Vec::new();
    for k in 0..5usize {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let sub = format!("member-{k}-{}", uuid::Uuid::new_v4().simple());
            let url = format!("ws://127.0.0.1:{port}/ws?token={}", token(&sub, &format!("m{k}")));
            let mut c = ws_connect_url(&url, &[]).await.expect("connect");
            assert_eq!(c.recv_json().await["type"], "welcome");
            c.join_with(json!({"type":"join","room":"order","history":0}))
                .await;
            barrier.wait().await;
            let sender = k < 3;
            if sender {
                for i in 0..PER {
                    c.send_json(json!({"type":"send","room":"order","content":format!("s{k} n{i}"),"ref":format!("s{k}-{i}")}))
                        .await;
                }
            }
            let mut acks: Vec<Value> = Vec::new();
            let mut msgs: Vec<Value> = Vec::new();
            while msgs.len() < TOTAL || (sender && acks.len() < PER) {
                let v = c.recv_main().await;
                match v["type"].as_str() {
                    Some("ack") => acks.push(v),
                    Some("message") => msgs.push(v),
                    _ => panic!("member {k}: unexpected {v}"),
                }
            }
            c.expect_no_type("message", 300).await;
            (k, acks, msgs)
        }));
    }
    let mut reference: Option<Vec<Value>> = None;
    let mut all_acks: HashMap<String, Value> = HashMap::new();
    for t in tasks {
        let (k, acks, msgs) = t.await.unwrap();
        assert_eq!(
            seqs(&msgs),
            (1..=TOTAL as i64).collect::<Vec<_>>(),
            "member {k} sees 1..{TOTAL} once, in order"
        );
        match &reference {
            None => reference = Some(msgs.clone()),
            Some(r) => assert_eq!(r, &msgs, "member {k} sees the same frames as member 0"),
        }
        for a in acks {
            let r = a["ref"].as_str().unwrap().to_string();
            assert!(
                all_acks.insert(r.clone(), a).is_none(),
                "ref {r} acked twice"
            );
        }
    }
    assert_eq!(all_acks.len(), TOTAL);
    let reference = reference.unwrap();
    let mut ack_seqs = HashSet::new();
    for (r, a) in &all_acks {
        let seq = a["seq"].as_i64().unwrap();
        assert!(ack_seqs.insert(seq));
        let m = &reference[seq as usize - 1];
        assert_eq!(a["id"], m["id"], "{r}");
        assert_eq!(a["timestamp"], m["timestamp"], "{r}");
        // ref "s{k}-{i}" was sent with content "s{k} n{i}"
        let (sk, i) = r.split_once('-').unwrap();
        assert_eq!(
            m["content"],
            format!("{sk} n{i}"),
            "ack {r} names its message"
        );
    }
    // Per-sender FIFO is not required by the contract, but history must
    // match what every member saw.
    let hist = s.history_all("order", &token("r", "r")).await;
    let stripped: Vec<Value> = reference.iter().map(strip_type).collect();
    assert_eq!(hist, stripped, "history equals the live stream");
}

// ---------------------------------------------------------------------------
// ref idempotency
// ---------------------------------------------------------------------------

#[tokio::test]
async fn resend_with_same_ref_returns_original_ack_and_is_not_stored_twice() {
    let s = Server::start();
    let (ua, ub) = (uid("a"), uid("b"));
    let mut a = s.ws(&token(&ua, "alice")).await;
    let mut b = s.ws(&token(&ub, "bob")).await;
    a.join("idem").await;
    b.join("idem").await;
    let (ack1, _) = a.send_and_echo("idem", "first", "dup-1").await;
    assert_eq!(b.recv_messages(1).await[0]["content"], "first");

    // Same ref, different content: the original ack, nothing delivered.
    a.send_json(json!({"type":"send","room":"idem","content":"second","ref":"dup-1"}))
        .await;
    let again = a.recv_main().await;
    assert_eq!(again, ack1, "original ack");
    // Same ref, content that would fail a check: still the original ack.
    a.send_json(json!({"type":"send","room":"idem","content":"","ref":"dup-1"}))
        .await;
    assert_eq!(
        a.recv_main().await,
        ack1,
        "ref is checked before any other check"
    );
    // From another connection of the same user.
    let mut a2 = s.ws(&token(&ua, "alice")).await;
    a2.join_with(json!({"type":"join","room":"idem","history":0}))
        .await;
    a2.send_json(json!({"type":"send","room":"idem","content":"third","ref":"dup-1"}))
        .await;
    assert_eq!(
        a2.recv_main().await,
        ack1,
        "ref is per user across connections"
    );
    b.expect_no_type("message", 500).await;
    a.expect_no_type("message", 10).await;

    // Another user may use the same ref string.
    let (ackb, _) = b.send_and_echo("idem", "bob's", "dup-1").await;
    assert_eq!(ackb["seq"], 2);

    let hist = s.history_all("idem", &token("r", "r")).await;
    let contents: Vec<&str> = hist
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, vec!["first", "bob's"]);
}

// ---------------------------------------------------------------------------
// frame-level rules
// ---------------------------------------------------------------------------

#[tokio::test]
async fn frame_over_max_frame_bytes_closes_1009() {
    let s = Server::builder()
        .set("limits", "max_frame_bytes", "1024")
        .start();
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    c.join("big").await;
    c.send_and_echo("big", &"x".repeat(900), "small").await;
    let frame = json!({"type":"send","room":"big","content":"y".repeat(1500),"ref":"big"});
    c.send_text(&frame.to_string()).await;
    let closed = c.recv_close(Duration::from_secs(5)).await;
    assert_eq!(closed.code(), Some(1009), "{closed:?}");
    let hist = s.history_all("big", &token("r", "r")).await;
    assert_eq!(hist.len(), 1);
}

#[tokio::test]
async fn fragmented_message_over_max_frame_bytes_closes_1009() {
    let s = Server::builder()
        .set("limits", "max_frame_bytes", "1024")
        .start();
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    c.join("frag").await;
    let text =
        json!({"type":"send","room":"frag","content":"z".repeat(1500),"ref":"frag"}).to_string();
    let (first, rest) = text.as_bytes().split_at(700);
    c.send_raw(Message::Frame(WsFrame::message(
        first.to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    c.send_raw(Message::Frame(WsFrame::message(
        rest.to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await;
    let closed = c.recv_close(Duration::from_secs(5)).await;
    assert_eq!(closed.code(), Some(1009), "{closed:?}");
}

#[tokio::test]
async fn invalid_utf8_text_frame_closes_1007() {
    let s = Server::start();
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    c.send_raw(Message::Frame(WsFrame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        OpCode::Data(Data::Text),
        true,
    )))
    .await;
    let closed = c.recv_close(Duration::from_secs(5)).await;
    assert_eq!(closed.code(), Some(1007), "{closed:?}");
}

#[tokio::test]
async fn heartbeat_pings_keep_alive_and_silent_client_is_closed() {
    let s = Server::builder()
        .set("heartbeat", "interval_secs", "1")
        .set("heartbeat", "timeout_secs", "2")
        .start();
    let mut alive = s.ws(&token(&uid("a"), "alive")).await;
    let mut silent = s.ws(&token(&uid("s"), "silent")).await;
    // `alive` keeps reading, so tungstenite answers the server's pings.
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(3500);
    while let Ok(next) =
        tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut alive.ws)).await
    {
        match next {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("unexpected while idle: {other:?}"),
        }
    }
    assert!(pings >= 2, "a ping every interval_secs: got {pings}");
    ping_pong(&mut alive).await;
    // `silent` read nothing (so sent no pong) for longer than timeout_secs.
    let closed = silent.recv_close(Duration::from_secs(5)).await;
    assert_eq!(
        closed,
        Closed::Frame(1000, "heartbeat timeout".into()),
        "heartbeat timeout closes with 1000"
    );
}

/// PROTOCOL.md: "a join's replay counts as one" frame of `limits.session_queue`.
/// A recovery far larger than the queue must not close the connection with 1013.
#[tokio::test]
async fn join_replay_counts_as_one_queued_frame() {
    let s = Server::builder()
        .set("limits", "session_queue", "64")
        .set("rooms", "join_history", "100")
        .start();
    let sent = populate(&s, "big-replay", 300, "r").await;
    for since in [0u64, 250] {
        let mut c = s.ws(&token(&uid("u"), "u")).await;
        let j = c
            .join_with(json!({"type":"join","room":"big-replay","since":since}))
            .await;
        assert_eq!(j["recovered"], true, "{j}");
        let n = (300 - since) as usize;
        let got = c.recv_messages(n).await;
        assert_eq!(got, sent[since as usize..].to_vec());
        c.expect_no_type("message", 200).await;
    }
    // The newest-N replay from memory behaves the same.
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    c.join_with(json!({"type":"join","room":"big-replay"}))
        .await;
    let got = c.recv_messages(100).await;
    assert_eq!(got, sent[200..].to_vec());
}
