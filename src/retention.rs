//! Purging what is past its retention: finished jobs after
//! `SYNC_JOB_RETENTION_HOURS`, idempotency keys after 24 h. Bounded per run
//! so a large backlog of old rows never holds long locks.

use crate::store::{idempotency, jobs};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rows deleted per statement.
const CHUNK: i64 = 1000;
/// Statements per run, per table.
const CHUNKS_PER_RUN: u32 = 10;

/// What one purge run removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub jobs: u64,
    pub idempotency_keys: u64,
}

/// Deletes at most `CHUNK * CHUNKS_PER_RUN` rows of each kind.
pub async fn purge_once(pool: &PgPool, retention_hours: u64) -> Result<Purged, sqlx::Error> {
    let hours = i32::try_from(retention_hours).unwrap_or(i32::MAX);
    let mut purged = Purged::default();
    for _ in 0..CHUNKS_PER_RUN {
        let n = jobs::purge_finished(pool, hours, CHUNK).await?;
        purged.jobs += n;
        if n < CHUNK as u64 {
            break;
        }
    }
    for _ in 0..CHUNKS_PER_RUN {
        let n = idempotency::purge_expired(pool, CHUNK).await?;
        purged.idempotency_keys += n;
        if n < CHUNK as u64 {
            break;
        }
    }
    Ok(purged)
}

/// Purges every `every` until `stop` fires.
pub async fn run(pool: PgPool, retention_hours: u64, every: Duration, stop: CancellationToken) {
    loop {
        match purge_once(&pool, retention_hours).await {
            Ok(purged) if purged != Purged::default() => {
                tracing::info!(
                    jobs = purged.jobs,
                    idempotency_keys = purged.idempotency_keys,
                    "purged expired rows"
                )
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "purge failed; will try again"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
