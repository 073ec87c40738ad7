//! Memory bombs and floods from one client (issue 15): every queue, buffer and
//! per-client set has a limit, a clear error, and memory that comes back.
//! Reproductions with numbers live in bench/abuse/; these tests hold the
//! fixes in place with bounded counts and generous memory margins.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A WebSocket spoken by hand over TCP, for frames no library would send.
struct RawWs {
    write: tokio::net::tcp::OwnedWriteHalf,
    read: FrameReader,
}

/// The server's frames, read by hand.
struct FrameReader {
    stream: tokio::net::tcp::OwnedReadHalf,
    buf: Vec<u8>,
}

impl RawWs {
    async fn upgrade(addr: &str, path: &str) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = tokio::time::timeout(RECV_TIMEOUT, stream.read(&mut chunk))
                .await
                .expect("upgrade answer in time")
                .unwrap();
            assert!(n > 0, "closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        let (read, write) = stream.into_split();
        RawWs {
            write,
            read: FrameReader {
                stream: read,
                buf: buf[head_end..].to_vec(),
            },
        }
    }

    /// A masked client frame header (FIN + opcode, declared length).
    fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![if fin { 0x80 } else { 0 } | opcode];
        if len < 126 {
            h.push(0x80 | len as u8);
        } else if len <= 0xffff {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
        h.extend_from_slice(&[0, 0, 0, 0]); // mask key 0: payload as is
        h
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Self::header(fin, opcode, payload.len() as u64);
        f.extend_from_slice(payload);
        f
    }
}

impl FrameReader {
    /// The next server frame (opcode, payload), or None when the stream ended.
    async fn next_frame(&mut self, timeout: Duration) -> Option<(u8, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if at > 0 && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((opcode, payload));
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
            match read {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Reads until a close frame (its code) or the end of the stream (None).
    async fn close_code(&mut self, timeout: Duration) -> Option<u16> {
        while let Some((opcode, payload)) = self.next_frame(timeout).await {
            if opcode == 8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }
}

#[tokio::test]
async fn a_huge_declared_frame_length_is_refused_before_its_payload() {
    let server = Server::start();
    let pid = server.pid().unwrap();
    let baseline = rss_kib(pid);
    let RawWs {
        mut write,
        read: mut reader,
    } = RawWs::upgrade(&server.addr(), "/ws/chat/general").await;
    // The close frame is read while the junk streams: once the server hangs
    // up on unread junk, the kernel resets the connection.
    let closed = tokio::spawn(async move { reader.close_code(RECV_TIMEOUT).await });
    // 2^62 bytes of text declared, then data streamed behind it.
    write
        .write_all(&RawWs::header(true, 1, 1 << 62))
        .await
        .unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(2) {
        match tokio::time::timeout(Duration::from_millis(200), write.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    let grown = rss_kib(pid).saturating_sub(baseline);
    assert!(
        grown < 64 * 1024,
        "RSS grew by {grown} KiB while {sent} bytes of an oversized frame streamed in"
    );
    assert_eq!(closed.await.unwrap(), Some(1009));
    // The server is fine.
    assert_eq!(server.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn a_flood_of_tiny_frames_is_read_no_faster_than_it_is_handled() {
    let server = Server::start();
    let pid = server.pid().unwrap();
    let baseline = rss_kib(pid);
    let mut ws = RawWs::upgrade(&server.addr(), "/ws/chat/general").await;
    // Pings are answered with pongs this client never reads: with the reader
    // gated on handled frames, the socket backs up instead of the server.
    let ping = RawWs::frame(true, 9, b"");
    let flood: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 40_000)
        .collect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        match tokio::time::timeout(Duration::from_millis(500), ws.write.write_all(&flood)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    let grown = rss_kib(pid).saturating_sub(baseline);
    assert!(
        grown < 64 * 1024,
        "RSS grew by {grown} KiB under a ping flood"
    );
    drop(ws);
    assert_eq!(server.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn a_fragmented_message_over_the_limit_closes_with_1009() {
    let server = Server::builder()
        .set("limits", "max_frame_bytes", "4096")
        .start();
    let mut ws = RawWs::upgrade(&server.addr(), "/ws/chat/general").await;
    let piece = vec![b'x'; 1000];
    let mut bytes = RawWs::frame(false, 1, &piece);
    for _ in 0..10 {
        bytes.extend(RawWs::frame(false, 0, &piece));
    }
    let _ = ws.write.write_all(&bytes).await;
    assert_eq!(ws.read.close_code(RECV_TIMEOUT).await, Some(1009));
}

#[tokio::test]
async fn frames_pipelined_behind_the_upgrade_are_all_handled() {
    let server = Server::start();
    let mut ws = RawWs::upgrade(&server.addr(), "/ws/chat/pipelined").await;
    let mut bytes = Vec::new();
    for i in 0..50 {
        bytes.extend(RawWs::frame(true, 1, format!("m{i}").as_bytes()));
    }
    ws.write.write_all(&bytes).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let (opcode, payload) = ws.read.next_frame(RECV_TIMEOUT).await.expect("a frame");
        if opcode == 1 {
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            seen.push(v["message"].as_str().unwrap().to_string());
        }
    }
    let want: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, want);
}

// ------------------------------------------------------------------ rooms

#[tokio::test]
async fn a_connection_may_join_at_most_rooms_per_connection() {
    let server = Server::builder()
        .set("limits", "rooms_per_connection", "3")
        .start();
    let mut c = server.ws_user(&uid("u"), "u").await;
    for room in ["a", "b", "c"] {
        c.join_with(json!({"type":"join","room":room,"history":0}))
            .await;
    }
    c.send_json(json!({"type":"join","room":"d"})).await;
    let e = c.recv_error().await;
    assert_eq!(e["code"], "too_many_rooms", "{e}");
    assert_eq!(e["room"], "d", "{e}");
    // Rejoining a room it is in is no new room; leaving one makes space.
    c.join_with(json!({"type":"join","room":"a","history":0}))
        .await;
    c.send_json(json!({"type":"leave","room":"b"})).await;
    assert_eq!(c.recv_type("left").await["room"], "b");
    c.join_with(json!({"type":"join","room":"d","history":0}))
        .await;
}

#[tokio::test]
async fn an_instance_opens_at_most_rooms_per_instance_and_idle_rooms_stop() {
    let server = Server::builder()
        .set("limits", "rooms_per_instance", "3")
        .start();
    let mut a = server.ws_user(&uid("a"), "a").await;
    let mut b = server.ws_user(&uid("b"), "b").await;
    for room in ["r1", "r2"] {
        a.join_with(json!({"type":"join","room":room,"history":0}))
            .await;
    }
    b.join_with(json!({"type":"join","room":"r3","history":0}))
        .await;
    // Open rooms can still be joined; a fourth can't be opened.
    b.join_with(json!({"type":"join","room":"r1","history":0}))
        .await;
    b.send_json(json!({"type":"join","room":"r4"})).await;
    let e = b.recv_error().await;
    assert_eq!(e["code"], "too_many_rooms", "{e}");
    assert_eq!(e["room"], "r4", "{e}");
    // Once everyone left, the rooms stop (after their linger) and free
    // their places.
    a.close().await;
    b.close().await;
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let metrics = server.get("/metrics").await.text();
        let open = metrics
            .lines()
            .find_map(|l| l.strip_prefix("confab_rooms "))
            .map(|v| v.trim().to_string());
        if open.as_deref() == Some("0") {
            break;
        }
        assert!(Instant::now() < deadline, "rooms still open: {open:?}");
        sleep_ms(500).await;
    }
    let mut c = server.ws_user(&uid("c"), "c").await;
    c.join_with(json!({"type":"join","room":"r4","history":0}))
        .await;
}

#[tokio::test]
async fn room_listing_pages_by_name() {
    let server = Server::start();
    let mut c = server.ws_user(&uid("u"), "u").await;
    for room in ["p1", "p2", "p3", "p4", "p5"] {
        c.join_with(json!({"type":"join","room":room,"history":0}))
            .await;
    }
    let mut names = Vec::new();
    let mut after = String::new();
    loop {
        let r = server
            .get(&format!("/api/rooms?limit=2&after={after}"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let page = v["rooms"].as_array().unwrap();
        assert!(page.len() <= 2, "{v}");
        names.extend(page.iter().map(|r| r["name"].as_str().unwrap().to_string()));
        match v["next_after"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    assert_eq!(names, ["p1", "p2", "p3", "p4", "p5"]);
    let all = server.get("/api/rooms").await.json();
    assert_eq!(all["rooms"].as_array().unwrap().len(), 5);
    assert!(all["next_after"].is_null(), "{all}");
    let bad = server.get("/api/rooms?limit=0").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error_code(), "invalid_cursor");
}

// --------------------------------------------------------------- presence

#[tokio::test]
async fn join_leave_toggling_is_coalesced_for_the_other_members() {
    let server = Server::start();
    let mut member = server.ws_user(&uid("m"), "member").await;
    member
        .join_with(json!({"type":"join","room":"toggle","history":0}))
        .await;
    let mut toggler = server.ws_user(&uid("t"), "toggler").await;
    for _ in 0..300 {
        toggler
            .send_json(json!({"type":"join","room":"toggle","history":0}))
            .await;
        toggler
            .send_json(json!({"type":"leave","room":"toggle"}))
            .await;
    }
    // The toggler ends outside the room: it sees 300 joined + 300 left.
    let mut lefts = 0;
    while lefts < 300 {
        if toggler.recv_main().await["type"] == "left" {
            lefts += 1;
        }
    }
    // The member hears a few net changes at most, never 600 frames, and
    // whatever it heard nets to "not present".
    let mut frames = 0;
    let mut present = false;
    while let Some(Frame::Json(v)) = member.next_frame(Duration::from_millis(700)).await {
        if v["type"] == "presence" {
            frames += 1;
            if !v["joined"].as_array().unwrap().is_empty() {
                present = true;
            }
            if !v["left"].as_array().unwrap().is_empty() {
                present = false;
            }
        }
    }
    assert!(frames <= 40, "{frames} presence frames for 600 toggles");
    assert!(!present, "the toggler left last");
}

#[tokio::test]
async fn presence_changes_in_one_window_arrive_as_one_frame() {
    let server = Server::start();
    let mut member = server.ws_user(&uid("m"), "member").await;
    member
        .join_with(json!({"type":"join","room":"burst","history":0}))
        .await;
    let mut others = Vec::new();
    for i in 0..3 {
        let mut c = server.ws_user(&uid("o"), &format!("o{i}")).await;
        c.send_json(json!({"type":"join","room":"burst","history":0}))
            .await;
        others.push(c);
    }
    let mut joined = 0;
    let mut frames = 0;
    while joined < 3 {
        let v = member.recv_type("presence").await;
        frames += 1;
        joined += v["joined"].as_array().unwrap().len();
    }
    assert!(
        frames < 3,
        "three joins within the window came as {frames} frames"
    );
}

#[tokio::test]
async fn joins_and_leaves_are_rate_limited_per_user() {
    let server = Server::builder()
        .set("limits", "joins_per_sec", "1")
        .start();
    let mut c = server.ws_user(&uid("u"), "u").await;
    // Burst 4: join, leave, join, leave; the fifth is refused.
    for _ in 0..2 {
        c.join_with(json!({"type":"join","room":"rl","history":0}))
            .await;
        c.send_json(json!({"type":"leave","room":"rl"})).await;
        c.recv_type("left").await;
    }
    c.send_json(json!({"type":"join","room":"rl"})).await;
    let e = c.recv_error().await;
    assert_eq!(e["code"], "rate_limited", "{e}");
    assert_eq!(e["room"], "rl", "{e}");
    assert!(e["retry_after_ms"].as_u64().unwrap() > 0, "{e}");
}

#[tokio::test]
async fn guest_logins_are_limited_per_address() {
    let server = Server::builder()
        .set("limits", "logins_per_minute", "5")
        .start();
    for i in 0..5 {
        let r = server
            .post_json("/api/login", &json!({"name": format!("g{i}")}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = server.post_json("/api/login", &json!({"name":"g6"})).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.error_code(), "rate_limited");
}

// ---------------------------------------------------------------- history

/// `n` messages of about 1,900 characters in `room`.
async fn long_messages(server: &Server, room: &str, n: usize) {
    let mut c = server.ws_user(&uid("writer"), "writer").await;
    c.join_with(json!({"type":"join","room":room,"history":0}))
        .await;
    for i in 0..n {
        let content = format!("{i} {}", "y".repeat(1900));
        c.send_json(json!({"type":"send","room":room,"content":content,"ref":format!("l{i}")}))
            .await;
    }
    let mut acks = 0;
    while acks < n {
        if c.recv_main().await["type"] == "ack" {
            acks += 1;
        }
    }
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_history_requests_wait_instead_of_piling_up_pages() {
    let server = Server::start();
    let pid = server.pid().unwrap();
    long_messages(&server, "deep", 100).await;
    let baseline = rss_kib(pid);
    // 2,000 pages of ~190 KB asked for at once, and nothing read.
    let mut ws = RawWs::upgrade(
        &server.addr(),
        &format!("/ws?token={}", token(&uid("r"), "reader")),
    )
    .await;
    let request = RawWs::frame(
        true,
        1,
        br#"{"type":"history","room":"deep","before":101,"limit":100}"#,
    );
    let all: Vec<u8> = request
        .iter()
        .copied()
        .cycle()
        .take(request.len() * 2000)
        .collect();
    let _ = tokio::time::timeout(Duration::from_secs(3), ws.write.write_all(&all)).await;
    sleep_ms(1500).await;
    let grown = rss_kib(pid).saturating_sub(baseline);
    assert!(
        grown < 96 * 1024,
        "RSS grew by {grown} KiB with pipelined history requests"
    );
    // Reading again, the pages come: history frames, never an error.
    let mut pages = 0;
    while pages < 20 {
        let (opcode, payload) = ws.read.next_frame(RECV_TIMEOUT).await.expect("a frame");
        if opcode != 1 {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        if v["type"] == "welcome" {
            continue;
        }
        assert_eq!(v["type"], "history", "{v}");
        assert_eq!(v["messages"].as_array().unwrap().len(), 100);
        pages += 1;
    }
    drop(ws);
    // What the connection held comes back once it is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rss_kib(pid).saturating_sub(baseline) > 32 * 1024 {
        assert!(
            Instant::now() < deadline,
            "RSS still {} KiB over the baseline after the client left",
            rss_kib(pid).saturating_sub(baseline)
        );
        sleep_ms(250).await;
    }
    assert_eq!(server.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_over_the_byte_budget_is_closed_1013() {
    // Frames are far below session_queue; their bytes are not.
    let server = Server::builder()
        .set("limits", "session_queue", "100000")
        .set("limits", "session_queue_bytes", "65536")
        .set("heartbeat", "interval_secs", "30")
        .set("heartbeat", "timeout_secs", "120")
        .start();
    let mut stalled = server.ws_user_small_buffer(&uid("s"), "stalled").await;
    stalled
        .join_with(json!({"type":"join","room":"heavy","history":0}))
        .await;
    let mut sender = server.ws_user(&uid("w"), "sender").await;
    sender
        .join_with(json!({"type":"join","room":"heavy","history":0}))
        .await;
    // The sender reads as it goes (it is a member too, and the budget is small).
    let content = "z".repeat(1900);
    for batch in 0..400 {
        for i in 0..20 {
            sender
                .send_json(json!({"type":"send","room":"heavy","content":content,"ref":format!("h{batch}-{i}")}))
                .await;
        }
        let mut answers = 0;
        while answers < 40 {
            let v = sender.recv_main().await;
            if v["type"] == "ack" || v["type"] == "message" {
                answers += 1;
            }
        }
    }
    let how = loop {
        match stalled.next_frame(Duration::from_secs(15)).await {
            Some(Frame::Closed(how)) => break how,
            Some(_) => {}
            None => panic!("the stalled reader was not closed"),
        }
    };
    assert_eq!(how.code(), Some(1013), "{how:?}");
}
