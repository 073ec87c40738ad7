//! Embedded mode: every member of a room is in this process. The room's own
//! count gives the seq, a group commit through Persist makes a batch durable,
//! and there is nobody to relay to.

use super::{
    Accepted, Announce, Broker, BrokerError, Draft, Inbound, Presence, Relay, RemotePresence,
};
use crate::chat::ChatMessage;
use crate::dedupe::{Claim, RefCache};
use crate::persist::Persist;
use crate::protocol::{ErrorCode, Rejection, UserInfo};
use crate::store::SharedStore;
use actix::prelude::*;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;

pub struct LocalBroker {
    store: SharedStore,
    persist: Addr<Persist>,
    refs: Arc<RefCache>,
}

impl LocalBroker {
    pub fn new(store: SharedStore, persist: Addr<Persist>, refs: Arc<RefCache>) -> Self {
        Self {
            store,
            persist,
            refs,
        }
    }
}

/// How the drafts of one batch map to results before the commit.
enum Plan {
    New(Arc<ChatMessage>),
    /// Same (user, ref) as the earlier draft at this index of the batch.
    SameAs(usize),
    Done(Accepted),
}

#[async_trait]
impl Broker for LocalBroker {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn shared(&self) -> bool {
        false
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}

#[async_trait]
impl Relay for LocalBroker {
    async fn attach(
        &self,
        _room: &str,
        _id: u64,
        _to: Recipient<Inbound>,
    ) -> Result<(), BrokerError> {
        Ok(())
    }

    fn detach(&self, _room: &str, _id: u64) {}

    async fn head(&self, room: &str, _floor: u64) -> Result<u64, BrokerError> {
        self.store.last_seq(room).await.map_err(BrokerError::failed)
    }

    async fn accept(
        &self,
        room: &str,
        committed: u64,
        drafts: Vec<Draft>,
    ) -> Result<Vec<Accepted>, BrokerError> {
        let mut next_seq = committed + 1;
        let mut plans = Vec::with_capacity(drafts.len());
        let mut claimed: Vec<(String, String)> = Vec::new();
        let mut first_of: crate::FastMap<(String, String), usize> = crate::FastMap::default();
        for (index, draft) in drafts.into_iter().enumerate() {
            if let Some(r) = draft.client_ref.clone() {
                let key = (draft.user.id.clone(), r);
                if let Some(&first) = first_of.get(&key) {
                    plans.push(Plan::SameAs(first));
                    continue;
                }
                match self.refs.claim(&key.0, &key.1, room) {
                    Claim::New => {
                        first_of.insert(key.clone(), index);
                        claimed.push(key);
                    }
                    Claim::Done(original) => {
                        plans.push(Plan::Done(Accepted::Duplicate(original)));
                        continue;
                    }
                    Claim::InFlight { room: other } => {
                        let rejection = Rejection::new(
                            ErrorCode::InvalidFrame,
                            format!(
                                "this ref names a send to room {other} that is still being stored"
                            ),
                        );
                        plans.push(Plan::Done(Accepted::Rejected(rejection)));
                        continue;
                    }
                }
            }
            plans.push(Plan::New(Arc::new(draft.into_message(room, next_seq))));
            next_seq += 1;
        }

        let rows: Vec<Arc<ChatMessage>> = plans
            .iter()
            .filter_map(|p| match p {
                Plan::New(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        if let Err(failed) = Persist::write(&self.persist, rows.clone()).await {
            for (user, r) in claimed {
                self.refs.forget(&user, &r);
            }
            return Err(BrokerError::failed(failed));
        }
        for msg in &rows {
            self.refs.complete(msg);
        }
        let mut results: Vec<Accepted> = Vec::with_capacity(plans.len());
        for plan in plans {
            let result = match plan {
                Plan::New(m) => Accepted::New(m),
                Plan::SameAs(first) => match &results[first] {
                    Accepted::New(m) | Accepted::Duplicate(m) => Accepted::Duplicate(m.clone()),
                    other => other.clone(),
                },
                Plan::Done(result) => result,
            };
            results.push(result);
        }
        Ok(results)
    }

    async fn recent(
        &self,
        _room: &str,
        _after: u64,
        _upto: u64,
    ) -> Result<Vec<ChatMessage>, BrokerError> {
        Ok(Vec::new())
    }
}

/// Everyone is in this process: the rooms know who is present.
#[async_trait]
impl Presence for LocalBroker {
    fn announce(&self, _room: &str, _event: Announce) {}

    async fn refresh_presence(
        &self,
        _room: &str,
        _local: Vec<Arc<UserInfo>>,
    ) -> Result<Option<Vec<RemotePresence>>, BrokerError> {
        Ok(None)
    }

    async fn online(&self, _rooms: &[String]) -> Option<HashMap<String, usize>> {
        None
    }
}
