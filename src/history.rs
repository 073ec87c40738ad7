//! One page of history, shared by the REST endpoint and the `history` frame.

use crate::chat::ChatMessage;
use crate::protocol::{ErrorCode, Rejection};
use crate::store::SharedStore;

pub const DEFAULT_PAGE: u32 = 50;

/// The newest `limit` messages with `seq < before`, oldest first, and the cursor
/// of the next older page (`None` when there is none). `limit` is clamped.
pub async fn page(
    store: &SharedStore,
    room: &str,
    before: Option<u64>,
    limit: Option<u32>,
    page_max: u32,
) -> Result<(Vec<ChatMessage>, Option<u64>), Rejection> {
    let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, page_max);
    // One row more than asked tells whether an older page exists.
    let rows = store.page(room, before, limit + 1).await.map_err(|error| {
        tracing::warn!(%error, room, "history read failed");
        Rejection::new(ErrorCode::Unavailable, "history is unavailable right now")
    })?;
    Ok(finish_page(rows, limit as usize))
}

/// Cuts a page fetched with one row more than `limit` (newest-first from the store
/// reversed to oldest-first): returns the page and its `next_before`.
pub fn finish_page(
    mut rows_oldest_first: Vec<ChatMessage>,
    limit: usize,
) -> (Vec<ChatMessage>, Option<u64>) {
    if rows_oldest_first.len() > limit {
        let extra = rows_oldest_first.len() - limit;
        rows_oldest_first.drain(..extra);
        let next = rows_oldest_first.first().map(|m| m.seq);
        (rows_oldest_first, next)
    } else {
        (rows_oldest_first, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let mk = |seq| ChatMessage {
            room: "g".into(),
            seq,
            id: String::new(),
            user_id: String::new(),
            user_name: String::new(),
            content: String::new(),
            timestamp_ms: 0,
            client_ref: None,
            ..ChatMessage::default()
        };
        let (page, next) = finish_page((4..=9).map(mk).collect(), 5);
        assert_eq!(
            page.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![5, 6, 7, 8, 9]
        );
        assert_eq!(next, Some(5));
        let (page, next) = finish_page((1..=3).map(mk).collect(), 5);
        assert_eq!(page.len(), 3);
        assert_eq!(next, None);
    }
}
