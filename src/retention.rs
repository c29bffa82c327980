//! Purging what is past its retention: finished jobs after
//! `SYNC_JOB_RETENTION_HOURS`, idempotency keys after 24 h. Bounded per run
//! so a large backlog of old rows never holds long locks.

use crate::store::{self, idempotency, jobs};
use sqlx::{PgConnection, PgPool};
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

/// Deletes at most `CHUNK * CHUNKS_PER_RUN` rows of each kind. Every
/// process runs the purge, but one at a time does the work: the others
/// find the purge's lock taken and skip their round.
pub async fn purge_once(pool: &PgPool, retention_hours: u64) -> Result<Purged, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    if !store::try_lock_session(&mut conn, PURGE_LOCK).await? {
        return Ok(Purged::default());
    }
    let purged = purge_chunks(&mut conn, retention_hours).await;
    // On error the connection may be gone, and the lock with it.
    let _ = store::unlock_session(&mut conn, PURGE_LOCK).await;
    purged
}

/// The session lock held by the process that purges.
const PURGE_LOCK: &str = "sync-ingest retention";

async fn purge_chunks(
    conn: &mut PgConnection,
    retention_hours: u64,
) -> Result<Purged, sqlx::Error> {
    let hours = i32::try_from(retention_hours).unwrap_or(i32::MAX);
    let mut purged = Purged::default();
    for _ in 0..CHUNKS_PER_RUN {
        let n = jobs::purge_finished(conn, hours, CHUNK).await?;
        purged.jobs += n;
        if n < CHUNK as u64 {
            break;
        }
    }
    for _ in 0..CHUNKS_PER_RUN {
        let n = idempotency::purge_expired(conn, CHUNK).await?;
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
