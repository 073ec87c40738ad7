//! Ref idempotency (PROTOCOL): a `send` whose (user, ref) names an accepted
//! send of the last ten minutes, on any instance, is answered with the original
//! ack before any other check, instead of becoming a second message.
//!
//! [`crate::broker::Refs`] is the front door every "is this ref already
//! answered?" goes through (sessions, rooms, startup). Behind it:
//! - [`RefCache`], this instance's window: rebuilt from the store at startup,
//!   fed with every message the rooms deliver, and in embedded mode also the
//!   sequencer's own record (the local broker claims refs in it);
//! - the broker ([`crate::broker::Relay::known_ref`]): in cluster mode, sends
//!   accepted through other instances that this window hasn't seen.
//!
//! The sequencer stays the authority: a resend that passes every check is
//! deduplicated atomically when its batch is accepted.
//!
//! Memory is bounded by the window and a hard entry cap, and an entry keeps
//! only the ack's fields (never the content).

use crate::chat::ChatMessage;
use crate::store::SharedStore;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const REF_WINDOW: Duration = Duration::from_secs(600);
const DEFAULT_CAP: usize = 1_000_000;

type Key = (String, String);

#[derive(Debug, Clone)]
enum Entry {
    InFlight { room: String },
    Done(Arc<ChatMessage>),
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Unknown ref: it is now reserved for this send.
    New,
    /// Already accepted: answer with this message's ack.
    Done(Arc<ChatMessage>),
    /// Being written right now, as a send to `room`.
    InFlight { room: String },
}

pub struct RefCache {
    inner: Mutex<Inner>,
    window: Duration,
    cap: usize,
}

#[derive(Default)]
struct Inner {
    entries: crate::FastMap<Key, (Instant, Entry)>,
    order: VecDeque<(Instant, Key)>,
}

impl Default for RefCache {
    fn default() -> Self {
        Self::new(REF_WINDOW, DEFAULT_CAP)
    }
}

impl RefCache {
    /// The window at startup: the sends with a ref that the store holds from
    /// the last [`REF_WINDOW`]. A store that can't answer leaves it empty.
    pub async fn load(store: &SharedStore) -> Self {
        let cache = Self::default();
        let window_start = crate::protocol::now_ms() - REF_WINDOW.as_millis() as i64;
        match store.recent_refs(window_start).await {
            Ok(recent) => cache.warm(
                recent.into_iter().map(|r| r.message),
                crate::protocol::now_ms(),
            ),
            Err(error) => tracing::warn!(%error, "could not rebuild the ref window"),
        }
        cache
    }

    pub fn new(window: Duration, cap: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            window,
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The accepted message for a known ref, if any.
    pub fn done(&self, user_id: &str, client_ref: &str) -> Option<Arc<ChatMessage>> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        match inner
            .entries
            .get(&(user_id.to_string(), client_ref.to_string()))
        {
            Some((_, Entry::Done(m))) => Some(m.clone()),
            _ => None,
        }
    }

    /// Reserves the ref for a send to `room`, or reports what it already names.
    pub fn claim(&self, user_id: &str, client_ref: &str, room: &str) -> Claim {
        let now = Instant::now();
        let key = (user_id.to_string(), client_ref.to_string());
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        if let Some((_, entry)) = inner.entries.get(&key) {
            return match entry {
                Entry::Done(m) => Claim::Done(m.clone()),
                Entry::InFlight { room } => Claim::InFlight { room: room.clone() },
            };
        }
        let entry = Entry::InFlight {
            room: room.to_string(),
        };
        self.insert(&mut inner, key, now, entry);
        Claim::New
    }

    /// Records an accepted send learned elsewhere (cluster mode: another
    /// instance's, via Redis), so resends here are answered without a round trip.
    pub fn remember(&self, msg: &Arc<ChatMessage>) {
        let Some(client_ref) = &msg.client_ref else {
            return;
        };
        let now = Instant::now();
        let key = (msg.user_id.clone(), client_ref.clone());
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        if !inner.entries.contains_key(&key) {
            self.insert(
                &mut inner,
                key,
                now,
                Entry::Done(Arc::new(msg.ack_fields())),
            );
        }
    }

    fn insert(&self, inner: &mut Inner, key: Key, now: Instant, entry: Entry) {
        inner.entries.insert(key.clone(), (now, entry));
        inner.order.push_back((now, key));
        while inner.entries.len() > self.cap {
            let Some((at, old)) = inner.order.pop_front() else {
                break;
            };
            Self::remove_if_at(inner, &old, at);
        }
    }

    /// The send committed: resends now get its ack.
    pub fn complete(&self, msg: &Arc<ChatMessage>) {
        let Some(client_ref) = &msg.client_ref else {
            return;
        };
        let key = (msg.user_id.clone(), client_ref.clone());
        let mut inner = self.lock();
        if let Some((_, entry)) = inner.entries.get_mut(&key) {
            *entry = Entry::Done(Arc::new(msg.ack_fields()));
        }
    }

    /// The send failed: the ref may be used again.
    pub fn forget(&self, user_id: &str, client_ref: &str) {
        let key = (user_id.to_string(), client_ref.to_string());
        self.lock().entries.remove(&key);
    }

    /// Rebuilds the window from the store at startup (messages oldest first).
    pub fn warm(&self, recent: impl IntoIterator<Item = ChatMessage>, now_ms: i64) {
        let now = Instant::now();
        let mut inner = self.lock();
        for msg in recent {
            let Some(client_ref) = msg.client_ref.clone() else {
                continue;
            };
            let age = Duration::from_millis(now_ms.saturating_sub(msg.timestamp_ms).max(0) as u64);
            if age >= self.window {
                continue;
            }
            let at = now.checked_sub(age).unwrap_or(now);
            let key = (msg.user_id.clone(), client_ref);
            inner
                .entries
                .insert(key.clone(), (at, Entry::Done(Arc::new(msg.ack_fields()))));
            inner.order.push_back((at, key));
        }
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some((at, _)) = inner.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            let Some((at, key)) = inner.order.pop_front() else {
                break;
            };
            Self::remove_if_at(inner, &key, at);
        }
    }

    /// Removes the entry only if it is the one queued at `at` (not a later reuse).
    fn remove_if_at(inner: &mut Inner, key: &Key, at: Instant) {
        if inner.entries.get(key).is_some_and(|(t, _)| *t == at) {
            inner.entries.remove(key);
        }
    }
}

/// A message of room "g" as `user` sent it with ref `r`, for ref tests.
#[cfg(test)]
pub(crate) fn sent_with_ref(user: &str, r: &str, seq: u64) -> Arc<ChatMessage> {
    Arc::new(ChatMessage {
        room: "g".into(),
        seq,
        id: format!("id-{seq}"),
        user_id: user.into(),
        user_name: user.into(),
        content: "x".into(),
        timestamp_ms: crate::protocol::now_ms(),
        client_ref: Some(r.into()),
        ..ChatMessage::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::sent_with_ref as msg;

    #[test]
    fn claim_complete_and_replay() {
        let cache = RefCache::default();
        assert_eq!(cache.claim("u", "r1", "g"), Claim::New);
        assert_eq!(
            cache.claim("u", "r1", "h"),
            Claim::InFlight { room: "g".into() }
        );
        assert_eq!(cache.claim("v", "r1", "g"), Claim::New, "refs are per user");
        cache.complete(&msg("u", "r1", 1));
        assert_eq!(cache.done("u", "r1").unwrap().seq, 1);
        cache.forget("v", "r1");
        assert_eq!(cache.claim("v", "r1", "g"), Claim::New);
    }

    #[test]
    fn the_window_keeps_the_ack_not_the_content() {
        let cache = RefCache::default();
        let sent = msg("u", "r1", 4);
        assert_eq!(cache.claim("u", "r1", "g"), Claim::New);
        cache.complete(&sent);
        let kept = cache.done("u", "r1").unwrap();
        assert!(kept.content.is_empty() && kept.user_name.is_empty());
        assert_eq!(kept.ack_json(Some("r1")), sent.ack_json(Some("r1")));
        cache.remember(&msg("u", "r2", 5));
        assert!(cache.done("u", "r2").unwrap().content.is_empty());
    }

    #[test]
    fn window_and_cap_bound_memory() {
        let cache = RefCache::new(Duration::from_millis(50), 3);
        for i in 0..10 {
            cache.claim("u", &format!("r{i}"), "g");
        }
        assert_eq!(cache.len(), 3);
        std::thread::sleep(Duration::from_millis(60));
        cache.claim("u", "fresh", "g");
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn warm_keeps_only_the_window() {
        let cache = RefCache::default();
        let mut old = (*msg("u", "old", 1)).clone();
        old.timestamp_ms -= 11 * 60 * 1000;
        let new = (*msg("u", "new", 2)).clone();
        cache.warm(vec![old, new], crate::protocol::now_ms());
        assert!(cache.done("u", "old").is_none());
        assert_eq!(cache.done("u", "new").unwrap().seq, 2);
    }
}
