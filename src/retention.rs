//! Purging what is past its retention: finished jobs after
//! `SYNC_JOB_RETENTION_HOURS`, idempotency keys after 24 h, tombstones after
//! `SYNC_TOMBSTONE_RETENTION_DAYS`. Bounded per run so a large backlog of
//! old rows never holds long locks.

use crate::store::{self, deletions, idempotency, jobs};
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
    pub tombstones: u64,
}

/// How long finished rows are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub job_hours: u64,
    pub tombstone_days: u64,
}

impl Retention {
    /// The retention `settings` ask for.
    pub fn of(settings: &crate::config::Settings) -> Retention {
        Retention {
            job_hours: settings.job_retention_hours,
            tombstone_days: settings.tombstone_retention_days,
        }
    }
}

/// Deletes at most `CHUNK * CHUNKS_PER_RUN` rows of each kind. Every
/// process runs the purge, but one at a time does the work: the others
/// find the purge's lock taken and skip their round.
pub async fn purge_once(pool: &PgPool, retention: Retention) -> Result<Purged, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    if !store::try_lock_session(&mut conn, PURGE_LOCK).await? {
        return Ok(Purged::default());
    }
    let purged = purge_chunks(&mut conn, retention).await;
    // On error the connection may be gone, and the lock with it.
    let _ = store::unlock_session(&mut conn, PURGE_LOCK).await;
    purged
}

/// The session lock held by the process that purges.
const PURGE_LOCK: &str = "sync-ingest retention";

async fn purge_chunks(
    conn: &mut PgConnection,
    retention: Retention,
) -> Result<Purged, sqlx::Error> {
    Ok(Purged {
        jobs: in_chunks(conn, Expired::Jobs, retention).await?,
        idempotency_keys: in_chunks(conn, Expired::IdempotencyKeys, retention).await?,
        tombstones: in_chunks(conn, Expired::Tombstones, retention).await?,
    })
}

/// The kinds of row purged.
#[derive(Clone, Copy)]
enum Expired {
    Jobs,
    IdempotencyKeys,
    Tombstones,
}

/// Purges `what` a chunk at a time until a chunk comes out short, at most
/// `CHUNKS_PER_RUN` times; how many rows went.
async fn in_chunks(
    conn: &mut PgConnection,
    what: Expired,
    retention: Retention,
) -> Result<u64, sqlx::Error> {
    let hours = i32::try_from(retention.job_hours).unwrap_or(i32::MAX);
    let mut purged = 0;
    for _ in 0..CHUNKS_PER_RUN {
        let n = match what {
            Expired::Jobs => jobs::purge_finished(conn, hours, CHUNK).await?,
            Expired::IdempotencyKeys => idempotency::purge_expired(conn, CHUNK).await?,
            Expired::Tombstones => {
                deletions::purge_tombstones(conn, retention.tombstone_days, CHUNK).await?
            }
        };
        purged += n;
        if n < CHUNK as u64 {
            break;
        }
    }
    Ok(purged)
}

/// Purges every `every` until `stop` fires.
pub async fn run(pool: PgPool, retention: Retention, every: Duration, stop: CancellationToken) {
    loop {
        match purge_once(&pool, retention).await {
            Ok(purged) if purged != Purged::default() => {
                tracing::info!(
                    jobs = purged.jobs,
                    idempotency_keys = purged.idempotency_keys,
                    tombstones = purged.tombstones,
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
