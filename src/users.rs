//! Frames for a user rather than a room (docs/protocol.md, section 7b): a
//! read marker that moved, a room the user was added to or removed from.
//! `Users` knows this instance's connections per user; in cluster mode the
//! broker carries the frame to the other instances, whose bridge hands it to
//! their `Users` (see `AppDeps::tell_user`).

use crate::message::ToSession;
use crate::FastMap;
use actix::Recipient;
use bytestring::ByteString;
use smallvec::SmallVec;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// One connection of a user: its session and its mailbox.
type Connection = (Uuid, Recipient<ToSession>);

/// A user's connections here: usually one, kept inline (this table has an
/// entry per connected user, so its bytes count per connection).
type Connections = SmallVec<[Connection; 1]>;

#[derive(Default)]
pub struct Users {
    /// Keyed by the id the session already holds (shared, not copied).
    connections: Mutex<FastMap<Arc<str>, Connections>>,
}

impl Users {
    pub fn register(&self, user: &Arc<str>, session: Uuid, to: Recipient<ToSession>) {
        if let Ok(mut map) = self.connections.lock() {
            map.entry(user.clone()).or_default().push((session, to));
        }
    }

    pub fn unregister(&self, user: &str, session: Uuid) {
        if let Ok(mut map) = self.connections.lock() {
            if let Some(list) = map.get_mut(user) {
                list.retain(|(id, _)| *id != session);
                if list.is_empty() {
                    map.remove(user);
                }
            }
            // A burst of connections must not keep the table's memory.
            let len = map.len();
            if map.capacity() > 64 && len < map.capacity() / 4 {
                map.shrink_to(len * 2);
            }
        }
    }

    /// Hands `frame` to the user's connections here, except `except`. A full
    /// mailbox drops it: these frames are hints a client can re-read.
    pub fn deliver(&self, user: &str, frame: &str, except: Option<Uuid>) {
        let Ok(map) = self.connections.lock() else {
            return;
        };
        let Some(list) = map.get(user) else {
            return;
        };
        let frame = ByteString::from(frame);
        for (session, to) in list {
            if Some(*session) != except {
                let _ = to.try_send(ToSession::Frame(frame.clone()));
            }
        }
    }

    /// Users with a connection here (for tests and metrics).
    pub fn online(&self) -> usize {
        self.connections.lock().map(|m| m.len()).unwrap_or(0)
    }
}
