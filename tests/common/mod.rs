//! Test harness for confab integration tests: starts the real binary on an
//! ephemeral port, speaks HTTP/1.1 over a raw TCP stream and WebSocket via
//! tokio-tungstenite.
//!
//! Every helper is bounded in time; a failing test prints the server's log.

#![allow(dead_code)]

pub mod cluster;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::ClientRequestBuilder;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The HS256 secret every test server is configured with.
pub const SECRET: &str = "confab-integration-test-secret-7f3a9c";

/// Default time to wait for one expected frame.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

const READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A port nothing listens on right now (the OS picks it), for servers a test
/// must name before they start.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_confab")
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/// A TOML config built from `section -> key -> literal value`, so tests can
/// override single keys without duplicating table headers.
#[derive(Clone, Debug, Default)]
pub struct Config {
    sections: BTreeMap<String, BTreeMap<String, String>>,
    raw: String,
}

impl Config {
    /// The harness defaults: ephemeral bind, data in `dir`, the test secret,
    /// and rate limiting / spam rules relaxed so they never interfere.
    pub fn defaults(dir: &Path) -> Config {
        let mut c = Config::default();
        c.set("server", "bind", "\"127.0.0.1:0\"");
        c.set("storage", "data_dir", &toml_str(&dir.display().to_string()));
        c.set("auth", "jwt_secret", &toml_str(SECRET));
        c.set("limits", "messages_per_sec", "100000");
        c.set("limits", "message_burst", "100000");
        c.set("moderation", "spam_repeats", "1000000");
        c.set("limits", "joins_per_sec", "100000");
        c.set("limits", "logins_per_minute", "0");
        c
    }

    /// Set `[section] key = value` where `value` is a TOML literal
    /// (strings must carry their quotes).
    pub fn set(&mut self, section: &str, key: &str, value: &str) -> &mut Self {
        self.sections
            .entry(section.to_string())
            .or_default()
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Append raw TOML text after the structured part.
    pub fn raw(&mut self, text: &str) -> &mut Self {
        self.raw.push_str(text);
        self.raw.push('\n');
        self
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (section, keys) in &self.sections {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in keys {
                out.push_str(&format!("{k} = {v}\n"));
            }
            out.push('\n');
        }
        out.push_str(&self.raw);
        out
    }
}

pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

// ---------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------

/// Builder for a test server.
pub struct ServerBuilder {
    dir: tempfile::TempDir,
    config: Config,
    env: Vec<(String, String)>,
    /// When false the server is started without `--config` (for
    /// `CONFAB_CONFIG` tests).
    pass_config_flag: bool,
}

impl ServerBuilder {
    pub fn set(mut self, section: &str, key: &str, value: &str) -> Self {
        self.config.set(section, key, value);
        self
    }

    pub fn raw(mut self, text: &str) -> Self {
        self.config.raw(text);
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// Do not pass `--config`; point `CONFAB_CONFIG` at the file instead.
    pub fn config_via_env(mut self) -> Self {
        self.pass_config_flag = false;
        self
    }

    pub fn start(self) -> Server {
        // With `config_via_env` the file gets a name that `./config.toml`
        // discovery would not find, so only CONFAB_CONFIG can point at it.
        let name = if self.pass_config_flag {
            "config.toml"
        } else {
            "via-env.toml"
        };
        let config_path = self.dir.path().join(name);
        std::fs::write(&config_path, self.config.render()).expect("write config");
        let mut server = Server {
            child: None,
            port: 0,
            dir: self.dir,
            config_path,
            env: self.env,
            pass_config_flag: self.pass_config_flag,
            logs: Arc::new(Mutex::new(Vec::new())),
            generation: 0,
        };
        server.spawn();
        server
    }
}

/// A running `confab serve` child process. Killed on drop; when the current
/// thread is panicking (a failing test), the server log is printed.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    pub config_path: PathBuf,
    env: Vec<(String, String)>,
    pass_config_flag: bool,
    logs: Arc<Mutex<Vec<String>>>,
    generation: u32,
}

/// Environment variables of the test process that could change the server's
/// behaviour and must not leak into it.
fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("CONFAB") || k == "RUST_LOG" || k == "NOTIFY_SOCKET" {
            cmd.env_remove(&k);
        }
    }
}

impl Server {
    pub fn builder() -> ServerBuilder {
        let dir = tempfile::Builder::new()
            .prefix("confab-test-")
            .tempdir()
            .expect("tempdir");
        let config = Config::defaults(dir.path());
        ServerBuilder {
            dir,
            config,
            env: Vec::new(),
            pass_config_flag: true,
        }
    }

    /// A server with the harness defaults.
    pub fn start() -> Server {
        Server::builder().start()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        self.generation += 1;
        let mut cmd = Command::new(bin());
        cmd.arg("serve");
        scrub_env(&mut cmd);
        if self.pass_config_flag {
            cmd.arg("--config").arg(&self.config_path);
        } else {
            cmd.env("CONFAB_CONFIG", &self.config_path);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn confab serve");
        let (tx, rx) = mpsc::channel::<u16>();
        let gen = self.generation;
        let stderr = child.stderr.take().expect("piped stderr");
        let stdout = child.stdout.take().expect("piped stdout");
        spawn_log_reader(
            stderr,
            format!("{gen} stderr"),
            self.logs.clone(),
            tx.clone(),
        );
        spawn_log_reader(stdout, format!("{gen} stdout"), self.logs.clone(), tx);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(port) => {
                    self.port = port;
                    break;
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        std::thread::sleep(Duration::from_millis(200));
                        panic!(
                            "confab serve exited before listening ({status}); log:\n{}",
                            self.log_text()
                        );
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "confab serve did not log `listening on 127.0.0.1:PORT` within {:?}; log:\n{}",
                            READY_TIMEOUT,
                            self.log_text()
                        );
                    }
                }
            }
        }
        self.child = Some(child);
    }

    /// SIGKILL the server and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send SIGTERM and wait (at most `within`) for the process to exit.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.signal("-TERM", within)
    }

    /// Send `signal` (as `kill` spells it: `-TERM`, `-INT`) and wait (at most
    /// `within`) for the process to exit.
    pub fn signal(&mut self, signal: &str, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let st = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(st.success(), "kill {signal} failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not exit within {within:?} after kill {signal}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start the server again on the same data dir and config (new port).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        let logs = self.logs.lock().unwrap();
        let start = logs.len().saturating_sub(300);
        logs[start..].join("\n")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path_and_query)
    }

    // ---- HTTP ----

    pub async fn get(&self, path: &str) -> HttpResponse {
        http_request(self.port, "GET", path, &[], None).await
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> HttpResponse {
        let auth = format!("Bearer {token}");
        http_request(self.port, "GET", path, &[("Authorization", &auth)], None).await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        http_request(self.port, method, path, headers, body).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> HttpResponse {
        let bytes = serde_json::to_vec(body).unwrap();
        http_request(
            self.port,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(&bytes),
        )
        .await
    }

    /// REST history page with the test's own admin-less token.
    pub async fn history(&self, room: &str, query: &str, token: &str) -> HttpResponse {
        let path = if query.is_empty() {
            format!("/api/rooms/{room}/messages")
        } else {
            format!("/api/rooms/{room}/messages?{query}")
        };
        self.get_auth(&path, token).await
    }

    /// Walk REST history from the newest page to the oldest and return all
    /// messages oldest first. Panics on a non-200 page.
    pub async fn history_all(&self, room: &str, token: &str) -> Vec<Value> {
        let mut pages: Vec<Vec<Value>> = Vec::new();
        let mut before: Option<i64> = None;
        for _ in 0..100_000 {
            let q = match before {
                Some(b) => format!("limit=100&before={b}"),
                None => "limit=100".to_string(),
            };
            let resp = self.history(room, &q, token).await;
            assert_eq!(resp.status, 200, "history page {q}: {resp:?}");
            let body = resp.json();
            let msgs = body["messages"].as_array().expect("messages array").clone();
            pages.push(msgs);
            match body["next_before"].as_i64() {
                Some(n) => before = Some(n),
                None => {
                    assert!(
                        body["next_before"].is_null(),
                        "next_before must be int or null: {body}"
                    );
                    break;
                }
            }
        }
        pages.reverse();
        pages.into_iter().flatten().collect()
    }

    // ---- WebSocket ----

    /// Connect to `/ws?token=…` and consume the welcome frame.
    pub async fn ws(&self, token: &str) -> Client {
        let mut c = self
            .ws_connect(&format!("/ws?token={token}"), &[])
            .await
            .unwrap_or_else(|e| panic!("ws connect refused: {e:?}\nlog:\n{}", self.log_text()));
        let w = c.recv_json().await;
        assert_eq!(w["type"], "welcome", "first frame must be welcome: {w}");
        c.welcome = Some(w);
        c
    }

    /// A `/ws` client for a fresh user `sub` named `name`.
    pub async fn ws_user(&self, sub: &str, name: &str) -> Client {
        self.ws(&token(sub, name)).await
    }

    /// A `/ws` client whose socket has a tiny receive buffer, so a test can
    /// stall it (by not reading) without megabytes piling up in the kernel.
    pub async fn ws_user_small_buffer(&self, sub: &str, name: &str) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket
            .connect(self.addr().parse().expect("addr"))
            .await
            .expect("connect");
        let url = self.ws_url(&format!("/ws?token={}", token(sub, name)));
        let req = ClientRequestBuilder::new(url.parse::<Uri>().expect("ws url"));
        let (ws, _) = tokio::time::timeout(
            HTTP_TIMEOUT,
            tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("ws handshake timed out")
        .expect("ws handshake");
        let mut c = Client {
            ws,
            welcome: None,
            closed: None,
        };
        let w = c.recv_json().await;
        assert_eq!(w["type"], "welcome", "first frame must be welcome: {w}");
        c.welcome = Some(w);
        c
    }

    /// Raw WebSocket connect to `path_and_query` with extra request headers.
    /// A refused upgrade returns its HTTP status and body.
    pub async fn ws_connect(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, Refused> {
        ws_connect_url(&self.ws_url(path_and_query), headers).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- confab server log (port {}) -----\n{}\n----- end of server log -----",
                self.port,
                self.log_text()
            );
        }
    }
}

fn parse_listening_port(line: &str) -> Option<u16> {
    let idx = line.find("listening on ")?;
    let rest = &line[idx + "listening on ".len()..];
    let rest = rest
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let rest = rest.strip_prefix("127.0.0.1:")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok().filter(|p| *p != 0)
}

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Run `confab <args>` with a scrubbed environment plus `env`, in `cwd`,
/// bounded to 30 s (killed after that).
pub fn run_cli(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> CliOutput {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    scrub_env(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn confab");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).to_string()
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).to_string()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let st = child.wait().unwrap();
            let stdout = t_out.join().unwrap();
            let stderr = t_err.join().unwrap();
            panic!("confab {args:?} did not exit within 30 s ({st}); stdout:\n{stdout}\nstderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    CliOutput {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

// ---------------------------------------------------------------------------
// JWT
// ---------------------------------------------------------------------------

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn sign_claims(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode jwt")
}

/// A valid token for `sub`/`name`, valid for one hour, every room allowed.
pub fn token(sub: &str, name: &str) -> String {
    sign_claims(
        &json!({"sub": sub, "name": name, "exp": now_secs() + 3600}),
        SECRET,
    )
}

/// A valid token restricted to `rooms`.
pub fn token_rooms(sub: &str, name: &str, rooms: &[&str]) -> String {
    sign_claims(
        &json!({"sub": sub, "name": name, "exp": now_secs() + 3600, "rooms": rooms}),
        SECRET,
    )
}

/// Decode a JWT payload without verifying (for inspecting CLI output).
pub fn jwt_payload(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("jwt has 3 parts");
    let bytes = base64url_decode(part);
    serde_json::from_slice(&bytes).expect("jwt payload json")
}

fn base64url_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => panic!("bad base64url char {c}"),
        } as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    out
}

/// A unique user id for a test.
pub fn uid(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

// ---------------------------------------------------------------------------
// HTTP/1.1 client
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(|s| s.as_str())
    }

    /// Assert the contract's HTTP error shape and return the code.
    pub fn error_code(&self) -> String {
        let v = self.json();
        let code = v["error"]["code"].as_str().unwrap_or_else(|| {
            panic!("HTTP error body must be {{\"error\":{{\"code\",\"message\"}}}}: {v}")
        });
        assert!(
            v["error"]["message"].is_string(),
            "HTTP error needs a message string: {v}"
        );
        code.to_string()
    }
}

pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    tokio::time::timeout(
        HTTP_TIMEOUT,
        http_request_inner(port, method, path, headers, body),
    )
    .await
    .unwrap_or_else(|_| panic!("HTTP {method} {path} timed out"))
}

async fn http_request_inner(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect http");
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or(&[]);
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.expect("write http");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read http");
    parse_http_response(&raw)
}

fn parse_http_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut rest = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        rest = dechunk(&rest);
    } else if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        rest.truncate(len);
    }
    HttpResponse {
        status,
        headers,
        body: rest,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = data.windows(2).position(|w| w == b"\r\n") {
        let size_line = String::from_utf8_lossy(&data[..pos]).to_string();
        let size =
            usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        data = &data[pos + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

// ---------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A refused WebSocket upgrade.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
    pub other_error: Option<String>,
}

pub async fn ws_connect_url(url: &str, headers: &[(&str, &str)]) -> Result<Client, Refused> {
    let uri: Uri = url.parse().expect("ws url");
    let mut req = ClientRequestBuilder::new(uri);
    for (k, v) in headers {
        req = req.with_header(*k, *v);
    }
    let fut = tokio_tungstenite::connect_async(req);
    match tokio::time::timeout(HTTP_TIMEOUT, fut).await {
        Err(_) => panic!("WebSocket connect to {url} timed out"),
        Ok(Ok((ws, _resp))) => Ok(Client {
            ws,
            welcome: None,
            closed: None,
        }),
        Ok(Err(WsError::Http(resp))) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or_default();
            Err(Refused {
                status,
                body,
                other_error: None,
            })
        }
        Ok(Err(e)) => Err(Refused {
            status: 0,
            body: String::new(),
            other_error: Some(e.to_string()),
        }),
    }
}

/// How a connection ended, as observed by the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    /// A close frame with a code (and reason).
    Frame(u16, String),
    /// A close frame without a code.
    NoCode,
    /// The TCP stream ended or errored without a close frame.
    Eof(String),
}

impl Closed {
    pub fn code(&self) -> Option<u16> {
        match self {
            Closed::Frame(c, _) => Some(*c),
            _ => None,
        }
    }
}

pub struct Client {
    pub ws: Ws,
    pub welcome: Option<Value>,
    pub closed: Option<Closed>,
}

pub enum Frame {
    Json(Value),
    Text(String),
    Binary(Vec<u8>),
    Closed(Closed),
}

impl Client {
    pub fn user_id(&self) -> String {
        self.welcome.as_ref().unwrap()["user"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: &str) {
        tokio::time::timeout(RECV_TIMEOUT, self.ws.send(Message::text(s.to_string())))
            .await
            .expect("ws send timed out")
            .expect("ws send failed");
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) {
        tokio::time::timeout(RECV_TIMEOUT, self.ws.send(Message::binary(b)))
            .await
            .expect("ws send timed out")
            .expect("ws send failed");
    }

    pub async fn send_raw(&mut self, m: Message) {
        tokio::time::timeout(RECV_TIMEOUT, self.ws.send(m))
            .await
            .expect("ws send timed out")
            .expect("ws send failed");
    }

    /// Next non-control frame, or None on timeout.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<Frame> {
        if let Some(c) = &self.closed {
            return Some(Frame::Closed(c.clone()));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(n) => n,
            };
            let frame = match next {
                None => Frame::Closed(Closed::Eof("stream ended".into())),
                Some(Err(e)) => Frame::Closed(Closed::Eof(e.to_string())),
                Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
                Some(Ok(Message::Frame(_))) => continue,
                Some(Ok(Message::Close(cf))) => Frame::Closed(match cf {
                    Some(CloseFrame { code, reason }) => {
                        Closed::Frame(u16::from(code), reason.to_string())
                    }
                    None => Closed::NoCode,
                }),
                Some(Ok(Message::Binary(b))) => Frame::Binary(b.to_vec()),
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<Value>(t.as_str()) {
                    Ok(v) => Frame::Json(v),
                    Err(_) => Frame::Text(t.to_string()),
                },
            };
            if let Frame::Closed(c) = &frame {
                self.closed = Some(c.clone());
            }
            return Some(frame);
        }
    }

    /// Next JSON frame within the default timeout; panics otherwise.
    pub async fn recv_json(&mut self) -> Value {
        self.recv_json_within(RECV_TIMEOUT).await
    }

    pub async fn recv_json_within(&mut self, timeout: Duration) -> Value {
        match self.next_frame(timeout).await {
            None => panic!("no frame within {timeout:?}"),
            Some(Frame::Json(v)) => v,
            Some(Frame::Text(t)) => panic!("expected JSON, got non-JSON text {t:?}"),
            Some(Frame::Binary(b)) => panic!("expected JSON, got binary frame {b:?}"),
            Some(Frame::Closed(c)) => panic!("expected JSON, connection closed: {c:?}"),
        }
    }

    /// Next frame of `type` t; other frames are skipped, except that an
    /// unexpected `error` frame fails the test.
    pub async fn recv_type(&mut self, t: &str) -> Value {
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = match self.next_frame(left).await {
                None => panic!("no `{t}` frame within {RECV_TIMEOUT:?}"),
                Some(Frame::Json(v)) => v,
                Some(Frame::Text(x)) => panic!("waiting for `{t}`, got non-JSON text {x:?}"),
                Some(Frame::Binary(b)) => panic!("waiting for `{t}`, got binary {b:?}"),
                Some(Frame::Closed(c)) => panic!("waiting for `{t}`, connection closed: {c:?}"),
            };
            if v["type"] == t {
                return v;
            }
            if v["type"] == "error" {
                panic!("waiting for `{t}`, got error frame {v}");
            }
        }
    }

    /// Next frame that is not a `presence` or `typing` frame (those arrive
    /// asynchronously from other members' actions).
    pub async fn recv_main(&mut self) -> Value {
        loop {
            let v = self.recv_json().await;
            if v["type"] != "presence" && v["type"] != "typing" {
                return v;
            }
        }
    }

    /// Expect an error frame (skipping presence/typing) and return it.
    pub async fn recv_error(&mut self) -> Value {
        let v = self.recv_main().await;
        assert_eq!(v["type"], "error", "expected an error frame, got {v}");
        assert!(v["message"].is_string(), "error frame needs a message: {v}");
        v
    }

    /// Assert that no frame at all arrives within `ms`.
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Some(f) = self.next_frame(Duration::from_millis(ms)).await {
            match f {
                Frame::Json(v) => panic!("expected silence, got {v}"),
                Frame::Text(t) => panic!("expected silence, got text {t:?}"),
                Frame::Binary(b) => panic!("expected silence, got binary {b:?}"),
                Frame::Closed(c) => panic!("expected silence, connection closed: {c:?}"),
            }
        }
    }

    /// Assert that no frame of type `t` arrives within `ms` (others ignored).
    pub async fn expect_no_type(&mut self, t: &str, ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_frame(left).await {
                None => return,
                Some(Frame::Json(v)) => {
                    if v["type"] == t {
                        panic!("expected no `{t}` frame, got {v}");
                    }
                }
                Some(Frame::Closed(c)) => panic!("connection closed while expecting quiet: {c:?}"),
                Some(_) => {}
            }
        }
    }

    /// Wait for the connection to close and return how.
    pub async fn recv_close(&mut self, timeout: Duration) -> Closed {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left).await {
                None => panic!("connection not closed within {timeout:?}"),
                Some(Frame::Closed(c)) => return c,
                Some(_) => {}
            }
        }
    }

    /// Send `join` and return the `joined` frame (panics on an error).
    pub async fn join(&mut self, room: &str) -> Value {
        self.send_json(json!({"type":"join","room":room})).await;
        self.expect_joined(room).await
    }

    pub async fn join_with(&mut self, frame: Value) -> Value {
        let room = frame["room"].as_str().unwrap().to_string();
        self.send_json(frame).await;
        self.expect_joined(&room).await
    }

    async fn expect_joined(&mut self, room: &str) -> Value {
        let v = self.recv_main().await;
        assert_eq!(v["type"], "joined", "expected joined for {room}, got {v}");
        assert_eq!(v["room"], room, "joined room: {v}");
        v
    }

    /// Send a message and wait for its ack. Frames arriving before the ack
    /// (including the sender's own `message` frame, if it comes first) are
    /// skipped; use `send_and_echo` to check both.
    pub async fn send_msg(&mut self, room: &str, content: &str, r: &str) -> Value {
        self.send_json(json!({"type":"send","room":room,"content":content,"ref":r}))
            .await;
        let ack = self.recv_type("ack").await;
        assert_eq!(ack["ref"], r, "ack ref: {ack}");
        ack
    }

    /// Send and wait for both the ack and the sender's own message frame
    /// (in either order). Returns (ack, message).
    pub async fn send_and_echo(&mut self, room: &str, content: &str, r: &str) -> (Value, Value) {
        self.send_json(json!({"type":"send","room":room,"content":content,"ref":r}))
            .await;
        let mut ack = None;
        let mut msg = None;
        while ack.is_none() || msg.is_none() {
            let v = self.recv_main().await;
            match v["type"].as_str() {
                Some("ack") if v["ref"] == r => ack = Some(v),
                Some("message") if v["content"] == content && v["room"] == room => msg = Some(v),
                _ => panic!("while waiting for ack+message of {r}: unexpected {v}"),
            }
        }
        (ack.unwrap(), msg.unwrap())
    }

    /// Receive `n` frames of type `message` (skipping presence/typing/ack).
    pub async fn recv_messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = self.recv_main().await;
            match v["type"].as_str() {
                Some("message") => out.push(v),
                Some("ack") => {}
                _ => panic!(
                    "expected message frames ({} of {n} so far), got {v}",
                    out.len()
                ),
            }
        }
        out
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
        // Drain until the server answers the close (bounded).
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Populate `room` with `n` messages via one `/ws` connection (joined with
/// `history: 0`, sends pipelined). Returns the live `message` frames the
/// sender received, in seq order, after checking each equals its ack.
pub async fn populate(server: &Server, room: &str, n: usize, tag: &str) -> Vec<Value> {
    let mut c = server.ws_user(&uid("populator"), "populator").await;
    c.join_with(json!({"type":"join","room":room,"history":0}))
        .await;
    for i in 0..n {
        c.send_json(json!({"type":"send","room":room,"content":format!("{tag} #{}", i + 1),"ref":format!("{tag}-{i}")}))
            .await;
    }
    let mut acks: HashMap<i64, Value> = HashMap::new();
    let mut msgs: Vec<Value> = Vec::with_capacity(n);
    while acks.len() < n || msgs.len() < n {
        let v = c.recv_main().await;
        match v["type"].as_str() {
            Some("ack") => {
                acks.insert(v["seq"].as_i64().unwrap(), v);
            }
            Some("message") => msgs.push(v),
            _ => panic!("populate: unexpected frame {v}"),
        }
    }
    for m in &msgs {
        let a = &acks[&m["seq"].as_i64().unwrap()];
        assert_eq!(a["id"], m["id"], "ack/message id differ: {a} vs {m}");
        assert_eq!(
            a["timestamp"], m["timestamp"],
            "ack/message timestamp differ: {a} vs {m}"
        );
    }
    msgs.sort_by_key(|m| m["seq"].as_i64().unwrap());
    c.close().await;
    // The room coalesces presence changes for 100 ms: let the populator's
    // leave go out (to nobody) before a test's own clients join, so they
    // don't get a `presence` frame about a user their roster never showed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    msgs
}

/// Sequence numbers of a list of message objects.
pub fn seqs(msgs: &[Value]) -> Vec<i64> {
    msgs.iter()
        .map(|m| m["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {m}")))
        .collect()
}

/// Assert a message/ack timestamp looks like RFC 3339 UTC.
pub fn assert_timestamp(v: &Value) {
    let ts = v["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("timestamp must be a string: {v}"));
    assert!(
        ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.contains('T'),
        "timestamp is not RFC 3339: {ts}"
    );
}

/// Assert a JSON object has exactly these keys.
pub fn assert_keys(v: &Value, keys: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut have: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
    have.sort();
    let mut want: Vec<&str> = keys.to_vec();
    want.sort();
    assert_eq!(have, want, "keys of {v}");
}

/// `message` frame minus `type`: the shape of history entries.
pub fn strip_type(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("type");
    v
}

pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Drains one of the child's pipes into the shared log (so it never fills) and
/// reports the port from the `listening on` line.
fn spawn_log_reader(
    pipe: impl std::io::Read + Send + 'static,
    label: String,
    logs: Arc<Mutex<Vec<String>>>,
    port_tx: mpsc::Sender<u16>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if let Some(port) = parse_listening_port(&line) {
                        let _ = port_tx.send(port);
                    }
                    logs.lock().unwrap().push(format!("[{label}] {line}"));
                }
            }
        }
    });
}
