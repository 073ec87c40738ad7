//! Ordered delivery: the room hands its members every seq exactly once, in
//! order, whichever way a message reaches it: its own accepted batches, the
//! broker's relay (other instances' messages, and in cluster mode its own
//! coming back), or a fetch of the seqs that never arrived (a gap). All of
//! them go through [`Delivery::offer`]; [`Delivery::pop_next`] then releases
//! the next seq once it is there. The actor owns the timers and fetches; this
//! buffer only says when they are due.

use crate::changes::TargetState;
use crate::chat::{ChatMessage, Kind};
use crate::message::FrameFormat;
use bytestring::ByteString;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};

/// Recent messages kept in memory so most joins replay without a store read.
pub(super) const RECENT_CAPACITY: usize = 128;

/// A log entry with its frames, serialized once and shared by every member.
pub(super) struct Delivered {
    pub(super) msg: Arc<ChatMessage>,
    /// The protocol v1 frame, which most members read: made up front.
    v1: ByteString,
    /// The seed-compatible frame, made on first use (`None`: seed clients
    /// see messages only, and no tombstones).
    seed: OnceLock<Option<ByteString>>,
}

impl Delivered {
    pub(super) fn new(msg: Arc<ChatMessage>) -> Self {
        let v1 = ByteString::from(msg.frame_json());
        Self {
            msg,
            v1,
            seed: OnceLock::new(),
        }
    }

    /// The frame a member of `format` gets, if any.
    pub(super) fn frame(&self, format: FrameFormat) -> Option<ByteString> {
        match format {
            FrameFormat::V1 => Some(self.v1.clone()),
            FrameFormat::Seed => self
                .seed
                .get_or_init(|| {
                    let shown = !self.msg.deleted;
                    shown
                        .then(|| self.msg.seed_frame_json().map(ByteString::from))
                        .flatten()
                })
                .clone(),
        }
    }
}

/// What the oldest waiting message allows, see [`Delivery::pop_next`].
pub(super) enum Next {
    /// The next seq, now counted as delivered (and kept in the recent buffer):
    /// hand it to the members.
    Deliver(Arc<Delivered>),
    /// A seq before the oldest waiting one is missing: wait for it, then fetch it.
    Gap,
    /// The next seq is there but belongs to the batch in flight: its ack goes first.
    Held,
    /// Nothing is waiting.
    Empty,
}

/// The room's delivery position, what waits to be delivered, and the recent
/// buffer. See the module docs.
pub(super) struct Delivery {
    /// Newest seq delivered here; every seq up to it was delivered, in order.
    delivered: u64,
    /// Messages after `delivered` that arrived ahead of a missing seq, or
    /// whose ack must go out first, by seq.
    waiting: BTreeMap<u64, Arc<ChatMessage>>,
    /// The newest delivered messages (at most [`RECENT_CAPACITY`]), oldest
    /// first, so most joins replay without a store read.
    recent: VecDeque<Arc<Delivered>>,
    /// A gap was seen and the actor's gap timer runs: the missing seq gets a
    /// moment to arrive before it is fetched. One timer at a time.
    gap_timer_armed: bool,
    /// A fetch of missing seqs is under way. One fetch at a time.
    filling: bool,
}

impl Delivery {
    pub(super) fn new() -> Self {
        Self {
            delivered: 0,
            waiting: BTreeMap::new(),
            recent: VecDeque::with_capacity(RECENT_CAPACITY),
            gap_timer_armed: false,
            filling: false,
        }
    }

    /// The room opened at `head`: what came before it is history, not news.
    pub(super) fn start_at(&mut self, head: u64) {
        self.delivered = head;
    }

    /// Newest seq delivered here.
    pub(super) fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Takes a message from any source; one already delivered is dropped, and
    /// a later copy of a waiting seq replaces the earlier one.
    pub(super) fn offer(&mut self, msg: Arc<ChatMessage>) {
        if msg.seq > self.delivered {
            self.waiting.insert(msg.seq, msg);
        }
    }

    /// Releases the next seq if it is there and `held` (the batch in flight)
    /// doesn't claim it. Call until it stops giving [`Next::Deliver`].
    pub(super) fn pop_next(&mut self, held: impl Fn(&ChatMessage) -> bool) -> Next {
        loop {
            let Some((&seq, msg)) = self.waiting.first_key_value() else {
                return Next::Empty;
            };
            if seq <= self.delivered {
                self.waiting.pop_first();
                continue;
            }
            if seq > self.delivered + 1 {
                return Next::Gap;
            }
            if held(msg) {
                return Next::Held;
            }
            let Some((_, mut msg)) = self.waiting.pop_first() else {
                return Next::Empty;
            };
            if let (Kind::Edit | Kind::Delete, Some(target)) = (msg.kind, msg.target.as_deref()) {
                if msg.kind == Kind::Delete {
                    self.erase(target);
                } else if self.was_deleted(target) {
                    // An edit sequenced after its message's delete changes
                    // nothing, and its text goes nowhere.
                    let mut erased = (*msg).clone();
                    erased.content.clear();
                    msg = Arc::new(erased);
                }
            }
            self.delivered = seq;
            let delivered = Arc::new(Delivered::new(msg));
            if self.recent.len() == RECENT_CAPACITY {
                self.recent.pop_front();
            }
            self.recent.push_back(delivered.clone());
            return Next::Deliver(delivered);
        }
    }

    /// The entries delivered recently and those waiting, in seq order (with
    /// the gaps the waiting ones may have).
    fn entries(&self) -> impl Iterator<Item = &ChatMessage> {
        self.recent
            .iter()
            .map(|d| d.msg.as_ref())
            .chain(self.waiting.values().map(|m| m.as_ref()))
    }

    /// The oldest seq the room holds in memory (the recent buffer), or the
    /// next one to come when it holds none.
    pub(super) fn memory_from(&self) -> u64 {
        self.recent
            .front()
            .map_or(self.delivered + 1, |d| d.msg.seq)
    }

    /// The delivered entries with seq above `seq` (those the recent buffer holds).
    pub(super) fn delivered_after(&self, seq: u64) -> Vec<Arc<ChatMessage>> {
        self.recent
            .iter()
            .filter(|d| d.msg.seq > seq)
            .map(|d| d.msg.clone())
            .collect()
    }

    /// Whether message `id` is among the recent or waiting entries, so its
    /// state is known without reading the store.
    pub(super) fn knows(&self, id: &str) -> bool {
        self.entries().any(|m| m.is_message() && m.id == id)
    }

    /// Message `id`'s state as the recent and waiting entries show it, over
    /// `base` (read from the store) when the message itself isn't among them.
    pub(super) fn resolve(&self, id: &str, base: Option<TargetState>) -> Option<TargetState> {
        crate::changes::resolve(self.entries(), id, base)
    }

    fn was_deleted(&self, id: &str) -> bool {
        self.recent.iter().any(|d| match d.msg.kind {
            Kind::Message => d.msg.deleted && d.msg.id == id,
            Kind::Delete => d.msg.target.as_deref() == Some(id),
            _ => false,
        })
    }

    /// Message `id` was deleted: the recent buffer's copy of it becomes a
    /// tombstone and its edits lose their text, so replays from memory show
    /// the deletion too.
    fn erase(&mut self, id: &str) {
        for entry in self.recent.iter_mut() {
            let hit = match entry.msg.kind {
                Kind::Message => entry.msg.id == id,
                Kind::Edit => entry.msg.target.as_deref() == Some(id),
                _ => false,
            };
            if hit {
                let mut erased = (*entry.msg).clone();
                crate::changes::erase(&mut erased);
                *entry = Arc::new(Delivered::new(Arc::new(erased)));
            }
        }
    }

    /// Whether to start the gap timer now (it isn't running, and no fetch is
    /// under way: that one's end looks again); `true` counts it as running.
    pub(super) fn arm_gap_timer(&mut self) -> bool {
        if self.gap_timer_armed || self.filling {
            return false;
        }
        self.gap_timer_armed = true;
        true
    }

    /// The gap timer ran out: the newest seq to fetch, if a gap is still there.
    pub(super) fn gap_timer_fired(&mut self) -> Option<u64> {
        self.gap_timer_armed = false;
        match self.waiting.first_key_value() {
            Some((&seq, _)) if seq > self.delivered + 1 => Some(seq - 1),
            _ => None,
        }
    }

    /// Starts a fetch of the seqs after `delivered` up to `target`, unless
    /// there are none or a fetch is under way: the seq to fetch after.
    pub(super) fn begin_fill(&mut self, target: u64) -> Option<u64> {
        if target <= self.delivered || self.filling {
            return None;
        }
        self.filling = true;
        Some(self.delivered)
    }

    /// The fetch ended (its messages, if any, are to be offered).
    pub(super) fn end_fill(&mut self) {
        self.filling = false;
    }

    /// The delivered messages `after < seq <= upto` from the recent buffer,
    /// if it reaches back to `after + 1`.
    pub(super) fn recent_between(
        &self,
        after: u64,
        upto: u64,
    ) -> Option<impl Iterator<Item = &Arc<Delivered>>> {
        let oldest = self
            .recent
            .front()
            .map_or(self.delivered + 1, |d| d.msg.seq);
        if after + 1 < oldest {
            return None;
        }
        Some(
            self.recent
                .iter()
                .filter(move |d| d.msg.seq > after && d.msg.seq <= upto),
        )
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    pub(in crate::room) fn msg(seq: u64) -> Arc<ChatMessage> {
        Arc::new(ChatMessage {
            room: "general".into(),
            seq,
            id: format!("m{seq}"),
            user_id: "u1".into(),
            user_name: "Ann".into(),
            content: format!("hello {seq}"),
            timestamp_ms: 1_700_000_000_000,
            ..ChatMessage::default()
        })
    }

    fn change(seq: u64, kind: Kind, target: u64) -> Arc<ChatMessage> {
        let mut m = (*msg(seq)).clone();
        m.kind = kind;
        m.target = Some(format!("m{target}"));
        m.content = format!("edit {seq}");
        Arc::new(m)
    }

    #[test]
    fn a_delete_erases_the_recent_copies_and_later_edits() {
        let mut d = Delivery::new();
        for m in [
            msg(1),
            change(2, Kind::Edit, 1),
            change(3, Kind::Delete, 1),
            change(4, Kind::Edit, 1),
            msg(5),
        ] {
            d.offer(m);
        }
        let mut out = Vec::new();
        drain(&mut d, &HashSet::new(), &mut out);
        let replay: Vec<String> = d
            .recent_between(0, 5)
            .unwrap()
            .map(|e| e.frame(FrameFormat::V1).unwrap().to_string())
            .collect();
        assert!(
            replay
                .iter()
                .all(|f| !f.contains("hello 1") && !f.contains("edit 2") && !f.contains("edit 4")),
            "{replay:?}"
        );
        assert!(replay[0].contains("\"deleted\":true"));
        assert!(
            d.recent_between(0, 1)
                .unwrap()
                .all(|e| e.frame(FrameFormat::Seed).is_none()),
            "no tombstones for seed clients"
        );
        assert!(
            d.knows("m1") && d.knows("m5") && !d.knows("m2"),
            "events are not messages"
        );
        assert!(d.resolve("m1", None).unwrap().deleted);
    }

    /// Delivers what can be delivered, like the actor's flush; `true` when it
    /// stopped at a gap.
    fn drain(d: &mut Delivery, held: &HashSet<String>, out: &mut Vec<u64>) -> bool {
        loop {
            match d.pop_next(|m| held.contains(&m.id)) {
                Next::Deliver(m) => out.push(m.msg.seq),
                Next::Gap => return true,
                Next::Held | Next::Empty => return false,
            }
        }
    }

    #[test]
    fn delivers_in_order_and_waits_at_a_gap() {
        let mut d = Delivery::new();
        let mut out = Vec::new();
        d.offer(msg(2));
        assert!(drain(&mut d, &HashSet::new(), &mut out), "1 is missing");
        assert!(out.is_empty());
        d.offer(msg(1));
        assert!(!drain(&mut d, &HashSet::new(), &mut out));
        assert_eq!(out, [1, 2]);
        assert_eq!(d.delivered(), 2);
    }

    #[test]
    fn drops_what_was_already_delivered() {
        let mut d = Delivery::new();
        d.start_at(5);
        let mut out = Vec::new();
        d.offer(msg(4));
        d.offer(msg(5));
        d.offer(msg(6));
        d.offer(msg(6));
        drain(&mut d, &HashSet::new(), &mut out);
        assert_eq!(out, [6]);
    }

    #[test]
    fn holds_a_message_of_the_batch_in_flight() {
        let mut d = Delivery::new();
        let mut out = Vec::new();
        d.offer(msg(1));
        d.offer(msg(2));
        let held = HashSet::from(["m1".to_string()]);
        assert!(matches!(d.pop_next(|m| held.contains(&m.id)), Next::Held));
        drain(&mut d, &HashSet::new(), &mut out);
        assert_eq!(out, [1, 2]);
    }

    #[test]
    fn one_gap_timer_and_no_timer_while_filling() {
        let mut d = Delivery::new();
        d.offer(msg(3));
        assert!(d.arm_gap_timer());
        assert!(!d.arm_gap_timer(), "already running");
        assert_eq!(d.gap_timer_fired(), Some(2));
        assert_eq!(d.begin_fill(2), Some(0));
        assert!(!d.arm_gap_timer(), "the fetch's end looks again");
        assert_eq!(d.begin_fill(2), None, "one fetch at a time");
        d.end_fill();
        assert!(d.arm_gap_timer());
    }

    #[test]
    fn a_fired_timer_without_a_gap_fetches_nothing() {
        let mut d = Delivery::new();
        assert!(d.arm_gap_timer());
        assert_eq!(d.gap_timer_fired(), None);
        d.start_at(7);
        assert_eq!(d.begin_fill(7), None, "nothing after 7 up to 7");
        assert_eq!(d.begin_fill(9), Some(7));
    }

    #[test]
    fn the_recent_buffer_keeps_the_newest() {
        let mut d = Delivery::new();
        let total = RECENT_CAPACITY as u64 + 10;
        for seq in 1..=total {
            d.offer(msg(seq));
        }
        let mut out = Vec::new();
        drain(&mut d, &HashSet::new(), &mut out);
        assert_eq!(out.len() as u64, total);
        assert!(d.recent_between(5, total).is_none(), "6 was dropped");
        let seqs: Vec<u64> = d
            .recent_between(total - 3, total - 1)
            .expect("covered")
            .map(|m| m.msg.seq)
            .collect();
        assert_eq!(seqs, [total - 2, total - 1]);
    }

    #[test]
    fn a_room_with_nothing_recent_replays_nothing_from_memory_only_at_its_head() {
        let mut d = Delivery::new();
        d.start_at(10);
        assert_eq!(d.recent_between(10, 10).map(|i| i.count()), Some(0));
        assert!(d.recent_between(9, 10).is_none(), "10 is in the store only");
    }

    #[test]
    fn frames_are_made_once_per_format() {
        let m = Delivered::new(msg(1));
        assert_eq!(m.frame(FrameFormat::V1).unwrap(), m.msg.frame_json());
        let seed = m.frame(FrameFormat::Seed).unwrap();
        assert_eq!(seed, m.msg.seed_frame_json().unwrap());
        assert!(std::ptr::eq(
            m.frame(FrameFormat::Seed).unwrap().as_ptr(),
            seed.as_ptr()
        ));
    }

    // ------------------------------------------------------------ property

    /// One thing that can happen to a room; see [`World`].
    #[derive(Debug, Clone)]
    enum Step {
        /// Another instance sequences `n` messages (published on the relay).
        Remote(usize),
        /// The room hands `n` sends to the broker (if no batch is in flight).
        OwnStart(usize),
        /// The broker sequences the batch in flight (and publishes it).
        OwnSequence,
        /// The batch's answer comes back: accepted, or the broker failed.
        OwnFinish(bool),
        /// The relay hands over its oldest published batch.
        Relay,
        /// The two oldest published batches reach the room swapped.
        Swap,
        /// The relay loses its oldest batch, silently (`false`: only a
        /// later message reveals the gap) or with an interruption, after
        /// which it asks for a resync.
        Lose(bool),
        /// The gap timer runs out.
        Timer,
        /// The fetch under way answers, or fails (then it is retried).
        FetchDone(bool),
        /// A failed fetch is retried.
        Retry,
        /// A resync (after a lost relay or a failed batch) reads the head.
        Resync,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (1..4usize).prop_map(Step::Remote),
            2 => (1..5usize).prop_map(Step::OwnStart),
            2 => Just(Step::OwnSequence),
            2 => proptest::bool::weighted(0.75).prop_map(Step::OwnFinish),
            4 => Just(Step::Relay),
            1 => Just(Step::Swap),
            1 => any::<bool>().prop_map(Step::Lose),
            2 => Just(Step::Timer),
            2 => proptest::bool::weighted(0.75).prop_map(Step::FetchDone),
            1 => Just(Step::Retry),
            1 => Just(Step::Resync),
        ]
    }

    struct Batch {
        ids: HashSet<String>,
        n: usize,
        sequenced: Option<Vec<Arc<ChatMessage>>>,
    }

    /// The room's surroundings: the sequencer's log, the relay, one batch in
    /// flight, one fetch, the timers. The room's side is [`Delivery`], driven
    /// the way the actor drives it.
    struct World {
        d: Delivery,
        /// Every sequenced message; seq n is `log[n - 1]`.
        log: Vec<Arc<ChatMessage>>,
        /// Published batches not yet relayed to the room.
        relay: VecDeque<Vec<Arc<ChatMessage>>>,
        batch: Option<Batch>,
        /// Drafts handed out so far (their ids).
        drafts: usize,
        /// Ids of own messages whose ack went out.
        acked: HashSet<String>,
        /// Ids of own messages not acked yet (their batch is in flight).
        unacked: HashSet<String>,
        timer_running: bool,
        fetch: Option<(u64, u64)>,
        retry: Option<u64>,
        resync_due: bool,
        out: Vec<u64>,
    }

    impl World {
        fn new(head: u64) -> Self {
            let mut d = Delivery::new();
            d.start_at(head);
            Self {
                d,
                log: (1..=head).map(msg).collect(),
                relay: VecDeque::new(),
                batch: None,
                drafts: 0,
                acked: HashSet::new(),
                unacked: HashSet::new(),
                timer_running: false,
                fetch: None,
                retry: None,
                resync_due: false,
                out: Vec::new(),
            }
        }

        fn sequence(&mut self, ids: impl IntoIterator<Item = String>) -> Vec<Arc<ChatMessage>> {
            let batch: Vec<_> = ids
                .into_iter()
                .map(|id| {
                    let mut m = (*msg(self.log.len() as u64 + 1)).clone();
                    m.id = id;
                    let m = Arc::new(m);
                    self.log.push(m.clone());
                    m
                })
                .collect();
            self.relay.push_back(batch.clone());
            batch
        }

        fn flush(&mut self) -> Result<(), TestCaseError> {
            let held: HashSet<String> = self
                .batch
                .as_ref()
                .map(|b| b.ids.clone())
                .unwrap_or_default();
            loop {
                match self.d.pop_next(|m| held.contains(&m.id)) {
                    Next::Deliver(m) => {
                        prop_assert!(
                            !self.unacked.contains(&m.msg.id),
                            "seq {} delivered before its ack",
                            m.msg.seq
                        );
                        prop_assert_eq!(&m.msg.id, &self.log[m.msg.seq as usize - 1].id);
                        self.out.push(m.msg.seq);
                    }
                    Next::Gap => {
                        if self.d.arm_gap_timer() {
                            self.timer_running = true;
                        }
                        return Ok(());
                    }
                    Next::Held | Next::Empty => return Ok(()),
                }
            }
        }

        fn fill_to(&mut self, target: u64) {
            if let Some(after) = self.d.begin_fill(target) {
                self.fetch = Some((after, target));
            }
        }

        fn run(&mut self, step: Step) -> Result<(), TestCaseError> {
            match step {
                Step::Remote(n) => {
                    let ids = (0..n).map(|i| format!("r{}-{i}", self.log.len()));
                    self.sequence(ids.collect::<Vec<_>>());
                }
                Step::OwnStart(n) if self.batch.is_none() => {
                    let ids: HashSet<String> =
                        (0..n).map(|i| format!("own{}", self.drafts + i)).collect();
                    self.drafts += n;
                    self.unacked.extend(ids.iter().cloned());
                    self.batch = Some(Batch {
                        ids,
                        n,
                        sequenced: None,
                    });
                }
                Step::OwnSequence => {
                    if let Some(b) = self.batch.as_ref().filter(|b| b.sequenced.is_none()) {
                        let mut ids: Vec<String> = b.ids.iter().cloned().collect();
                        ids.sort();
                        assert_eq!(ids.len(), b.n);
                        let sequenced = self.sequence(ids);
                        self.batch.as_mut().unwrap().sequenced = Some(sequenced);
                    }
                }
                Step::OwnFinish(ok) => {
                    let Some(b) = self.batch.take() else {
                        return Ok(());
                    };
                    match b.sequenced {
                        Some(messages) if ok => {
                            for m in messages {
                                self.unacked.remove(&m.id);
                                self.acked.insert(m.id.clone());
                                self.d.offer(m);
                            }
                        }
                        _ => {
                            // Refused: never acked, possibly accepted anyway.
                            for id in &b.ids {
                                self.unacked.remove(id);
                            }
                            self.resync_due = true;
                        }
                    }
                    self.flush()?;
                }
                Step::Relay => {
                    if let Some(batch) = self.relay.pop_front() {
                        for m in batch {
                            self.d.offer(m);
                        }
                        self.flush()?;
                    }
                }
                Step::Swap => {
                    if self.relay.len() >= 2 {
                        self.relay.swap(0, 1);
                    }
                }
                Step::Lose(interrupted) => {
                    if self.relay.pop_front().is_some() && interrupted {
                        self.resync_due = true;
                    }
                }
                Step::Timer => {
                    if std::mem::take(&mut self.timer_running) {
                        if let Some(target) = self.d.gap_timer_fired() {
                            self.fill_to(target);
                        }
                    }
                }
                Step::FetchDone(ok) => {
                    if let Some((after, target)) = self.fetch.take() {
                        self.d.end_fill();
                        if ok {
                            for m in &self.log[after as usize..target as usize] {
                                self.d.offer(m.clone());
                            }
                            self.flush()?;
                        } else {
                            self.retry = Some(target);
                        }
                    }
                }
                Step::Retry => {
                    if let Some(target) = self.retry.take() {
                        self.fill_to(target);
                    }
                }
                Step::Resync => {
                    if std::mem::take(&mut self.resync_due) {
                        self.fill_to(self.log.len() as u64);
                    }
                }
                Step::OwnStart(_) => {}
            }
            Ok(())
        }

        /// Lets everything outstanding happen, without new sends or losses,
        /// then one more message arrives (revealing a silently lost tail).
        fn settle(&mut self) -> Result<(), TestCaseError> {
            if self.batch.is_some() {
                self.run(Step::OwnSequence)?;
                self.run(Step::OwnFinish(true))?;
            }
            self.run(Step::Remote(1))?;
            for _ in 0..8 {
                while !self.relay.is_empty() {
                    self.run(Step::Relay)?;
                }
                self.run(Step::Resync)?;
                self.run(Step::FetchDone(true))?;
                self.run(Step::Retry)?;
                self.run(Step::FetchDone(true))?;
                self.run(Step::Timer)?;
                self.run(Step::FetchDone(true))?;
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the interleaving of own batches, relayed messages (in
        /// order, swapped or lost) and fetched gaps, every seq after the
        /// room's head is delivered exactly once, in order, and an own message
        /// never before its ack.
        #[test]
        fn every_seq_exactly_once_in_order(
            head in 0..4u64,
            steps in proptest::collection::vec(step(), 0..80),
        ) {
            let mut world = World::new(head);
            for s in steps {
                world.run(s)?;
                let expected: Vec<u64> = (head + 1..=world.d.delivered()).collect();
                prop_assert_eq!(&world.out, &expected, "delivered out of order or twice");
            }
            world.settle()?;
            let all: Vec<u64> = (head + 1..=world.log.len() as u64).collect();
            prop_assert_eq!(&world.out, &all);
            prop_assert_eq!(world.d.delivered(), world.log.len() as u64);
        }
    }
}
