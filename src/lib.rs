//! confab: a real-time chat server. See docs/architecture.md for the map.

pub mod access;
pub mod analytics;
pub mod auth;
pub mod broker;
pub mod changes;
pub mod chat;
pub mod config;
pub mod connection;
pub mod dedupe;
pub mod history;
pub mod http;
pub mod limits;
pub mod markers;
pub mod message;
pub mod metrics;
pub mod persist;
pub mod protocol;
pub mod registry;
pub mod retention;
pub mod room;
pub mod server;
pub mod session;
pub mod store;
pub mod transfer;
pub mod users;
pub mod websocket;

use actix::Addr;

/// Hash maps on the message path: foldhash (randomly seeded, so client-chosen
/// keys such as refs can't be aimed at one bucket) instead of SipHash, which
/// showed up in profiles.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// Everything actors and handlers share, cheap to clone.
#[derive(Clone)]
pub struct AppDeps {
    pub config: Arc<config::Config>,
    pub auth: Arc<auth::Auth>,
    pub store: store::SharedStore,
    /// Export, import, retention and the analytics counters.
    pub pipeline: store::SharedPipeline,
    pub broker: broker::SharedBroker,
    pub registry: Addr<registry::Registry>,
    /// Ref idempotency: ask here whether a (user, ref) is already answered.
    pub refs: Arc<broker::Refs>,
    /// Per-user send rate, across the user's connections on this instance.
    pub send_limiter: Arc<limits::SendLimiter>,
    /// Per-user joins and leaves: toggling a room can't flood its members.
    pub join_limiter: Arc<limits::SendLimiter>,
    /// Guest logins per client IP.
    pub login_limiter: Arc<limits::IpLimiter>,
    pub moderation: Arc<limits::Moderation>,
    pub connections: Arc<limits::ConnectionCounter>,
    /// Flips to true when a graceful shutdown begins; sessions close with 1001.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Live WebSocket sessions, so shutdown can wait for their close frames.
    pub sessions: Arc<AtomicUsize>,
    /// This instance's connections per user, for frames meant for a user.
    pub users: Arc<users::Users>,
    /// Read markers waiting to be written.
    pub markers: Arc<markers::ReadMarkers>,
}

impl AppDeps {
    /// Sends `frame` to every connection of `user` on every instance, except
    /// the session `except`.
    pub fn tell_user(&self, user: &str, frame: &str, except: Option<uuid::Uuid>) {
        self.users.deliver(user, frame, except);
        self.broker.tell_user(user, frame);
    }
}

/// jemalloc's options (read at its start-up): a background thread returns
/// freed memory to the system within about a second, so what a burst or an
/// abusive client allocated doesn't stay resident after it is gone.
#[cfg(feature = "jemalloc")]
#[used]
#[export_name = "_rjem_malloc_conf"]
pub static JEMALLOC_CONF: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
