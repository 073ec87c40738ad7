//! What `confab import` needs from the broker: in cluster mode a room's seq
//! lives in Redis, so every committed import batch raises its rooms' seqs
//! there, and new sends continue after the imported messages.

use super::wire::{Keys, RAISE_SEQ_SCRIPT};
use crate::config::Config;
use deadpool_redis::redis::{self, aio::MultiplexedConnection, RedisError};
use futures_util::future::LocalBoxFuture;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long connecting, and each command, may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why rooms' seqs could not be raised; Redis's error is kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum RaiseError {
    #[error("broker.redis_url: {0}")]
    Url(#[source] RedisError),
    #[error("cannot connect to Redis (broker.redis_url): {0}")]
    Connect(#[source] RedisError),
    #[error("cannot raise the Redis seq {key} to {seq}: {source}")]
    Raise {
        key: String,
        seq: u64,
        source: RedisError,
    },
}

/// Raises rooms' seqs after an import. In embedded mode the store's head is
/// the seq, which the import itself raised: nothing to do.
#[derive(Clone)]
pub struct SeqRaiser {
    redis: Option<(MultiplexedConnection, Keys)>,
}

impl SeqRaiser {
    /// Connects to `broker.redis_url` in cluster mode; fails when Redis can't
    /// be reached (an import must not leave seqs behind).
    pub async fn connect(config: &Config) -> Result<Self, RaiseError> {
        if config.broker.redis_url.is_empty() {
            return Ok(Self { redis: None });
        }
        let client =
            redis::Client::open(config.broker.redis_url.as_str()).map_err(RaiseError::Url)?;
        let timeouts = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let conn = client
            .get_multiplexed_async_connection_with_config(&timeouts)
            .await
            .map_err(RaiseError::Connect)?;
        Ok(Self {
            redis: Some((conn, Keys::new(&config.broker.namespace))),
        })
    }

    /// Raises each room's seq to at least its `heads` entry. A room Redis has
    /// no seq for is left alone: its first send seeds it from the store.
    pub fn raise(
        &self,
        heads: &BTreeMap<String, u64>,
    ) -> LocalBoxFuture<'static, Result<(), RaiseError>> {
        let work = self.redis.clone().map(|(conn, keys)| {
            let heads: Vec<(String, u64)> = heads.iter().map(|(r, s)| (keys.seq(r), *s)).collect();
            (conn, heads)
        });
        Box::pin(async move {
            let Some((mut conn, heads)) = work else {
                return Ok(());
            };
            let script = redis::Script::new(RAISE_SEQ_SCRIPT);
            for (key, seq) in heads {
                let raised: i64 = script
                    .key(&key)
                    .arg(seq)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|source| RaiseError::Raise {
                        key: key.clone(),
                        seq,
                        source,
                    })?;
                if raised == 1 {
                    tracing::info!(key, seq, "raised the room's Redis seq");
                }
            }
            Ok(())
        })
    }
}
