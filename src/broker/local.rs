//! Embedded mode: every member of a room is in this process, so the room actor
//! fans out directly and there is nothing to relay.

use super::{Broker, BrokerError};
use async_trait::async_trait;

pub struct LocalBroker;

#[async_trait]
impl Broker for LocalBroker {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}
