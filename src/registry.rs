//! The RoomRegistry actor: starts a room's actor on its first join and forwards
//! every first join itself, counting them, so an idle room may stop only once it
//! has received every join the registry sent it.

use crate::room::{Join, RoomActor};
use crate::AppDeps;
use actix::prelude::*;
use std::collections::HashMap;

struct Entry {
    addr: Addr<RoomActor>,
    /// Joins forwarded to the room; the room counts the ones it received.
    leases: u64,
    online: usize,
    last_seq: u64,
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
#[derive(Message)]
#[rtype(result = "Option<Addr<RoomActor>>")]
pub struct JoinRoom(pub Join);

impl Handler<JoinRoom> for Registry {
    type Result = Option<Addr<RoomActor>>;

    fn handle(&mut self, JoinRoom(join): JoinRoom, _: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone()?;
        let name = join.room.clone();
        let entry = self.rooms.entry(name.clone()).or_insert_with(|| Entry {
            addr: RoomActor::new(name, deps).start(),
            leases: 0,
            online: 0,
            last_seq: 0,
        });
        entry.leases += 1;
        entry.addr.do_send(join);
        Some(entry.addr.clone())
    }
}

/// A room with no members asks to stop; yes only if every lease became a join.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct RoomIdle {
    pub room: String,
    pub joins_seen: u64,
}

impl Handler<RoomIdle> for Registry {
    type Result = bool;

    fn handle(&mut self, idle: RoomIdle, _: &mut Self::Context) -> bool {
        match self.rooms.get(&idle.room) {
            Some(entry) if entry.leases == idle.joins_seen => {
                self.rooms.remove(&idle.room);
                true
            }
            Some(_) => false,
            None => true,
        }
    }
}

/// A room's live counters, for `GET /api/rooms`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Occupancy {
    pub room: String,
    pub online: usize,
    pub last_seq: u64,
}

impl Handler<Occupancy> for Registry {
    type Result = ();

    fn handle(&mut self, o: Occupancy, _: &mut Self::Context) {
        if let Some(entry) = self.rooms.get_mut(&o.room) {
            entry.online = o.online;
            entry.last_seq = entry.last_seq.max(o.last_seq);
        }
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
                online: e.online,
                last_seq: e.last_seq,
            })
            .collect()
    }
}
