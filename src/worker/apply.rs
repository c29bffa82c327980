//! Applying one batch: the job row and the upsert in one transaction.

use crate::domain::Batch;
use crate::queue::BatchMessage;
use crate::store::{self, jobs, Job, JobError, StoreError};
use sqlx::{Acquire, PgPool};

/// A job after a delivery of its message.
#[derive(Debug)]
pub struct Applied {
    pub job: Job,
    /// True if this delivery finished it; false if an earlier one had.
    pub just_finished: bool,
}

impl Applied {
    fn earlier(job: Job) -> Option<Self> {
        Some(Applied {
            job,
            just_finished: false,
        })
    }

    fn now(job: Option<Job>) -> Option<Self> {
        job.map(|job| Applied {
            job,
            just_finished: true,
        })
    }
}

/// Applies a batch exactly once. Returns the finished job, or None if the
/// job does not exist (its publish was never confirmed, so the api removed
/// it and answered the client with an error: nothing may be written).
pub async fn apply_batch(
    pool: &PgPool,
    message: &BatchMessage,
) -> Result<Option<Applied>, StoreError> {
    let id = message.correlation_id;
    let mut conn = pool.acquire().await?;
    // Committed on its own so every delivery shows in `attempts`, even one
    // whose transaction is lost with the process.
    let Some(job) = jobs::start_attempt(&mut conn, id).await? else {
        return Ok(None);
    };
    if job.status.is_finished() {
        return Ok(Applied::earlier(job));
    }
    let mut tx = conn.begin().await?;
    let Some(job) = jobs::lock(&mut tx, id).await? else {
        return Ok(None);
    };
    if job.status.is_finished() {
        // A concurrent delivery of the same message finished it first.
        tx.commit().await?;
        return Ok(Applied::earlier(job));
    }
    let (outcome, violations) = if message.dry_run {
        // The whole apply runs, inside a savepoint rolled back at once: the
        // counts and violations are real, the data untouched.
        let mut trial = tx.begin().await?;
        let checked = check_and_upsert(&mut trial, &message.batch).await?;
        trial.rollback().await?;
        checked
    } else {
        check_and_upsert(&mut tx, &message.batch).await?
    };
    if !violations.is_empty() {
        tx.rollback().await?;
        let error = JobError::company_access_violation(violations);
        return Ok(Applied::now(
            jobs::finish_failed(&mut conn, id, &error).await?,
        ));
    }
    let job = jobs::finish_succeeded(
        &mut tx,
        id,
        count(outcome.inserted),
        count(outcome.updated),
        count(outcome.unchanged),
    )
    .await?;
    tx.commit().await?;
    Ok(Applied::now(Some(job)))
}

/// Upserts the batch and lists the items that touch another company's data
/// (their GUID or a reference); the caller rolls back if any do.
async fn check_and_upsert(
    conn: &mut sqlx::PgConnection,
    batch: &crate::domain::Batch,
) -> Result<(store::UpsertOutcome, Vec<usize>), StoreError> {
    let mut violations = store::find_foreign_references(conn, batch).await?;
    let outcome = store::upsert_batch(conn, batch).await?;
    violations.extend(&outcome.foreign_indexes);
    violations.sort_unstable();
    violations.dedup();
    Ok((outcome, violations))
}

/// Marks the job of an unusable message failed (if it still runs).
pub async fn fail_job(
    pool: &PgPool,
    id: uuid::Uuid,
    error: &JobError,
) -> Result<Option<Job>, StoreError> {
    let mut conn = pool.acquire().await?;
    Ok(jobs::finish_failed(&mut conn, id, error).await?)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The items of a batch, for logs.
pub fn describe(batch: &Batch) -> String {
    format!("{} {}", batch.len(), batch.entity())
}
