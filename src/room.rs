//! The RoomActor: one per active room. It owns the room's members and presence,
//! is the room's sequencer in embedded mode (seq restored from the store when it
//! starts), and fans every committed message out to its members as one shared,
//! already-serialized frame.

use crate::dedupe::Claim;
use crate::persist::{Enqueue, Outcome, PersistItem, PersistOutcome};
use crate::protocol::{self, ChatMessage, ErrorCode, Rejection, UserInfo};
use crate::registry::{Occupancy, RoomIdle};
use crate::session::{Format, ToSession};
use crate::AppDeps;
use actix::prelude::*;
use bytestring::ByteString;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Recent messages kept in memory so most joins replay without a store read.
const RECENT_CAPACITY: usize = 128;
/// How long an empty room lingers before it asks to stop.
const IDLE_LINGER: Duration = Duration::from_secs(10);
/// Typing relays: at most one per user per room in this window.
const TYPING_WINDOW: Duration = Duration::from_secs(2);
/// How often a room drops members whose session is gone without a `Leave`.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Sequencing generations are unique in the process, so a poisoned generation
/// left in Persist by a stopped room can never match a newer room's sends.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed)
}

/// A committed message with its frames, serialized once and shared by every member.
struct Delivered {
    msg: Arc<ChatMessage>,
    v1: ByteString,
    seed: OnceLock<ByteString>,
}

impl Delivered {
    fn new(msg: Arc<ChatMessage>) -> Self {
        let v1 = ByteString::from(msg.frame_json());
        Self {
            msg,
            v1,
            seed: OnceLock::new(),
        }
    }

    fn frame(&self, format: Format) -> ByteString {
        match format {
            Format::V1 => self.v1.clone(),
            Format::Seed => self
                .seed
                .get_or_init(|| ByteString::from(self.msg.seed_frame_json()))
                .clone(),
        }
    }
}

// ------------------------------------------------------------------ messages

#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    pub room: String,
    pub session: Uuid,
    pub user: Arc<UserInfo>,
    pub to: Recipient<ToSession>,
    pub format: Format,
    /// Replay the newest N (already clamped to 0..=100), when `since` is absent.
    pub history: u32,
    pub since: Option<u64>,
    /// Forwarded by the registry (which counts it); rejoins through a kept
    /// address are not.
    pub leased: bool,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub session: Uuid,
    /// Send `left` to the session (an explicit leave, not a disconnect).
    pub notify: bool,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Send {
    pub session: Uuid,
    /// To answer a session the room no longer knows (it was just dropped).
    pub to: Recipient<ToSession>,
    pub content: String,
    pub client_ref: Option<String>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Typing {
    pub session: Uuid,
}

// --------------------------------------------------------------------- state

struct Member {
    user: Arc<UserInfo>,
    to: Recipient<ToSession>,
    format: Format,
    /// While a join's replay is read from the store, live frames wait here.
    replay: Option<Replay>,
}

struct Replay {
    token: u64,
    buffer: Vec<Arc<Delivered>>,
}

struct Presence {
    user: Arc<UserInfo>,
    connections: usize,
}

/// A send between sequencing and commit.
struct InFlight {
    sender: Uuid,
    client_ref: Option<String>,
    /// Resends of the same ref that arrived meanwhile; they get the ack too.
    waiters: Vec<Uuid>,
}

#[derive(PartialEq, Eq)]
enum Phase {
    Loading,
    Ready,
    Failed,
}

pub struct RoomActor {
    name: String,
    deps: AppDeps,
    phase: Phase,
    /// Next seq to assign; `committed + 1` unless sends are in flight.
    next_seq: u64,
    /// Newest committed (and delivered) seq.
    committed: u64,
    /// Bumped when a failed flush rewinds `next_seq`; see persist.rs.
    generation: u64,
    in_flight: BTreeMap<(u64, u64), InFlight>,
    members: HashMap<Uuid, Member>,
    presence: HashMap<String, Presence>,
    recent: VecDeque<Arc<Delivered>>,
    typing: HashMap<String, Instant>,
    joins_seen: u64,
    replay_tokens: u64,
    idle_timer: Option<SpawnHandle>,
}

impl RoomActor {
    pub fn new(name: String, deps: AppDeps) -> Self {
        Self {
            name,
            deps,
            phase: Phase::Loading,
            next_seq: 1,
            committed: 0,
            generation: next_generation(),
            in_flight: BTreeMap::new(),
            members: HashMap::new(),
            presence: HashMap::new(),
            recent: VecDeque::with_capacity(RECENT_CAPACITY),
            typing: HashMap::new(),
            joins_seen: 0,
            replay_tokens: 0,
            idle_timer: None,
        }
    }

    fn reject(&self, to: &Recipient<ToSession>, rejection: Rejection) {
        let _ = to.try_send(ToSession::Reject(rejection.in_room(Some(&self.name))));
    }

    /// Queues a frame for a member; a member whose queue is full is a slow
    /// consumer and gets disconnected (1013) instead of slowing the room.
    fn push(to: &Recipient<ToSession>, frame: ByteString) -> bool {
        Self::deliver(to, ToSession::Frame(frame))
    }

    /// A join's replay goes as one mailbox item, so it counts as one queued frame.
    fn push_many(to: &Recipient<ToSession>, frames: Vec<ByteString>) -> bool {
        frames.is_empty() || Self::deliver(to, ToSession::Frames(frames))
    }

    fn deliver(to: &Recipient<ToSession>, item: ToSession) -> bool {
        match to.try_send(item) {
            Ok(()) => true,
            Err(SendError::Full(_)) => {
                to.do_send(ToSession::SlowConsumer);
                false
            }
            Err(SendError::Closed(_)) => false,
        }
    }

    fn members_json(&self) -> Vec<&UserInfo> {
        let mut users: Vec<&UserInfo> = self.presence.values().map(|p| p.user.as_ref()).collect();
        users.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        users
    }

    /// Sends a frame to every live member except those of `skip_user`.
    fn broadcast_except(&mut self, frame: ByteString, skip_user: Option<&str>) {
        let mut gone = Vec::new();
        for (id, m) in &self.members {
            // Seed-compatible clients only ever receive messages.
            if skip_user == Some(m.user.id.as_str()) || m.format != Format::V1 {
                continue;
            }
            if !Self::push(&m.to, frame.clone()) {
                gone.push(*id);
            }
        }
        for id in gone {
            self.remove_member(id, false);
        }
    }

    fn report_occupancy(&self) {
        self.deps.registry.do_send(Occupancy {
            room: self.name.clone(),
            online: self.presence.len(),
            last_seq: self.committed,
        });
    }

    fn remove_member(&mut self, session: Uuid, notify: bool) {
        let Some(member) = self.members.remove(&session) else {
            return;
        };
        if notify {
            let _ = member
                .to
                .try_send(ToSession::Frame(protocol::left_json(&self.name).into()));
        }
        let user_id = member.user.id.clone();
        let last_connection = match self.presence.get_mut(&user_id) {
            Some(p) => {
                p.connections -= 1;
                p.connections == 0
            }
            None => false,
        };
        if last_connection {
            if let Some(p) = self.presence.remove(&user_id) {
                self.typing.remove(&user_id);
                let frame = protocol::presence_json(&self.name, &[], &[p.user.as_ref()]);
                self.broadcast_except(frame.into(), None);
            }
            self.report_occupancy();
        }
    }

    fn maybe_idle(&mut self, ctx: &mut Context<Self>) {
        if !self.members.is_empty() || !self.in_flight.is_empty() || self.idle_timer.is_some() {
            return;
        }
        let linger = if self.phase == Phase::Failed {
            Duration::ZERO
        } else {
            IDLE_LINGER
        };
        self.idle_timer = Some(ctx.run_later(linger, |act, ctx| {
            act.idle_timer = None;
            if !act.members.is_empty() || !act.in_flight.is_empty() {
                return;
            }
            let ask = act.deps.registry.send(RoomIdle {
                room: act.name.clone(),
                joins_seen: act.joins_seen,
            });
            ctx.wait(ask.into_actor(act).map(|answer, act, ctx| match answer {
                Ok(true) => ctx.stop(),
                _ => act.maybe_idle(ctx),
            }));
        }));
    }

    fn cancel_idle(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.idle_timer.take() {
            ctx.cancel_future(timer);
        }
    }

    /// Frames of committed messages `after+1..=upto` from the in-memory ring, if it covers them.
    fn replay_from_recent(&self, format: Format, after: u64, upto: u64) -> Option<Vec<ByteString>> {
        let oldest = self
            .recent
            .front()
            .map_or(self.committed + 1, |d| d.msg.seq);
        if after + 1 < oldest {
            return None;
        }
        let frames = self
            .recent
            .iter()
            .filter(|d| d.msg.seq > after && d.msg.seq <= upto)
            .map(|d| d.frame(format))
            .collect();
        Some(frames)
    }

    /// Acks and fans out one committed batch. Each member gets the batch's frames
    /// as one mailbox item: the message frames are shared bytes, serialized once.
    fn deliver_committed(&mut self, items: Vec<Outcome>) {
        let mut outbox: HashMap<Uuid, Vec<ByteString>> = HashMap::new();
        let mut gone = Vec::new();
        let replay_cap = self.deps.config.limits.session_queue;
        for (msg, generation) in items {
            let flight = self.in_flight.remove(&(generation, msg.seq));
            self.committed = msg.seq;
            self.deps.refs.complete(&msg);
            let delivered = Arc::new(Delivered::new(msg));
            if self.recent.len() == RECENT_CAPACITY {
                self.recent.pop_front();
            }
            self.recent.push_back(delivered.clone());

            if let Some(flight) = flight {
                let ack: ByteString = delivered.msg.ack_json(flight.client_ref.as_deref()).into();
                for session in std::iter::once(flight.sender).chain(flight.waiters) {
                    if self
                        .members
                        .get(&session)
                        .is_some_and(|m| m.format == Format::V1)
                    {
                        outbox.entry(session).or_default().push(ack.clone());
                    }
                }
            }
            for (id, m) in self.members.iter_mut() {
                match &mut m.replay {
                    // Frames waiting behind a replay count against the session's queue too.
                    Some(replay) if replay.buffer.len() >= replay_cap => {
                        if !gone.contains(id) {
                            m.to.do_send(ToSession::SlowConsumer);
                            gone.push(*id);
                        }
                    }
                    Some(replay) => replay.buffer.push(delivered.clone()),
                    None => outbox
                        .entry(*id)
                        .or_default()
                        .push(delivered.frame(m.format)),
                }
            }
        }
        for (id, frames) in outbox {
            if let Some(m) = self.members.get(&id) {
                if !Self::push_many(&m.to, frames) {
                    gone.push(id);
                }
            }
        }
        for id in gone {
            self.remove_member(id, false);
        }
    }

    fn fail_in_flight(&mut self, msg: &ChatMessage, generation: u64) {
        if generation == self.generation {
            // Everything after `committed` of this generation fails with it (persist.rs):
            // continue from the last committed seq, in a new generation.
            self.generation = next_generation();
            self.next_seq = self.committed + 1;
        }
        let Some(flight) = self.in_flight.remove(&(generation, msg.seq)) else {
            return;
        };
        if let Some(r) = &flight.client_ref {
            self.deps.refs.forget(&msg.user_id, r);
        }
        for session in std::iter::once(flight.sender).chain(flight.waiters) {
            if let Some(m) = self.members.get(&session) {
                let rejection = Rejection::new(
                    ErrorCode::Unavailable,
                    "the message could not be stored; it was not accepted, send it again",
                )
                .with_ref(flight.client_ref.as_deref());
                self.reject(&m.to, rejection);
            }
        }
    }

    fn start_store_replay(
        &mut self,
        ctx: &mut Context<Self>,
        session: Uuid,
        after: u64,
        upto: u64,
    ) {
        self.replay_tokens += 1;
        let token = self.replay_tokens;
        if let Some(m) = self.members.get_mut(&session) {
            let buffer = m.replay.take().map(|r| r.buffer).unwrap_or_default();
            m.replay = Some(Replay { token, buffer });
        }
        let store = self.deps.store.clone();
        let room = self.name.clone();
        ctx.spawn(
            async move { store.range(&room, after, upto).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    let Some(m) = act.members.get_mut(&session) else {
                        return;
                    };
                    if m.replay.as_ref().map(|r| r.token) != Some(token) {
                        return; // superseded by a newer join of the same session
                    }
                    let buffered = m.replay.take().map(|r| r.buffer).unwrap_or_default();
                    let (to, format) = (m.to.clone(), m.format);
                    match result {
                        Ok(messages) => {
                            let frames = messages
                                .into_iter()
                                .map(|msg| Delivered::new(Arc::new(msg)).frame(format))
                                .chain(
                                    buffered
                                        .iter()
                                        .filter(|d| d.msg.seq > upto)
                                        .map(|d| d.frame(format)),
                                )
                                .collect();
                            if !Self::push_many(&to, frames) {
                                act.remove_member(session, false);
                            }
                        }
                        Err(error) => {
                            tracing::warn!(room = %act.name, %error, "join replay failed");
                            act.reject(
                                &to,
                                Rejection::new(
                                    ErrorCode::Unavailable,
                                    "history is unavailable right now; join again",
                                ),
                            );
                            act.remove_member(session, true);
                            to.do_send(ToSession::Detached(act.name.clone()));
                            act.maybe_idle(ctx);
                        }
                    }
                }),
        );
    }
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(SWEEP_INTERVAL, |act, ctx| {
            let gone: Vec<Uuid> = act
                .members
                .iter()
                .filter(|(_, m)| !m.to.connected())
                .map(|(id, _)| *id)
                .collect();
            for id in gone {
                act.remove_member(id, false);
            }
            act.maybe_idle(ctx);
        });
        let store = self.deps.store.clone();
        let room = self.name.clone();
        // Nothing else is handled until the room knows its seq.
        ctx.wait(
            async move { store.last_seq(&room).await }
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(last) => {
                        act.committed = last;
                        act.next_seq = last + 1;
                        act.phase = Phase::Ready;
                    }
                    Err(error) => {
                        tracing::error!(room = %act.name, %error, "cannot load the room's seq");
                        act.phase = Phase::Failed;
                        act.maybe_idle(ctx);
                    }
                }),
        );
    }
}

impl Handler<Join> for RoomActor {
    type Result = ();

    fn handle(&mut self, join: Join, ctx: &mut Self::Context) {
        if join.leased {
            self.joins_seen += 1;
        }
        if self.phase != Phase::Ready {
            self.reject(
                &join.to,
                Rejection::new(ErrorCode::Unavailable, "the room is unavailable right now"),
            );
            join.to.do_send(ToSession::Detached(self.name.clone()));
            self.maybe_idle(ctx);
            return;
        }
        self.cancel_idle(ctx);
        let rejoin = self.members.contains_key(&join.session);
        if !rejoin {
            let first = match self.presence.get_mut(&join.user.id) {
                Some(p) => {
                    p.connections += 1;
                    false
                }
                None => {
                    self.presence.insert(
                        join.user.id.clone(),
                        Presence {
                            user: join.user.clone(),
                            connections: 1,
                        },
                    );
                    true
                }
            };
            if first {
                let frame = protocol::presence_json(&self.name, &[join.user.as_ref()], &[]);
                self.broadcast_except(frame.into(), Some(&join.user.id));
                self.report_occupancy();
            }
            self.members.insert(
                join.session,
                Member {
                    user: join.user.clone(),
                    to: join.to.clone(),
                    format: join.format,
                    replay: None,
                },
            );
        }

        let last = self.committed;
        let recovery_max = self.deps.config.rooms.recovery_max;
        let (range, recovered) = match join.since {
            Some(since) if since > last || last - since > recovery_max => (None, Some(false)),
            Some(since) => (Some((since, last)), Some(true)),
            None => {
                let n = u64::from(join.history).min(last);
                (Some((last - n, last)), None)
            }
        };
        if join.format == Format::V1 {
            let frame = protocol::joined_json(&self.name, last, recovered, &self.members_json());
            if !Self::push(&join.to, frame.into()) {
                self.remove_member(join.session, false);
                return;
            }
        }
        let Some((after, upto)) = range.filter(|(a, u)| a < u) else {
            return;
        };
        match self.replay_from_recent(join.format, after, upto) {
            Some(mut frames) => {
                // A rejoin mid-replay keeps its buffer: send what is newer than `upto` after.
                if let Some(replay) = self
                    .members
                    .get_mut(&join.session)
                    .and_then(|m| m.replay.take())
                {
                    frames.extend(
                        replay
                            .buffer
                            .iter()
                            .filter(|d| d.msg.seq > upto)
                            .map(|d| d.frame(join.format)),
                    );
                }
                if !Self::push_many(&join.to, frames) {
                    self.remove_member(join.session, false);
                }
            }
            None => self.start_store_replay(ctx, join.session, after, upto),
        }
    }
}

impl Handler<Leave> for RoomActor {
    type Result = ();

    fn handle(&mut self, leave: Leave, ctx: &mut Self::Context) {
        self.remove_member(leave.session, leave.notify);
        self.maybe_idle(ctx);
    }
}

impl Handler<Send> for RoomActor {
    type Result = ();

    fn handle(&mut self, send: Send, ctx: &mut Self::Context) {
        let Some(member) = self.members.get(&send.session) else {
            let rejection = Rejection::new(
                ErrorCode::NotJoined,
                "this connection has not joined the room",
            );
            self.reject(&send.to, rejection.with_ref(send.client_ref.as_deref()));
            return;
        };
        let to = member.to.clone();
        let user = member.user.clone();
        let fail = |rejection: Rejection| rejection.with_ref(send.client_ref.as_deref());
        if self.phase != Phase::Ready {
            self.reject(
                &to,
                fail(Rejection::new(
                    ErrorCode::Unavailable,
                    "the room is unavailable right now",
                )),
            );
            return;
        }
        let seq = self.next_seq;
        if let Some(client_ref) = &send.client_ref {
            match self
                .deps
                .refs
                .claim(&user.id, client_ref, &self.name, seq, self.generation)
            {
                Claim::New => {}
                Claim::Done(original) => {
                    let _ =
                        to.try_send(ToSession::Frame(original.ack_json(Some(client_ref)).into()));
                    return;
                }
                Claim::InFlight {
                    room,
                    seq,
                    generation,
                } if room == self.name => {
                    if let Some(flight) = self.in_flight.get_mut(&(generation, seq)) {
                        flight.waiters.push(send.session);
                    }
                    return;
                }
                Claim::InFlight { room, .. } => {
                    self.reject(
                        &to,
                        fail(Rejection::new(
                            ErrorCode::InvalidFrame,
                            format!(
                                "this ref names a send to room {room} that is still being stored"
                            ),
                        )),
                    );
                    return;
                }
            }
        }
        self.next_seq += 1;
        let msg = Arc::new(ChatMessage {
            room: self.name.clone(),
            seq,
            id: Uuid::now_v7().to_string(),
            user_id: user.id.clone(),
            user_name: user.name.clone(),
            content: send.content,
            timestamp_ms: protocol::now_ms(),
            client_ref: send.client_ref.clone(),
        });
        self.in_flight.insert(
            (self.generation, seq),
            InFlight {
                sender: send.session,
                client_ref: send.client_ref,
                waiters: Vec::new(),
            },
        );
        self.deps.persist.do_send(Enqueue(PersistItem {
            msg,
            generation: self.generation,
            reply: ctx.address().recipient(),
        }));
    }
}

impl Handler<Typing> for RoomActor {
    type Result = ();

    fn handle(&mut self, typing: Typing, _ctx: &mut Self::Context) {
        let Some(member) = self.members.get(&typing.session) else {
            return;
        };
        let user = member.user.clone();
        let now = Instant::now();
        if self
            .typing
            .get(&user.id)
            .is_some_and(|at| now.duration_since(*at) < TYPING_WINDOW)
        {
            return;
        }
        self.typing.insert(user.id.clone(), now);
        let frame = protocol::typing_json(&self.name, &user);
        self.broadcast_except(frame.into(), Some(&user.id));
    }
}

impl Handler<PersistOutcome> for RoomActor {
    type Result = ();

    fn handle(&mut self, outcome: PersistOutcome, ctx: &mut Self::Context) {
        match outcome {
            PersistOutcome::Committed(items) => {
                self.deliver_committed(items);
                self.report_occupancy();
            }
            PersistOutcome::Failed(items) => {
                for (msg, generation) in items {
                    self.fail_in_flight(&msg, generation);
                }
            }
        }
        self.maybe_idle(ctx);
    }
}
