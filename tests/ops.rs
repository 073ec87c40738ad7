//! Operations: /metrics, `--version`, systemd readiness notifications, TLS.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// The value of one sample line (`name{labels} value`) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
}

async fn scrape(s: &Server) -> String {
    let r = s.get("/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        r.header("content-type")
    );
    r.text()
}

/// Polls /metrics until `series` reaches `want` (counters move after the
/// frames that caused them were sent).
async fn wait_for_sample(s: &Server, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(s).await;
        if sample(&text, series) == Some(want) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("{series} never became {want}; scrape:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_messages_rejections_and_persistence() {
    let s = Server::start();
    let before = scrape(&s).await;
    assert_eq!(sample(&before, "confab_connections"), Some(0.0), "{before}");
    let build = before
        .lines()
        .find(|l| l.starts_with("confab_build_info{"))
        .unwrap_or_else(|| panic!("no build info:\n{before}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.contains("git=\"")
            && build.ends_with(" 1"),
        "{build}"
    );

    let mut alice = s.ws_user(&uid("alice"), "alice").await;
    let mut bob = s.ws_user(&uid("bob"), "bob").await;
    alice.join("ops").await;
    bob.join("ops").await;
    for i in 0..3 {
        alice
            .send_msg("ops", &format!("hello {i}"), &format!("m{i}"))
            .await;
    }
    alice
        .send_json(json!({"type":"send","room":"ops","content":"   ","ref":"blank"}))
        .await;
    assert_eq!(alice.recv_type("error").await["code"], "empty_message");
    alice
        .send_json(json!({"type":"send","room":"elsewhere","content":"hi","ref":"nj"}))
        .await;
    assert_eq!(alice.recv_type("error").await["code"], "not_joined");

    let text = wait_for_sample(&s, "confab_deliveries_total", 6.0).await;
    assert_eq!(sample(&text, "confab_connections"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "confab_rooms"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "confab_messages_accepted_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "confab_messages_rejected_total{code=\"empty_message\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "confab_messages_rejected_total{code=\"not_joined\"}"),
        Some(1.0),
        "{text}"
    );
    // Three single-message transactions (each send waited for the last ack).
    assert_eq!(
        sample(&text, "confab_persist_batch_size_count"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "confab_persist_batch_size_sum"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "confab_persist_flush_seconds_count"),
        Some(3.0),
        "{text}"
    );
    assert!(
        text.contains("confab_persist_flush_seconds_bucket{le=\"0.005\"}"),
        "flush latency is a histogram with buckets:\n{text}"
    );
    assert_eq!(sample(&text, "confab_persist_lag"), Some(0.0), "{text}");
    // Each of the three accepted sends is timed from its room to its ack.
    assert_eq!(
        sample(&text, "confab_accept_seconds_count"),
        Some(3.0),
        "{text}"
    );
    for name in [
        "confab_slow_consumer_disconnects_total",
        "confab_heartbeat_timeouts_total",
        "confab_persist_failures_total",
    ] {
        assert!(
            text.contains(&format!("# HELP {name}")) || sample(&text, name).is_some(),
            "{name} is not exported:\n{text}"
        );
    }

    drop(alice);
    drop(bob);
    wait_for_sample(&s, "confab_connections", 0.0).await;
}

#[tokio::test]
async fn heartbeat_timeouts_are_counted() {
    let s = Server::builder()
        .set("heartbeat", "interval_secs", "1")
        .set("heartbeat", "timeout_secs", "2")
        .start();
    let mut silent = s.ws_user(&uid("quiet"), "quiet").await;
    // tungstenite answers pings only while it is read; don't read.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    wait_for_sample(&s, "confab_heartbeat_timeouts_total", 1.0).await;
    let how = silent.recv_close(Duration::from_secs(5)).await;
    assert_eq!(how.code(), Some(1000), "{how:?}");
}

#[test]
fn version_names_the_version_and_git_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_cli(&["--version"], &[], dir.path());
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let line = out.stdout.trim();
    let expected = format!("confab {} (git ", env!("CARGO_PKG_VERSION"));
    assert!(
        line.starts_with(&expected) && line.ends_with(')'),
        "{line:?}"
    );
    let revision = &line[expected.len()..line.len() - 1];
    // Built from a git checkout (CI's clean clone included): the revision is
    // the checkout's HEAD. Only a build outside git may say "unknown".
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(head) => assert_eq!(revision, head, "{line:?}"),
        None => assert!(
            revision == "unknown" || revision.chars().all(|c| c.is_ascii_hexdigit()),
            "{revision:?}"
        ),
    }
}

// ---------------------------------------------------------------------- logs

/// `log.format = "json"`: every line is one JSON object; a connection's
/// events carry its span with the session and user id; message contents
/// never reach the log (checked at debug level, which logs more than info).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_connection_span_and_no_message_contents() {
    let s = Server::builder()
        .set("log", "format", "\"json\"")
        .set("log", "level", "\"debug\"")
        .start();
    let user = uid("logged");
    let secret_words = "the-launch-code-is-0000";
    {
        let mut c = s.ws_user(&user, "logger").await;
        c.join("logs").await;
        c.send_msg("logs", secret_words, "l1").await;
        c.send_json(json!({"type":"send","room":"logs","content":format!("{secret_words} {}", "x".repeat(3000)),"ref":"l2"}))
            .await;
        assert_eq!(c.recv_type("error").await["code"], "message_too_long");
    }
    // The session's end is logged after the socket closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ended = loop {
        let logs = s.logs();
        let lines: Vec<Value> = logs
            .iter()
            .map(|l| {
                // The harness prefixes each line with where it came from.
                let json = &l[l.find('{').unwrap_or_else(|| panic!("not JSON: {l:?}"))..];
                serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"))
            })
            .collect();
        let ended = lines.iter().find(|v| {
            v["fields"]["message"] == "session ended" && v["span"]["user"] == user.as_str()
        });
        if let Some(ended) = ended {
            break ended.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no `session ended` line with the span:\n{}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ended["span"]["name"], "session", "{ended}");
    let session = ended["span"]["session"]
        .as_str()
        .expect("session id in the span");
    assert!(uuid::Uuid::parse_str(session).is_ok(), "{ended}");
    assert!(
        ended["level"].is_string() && ended["timestamp"].is_string(),
        "{ended}"
    );
    assert!(
        !s.log_text().contains(secret_words),
        "message contents leaked into the log:\n{}",
        s.log_text()
    );
}

// ------------------------------------------------------------------ systemd

/// `Type=notify`: READY=1 only once the listener accepts connections, and
/// STOPPING=1 when SIGTERM starts the graceful shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_after_bind_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).expect("bind notify socket");
    let mut s = Server::builder()
        .env("NOTIFY_SOCKET", socket_path.to_str().expect("utf-8 path"))
        .start();

    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
        .await
        .expect("READY=1 within 10 s")
        .expect("recv");
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        message.lines().any(|l| l == "READY=1"),
        "first notification: {message:?}"
    );
    // Ready means ready: the port answers right away.
    assert_eq!(s.get("/healthz").await.status, 200);
    let mut c = s.ws_user(&uid("u"), "u").await;
    c.join("sd").await;

    let pid = s.pid().expect("pid");
    let stop = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(stop.success());
    let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
        .await
        .expect("STOPPING=1 within 10 s")
        .expect("recv");
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        message.lines().any(|l| l == "STOPPING=1"),
        "second notification: {message:?}"
    );
    let how = c.recv_close(Duration::from_secs(10)).await;
    assert_eq!(how.code(), Some(1001), "{how:?}");
    let status = s.terminate(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
}

/// READY=1 means the port accepts and the migrations ran: at the instant the
/// notification arrives (without waiting for any log line) a TCP connect to
/// the configured port succeeds and the SQLite schema is in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_sent_only_once_bound_and_migrated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).expect("bind notify socket");
    let port = free_port();
    let mut config = Config::defaults(dir.path());
    config.set("server", "bind", &toml_str(&format!("127.0.0.1:{port}")));
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config.render()).expect("write config");
    let mut child = std::process::Command::new(bin())
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env("NOTIFY_SOCKET", &socket_path)
        .env_remove("CONFAB_LOG")
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn confab serve");

    let mut buf = vec![0u8; 4096];
    let got = tokio::time::timeout(Duration::from_secs(20), socket.recv(&mut buf)).await;
    // Check at once, before anything else could make it true.
    let connected = std::net::TcpStream::connect(("127.0.0.1", port));
    let db = dir.path().join("confab.db");
    let migrated = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT count(*) FROM __diesel_schema_migrations")
        .output();
    let _ = child.kill();
    let _ = child.wait();
    let n = got.expect("READY=1 within 20 s").expect("recv");
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(message.lines().any(|l| l == "READY=1"), "{message:?}");
    assert!(
        connected.is_ok(),
        "READY before the listener: {connected:?}"
    );
    assert!(db.exists(), "READY before the database was created");
    if let Ok(out) = migrated {
        // Without the sqlite3 shell the file's existence above is the check.
        if out.status.success() {
            let count: u32 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            assert!(count >= 1, "READY before the migrations ran");
        }
    }
}

// ---------------------------------------------------------------------- TLS

struct SelfSigned {
    cert_pem: String,
    key_pem: String,
    cert_der: rustls_pki_types::CertificateDer<'static>,
}

fn self_signed() -> SelfSigned {
    let key = rcgen::KeyPair::generate().expect("key pair");
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    SelfSigned {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
    }
}

fn tls_connector(cert: &SelfSigned) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert_der.clone()).expect("trust the test CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_stream(
    port: u16,
    cert: &SelfSigned,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
    tls_connector(cert)
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("stream open")
            .expect("frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).expect("json");
        }
    }
}

fn tls_server(cert: &SelfSigned) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &cert.cert_pem).expect("write cert");
    std::fs::write(&key_path, &cert.key_pem).expect("write key");
    let s = Server::builder()
        .raw(&format!(
            "[server.tls]\ncert = {}\nkey = {}\n",
            toml_str(&cert_path.display().to_string()),
            toml_str(&key_path.display().to_string())
        ))
        .start();
    // The files are read at startup; the folder may go.
    drop(dir);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_and_wss_with_a_self_signed_certificate() {
    let cert = self_signed();
    let s = tls_server(&cert);

    // HTTPS
    let mut https = tls_stream(s.port, &cert).await;
    https
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), https.read_to_end(&mut answer))
        .await
        .expect("answer within 5 s")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // WSS: the whole protocol works through TLS.
    let url = format!(
        "wss://localhost:{}/ws?token={}",
        s.port,
        token(&uid("tls"), "tls")
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls_stream(s.port, &cert).await)
        .await
        .expect("WebSocket handshake over TLS");
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    ws.send(Message::text(
        json!({"type":"join","room":"secure"}).to_string(),
    ))
    .await
    .expect("send join");
    ws.send(Message::text(
        json!({"type":"send","room":"secure","content":"over TLS","ref":"t1"}).to_string(),
    ))
    .await
    .expect("send");
    let mut seen = Vec::new();
    while !seen.contains(&"ack".to_string()) {
        let v = next_json(&mut ws).await;
        assert_ne!(v["type"], "error", "{v}");
        seen.push(v["type"].as_str().unwrap_or("").to_string());
    }
    assert!(seen.contains(&"joined".to_string()), "{seen:?}");
}

#[test]
fn unreadable_tls_files_stop_startup_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\ndata_dir = {}\n[server]\nbind = \"127.0.0.1:0\"\n[server.tls]\ncert = \"missing.pem\"\nkey = \"missing-key.pem\"\n",
            toml_str(&dir.path().join("data").display().to_string())
        ),
    )
    .expect("write config");
    let out = run_cli(
        &["serve", "--config", config.to_str().expect("utf-8")],
        &[],
        dir.path(),
    );
    assert_ne!(out.code(), Some(0));
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("server.tls") && text.contains("missing.pem"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}
