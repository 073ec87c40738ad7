//! The SessionActor: one per WebSocket, for `/ws` (protocol v1) and the
//! seed-compatible `/ws/chat/{room}`. It parses and validates client frames,
//! keeps the connection's room memberships, writes frames rooms hand it, and
//! runs the heartbeat. All actix-web-actors plumbing lives in this module.

use crate::auth::Identity;
use crate::broker::Draft;
use crate::chat::Kind;
use crate::limits::ConnectionSlot;
use crate::message::InputState;
use crate::message::{self, Backlog, FrameFormat, Outlet, ToSession};
use crate::protocol::{self, ClientFrame, ErrorCode, Rejection, UserInfo};
use crate::registry::JoinRoom;
use crate::room::RoomActor;
use crate::AppDeps;
use actix::prelude::*;
use actix_web_actors::ws;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// `history` requests one connection may have in flight; more wait (and the
/// connection's input with them), so pipelined requests can't pile up pages
/// in memory.
const HISTORY_IN_FLIGHT: usize = 4;

struct HistoryRequest {
    room: String,
    before: Option<u64>,
    limit: Option<u32>,
}

pub struct Session {
    id: Uuid,
    user: Arc<UserInfo>,
    identity: Identity,
    deps: AppDeps,
    format: FrameFormat,
    /// Seed-compatible sessions join this room (with this replay) at once.
    seed: Option<(String, u32)>,
    rooms: crate::FastMap<String, Addr<RoomActor>>,
    last_heard: Instant,
    /// A fragmented message being reassembled.
    fragments: Option<Fragments>,
    /// Counts against `limits.connections_per_ip` while the session lives.
    _slot: Option<Arc<ConnectionSlot>>,
    backlog: Arc<Backlog>,
    /// `history` requests whose page is being read.
    history_in_flight: usize,
    /// `history` requests waiting for one of those to finish. Reading from
    /// the socket stops while any wait, so this holds at most what one read
    /// brought in.
    history_waiting: std::collections::VecDeque<HistoryRequest>,
    /// Every log line about this connection carries its session and user id.
    span: tracing::Span,
    /// The user id as the rate limiter's key (shared, so no copy per send).
    limiter_key: Arc<str>,
    /// Frames handled so far (the socket reader reads on only once every
    /// whole frame it passed on was handled), and whether it met an
    /// oversized one (`websocket.rs`).
    input: Arc<InputState>,
}

struct Fragments {
    text: bool,
    data: Vec<u8>,
}

impl Session {
    pub fn v1(identity: Identity, deps: AppDeps) -> Self {
        Self::new(identity, deps, FrameFormat::V1, None)
    }

    pub fn seed(identity: Identity, deps: AppDeps, room: String, history: u32) -> Self {
        Self::new(identity, deps, FrameFormat::Seed, Some((room, history)))
    }

    fn new(
        identity: Identity,
        deps: AppDeps,
        format: FrameFormat,
        seed: Option<(String, u32)>,
    ) -> Self {
        let id = Uuid::new_v4();
        let backlog = Arc::new(Backlog::new(
            deps.config.limits.session_queue,
            deps.config.limits.session_queue_bytes,
        ));
        let span = tracing::info_span!("session", session = %id, user = %identity.user.id);
        Self {
            id,
            span,
            limiter_key: Arc::from(identity.user.id.as_str()),
            user: identity.user.clone(),
            identity,
            deps,
            format,
            seed,
            rooms: crate::FastMap::default(),
            last_heard: Instant::now(),
            fragments: None,
            _slot: None,
            backlog,
            history_in_flight: 0,
            history_waiting: Default::default(),
            input: Arc::default(),
        }
    }

    pub fn input_state(&self) -> Arc<InputState> {
        self.input.clone()
    }

    /// The session holds its place under the per-IP connection cap.
    pub fn holding(mut self, slot: Arc<ConnectionSlot>) -> Self {
        self._slot = Some(slot);
        self
    }

    fn send_rejection(&self, ctx: &mut ws::WebsocketContext<Self>, rejection: &Rejection) {
        let frame = match self.format {
            FrameFormat::V1 => rejection.to_v1_frame(),
            FrameFormat::Seed => rejection.to_seed_frame(),
        };
        ctx.text(frame);
    }

    fn close(&self, ctx: &mut ws::WebsocketContext<Self>, code: ws::CloseCode, reason: &str) {
        ctx.close(Some(ws::CloseReason {
            code,
            description: Some(reason.to_string()),
        }));
        ctx.stop();
    }

    fn heartbeat(&self, ctx: &mut ws::WebsocketContext<Self>) {
        let hb = &self.deps.config.heartbeat;
        let interval = Duration::from_secs(hb.interval_secs);
        let timeout = Duration::from_secs(hb.timeout_secs);
        ctx.run_interval(interval, move |act, ctx| {
            if act.last_heard.elapsed() > timeout {
                crate::metrics::get().heartbeat_timeouts.increment(1);
                act.close(ctx, ws::CloseCode::Normal, "heartbeat timeout");
            } else {
                ctx.ping(b"");
            }
        });
    }

    /// Resolves the room's actor (ordered: no later frame is handled before) and joins.
    fn join(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        room: String,
        history: u32,
        since: Option<u64>,
        reading: Option<protocol::ReadState>,
    ) {
        let room_name = room.clone();
        let make_join =
            move |act: &Self, ctx: &mut ws::WebsocketContext<Self>, leased| message::Join {
                room: room_name.clone(),
                session: act.id,
                user: act.user.clone(),
                moderator: act.identity.moderator,
                to: Outlet::new(ctx.address().recipient(), act.backlog.clone()),
                format: act.format,
                history,
                since,
                leased,
                reading,
            };
        if let Some(addr) = self.rooms.get(&room).filter(|a| a.connected()) {
            addr.do_send(make_join(self, ctx, false));
            return;
        }
        let cap = self.deps.config.limits.rooms_per_connection;
        if self.rooms.len() >= cap {
            let e = Rejection::new(
                ErrorCode::TooManyRooms,
                format!("a connection may be in at most {cap} rooms; leave one first"),
            )
            .in_room(Some(&room));
            return self.send_rejection(ctx, &e);
        }
        // The registry forwards the join itself, so a lease can't be lost if this
        // session dies while waiting; the room sweeps such members later.
        let ask = self.deps.registry.send(JoinRoom {
            join: make_join(self, ctx, true),
            home: actix::Arbiter::current(),
        });
        ctx.wait(
            ask.into_actor(self)
                .map(move |answer, act, ctx| match answer {
                    Ok(Ok(addr)) => {
                        act.rooms.insert(room, addr);
                    }
                    refused => {
                        let r = match refused {
                            Ok(Err(rejection)) => rejection,
                            _ => Rejection::new(ErrorCode::Unavailable, "the server is not ready"),
                        }
                        .in_room(Some(&room));
                        act.send_rejection(ctx, &r);
                        if act.format == FrameFormat::Seed {
                            act.close(ctx, ws::CloseCode::Error, "unavailable");
                        }
                    }
                }),
        );
    }

    /// A message, or a change to one, for `room`: checked here as far as the
    /// frame alone allows, then handed to the room, which checks it against
    /// the message it targets.
    fn post(&mut self, ctx: &mut ws::WebsocketContext<Self>, room: String, draft: Draft) {
        let client_ref = draft.client_ref.clone();
        // A known ref is answered with the original ack before any other check.
        if let Some(r) = &client_ref {
            if let Some(original) = self.deps.refs.answered(&self.user.id, r) {
                ctx.text(original.ack_json(Some(r)));
                return;
            }
        }
        let context = |e: Rejection| e.with_ref(client_ref.as_deref()).in_room(Some(&room));
        let content = &draft.content;
        let checked = match draft.kind {
            Kind::Message | Kind::Edit => {
                protocol::check_content(content, self.deps.config.limits.max_message_chars)
                    .and_then(|()| self.deps.moderation.check(content))
            }
            // A `:shortcode:` is words too.
            Kind::React | Kind::Unreact => {
                protocol::check_emoji(content).and_then(|()| self.deps.moderation.check(content))
            }
            _ => Ok(()),
        };
        if let Err(e) = checked {
            return self.refuse_send(ctx, context(e), client_ref);
        }
        let Some(addr) = self.rooms.get(&room).cloned() else {
            let e = Rejection::new(ErrorCode::NotJoined, "join the room first");
            return self.refuse_send(ctx, context(e), client_ref);
        };
        if !addr.connected() {
            // The room's actor is gone without telling us (its worker thread
            // stopped): the membership went with it.
            self.rooms.remove(&room);
            let e = Rejection::new(ErrorCode::NotJoined, "the room restarted; join it again");
            return self.refuse_send(ctx, context(e), client_ref);
        }
        if let Err(e) = self.deps.send_limiter.check(&self.limiter_key) {
            return self.refuse_send(ctx, context(e), client_ref);
        }
        addr.do_send(message::Post {
            session: self.id,
            to: ctx.address().recipient(),
            draft,
        });
    }

    /// Refuses a send, unless its ref names a send already accepted (here or,
    /// in cluster mode, through another instance): that one is answered with its original ack
    /// (PROTOCOL: a known ref is answered before any other check). Frames
    /// after this one wait, so answers keep their order.
    fn refuse_send(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        rejection: Rejection,
        client_ref: Option<String>,
    ) {
        let Some(client_ref) = client_ref else {
            crate::metrics::get().rejected(rejection.code.as_str());
            return self.send_rejection(ctx, &rejection);
        };
        let (refs, user_id) = (self.deps.refs.clone(), self.user.id.clone());
        ctx.wait(
            async move {
                refs.known(&user_id, &client_ref)
                    .await
                    .map(|m| (m, client_ref))
            }
            .into_actor(self)
            .map(move |known, act, ctx| match known {
                Some((original, client_ref)) => ctx.text(original.ack_json(Some(&client_ref))),
                None => {
                    crate::metrics::get().rejected(rejection.code.as_str());
                    act.send_rejection(ctx, &rejection)
                }
            }),
        );
    }

    fn history(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        room: String,
        before: Option<u64>,
        limit: Option<u32>,
    ) {
        if let Err(e) = self.identity.rooms.check(&room) {
            return self.send_rejection(ctx, &e);
        }
        if self.history_in_flight >= HISTORY_IN_FLIGHT {
            self.input.defer_one();
            self.history_waiting.push_back(HistoryRequest {
                room,
                before,
                limit,
            });
            return;
        }
        self.history_in_flight += 1;
        let store = self.deps.store.clone();
        let page_max = self.deps.config.limits.history_page_max;
        let user = self.user.id.clone();
        let fut = async move {
            if let Err(e) = crate::access::check_reader(store.as_ref(), &room, Some(&user)).await {
                return Err((room, e));
            }
            crate::history::page(&store, &room, before, limit, page_max)
                .await
                .map(|p| (room.clone(), p))
                .map_err(|e| (room, e))
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.history_in_flight -= 1;
            if let Some(next) = act.history_waiting.pop_front() {
                act.input.resume_one();
                act.history(ctx, next.room, next.before, next.limit);
            }
            match result {
                Ok((room, (messages, next))) => {
                    let page = protocol::history_json(&room, &messages, next, true);
                    // A page counts against the same budget as what rooms queue.
                    if !act.backlog.reserve(1, page.len()) {
                        return act.slow_consumer(ctx);
                    }
                    act.backlog.release(1, page.len());
                    ctx.text(page)
                }
                Err((room, e)) => act.send_rejection(ctx, &e.in_room(Some(&room))),
            }
        }));
    }

    fn slow_consumer(&self, ctx: &mut ws::WebsocketContext<Self>) {
        crate::metrics::get().slow_consumer_disconnects.increment(1);
        tracing::info!(session = %self.id, user = %self.user.id, "slow consumer disconnected");
        self.close(
            ctx,
            ws::CloseCode::Again,
            "slow consumer: reconnect and join with since",
        )
    }

    fn handle_text(&mut self, ctx: &mut ws::WebsocketContext<Self>, text: &str) {
        if self.format == FrameFormat::Seed {
            if let Some((room, _)) = self.seed.clone() {
                let draft = Draft::new(self.user.clone(), text.to_string(), None);
                self.post(ctx, room, draft);
            }
            return;
        }
        let frame = match protocol::parse_client_frame(text) {
            Ok(frame) => frame,
            Err(e) => return self.send_rejection(ctx, &e),
        };
        match frame {
            ClientFrame::Ping => ctx.text(protocol::PONG_JSON),
            ClientFrame::Join {
                room,
                history,
                since,
            } => {
                if let Err(e) = self.identity.rooms.check(&room) {
                    return self.send_rejection(ctx, &e);
                }
                if let Err(e) = self.deps.join_limiter.check(&self.limiter_key) {
                    return self.send_rejection(ctx, &e.in_room(Some(&room)));
                }
                let history = history.unwrap_or(self.deps.config.rooms.join_history);
                // `joined` tells the joiner's read marker and unread counts;
                // later frames wait for them, so answers keep their order.
                let (store, user) = (self.deps.store.clone(), self.user.clone());
                let pending = self.deps.markers.pending(&user.id, &room);
                let at = room.clone();
                let read = async move {
                    let store = store.as_ref();
                    crate::store::rooms::reading(store, &at, &user.id, &user.name, pending).await
                };
                ctx.wait(read.into_actor(self).map(move |reading, act, ctx| {
                    if let Err(error) = &reading {
                        tracing::debug!(%error, "read marker unavailable for a join");
                    }
                    act.join(ctx, room, history, since, reading.ok())
                }));
            }
            ClientFrame::Read { room, seq } => match self.rooms.get(&room) {
                Some(addr) => addr.do_send(message::MarkRead {
                    session: self.id,
                    seq,
                }),
                None => self.not_joined(ctx, &room),
            },
            ClientFrame::Leave { room } => {
                if !self.rooms.contains_key(&room) {
                    return self.not_joined(ctx, &room);
                }
                if let Err(e) = self.deps.join_limiter.check(&self.limiter_key) {
                    return self.send_rejection(ctx, &e.in_room(Some(&room)));
                }
                if let Some(addr) = self.rooms.remove(&room) {
                    addr.do_send(message::Leave {
                        session: self.id,
                        notify: true,
                    });
                }
            }
            ClientFrame::Send {
                room,
                content,
                client_ref,
                reply_to,
            } => {
                let draft =
                    Draft::new(self.user.clone(), content, client_ref).replying_to(reply_to);
                self.post(ctx, room, draft)
            }
            ClientFrame::Change {
                room,
                change,
                client_ref,
            } => {
                let draft = Draft::of_change(self.user.clone(), change, client_ref);
                self.post(ctx, room, draft)
            }
            ClientFrame::Typing { room } => match self.rooms.get(&room) {
                Some(addr) => addr.do_send(message::Typing { session: self.id }),
                None => self.not_joined(ctx, &room),
            },
            ClientFrame::History {
                room,
                before,
                limit,
            } => self.history(ctx, room, before, limit),
        }
    }

    fn not_joined(&self, ctx: &mut ws::WebsocketContext<Self>, room: &str) {
        let e = Rejection::new(
            ErrorCode::NotJoined,
            "this connection has not joined the room",
        )
        .in_room(Some(room));
        self.send_rejection(ctx, &e);
    }

    fn handle_fragment(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        item: actix_http::ws::Item,
    ) {
        use actix_http::ws::Item;
        let limit = self.deps.config.limits.max_frame_bytes;
        let (start, last, chunk) = match item {
            Item::FirstText(b) => (Some(true), false, b),
            Item::FirstBinary(b) => (Some(false), false, b),
            Item::Continue(b) => (None, false, b),
            Item::Last(b) => (None, true, b),
        };
        if let Some(text) = start {
            self.fragments = Some(Fragments {
                text,
                data: Vec::new(),
            });
        }
        let Some(fragments) = self.fragments.as_mut() else {
            return self.close(ctx, ws::CloseCode::Protocol, "continuation without a start");
        };
        if fragments.data.len() + chunk.len() > limit {
            return self.close(ctx, ws::CloseCode::Size, "message too big");
        }
        fragments.data.extend_from_slice(&chunk);
        if !last {
            return;
        }
        let Some(Fragments { text, data }) = self.fragments.take() else {
            return;
        };
        if !text {
            return self.binary(ctx);
        }
        match String::from_utf8(data) {
            Ok(text) => self.handle_text(ctx, &text),
            Err(_) => self.close(ctx, ws::CloseCode::Invalid, "invalid UTF-8"),
        }
    }

    fn close_on_shutdown(&self, ctx: &mut ws::WebsocketContext<Self>) {
        let mut shutdown = self.deps.shutdown.clone();
        let signalled = async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        ctx.spawn(signalled.into_actor(self).map(|signalled, act, ctx| {
            if signalled {
                act.close(ctx, ws::CloseCode::Away, "server shutting down");
            }
        }));
    }

    fn binary(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let e = Rejection::new(
            ErrorCode::InvalidFrame,
            "binary frames are not part of the protocol; send JSON text",
        );
        self.send_rejection(ctx, &e);
    }
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _entered = span.enter();
        ctx.set_mailbox_capacity(self.deps.config.limits.session_queue);
        self.deps.sessions.fetch_add(1, Ordering::SeqCst);
        crate::metrics::get().connections.increment(1.0);
        self.heartbeat(ctx);
        self.close_on_shutdown(ctx);
        if self.format == FrameFormat::V1 {
            let to = ctx.address().recipient();
            self.deps.users.register(&self.limiter_key, self.id, to);
        }
        if let Some(exp) = self.identity.expires_at {
            let left = Duration::from_secs(exp.saturating_sub(crate::auth::unix_now()));
            ctx.run_later(left, |act, ctx| {
                act.close(ctx, ws::CloseCode::Policy, "token expired")
            });
        }
        match self.seed.clone() {
            None => ctx.text(protocol::welcome_json(&self.id.to_string(), &self.user)),
            Some((room, history)) => self.join(ctx, room, history, None, None),
        }
        tracing::debug!(session = %self.id, user = %self.user.id, "session started");
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        let span = self.span.clone();
        let _entered = span.enter();
        for addr in self.rooms.values() {
            addr.do_send(message::Leave {
                session: self.id,
                notify: false,
            });
        }
        if self.format == FrameFormat::V1 {
            self.deps.users.unregister(&self.user.id, self.id);
        }
        // After the Leaves are queued: a shutdown that sees no sessions left
        // can settle the rooms and know every goodbye is announced.
        self.deps.sessions.fetch_sub(1, Ordering::SeqCst);
        crate::metrics::get().connections.decrement(1.0);
        tracing::debug!(session = %self.id, user = %self.user.id, "session ended");
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _entered = span.enter();
        self.input.handled.fetch_add(1, Ordering::Release);
        self.last_heard = Instant::now();
        let msg = match item {
            Ok(msg) => msg,
            Err(_) if self.input.oversized.load(Ordering::Acquire) => {
                return self.close(ctx, ws::CloseCode::Size, "message too big")
            }
            Err(ws::ProtocolError::Overflow) => {
                return self.close(ctx, ws::CloseCode::Size, "message too big")
            }
            Err(ws::ProtocolError::Io(e))
                if e.to_string().to_ascii_lowercase().contains("utf-8") =>
            {
                return self.close(ctx, ws::CloseCode::Invalid, "invalid UTF-8")
            }
            Err(e) => {
                tracing::debug!(session = %self.id, error = %e, "websocket protocol error");
                return self.close(ctx, ws::CloseCode::Protocol, "protocol error");
            }
        };
        match msg {
            ws::Message::Text(text) => self.handle_text(ctx, &text),
            ws::Message::Binary(_) => self.binary(ctx),
            ws::Message::Continuation(item) => self.handle_fragment(ctx, item),
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Pong(_) | ws::Message::Nop => {}
            ws::Message::Close(reason) => {
                ctx.close(reason);
                ctx.stop();
            }
        }
    }
}

impl Handler<ToSession> for Session {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _entered = span.enter();
        match msg {
            ToSession::Frame(frame) => ctx.text(frame),
            ToSession::Frames {
                frames,
                queued,
                bytes,
            } => {
                frames.into_iter().for_each(|frame| ctx.text(frame));
                self.backlog.release(queued, bytes);
            }
            ToSession::Detached(room) => {
                self.rooms.remove(&room);
                if self.format == FrameFormat::Seed {
                    self.close(ctx, ws::CloseCode::Error, "the room is unavailable");
                }
            }
            ToSession::Reject(rejection) => self.send_rejection(ctx, &rejection),
            ToSession::SlowConsumer => self.slow_consumer(ctx),
        }
    }
}
