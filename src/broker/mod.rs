//! The broker seam: how a room's sends are sequenced and made durable, and how
//! its traffic reaches other instances. Rooms only see [`Broker`], which is
//! [`Relay`] (seqs, durability, other instances' messages) plus [`Presence`]
//! (who is where, typing):
//! - embedded mode ([`local::LocalBroker`]): seqs come from the room's own count,
//!   durability is a group commit through the Persist actor, and there is nobody
//!   to relay to;
//! - cluster mode ([`redis::RedisBroker`]): one Lua script per batch sequences,
//!   dedupes and appends to Redis streams; the [`bridge::RedisBridge`] actor
//!   relays other instances' messages, presence and typing to local rooms, and
//!   the persist feed carries accepted messages to the store. Key names,
//!   encodings and scripts live in `wire`.

pub mod bridge;
mod feed;
pub use feed::AnalyticsFeed;
mod import;
pub use import::{RaiseError, SeqRaiser};
pub mod local;
pub mod redis;
mod refs;
pub use refs::Refs;
mod wire;

use crate::chat::{ChatMessage, Kind};
use crate::protocol::{Change, Rejection, UserInfo};
use actix::prelude::*;
use async_trait::async_trait;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Nothing failed, but this can't be done now (the relay is reconnecting).
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// A dependency (Redis, the store, Persist) failed; the error is kept.
    #[error("broker unavailable: {0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl BrokerError {
    pub fn failed(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Failed(Box::new(e))
    }
}

/// A validated send or change waiting for its seq. Its id and timestamp are
/// fixed here, so every copy (ack, live frames, history) carries the same ones.
#[derive(Debug, Clone)]
pub struct Draft {
    pub user: Arc<UserInfo>,
    /// A message's or an edit's text, a reaction's emoji, empty for a delete.
    pub content: String,
    pub client_ref: Option<String>,
    pub id: String,
    pub timestamp_ms: i64,
    pub kind: Kind,
    /// The message a change applies to.
    pub target: Option<String>,
    /// The message a message replies to.
    pub reply_to: Option<String>,
}

impl Draft {
    /// A message.
    pub fn new(user: Arc<UserInfo>, content: String, client_ref: Option<String>) -> Self {
        Self {
            user,
            content,
            client_ref,
            id: uuid::Uuid::now_v7().to_string(),
            timestamp_ms: crate::protocol::now_ms(),
            kind: Kind::Message,
            target: None,
            reply_to: None,
        }
    }

    /// A change of kind `kind` to message `target`.
    pub fn change(
        user: Arc<UserInfo>,
        kind: Kind,
        target: String,
        content: String,
        client_ref: Option<String>,
    ) -> Self {
        Self {
            kind,
            target: Some(target),
            ..Self::new(user, content, client_ref)
        }
    }

    /// The change a client frame asks for.
    pub fn of_change(user: Arc<UserInfo>, change: Change, client_ref: Option<String>) -> Self {
        let (kind, target, content) = match change {
            Change::Edit { target, content } => (Kind::Edit, target, content),
            Change::Delete { target } => (Kind::Delete, target, String::new()),
            Change::React { target, emoji } => (Kind::React, target, emoji),
            Change::Unreact { target, emoji } => (Kind::Unreact, target, emoji),
        };
        Self::change(user, kind, target, content, client_ref)
    }

    /// A message replying to `reply_to`.
    pub fn replying_to(mut self, reply_to: Option<String>) -> Self {
        self.reply_to = reply_to;
        self
    }

    pub fn into_message(self, room: &str, seq: u64) -> ChatMessage {
        ChatMessage {
            room: room.to_string(),
            seq,
            id: self.id,
            user_id: self.user.id.clone(),
            user_name: self.user.name.clone(),
            content: self.content,
            timestamp_ms: self.timestamp_ms,
            client_ref: self.client_ref,
            kind: self.kind,
            target: self.target,
            reply_to: self.reply_to,
            ..ChatMessage::default()
        }
    }
}

/// What became of one draft of an accepted batch.
#[derive(Debug, Clone)]
pub enum Accepted {
    /// Sequenced and durable.
    New(Arc<ChatMessage>),
    /// The (user, ref) already named a send: answer with its ack. Only the ack
    /// fields (room, seq, id, timestamp) are guaranteed to be filled in.
    Duplicate(Arc<ChatMessage>),
    /// This draft alone is refused.
    Rejected(Rejection),
    /// A change that would change nothing (a reaction already there): acked
    /// as `unchanged`, naming its target message; nothing is sequenced.
    Unchanged(Arc<ChatMessage>),
}

/// Traffic for a local room that another instance produced (or a hint that
/// some may have been missed).
#[derive(Message)]
#[rtype(result = "()")]
pub enum Inbound {
    /// Messages in seq order, as the sequencer published them.
    Messages(Vec<Arc<ChatMessage>>),
    /// A user's first connection on `instance` joined, or its last one left.
    Presence {
        instance: Arc<str>,
        user: Arc<UserInfo>,
        joined: bool,
    },
    Typing {
        instance: Arc<str>,
        user: Arc<UserInfo>,
    },
    /// The relay was interrupted: fetch whatever was published meanwhile.
    Resync,
}

/// Local events other instances should hear about.
#[derive(Debug, Clone)]
pub enum Announce {
    Joined(Arc<UserInfo>),
    Left(Arc<UserInfo>),
    Typing(Arc<UserInfo>),
}

/// A user present in a room through another instance.
#[derive(Debug, Clone)]
pub struct RemotePresence {
    pub instance: Arc<str>,
    pub user: Arc<UserInfo>,
}

/// Sequencing and relay: how a room's sends get their seqs and become durable,
/// and how other instances' traffic for the room reaches its actor.
#[async_trait]
pub trait Relay: Send + Sync + 'static {
    /// Starts relaying other instances' traffic for `room` to `to`; resolves once
    /// the relay is live, so nothing published after it can be missed.
    /// `id` tells this room actor apart from an earlier or later one of the same room.
    async fn attach(&self, room: &str, id: u64, to: Recipient<Inbound>) -> Result<(), BrokerError>;
    /// The room actor stopped: stop relaying to it.
    fn detach(&self, room: &str, id: u64);
    /// The room's newest seq. When the broker lost it (Redis restarted empty) it
    /// is re-seeded, never below `floor` (the newest seq the room has seen).
    async fn head(&self, room: &str, floor: u64) -> Result<u64, BrokerError>;
    /// Sequences a batch of one room's sends, in order, and makes them durable.
    /// A room has at most one call in flight, so the order of its sends is the
    /// order of their seqs. `committed` is the newest seq the room has seen.
    async fn accept(
        &self,
        room: &str,
        committed: u64,
        drafts: Vec<Draft>,
    ) -> Result<Vec<Accepted>, BrokerError>;
    /// The room's messages with `after < seq <= upto` that the broker still
    /// holds (cluster: the room's stream), oldest first; may start later than
    /// `after + 1` or be empty, and the store has the rest.
    async fn recent(
        &self,
        room: &str,
        after: u64,
        upto: u64,
    ) -> Result<Vec<ChatMessage>, BrokerError>;
    /// The accepted send a `(user, ref)` names, if the broker knows one that this
    /// instance's ref window doesn't (cluster: sent through another instance).
    /// Ask [`crate::broker::Refs`], which looks here after the window.
    async fn known_ref(&self, _user_id: &str, _client_ref: &str) -> Option<Arc<ChatMessage>> {
        None
    }
    /// Keeps a private or direct room's kind where rooms can read it while
    /// the store is down (cluster: a Redis key; embedded: nowhere, the store
    /// is in-process).
    async fn set_room_kind(&self, _room: &str, _kind: &str) -> Result<(), BrokerError> {
        Ok(())
    }
    /// The kind [`Relay::set_room_kind`] kept (`None`: a public room, or unknown).
    async fn room_kind(&self, _room: &str) -> Result<Option<String>, BrokerError> {
        Ok(None)
    }
}

/// Presence and typing across instances: who is in a room through another
/// instance, and telling them about this one's joins, leaves and typing.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Tells other instances about a local presence change or typing.
    fn announce(&self, room: &str, event: Announce);
    /// Refreshes this instance's presence entries for `room` and returns who is
    /// present through other instances (`None`: there are no other instances).
    async fn refresh_presence(
        &self,
        room: &str,
        local: Vec<Arc<UserInfo>>,
    ) -> Result<Option<Vec<RemotePresence>>, BrokerError>;
    /// Users online per room across all instances (`None`: only this instance
    /// knows, ask the rooms).
    async fn online(&self, rooms: &[String]) -> Option<std::collections::HashMap<String, usize>>;
    /// Shutdown: deliver what was announced (the sessions' leaves) before exit.
    async fn drain(&self) {}
    /// Carries a frame for `user` to the other instances, whose connections
    /// of that user get it (see `crate::users`).
    fn tell_user(&self, _user: &str, _frame: &str) {}
}

/// The whole seam, as rooms, sessions and handlers hold it ([`SharedBroker`]).
#[async_trait]
pub trait Broker: Relay + Presence {
    /// A short name for logs and `/readyz` ("local", "redis").
    fn kind(&self) -> &'static str;
    /// Other instances share the rooms: the store trails the relay, and
    /// another instance may know what this one doesn't (refs, recent entries).
    fn shared(&self) -> bool {
        true
    }
    /// Whether the broker answers; `/readyz` reports it.
    async fn ready(&self) -> Result<(), BrokerError>;
}

pub type SharedBroker = Arc<dyn Broker>;
