//! Hostile input: many connections throwing random bytes, malformed frames and
//! protocol abuse at the server while well-behaved clients keep chatting. The
//! server must answer every bad frame with a structured error (or the
//! documented close), never crash, keep /healthz at 200, and lose or reorder
//! nothing for the good clients.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WireFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

const HOSTILE_CONNECTIONS: usize = 40;
const FRAMES_PER_ROUND: usize = 12;
const ROUNDS: usize = 3;
const RAW_TCP_CONNECTIONS: usize = 20;
const GOOD_MESSAGES: usize = 60;

/// Error codes a bad frame may earn. Anything else (notably an internal error)
/// fails the test.
const ALLOWED_CODES: &[&str] = &[
    "invalid_json",
    "invalid_frame",
    "invalid_room",
    "invalid_name",
    "empty_message",
    "message_too_long",
    "not_joined",
    "invalid_cursor",
    "rate_limited",
    "spam",
    "prohibited_content",
];

/// Valid frames the mutator starts from; rooms are kept away from the good
/// clients' room so a lucky mutation can't post there.
const TEMPLATES: &[&str] = &[
    r#"{"type":"join","room":"junk"}"#,
    r#"{"type":"join","room":"junk","history":5}"#,
    r#"{"type":"join","room":"junk","since":3}"#,
    r#"{"type":"leave","room":"junk"}"#,
    r#"{"type":"send","room":"junk","content":"hello","ref":"r1"}"#,
    r#"{"type":"typing","room":"junk"}"#,
    r#"{"type":"history","room":"junk","before":10,"limit":5}"#,
    r#"{"type":"ping"}"#,
];

/// Hand-picked malformed frames: wrong types, edge numbers, deep nesting,
/// escapes that don't decode, NUL, huge fields.
fn classic_bad_frames() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        " ",
        "null",
        "[]",
        "{}",
        "\"join\"",
        "12345678901234567890123456789",
        "{\"type\":null}",
        "{\"type\":42}",
        "{\"type\":\"join\"}",
        "{\"type\":\"join\",\"room\":7}",
        "{\"type\":\"join\",\"room\":\"\"}",
        "{\"type\":\"join\",\"room\":\"../../etc/passwd\"}",
        "{\"type\":\"join\",\"room\":\"junk\",\"history\":-1}",
        "{\"type\":\"join\",\"room\":\"junk\",\"history\":1e400}",
        "{\"type\":\"join\",\"room\":\"junk\",\"since\":18446744073709551616}",
        "{\"type\":\"join\",\"room\":\"junk\",\"since\":\"3\"}",
        "{\"type\":\"send\",\"room\":\"junk\",\"content\":null}",
        "{\"type\":\"send\",\"room\":\"junk\",\"content\":\"a\\u0000b\"}",
        "{\"type\":\"send\",\"room\":\"junk\",\"content\":\"\\ud800\"}",
        "{\"type\":\"send\",\"room\":\"junk\",\"content\":\"ok\",\"ref\":{}}",
        "{\"type\":\"send\",\"room\":\"lobby\",\"content\":\"not joined\"}",
        "{\"type\":\"history\",\"room\":\"junk\",\"before\":\"abc\"}",
        "{\"type\":\"history\",\"room\":\"junk\",\"limit\":-5}",
        "{\"type\":\"ping\",\"type\":\"pong\"}",
        "{\"type\":\"ping\"",
        "{\"type\":\"ping\"}}",
        "{\"type\":\"ping\"} trailing",
        "\u{feff}{\"type\":\"ping\"}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("[".repeat(10_000));
    v.push(format!("{}1{}", "{\"a\":".repeat(3000), "}".repeat(3000)));
    v.push(format!(
        "{{\"type\":\"send\",\"room\":\"junk\",\"content\":\"{}\"}}",
        "é".repeat(2500)
    ));
    v.push(format!(
        "{{\"type\":\"join\",\"room\":\"{}\"}}",
        "r".repeat(5000)
    ));
    v
}

fn random_text(rng: &mut StdRng) -> String {
    let len = rng.random_range(0..300);
    match rng.random_range(0..3) {
        // Printable ASCII soup, heavy on JSON punctuation.
        0 => (0..len)
            .map(|_| {
                let pool = b"{}[]\":,\\ 0123456789abcdeftrunlTYPEtype";
                pool[rng.random_range(0..pool.len())] as char
            })
            .collect(),
        // Any Unicode scalar values, control characters included.
        1 => (0..len)
            .map(|_| loop {
                if let Some(c) = char::from_u32(rng.random_range(0..0x11_0000)) {
                    break c;
                }
            })
            .collect(),
        // A valid frame with random edits.
        _ => {
            let mut bytes: Vec<char> = TEMPLATES[rng.random_range(0..TEMPLATES.len())]
                .chars()
                .collect();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..=bytes.len());
                match rng.random_range(0..3) {
                    0 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    1 if at < bytes.len() => {
                        bytes[at] = rng.random_range(0x20u8..0x7f) as char;
                    }
                    _ => bytes.insert(at, rng.random_range(0x20u8..0x7f) as char),
                }
            }
            bytes.into_iter().collect()
        }
    }
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = rng.random_range(0..max);
    (0..len).map(|_| rng.random()).collect()
}

/// One round of abuse on one connection: a mix of bad text and binary frames,
/// then a ping that must come back as a pong (the connection is still usable),
/// and every error on the way must carry an allowed code. Ends, on a coin
/// flip, with a frame the server must close for (invalid UTF-8 → 1007,
/// oversized → 1009). Returns false if the connection was closed.
async fn abuse_round(c: &mut Client, rng: &mut StdRng, classics: &[String]) -> bool {
    for _ in 0..FRAMES_PER_ROUND {
        let msg = match rng.random_range(0..4) {
            0 => Message::binary(random_bytes(rng, 512)),
            1 => Message::text(classics[rng.random_range(0..classics.len())].clone()),
            _ => Message::text(random_text(rng)),
        };
        c.send_raw(msg).await;
    }
    c.send_json(json!({"type":"ping"})).await;
    loop {
        match c.next_frame(RECV_TIMEOUT).await {
            Some(Frame::Json(v)) => match v["type"].as_str() {
                Some("pong") => break,
                Some("error") => {
                    let code = v["code"].as_str().unwrap_or("");
                    assert!(ALLOWED_CODES.contains(&code), "unexpected error {v}");
                    assert!(v["message"].is_string(), "error without message: {v}");
                }
                _ => {} // a lucky mutation joined, sent or paged: fine
            },
            Some(Frame::Text(t)) => panic!("the server sent non-JSON text {t:?}"),
            Some(Frame::Binary(b)) => panic!("the server sent binary {b:?}"),
            Some(Frame::Closed(how)) => panic!("closed on ordinary garbage: {how:?}"),
            None => panic!("no pong after a round of garbage"),
        }
    }
    match rng.random_range(0..4) {
        0 => {
            let mut payload = b"{\"type\":\"ping\",\"x\":\"".to_vec();
            payload.extend([0xff, 0xfe, 0xc0, 0x80]);
            payload.extend(b"\"}");
            let frame = WireFrame::message(payload, OpCode::Data(Data::Text), true);
            c.send_raw(Message::Frame(frame)).await;
            let how = c.recv_close(RECV_TIMEOUT).await;
            assert_eq!(how.code(), Some(1007), "invalid UTF-8: {how:?}");
            false
        }
        1 => {
            c.send_raw(Message::text("x".repeat(70_000))).await;
            let how = c.recv_close(RECV_TIMEOUT).await;
            assert_eq!(how.code(), Some(1009), "oversized: {how:?}");
            false
        }
        _ => true,
    }
}

/// Non-WebSocket junk straight onto the port: random bytes, a half request,
/// a bogus upgrade. The server answers or hangs up; it never goes down.
async fn raw_tcp_junk(addr: String, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let payload = match rng.random_range(0..3) {
        0 => random_bytes(&mut rng, 4096),
        1 => b"GET /ws?token=x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(),
        _ => {
            let mut p = b"POST /api/token HTTP/1.1\r\nHost: a\r\nContent-Length: 999999\r\n\r\n".to_vec();
            p.extend(random_bytes(&mut rng, 2048));
            p
        }
    };
    let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await else {
        panic!("the server stopped accepting connections");
    };
    let _ = stream.write_all(&payload).await;
    let mut buf = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_from_many_connections_never_disturbs_good_clients() {
    let seed: u64 = std::env::var("CONFAB_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("hostile-input seed: {seed} (rerun with CONFAB_HOSTILE_SEED={seed})");
    let s = Server::builder()
        .set("limits", "messages_per_sec", "1000")
        .set("limits", "message_burst", "1000")
        .start();
    let classics = Arc::new(classic_bad_frames());

    // /healthz is polled the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let health_checks = Arc::new(AtomicUsize::new(0));
    let health = tokio::spawn({
        let (stop, checks, port) = (stop.clone(), health_checks.clone(), s.port);
        async move {
            while !stop.load(Ordering::Relaxed) {
                let r = http_request(port, "GET", "/healthz", &[], None).await;
                assert_eq!(r.status, 200, "/healthz during the attack: {}", r.text());
                checks.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    // The well-behaved pair.
    let mut alice = s.ws_user(&uid("alice"), "alice").await;
    alice.join("lobby").await;
    let mut bob = s.ws_user(&uid("bob"), "bob").await;
    bob.join("lobby").await;
    let alice_id = alice.user_id();

    let attackers: Vec<_> = (0..HOSTILE_CONNECTIONS)
        .map(|i| {
            let (classics, port) = (classics.clone(), s.port);
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
                let url = format!("ws://127.0.0.1:{port}/ws?token=");
                let mut rounds = 0;
                while rounds < ROUNDS {
                    let t = token(&uid("mallory"), "mallory");
                    let mut c = ws_connect_url(&format!("{url}{t}"), &[])
                        .await
                        .expect("attacker connects");
                    let w = c.recv_json().await;
                    assert_eq!(w["type"], "welcome");
                    while rounds < ROUNDS {
                        rounds += 1;
                        if !abuse_round(&mut c, &mut rng, &classics).await {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    let junk: Vec<_> = (0..RAW_TCP_CONNECTIONS)
        .map(|i| tokio::spawn(raw_tcp_junk(s.addr(), seed ^ (i as u64 + 1))))
        .collect();

    // Meanwhile alice chats; every send is acked and bob sees them in order.
    let mut acked = Vec::new();
    for i in 0..GOOD_MESSAGES {
        let ack = alice
            .send_msg("lobby", &format!("hello {i}"), &format!("good-{i}"))
            .await;
        acked.push(ack["seq"].as_u64().expect("seq"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = Vec::new();
    while seen.len() < GOOD_MESSAGES {
        let m = bob.recv_type("message").await;
        if m["user_id"] == alice_id.as_str() {
            assert_eq!(m["content"], format!("hello {}", seen.len()));
            seen.push(m["seq"].as_u64().expect("seq"));
        }
    }
    assert_eq!(seen, acked, "bob saw alice's messages as acked, in order");

    for a in attackers {
        a.await.expect("an attacker found a misbehaving server");
    }
    for j in junk {
        j.await.expect("raw junk task");
    }
    stop.store(true, Ordering::Relaxed);
    health.await.expect("/healthz stayed 200");
    assert!(health_checks.load(Ordering::Relaxed) > 0);

    // The server is alive and consistent afterwards.
    assert_eq!(s.get("/healthz").await.status, 200);
    let history = s.history_all("lobby", &token(&alice_id, "alice")).await;
    let ours: Vec<u64> = history
        .iter()
        .filter(|m| m["user_id"] == alice_id.as_str())
        .map(|m| m["seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(ours, acked, "history holds every acked message once");
    let distinct: HashSet<u64> = history.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(distinct.len(), history.len(), "no duplicate seqs");
    let logs = s.log_text();
    assert!(!logs.contains("panicked"), "the server panicked:\n{logs}");
}

/// Clients that hang up while their history query runs: the query must
/// finish (or be abandoned) without taking a server thread down with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hanging_up_during_a_query_never_crashes_the_server() {
    let s = Server::builder()
        .set("limits", "messages_per_sec", "10000")
        .set("limits", "message_burst", "10000")
        .set("storage", "pool_size", "2")
        .start();
    let writer_id = uid("writer");
    let mut writer = s.ws_user(&writer_id, "writer").await;
    writer.join("deep").await;
    for i in 0..300 {
        writer
            .send_msg("deep", &format!("line {i}"), &format!("w{i}"))
            .await;
    }
    let t = token(&uid("reader"), "reader");
    let mut hangups = Vec::new();
    for i in 0..150u64 {
        let (port, t) = (s.port, t.clone());
        hangups.push(tokio::spawn(async move {
            if i % 2 == 0 {
                // REST: send the request, leave without reading the answer.
                let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect");
                let req = format!(
                    "GET /api/rooms/deep/messages?limit=100&before={} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n",
                    300 - i
                );
                let _ = stream.write_all(req.as_bytes()).await;
            } else {
                // WebSocket: ask for a page and a replay, then drop the socket.
                let url = format!("ws://127.0.0.1:{port}/ws?token={t}");
                let mut c = ws_connect_url(&url, &[]).await.expect("connect");
                c.send_json(json!({"type":"join","room":"deep","history":100}))
                    .await;
                for before in (100..300).step_by(10) {
                    c.send_json(json!({"type":"history","room":"deep","before":before,"limit":100}))
                        .await;
                }
                // With queries still running, reset the connection: the
                // server's next write fails and its session is torn down.
                c.recv_type("history").await;
                if let MaybeTlsStream::Plain(tcp) = c.ws.get_ref() {
                    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
                }
            }
        }));
    }
    for h in hangups {
        h.await.expect("hang-up task");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Every thread still serves: new connections land on all of them.
    for i in 0..8 {
        let mut c = s.ws_user(&uid("after"), "after").await;
        c.join("deep").await;
        c.send_msg("deep", &format!("still here {i}"), &format!("a{i}"))
            .await;
        assert_eq!(s.history("deep", "limit=1", &t).await.status, 200);
    }
    writer
        .send_msg("deep", "the writer's session survived", "w-last")
        .await;
    let logs = s.log_text();
    assert!(!logs.contains("panicked"), "the server panicked:\n{logs}");
}
