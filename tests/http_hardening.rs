//! Issue 15's HTTP-side holes: slow requests, connections counted per IP
//! whatever they carry, every HTTP error as the contract's JSON, HEAD, the
//! UI's security headers, a private /metrics with bounded series, a /readyz
//! that probes a real write, and a quick second join of the same room.

mod common;

use common::*;
use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one response (up to EOF or `within`) from a raw connection.
async fn read_answer(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (raw, true),
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Err(_) => return (raw, false),
        }
    }
}

/// The status and JSON error code of a raw HTTP answer.
fn status_and_code(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete answer: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "JSON content type: {head}"
    );
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body ({e}): {body:?}"));
    assert!(v["error"]["message"].is_string(), "error message: {v}");
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test]
async fn a_dripped_login_body_gets_408_and_the_connection_closes() {
    let s = Server::builder()
        .set("server", "request_timeout_secs", "1")
        .start();
    let mut stream = TcpStream::connect(s.addr()).await.unwrap();
    stream
        .write_all(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"na")
        .await
        .unwrap();
    let started = Instant::now();
    let (raw, closed) = read_answer(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(status_and_code(&raw), (408, "request_timeout".into()));
    assert!(closed, "the connection closes after the 408");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn a_login_body_announced_too_large_is_refused_before_it_arrives() {
    let s = Server::start();
    let mut stream = TcpStream::connect(s.addr()).await.unwrap();
    stream
        .write_all(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{")
        .await
        .unwrap();
    let started = Instant::now();
    let (raw, closed) = read_answer(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(status_and_code(&raw), (413, "payload_too_large".into()));
    assert!(closed);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "at once, not at the timeout"
    );
}

#[tokio::test]
async fn a_dripped_request_head_gets_408_json() {
    let s = Server::builder()
        .set("server", "request_timeout_secs", "1")
        .start();
    let mut stream = TcpStream::connect(s.addr()).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (raw, closed) = read_answer(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(status_and_code(&raw), (408, "request_timeout".into()));
    assert!(closed);
}

#[tokio::test]
async fn plain_http_connections_count_under_connections_per_ip() {
    let s = Server::builder()
        .set("limits", "connections_per_ip", "3")
        .start();
    // Three idle connections (no request yet) take every place.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(s.addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = s.get("/healthz").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.error_code(), "too_many_connections");
    // A WebSocket upgrade is refused the same way.
    let refused = ws_connect_url(&s.ws_url("/ws/chat/general"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 429);
    // The places come back when the connections go.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = s.get("/healthz").await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "places never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn requests_the_parser_refuses_get_json_errors_and_one_warning() {
    let s = Server::start();
    let raw_answer = |request: Vec<u8>| {
        let addr = s.addr();
        async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let _ = stream.write_all(&request).await;
            read_answer(&mut stream, Duration::from_secs(5)).await.0
        }
    };
    for _ in 0..20 {
        let raw = raw_answer(b"NOT HTTP AT ALL\r\n\r\n".to_vec()).await;
        assert_eq!(status_and_code(&raw), (400, "bad_request".into()));
    }
    let mut big_head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big_head.extend(std::iter::repeat_n(b'a', 200_000));
    big_head.extend_from_slice(b"\r\n\r\n");
    let raw = raw_answer(big_head).await;
    assert_eq!(status_and_code(&raw), (431, "headers_too_large".into()));

    let body = vec![b'a'; 10_000];
    let r = http_request(s.port, "POST", "/api/login", &[], Some(&body)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");

    let r = http_request(s.port, "DELETE", "/healthz", &[], None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "not_found");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = s.logs();
    assert!(
        !logs.iter().any(|l| l.contains("ERROR")),
        "junk from the network is no server error:\n{}",
        s.log_text()
    );
    let warnings = logs
        .iter()
        .filter(|l| l.contains("could not be read"))
        .count();
    assert!(
        (1..=3).contains(&warnings),
        "one warning a second for 21 refused requests, got {warnings}:\n{}",
        s.log_text()
    );
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let s = Server::start();
    for path in ["/", "/healthz", "/metrics", "/readyz", "/api/rooms"] {
        let get = http_request(s.port, "GET", path, &[], None).await;
        let head = http_request(s.port, "HEAD", path, &[], None).await;
        assert_eq!(head.status, 200, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} has no body");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "HEAD {path}"
        );
        if path != "/metrics" && path != "/readyz" {
            assert_eq!(
                head.header("content-length"),
                Some(get.body.len().to_string().as_str()),
                "HEAD {path} announces GET's length"
            );
        }
    }
}

#[tokio::test]
async fn the_ui_is_served_with_security_headers() {
    let s = Server::start();
    for path in ["/", "/assets/app.js", "/assets/app.css"] {
        let r = s.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        let csp = r.header("content-security-policy").unwrap_or_default();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {directive} in {csp:?}");
        }
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
    }
    // Every other answer is nosniff too.
    let r = s.get("/api/rooms").await;
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test]
async fn metrics_can_live_on_a_private_address_behind_a_token() {
    let metrics_port = free_port();
    let s = Server::builder()
        .set("metrics", "bind", &format!("\"127.0.0.1:{metrics_port}\""))
        .set("metrics", "token", "\"scrape-me-7f2\"")
        .start();
    let r = s.get("/metrics").await;
    assert_eq!(r.status, 404, "not on server.bind");
    assert_eq!(r.error_code(), "not_found");

    let r = http_request(metrics_port, "GET", "/metrics", &[], None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "unauthorized");
    let wrong = [("Authorization", "Bearer scrape-me-7f3")];
    let r = http_request(metrics_port, "GET", "/metrics", &wrong, None).await;
    assert_eq!(r.status, 401);
    let right = [("Authorization", "Bearer scrape-me-7f2")];
    let r = http_request(metrics_port, "GET", "/metrics", &right, None).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("confab_connections"), "{}", r.text());
    // The metrics listener serves nothing else.
    let r = http_request(metrics_port, "GET", "/api/rooms", &right, None).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn only_the_busiest_rooms_get_their_own_series() {
    let s = Server::builder().set("metrics", "room_series", "2").start();
    let mut c = s.ws_user("u-busy", "busy").await;
    for (room, count) in [("busy-a", 3), ("busy-b", 2), ("busy-c", 1)] {
        c.join(room).await;
        for i in 0..count {
            c.send_and_echo(room, &format!("{room} {i}"), &format!("{room}-{i}"))
                .await;
        }
    }
    let series = |text: &str, room: &str| {
        text.lines()
            .filter(|l| l.starts_with("confab_room_") && l.contains(&format!("room=\"{room}\"")))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = s.get("/metrics").await.text();
        if series(&text, "busy-a") == 4 && series(&text, "busy-b") == 4 {
            break text;
        }
        assert!(Instant::now() < deadline, "no room series:\n{text}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(text.contains("confab_room_messages{room=\"busy-a\",window=\"1h\"} 3"));
    assert_eq!(series(&text, "busy-c"), 0, "the third room has no series");
}

#[tokio::test]
async fn readyz_is_503_while_the_store_cannot_write() {
    let s = Server::start();
    let ready = s.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    // Another writer holds SQLite's write lock: reads work, writes can't.
    let db = s.dir().join("confab.db");
    let mut locker = SqliteConnection::establish(&db.display().to_string()).expect("open db");
    locker.batch_execute("BEGIN EXCLUSIVE").expect("lock");
    let r = s.get("/readyz").await;
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "unavailable");
    assert_eq!(v["checks"]["store"], "unavailable");
    assert_eq!(v["checks"]["broker"], "ok");
    assert_eq!(s.get("/healthz").await.status, 200, "alive, just not ready");
    locker.batch_execute("COMMIT").expect("unlock");
    drop(locker);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.get("/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn two_quick_joins_of_a_room_each_get_their_own_replay() {
    let mut s = Server::start();
    {
        let mut c = s.ws_user("u-j", "j").await;
        c.join("twice").await;
        for i in 1..=5 {
            c.send_msg("twice", &format!("m{i}"), &format!("r{i}"))
                .await;
        }
    }
    // After a restart the replay comes from the store, which takes a moment:
    // the second join arrives while the first's replay is being read.
    s.restart();
    let mut c = s.ws_user("u-k", "k").await;
    c.send_json(json!({"type":"join","room":"twice","history":3}))
        .await;
    c.send_json(json!({"type":"join","room":"twice","history":2}))
        .await;
    for want in [vec![3, 4, 5], vec![4, 5]] {
        let joined = c.recv_main().await;
        assert_eq!(joined["type"], "joined", "{joined}");
        assert_eq!(joined["last_seq"], 5);
        for seq in want {
            let m = c.recv_main().await;
            assert_eq!(m["type"], "message", "{m}");
            assert_eq!(m["seq"], seq, "{m}");
        }
    }
    c.expect_no_type("message", 300).await;
}

#[tokio::test]
async fn readyz_is_503_while_postgres_takes_no_writes() {
    use common::cluster::{psql, TestDb};
    let db = TestDb::create();
    let s = Server::builder()
        .set("storage", "url", &toml_str(&db.url()))
        .start();
    let ready_within = |want: u16| {
        let s = &s;
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let r = s.get("/readyz").await;
                if r.status == want {
                    return r.json();
                }
                assert!(Instant::now() < deadline, "/readyz stayed {}", r.status);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    ready_within(200).await;
    // Reads still work, every write is refused: a read-only database.
    let read_only = |on: &str| {
        psql(
            "postgres",
            &format!(
                "ALTER DATABASE {} SET default_transaction_read_only = {on}",
                db.name
            ),
        );
        psql(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}'",
                db.name
            ),
        );
    };
    read_only("on");
    let v = ready_within(503).await;
    assert_eq!(v["checks"]["store"], "unavailable", "{v}");
    read_only("off");
    ready_within(200).await;
}
