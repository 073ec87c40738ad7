//! The RoomActor: one per active room on this instance. It owns the room's local
//! members and presence, hands their sends to the broker in batches (one batch
//! in flight, so each sender's messages keep their order), and delivers the
//! room's messages to its members in seq order, each serialized once and shared.
//! The same code runs in both modes; the broker seam decides where seqs come
//! from and whether other instances contribute messages, presence and typing.

use crate::broker::{Accepted, Announce, Draft, Inbound, RemotePresence};
use crate::limits::SpamWindow;
use crate::message::{
    FrameFormat, Join, Leave, Occupancy, Outlet, Post, RoomIdle, Settle, ToSession, Typing,
};
use crate::protocol::{self, ChatMessage, ErrorCode, Rejection, UserInfo};
use crate::{AppDeps, FastMap};
use actix::prelude::*;
use bytestring::ByteString;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
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
/// How often presence is refreshed with other instances (their entries expire
/// when not refreshed, so a crashed instance's users disappear).
const PRESENCE_REFRESH: Duration = Duration::from_secs(5);
/// A seq missing from the relay usually arrives within this; then it is fetched.
const GAP_WAIT: Duration = Duration::from_millis(150);
/// After the broker failed a batch, look for messages it may have accepted anyway.
const RESYNC_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Presence changes within this window go out as one net `presence` frame.
const PRESENCE_WINDOW: Duration = Duration::from_millis(100);
/// Most sends in one broker call.
const SEND_BATCH_MAX: usize = 512;

/// Tells room actors of the same name apart (one may stop as the next starts).
static ROOM_ACTOR_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A message with its frames, serialized once and shared by every member.
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

    fn frame(&self, format: FrameFormat) -> ByteString {
        match format {
            FrameFormat::V1 => self.v1.clone(),
            FrameFormat::Seed => self
                .seed
                .get_or_init(|| ByteString::from(self.msg.seed_frame_json()))
                .clone(),
        }
    }
}

impl Handler<Settle> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: Settle, _: &mut Self::Context) {}
}

// --------------------------------------------------------------------- state

struct Member {
    user: Arc<UserInfo>,
    to: Outlet,
    format: FrameFormat,
    /// While a join's replay is fetched, live frames wait here.
    replay: Option<Replay>,
    /// Joins of this room by the same connection that came while a replay
    /// was fetched: each gets its own `joined` and replay, in order, after it.
    waiting_joins: VecDeque<Join>,
}

/// Joins one connection may have waiting behind a replay; more are refused.
const MAX_WAITING_JOINS: usize = 8;

struct Replay {
    token: u64,
    buffer: Vec<Arc<Delivered>>,
    /// A recovery's `joined` (with the room's `last_seq` at the join) waits
    /// for the store's answer; until it is sent the member gets nothing else.
    joined_last: Option<u64>,
}

/// A user's connections to this room on this instance.
struct Presence {
    user: Arc<UserInfo>,
    connections: usize,
}

/// A user present through other instances.
struct RemoteUser {
    user: Arc<UserInfo>,
    instances: HashSet<Arc<str>>,
}

/// A send waiting for the batch in flight to finish.
struct Queued {
    sender: Sender,
    draft: Draft,
}

/// Who gets the answer to one send.
struct Sender {
    session: Uuid,
    user_id: String,
    /// The spam window's fingerprint of the content, to forget a refused send.
    spam_print: u64,
    to: Outlet,
    format: FrameFormat,
    client_ref: Option<String>,
    /// When the send reached the room, for `confab_accept_seconds`.
    arrived: Instant,
}

#[derive(PartialEq, Eq)]
enum Phase {
    Loading,
    Ready,
    Failed,
}

pub struct RoomActor {
    name: String,
    /// Online count and newest seq, read by the registry for `/api/rooms`.
    occupancy: Arc<Occupancy>,
    id: u64,
    deps: AppDeps,
    phase: Phase,
    /// Newest seq delivered here; every seq up to it was delivered in order.
    committed: u64,
    /// Messages that arrived ahead of a missing seq, or whose ack must go first.
    pending: BTreeMap<u64, Arc<ChatMessage>>,
    gap_timer: Option<SpawnHandle>,
    filling: bool,
    queue: VecDeque<Queued>,
    /// Ids of the batch the broker is accepting right now.
    in_flight: Option<HashSet<String>>,
    members: FastMap<Uuid, Member>,
    presence: FastMap<String, Presence>,
    remote: HashMap<String, RemoteUser>,
    refreshing: bool,
    recent: VecDeque<Arc<Delivered>>,
    typing: FastMap<String, Instant>,
    joins_seen: u64,
    replay_tokens: u64,
    idle_timer: Option<SpawnHandle>,
    spam: SpamWindow,
    /// Users whose visibility changed since the last presence frame, with
    /// whether they were visible before.
    presence_changes: FastMap<String, (Arc<UserInfo>, bool)>,
    presence_flush_due: bool,
    /// The room's own address, to schedule presence frames from anywhere.
    me: Option<Addr<RoomActor>>,
}

/// Asks the room to send its presence changes after [`PRESENCE_WINDOW`].
#[derive(Message)]
#[rtype(result = "()")]
struct FlushPresenceSoon;

impl Handler<FlushPresenceSoon> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: FlushPresenceSoon, ctx: &mut Self::Context) {
        ctx.run_later(PRESENCE_WINDOW, |act, _| act.flush_presence());
    }
}

/// Frames per session, sent as one mailbox item each.
type Outbox = FastMap<Uuid, Vec<ByteString>>;

impl RoomActor {
    pub fn new(name: String, deps: AppDeps, occupancy: Arc<Occupancy>) -> Self {
        Self {
            occupancy,
            name,
            id: ROOM_ACTOR_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            phase: Phase::Loading,
            committed: 0,
            pending: BTreeMap::new(),
            gap_timer: None,
            filling: false,
            queue: VecDeque::new(),
            in_flight: None,
            members: FastMap::default(),
            presence: FastMap::default(),
            remote: HashMap::new(),
            refreshing: false,
            recent: VecDeque::with_capacity(RECENT_CAPACITY),
            typing: FastMap::default(),
            joins_seen: 0,
            replay_tokens: 0,
            idle_timer: None,
            presence_changes: FastMap::default(),
            presence_flush_due: false,
            me: None,
            spam: SpamWindow::new(
                deps.config.moderation.spam_repeats,
                deps.config.moderation.spam_window_secs,
                deps.config.limits.messages_per_sec,
                deps.config.limits.message_burst,
            ),
            deps,
        }
    }

    /// Refuses a send: answered like any rejection, and counted.
    fn refuse(&self, to: &Recipient<ToSession>, rejection: Rejection) {
        crate::metrics::get().rejected(rejection.code.as_str());
        self.reject(to, rejection);
    }

    fn reject(&self, to: &Recipient<ToSession>, rejection: Rejection) {
        let _ = to.try_send(ToSession::Reject(rejection.in_room(Some(&self.name))));
    }

    /// Queues live frames for a member, each counted against its backlog; a
    /// member whose backlog is full is a slow consumer and gets disconnected
    /// (1013) instead of slowing the room: `false` means drop it.
    fn push(&self, to: &Outlet, frames: Vec<ByteString>) -> bool {
        let weight = frames.len();
        to.push(frames, weight)
    }

    /// A join's replay counts as one queued frame, however long it is.
    fn push_replay(&self, to: &Outlet, frames: Vec<ByteString>) -> bool {
        to.push(frames, 1)
    }

    /// Present in the room: connected here or through another instance.
    fn visible(&self, user_id: &str) -> bool {
        self.presence.contains_key(user_id) || self.remote.contains_key(user_id)
    }

    fn visible_users(&self) -> Vec<&UserInfo> {
        let mut users: Vec<&UserInfo> = self.presence.values().map(|p| p.user.as_ref()).collect();
        users.extend(
            self.remote
                .iter()
                .filter(|(id, _)| !self.presence.contains_key(*id))
                .map(|(_, r)| r.user.as_ref()),
        );
        users.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        users
    }

    /// Sends a frame to every live member except those of `skip_user`.
    fn broadcast_except(&mut self, frame: ByteString, skip_user: Option<&str>) {
        let mut gone = Vec::new();
        for (id, m) in &self.members {
            // Seed-compatible clients only ever receive messages; a member
            // whose `joined` is still to come gets the current view in it.
            if skip_user == Some(m.user.id.as_str())
                || m.format != FrameFormat::V1
                || m.replay.as_ref().is_some_and(|r| r.joined_last.is_some())
            {
                continue;
            }
            if !self.push(&m.to, vec![frame.clone()]) {
                gone.push(*id);
            }
        }
        for id in gone {
            self.remove_member(id, false);
        }
    }

    /// Notes that `user` just became visible (`joined`) or not. Changes go
    /// out together after [`PRESENCE_WINDOW`], and a user who joined and left
    /// within it (or the reverse) is not announced at all: join/leave
    /// toggling can't multiply frames to every member.
    fn broadcast_presence(&mut self, user: &Arc<UserInfo>, joined: bool) {
        self.presence_changes
            .entry(user.id.clone())
            .or_insert_with(|| (user.clone(), !joined));
        self.report_occupancy();
        if !self.presence_flush_due {
            self.presence_flush_due = true;
            if let Some(me) = &self.me {
                me.do_send(FlushPresenceSoon);
            }
        }
    }

    /// Sends one `presence` frame with the net changes since the last one.
    fn flush_presence(&mut self) {
        self.presence_flush_due = false;
        let changes = std::mem::take(&mut self.presence_changes);
        let (mut joined, mut left) = (Vec::new(), Vec::new());
        for (id, (user, was_visible)) in changes {
            match (was_visible, self.visible(&id)) {
                (false, true) => joined.push(user),
                (true, false) => left.push(user),
                _ => {}
            }
        }
        if joined.is_empty() && left.is_empty() {
            return;
        }
        let by_name =
            |a: &Arc<UserInfo>, b: &Arc<UserInfo>| a.name.cmp(&b.name).then(a.id.cmp(&b.id));
        joined.sort_by(by_name);
        left.sort_by(by_name);
        let left_refs: Vec<&UserInfo> = left.iter().map(|u| u.as_ref()).collect();
        let joined_refs: Vec<&UserInfo> = joined.iter().map(|u| u.as_ref()).collect();
        let frame = ByteString::from(protocol::presence_json(
            &self.name,
            &joined_refs,
            &left_refs,
        ));
        // A user's own connections aren't told they joined: they got `joined`.
        let mut personal: FastMap<String, ByteString> = FastMap::default();
        let mut gone = Vec::new();
        for (id, m) in &self.members {
            if m.format != FrameFormat::V1
                || m.replay.as_ref().is_some_and(|r| r.joined_last.is_some())
            {
                continue;
            }
            let frame = if joined.iter().any(|u| u.id == m.user.id) {
                let own = personal.entry(m.user.id.clone()).or_insert_with(|| {
                    let others: Vec<&UserInfo> = joined
                        .iter()
                        .filter(|u| u.id != m.user.id)
                        .map(|u| u.as_ref())
                        .collect();
                    if others.is_empty() && left.is_empty() {
                        ByteString::new()
                    } else {
                        protocol::presence_json(&self.name, &others, &left_refs).into()
                    }
                });
                if own.is_empty() {
                    continue;
                }
                own.clone()
            } else {
                frame.clone()
            };
            if !self.push(&m.to, vec![frame]) {
                gone.push(*id);
            }
        }
        for id in gone {
            self.remove_member(id, false);
        }
    }

    fn report_occupancy(&self) {
        let online = self.presence.len()
            + self
                .remote
                .keys()
                .filter(|id| !self.presence.contains_key(*id))
                .count();
        self.occupancy.set(online, self.committed);
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
                self.deps
                    .broker
                    .announce(&self.name, Announce::Left(p.user.clone()));
                if !self.remote.contains_key(&user_id) {
                    self.typing.remove(&user_id);
                    self.broadcast_presence(&p.user, false);
                }
            }
            self.report_occupancy();
        }
    }

    fn maybe_idle(&mut self, ctx: &mut Context<Self>) {
        if !self.members.is_empty()
            || self.in_flight.is_some()
            || !self.queue.is_empty()
            || self.idle_timer.is_some()
        {
            return;
        }
        let linger = if self.phase == Phase::Failed {
            Duration::ZERO
        } else {
            IDLE_LINGER
        };
        self.idle_timer = Some(ctx.run_later(linger, |act, ctx| {
            act.idle_timer = None;
            if !act.members.is_empty() || act.in_flight.is_some() || !act.queue.is_empty() {
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

    /// Frames of messages `after+1..=upto` from the in-memory ring, if it covers them.
    fn replay_from_recent(
        &self,
        format: FrameFormat,
        after: u64,
        upto: u64,
    ) -> Option<Vec<ByteString>> {
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

    // ------------------------------------------------------------- sending

    /// Hands the queued sends to the broker, unless a batch is in flight.
    fn start_batch(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight.is_some() || self.queue.is_empty() {
            return;
        }
        let take = self.queue.len().min(SEND_BATCH_MAX);
        let mut senders = Vec::with_capacity(take);
        let mut drafts = Vec::with_capacity(take);
        let mut ids = HashSet::with_capacity(take);
        for queued in self.queue.drain(..take) {
            ids.insert(queued.draft.id.clone());
            senders.push(queued.sender);
            drafts.push(queued.draft);
        }
        self.in_flight = Some(ids);
        let broker = self.deps.broker.clone();
        let room = self.name.clone();
        let committed = self.committed;
        ctx.spawn(
            async move { broker.accept(&room, committed, drafts).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.in_flight = None;
                    act.finish_batch(ctx, senders, result);
                    act.start_batch(ctx);
                    act.maybe_idle(ctx);
                }),
        );
    }

    /// Acks (or refuses) each send of a finished batch, then delivers what it
    /// added, so a sender always sees its ack before its message.
    fn finish_batch(
        &mut self,
        ctx: &mut Context<Self>,
        senders: Vec<Sender>,
        result: Result<Vec<Accepted>, crate::broker::BrokerError>,
    ) {
        let mut outbox = Outbox::default();
        match result {
            Ok(results) => {
                for (sender, accepted) in senders.into_iter().zip(results) {
                    match accepted {
                        Accepted::New(msg) => {
                            crate::metrics::get().messages_accepted.increment(1);
                            self.ack(&mut outbox, &sender, &msg);
                            if msg.seq > self.committed {
                                self.pending.insert(msg.seq, msg);
                            }
                        }
                        Accepted::Duplicate(original) => {
                            self.spam.unrecord(&sender.user_id, sender.spam_print);
                            self.ack(&mut outbox, &sender, &original)
                        }
                        Accepted::Rejected(rejection) => {
                            self.spam.unrecord(&sender.user_id, sender.spam_print);
                            self.refuse(
                                &sender.to,
                                rejection.with_ref(sender.client_ref.as_deref()),
                            )
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(room = %self.name, %error, "sends refused: the broker failed");
                for sender in senders {
                    self.spam.unrecord(&sender.user_id, sender.spam_print);
                    let rejection = Rejection::new(
                        ErrorCode::Unavailable,
                        "the message could not be stored; it was not accepted, send it again",
                    )
                    .with_ref(sender.client_ref.as_deref());
                    self.refuse(&sender.to, rejection);
                }
                // A broker that failed late may have accepted some of them anyway.
                ctx.run_later(RESYNC_AFTER_FAILURE, |act, ctx| act.resync(ctx));
            }
        }
        self.flush_pending(ctx, &mut outbox);
        self.send_outbox(outbox);
    }

    fn ack(&self, outbox: &mut Outbox, sender: &Sender, msg: &ChatMessage) {
        crate::metrics::get()
            .accept_seconds
            .record(crate::metrics::seconds(sender.arrived.elapsed()));
        if sender.format != FrameFormat::V1 {
            return;
        }
        let ack = ByteString::from(msg.ack_json(sender.client_ref.as_deref()));
        if self.members.contains_key(&sender.session) {
            outbox.entry(sender.session).or_default().push(ack);
        } else {
            // It left the room meanwhile; the answer to its send still belongs to it.
            let _ = sender.to.try_send(ToSession::Frame(ack));
        }
    }

    fn send_outbox(&mut self, outbox: Outbox) {
        let mut gone = Vec::new();
        for (id, frames) in outbox {
            if let Some(m) = self.members.get(&id) {
                if !self.push(&m.to, frames) {
                    gone.push(id);
                }
            }
        }
        for id in gone {
            self.remove_member(id, false);
        }
    }

    // ------------------------------------------------------------ delivery

    /// Delivers pending messages while they continue `committed` without a gap.
    fn flush_pending(&mut self, ctx: &mut Context<Self>, outbox: &mut Outbox) {
        let mut delivered_any = false;
        while let Some((&seq, msg)) = self.pending.first_key_value() {
            if seq <= self.committed {
                self.pending.pop_first();
                continue;
            }
            if seq > self.committed + 1 {
                self.schedule_gap_fill(ctx);
                break;
            }
            if self
                .in_flight
                .as_ref()
                .is_some_and(|ids| ids.contains(&msg.id))
            {
                break; // relayed before its ack: the ack goes first
            }
            if let Some((_, msg)) = self.pending.pop_first() {
                self.deliver_one(msg, outbox);
                delivered_any = true;
            }
        }
        if delivered_any {
            self.report_occupancy();
        }
    }

    fn deliver_one(&mut self, msg: Arc<ChatMessage>, outbox: &mut Outbox) {
        self.committed = msg.seq;
        self.deps.refs.remember(&msg);
        let delivered = Arc::new(Delivered::new(msg));
        if self.recent.len() == RECENT_CAPACITY {
            self.recent.pop_front();
        }
        self.recent.push_back(delivered.clone());
        let replay_cap = self.deps.config.limits.session_queue;
        let mut overflowed = Vec::new();
        for (id, m) in self.members.iter_mut() {
            match &mut m.replay {
                // Frames waiting behind a replay count against the session's queue too.
                Some(replay) if replay.buffer.len() >= replay_cap => {
                    m.to.do_send(ToSession::SlowConsumer);
                    overflowed.push(*id);
                }
                Some(replay) => replay.buffer.push(delivered.clone()),
                None => outbox
                    .entry(*id)
                    .or_default()
                    .push(delivered.frame(m.format)),
            }
        }
        crate::metrics::get()
            .deliveries
            .increment((self.members.len() - overflowed.len()) as u64);
        for id in overflowed {
            outbox.remove(&id);
            self.remove_member(id, false);
        }
    }

    fn schedule_gap_fill(&mut self, ctx: &mut Context<Self>) {
        if self.gap_timer.is_some() || self.filling {
            return;
        }
        self.gap_timer = Some(ctx.run_later(GAP_WAIT, |act, ctx| {
            act.gap_timer = None;
            let target = match act.pending.first_key_value() {
                Some((&seq, _)) if seq > act.committed + 1 => seq - 1,
                _ => return,
            };
            act.fill_to(ctx, target);
        }));
    }

    /// Fetches the messages after `committed` up to `target` that never arrived.
    fn fill_to(&mut self, ctx: &mut Context<Self>, target: u64) {
        if target <= self.committed || self.filling {
            return;
        }
        self.filling = true;
        let (broker, store, room) = (
            self.deps.broker.clone(),
            self.deps.store.clone(),
            self.name.clone(),
        );
        let after = self.committed;
        ctx.spawn(
            async move { fetch_range(&broker, &store, &room, after, target).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.filling = false;
                    match result {
                        Ok(messages) => {
                            for m in messages {
                                if m.seq > act.committed {
                                    act.pending.insert(m.seq, Arc::new(m));
                                }
                            }
                            let mut outbox = Outbox::default();
                            act.flush_pending(ctx, &mut outbox);
                            act.send_outbox(outbox);
                        }
                        Err(error) => {
                            tracing::warn!(room = %act.name, %error, "cannot fetch missed messages; retrying");
                            ctx.run_later(RESYNC_AFTER_FAILURE, move |act, ctx| {
                                act.fill_to(ctx, target)
                            });
                        }
                    }
                }),
        );
    }

    /// Catches up with the room's head (after the relay was interrupted).
    fn resync(&mut self, ctx: &mut Context<Self>) {
        if self.phase != Phase::Ready {
            return;
        }
        let (broker, room, floor) = (self.deps.broker.clone(), self.name.clone(), self.committed);
        ctx.spawn(
            async move { broker.head(&room, floor).await }
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(head) => act.fill_to(ctx, head),
                    Err(error) => {
                        tracing::warn!(room = %act.name, %error, "resync failed; retrying");
                        ctx.run_later(RESYNC_AFTER_FAILURE, |act, ctx| act.resync(ctx));
                    }
                }),
        );
    }

    fn start_fetch_replay(
        &mut self,
        ctx: &mut Context<Self>,
        session: Uuid,
        after: u64,
        upto: u64,
        joined_last: Option<u64>,
    ) {
        self.replay_tokens += 1;
        let token = self.replay_tokens;
        if let Some(m) = self.members.get_mut(&session) {
            let buffer = m.replay.take().map(|r| r.buffer).unwrap_or_default();
            m.replay = Some(Replay {
                token,
                buffer,
                joined_last,
            });
        }
        let (broker, store, room) = (
            self.deps.broker.clone(),
            self.deps.store.clone(),
            self.name.clone(),
        );
        ctx.spawn(
            async move { fetch_range(&broker, &store, &room, after, upto).await }
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
                            // Every seq in the range is there, or some were deleted.
                            let complete = messages.len() as u64 == upto - after;
                            let joined = joined_last.map(|last| {
                                let users = act.visible_users();
                                ByteString::from(protocol::joined_json(
                                    &act.name,
                                    last,
                                    Some(complete),
                                    &users,
                                ))
                            });
                            // An incomplete recovery replays nothing: the client pages history.
                            let replayed = if complete || joined.is_none() {
                                messages
                            } else {
                                Vec::new()
                            };
                            let frames = joined
                                .into_iter()
                                .chain(
                                    replayed
                                        .into_iter()
                                        .map(|msg| Delivered::new(Arc::new(msg)).frame(format)),
                                )
                                .chain(
                                    buffered
                                        .iter()
                                        .filter(|d| d.msg.seq > upto)
                                        .map(|d| d.frame(format)),
                                )
                                .collect();
                            if act.push_replay(&to, frames) {
                                act.resume_waiting_joins(session, ctx);
                            } else {
                                act.remove_member(session, false);
                            }
                        }
                        Err(error) => {
                            // Every join waiting behind this one gets the answer too.
                            let joins = 1 + std::mem::take(&mut m.waiting_joins).len();
                            tracing::warn!(room = %act.name, %error, "join replay failed");
                            for _ in 0..joins {
                                act.reject(
                                    &to,
                                    Rejection::new(
                                        ErrorCode::Unavailable,
                                        "history is unavailable right now; join again",
                                    ),
                                );
                            }
                            act.remove_member(session, true);
                            to.do_send(ToSession::Detached(act.name.clone()));
                            act.maybe_idle(ctx);
                        }
                    }
                }),
        );
    }

    /// Runs the joins that waited behind a member's replay, one at a time:
    /// one that starts a replay of its own holds the rest back again.
    fn resume_waiting_joins(&mut self, session: Uuid, ctx: &mut Context<Self>) {
        loop {
            let Some(member) = self.members.get_mut(&session) else {
                return;
            };
            if member.replay.is_some() {
                return;
            }
            let Some(join) = member.waiting_joins.pop_front() else {
                return;
            };
            <Self as Handler<Join>>::handle(self, join, ctx);
        }
    }

    // ------------------------------------------------------------ presence

    /// Replaces the view of other instances' users and tells members what changed.
    fn reconcile_remote(&mut self, entries: Vec<RemotePresence>) {
        let mut fresh: HashMap<String, RemoteUser> = HashMap::new();
        for e in entries {
            fresh
                .entry(e.user.id.clone())
                .or_insert_with(|| RemoteUser {
                    user: e.user.clone(),
                    instances: HashSet::new(),
                })
                .instances
                .insert(e.instance);
        }
        let old = std::mem::replace(&mut self.remote, fresh);
        let mut changes: Vec<(Arc<UserInfo>, bool)> = Vec::new();
        for (id, r) in &old {
            if !self.visible(id) {
                changes.push((r.user.clone(), false));
            }
        }
        for (id, r) in &self.remote {
            if !old.contains_key(id) && !self.presence.contains_key(id) {
                changes.push((r.user.clone(), true));
            }
        }
        for (user, joined) in changes {
            self.broadcast_presence(&user, joined);
        }
    }

    fn refresh_presence(&mut self, ctx: &mut Context<Self>) {
        if self.phase != Phase::Ready || self.refreshing {
            return;
        }
        self.refreshing = true;
        let local: Vec<Arc<UserInfo>> = self.presence.values().map(|p| p.user.clone()).collect();
        let (broker, room) = (self.deps.broker.clone(), self.name.clone());
        ctx.spawn(
            async move { broker.refresh_presence(&room, local).await }
                .into_actor(self)
                .map(|result, act, _| {
                    act.refreshing = false;
                    match result {
                        Ok(Some(entries)) => act.reconcile_remote(entries),
                        Ok(None) => {}
                        Err(error) => {
                            tracing::debug!(room = %act.name, %error, "presence refresh failed")
                        }
                    }
                }),
        );
    }

    /// Relays a typing notice unless this user already typed within the window.
    fn relay_typing(&mut self, user: &UserInfo) -> bool {
        let now = Instant::now();
        if self
            .typing
            .get(&user.id)
            .is_some_and(|at| now.duration_since(*at) < TYPING_WINDOW)
        {
            return false;
        }
        self.typing.insert(user.id.clone(), now);
        let frame = protocol::typing_json(&self.name, user);
        self.broadcast_except(frame.into(), Some(&user.id));
        true
    }
}

/// The room's messages `after < seq <= upto`: the broker's recent part (the
/// room's stream in cluster mode), the store for what it no longer holds.
async fn fetch_range(
    broker: &crate::broker::SharedBroker,
    store: &crate::store::SharedStore,
    room: &str,
    after: u64,
    upto: u64,
) -> Result<Vec<ChatMessage>, String> {
    let mut tail = match broker.recent(room, after, upto).await {
        Ok(tail) => tail,
        Err(error) => {
            tracing::debug!(%room, %error, "recent messages unavailable from the broker; reading the store");
            Vec::new()
        }
    };
    tail.retain(|m| m.seq > after && m.seq <= upto);
    let covered_from = tail.first().map_or(upto + 1, |m| m.seq);
    if covered_from <= after + 1 {
        return Ok(tail);
    }
    let mut head = store
        .range(room, after, covered_from - 1)
        .await
        .map_err(|e| e.to_string())?;
    head.extend(tail);
    Ok(head)
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        crate::metrics::get().rooms.increment(1.0);
        self.me = Some(ctx.address());
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
        ctx.run_interval(PRESENCE_REFRESH, |act, ctx| act.refresh_presence(ctx));
        let (broker, room, id) = (self.deps.broker.clone(), self.name.clone(), self.id);
        let inbound = ctx.address().recipient();
        // Nothing else is handled until the room knows its seq: relay first, so
        // nothing published after the head was read can be missed.
        ctx.wait(
            async move {
                broker.attach(&room, id, inbound).await?;
                let head = broker.head(&room, 0).await?;
                let remote = broker.refresh_presence(&room, Vec::new()).await?;
                Ok::<_, crate::broker::BrokerError>((head, remote))
            }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok((head, remote)) => {
                    act.committed = head;
                    act.phase = Phase::Ready;
                    if let Some(remote) = remote {
                        act.reconcile_remote(remote);
                    }
                }
                Err(error) => {
                    tracing::error!(room = %act.name, %error, "cannot open the room");
                    act.phase = Phase::Failed;
                    act.maybe_idle(ctx);
                }
            }),
        );
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        crate::metrics::get().rooms.decrement(1.0);
        self.deps.broker.detach(&self.name, self.id);
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
        if let Some(member) = self.members.get_mut(&join.session) {
            if member.replay.is_some() {
                if member.waiting_joins.len() >= MAX_WAITING_JOINS {
                    let to = member.to.clone();
                    self.reject(
                        &to,
                        Rejection {
                            retry_after_ms: Some(100),
                            ..Rejection::new(
                                ErrorCode::RateLimited,
                                "this room's earlier joins are still replaying",
                            )
                        },
                    );
                } else {
                    member.waiting_joins.push_back(join);
                }
                return;
            }
        }
        let rejoin = self.members.contains_key(&join.session);
        if !rejoin {
            let first_here = match self.presence.get_mut(&join.user.id) {
                Some(p) => {
                    p.connections += 1;
                    false
                }
                None => true,
            };
            if first_here {
                let newly_visible = !self.visible(&join.user.id);
                self.presence.insert(
                    join.user.id.clone(),
                    Presence {
                        user: join.user.clone(),
                        connections: 1,
                    },
                );
                self.deps
                    .broker
                    .announce(&self.name, Announce::Joined(join.user.clone()));
                if newly_visible {
                    self.broadcast_presence(&join.user, true);
                } else {
                    self.report_occupancy();
                }
            }
            self.members.insert(
                join.session,
                Member {
                    user: join.user.clone(),
                    to: join.to.clone(),
                    format: join.format,
                    replay: None,
                    waiting_joins: VecDeque::new(),
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
        let replay = range
            .filter(|(a, u)| a < u)
            .map(|(a, u)| (a, u, self.replay_from_recent(join.format, a, u)));
        // A recovery read from the store may find messages that retention
        // deleted: whether it `recovered` is known only once the read is back,
        // so its `joined` waits for it.
        let defer_joined = join.format == FrameFormat::V1
            && recovered == Some(true)
            && matches!(replay, Some((_, _, None)));
        if join.format == FrameFormat::V1 && !defer_joined {
            let frame = protocol::joined_json(&self.name, last, recovered, &self.visible_users());
            if !self.push(&join.to, vec![frame.into()]) {
                self.remove_member(join.session, false);
                return;
            }
        }
        let Some((after, upto, from_recent)) = replay else {
            return;
        };
        match from_recent {
            Some(frames) => {
                if !self.push_replay(&join.to, frames) {
                    self.remove_member(join.session, false);
                }
            }
            None => self.start_fetch_replay(
                ctx,
                join.session,
                after,
                upto,
                defer_joined.then_some(last),
            ),
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

impl Handler<Post> for RoomActor {
    type Result = ();

    fn handle(&mut self, send: Post, ctx: &mut Self::Context) {
        let Some(member) = self.members.get(&send.session) else {
            let rejection = Rejection::new(
                ErrorCode::NotJoined,
                "this connection has not joined the room",
            );
            self.refuse(&send.to, rejection.with_ref(send.client_ref.as_deref()));
            return;
        };
        if self.phase != Phase::Ready {
            let rejection =
                Rejection::new(ErrorCode::Unavailable, "the room is unavailable right now");
            self.refuse(&member.to, rejection.with_ref(send.client_ref.as_deref()));
            return;
        }
        if self.spam.is_spam(&member.user.id, &send.content, 0) {
            let rejection = Rejection::new(
                ErrorCode::Spam,
                "the same message was sent too often; wait before repeating it",
            );
            self.refuse(&member.to, rejection.with_ref(send.client_ref.as_deref()));
            return;
        }
        let spam_print = self.spam.record(&member.user.id, &send.content);
        let sender = Sender {
            session: send.session,
            user_id: member.user.id.clone(),
            spam_print,
            to: member.to.clone(),
            format: member.format,
            client_ref: send.client_ref.clone(),
            arrived: Instant::now(),
        };
        let draft = Draft::new(member.user.clone(), send.content, send.client_ref);
        self.queue.push_back(Queued { sender, draft });
        self.start_batch(ctx);
    }
}

impl Handler<Typing> for RoomActor {
    type Result = ();

    fn handle(&mut self, typing: Typing, _ctx: &mut Self::Context) {
        let Some(member) = self.members.get(&typing.session) else {
            return;
        };
        let user = member.user.clone();
        if self.relay_typing(&user) {
            self.deps
                .broker
                .announce(&self.name, Announce::Typing(user));
        }
    }
}

impl Handler<Inbound> for RoomActor {
    type Result = ();

    fn handle(&mut self, inbound: Inbound, ctx: &mut Self::Context) {
        if self.phase != Phase::Ready {
            return;
        }
        match inbound {
            Inbound::Messages(messages) => {
                for m in messages {
                    if m.seq > self.committed {
                        self.pending.insert(m.seq, m);
                    }
                }
                let mut outbox = Outbox::default();
                self.flush_pending(ctx, &mut outbox);
                self.send_outbox(outbox);
            }
            Inbound::Presence {
                instance,
                user,
                joined: true,
            } => {
                let newly_visible = !self.visible(&user.id);
                self.remote
                    .entry(user.id.clone())
                    .or_insert_with(|| RemoteUser {
                        user: user.clone(),
                        instances: HashSet::new(),
                    })
                    .instances
                    .insert(instance);
                if newly_visible {
                    self.broadcast_presence(&user, true);
                }
            }
            Inbound::Presence {
                instance,
                user,
                joined: false,
            } => {
                let was_visible = self.visible(&user.id);
                if let Some(r) = self.remote.get_mut(&user.id) {
                    r.instances.remove(&instance);
                    if r.instances.is_empty() {
                        self.remote.remove(&user.id);
                    }
                }
                if was_visible && !self.visible(&user.id) {
                    self.typing.remove(&user.id);
                    self.broadcast_presence(&user, false);
                }
            }
            Inbound::Typing { user, .. } => {
                self.relay_typing(&user);
            }
            Inbound::Resync => self.resync(ctx),
        }
    }
}
