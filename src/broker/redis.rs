//! Cluster mode's broker: Redis sequences every send, keeps each room's recent
//! messages in a stream, feeds one persist stream that every instance's Persist
//! consumes, and relays presence and typing on the room's channel.
//!
//! Keys (all under `broker.namespace`, shown here as `ns`):
//! - `ns:seq:{room}`: the room's newest seq (seeded from the store when missing);
//! - `ns:stream:{room}`: recent messages, entry id `{seq}-0`, capped near `recovery_max`;
//! - `ns:persist`: every accepted message, consumed by the group `persist`;
//! - `ns:ref:{len(user)}:{user}:{ref}`: a send's ack fields, for 10 minutes;
//! - `ns:presence:{room}`: sorted set of `{instance}\n{user json}`, scored by expiry;
//! - channel `ns:room:{room}`: `M`essage batches, `P+`/`P-` presence, `T`yping.

use super::bridge::{Attach, Detach, RedisBridge};
use super::{Accepted, Announce, Broker, BrokerError, Draft, Inbound, RemotePresence};
use crate::persist::Persist;
use crate::protocol::{ChatMessage, UserInfo};
use crate::store::SharedStore;
use actix::prelude::*;
use async_trait::async_trait;
use deadpool_redis::redis::{self, Value};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a presence entry lives unless its instance refreshes it (rooms
/// refresh every 5 s), so a crashed instance's users vanish within ~20 s.
const PRESENCE_TTL_MS: i64 = 15_000;
/// The idempotency window for refs (PROTOCOL: 10 minutes).
const REF_TTL_SECS: u64 = 600;
/// A command waits this long for a pooled connection before failing `unavailable`.
const POOL_WAIT: Duration = Duration::from_secs(2);

/// Sequences a batch of one room's sends atomically. Per send: answer a known
/// (user, ref) with its original ack fields; otherwise take the next seq, append
/// to the room's stream and the persist stream, and remember the ref. Then one
/// PUBLISH of the batch. Nothing after the first write can fail, so a batch is
/// all or nothing. Returns, per send, its seq (integer) or the original
/// `room\nseq\nid\ntimestamp` (string).
const ACCEPT_SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return redis.error_reply('NOSEQ the room seq is not seeded') end
cur = tonumber(cur)
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if top[1] then
  local t = tonumber(string.match(top[1][1], '^(%d+)'))
  if t and t > cur then cur = t end
end
local results = {}
local lines = {}
local n = (#ARGV - 5) / 4
for i = 0, n - 1 do
  local b = 5 + i * 4
  local refkey, id, ts, body = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local original = false
  if refkey ~= '' then original = redis.call('GET', refkey) end
  if original then
    results[#results + 1] = original
  else
    cur = cur + 1
    local seq = string.format('%d', cur)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'b', body)
    redis.call('XADD', KEYS[3], '*', 'r', ARGV[1], 's', seq, 'b', body)
    if refkey ~= '' then
      redis.call('SET', refkey, ARGV[1] .. '\n' .. seq .. '\n' .. id .. '\n' .. ts, 'EX', ARGV[4])
    end
    results[#results + 1] = cur
    lines[#lines + 1] = seq .. ' ' .. body
  end
end
redis.call('SET', KEYS[1], string.format('%d', cur))
if #lines > 0 then
  redis.call('PUBLISH', ARGV[2], 'M ' .. ARGV[5] .. '\n' .. table.concat(lines, '\n'))
end
return results
"#;

/// Seeds a missing room seq with the highest of the store's seq (ARGV[1]) and
/// the room stream's newest entry, so a seq is never handed out twice.
const SEED_SCRIPT: &str = r#"
local v = tonumber(ARGV[1])
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if top[1] then
  local t = tonumber(string.match(top[1][1], '^(%d+)'))
  if t and t > v then v = t end
end
redis.call('SET', KEYS[1], string.format('%d', v), 'NX')
return redis.call('GET', KEYS[1])
"#;

/// Every key and channel name, under the namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    ns: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        Self {
            ns: namespace.to_string(),
        }
    }
    pub fn seq(&self, room: &str) -> String {
        format!("{}:seq:{room}", self.ns)
    }
    pub fn stream(&self, room: &str) -> String {
        format!("{}:stream:{room}", self.ns)
    }
    pub fn persist(&self) -> String {
        format!("{}:persist", self.ns)
    }
    pub fn channel(&self, room: &str) -> String {
        format!("{}{room}", self.channel_prefix())
    }
    pub fn channel_prefix(&self) -> String {
        format!("{}:room:", self.ns)
    }
    pub fn presence(&self, room: &str) -> String {
        format!("{}:presence:{room}", self.ns)
    }
    /// The user id's length keeps `("a:b", "c")` and `("a", "b:c")` apart.
    pub fn reference(&self, user_id: &str, client_ref: &str) -> String {
        format!("{}:ref:{}:{user_id}:{client_ref}", self.ns, user_id.len())
    }
}

/// A message as it travels through Redis, without room and seq (those are
/// the stream entry's, or the channel's and the line's).
#[derive(Serialize, Deserialize)]
struct WireBody {
    id: String,
    uid: String,
    un: String,
    c: String,
    ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<String>,
}

fn encode_body(draft: &Draft) -> String {
    let body = WireBody {
        id: draft.id.clone(),
        uid: draft.user.id.clone(),
        un: draft.user.name.clone(),
        c: draft.content.clone(),
        ts: draft.timestamp_ms,
        r: draft.client_ref.clone(),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

pub(crate) fn decode_body(room: &str, seq: u64, body: &str) -> Option<ChatMessage> {
    let b: WireBody = serde_json::from_str(body).ok()?;
    Some(ChatMessage {
        room: room.to_string(),
        seq,
        id: b.id,
        user_id: b.uid,
        user_name: b.un,
        content: b.c,
        timestamp_ms: b.ts,
        client_ref: b.r,
    })
}

/// The seq of a room stream entry id (`{seq}-0`).
pub(crate) fn entry_seq(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

fn user_json(user: &UserInfo) -> String {
    serde_json::to_string(user).unwrap_or_default()
}

/// `{instance}\n{user json}`: a presence entry, and the body of P+/P-/T events.
fn presence_member(instance: &str, user: &UserInfo) -> String {
    format!("{instance}\n{}", user_json(user))
}

pub(crate) fn parse_presence_member(member: &str) -> Option<(Arc<str>, Arc<UserInfo>)> {
    let (instance, json) = member.split_once('\n')?;
    let user: UserInfo = serde_json::from_str(json).ok()?;
    Some((Arc::from(instance), Arc::new(user)))
}

/// Work for the announcer: one ordered queue, so a join's entry can't be
/// written after the leave that follows it.
enum Announcement {
    Event(String, Announce),
    Refresh(String, Vec<Arc<UserInfo>>),
    /// Answered once everything queued before it was written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

pub struct RedisBroker {
    pool: deadpool_redis::Pool,
    keys: Keys,
    instance: Arc<str>,
    store: SharedStore,
    stream_max: u64,
    bridge: Addr<RedisBridge>,
    relay_up: Arc<AtomicBool>,
    announcer: mpsc::UnboundedSender<Announcement>,
    accept: redis::Script,
    seed: redis::Script,
}

impl RedisBroker {
    /// Connects the command pool, starts the RedisBridge (the one pub/sub
    /// connection) and the persist-stream feed into `persist`. Redis may be down
    /// at start: sends answer `unavailable` until it is back.
    pub fn start(
        config: &crate::config::Config,
        store: SharedStore,
        persist: Addr<Persist>,
        instance: Arc<str>,
        shutdown: tokio::sync::watch::Receiver<bool>,
        analytics: super::feed::AnalyticsFeed,
    ) -> Result<Self, BrokerError> {
        let url = &config.broker.redis_url;
        let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
        let pool = deadpool_redis::Config::from_url(url.clone())
            .builder()
            .map_err(unavailable)?
            .max_size(config.storage.pool_size.max(4))
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(POOL_WAIT))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(unavailable)?;
        let keys = Keys::new(&config.broker.namespace);
        let relay_up = Arc::new(AtomicBool::new(false));
        let bridge = RedisBridge::new(
            client.clone(),
            keys.channel_prefix(),
            instance.clone(),
            relay_up.clone(),
        )
        .start();
        super::feed::spawn(
            super::feed::Feed {
                client,
                stream: keys.persist(),
                consumer: instance.to_string(),
                persist,
                batch_max: config.storage.batch_max,
                shutdown,
            },
            analytics,
        );
        let (announcer, queue) = mpsc::unbounded_channel();
        actix::spawn(run_announcer(
            pool.clone(),
            keys.clone(),
            instance.clone(),
            queue,
        ));
        Ok(Self {
            pool,
            keys,
            instance,
            store,
            stream_max: config.rooms.recovery_max.max(1),
            bridge,
            relay_up,
            announcer,
            accept: redis::Script::new(ACCEPT_SCRIPT),
            seed: redis::Script::new(SEED_SCRIPT),
        })
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, BrokerError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// Seeds the room's seq from the store (and the room's stream), never below `floor`.
    async fn seed_seq(
        &self,
        conn: &mut deadpool_redis::Connection,
        room: &str,
        floor: u64,
    ) -> Result<u64, BrokerError> {
        let stored = self.store.last_seq(room).await.map_err(unavailable)?;
        let seq: String = self
            .seed
            .key(self.keys.seq(room))
            .key(self.keys.stream(room))
            .arg(stored.max(floor))
            .invoke_async(conn)
            .await
            .map_err(unavailable)?;
        seq.parse().map_err(unavailable)
    }
}

fn is_noseq(e: &redis::RedisError) -> bool {
    e.code() == Some("NOSEQ") || e.to_string().contains("NOSEQ")
}

/// `room\nseq\nid\ntimestamp` -> an ack-only message for a resent ref.
fn parse_original(text: &str, user_id: &str, client_ref: &str) -> Option<ChatMessage> {
    let mut parts = text.splitn(4, '\n');
    let room = parts.next()?.to_string();
    let seq = parts.next()?.parse().ok()?;
    let id = parts.next()?.to_string();
    let timestamp_ms = parts.next()?.parse().ok()?;
    Some(ChatMessage {
        room,
        seq,
        id,
        user_id: user_id.to_string(),
        user_name: String::new(),
        content: String::new(),
        timestamp_ms,
        client_ref: Some(client_ref.to_string()),
    })
}

#[async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        if !self.relay_up.load(Ordering::SeqCst) {
            return Err(unavailable("the pub/sub relay is reconnecting"));
        }
        let mut conn = self.conn().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn attach(&self, room: &str, id: u64, to: Recipient<Inbound>) -> Result<(), BrokerError> {
        self.bridge
            .send(Attach {
                room: room.to_string(),
                id,
                to,
            })
            .await
            .map_err(unavailable)?
    }

    fn detach(&self, room: &str, id: u64) {
        self.bridge.do_send(Detach {
            room: room.to_string(),
            id,
        });
    }

    async fn head(&self, room: &str, floor: u64) -> Result<u64, BrokerError> {
        let mut conn = self.conn().await?;
        let seq: Option<u64> = redis::cmd("GET")
            .arg(self.keys.seq(room))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match seq {
            Some(seq) => Ok(seq),
            None => self.seed_seq(&mut conn, room, floor).await,
        }
    }

    async fn accept(
        &self,
        room: &str,
        committed: u64,
        drafts: Vec<Draft>,
    ) -> Result<Vec<Accepted>, BrokerError> {
        let mut conn = self.conn().await?;
        let mut invocation = self.accept.prepare_invoke();
        invocation
            .key(self.keys.seq(room))
            .key(self.keys.stream(room))
            .key(self.keys.persist())
            .arg(room)
            .arg(self.keys.channel(room))
            .arg(self.stream_max)
            .arg(REF_TTL_SECS)
            .arg(self.instance.as_ref());
        for d in &drafts {
            let ref_key = d
                .client_ref
                .as_deref()
                .map(|r| self.keys.reference(&d.user.id, r))
                .unwrap_or_default();
            invocation
                .arg(ref_key)
                .arg(&d.id)
                .arg(d.timestamp_ms)
                .arg(encode_body(d));
        }
        let mut seeded = false;
        let values: Vec<Value> = loop {
            let started = std::time::Instant::now();
            let result = invocation.invoke_async(&mut conn).await;
            crate::metrics::get()
                .redis_roundtrip_seconds
                .record(crate::metrics::seconds(started.elapsed()));
            match result {
                Ok(values) => break values,
                Err(e) if is_noseq(&e) && !seeded => {
                    seeded = true;
                    self.seed_seq(&mut conn, room, committed).await?;
                }
                Err(e) => return Err(unavailable(e)),
            }
        };
        if values.len() != drafts.len() {
            return Err(unavailable(
                "the sequencing script answered a different count",
            ));
        }
        let mut results = Vec::with_capacity(drafts.len());
        for (draft, value) in drafts.into_iter().zip(values) {
            let result = match value {
                Value::Int(seq) => Accepted::New(Arc::new(draft.into_message(room, seq as u64))),
                Value::BulkString(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    let client_ref = draft.client_ref.as_deref().unwrap_or_default();
                    match parse_original(&text, &draft.user.id, client_ref) {
                        Some(original) => Accepted::Duplicate(Arc::new(original)),
                        None => return Err(unavailable("unreadable ref record in Redis")),
                    }
                }
                other => return Err(unavailable(format!("unexpected script reply {other:?}"))),
            };
            results.push(result);
        }
        Ok(results)
    }

    async fn recent(
        &self,
        room: &str,
        after: u64,
        upto: u64,
    ) -> Result<Vec<ChatMessage>, BrokerError> {
        if upto <= after {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.stream(room))
            .arg(format!("{}-0", after + 1))
            .arg(format!("{upto}-0"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut messages = Vec::with_capacity(reply.ids.len());
        for entry in reply.ids {
            let (Some(seq), Some(body)) = (entry_seq(&entry.id), entry.get::<String>("b")) else {
                continue;
            };
            if let Some(m) = decode_body(room, seq, &body) {
                messages.push(m);
            }
        }
        Ok(messages)
    }

    fn announce(&self, room: &str, event: Announce) {
        let _ = self
            .announcer
            .send(Announcement::Event(room.to_string(), event));
    }

    async fn refresh_presence(
        &self,
        room: &str,
        local: Vec<Arc<UserInfo>>,
    ) -> Result<Option<Vec<RemotePresence>>, BrokerError> {
        if !local.is_empty() {
            let _ = self
                .announcer
                .send(Announcement::Refresh(room.to_string(), local));
        }
        let now = crate::protocol::now_ms();
        let key = self.keys.presence(room);
        let mut conn = self.conn().await?;
        let (_, members): ((), Vec<String>) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(PRESENCE_TTL_MS * 4)
            .cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(format!("({now}"))
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let remote = members
            .iter()
            .filter_map(|m| parse_presence_member(m))
            .filter(|(instance, _)| *instance != self.instance)
            .map(|(instance, user)| RemotePresence { instance, user })
            .collect();
        Ok(Some(remote))
    }

    async fn known_ref(&self, user_id: &str, client_ref: &str) -> Option<Arc<ChatMessage>> {
        let mut conn = self.conn().await.ok()?;
        let text: Option<String> = redis::cmd("GET")
            .arg(self.keys.reference(user_id, client_ref))
            .query_async(&mut conn)
            .await
            .ok()?;
        parse_original(&text?, user_id, client_ref).map(Arc::new)
    }

    async fn drain(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.announcer.send(Announcement::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), written).await;
        }
    }

    async fn online(&self, rooms: &[String]) -> Option<HashMap<String, usize>> {
        let mut conn = self.conn().await.ok()?;
        let now = crate::protocol::now_ms();
        let mut pipe = redis::pipe();
        for room in rooms {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(self.keys.presence(room))
                .arg(format!("({now}"))
                .arg("+inf");
        }
        let answers: Vec<Vec<String>> = pipe.query_async(&mut conn).await.ok()?;
        Some(
            rooms
                .iter()
                .zip(answers)
                .map(|(room, members)| {
                    let users: HashSet<String> = members
                        .iter()
                        .filter_map(|m| parse_presence_member(m))
                        .map(|(_, u)| u.id.clone())
                        .collect();
                    (room.clone(), users.len())
                })
                .collect(),
        )
    }
}

/// Writes presence entries and publishes presence and typing events, in the
/// order the rooms produced them, pipelining whatever queued meanwhile.
async fn run_announcer(
    pool: deadpool_redis::Pool,
    keys: Keys,
    instance: Arc<str>,
    mut queue: mpsc::UnboundedReceiver<Announcement>,
) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, 256).await > 0 {
        let now = crate::protocol::now_ms();
        let expires = now + PRESENCE_TTL_MS;
        let mut pipe = redis::pipe();
        let mut flushed = Vec::new();
        for item in batch.drain(..) {
            match item {
                Announcement::Flush(done) => flushed.push(done),
                Announcement::Event(room, event) => {
                    let (tag, user, entry) = match &event {
                        Announce::Joined(u) => ("P+", u, Some(true)),
                        Announce::Left(u) => ("P-", u, Some(false)),
                        Announce::Typing(u) => ("T", u, None),
                    };
                    let member = presence_member(&instance, user);
                    match entry {
                        Some(true) => {
                            pipe.cmd("ZADD")
                                .arg(keys.presence(&room))
                                .arg(expires)
                                .arg(&member)
                                .ignore();
                        }
                        Some(false) => {
                            pipe.cmd("ZREM")
                                .arg(keys.presence(&room))
                                .arg(&member)
                                .ignore();
                        }
                        None => {}
                    }
                    pipe.cmd("PUBLISH")
                        .arg(keys.channel(&room))
                        .arg(format!("{tag} {member}"))
                        .ignore();
                }
                Announcement::Refresh(room, users) => {
                    let key = keys.presence(&room);
                    let mut cmd = redis::cmd("ZADD");
                    cmd.arg(&key);
                    for user in &users {
                        cmd.arg(expires).arg(presence_member(&instance, user));
                    }
                    pipe.add_command(cmd).ignore();
                }
            }
        }
        let result = match pool.get().await {
            _ if pipe.cmd_iter().next().is_none() => Ok(()),
            Ok(mut conn) => pipe.query_async::<()>(&mut conn).await.map_err(unavailable),
            Err(e) => Err(unavailable(e)),
        };
        if let Err(error) = result {
            // Lost announcements heal with the next refresh (every 5 s).
            tracing::debug!(%error, "presence announcement not delivered");
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_keys_keep_users_apart() {
        let k = Keys::new("ns");
        assert_ne!(k.reference("a:b", "c"), k.reference("a", "b:c"));
        assert_eq!(k.channel("general"), "ns:room:general");
    }

    #[test]
    fn body_round_trip() {
        let draft = Draft::new(
            Arc::new(UserInfo {
                id: "u-1".into(),
                name: "alice".into(),
            }),
            "hi \"there\"\nline".into(),
            Some("c-1".into()),
        );
        let m = decode_body("g", 7, &encode_body(&draft)).unwrap();
        assert_eq!((m.seq, m.content.as_str()), (7, "hi \"there\"\nline"));
        assert_eq!(m.client_ref.as_deref(), Some("c-1"));
        assert_eq!(entry_seq("42-0"), Some(42));
    }

    #[test]
    fn presence_member_round_trip() {
        let user = UserInfo {
            id: "u\n1".into(),
            name: "bob".into(),
        };
        let (instance, parsed) = parse_presence_member(&presence_member("inst-1", &user)).unwrap();
        assert_eq!((&*instance, parsed.as_ref()), ("inst-1", &user));
    }
}
