//! WebSocket clients for the fanout, ramp and idle scenarios: connecting
//! (source addresses, auth, handshake), the frames they send, and the cheap
//! parsing of the frames they receive.
//!
//! Both endpoints are spoken: `/ws` (protocol v1, JSON both ways) and the
//! seed-compatible `/ws/chat/{room}` (plain text up, JSON down), so any server
//! with that simple text protocol can be measured with the same tool.

use crate::stats::{self, Tally};
use anyhow::{anyhow, bail, Context as _};
use clap::{Args, ValueEnum};
use confab::auth::Auth;
use futures_util::{SinkExt, StreamExt};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// How long one connection may take to connect, upgrade and join.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Lifetime of the tokens the tool mints (longer than any bounded run).
const TOKEN_TTL_SECS: u64 = 24 * 3600;

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the tool started, from the one monotonic clock every task
/// shares: senders stamp it into each message, receivers subtract it.
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// `/ws?token=…`: JSON frames, join, acks, gap-free seqs checked.
    V1,
    /// `/ws/chat/{room}`: plain-text sends, JSON messages, no acks (a sender's
    /// own copy of its message stands in for the ack).
    Seed,
}

/// Where and how to connect; shared by fanout, ramp and idle.
#[derive(Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Server URL, ws://HOST:PORT (the path follows from --protocol). Several,
    /// comma-separated (instances of one cluster): client i uses URL i mod N,
    /// so every room has members on every instance.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// Endpoint to speak: v1 (/ws) or seed (/ws/chat/{room}).
    #[arg(long, value_enum, default_value_t = Protocol::V1)]
    pub protocol: Protocol,
    /// The server's auth.jwt_secret: the tool mints an HS256 token per client
    /// (each client is its own user, so per-user limits apply per client).
    #[arg(long, env = "CONFAB_BENCH_JWT_SECRET")]
    pub jwt_secret: Option<String>,
    /// Get each client's token from POST /api/login instead (guest login on).
    #[arg(long, conflicts_with = "jwt_secret")]
    pub guest: bool,
    /// Bind sockets to source addresses 127.0.0.1..=127.0.0.N, round-robin,
    /// so many connections don't share one address's ports (0: OS default).
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// The server's pid, for its CPU (fanout, ramp) and RSS (idle). Default:
    /// the one process named `confab`, if there is exactly one.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// A file holding the server's pid (instead of --server-pid).
    #[arg(long, conflicts_with = "server_pid")]
    pub pid_file: Option<String>,
}

enum Credentials {
    Mint(Box<Auth>),
    Guest,
    /// Seed protocol with guest login: no token at all.
    Anonymous,
}

/// Opens bench clients against one server.
pub struct Connector {
    /// One `(address, host:port)` per server; client i uses entry i mod N.
    servers: Vec<(SocketAddr, String)>,
    pub protocol: Protocol,
    credentials: Credentials,
    sources: u8,
    config: WebSocketConfig,
    /// Distinguishes this run's users and rooms from earlier runs'.
    pub run_id: String,
}

/// One connected (and, with a room, joined) client.
pub struct Client {
    pub ws: Ws,
    /// `joined.last_seq` (v1 with a room): the first live seq is this + 1.
    pub last_seq: Option<u64>,
}

impl Connector {
    pub async fn new(args: &ConnectArgs, read_buffer: usize) -> anyhow::Result<Self> {
        let mut servers = Vec::new();
        for url in args.url.split(',').map(str::trim) {
            let rest = url
                .strip_prefix("ws://")
                .ok_or_else(|| anyhow!("--url must start with ws:// (got {url:?})"))?;
            let authority = rest.split('/').next().unwrap_or_default().to_string();
            if authority.is_empty() {
                bail!("--url has no host: {url:?}");
            }
            let addr = tokio::net::lookup_host(authority.as_str())
                .await
                .with_context(|| format!("resolving {authority}"))?
                .find(SocketAddr::is_ipv4)
                .ok_or_else(|| anyhow!("{authority} has no IPv4 address"))?;
            if args.sources > 0 && !addr.ip().is_loopback() {
                bail!("--sources binds 127.0.0.x, which only reaches a loopback server; use --sources 0 for {addr}");
            }
            servers.push((addr, authority));
        }
        let credentials = match (&args.jwt_secret, args.guest, args.protocol) {
            (Some(secret), _, _) => Credentials::Mint(Box::new(Auth::new(secret.as_bytes()))),
            (None, true, _) => Credentials::Guest,
            (None, false, Protocol::Seed) => Credentials::Anonymous,
            (None, false, Protocol::V1) => bail!(
                "/ws needs a token: give --jwt-secret (the server's auth.jwt_secret; \
                 bench/confab-bench.toml's is confab-bench-secret-not-for-production) or --guest"
            ),
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer.max(1024))
            .max_message_size(Some(16 << 20));
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        Ok(Self {
            servers,
            protocol: args.protocol,
            credentials,
            sources: args.sources,
            config,
            run_id,
        })
    }

    /// The server client `index` talks to.
    fn server(&self, index: usize) -> &(SocketAddr, String) {
        &self.servers[index % self.servers.len()]
    }

    /// This run's name for room `index`: fresh rooms, so seqs start at 1.
    pub fn room(&self, index: usize) -> String {
        format!("bench-{}-{index}", self.run_id)
    }

    /// A TCP connection from source address 127.0.0.(1 + index % sources).
    async fn tcp(&self, index: usize) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        if self.sources > 0 {
            let source = Ipv4Addr::new(127, 0, 0, 1 + (index % self.sources as usize) as u8);
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
        }
        let stream = socket.connect(self.server(index).0).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn token(&self, index: usize) -> anyhow::Result<Option<String>> {
        let name = format!("bench-{index}");
        match &self.credentials {
            Credentials::Mint(auth) => {
                let sub = format!("bench-{}-{index}", self.run_id);
                Ok(Some(auth.mint(&sub, &name, TOKEN_TTL_SECS, None)))
            }
            Credentials::Guest => self.guest_login(index, &name).await.map(Some),
            Credentials::Anonymous => Ok(None),
        }
    }

    /// `POST /api/login` over a bare HTTP/1.1 connection (the tool needs no
    /// HTTP client for this one request per client).
    async fn guest_login(&self, index: usize, name: &str) -> anyhow::Result<String> {
        let body = format!("{{\"name\":\"{name}\"}}");
        let request = format!(
            "POST /api/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.server(index).1,
            body.len()
        );
        let mut stream = self.tcp(index).await.context("connecting for /api/login")?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response);
        let status = text.split(' ').nth(1).unwrap_or("?");
        if status != "200" {
            bail!(
                "POST /api/login answered {status}: {}",
                text.split("\r\n\r\n").nth(1).unwrap_or("").trim()
            );
        }
        str_field(&text, "\"token\":\"")
            .map(str::to_string)
            .ok_or_else(|| anyhow!("POST /api/login: no token in the answer"))
    }

    /// Connects client `index`; with a room, joins it (v1: `history` 0, then
    /// waits for `joined`; seed: the room is the path). Bounded in time.
    pub async fn open(&self, index: usize, room: Option<&str>) -> anyhow::Result<Client> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.open_inner(index, room)).await {
            Ok(result) => result.with_context(|| format!("client {index}")),
            Err(_) => bail!(
                "client {index}: not connected within {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
        }
    }

    async fn open_inner(&self, index: usize, room: Option<&str>) -> anyhow::Result<Client> {
        let token = self.token(index).await?;
        let path = match self.protocol {
            Protocol::V1 => format!("/ws?token={}", token.as_deref().unwrap_or_default()),
            Protocol::Seed => {
                let room = room.ok_or_else(|| anyhow!("the seed protocol needs a room"))?;
                match &token {
                    Some(token) => format!("/ws/chat/{room}?history=0&token={token}"),
                    None => format!("/ws/chat/{room}?history=0&name=bench-{index}"),
                }
            }
        };
        let stream = self.tcp(index).await.context("connecting")?;
        let url = format!("ws://{}{path}", self.server(index).1);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(self.config))
                .await
                .map_err(describe_upgrade_error)?;
        if self.protocol == Protocol::Seed {
            return Ok(Client { ws, last_seq: None });
        }
        let welcome = next_text(&mut ws).await?;
        if frame_type(&welcome) != Some("welcome") {
            bail!("expected welcome, got {welcome}");
        }
        let Some(room) = room else {
            return Ok(Client { ws, last_seq: None });
        };
        ws.send(Message::text(format!(
            "{{\"type\":\"join\",\"room\":\"{room}\",\"history\":0}}"
        )))
        .await?;
        loop {
            let frame = next_text(&mut ws).await?;
            match frame_type(&frame) {
                Some("joined") => {
                    let last_seq = u64_field(&frame, "\"last_seq\":")
                        .ok_or_else(|| anyhow!("joined without last_seq: {frame}"))?;
                    return Ok(Client {
                        ws,
                        last_seq: Some(last_seq),
                    });
                }
                Some("error") => bail!("join {room}: {frame}"),
                _ => {} // presence of earlier members' joins elsewhere: not ours to check
            }
        }
    }
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_string()),
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// A refused upgrade names its status, body and the likely fix.
fn describe_upgrade_error(error: WsError) -> anyhow::Error {
    match error {
        WsError::Http(response) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let hint = match status.as_u16() {
                429 => " (limits.connections_per_ip: start the server with bench/confab-bench.toml, or set it to 0)",
                401 => " (does --jwt-secret match the server's auth.jwt_secret?)",
                403 => " (is guest login off?)",
                _ => "",
            };
            anyhow!("upgrade refused: HTTP {status} {body}{hint}")
        }
        other => anyhow!("upgrade failed: {other}"),
    }
}

/// Opens `count` clients (client `i` joins `room_of(i)`), `concurrency` at a
/// time, in index order; prints a line a second with `progress`.
pub async fn open_all(
    connector: &Arc<Connector>,
    count: usize,
    concurrency: usize,
    room_of: impl Fn(usize) -> Option<String>,
    progress: bool,
) -> anyhow::Result<Vec<Client>> {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let opened = Arc::new(AtomicUsize::new(0));
    let reporter = progress.then(|| {
        let opened = opened.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("connecting: {}/{count}", opened.load(Ordering::Relaxed));
            }
        })
    });
    let mut handles = Vec::with_capacity(count);
    for index in 0..count {
        let connector = connector.clone();
        let gate = gate.clone();
        let opened = opened.clone();
        let room = room_of(index);
        handles.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            let client = connector.open(index, room.as_deref()).await;
            opened.fetch_add(1, Ordering::Relaxed);
            client
        }));
    }
    let mut clients = Vec::with_capacity(count);
    let mut failure = None;
    for handle in handles {
        match handle.await {
            Ok(Ok(client)) => clients.push(client),
            Ok(Err(error)) => {
                failure.get_or_insert(error);
            }
            Err(join) => {
                failure.get_or_insert(anyhow!("a connect task failed: {join}"));
            }
        }
    }
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    match failure {
        Some(error) => Err(error.context(format!(
            "{} of {count} connections failed",
            count - clients.len()
        ))),
        None => Ok(clients),
    }
}

// ------------------------------------------------------------------- frames

/// The text a sender puts in a message: send time (ns since the tool's start),
/// sender, counter (so no two contents are equal: the server refuses repeated
/// content as spam), then `x` padding up to `bytes`.
pub fn content(out: &mut String, ts: u64, sender: u64, counter: u64, bytes: usize) {
    let start = out.len();
    let _ = write!(out, "{ts} {sender} {counter} ");
    while out.len() - start < bytes {
        out.push('x');
    }
}

/// One `send` frame (v1) or the plain text (seed). The v1 `ref` also carries
/// the send time, so the ack's latency needs no lookup table.
pub fn send_frame(
    protocol: Protocol,
    room: &str,
    ts: u64,
    sender: u64,
    counter: u64,
    bytes: usize,
) -> String {
    let mut out = String::with_capacity(bytes + 96);
    match protocol {
        Protocol::V1 => {
            let _ = write!(
                out,
                "{{\"type\":\"send\",\"room\":\"{room}\",\"content\":\""
            );
            content(&mut out, ts, sender, counter, bytes);
            let _ = write!(out, "\",\"ref\":\"{ts}.{counter}\"}}");
        }
        Protocol::Seed => content(&mut out, ts, sender, counter, bytes),
    }
    out
}

/// The `type` of a v1 frame: server frames start with it, but any position works.
pub fn frame_type(text: &str) -> Option<&str> {
    str_field(text, "\"type\":\"")
}

/// The string after `key` (which ends with the opening quote), up to the
/// closing quote. Inside a JSON string a quote is always escaped, so `key`
/// cannot match inside another field's value.
pub fn str_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// The unsigned integer after `key` (e.g. `"seq":`).
pub fn u64_field(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    leading_u64(&text[start..])
}

/// The digits at the start of `text`, as a number.
pub fn leading_u64(text: &str) -> Option<u64> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    text[..digits].parse().ok()
}

/// `(send time, sender)` from a bench content; `None` for anyone else's.
fn parse_content(content: &str) -> Option<(u64, u64)> {
    let ts = leading_u64(content)?;
    let rest = content.split_once(' ')?.1;
    Some((ts, leading_u64(rest)?))
}

/// Error codes that mean the server's abuse limits are in the way: the run
/// would measure the limiter, so it stops.
fn fatal_hint(code: &str) -> Option<&'static str> {
    match code {
        "rate_limited" => Some(
            "the server answered rate_limited: its limits are not raised (start it with \
             bench/confab-bench.toml, or raise limits.messages_per_sec and limits.message_burst)",
        ),
        "spam" => Some(
            "the server answered spam: raise moderation.spam_repeats (bench/confab-bench.toml does)",
        ),
        _ => None,
    }
}

/// Per-connection receive state: counts every frame into the thread's tally
/// and checks seqs. Parses only what it needs (type, seq, the send time in
/// the content), never a full JSON value.
pub struct Reader {
    pub protocol: Protocol,
    /// This client's global index (the sender number in contents).
    pub me: u64,
    /// The next seq this connection must see; `None` until it is known.
    pub expect: Option<u64>,
    /// A sender's in-flight window (window mode): acks give permits back.
    pub window: Option<Arc<Semaphore>>,
}

impl Reader {
    pub fn on_text(&mut self, text: &str, tally: &mut Tally) {
        match self.protocol {
            Protocol::V1 => match frame_type(text) {
                Some("message") => self.on_message(text, "\"content\":\"", tally),
                Some("ack") => {
                    tally.acks += 1;
                    if let Some(ts) = str_field(text, "\"ref\":\"").and_then(leading_u64) {
                        tally.record_ack(now_ns().saturating_sub(ts));
                    }
                    self.release();
                }
                Some("error") => {
                    let code = str_field(text, "\"code\":\"").unwrap_or("unknown");
                    self.on_error(code, text, tally);
                    if text.contains("\"ref\":\"") {
                        self.release();
                    }
                }
                _ => {} // joined, presence, typing, pong: not measured
            },
            Protocol::Seed => {
                if text.contains("\"seq\":") {
                    self.on_message(text, "\"message\":\"", tally);
                } else if let Some(code) = str_field(text, "\"code\":\"") {
                    self.on_error(code, text, tally);
                    self.release();
                }
            }
        }
    }

    fn on_message(&mut self, text: &str, content_key: &str, tally: &mut Tally) {
        tally.deliveries += 1;
        match u64_field(text, "\"seq\":") {
            Some(seq) => {
                if let Some(expect) = self.expect {
                    if seq != expect {
                        tally.seq_violations += 1;
                        stats::note(format!(
                            "client {}: seq {seq} where {expect} was due ({})",
                            self.me,
                            if seq > expect {
                                "gap"
                            } else {
                                "repeat or reorder"
                            }
                        ));
                    }
                }
                self.expect = Some(seq + 1);
            }
            None => tally.unparsed += 1,
        }
        match str_field(text, content_key).and_then(parse_content) {
            Some((ts, sender)) => {
                let latency = now_ns().saturating_sub(ts);
                tally.record_delivery(latency);
                if self.protocol == Protocol::Seed && sender == self.me {
                    // The seed endpoint has no acks: our own copy is the answer.
                    tally.acks += 1;
                    tally.record_ack(latency);
                    self.release();
                }
            }
            None => tally.foreign += 1,
        }
    }

    fn on_error(&mut self, code: &str, text: &str, tally: &mut Tally) {
        *tally.errors.entry(code.to_string()).or_default() += 1;
        match fatal_hint(code) {
            Some(hint) => stats::set_fatal(hint.to_string()),
            None => stats::note(format!("client {}: {text}", self.me)),
        }
    }

    fn release(&self) {
        if let Some(window) = &self.window {
            window.add_permits(1);
        }
    }
}

/// Reads one connection until it ends, counting every frame. tungstenite
/// answers the server's pings while reading, so this also keeps idle
/// connections alive. A close or error before the run ends is a disconnect.
pub async fn read_loop<S>(mut stream: S, mut reader: Reader)
where
    S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    while let Some(item) = stream.next().await {
        match item {
            Ok(Message::Text(text)) => stats::record(|t| reader.on_text(text.as_str(), t)),
            Ok(Message::Close(frame)) => {
                let why = match frame {
                    Some(f) => format!("close {} {}", u16::from(f.code), f.reason),
                    None => "close without a code".to_string(),
                };
                disconnected(reader.me, &why);
                return;
            }
            Ok(_) => {}
            Err(error) => {
                disconnected(reader.me, &error.to_string());
                return;
            }
        }
    }
    disconnected(reader.me, "connection ended");
}

fn disconnected(client: u64, why: &str) {
    stats::record(|t| t.disconnects += 1);
    stats::note(format!("client {client} disconnected: {why}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_v1_message_frame() {
        let frame = r#"{"type":"message","room":"r","seq":42,"id":"x","user":"b","user_id":"u","content":"123 7 9 xxxx","timestamp":"t"}"#;
        assert_eq!(frame_type(frame), Some("message"));
        assert_eq!(u64_field(frame, "\"seq\":"), Some(42));
        let content = str_field(frame, "\"content\":\"");
        assert_eq!(content.and_then(parse_content), Some((123, 7)));
    }

    #[test]
    fn contents_differ_and_have_the_asked_size() {
        let a = send_frame(Protocol::Seed, "r", 5, 1, 1, 40);
        let b = send_frame(Protocol::Seed, "r", 5, 1, 2, 40);
        assert_ne!(a, b);
        assert_eq!(a.len(), 40);
        let v1 = send_frame(Protocol::V1, "r", 5, 1, 2, 40);
        let value: serde_json::Value = serde_json::from_str(&v1).expect("valid JSON");
        assert_eq!(value["ref"], "5.2");
    }
}
