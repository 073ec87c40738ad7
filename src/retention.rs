//! `storage.retention_days`: messages older than that are deleted in the
//! background, in small batches, so writes never wait long behind a delete.
//! The first pass starts a few seconds after startup, then one every hour.
//! Every instance of a cluster runs it; deleting twice is harmless.

use crate::store::SharedPipeline;
use std::time::Duration;
use tokio::sync::watch;

const FIRST_PASS_AFTER: Duration = Duration::from_secs(3);
const PASS_EVERY: Duration = Duration::from_secs(3600);
/// Rows per delete: one short transaction each.
const BATCH: u32 = 500;
/// Between batches, so Persist's transactions interleave with the deletes.
const PAUSE: Duration = Duration::from_millis(20);
const DAY_MS: i64 = 86_400_000;

pub fn spawn(pipeline: SharedPipeline, days: u64, shutdown: watch::Receiver<bool>) {
    if days == 0 {
        return;
    }
    actix::spawn(async move {
        tokio::time::sleep(FIRST_PASS_AFTER).await;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let cutoff =
                crate::protocol::now_ms().saturating_sub(DAY_MS.saturating_mul(days as i64));
            match pass(&pipeline, cutoff, &shutdown).await {
                Ok(0) => tracing::debug!("retention: nothing to delete"),
                Ok(deleted) => tracing::info!(deleted, days, "retention: deleted old messages"),
                Err(error) => tracing::warn!(%error, "retention pass failed; next one in an hour"),
            }
            crate::metrics::get().retention_runs.increment(1);
            tokio::time::sleep(PASS_EVERY).await;
        }
    });
}

/// Deletes everything older than `cutoff_ms`, a batch at a time.
async fn pass(
    pipeline: &SharedPipeline,
    cutoff_ms: i64,
    shutdown: &watch::Receiver<bool>,
) -> Result<usize, crate::store::StoreError> {
    let mut total = 0;
    loop {
        let deleted = pipeline.delete_older_than(cutoff_ms, BATCH).await?;
        total += deleted;
        crate::metrics::get()
            .retention_deleted
            .increment(deleted as u64);
        if deleted < BATCH as usize || *shutdown.borrow() {
            return Ok(total);
        }
        tokio::time::sleep(PAUSE).await;
    }
}
