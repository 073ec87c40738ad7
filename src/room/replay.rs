//! Join replay: what a join replays (the newest `history`, or since a seq
//! for a recovery), from the recent buffer when it reaches back far enough,
//! else fetched from the broker and the store. While a member's replay is
//! fetched, live messages wait in its replay buffer, and further joins of the
//! room by the same connection wait behind it: each gets its own `joined` and
//! replay, in order.

use super::delivery::{Delivered, Delivery};
use crate::chat::ChatMessage;
use crate::message::{FrameFormat, Join};
use crate::FastMap;
use bytestring::ByteString;
use std::collections::VecDeque;
use std::sync::Arc;
use uuid::Uuid;

/// Joins one connection may have waiting behind a replay; more are refused.
const MAX_WAITING_JOINS: usize = 8;

/// What a join replays, decided from the room's newest seq when it arrives.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Plan {
    /// Replay the messages `after < seq <= upto` (never an empty range).
    pub(super) range: Option<(u64, u64)>,
    /// A recovery (`since`): `Some(false)` when it can't be served (ahead of
    /// the room, or further back than `rooms.recovery_max`); `None` for a
    /// plain join.
    pub(super) recovered: Option<bool>,
}

impl Plan {
    /// `last`: the room's newest seq; `history`: already clamped.
    pub(super) fn new(since: Option<u64>, history: u32, last: u64, recovery_max: u64) -> Self {
        let (range, recovered) = match since {
            Some(since) if since > last || last - since > recovery_max => (None, Some(false)),
            Some(since) => (Some((since, last)), Some(true)),
            None => {
                let n = u64::from(history).min(last);
                (Some((last - n, last)), None)
            }
        };
        Self {
            range: range.filter(|(after, upto)| after < upto),
            recovered,
        }
    }
}

/// The frames of a replay the recent buffer covers, or `None`: fetch it.
pub(super) fn from_recent(
    delivery: &Delivery,
    format: FrameFormat,
    after: u64,
    upto: u64,
) -> Option<Vec<ByteString>> {
    Some(
        delivery
            .recent_between(after, upto)?
            .filter_map(|d| d.frame(format))
            .collect(),
    )
}

/// Whether a fetch of `after < seq <= upto` found every seq (retention may
/// have deleted some).
pub(super) fn complete(messages: &[ChatMessage], after: u64, upto: u64) -> bool {
    messages.len() as u64 == upto - after
}

/// What a finished fetch sends, in order: the deferred `joined` (a
/// recovery's), the fetched messages (none for an incomplete recovery: the
/// client pages history instead), then what was delivered meanwhile.
pub(super) fn fetched_frames(
    format: FrameFormat,
    joined: Option<ByteString>,
    complete: bool,
    messages: Vec<ChatMessage>,
    buffered: &[Arc<Delivered>],
    upto: u64,
) -> Vec<ByteString> {
    let replayed = if complete || joined.is_none() {
        messages
    } else {
        Vec::new()
    };
    joined
        .into_iter()
        .chain(
            replayed
                .into_iter()
                .filter_map(|msg| Delivered::new(Arc::new(msg)).frame(format)),
        )
        .chain(
            buffered
                .iter()
                .filter(|d| d.msg.seq > upto)
                .filter_map(|d| d.frame(format)),
        )
        .collect()
}

/// One member's replay being fetched.
pub(super) struct Replay {
    /// Tells this fetch's answer from that of one it superseded.
    token: u64,
    /// Live messages delivered while the fetch is out, sent after it.
    pub(super) buffer: Vec<Arc<Delivered>>,
    /// A recovery's `joined` (with the room's `last_seq` at the join) waits
    /// for the store's answer; until it is sent the member gets nothing else.
    joined_last: Option<u64>,
    /// Joins of this room by the same connection that came meanwhile: each
    /// gets its own `joined` and replay, in order, after this one.
    pub(super) waiting_joins: VecDeque<Join>,
}

/// Where a live message for a member goes, see [`Replays::hold`].
pub(super) enum Hold {
    /// Not replaying: send it now.
    Send,
    /// Kept for after the replay.
    Buffered,
    /// The replay buffer is full: the member is a slow consumer.
    Overflow,
}

/// What became of a join for a member, see [`Replays::wait_behind`].
pub(super) enum WaitBehind {
    /// Not replaying: handle the join now.
    Free(Join),
    /// It waits behind the replay.
    Queued,
    /// Too many joins wait already: refuse it.
    Full,
}

/// The replays being fetched, by session. Mostly empty.
#[derive(Default)]
pub(super) struct Replays {
    /// The members whose replay is being fetched, by session.
    active: FastMap<Uuid, Replay>,
    /// The last token handed out.
    tokens: u64,
}

impl Replays {
    pub(super) fn is_replaying(&self, session: &Uuid) -> bool {
        !self.active.is_empty() && self.active.contains_key(session)
    }

    /// The member's `joined` is still to come (it gets the current view in
    /// it, so presence and typing frames skip it).
    pub(super) fn defers_joined(&self, session: &Uuid) -> bool {
        !self.active.is_empty()
            && self
                .active
                .get(session)
                .is_some_and(|r| r.joined_last.is_some())
    }

    /// Queues a join behind the member's replay, if one is being fetched.
    pub(super) fn wait_behind(&mut self, join: Join) -> WaitBehind {
        match self.active.get_mut(&join.session) {
            None => WaitBehind::Free(join),
            Some(r) if r.waiting_joins.len() >= MAX_WAITING_JOINS => WaitBehind::Full,
            Some(r) => {
                r.waiting_joins.push_back(join);
                WaitBehind::Queued
            }
        }
    }

    /// A fetch for `session` starts: its token. Live messages wait from now on.
    pub(super) fn begin(&mut self, session: Uuid, joined_last: Option<u64>) -> u64 {
        self.tokens += 1;
        let token = self.tokens;
        let replay = self.active.entry(session).or_insert_with(|| Replay {
            token,
            buffer: Vec::new(),
            joined_last,
            waiting_joins: VecDeque::new(),
        });
        replay.token = token;
        replay.joined_last = joined_last;
        token
    }

    /// Where a live message for `session` goes; `cap` bounds the buffer.
    pub(super) fn hold(&mut self, session: &Uuid, message: &Arc<Delivered>, cap: usize) -> Hold {
        if self.active.is_empty() {
            return Hold::Send;
        }
        match self.active.get_mut(session) {
            None => Hold::Send,
            Some(r) if r.buffer.len() >= cap => Hold::Overflow,
            Some(r) => {
                r.buffer.push(message.clone());
                Hold::Buffered
            }
        }
    }

    /// The fetch with `token` answered: its replay, unless a newer one
    /// superseded it (or the member left).
    pub(super) fn finish(&mut self, session: &Uuid, token: u64) -> Option<Replay> {
        if self.active.get(session)?.token != token {
            return None;
        }
        self.active.remove(session)
    }

    /// The member left: its replay is dropped, with the joins waiting behind it.
    pub(super) fn remove(&mut self, session: &Uuid) {
        self.active.remove(session);
    }

    /// Joins that still wait after one of them started a new replay: they
    /// wait behind that one, ahead of any that come later.
    pub(super) fn wait_again(&mut self, session: &Uuid, mut joins: VecDeque<Join>) {
        if let Some(r) = self.active.get_mut(session) {
            joins.append(&mut r.waiting_joins);
            r.waiting_joins = joins;
        }
    }
}

/// The room's messages `after < seq <= upto`: the broker's recent part (the
/// room's stream in cluster mode), the store for what it no longer holds.
/// Join replays and gap fills both read this way. A message deleted within
/// the range comes back erased (the stream still holds its text).
pub(super) async fn fetch_range(
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
        crate::changes::scrub(&mut tail);
        return Ok(tail);
    }
    let mut head = store
        .range(room, after, covered_from - 1)
        .await
        .map_err(|e| e.to_string())?;
    head.extend(tail);
    crate::changes::scrub(&mut head);
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::UserInfo;
    use crate::room::delivery::tests::msg;
    use crate::room::delivery::Next;

    #[test]
    fn a_plain_join_replays_the_newest() {
        let plan = Plan::new(None, 10, 25, 1000);
        assert_eq!(plan.range, Some((15, 25)));
        assert_eq!(plan.recovered, None);
        assert_eq!(Plan::new(None, 10, 4, 1000).range, Some((0, 4)));
        assert_eq!(Plan::new(None, 0, 25, 1000).range, None, "nothing asked");
        assert_eq!(Plan::new(None, 10, 0, 1000).range, None, "nothing there");
    }

    #[test]
    fn a_recovery_replays_since_its_seq_within_the_limit() {
        let ok = Plan::new(Some(20), 10, 25, 1000);
        assert_eq!((ok.range, ok.recovered), (Some((20, 25)), Some(true)));
        let current = Plan::new(Some(25), 10, 25, 1000);
        assert_eq!((current.range, current.recovered), (None, Some(true)));
        let ahead = Plan::new(Some(26), 10, 25, 1000);
        assert_eq!((ahead.range, ahead.recovered), (None, Some(false)));
        let too_far = Plan::new(Some(5), 10, 2000, 1000);
        assert_eq!((too_far.range, too_far.recovered), (None, Some(false)));
        let at_limit = Plan::new(Some(1000), 10, 2000, 1000);
        assert_eq!(at_limit.range, Some((1000, 2000)));
    }

    fn recent(upto: u64) -> Delivery {
        let mut d = Delivery::new();
        for seq in 1..=upto {
            d.offer(msg(seq));
        }
        while let Next::Deliver(_) = d.pop_next(|_| false) {}
        d
    }

    #[test]
    fn the_recent_buffer_serves_what_it_covers() {
        let d = recent(5);
        let frames = from_recent(&d, FrameFormat::V1, 2, 4).expect("covered");
        let expected: Vec<ByteString> = (3..=4).map(|s| msg(s).frame_json().into()).collect();
        assert_eq!(frames, expected);
        let seed = from_recent(&d, FrameFormat::Seed, 4, 5).expect("covered");
        assert_eq!(seed, [ByteString::from(msg(5).seed_frame_json().unwrap())]);
    }

    fn fetched(seqs: impl IntoIterator<Item = u64>) -> Vec<ChatMessage> {
        seqs.into_iter().map(|s| (*msg(s)).clone()).collect()
    }

    fn frames_of(seqs: impl IntoIterator<Item = u64>) -> Vec<ByteString> {
        seqs.into_iter()
            .map(|s| msg(s).frame_json().into())
            .collect()
    }

    #[test]
    fn a_fetched_replay_then_what_came_meanwhile() {
        let buffered: Vec<_> = (4..=6).map(|s| Arc::new(Delivered::new(msg(s)))).collect();
        assert!(complete(&fetched(2..=4), 1, 4));
        let frames = fetched_frames(FrameFormat::V1, None, true, fetched(2..=4), &buffered, 4);
        assert_eq!(frames, frames_of(2..=6), "5 and 6 after the replay, 4 once");
    }

    #[test]
    fn an_incomplete_recovery_replays_nothing() {
        let messages = fetched([3, 4]);
        assert!(!complete(&messages, 1, 4), "2 was deleted");
        let joined = ByteString::from("joined");
        let frames = fetched_frames(
            FrameFormat::V1,
            Some(joined.clone()),
            false,
            messages.clone(),
            &[],
            4,
        );
        assert_eq!(frames, std::slice::from_ref(&joined));
        let plain = fetched_frames(FrameFormat::V1, None, false, messages, &[], 4);
        assert_eq!(
            plain,
            frames_of([3, 4]),
            "a plain join replays what is there"
        );
        let recovered = fetched_frames(
            FrameFormat::V1,
            Some(joined.clone()),
            true,
            fetched(2..=4),
            &[],
            4,
        );
        assert_eq!(recovered[0], joined);
        assert_eq!(recovered[1..], frames_of(2..=4));
    }

    fn join(session: Uuid, history: u32) -> Join {
        Join {
            room: "general".into(),
            session,
            user: Arc::new(UserInfo {
                id: "u1".into(),
                name: "Ann".into(),
            }),
            moderator: false,
            to: super::super::test_outlet(),
            format: FrameFormat::V1,
            history,
            since: None,
            leased: false,
            reading: None,
        }
    }

    #[actix::test]
    async fn joins_wait_behind_a_replay_in_order_up_to_the_limit() {
        let mut r = Replays::default();
        let s = Uuid::new_v4();
        assert!(matches!(r.wait_behind(join(s, 1)), WaitBehind::Free(_)));
        let token = r.begin(s, None);
        assert!(r.is_replaying(&s) && !r.defers_joined(&s));
        for h in 0..MAX_WAITING_JOINS as u32 {
            assert!(matches!(r.wait_behind(join(s, h)), WaitBehind::Queued));
        }
        assert!(matches!(r.wait_behind(join(s, 99)), WaitBehind::Full));

        let replay = r.finish(&s, token).expect("current");
        assert!(!r.is_replaying(&s));
        let mut waiting = replay.waiting_joins;
        assert_eq!(waiting.pop_front().map(|j| j.history), Some(0));
        // That join starts a replay of its own; the rest wait behind it.
        let next = r.begin(s, Some(7));
        assert!(r.defers_joined(&s));
        assert!(matches!(r.wait_behind(join(s, 50)), WaitBehind::Queued));
        r.wait_again(&s, waiting);
        let order: Vec<u32> = r
            .finish(&s, next)
            .expect("current")
            .waiting_joins
            .iter()
            .map(|j| j.history)
            .collect();
        assert_eq!(order, [1, 2, 3, 4, 5, 6, 7, 50]);
    }

    #[test]
    fn a_superseded_fetch_finds_nothing() {
        let mut r = Replays::default();
        let s = Uuid::new_v4();
        let old = r.begin(s, None);
        let new = r.begin(s, None);
        assert!(r.finish(&s, old).is_none());
        assert!(r.finish(&s, new).is_some());
        let gone = r.begin(s, None);
        r.remove(&s);
        assert!(r.finish(&s, gone).is_none(), "the member left");
    }

    #[test]
    fn live_messages_wait_up_to_the_cap() {
        let mut r = Replays::default();
        let (s, other) = (Uuid::new_v4(), Uuid::new_v4());
        let m = Arc::new(Delivered::new(msg(1)));
        assert!(matches!(r.hold(&s, &m, 2), Hold::Send));
        let token = r.begin(s, None);
        assert!(matches!(r.hold(&other, &m, 2), Hold::Send));
        assert!(matches!(r.hold(&s, &m, 2), Hold::Buffered));
        assert!(matches!(r.hold(&s, &m, 2), Hold::Buffered));
        assert!(matches!(r.hold(&s, &m, 2), Hold::Overflow));
        assert_eq!(r.finish(&s, token).expect("current").buffer.len(), 2);
    }
}
