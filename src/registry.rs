//! The RoomRegistry actor: starts a room's actor on its first join and forwards
//! every first join itself, counting them, so an idle room may stop only once it
//! has received every join the registry sent it.

use crate::message::{Act, Join, Occupancy, RoomIdle, Settle};
use crate::protocol::{ErrorCode, Rejection};
use crate::room::RoomActor;
use crate::AppDeps;
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

struct Entry {
    addr: Addr<RoomActor>,
    /// Joins forwarded to the room; the room counts the ones it received.
    leases: u64,
    occupancy: Arc<Occupancy>,
}

#[derive(Default)]
pub struct Registry {
    deps: Option<AppDeps>,
    rooms: HashMap<String, Entry>,
}

impl Registry {
    /// The registry starts first; rooms need the full dependency set, given later.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Init(pub AppDeps);

impl Handler<Init> for Registry {
    type Result = ();
    fn handle(&mut self, Init(deps): Init, _: &mut Self::Context) {
        self.deps = Some(deps);
    }
}

/// Forwards a join to the room's actor (started if needed) and returns its address.
///
/// A new room starts on `home`, the arbiter (worker thread) of the session
/// that opened it. With one worker per core, a room and most of its members
/// then share a thread: a send and its deliveries need no cross-thread
/// wake-up, which profiles showed as a large share of the per-message cost.
#[derive(Message)]
#[rtype(result = "Result<Addr<RoomActor>, Rejection>")]
pub struct JoinRoom {
    pub join: Join,
    pub home: actix::ArbiterHandle,
}

impl Registry {
    /// The room's entry, its actor started (on `home`) when there is none.
    fn entry(&mut self, name: &str, home: &actix::ArbiterHandle) -> Result<&mut Entry, Rejection> {
        let deps = self
            .deps
            .clone()
            .ok_or_else(|| Rejection::new(ErrorCode::Unavailable, "the server is not ready"))?;
        // A room whose arbiter went away (a worker restarted) is started again.
        if self
            .rooms
            .get(name)
            .is_some_and(|entry| !entry.addr.connected())
        {
            self.rooms.remove(name);
        }
        let cap = deps.config.limits.rooms_per_instance;
        if !self.rooms.contains_key(name) && self.rooms.len() >= cap {
            return Err(Rejection::new(
                ErrorCode::TooManyRooms,
                format!("this server has {cap} rooms open, its limit; try again later"),
            ));
        }
        Ok(self.rooms.entry(name.to_string()).or_insert_with(|| {
            let occupancy = Arc::new(Occupancy::default());
            let room = RoomActor::new(name.to_string(), deps, occupancy.clone());
            Entry {
                addr: RoomActor::start_in_arbiter(home, move |_| room),
                leases: 0,
                occupancy,
            }
        }))
    }
}

impl Handler<JoinRoom> for Registry {
    type Result = Result<Addr<RoomActor>, Rejection>;

    fn handle(&mut self, JoinRoom { join, home }: JoinRoom, _: &mut Self::Context) -> Self::Result {
        let entry = self.entry(&join.room, &home)?;
        entry.leases += 1;
        entry.addr.do_send(join);
        Ok(entry.addr.clone())
    }
}

/// Forwards a membership event from REST to the room's actor (started if needed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ActIn(pub Act);

impl Handler<ActIn> for Registry {
    type Result = ();

    fn handle(&mut self, ActIn(mut act): ActIn, _: &mut Self::Context) {
        let home = actix::Arbiter::current();
        match self.entry(&act.room, &home) {
            Ok(entry) => {
                entry.leases += 1;
                act.leased = true;
                entry.addr.do_send(act);
            }
            Err(rejection) => {
                let _ = act.reply.send(Err(rejection));
            }
        }
    }
}

impl Handler<RoomIdle> for Registry {
    type Result = bool;

    fn handle(&mut self, idle: RoomIdle, _: &mut Self::Context) -> bool {
        match self.rooms.get(&idle.room) {
            Some(entry) if entry.leases == idle.joins_seen => {
                self.rooms.remove(&idle.room);
                // A burst of rooms must not keep its table's memory for good.
                if self.rooms.capacity() > 64 && self.rooms.len() < self.rooms.capacity() / 4 {
                    self.rooms.shrink_to(self.rooms.len() * 2);
                }
                true
            }
            Some(_) => false,
            None => true,
        }
    }
}

/// Resolves once every live room handled what was sent to it before (see
/// `message::Settle`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SettleRooms;

impl Handler<SettleRooms> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: SettleRooms, _: &mut Self::Context) -> Self::Result {
        let rooms: Vec<_> = self.rooms.values().map(|e| e.addr.send(Settle)).collect();
        Box::pin(async move {
            futures_util::future::join_all(rooms).await;
        })
    }
}

#[derive(Debug, Clone)]
pub struct ActiveRoom {
    pub name: String,
    pub online: usize,
    pub last_seq: u64,
}

#[derive(Message)]
#[rtype(result = "Vec<ActiveRoom>")]
pub struct ListActive;

impl Handler<ListActive> for Registry {
    type Result = Vec<ActiveRoom>;

    fn handle(&mut self, _: ListActive, _: &mut Self::Context) -> Self::Result {
        self.rooms
            .iter()
            .map(|(name, e)| ActiveRoom {
                name: name.clone(),
                online: e.occupancy.online.load(Ordering::Relaxed),
                last_seq: e.occupancy.last_seq.load(Ordering::Relaxed),
            })
            .collect()
    }
}
