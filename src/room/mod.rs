//! The RoomActor: one per active room on this instance. It owns the room's local
//! members and presence, hands their sends to the broker in batches (one batch
//! in flight, so each sender's messages keep their order), and delivers the
//! room's messages to its members in seq order, each serialized once and shared.
//! The same code runs in both modes; the broker seam decides where seqs come
//! from and whether other instances contribute messages, presence and typing.
//!
//! This file is the actor: its state, lifecycle and message handlers;
//! `flow.rs` holds the rest of its methods (the broker round trips, fan-out,
//! gap fills, replay fetches, presence frames). The state it keeps is in
//! plain structs, one per job, each with its unit tests:
//! - [`delivery::Delivery`]: ordered delivery (what was delivered, what waits
//!   behind a gap, the recent buffer, when to fetch a gap);
//! - [`members::Membership`]: members, presence here and elsewhere, typing;
//! - [`batch::Batching`]: the send queue and the batch in flight;
//! - [`replay::Replays`]: join replays being fetched and joins waiting behind them.

mod batch;
mod delivery;
mod flow;
mod members;
mod replay;

use crate::access::{Access, EventBody, Reason};
use crate::broker::{Announce, Inbound};
use crate::chat::Kind;
use crate::limits::SpamWindow;
use crate::message::{
    Act, FrameFormat, Join, Leave, MarkRead, Occupancy, Outlet, Post, RoomIdle, Settle, ToSession,
    Typing,
};
use crate::protocol::{self, ErrorCode, Rejection};
use crate::{AppDeps, FastMap};
use actix::prelude::*;
use batch::{Batching, Sender};
use bytestring::ByteString;
use delivery::Delivery;
use members::{Member, Membership};
use replay::{Plan, Replays, WaitBehind};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long an empty room lingers before it asks to stop.
const IDLE_LINGER: Duration = Duration::from_secs(10);
/// How often a room drops members whose session is gone without a `Leave`.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How often presence is refreshed with other instances (their entries expire
/// when not refreshed, so a crashed instance's users disappear).
const PRESENCE_REFRESH: Duration = Duration::from_secs(5);
/// How often a room opened while the store was down reads its members again.
const ACCESS_RETRY: Duration = Duration::from_secs(5);
/// A seq missing from the relay usually arrives within this; then it is fetched.
const GAP_WAIT: Duration = Duration::from_millis(150);
/// After the broker failed a batch, look for messages it may have accepted anyway.
const RESYNC_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Presence changes within this window go out as one net `presence` frame.
const PRESENCE_WINDOW: Duration = Duration::from_millis(100);

/// Tells room actors of the same name apart (one may stop as the next starts).
static ROOM_ACTOR_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[derive(PartialEq, Eq)]
enum Phase {
    /// Attaching to the broker and reading the head; handles nothing else.
    Loading,
    Ready,
    /// The room could not open: it refuses joins and sends, and stops.
    Failed,
}

pub struct RoomActor {
    /// The room's name, in every frame and broker call.
    name: String,
    /// Online count and newest seq, read by the registry for `/api/rooms`.
    occupancy: Arc<Occupancy>,
    /// Tells this actor from an earlier or later one of the same room (the
    /// broker's relay is attached to one of them).
    id: u64,
    /// Config, broker, store, registry and the ref window, shared by all actors.
    deps: AppDeps,
    /// Loading until the room knows its head; a room that failed to open
    /// refuses everything and stops.
    phase: Phase,
    /// Ordered delivery: seqs from every source go out once, in order.
    delivery: Delivery,
    /// Sends waiting for the broker, and the batch it is accepting.
    batching: Batching,
    /// Members, and who is visible in the room here and elsewhere.
    membership: Membership,
    /// Join replays being fetched, and the joins waiting behind them.
    replays: Replays,
    /// Joins the registry forwarded that arrived here; the registry lets an
    /// idle room stop only when this matches what it sent.
    joins_seen: u64,
    /// The linger before an empty room asks the registry to stop it.
    idle_timer: Option<SpawnHandle>,
    /// Each user's recent sends here, to refuse the same content repeated
    /// too often (`moderation.spam_repeats` within the window).
    spam: SpamWindow,
    /// The room's own address, to schedule presence frames from anywhere.
    me: Option<Addr<RoomActor>>,
    /// The room's kind, members, bans and mutes: loaded at start, then
    /// brought forward by each membership event delivered.
    access: Access,
    /// Connections a delivered membership event takes out of the room, once
    /// the delivery is sent.
    evicting: Vec<(Uuid, Reason)>,
    /// The newest read marker of each user here (to pass on only markers
    /// that move forward).
    read_marks: FastMap<String, u64>,
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

impl Handler<Settle> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: Settle, _: &mut Self::Context) {}
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
            delivery: Delivery::new(),
            batching: Batching::default(),
            membership: Membership::default(),
            replays: Replays::default(),
            joins_seen: 0,
            idle_timer: None,
            me: None,
            access: Access::default(),
            evicting: Vec::new(),
            read_marks: FastMap::default(),
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

    /// Whether presence and typing frames skip this member: seed-compatible
    /// clients only ever receive messages; a member whose `joined` is still
    /// to come gets the current view in it.
    fn hears_presence(&self, session: &Uuid, member: &Member) -> bool {
        member.format == FrameFormat::V1 && !self.replays.defers_joined(session)
    }

    fn report_occupancy(&self) {
        self.occupancy
            .set(self.membership.online(), self.delivery.delivered());
    }

    fn remove_member(&mut self, session: Uuid, notify: bool) {
        let Some(departure) = self.membership.remove(&session) else {
            return;
        };
        self.replays.remove(&session);
        if notify {
            let _ = departure
                .member
                .to
                .try_send(ToSession::Frame(protocol::left_json(&self.name).into()));
        }
        if let Some(user) = departure.last_here {
            self.read_marks.remove(&user.id);
            self.deps
                .broker
                .announce(&self.name, Announce::Left(user.clone()));
            if departure.gone {
                self.broadcast_presence(&user, false);
            }
            self.report_occupancy();
        }
    }

    /// No members and nothing to send: asks to stop after [`IDLE_LINGER`].
    fn is_idle(&self) -> bool {
        self.membership.is_empty() && self.batching.is_idle()
    }

    fn maybe_idle(&mut self, ctx: &mut Context<Self>) {
        if !self.is_idle() || self.idle_timer.is_some() {
            return;
        }
        let linger = if self.phase == Phase::Failed {
            Duration::ZERO
        } else {
            IDLE_LINGER
        };
        self.idle_timer = Some(ctx.run_later(linger, |act, ctx| {
            act.idle_timer = None;
            if !act.is_idle() {
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
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        crate::metrics::get().rooms.increment(1.0);
        self.me = Some(ctx.address());
        ctx.run_interval(SWEEP_INTERVAL, |act, ctx| {
            for id in act.membership.disconnected() {
                act.remove_member(id, false);
            }
            act.maybe_idle(ctx);
        });
        ctx.run_interval(PRESENCE_REFRESH, |act, ctx| act.refresh_presence(ctx));
        let (broker, room, id) = (self.deps.broker.clone(), self.name.clone(), self.id);
        let (store, window) = (self.deps.store.clone(), self.deps.config.rooms.recovery_max);
        let inbound = ctx.address().recipient();
        // Nothing else is handled until the room knows its seq and who may
        // be in it: relay first, so nothing published after the head was
        // read can be missed.
        ctx.wait(
            async move {
                broker.attach(&room, id, inbound).await?;
                let head = broker.head(&room, 0).await?;
                let access = flow::load_access(&store, &broker, &room, head, window).await?;
                let remote = broker.refresh_presence(&room, Vec::new()).await?;
                Ok::<_, crate::broker::BrokerError>((head, access, remote))
            }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok((head, access, remote)) => {
                    act.delivery.start_at(head);
                    let partial = access.partial;
                    act.access = access;
                    if partial {
                        act.retry_access(ctx);
                    }
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
        let session = join.session;
        if let Err(rejection) = self.access.may_read(&self.name, &join.user.id) {
            self.reject(&join.to, rejection);
            join.to.do_send(ToSession::Detached(self.name.clone()));
            self.remove_member(session, false);
            self.maybe_idle(ctx);
            return;
        }
        // A marker that exists: a `read` below it moves nothing.
        if let Some(reading) = join.reading.filter(|r| r.read_seq > 0) {
            let mark = self.read_marks.entry(join.user.id.clone()).or_insert(0);
            *mark = (*mark).max(reading.read_seq);
        }
        let join = match self.replays.wait_behind(join) {
            WaitBehind::Free(join) => join,
            WaitBehind::Queued => return,
            WaitBehind::Full => {
                if let Some(to) = self.membership.get(&session).map(|m| m.to.clone()) {
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
                }
                return;
            }
        };
        if !self.membership.contains(&session) {
            let member = Member {
                user: join.user.clone(),
                moderator: join.moderator,
                to: join.to.clone(),
                format: join.format,
            };
            let arrival = self.membership.add(session, member);
            if arrival.first_here {
                self.deps
                    .broker
                    .announce(&self.name, Announce::Joined(join.user.clone()));
                if arrival.newly_visible {
                    self.broadcast_presence(&join.user, true);
                } else {
                    self.report_occupancy();
                }
            }
        }

        let last = self.delivery.delivered();
        let plan = Plan::new(
            join.since,
            join.history,
            last,
            self.deps.config.rooms.recovery_max,
        );
        let replay = plan.range.map(|(after, upto)| {
            let recent = replay::from_recent(&self.delivery, join.format, after, upto);
            (after, upto, recent)
        });
        // A recovery read from the store may find messages that retention
        // deleted: whether it `recovered` is known only once the read is back,
        // so its `joined` waits for it.
        let defer_joined = join.format == FrameFormat::V1
            && plan.recovered == Some(true)
            && matches!(replay, Some((_, _, None)));
        if join.format == FrameFormat::V1 && !defer_joined {
            let users = self.membership.visible_users();
            let frame =
                protocol::joined_json(&self.name, last, plan.recovered, &users, join.reading);
            if !self.push(&join.to, vec![frame.into()]) {
                self.remove_member(session, false);
                return;
            }
        }
        let Some((after, upto, from_recent)) = replay else {
            return;
        };
        match from_recent {
            Some(frames) => {
                if !self.push_replay(&join.to, frames) {
                    self.remove_member(session, false);
                }
            }
            None => self.start_fetch_replay(
                ctx,
                session,
                after,
                upto,
                defer_joined.then_some((last, join.reading)),
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

    fn handle(&mut self, post: Post, ctx: &mut Self::Context) {
        let Some(member) = self.membership.get(&post.session) else {
            let rejection = Rejection::new(
                ErrorCode::NotJoined,
                "this connection has not joined the room",
            );
            self.refuse(
                &post.to,
                rejection.with_ref(post.draft.client_ref.as_deref()),
            );
            return;
        };
        if self.phase != Phase::Ready {
            let rejection =
                Rejection::new(ErrorCode::Unavailable, "the room is unavailable right now");
            self.refuse(
                &member.to,
                rejection.with_ref(post.draft.client_ref.as_deref()),
            );
            return;
        }
        let draft = post.draft;
        if draft.kind != Kind::Delete {
            if let Err(rejection) = self.access.may_post(&member.user.id, protocol::now_ms()) {
                self.refuse(&member.to, rejection.with_ref(draft.client_ref.as_deref()));
                return;
            }
        }
        // Spam is judged on what repeats: a message's or an edit's text, or
        // one reaction on one message toggled over and over; a delete is not.
        let spam_key = match (draft.kind, draft.target.as_deref()) {
            (Kind::Message | Kind::Edit, _) => Some(Cow::Borrowed(draft.content.as_str())),
            (Kind::React | Kind::Unreact, Some(target)) => Some(Cow::Owned(format!(
                "\u{0}reaction {target} {}",
                draft.content
            ))),
            _ => None,
        };
        if let Some(key) = &spam_key {
            if self.spam.is_spam(&member.user.id, key, 0) {
                let what = match draft.kind {
                    Kind::React | Kind::Unreact => "the same reaction was changed too often",
                    _ => "the same message was sent too often",
                };
                let rejection =
                    Rejection::new(ErrorCode::Spam, format!("{what}; wait before repeating it"));
                self.refuse(&member.to, rejection.with_ref(draft.client_ref.as_deref()));
                return;
            }
        }
        let spam_print = spam_key.map(|key| self.spam.record(&member.user.id, &key));
        let sender = Sender {
            session: post.session,
            user_id: member.user.id.clone(),
            moderator: member.moderator,
            spam_print,
            to: Some(member.to.clone()),
            format: member.format,
            client_ref: draft.client_ref.clone(),
            arrived: Instant::now(),
            reply: None,
        };
        self.batching.push(sender, draft);
        self.start_batch(ctx);
    }
}

impl Handler<Act> for RoomActor {
    type Result = ();

    fn handle(&mut self, act: Act, ctx: &mut Self::Context) {
        if act.leased {
            self.joins_seen += 1;
        }
        if self.phase != Phase::Ready {
            let rejection =
                Rejection::new(ErrorCode::Unavailable, "the room is unavailable right now");
            let _ = act.reply.send(Err(rejection));
            self.maybe_idle(ctx);
            return;
        }
        self.cancel_idle(ctx);
        let mut draft = act.draft;
        if let Some((actor, action)) = &act.check {
            let subject = draft.target.clone().unwrap_or_default();
            match self.access.check(&self.name, actor, &subject, action) {
                Ok(true) => {}
                answer => {
                    let _ = act.reply.send(answer.map(|_| None));
                    self.maybe_idle(ctx);
                    return;
                }
            }
            // What only the room knows: its kind (a kick from a public room
            // leaves the standing) and the subject's name, when not given.
            let mut body = EventBody::parse(&draft.content);
            body.connections_only =
                *action == crate::access::Action::Kick && !self.access.kind.members_only();
            if body
                .name
                .as_deref()
                .is_none_or(|n| n.is_empty() || n == subject)
            {
                // Their name as connected here now, else as the room's rows know it.
                let known = self
                    .membership
                    .iter()
                    .find(|(_, m)| m.user.id == subject)
                    .map(|(_, m)| m.user.name.clone())
                    .or_else(|| {
                        self.access
                            .standing(&subject)
                            .map(|s| s.name.clone())
                            .filter(|n| !n.is_empty())
                    });
                if let Some(name) = known {
                    body.name = Some(name);
                }
            }
            draft.content = body.to_content();
        }
        let sender = Sender {
            session: Uuid::nil(),
            user_id: draft.user.id.clone(),
            moderator: false,
            spam_print: None,
            to: None,
            format: FrameFormat::V1,
            client_ref: None,
            arrived: Instant::now(),
            reply: Some(act.reply),
        };
        self.batching.push(sender, draft);
        self.start_batch(ctx);
    }
}

impl Handler<MarkRead> for RoomActor {
    type Result = ();

    fn handle(&mut self, mark: MarkRead, _: &mut Self::Context) {
        let Some(member) = self.membership.get(&mark.session) else {
            return;
        };
        // A marker past the newest seq counts as the newest.
        let seq = mark.seq.min(self.delivery.delivered());
        let user = member.user.id.clone();
        let known = self.read_marks.entry(user.clone()).or_insert(0);
        if seq <= *known {
            return;
        }
        *known = seq;
        self.deps.markers.note(&user, &self.name, seq);
        let frame = protocol::read_json(&self.name, seq);
        self.deps.tell_user(&user, &frame, Some(mark.session));
    }
}

impl Handler<Typing> for RoomActor {
    type Result = ();

    fn handle(&mut self, typing: Typing, _ctx: &mut Self::Context) {
        let Some(member) = self.membership.get(&typing.session) else {
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
                    self.delivery.offer(m);
                }
                let mut outbox = Outbox::default();
                self.flush_delivery(ctx, &mut outbox);
                self.send_outbox(outbox);
            }
            Inbound::Presence {
                instance,
                user,
                joined: true,
            } => {
                if self.membership.remote_joined(instance, &user) {
                    self.broadcast_presence(&user, true);
                }
            }
            Inbound::Presence {
                instance,
                user,
                joined: false,
            } => {
                if self.membership.remote_left(&instance, &user) {
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

/// An outlet to an actor that drops everything: for the unit tests of the
/// room's parts, which look at state, not at what a session receives.
#[cfg(test)]
fn test_outlet() -> Outlet {
    use actix::prelude::*;
    struct Sink;
    impl Actor for Sink {
        type Context = Context<Self>;
    }
    impl Handler<ToSession> for Sink {
        type Result = ();
        fn handle(&mut self, _: ToSession, _: &mut Self::Context) {}
    }
    Outlet::new(
        Sink.start().recipient(),
        Arc::new(crate::message::Backlog::new(8, 1024)),
    )
}
