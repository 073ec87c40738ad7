//! One page of history, shared by the REST endpoint and the `history` frame.

use crate::protocol::{finish_page, ChatMessage, ErrorCode, Rejection};
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
