//! Applying one batch: the job row and the upsert in one transaction.

use crate::domain::Work;
use crate::queue::BatchMessage;
use crate::store::{
    self, deletions, jobs,
    leases::{self, Fence},
    Job, JobError, StoreError,
};
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

/// What one delivery of a batch came to.
#[derive(Debug)]
pub enum Outcome {
    /// The job is finished (by this delivery or an earlier one).
    Finished(Box<Applied>),
    /// The job does not exist: its publish was never confirmed, so the api
    /// removed it and answered the client with an error; nothing is written.
    NoJob,
    /// This worker no longer holds the shard: nothing was written.
    Fenced,
}

impl From<Option<Applied>> for Outcome {
    fn from(applied: Option<Applied>) -> Self {
        applied.map_or(Outcome::NoJob, |a| Outcome::Finished(Box::new(a)))
    }
}

/// Applies a batch exactly once, under `fence` (None: the dead-letter
/// recorder's and the tests' unfenced use).
pub async fn apply_batch(
    pool: &PgPool,
    message: &BatchMessage<'_>,
    fence: Option<&Fence>,
) -> Result<Outcome, StoreError> {
    let id = message.correlation_id;
    let mut conn = pool.acquire().await?;
    // Committed on its own so every delivery shows in `attempts`, even one
    // whose transaction is lost with the process.
    let Some(job) = jobs::start_attempt(&mut conn, id).await? else {
        return Ok(Outcome::NoJob);
    };
    if job.status.is_finished() {
        return Ok(Applied::earlier(job).into());
    }
    let mut tx = conn.begin().await?;
    let Some(job) = jobs::lock(&mut tx, id).await? else {
        return Ok(Outcome::NoJob);
    };
    if job.status.is_finished() {
        // A concurrent delivery of the same message finished it first.
        tx.commit().await?;
        return Ok(Applied::earlier(job).into());
    }
    if !holds(&mut tx, fence).await? {
        return Ok(Outcome::Fenced);
    }
    let effect = if message.dry_run {
        // The whole apply runs, inside a savepoint rolled back at once: the
        // counts and violations are real, the data untouched.
        let mut trial = tx.begin().await?;
        let checked = check_and_apply(&mut trial, message).await?;
        trial.rollback().await?;
        checked
    } else {
        check_and_apply(&mut tx, message).await?
    };
    let job = match effect {
        Effect::Violations(indexes) => {
            tx.rollback().await?;
            let error = JobError::company_access_violation(indexes);
            return fail_job_on(&mut conn, id, &error, fence).await;
        }
        Effect::Upserted(outcome) => {
            let (inserted, updated) = (count(outcome.inserted), count(outcome.updated));
            jobs::finish_succeeded(&mut tx, id, inserted, updated, count(outcome.unchanged)).await?
        }
        Effect::Deleted { deleted, not_found } => {
            jobs::finish_deleted(&mut tx, id, count(deleted), count(not_found)).await?
        }
    };
    tx.commit().await?;
    Ok(Applied::now(Some(job)).into())
}

/// What applying a message's items came to.
enum Effect {
    /// Items touch another company's data (their indexes): roll back.
    Violations(Vec<usize>),
    Upserted(store::UpsertOutcome),
    Deleted {
        deleted: usize,
        not_found: usize,
    },
}

/// Applies the message's upserts or deletes, unless an item touches
/// another company's data.
async fn check_and_apply(
    conn: &mut sqlx::PgConnection,
    message: &BatchMessage<'_>,
) -> Result<Effect, StoreError> {
    match &message.work {
        Work::Upsert(batch) => check_and_upsert(conn, batch).await,
        Work::Delete(entity, keys) => {
            let violations = deletions::foreign_rows(conn, *entity, keys).await?;
            if !violations.is_empty() {
                return Ok(Effect::Violations(violations));
            }
            let deleted =
                deletions::delete_rows(conn, *entity, keys, message.correlation_id).await?;
            let deleted = usize::try_from(deleted).unwrap_or(usize::MAX);
            Ok(Effect::Deleted {
                deleted,
                not_found: keys.len().saturating_sub(deleted),
            })
        }
    }
}

/// The fence check, where there is a fence.
async fn holds(conn: &mut sqlx::PgConnection, fence: Option<&Fence>) -> Result<bool, StoreError> {
    match fence {
        Some(fence) => Ok(leases::fence(conn, fence).await?),
        None => Ok(true),
    }
}

/// Upserts the batch and lists the items that touch another company's data
/// (their GUID or a reference); the caller rolls back if any do.
async fn check_and_upsert(
    conn: &mut sqlx::PgConnection,
    batch: &crate::domain::Batch<'_>,
) -> Result<Effect, StoreError> {
    let mut violations = store::find_foreign_references(conn, batch).await?;
    let outcome = store::upsert_batch(conn, batch).await?;
    violations.extend(&outcome.foreign_indexes);
    violations.sort_unstable();
    violations.dedup();
    Ok(if violations.is_empty() {
        Effect::Upserted(outcome)
    } else {
        Effect::Violations(violations)
    })
}

/// Marks the job of an unusable message failed (if it still runs), under
/// `fence` where there is one.
pub async fn fail_job(
    pool: &PgPool,
    id: uuid::Uuid,
    error: &JobError,
    fence: Option<&Fence>,
) -> Result<Outcome, StoreError> {
    let mut conn = pool.acquire().await?;
    fail_job_on(&mut conn, id, error, fence).await
}

async fn fail_job_on(
    conn: &mut sqlx::PgConnection,
    id: uuid::Uuid,
    error: &JobError,
    fence: Option<&Fence>,
) -> Result<Outcome, StoreError> {
    let mut tx = conn.begin().await?;
    if !holds(&mut tx, fence).await? {
        return Ok(Outcome::Fenced);
    }
    let job = jobs::finish_failed(&mut tx, id, error).await?;
    tx.commit().await?;
    Ok(Applied::now(job).into())
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The items of a message, for logs.
pub fn describe(work: &Work<'_>) -> String {
    format!(
        "{} {} {}",
        work.operation().as_str(),
        work.len(),
        work.entity()
    )
}
