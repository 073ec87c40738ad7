//! The one front door for ref idempotency (PROTOCOL: a `send` whose (user,
//! ref) names an accepted send of the last ten minutes is answered with the
//! original ack): this instance's window ([`crate::dedupe::RefCache`]) first,
//! then the broker, which in cluster mode knows sends accepted elsewhere.

use super::SharedBroker;
use crate::chat::ChatMessage;
use crate::dedupe::RefCache;
use std::sync::Arc;

/// The one front door for ref idempotency; see the module docs.
pub struct Refs {
    window: Arc<RefCache>,
    broker: SharedBroker,
}

impl Refs {
    /// `window` is the one the broker was built with (embedded mode claims
    /// refs in it); see [`RefCache::load`].
    pub fn new(window: Arc<RefCache>, broker: SharedBroker) -> Self {
        Self { window, broker }
    }

    /// The original of a known ref, from this instance's window only: no
    /// waiting, so a session answers a resend before checking anything else.
    pub fn answered(&self, user_id: &str, client_ref: &str) -> Option<Arc<ChatMessage>> {
        self.window.done(user_id, client_ref)
    }

    /// The original of a known ref anywhere: this instance's window first,
    /// then the broker (cluster mode: sends accepted through other instances).
    /// A session asks this before refusing a send that carries a ref.
    pub async fn known(&self, user_id: &str, client_ref: &str) -> Option<Arc<ChatMessage>> {
        if let Some(original) = self.answered(user_id, client_ref) {
            return Some(original);
        }
        self.broker.known_ref(user_id, client_ref).await
    }

    /// A message a room delivered (this instance's or relayed from another):
    /// resends of its ref are answered from the window from now on.
    pub fn remember(&self, msg: &Arc<ChatMessage>) {
        self.window.remember(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{
        Accepted, Announce, Broker, BrokerError, Draft, Inbound, Presence, Relay, RemotePresence,
    };
    use crate::dedupe::{sent_with_ref as msg, Claim};
    use actix::Recipient;
    use async_trait::async_trait;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Knows one ref ("elsewhere"), as if sent through another instance,
    /// and counts how often it is asked.
    #[derive(Default)]
    struct FakeBroker {
        asked: AtomicUsize,
    }

    #[async_trait]
    impl Relay for FakeBroker {
        async fn attach(&self, _: &str, _: u64, _: Recipient<Inbound>) -> Result<(), BrokerError> {
            Ok(())
        }
        fn detach(&self, _: &str, _: u64) {}
        async fn head(&self, _: &str, _: u64) -> Result<u64, BrokerError> {
            Ok(0)
        }
        async fn accept(
            &self,
            _: &str,
            _: u64,
            _: Vec<Draft>,
        ) -> Result<Vec<Accepted>, BrokerError> {
            Ok(Vec::new())
        }
        async fn recent(&self, _: &str, _: u64, _: u64) -> Result<Vec<ChatMessage>, BrokerError> {
            Ok(Vec::new())
        }
        async fn known_ref(&self, user_id: &str, client_ref: &str) -> Option<Arc<ChatMessage>> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            (client_ref == "elsewhere").then(|| msg(user_id, client_ref, 99))
        }
    }

    #[async_trait]
    impl Presence for FakeBroker {
        fn announce(&self, _: &str, _: Announce) {}
        async fn refresh_presence(
            &self,
            _: &str,
            _: Vec<Arc<crate::protocol::UserInfo>>,
        ) -> Result<Option<Vec<RemotePresence>>, BrokerError> {
            Ok(None)
        }
        async fn online(&self, _: &[String]) -> Option<HashMap<String, usize>> {
            None
        }
    }

    #[async_trait]
    impl Broker for FakeBroker {
        fn kind(&self) -> &'static str {
            "fake"
        }
        async fn ready(&self) -> Result<(), BrokerError> {
            Ok(())
        }
    }

    fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(fut)
    }

    fn refs() -> (Refs, Arc<RefCache>, Arc<FakeBroker>) {
        let window = Arc::new(RefCache::default());
        let broker = Arc::new(FakeBroker::default());
        let refs = Refs::new(window.clone(), broker.clone());
        (refs, window, broker)
    }

    #[test]
    fn the_window_answers_first_without_asking_the_broker() {
        let (refs, _, broker) = refs();
        refs.remember(&msg("u", "here", 3));
        assert_eq!(refs.answered("u", "here").unwrap().seq, 3);
        let known = block_on(refs.known("u", "here")).unwrap();
        assert_eq!(
            (known.seq, known.content.as_str()),
            (3, ""),
            "ack fields only"
        );
        assert_eq!(broker.asked.load(Ordering::SeqCst), 0);
        // Even a ref the broker would know differently: the window wins.
        refs.remember(&msg("u", "elsewhere", 4));
        assert_eq!(block_on(refs.known("u", "elsewhere")).unwrap().seq, 4);
        assert_eq!(broker.asked.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn then_the_broker_is_asked() {
        let (refs, _, broker) = refs();
        assert!(
            refs.answered("u", "elsewhere").is_none(),
            "answered never waits"
        );
        assert_eq!(broker.asked.load(Ordering::SeqCst), 0);
        assert_eq!(block_on(refs.known("u", "elsewhere")).unwrap().seq, 99);
        assert!(block_on(refs.known("u", "nowhere")).is_none());
        assert_eq!(broker.asked.load(Ordering::SeqCst), 2);
        // Users are kept apart.
        refs.remember(&msg("u", "mine", 5));
        assert!(block_on(refs.known("v", "mine")).is_none());
    }

    #[test]
    fn only_completed_sends_are_answered() {
        let (refs, window, broker) = refs();
        assert_eq!(window.claim("u", "r", "g"), Claim::New);
        assert!(
            refs.answered("u", "r").is_none(),
            "in flight is not answered"
        );
        assert!(block_on(refs.known("u", "r")).is_none());
        assert_eq!(broker.asked.load(Ordering::SeqCst), 1);
        window.complete(&msg("u", "r", 7));
        assert_eq!(refs.answered("u", "r").unwrap().seq, 7);
    }
}
