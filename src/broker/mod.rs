//! The broker seam: how rooms reach other instances. Embedded mode has one
//! instance, so [`local::LocalBroker`] has nothing to relay; cluster mode's
//! RedisBridge implements the same trait.

pub mod local;

use async_trait::async_trait;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs and `/readyz` ("local", "redis").
    fn kind(&self) -> &'static str;
    /// Whether the broker answers; `/readyz` reports it.
    async fn ready(&self) -> Result<(), BrokerError>;
}

pub type SharedBroker = Arc<dyn Broker>;
