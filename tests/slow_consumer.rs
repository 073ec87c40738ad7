//! Slow consumers: a client that stops reading must not slow the room or its
//! other members. It is closed with 1013 when its queue overflows, and cut off
//! by the kernel when its socket stays full past the heartbeat timeout.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const FLOOD: usize = 6000;
const PADDING: usize = 1900;

fn flood_content(i: usize) -> String {
    format!("{i:05} {}", "x".repeat(PADDING))
}

/// What the observer saw: arrival time per message index, and whether the
/// stalled user's presence left the room.
struct Observed {
    arrivals: Vec<Instant>,
    seqs: Vec<u64>,
    left_users: Vec<String>,
}

/// The `seq` of a message frame, read without parsing the (large) frame:
/// a debug-build JSON parse per frame would make the test client itself the
/// slow consumer.
fn message_seq(frame: &str) -> Option<u64> {
    if !frame.starts_with("{\"type\":\"message\"") {
        return None;
    }
    let at = frame.find("\"seq\":")? + 6;
    let digits: String = frame[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Reads `c` until it has `FLOOD` messages and (if asked) saw `wait_left`
/// leave, with a deadline.
async fn observe(c: Client, wait_left: Option<String>, within: Duration) -> Observed {
    let deadline = tokio::time::Instant::now() + within;
    let mut ws = c.ws;
    let mut seen = Observed {
        arrivals: Vec::new(),
        seqs: Vec::new(),
        left_users: Vec::new(),
    };
    loop {
        let done_msgs = seen.arrivals.len() >= FLOOD;
        let done_left = wait_left
            .as_ref()
            .is_none_or(|u| seen.left_users.contains(u));
        if done_msgs && done_left {
            return seen;
        }
        let text = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(Message::Close(how)))) => panic!("the observer was closed: {how:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("the observer's stream ended: {other:?}"),
            Err(_) => panic!(
                "observer: {} of {FLOOD} messages, left users {:?} (waiting for {wait_left:?})",
                seen.arrivals.len(),
                seen.left_users
            ),
        };
        if let Some(seq) = message_seq(text.as_str()) {
            seen.arrivals.push(Instant::now());
            seen.seqs.push(seq);
            continue;
        }
        let v: Value = serde_json::from_str(text.as_str()).expect("json");
        match v["type"].as_str() {
            Some("presence") => {
                for u in v["left"].as_array().into_iter().flatten() {
                    seen.left_users
                        .push(u["id"].as_str().unwrap_or("").to_string());
                }
            }
            Some("error") => panic!("the observer got an error: {v}"),
            _ => {}
        }
    }
}

/// Most sends in flight without an ack: a sender that pipelines without
/// reading its acks is itself a slow consumer.
const WINDOW: usize = 200;

/// Sends `FLOOD` messages as fast as acks come back (a window of `WINDOW`),
/// reading its own acks and echoes on the side. Returns the send time of each
/// message by index.
async fn flood(sender: Client, room: &str) -> Vec<Instant> {
    let (mut sink, mut stream) = sender.ws.split();
    let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let reader = tokio::spawn({
        let window = window.clone();
        async move {
            let mut acks = 0;
            while acks < FLOOD {
                match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        if t.starts_with("{\"type\":\"ack\"") {
                            acks += 1;
                            window.add_permits(1);
                        } else if t.starts_with("{\"type\":\"error\"") {
                            panic!("the sender got an error: {t}");
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    other => panic!("the sender's stream ended after {acks} acks: {other:?}"),
                }
            }
            stream
        }
    });
    let mut sent = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        window.acquire().await.expect("window").forget();
        let frame =
            json!({"type":"send","room":room,"content":flood_content(i),"ref":format!("f{i}")});
        sent.push(Instant::now());
        sink.send(Message::text(frame.to_string()))
            .await
            .expect("flood send");
    }
    let _stream = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("acks within 60 s")
        .expect("reader task");
    sent
}

fn latencies_ms(sent: &[Instant], seen: &Observed) -> (u128, u128, u128) {
    let mut l: Vec<u128> = sent
        .iter()
        .zip(&seen.arrivals)
        .map(|(s, a)| a.saturating_duration_since(*s).as_millis())
        .collect();
    l.sort_unstable();
    let pick = |q: f64| l[((l.len() - 1) as f64 * q) as usize];
    (pick(0.5), pick(0.99), *l.last().unwrap_or(&0))
}

fn assert_in_order(seen: &Observed) {
    let first = seen.seqs[0];
    for (i, seq) in seen.seqs.iter().enumerate() {
        assert_eq!(
            *seq,
            first + i as u64,
            "the observer's deliveries have a gap"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_reader_is_closed_1013_while_others_keep_up() {
    let s = Server::builder()
        .set("rooms", "recovery_max", "100000")
        .set("limits", "messages_per_sec", "1000000")
        .set("limits", "message_burst", "1000000")
        .set("heartbeat", "interval_secs", "30")
        .set("heartbeat", "timeout_secs", "120")
        .start();
    let room = "flood";
    let stalled_user = uid("stalled");
    let mut stalled = s.ws_user_small_buffer(&stalled_user, "stalled").await;
    stalled.join(room).await;
    let mut observer = s.ws_user(&uid("observer"), "observer").await;
    observer.join(room).await;
    let mut sender = s.ws_user(&uid("sender"), "sender").await;
    sender.join(room).await;

    // From here on the stalled client reads nothing.
    let watching = tokio::spawn(observe(
        observer,
        Some(stalled_user.clone()),
        Duration::from_secs(60),
    ));
    let sent = flood(sender, room).await;
    let seen = watching.await.expect("observer task");

    assert_eq!(seen.arrivals.len(), FLOOD);
    assert_in_order(&seen);
    let (p50, p99, max) = latencies_ms(&sent, &seen);
    eprintln!("observer latency during the flood: p50 {p50} ms, p99 {p99} ms, max {max} ms");
    // Generous: a room blocked on the stalled member would never deliver.
    assert!(max < 10_000, "the observer waited {max} ms for a message");

    // The stalled client, reading again, finds everything up to the cut and
    // then the 1013 close that tells it to rejoin with `since`.
    let mut last_seq = 0;
    let how = loop {
        match stalled.next_frame(Duration::from_secs(15)).await {
            Some(Frame::Json(v)) if v["type"] == "message" => {
                let seq = v["seq"].as_u64().expect("seq");
                assert!(seq > last_seq, "out of order after the stall");
                last_seq = seq;
            }
            Some(Frame::Closed(how)) => break how,
            Some(_) => {}
            None => panic!("the stalled client was not closed (last seq {last_seq})"),
        }
    };
    assert_eq!(how.code(), Some(1013), "{how:?}");
    assert!(
        (last_seq as usize) < FLOOD,
        "the stalled client got every message; nothing was slow"
    );

    // The room goes on, and the user can come back and catch up with `since`.
    let mut back = s.ws_user(&stalled_user, "stalled").await;
    back.send_json(json!({"type":"join","room":room,"since":last_seq}))
        .await;
    let joined = back.recv_type("joined").await;
    assert_eq!(joined["recovered"], true, "{joined}");
    let mut next = last_seq + 1;
    while next <= FLOOD as u64 {
        let m = back.recv_type("message").await;
        assert_eq!(m["seq"], next);
        next += 1;
    }
    back.send_msg(room, "I'm back", "back-1").await;
    let metrics = s.get("/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "confab_slow_consumer_disconnects_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_stalled_past_the_heartbeat_timeout_is_cut_off() {
    // A queue large enough never to overflow: only the stalled socket is left
    // to notice. The session can't run (actix stops polling it while the
    // socket is full), so its heartbeat can't either; the kernel's
    // TCP_USER_TIMEOUT has to end the connection.
    let s = Server::builder()
        .set("limits", "session_queue", "100000")
        .set("limits", "messages_per_sec", "1000000")
        .set("limits", "message_burst", "1000000")
        .set("heartbeat", "interval_secs", "1")
        .set("heartbeat", "timeout_secs", "2")
        .start();
    let room = "stall";
    let stalled_user = uid("stalled");
    let mut stalled = s.ws_user_small_buffer(&stalled_user, "stalled").await;
    stalled.join(room).await;
    let mut observer = s.ws_user(&uid("observer"), "observer").await;
    observer.join(room).await;
    let mut sender = s.ws_user(&uid("sender"), "sender").await;
    sender.join(room).await;

    let watching = tokio::spawn(observe(
        observer,
        Some(stalled_user.clone()),
        Duration::from_secs(40),
    ));
    let sent = flood(sender, room).await;
    let seen = watching.await.expect("observer task");
    assert_in_order(&seen);
    let (p50, p99, max) = latencies_ms(&sent, &seen);
    eprintln!("observer latency during the flood: p50 {p50} ms, p99 {p99} ms, max {max} ms");

    // The stalled connection is gone: reading it ends without a full flood.
    let mut count = 0;
    loop {
        match stalled.next_frame(Duration::from_secs(10)).await {
            Some(Frame::Json(v)) if v["type"] == "message" => count += 1,
            Some(Frame::Closed(_)) => break,
            Some(_) => {}
            None => panic!("the stalled connection is still open"),
        }
    }
    assert!(count < FLOOD, "the stalled client received everything");
}
