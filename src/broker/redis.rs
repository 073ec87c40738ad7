//! Cluster mode's broker: Redis sequences every send, keeps each room's recent
//! messages in a stream, feeds one persist stream that every instance's Persist
//! consumes, and relays presence and typing on the room's channel. What lives
//! under which key, and the scripts, are in [`super::wire`].

use super::bridge::{Attach, Detach, RedisBridge};
use super::wire::{
    decode_body, encode_body, entry_seq, event_payload, parse_original, parse_presence_member,
    presence_member, user_payload, Keys, ACCEPT_SCRIPT, SEED_SCRIPT,
};
use super::{
    Accepted, Announce, Broker, BrokerError, Draft, Inbound, Presence, Relay, RemotePresence,
};
use crate::chat::ChatMessage;
use crate::persist::Persist;
use crate::protocol::UserInfo;
use crate::store::SharedStore;
use actix::prelude::*;
use async_trait::async_trait;
use deadpool_redis::redis::{self, Value};
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

/// Work for the announcer: one ordered queue, so a join's entry can't be
/// written after the leave that follows it.
enum Announcement {
    Event(String, Announce),
    Refresh(String, Vec<Arc<UserInfo>>),
    /// Answered once everything queued before it was written.
    Flush(tokio::sync::oneshot::Sender<()>),
    /// A frame for a user's connections on other instances.
    User(String, String),
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> BrokerError {
    BrokerError::failed(e)
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
        users: Arc<crate::users::Users>,
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
        .telling(keys.users(), users)
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

#[async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        if !self.relay_up.load(Ordering::SeqCst) {
            return Err(BrokerError::Unavailable(
                "the pub/sub relay is reconnecting".into(),
            ));
        }
        let mut conn = self.conn().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl Relay for RedisBroker {
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
            return Err(BrokerError::Unavailable(
                "the sequencing script answered a different count".into(),
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
                        None => {
                            return Err(BrokerError::Unavailable(
                                "unreadable ref record in Redis".into(),
                            ))
                        }
                    }
                }
                other => {
                    return Err(BrokerError::Unavailable(format!(
                        "unexpected script reply {other:?}"
                    )))
                }
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

    async fn set_room_kind(&self, room: &str, kind: &str) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        redis::cmd("SET")
            .arg(self.keys.kind(room))
            .arg(kind)
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn room_kind(&self, room: &str) -> Result<Option<String>, BrokerError> {
        let mut conn = self.conn().await?;
        redis::cmd("GET")
            .arg(self.keys.kind(room))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)
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
}

#[async_trait]
impl Presence for RedisBroker {
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

    fn tell_user(&self, user: &str, frame: &str) {
        let _ = self
            .announcer
            .send(Announcement::User(user.to_string(), frame.to_string()));
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
                Announcement::User(user, frame) => {
                    pipe.cmd("PUBLISH")
                        .arg(keys.users())
                        .arg(user_payload(&instance, &user, &frame))
                        .ignore();
                }
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
                        .arg(event_payload(tag, &member))
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
