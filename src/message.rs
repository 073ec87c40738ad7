//! The actor messages sessions, rooms and the registry exchange, and the types
//! they carry, in one neutral place: `session`, `room` and `registry` each
//! depend on this module, none of them on another for its messages (as in
//! actix/examples' chat-broker). The handlers stay with their actors.
//!
//! - session -> room: [`Join`], [`Leave`], [`Post`], [`Typing`], [`MarkRead`], [`Settle`];
//! - REST -> room (through the registry): [`Act`];
//! - room -> session: [`ToSession`], through an [`Outlet`] (with its [`Backlog`]);
//! - room -> registry: [`RoomIdle`], and the [`Occupancy`] counters they share.

use crate::access::{Action, Actor};
use crate::broker::Draft;
use crate::chat::ChatMessage;
use crate::protocol::{ReadState, Rejection, UserInfo};
use actix::prelude::*;
use bytestring::ByteString;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use uuid::Uuid;

// ------------------------------------------------------------ session -> room

/// Joins a room (forwarded by the registry on a session's first join of it,
/// sent straight to the room's address on a rejoin).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    pub room: String,
    pub session: Uuid,
    pub user: Arc<UserInfo>,
    /// The token makes this user a moderator (they delete anyone's messages).
    pub moderator: bool,
    pub to: Outlet,
    pub format: FrameFormat,
    /// Replay the newest N (already clamped to 0..=100), when `since` is absent.
    pub history: u32,
    pub since: Option<u64>,
    /// Forwarded by the registry (which counts it); rejoins through a kept
    /// address are not.
    pub leased: bool,
    /// The joiner's read marker and unread counts, for `joined`.
    pub reading: Option<ReadState>,
}

/// The member has read the room up to `seq`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MarkRead {
    pub session: Uuid,
    pub seq: u64,
}

/// What an [`Act`] comes back with: the event it added (`None`: it would
/// have changed nothing), or why not.
pub type ActResult = Result<Option<Acted>, Rejection>;

/// The event an [`Act`] added, and the kind of its room (as the room knew it
/// when the event was taken).
#[derive(Debug, Clone)]
pub struct Acted {
    pub event: Arc<ChatMessage>,
    pub kind: crate::access::RoomKind,
}

/// A membership event from REST (docs/protocol.md, section 7b), forwarded by
/// the registry, which starts the room if needed and counts it like a join.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Act {
    pub room: String,
    /// The event, with its kind, subject (`target`) and body.
    pub draft: Draft,
    /// The action to check against the room's members first; `None` for
    /// `room_created`, whose claim was checked in the store.
    pub check: Option<(Actor, Action)>,
    pub reply: tokio::sync::oneshot::Sender<ActResult>,
    pub leased: bool,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub session: Uuid,
    /// Send `left` to the session (an explicit leave, not a disconnect).
    pub notify: bool,
}

/// Answered once everything sent to the room before it was handled (a
/// shutdown waits for the closing sessions' `Leave`s this way).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Settle;

/// A chat message, or a change to one, a member sends to the room.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Post {
    pub session: Uuid,
    /// To answer a session the room no longer knows (it was just dropped).
    pub to: Recipient<ToSession>,
    /// What is sent, with its id and timestamp fixed.
    pub draft: Draft,
}

/// A member is typing.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Typing {
    pub session: Uuid,
}

// ------------------------------------------------------------ room -> session

/// Which wire format a member reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    V1,
    Seed,
}

/// What rooms send a session.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ToSession {
    /// A ready-to-write reply outside the room's deliveries (an ack for a
    /// session that just left, `left`); not counted in the backlog.
    Frame(ByteString),
    /// Ready-to-write frames (shared bytes; the session adds nothing), of
    /// which `queued` frames and `bytes` bytes were counted in the session's
    /// [`Backlog`]: each live frame counts, a join's whole replay counts as one.
    Frames {
        frames: Vec<ByteString>,
        queued: usize,
        bytes: usize,
    },
    /// The room dropped this session (a failed join or replay): forget it.
    Detached(String),
    /// An error, rendered in the session's own format.
    Reject(Rejection),
    /// The session's queue overflowed: close with 1013.
    SlowConsumer,
}

/// What rooms queued for a session that it has not yet handed to its
/// socket, in frames (`limits.session_queue`, the contract's bound; rooms
/// batch several frames into one mailbox item) and in bytes
/// (`limits.session_queue_bytes`: a replay or history page of long messages
/// weighs what it weighs).
#[derive(Debug)]
pub struct Backlog {
    frames: AtomicUsize,
    bytes: AtomicUsize,
    max_frames: usize,
    max_bytes: usize,
}

impl Backlog {
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self {
            frames: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_frames,
            max_bytes,
        }
    }

    /// Counts `frames` and `bytes` more unless that would go over a limit. A
    /// session with nothing waiting takes any batch: one busy moment in a
    /// room is not a client failing to read.
    pub fn reserve(&self, frames: usize, bytes: usize) -> bool {
        let fits =
            |queued: usize, n: usize, cap: usize| queued == 0 || queued.saturating_add(n) <= cap;
        if self
            .frames
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                fits(queued, frames, self.max_frames).then(|| queued.saturating_add(frames))
            })
            .is_err()
        {
            return false;
        }
        let took_bytes = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                fits(queued, bytes, self.max_bytes).then(|| queued.saturating_add(bytes))
            })
            .is_ok();
        if !took_bytes {
            Self::sub(&self.frames, frames);
        }
        took_bytes
    }

    pub fn release(&self, frames: usize, bytes: usize) {
        Self::sub(&self.frames, frames);
        Self::sub(&self.bytes, bytes);
    }

    fn sub(counter: &AtomicUsize, n: usize) {
        let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
            Some(queued.saturating_sub(n))
        });
    }

    pub fn queued(&self) -> (usize, usize) {
        (
            self.frames.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }
}

/// How a room reaches one member: its mailbox plus the backlog the room
/// counts against, so a member that can't keep up is noticed without
/// waiting on it.
#[derive(Clone)]
pub struct Outlet {
    recipient: Recipient<ToSession>,
    backlog: Arc<Backlog>,
}

impl Outlet {
    pub fn new(recipient: Recipient<ToSession>, backlog: Arc<Backlog>) -> Self {
        Self { recipient, backlog }
    }

    /// Queues `frames`, counting `weight` of them (and all their bytes)
    /// against the backlog. A member over its limits is told it is a slow
    /// consumer (it closes with 1013) and `false` comes back, as it does for
    /// a member that is gone; the room then drops it instead of slowing down.
    pub fn push(&self, frames: Vec<ByteString>, weight: usize) -> bool {
        if frames.is_empty() {
            return true;
        }
        let bytes = frames.iter().map(|f| f.len()).sum();
        if !self.backlog.reserve(weight, bytes) {
            self.recipient.do_send(ToSession::SlowConsumer);
            return false;
        }
        match self.recipient.try_send(ToSession::Frames {
            frames,
            queued: weight,
            bytes,
        }) {
            Ok(()) => true,
            Err(SendError::Full(_)) => {
                self.backlog.release(weight, bytes);
                self.recipient.do_send(ToSession::SlowConsumer);
                false
            }
            Err(SendError::Closed(_)) => false,
        }
    }
}

impl std::ops::Deref for Outlet {
    type Target = Recipient<ToSession>;

    fn deref(&self) -> &Self::Target {
        &self.recipient
    }
}

// ----------------------------------------------------------- room -> registry

/// A room's live counters for `GET /api/rooms`. The room writes them and the
/// registry reads them on a listing: a message per delivery would wake the
/// registry's thread on every batch of every room.
#[derive(Default)]
pub struct Occupancy {
    /// Users online in the room (here or through other instances).
    pub(crate) online: AtomicUsize,
    /// The room's newest delivered seq; never goes back.
    pub(crate) last_seq: AtomicU64,
}

impl Occupancy {
    pub fn set(&self, online: usize, last_seq: u64) {
        self.online.store(online, Ordering::Relaxed);
        self.last_seq.fetch_max(last_seq, Ordering::Relaxed);
    }
}

/// A room with no members asks to stop; yes only if every lease became a join.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct RoomIdle {
    pub room: String,
    pub joins_seen: u64,
}

/// What the socket reader and the session know of each other.
#[derive(Debug, Default)]
pub struct InputState {
    /// Frames the session has handled (it counts every decoded item).
    pub handled: std::sync::atomic::AtomicU64,
    /// A frame header declared more than `max_frame_bytes`.
    pub oversized: std::sync::atomic::AtomicBool,
    /// The reader, parked while the session holds frames it has not
    /// handled yet (it un-counts a frame it puts aside, see `Session`).
    pub reader: futures_util::task::AtomicWaker,
}

impl InputState {
    /// The session put a frame aside: don't read on until it is taken up.
    pub fn defer_one(&self) {
        self.handled
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// A frame put aside is handled now: reading may go on.
    pub fn resume_one(&self) {
        self.handled
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.reader.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::Backlog;

    #[test]
    fn backlog_counts_up_to_the_cap_and_releases() {
        let b = Backlog::new(4, 1000);
        assert!(b.reserve(3, 30));
        assert!(!b.reserve(2, 20), "3 + 2 frames is over the cap");
        assert!(b.reserve(1, 10));
        assert_eq!(b.queued(), (4, 40));
        b.release(4, 40);
        assert_eq!(b.queued(), (0, 0));
        b.release(1, 1);
        assert_eq!(b.queued(), (0, 0), "never below zero");
    }

    #[test]
    fn backlog_counts_bytes_too() {
        let b = Backlog::new(100, 1000);
        assert!(b.reserve(1, 900));
        assert!(!b.reserve(1, 200), "1100 bytes is over the cap");
        assert_eq!(b.queued(), (1, 900), "a refused reserve takes nothing");
        assert!(b.reserve(1, 100));
    }

    #[test]
    fn an_empty_backlog_takes_a_batch_larger_than_the_cap() {
        let b = Backlog::new(4, 100);
        assert!(b.reserve(10, 1000));
        assert!(!b.reserve(1, 1));
        b.release(10, 1000);
        assert!(b.reserve(1, 1));
    }
}
