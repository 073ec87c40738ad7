//! Read markers on their way to the store: each user's newest marker per
//! room waits here and goes out in one write about twice a second, so a
//! client marking every message it shows costs one row per flush, not one
//! write per message. A marker never moves back (the store's upsert keeps
//! the highest).

use crate::store::SharedStore;
use crate::FastMap;
use std::sync::Mutex;
use std::time::Duration;

/// How often waiting markers are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

#[derive(Default)]
pub struct ReadMarkers {
    waiting: Mutex<FastMap<(String, String), u64>>,
}

impl ReadMarkers {
    /// `user` has read `room` up to `seq`.
    pub fn note(&self, user: &str, room: &str, seq: u64) {
        if let Ok(mut waiting) = self.waiting.lock() {
            let entry = waiting
                .entry((user.to_string(), room.to_string()))
                .or_insert(0);
            *entry = (*entry).max(seq);
        }
    }

    /// A marker of `user` in `room` still waiting to be written.
    pub fn pending(&self, user: &str, room: &str) -> Option<u64> {
        let waiting = self.waiting.lock().ok()?;
        waiting.get(&(user.to_string(), room.to_string())).copied()
    }

    fn take(&self) -> Vec<(String, String, u64)> {
        let Ok(mut waiting) = self.waiting.lock() else {
            return Vec::new();
        };
        let taken = std::mem::take(&mut *waiting);
        taken
            .into_iter()
            .map(|((user, room), seq)| (user, room, seq))
            .collect()
    }

    /// Writes what waits; on failure it waits again for the next flush.
    pub async fn flush(&self, store: &SharedStore) {
        let markers = self.take();
        if markers.is_empty() {
            return;
        }
        if let Err(error) = crate::store::rooms::save_markers(store.as_ref(), markers.clone()).await
        {
            tracing::warn!(%error, "read markers not stored; retrying");
            for (user, room, seq) in markers {
                self.note(&user, &room, seq);
            }
        }
    }

    /// Flushes every [`FLUSH_EVERY`] until the process ends.
    pub fn spawn(self: std::sync::Arc<Self>, store: SharedStore) {
        actix::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                tick.tick().await;
                self.flush(&store).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::ReadMarkers;

    #[test]
    fn markers_coalesce_to_the_highest_per_user_and_room() {
        let m = ReadMarkers::default();
        m.note("a", "r", 5);
        m.note("a", "r", 3);
        m.note("a", "s", 1);
        m.note("b", "r", 9);
        let mut taken = m.take();
        taken.sort();
        assert_eq!(
            taken,
            vec![
                ("a".into(), "r".into(), 5),
                ("a".into(), "s".into(), 1),
                ("b".into(), "r".into(), 9)
            ]
        );
        assert!(m.take().is_empty());
        m.note("a", "r", 2);
        assert_eq!((m.pending("a", "r"), m.pending("a", "s")), (Some(2), None));
    }
}
