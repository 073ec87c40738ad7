//! The room actor's traffic: its sends' round trip through the broker
//! (batches, acks), delivery to the members (fan-out, gap fills, resyncs),
//! join replays fetched from the broker and the store, and presence and
//! typing frames. These are the actor's own methods, split from `mod.rs`
//! (lifecycle, handlers, membership changes) to keep each file readable; the
//! state they work on is in the plain structs beside them.

use super::batch::Sender;
use super::delivery::{Delivered, Next};
use super::replay::{self, Hold};
use super::{FlushPresenceSoon, Outbox, Phase, RoomActor, GAP_WAIT, RESYNC_AFTER_FAILURE};
use crate::access::{Effect, Reason};
use crate::broker::{Accepted, Draft, RemotePresence};
use crate::changes::{self, TargetState, Verdict};
use crate::chat::ChatMessage;
use crate::message::{FrameFormat, Join, ToSession};
use crate::protocol::{self, ErrorCode, ReadState, Rejection, UserInfo};
use crate::FastMap;
use actix::prelude::*;
use bytestring::ByteString;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

impl RoomActor {
    /// Sends a frame to every live member except those of `skip_user`.
    fn broadcast_except(&mut self, frame: ByteString, skip_user: Option<&str>) {
        let mut gone = Vec::new();
        for (id, m) in self.membership.iter() {
            if skip_user == Some(m.user.id.as_str()) || !self.hears_presence(id, m) {
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
    /// out together after [`super::PRESENCE_WINDOW`]: join/leave toggling can't
    /// multiply frames to every member.
    pub(super) fn broadcast_presence(&mut self, user: &Arc<UserInfo>, joined: bool) {
        let schedule = self.membership.note_presence(user, joined);
        self.report_occupancy();
        if schedule {
            if let Some(me) = &self.me {
                me.do_send(FlushPresenceSoon);
            }
        }
    }

    /// Sends one `presence` frame with the net changes since the last one.
    pub(super) fn flush_presence(&mut self) {
        let Some(mut frames) = self.membership.take_presence(&self.name) else {
            return;
        };
        let mut gone = Vec::new();
        for (id, m) in self.membership.iter() {
            if !self.hears_presence(id, m) {
                continue;
            }
            let Some(frame) = frames.for_user(&m.user.id) else {
                continue;
            };
            if !self.push(&m.to, vec![frame]) {
                gone.push(*id);
            }
        }
        for id in gone {
            self.remove_member(id, false);
        }
    }

    // ------------------------------------------------------------- sending

    /// Hands the queued sends to the broker, unless a batch is in flight.
    /// Changes and replies are first checked against their target message:
    /// from the recent entries when it is among them, else read from the store.
    pub(super) fn start_batch(&mut self, ctx: &mut Context<Self>) {
        let Some((senders, drafts)) = self.batching.start() else {
            return;
        };
        let mut unknown: Vec<String> = Vec::new();
        let mut users: Vec<String> = Vec::new();
        for draft in &drafts {
            let Some(target) = changes::target_of(draft) else {
                continue;
            };
            if !self.delivery.knows(target) && !unknown.iter().any(|t| t == target) {
                unknown.push(target.to_string());
            }
            if !users.contains(&draft.user.id) {
                users.push(draft.user.id.clone());
            }
        }
        if unknown.is_empty() {
            return self.check_and_accept(ctx, senders, drafts, Vec::new());
        }
        let (store, broker, room) = (
            self.deps.store.clone(),
            self.deps.broker.clone(),
            self.name.clone(),
        );
        let (head, memory_from, window) = (
            self.delivery.delivered(),
            self.delivery.memory_from(),
            self.deps.config.rooms.recovery_max,
        );
        ctx.spawn(
            async move {
                look_up_targets(
                    &store,
                    &broker,
                    &room,
                    unknown,
                    users,
                    head,
                    memory_from,
                    window,
                )
                .await
            }
            .into_actor(self)
            .map(move |result, act, ctx| match result {
                Ok(stored) => act.check_and_accept(ctx, senders, drafts, stored),
                Err(error) => {
                    let failed = crate::broker::BrokerError::failed(error);
                    let results = vec![None; senders.len()];
                    act.end_batch(ctx, senders, results, Err(failed));
                }
            }),
        );
    }

    /// Decides each change and reply of the batch in order (an earlier one's
    /// effect counts for the next), answers those the rules settle, and hands
    /// the rest to the broker. A batch of plain messages goes straight on.
    fn check_and_accept(
        &mut self,
        ctx: &mut Context<Self>,
        senders: Vec<Sender>,
        drafts: Vec<Draft>,
        stored: Vec<TargetState>,
    ) {
        if drafts.iter().all(|d| changes::target_of(d).is_none()) {
            return self.accept(ctx, senders, Vec::new(), drafts);
        }
        let mut states: FastMap<String, Option<TargetState>> = FastMap::default();
        // Refs of changes of this batch on their way to the broker: a resend
        // among them is the broker's to answer (with the original's ack).
        let mut on_their_way: Vec<(&str, &str)> = Vec::new();
        let mut settled = Vec::with_capacity(drafts.len());
        let mut to_accept = Vec::with_capacity(drafts.len());
        for (sender, draft) in senders.iter().zip(drafts) {
            let verdict = match changes::target_of(&draft) {
                None => None,
                Some(target) => {
                    let state = states.entry(target.to_string()).or_insert_with(|| {
                        let base = stored.iter().find(|s| s.id == target).cloned();
                        self.delivery.resolve(target, base)
                    });
                    self.decide(sender, &draft, state.as_mut(), &mut on_their_way)
                }
            };
            if verdict.is_none() {
                to_accept.push(draft);
            }
            settled.push(verdict);
        }
        self.accept(ctx, senders, settled, to_accept)
    }

    /// The answer the room gives a change or reply itself, or `None`: the
    /// broker's. A resend of a change accepted before gets that change's ack,
    /// whatever the rules would say of it now.
    fn decide<'a>(
        &self,
        sender: &'a Sender,
        draft: &Draft,
        target: Option<&mut TargetState>,
        on_their_way: &mut Vec<(&'a str, &'a str)>,
    ) -> Option<Accepted> {
        let client_ref = sender.client_ref.as_deref();
        if let Some(r) = client_ref {
            if let Some(original) = self.deps.refs.answered(&sender.user_id, r) {
                return Some(Accepted::Duplicate(original));
            }
            if on_their_way.contains(&(sender.user_id.as_str(), r)) {
                return None;
            }
        }
        match changes::check(draft, sender.moderator, target) {
            Verdict::Accept => {
                if let Some(r) = client_ref {
                    on_their_way.push((&sender.user_id, r));
                }
                None
            }
            Verdict::Unchanged(state) => Some(Accepted::Unchanged(Arc::new(state.ack(&self.name)))),
            Verdict::Refuse(rejection) => Some(Accepted::Rejected(rejection)),
        }
    }

    /// Hands `to_accept` to the broker (unless there is nothing to hand).
    fn accept(
        &mut self,
        ctx: &mut Context<Self>,
        senders: Vec<Sender>,
        settled: Vec<Option<Accepted>>,
        to_accept: Vec<Draft>,
    ) {
        if to_accept.is_empty() {
            return self.end_batch(ctx, senders, settled, Ok(Vec::new()));
        }
        let broker = self.deps.broker.clone();
        let room = self.name.clone();
        let delivered = self.delivery.delivered();
        ctx.spawn(
            async move { broker.accept(&room, delivered, to_accept).await }
                .into_actor(self)
                .map(move |result, act, ctx| act.end_batch(ctx, senders, settled, result)),
        );
    }

    /// The batch is over: its answers go out and the next batch may start.
    /// `settled` holds the answers the rules gave, `None` where the broker's
    /// come in, in order; empty when the broker answers every send.
    fn end_batch(
        &mut self,
        ctx: &mut Context<Self>,
        senders: Vec<Sender>,
        settled: Vec<Option<Accepted>>,
        accepted: Result<Vec<Accepted>, crate::broker::BrokerError>,
    ) {
        self.batching.finish();
        let results = match accepted {
            Ok(accepted) if settled.is_empty() => accepted,
            Ok(accepted) => {
                let mut accepted = accepted.into_iter();
                settled
                    .into_iter()
                    .map(|s| {
                        s.or_else(|| accepted.next()).unwrap_or_else(|| {
                            Accepted::Rejected(Rejection::new(
                                ErrorCode::Unavailable,
                                "the send was not accepted; send it again",
                            ))
                        })
                    })
                    .collect()
            }
            Err(error) => {
                tracing::warn!(room = %self.name, %error, "sends refused: the broker failed");
                // A broker that failed late may have accepted some of them anyway.
                ctx.run_later(RESYNC_AFTER_FAILURE, |act, ctx| act.resync(ctx));
                let refused = || {
                    Accepted::Rejected(Rejection::new(
                        ErrorCode::Unavailable,
                        "the message could not be stored; it was not accepted, send it again",
                    ))
                };
                if settled.is_empty() {
                    senders.iter().map(|_| refused()).collect()
                } else {
                    settled
                        .into_iter()
                        .map(|s| s.unwrap_or_else(refused))
                        .collect()
                }
            }
        };
        self.finish_batch(ctx, senders, results);
        self.start_batch(ctx);
        self.maybe_idle(ctx);
    }

    /// Acks (or refuses) each send of a finished batch, then delivers what it
    /// added, so a sender always sees its ack before its message.
    fn finish_batch(
        &mut self,
        ctx: &mut Context<Self>,
        senders: Vec<Sender>,
        results: Vec<Accepted>,
    ) {
        let mut outbox = Outbox::default();
        // REST actions are answered once their events went out here, so the
        // caller's connections (and the subject's) have them first.
        let mut replies = Vec::new();
        for (mut sender, accepted) in senders.into_iter().zip(results) {
            if let Some(reply) = sender.reply.take() {
                let kind = self.access.kind;
                let acted = |event| Ok(Some(crate::message::Acted { event, kind }));
                let answer = match accepted {
                    Accepted::New(msg) => {
                        self.delivery.offer(msg.clone());
                        acted(msg)
                    }
                    Accepted::Duplicate(original) => acted(original),
                    Accepted::Unchanged(_) => Ok(None),
                    Accepted::Rejected(rejection) => Err(rejection),
                };
                replies.push((reply, answer));
                continue;
            }
            match accepted {
                Accepted::New(msg) => {
                    crate::metrics::get().messages_accepted.increment(1);
                    self.ack(&mut outbox, &sender, &msg, false);
                    self.delivery.offer(msg);
                }
                Accepted::Duplicate(original) => {
                    self.unrecord_spam(&sender);
                    self.ack(&mut outbox, &sender, &original, false)
                }
                Accepted::Unchanged(target) => {
                    self.unrecord_spam(&sender);
                    self.ack(&mut outbox, &sender, &target, true)
                }
                Accepted::Rejected(rejection) => {
                    self.unrecord_spam(&sender);
                    self.refuse_unless_known(ctx, sender, rejection);
                }
            }
        }
        self.flush_delivery(ctx, &mut outbox);
        self.send_outbox(outbox);
        for (reply, answer) in replies {
            let _ = reply.send(answer);
        }
    }

    /// Refuses a send or change, unless its ref names one accepted before
    /// (through another instance, in cluster mode): a resend is answered with
    /// the original's ack before any other check (PROTOCOL), however late the
    /// room finds it is one.
    fn refuse_unless_known(
        &mut self,
        ctx: &mut Context<Self>,
        sender: Sender,
        rejection: Rejection,
    ) {
        let Some(to) = sender.to.clone() else {
            return;
        };
        let Some(client_ref) = sender.client_ref.clone() else {
            return self.refuse(&to, rejection);
        };
        let rejection = rejection.with_ref(Some(&client_ref));
        if let Some(original) = self.deps.refs.answered(&sender.user_id, &client_ref) {
            return self.ack_alone(&sender, &original);
        }
        // Only another instance can know more than this one's window; the
        // answer then comes after a Redis round trip.
        if rejection.code == ErrorCode::Unavailable || !self.deps.broker.shared() {
            return self.refuse(&to, rejection);
        }
        let refs = self.deps.refs.clone();
        let user_id = sender.user_id.clone();
        ctx.spawn(
            async move { refs.known(&user_id, &client_ref).await }
                .into_actor(self)
                .map(move |known, act, _| match known {
                    Some(original) => act.ack_alone(&sender, &original),
                    None => act.refuse(&to, rejection),
                }),
        );
    }

    /// An ack outside a batch's outbox (for a resend found late).
    fn ack_alone(&mut self, sender: &Sender, original: &ChatMessage) {
        let mut outbox = Outbox::default();
        self.ack(&mut outbox, sender, original, false);
        self.send_outbox(outbox);
    }

    fn unrecord_spam(&mut self, sender: &Sender) {
        if let Some(print) = sender.spam_print {
            self.spam.unrecord(&sender.user_id, print);
        }
    }

    fn ack(&self, outbox: &mut Outbox, sender: &Sender, msg: &ChatMessage, unchanged: bool) {
        crate::metrics::get()
            .accept_seconds
            .record(crate::metrics::seconds(sender.arrived.elapsed()));
        if sender.format != FrameFormat::V1 {
            return;
        }
        let client_ref = sender.client_ref.as_deref();
        let ack = ByteString::from(if unchanged {
            msg.unchanged_ack_json(client_ref)
        } else {
            msg.ack_json(client_ref)
        });
        if self.membership.contains(&sender.session) {
            outbox.entry(sender.session).or_default().push(ack);
        } else if let Some(to) = &sender.to {
            // It left the room meanwhile; the answer to its send still belongs to it.
            let _ = to.try_send(ToSession::Frame(ack));
        }
    }

    pub(super) fn send_outbox(&mut self, outbox: Outbox) {
        let mut gone = Vec::new();
        for (id, frames) in outbox {
            if let Some(m) = self.membership.get(&id) {
                if !self.push(&m.to, frames) {
                    gone.push(id);
                }
            }
        }
        for id in gone {
            self.remove_member(id, false);
        }
        if !self.evicting.is_empty() {
            self.evict();
        }
    }

    // ------------------------------------------------------------ delivery

    /// Delivers what waits while it continues the delivered seqs without a
    /// gap (and isn't a send whose ack is still to come).
    pub(super) fn flush_delivery(&mut self, ctx: &mut Context<Self>, outbox: &mut Outbox) {
        let mut delivered_any = false;
        loop {
            let batching = &self.batching;
            match self.delivery.pop_next(|m| batching.holds(&m.id)) {
                Next::Deliver(message) => {
                    self.fan_out(message, outbox);
                    delivered_any = true;
                }
                Next::Gap => {
                    self.schedule_gap_fill(ctx);
                    break;
                }
                Next::Held | Next::Empty => break,
            }
        }
        if delivered_any {
            self.report_occupancy();
        }
    }

    /// Hands a delivered message to every member (or its replay buffer).
    fn fan_out(&mut self, delivered: Arc<Delivered>, outbox: &mut Outbox) {
        self.deps.refs.remember(&delivered.msg);
        let effect = if delivered.msg.kind.is_membership() {
            self.access.apply(&delivered.msg)
        } else {
            None
        };
        let replay_cap = self.deps.config.limits.session_queue;
        let mut overflowed = Vec::new();
        for (id, m) in self.membership.iter() {
            if self.evicting.iter().any(|(session, _)| session == id) {
                continue; // out of the room: nothing after its removal reaches it
            }
            let Some(frame) = delivered.frame(m.format) else {
                continue; // a change, which seed clients don't see
            };
            match self.replays.hold(id, &delivered, replay_cap) {
                Hold::Send => outbox.entry(*id).or_default().push(frame),
                Hold::Buffered => {}
                // Frames waiting behind a replay count against the session's queue too.
                Hold::Overflow => {
                    m.to.do_send(ToSession::SlowConsumer);
                    overflowed.push(*id);
                }
            }
        }
        crate::metrics::get()
            .deliveries
            .increment((self.membership.len() - overflowed.len()) as u64);
        for id in overflowed {
            outbox.remove(&id);
            self.remove_member(id, false);
        }
        if let Some(effect) = effect {
            self.note_evictions(effect);
        }
    }

    /// The connections a membership event takes out of the room: they got
    /// the event, and leave once this delivery is sent (`send_outbox`).
    fn note_evictions(&mut self, effect: Effect) {
        let leaving: Vec<(Uuid, Reason)> = self
            .membership
            .iter()
            .filter_map(|(id, m)| match &effect {
                Effect::Evict(user, reason) => (m.user.id == *user).then_some((*id, *reason)),
                Effect::EvictOutsiders => self
                    .access
                    .may_read(&self.name, &m.user.id)
                    .is_err()
                    .then_some((*id, Reason::Removed)),
            })
            .collect();
        self.evicting.extend(leaving);
    }

    /// Takes out the connections a delivered membership event removed: each
    /// gets `left` with the reason, and forgets the room.
    fn evict(&mut self) {
        for (session, reason) in std::mem::take(&mut self.evicting) {
            if let Some(m) = self.membership.get(&session) {
                let to = m.to.clone();
                if m.format == FrameFormat::V1 {
                    let left = protocol::left_because_json(&self.name, reason.as_str());
                    let _ = to.try_send(ToSession::Frame(left.into()));
                }
                to.do_send(ToSession::Detached(self.name.clone()));
            }
            self.remove_member(session, false);
        }
    }

    fn schedule_gap_fill(&mut self, ctx: &mut Context<Self>) {
        if !self.delivery.arm_gap_timer() {
            return;
        }
        ctx.run_later(GAP_WAIT, |act, ctx| {
            if let Some(target) = act.delivery.gap_timer_fired() {
                act.fill_to(ctx, target);
            }
        });
    }

    /// Fetches the messages after the delivered ones up to `target` that never arrived.
    fn fill_to(&mut self, ctx: &mut Context<Self>, target: u64) {
        let Some(after) = self.delivery.begin_fill(target) else {
            return;
        };
        let (broker, store, room) = (
            self.deps.broker.clone(),
            self.deps.store.clone(),
            self.name.clone(),
        );
        ctx.spawn(
            async move { replay::fetch_range(&broker, &store, &room, after, target).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.delivery.end_fill();
                    match result {
                        Ok(messages) => {
                            for m in messages {
                                act.delivery.offer(Arc::new(m));
                            }
                            let mut outbox = Outbox::default();
                            act.flush_delivery(ctx, &mut outbox);
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
    pub(super) fn resync(&mut self, ctx: &mut Context<Self>) {
        if self.phase != Phase::Ready {
            return;
        }
        let (broker, room) = (self.deps.broker.clone(), self.name.clone());
        let floor = self.delivery.delivered();
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

    // ------------------------------------------------------------- replay

    pub(super) fn start_fetch_replay(
        &mut self,
        ctx: &mut Context<Self>,
        session: Uuid,
        after: u64,
        upto: u64,
        joined: Option<(u64, Option<ReadState>)>,
    ) {
        if !self.membership.contains(&session) {
            return; // its answer would find no one
        }
        let joined_last = joined.map(|(last, _)| last);
        let token = self.replays.begin(session, joined_last);
        let (broker, store, room) = (
            self.deps.broker.clone(),
            self.deps.store.clone(),
            self.name.clone(),
        );
        ctx.spawn(
            async move { replay::fetch_range(&broker, &store, &room, after, upto).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    // `None`: superseded by a newer join of the same session, or it left.
                    let Some(replay) = act.replays.finish(&session, token) else {
                        return;
                    };
                    let Some(m) = act.membership.get(&session) else {
                        return;
                    };
                    let (to, format) = (m.to.clone(), m.format);
                    match result {
                        Ok(messages) => {
                            let complete = replay::complete(&messages, after, upto);
                            let joined = joined.map(|(last, reading)| {
                                let users = act.membership.visible_users();
                                ByteString::from(protocol::joined_json(
                                    &act.name,
                                    last,
                                    Some(complete),
                                    &users,
                                    reading,
                                ))
                            });
                            let frames = replay::fetched_frames(
                                format,
                                joined,
                                complete,
                                messages,
                                &replay.buffer,
                                upto,
                            );
                            if act.push_replay(&to, frames) {
                                act.resume_waiting_joins(session, replay.waiting_joins, ctx);
                            } else {
                                act.remove_member(session, false);
                            }
                        }
                        Err(error) => {
                            // Every join waiting behind this one gets the answer too.
                            let joins = 1 + replay.waiting_joins.len();
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
    fn resume_waiting_joins(
        &mut self,
        session: Uuid,
        mut waiting: VecDeque<Join>,
        ctx: &mut Context<Self>,
    ) {
        while let Some(join) = waiting.pop_front() {
            if !self.membership.contains(&session) {
                return;
            }
            <Self as Handler<Join>>::handle(self, join, ctx);
            if self.replays.is_replaying(&session) {
                self.replays.wait_again(&session, waiting);
                return;
            }
        }
    }

    // -------------------------------------------------------------- access

    /// A room opened while the store was down reads its members again until
    /// it can; then whoever may no longer be here leaves.
    pub(super) fn retry_access(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(super::ACCESS_RETRY, |act, ctx| {
            let (store, broker, room) = (
                act.deps.store.clone(),
                act.deps.broker.clone(),
                act.name.clone(),
            );
            let (head, window) = (act.delivery.delivered(), act.deps.config.rooms.recovery_max);
            ctx.spawn(
                async move { load_access(&store, &broker, &room, head, window).await }
                    .into_actor(act)
                    .map(move |loaded, act, ctx| match loaded {
                        Ok(mut access) if !access.partial => {
                            // What was delivered meanwhile counts too.
                            for entry in act.delivery.delivered_after(head) {
                                access.apply(&entry);
                            }
                            act.access = access;
                            act.note_evictions(Effect::EvictOutsiders);
                            act.evict();
                        }
                        _ => act.retry_access(ctx),
                    }),
            );
        });
    }

    // ------------------------------------------------------------ presence

    /// Replaces the view of other instances' users and tells members what changed.
    pub(super) fn reconcile_remote(&mut self, entries: Vec<RemotePresence>) {
        for (user, joined) in self.membership.reconcile_remote(entries) {
            self.broadcast_presence(&user, joined);
        }
    }

    pub(super) fn refresh_presence(&mut self, ctx: &mut Context<Self>) {
        if self.phase != Phase::Ready || !self.membership.begin_refresh() {
            return;
        }
        let local = self.membership.local_users();
        let (broker, room) = (self.deps.broker.clone(), self.name.clone());
        ctx.spawn(
            async move { broker.refresh_presence(&room, local).await }
                .into_actor(self)
                .map(|result, act, _| {
                    act.membership.end_refresh();
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
    pub(super) fn relay_typing(&mut self, user: &UserInfo) -> bool {
        if !self.membership.typing_relayed(&user.id, Instant::now()) {
            return false;
        }
        let frame = protocol::typing_json(&self.name, user);
        self.broadcast_except(frame.into(), Some(&user.id));
        true
    }
}

/// How far below the store's head the Redis stream is read: in cluster mode
/// instances persist parts of the stream, so the stored seqs can have holes
/// just below the head for a moment.
const STORED_HEAD_MARGIN: u64 = 64;

/// The stored state of messages a batch's changes target. In cluster mode the
/// store trails the relay (the persist stream is written by every instance),
/// so the entries between what the store holds and what the room has in
/// memory (`memory_from` on) are read from the room's Redis stream, which
/// holds its newest `window` entries, and applied on top: a message the store
/// doesn't have yet, or a change it hasn't applied yet, still counts.
#[allow(clippy::too_many_arguments)]
async fn look_up_targets(
    store: &crate::store::SharedStore,
    broker: &crate::broker::SharedBroker,
    room: &str,
    ids: Vec<String>,
    users: Vec<String>,
    head: u64,
    memory_from: u64,
    window: u64,
) -> Result<Vec<TargetState>, crate::store::StoreError> {
    let mut found = store.targets(room, ids.clone(), users).await?;
    if !broker.shared() {
        return Ok(found); // the store holds everything the room delivered
    }
    let missing = ids.iter().any(|id| !found.iter().any(|t| &t.id == id));
    let from = if missing {
        head.saturating_sub(window)
    } else {
        store
            .last_seq(room)
            .await?
            .saturating_sub(STORED_HEAD_MARGIN)
    };
    let upto = memory_from.saturating_sub(1);
    if from >= upto {
        return Ok(found);
    }
    let recent = broker.recent(room, from, upto).await.unwrap_or_default();
    Ok(ids
        .iter()
        .filter_map(|id| {
            let base = found
                .iter()
                .position(|t| &t.id == id)
                .map(|at| found.swap_remove(at));
            changes::resolve(recent.iter(), id, base)
        })
        .collect())
}

/// The room's kind and the standing of its users, for its actor's start
/// (and a retry while it is partial). In cluster mode the store trails the
/// relay: membership events the room's Redis stream holds up to `head` are
/// applied on top (in seq order, so the newest wins), unless the room is a
/// plain public one the store knows no user of. With the store down (cluster
/// mode), the room opens on what Redis knows: its kind, and the recent events
/// ([`crate::access::Access::partial`]).
pub(super) async fn load_access(
    store: &crate::store::SharedStore,
    broker: &crate::broker::SharedBroker,
    room: &str,
    head: u64,
    window: u64,
) -> Result<crate::access::Access, crate::broker::BrokerError> {
    use crate::access::{Access, RoomKind};
    let mut access = match crate::store::rooms::room_access(store.as_ref(), room).await {
        Ok(access) => access,
        Err(error) if broker.shared() => {
            tracing::warn!(room, %error, "the store is down: the room opens on what Redis knows");
            let kind = broker.room_kind(room).await?;
            Access {
                kind: kind
                    .as_deref()
                    .and_then(RoomKind::parse)
                    .unwrap_or_default(),
                partial: true,
                ..Access::default()
            }
        }
        Err(error) => return Err(crate::broker::BrokerError::failed(error)),
    };
    let guarded = access.partial || access.kind.members_only() || !access.users.is_empty();
    if broker.shared() && guarded {
        let recent = broker
            .recent(room, head.saturating_sub(window), head)
            .await?;
        for entry in recent.iter().filter(|m| m.kind.is_membership()) {
            access.apply(entry);
        }
    }
    Ok(access)
}
