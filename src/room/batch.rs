//! Batching: the room's sends go to the broker in batches, one batch in
//! flight at a time, so each sender's messages keep their order (the order
//! of a room's sends is the order of their seqs).

use crate::broker::Draft;
use crate::message::{FrameFormat, Outlet};
use std::collections::{HashSet, VecDeque};
use std::time::Instant;
use uuid::Uuid;

/// Most sends in one broker call.
pub(super) const SEND_BATCH_MAX: usize = 512;

/// Who gets the answer to one send.
pub(super) struct Sender {
    pub(super) session: Uuid,
    pub(super) user_id: String,
    /// May delete anyone's messages.
    pub(super) moderator: bool,
    /// The spam window's fingerprint of the content, to forget a refused
    /// send (`None`: a change without text, not judged as spam).
    pub(super) spam_print: Option<u64>,
    /// The member's session (`None` for a REST action, answered by `reply`).
    pub(super) to: Option<Outlet>,
    pub(super) format: FrameFormat,
    pub(super) client_ref: Option<String>,
    /// When the send reached the room, for `confab_accept_seconds`.
    pub(super) arrived: Instant,
    /// A REST action's answer (its event, or why not).
    pub(super) reply: Option<tokio::sync::oneshot::Sender<crate::message::ActResult>>,
}

/// A send waiting for the batch in flight to finish.
struct Queued {
    sender: Sender,
    draft: Draft,
}

/// The send queue and the batch in flight.
#[derive(Default)]
pub(super) struct Batching {
    /// Sends waiting for the batch in flight to finish, in arrival order.
    queue: VecDeque<Queued>,
    /// Draft ids of the batch the broker is accepting right now: a relayed
    /// copy of one of them waits for its ack.
    in_flight: Option<HashSet<String>>,
}

impl Batching {
    /// Queues a send behind the others.
    pub(super) fn push(&mut self, sender: Sender, draft: Draft) {
        self.queue.push_back(Queued { sender, draft });
    }

    /// The next batch (at most [`SEND_BATCH_MAX`] of the oldest sends), now in
    /// flight, unless one is in flight already or nothing is queued.
    pub(super) fn start(&mut self) -> Option<(Vec<Sender>, Vec<Draft>)> {
        if self.in_flight.is_some() || self.queue.is_empty() {
            return None;
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
        Some((senders, drafts))
    }

    /// The batch in flight came back (accepted or not).
    pub(super) fn finish(&mut self) {
        self.in_flight = None;
    }

    /// Whether `id` is a send of the batch in flight (not acked yet).
    pub(super) fn holds(&self, id: &str) -> bool {
        self.in_flight.as_ref().is_some_and(|ids| ids.contains(id))
    }

    /// Nothing in flight and nothing queued.
    pub(super) fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::UserInfo;
    use std::sync::Arc;

    fn send(batching: &mut Batching, to: &Outlet, n: usize) -> Vec<String> {
        let user = Arc::new(UserInfo {
            id: "u1".into(),
            name: "Ann".into(),
        });
        (0..n)
            .map(|i| {
                let draft = Draft::new(user.clone(), format!("hi {i}"), None);
                let id = draft.id.clone();
                let sender = Sender {
                    session: Uuid::nil(),
                    user_id: user.id.clone(),
                    moderator: false,
                    spam_print: None,
                    to: Some(to.clone()),
                    format: FrameFormat::V1,
                    client_ref: Some(format!("r{i}")),
                    arrived: Instant::now(),
                    reply: None,
                };
                batching.push(sender, draft);
                id
            })
            .collect()
    }

    #[actix::test]
    async fn one_batch_in_flight_in_arrival_order() {
        let to = super::super::test_outlet();
        let mut b = Batching::default();
        assert!(b.is_idle());
        assert!(b.start().is_none(), "nothing queued");
        let ids = send(&mut b, &to, 3);
        let (senders, drafts) = b.start().expect("a batch");
        assert_eq!(
            drafts.iter().map(|d| &d.id).collect::<Vec<_>>(),
            ids.iter().collect::<Vec<_>>()
        );
        let refs: Vec<_> = senders
            .iter()
            .map(|s| s.client_ref.clone().unwrap())
            .collect();
        assert_eq!(refs, ["r0", "r1", "r2"]);
        assert!(ids.iter().all(|id| b.holds(id)));
        assert!(!b.is_idle());

        let later = send(&mut b, &to, 1);
        assert!(b.start().is_none(), "one batch in flight");
        assert!(!b.holds(&later[0]), "queued, not in flight");
        b.finish();
        assert!(!b.holds(&ids[0]));
        assert!(!b.is_idle(), "one still queued");
        let (_, drafts) = b.start().expect("the next batch");
        assert_eq!(drafts[0].id, later[0]);
        b.finish();
        assert!(b.is_idle());
    }

    #[actix::test]
    async fn a_batch_takes_at_most_the_max() {
        let to = super::super::test_outlet();
        let mut b = Batching::default();
        send(&mut b, &to, SEND_BATCH_MAX + 3);
        assert_eq!(b.start().expect("full batch").1.len(), SEND_BATCH_MAX);
        b.finish();
        assert_eq!(b.start().expect("the rest").1.len(), 3);
    }
}
