//! The RedisBridge actor: this process's ONE pub/sub connection. It subscribes
//! to a room's channel while the room has a local actor, relays what other
//! instances publish to that actor, and on a lost connection reconnects with
//! backoff, resubscribes, and asks every room to resync what it missed.

use super::wire::{decode_payload, split_payload, split_user_payload};
use super::{BrokerError, Inbound};
use actix::prelude::*;
use deadpool_redis::redis::{self, aio::PubSubSink, Msg};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct RedisBridge {
    client: redis::Client,
    prefix: String,
    instance: Arc<str>,
    /// Set while subscribed and reading; `/readyz` and sends look at it.
    up: Arc<AtomicBool>,
    sink: Option<PubSubSink>,
    rooms: HashMap<String, (u64, Recipient<Inbound>)>,
    backoff: Duration,
    /// Tells the stream of the current connection from a dead one's.
    connection: u64,
    /// The channel of frames for users, and who delivers them here.
    users: Option<(String, Arc<crate::users::Users>)>,
}

impl RedisBridge {
    pub fn new(
        client: redis::Client,
        prefix: String,
        instance: Arc<str>,
        up: Arc<AtomicBool>,
    ) -> Self {
        Self {
            client,
            prefix,
            instance,
            up,
            sink: None,
            rooms: HashMap::new(),
            backoff: BACKOFF_MIN,
            connection: 0,
            users: None,
        }
    }

    /// Also relays the frames for users published on `channel` to `users`.
    pub fn telling(mut self, channel: String, users: Arc<crate::users::Users>) -> Self {
        self.users = Some((channel, users));
        self
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let client = self.client.clone();
        let mut channels: Vec<String> = self
            .rooms
            .keys()
            .map(|room| format!("{}{room}", self.prefix))
            .collect();
        channels.extend(self.users.as_ref().map(|(channel, _)| channel.clone()));
        ctx.wait(
            async move {
                let pubsub = client.get_async_pubsub().await?;
                let (mut sink, stream) = pubsub.split();
                if !channels.is_empty() {
                    sink.subscribe(&channels).await?;
                }
                Ok::<_, redis::RedisError>((sink, stream))
            }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok((sink, stream)) => {
                    act.connection += 1;
                    let connection = act.connection;
                    act.sink = Some(sink);
                    act.backoff = BACKOFF_MIN;
                    ctx.add_stream(stream.map(move |msg| (connection, msg)));
                    act.up.store(true, Ordering::SeqCst);
                    tracing::info!(rooms = act.rooms.len(), "redis relay connected");
                    // Whatever was published while we were away is in the streams.
                    for (_, to) in act.rooms.values() {
                        to.do_send(Inbound::Resync);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = act.backoff.as_millis() as u64, "redis relay cannot connect");
                    act.retry_later(ctx);
                }
            }),
        );
    }

    fn retry_later(&mut self, ctx: &mut Context<Self>) {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        ctx.run_later(wait, |act, ctx| act.connect(ctx));
    }

    fn relay(&self, msg: &Msg) {
        if let Some((channel, users)) = &self.users {
            if msg.get_channel_name() == channel {
                let payload = std::str::from_utf8(msg.get_payload_bytes()).ok();
                if let Some((instance, user, frame)) = payload.and_then(split_user_payload) {
                    if instance != &*self.instance {
                        users.deliver(user, frame, None);
                    }
                }
                return;
            }
        }
        let Some(room) = msg.get_channel_name().strip_prefix(&self.prefix) else {
            return;
        };
        let Some((_, to)) = self.rooms.get(room) else {
            return;
        };
        let Ok(payload) = std::str::from_utf8(msg.get_payload_bytes()) else {
            return;
        };
        let Some((tag, instance, rest)) = split_payload(payload) else {
            return;
        };
        if instance == &*self.instance {
            return; // this instance's own rooms already have it
        }
        if let Some(inbound) = decode_payload(room, tag, instance, rest) {
            to.do_send(inbound);
        }
    }
}

use futures_util::StreamExt;

impl Actor for RedisBridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.connect(ctx);
    }
}

impl StreamHandler<(u64, Msg)> for RedisBridge {
    fn handle(&mut self, (connection, msg): (u64, Msg), _: &mut Self::Context) {
        if connection == self.connection {
            self.relay(&msg);
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The connection is gone (Redis restarted, network): reconnect.
        self.up.store(false, Ordering::SeqCst);
        self.sink = None;
        tracing::warn!("redis relay lost its connection; reconnecting");
        self.retry_later(ctx);
    }
}

/// Relay a room's channel to this room actor; resolves once subscribed.
#[derive(Message)]
#[rtype(result = "Result<(), BrokerError>")]
pub struct Attach {
    pub room: String,
    pub id: u64,
    pub to: Recipient<Inbound>,
}

impl Handler<Attach> for RedisBridge {
    type Result = ResponseFuture<Result<(), BrokerError>>;

    fn handle(&mut self, attach: Attach, _: &mut Self::Context) -> Self::Result {
        let channel = format!("{}{}", self.prefix, attach.room);
        let already = self.rooms.contains_key(&attach.room);
        self.rooms.insert(attach.room, (attach.id, attach.to));
        let sink = self.sink.clone();
        Box::pin(async move {
            let Some(mut sink) = sink else {
                return Err(BrokerError::Unavailable(
                    "the redis relay is reconnecting".into(),
                ));
            };
            if !already {
                sink.subscribe(&channel)
                    .await
                    .map_err(BrokerError::failed)?;
            }
            Ok(())
        })
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Detach {
    pub room: String,
    pub id: u64,
}

impl Handler<Detach> for RedisBridge {
    type Result = ();

    fn handle(&mut self, detach: Detach, ctx: &mut Self::Context) {
        if self.rooms.get(&detach.room).map(|(id, _)| *id) != Some(detach.id) {
            return; // a newer actor of this room took over
        }
        self.rooms.remove(&detach.room);
        if let Some(mut sink) = self.sink.clone() {
            let channel = format!("{}{}", self.prefix, detach.room);
            ctx.spawn(
                async move {
                    let _ = sink.unsubscribe(&channel).await;
                }
                .into_actor(self),
            );
        }
    }
}
