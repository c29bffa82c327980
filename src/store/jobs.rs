//! The `sync_jobs` ledger: one row per accepted request.

pub use super::job::{EntityColumn, Job, JobError, JobErrorCode, JobStatus, NewJob};
use super::StoreError;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

pub(super) const COLUMNS: &str =
    "correlation_id, company_guid, entity, operation, status, item_count, \
     inserted, updated, unchanged, deleted, not_found, error, attempts, dry_run, shard, \
     submitted_at, started_at, completed_at";

/// Records jobs, several in one statement: each with the status it starts
/// in — `Queued`, or `Succeeded` for an empty batch, finished at once with
/// nothing applied. Returns the rows in the order of `jobs`.
#[tracing::instrument(skip_all, fields(jobs = jobs.len()))]
pub async fn insert_all(
    pool: &PgPool,
    jobs: &[(NewJob, JobStatus)],
) -> Result<Vec<Job>, sqlx::Error> {
    fn column<'a, T>(
        jobs: &'a [(NewJob, JobStatus)],
        f: impl Fn(&'a (NewJob, JobStatus)) -> T,
    ) -> Vec<T> {
        jobs.iter().map(f).collect()
    }
    let ids = column(jobs, |(job, _)| job.correlation_id);
    let rows: Vec<Job> = sqlx::query_as(&format!(
        "INSERT INTO sync_jobs (correlation_id, company_guid, entity, status, item_count, \
             dry_run, shard, submitted_by, operation, inserted, updated, unchanged, deleted, \
             not_found, started_at, completed_at) \
         SELECT id, company, entity, status, item_count, dry_run, shard, submitted_by, operation, \
             CASE WHEN finished THEN 0 END, CASE WHEN finished THEN 0 END, \
             CASE WHEN finished THEN 0 END, \
             CASE WHEN finished AND operation = 'delete' THEN 0 END, \
             CASE WHEN finished AND operation = 'delete' THEN 0 END, \
             CASE WHEN finished THEN now() END, CASE WHEN finished THEN now() END \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int4[], $6::bool[], \
             $7::int4[], $8::text[], $9::bool[], $10::text[]) \
             AS new (id, company, entity, status, item_count, dry_run, shard, submitted_by, \
                     finished, operation) \
         RETURNING {COLUMNS}"
    ))
    .bind(&ids)
    .bind(column(jobs, |(job, _)| job.company_guid))
    .bind(column(jobs, |(job, _)| job.entity.as_str()))
    .bind(column(jobs, |(_, status)| status.as_str()))
    .bind(column(jobs, |(job, _)| job.item_count))
    .bind(column(jobs, |(job, _)| job.dry_run))
    .bind(column(jobs, |(job, _)| job.shard))
    .bind(column(jobs, |(job, _)| job.submitted_by.as_str()))
    .bind(column(jobs, |(_, status)| status.is_finished()))
    .bind(column(jobs, |(job, _)| job.operation.as_str()))
    .fetch_all(pool)
    .await?;
    // RETURNING gives no order: put the rows back in the callers'.
    let mut rows: std::collections::HashMap<Uuid, Job> = rows
        .into_iter()
        .map(|job| (job.correlation_id, job))
        .collect();
    ids.iter()
        .map(|id| {
            // Every row inserted is returned: a missing one is a bug.
            rows.remove(id).ok_or(sqlx::Error::RowNotFound)
        })
        .collect()
}

/// Removes a job the broker never confirmed. Only a still-queued job is
/// removed: if a worker already took it, the message did arrive and the job
/// stays. Returns whether it was removed.
pub async fn delete_unconfirmed(pool: &PgPool, id: Uuid) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM sync_jobs WHERE correlation_id = $1 AND status = 'queued'")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A job as its owner sees it; `company` None means any company (SystemAdmin).
pub async fn find_visible(
    pool: &PgPool,
    id: Uuid,
    company: Option<Uuid>,
) -> Result<Option<Job>, StoreError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM sync_jobs \
         WHERE correlation_id = $1 AND ($2::uuid IS NULL OR company_guid = $2)"
    ))
    .bind(id)
    .bind(company)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)
}

/// Reads a job without locking it.
pub async fn find(conn: &mut PgConnection, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM sync_jobs WHERE correlation_id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Marks a delivery of the job as started, committed on its own so the
/// attempt counts even if the apply transaction is lost. A finished job is
/// returned unchanged.
///
/// The commit does not wait for the WAL flush (`synchronous_commit = off`):
/// should the database crash right after, all that is lost is a `processing`
/// mark and an attempt count, and the job is applied again anyway — while
/// every batch saves a disk flush.
pub async fn start_attempt(conn: &mut PgConnection, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    let job = mark_started(&mut tx, id).await?;
    tx.commit().await?;
    Ok(job)
}

async fn mark_started(conn: &mut PgConnection, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE sync_jobs SET \
             status = CASE WHEN status IN ('queued', 'processing') THEN 'processing' ELSE status END, \
             attempts = attempts + CASE WHEN status IN ('queued', 'processing') THEN 1 ELSE 0 END, \
             started_at = CASE WHEN status IN ('queued', 'processing') \
                 THEN COALESCE(started_at, now()) ELSE started_at END \
         WHERE correlation_id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Locks the job row for the rest of the transaction; this is what makes a
/// concurrent redelivery wait and then see the job finished.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM sync_jobs WHERE correlation_id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Finishes a job as succeeded with its counts.
pub async fn finish_succeeded(
    conn: &mut PgConnection,
    id: Uuid,
    inserted: i32,
    updated: i32,
    unchanged: i32,
) -> Result<Job, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE sync_jobs SET status = 'succeeded', inserted = $2, updated = $3, \
             unchanged = $4, completed_at = now() \
         WHERE correlation_id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(inserted)
    .bind(updated)
    .bind(unchanged)
    .fetch_one(conn)
    .await
}

/// Finishes a delete job as succeeded with its counts.
pub async fn finish_deleted(
    conn: &mut PgConnection,
    id: Uuid,
    deleted: i32,
    not_found: i32,
) -> Result<Job, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE sync_jobs SET status = 'succeeded', inserted = 0, updated = 0, unchanged = 0, \
             deleted = $2, not_found = $3, completed_at = now() \
         WHERE correlation_id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(deleted)
    .bind(not_found)
    .fetch_one(conn)
    .await
}

/// Cancels a job that is still queued (of `company`, unless None); None if
/// there is no such job, or it is no longer queued. A worker taking the job
/// updates the same row, so the two are serialised: a job is cancelled or
/// started, never both.
pub async fn cancel(
    pool: &PgPool,
    id: Uuid,
    company: Option<Uuid>,
) -> Result<Option<Job>, StoreError> {
    sqlx::query_as(&format!(
        "UPDATE sync_jobs SET status = 'cancelled', completed_at = now() \
         WHERE correlation_id = $1 AND ($2::uuid IS NULL OR company_guid = $2) \
           AND status = 'queued' RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(company)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)
}

/// Finishes a job as failed, unless it already finished. Returns the job as
/// it now stands (None if it does not exist).
pub async fn finish_failed(
    conn: &mut PgConnection,
    id: Uuid,
    error: &JobError,
) -> Result<Option<Job>, sqlx::Error> {
    let error = sqlx::types::Json(error);
    let updated: Option<Job> = sqlx::query_as(&format!(
        "UPDATE sync_jobs SET status = 'failed', error = $2, completed_at = now(), \
             started_at = COALESCE(started_at, now()) \
         WHERE correlation_id = $1 AND status IN ('queued', 'processing') RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(error)
    .fetch_optional(&mut *conn)
    .await?;
    match updated {
        Some(job) => Ok(Some(job)),
        None => find(conn, id).await,
    }
}

/// Open jobs ahead of this one in its shard (queued or processing, submitted
/// earlier).
pub async fn open_jobs_ahead(pool: &PgPool, job: &Job) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM sync_jobs \
         WHERE shard = $1 AND status IN ('queued', 'processing') AND submitted_at < $2",
    )
    .bind(job.shard)
    .bind(job.submitted_at)
    .fetch_one(pool)
    .await
    .map_err(StoreError::from)
}

/// A company's open jobs (queued or processing): (jobs, items).
pub async fn open_backlog(pool: &PgPool, company: Uuid) -> Result<(i64, i64), StoreError> {
    sqlx::query_as(
        "SELECT count(*), coalesce(sum(item_count), 0)::int8 FROM sync_jobs \
         WHERE company_guid = $1 AND status IN ('queued', 'processing')",
    )
    .bind(company)
    .fetch_one(pool)
    .await
    .map_err(StoreError::from)
}

/// Jobs finished per shard within the last `seconds`.
pub async fn recently_finished_by_shard(
    pool: &PgPool,
    seconds: i32,
) -> Result<Vec<(i32, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT shard, count(*) FROM sync_jobs \
         WHERE completed_at > now() - make_interval(secs => $1) AND status <> 'cancelled' \
         GROUP BY shard",
    )
    .bind(f64::from(seconds))
    .fetch_all(pool)
    .await
}

/// Deletes up to `limit` jobs finished more than `hours` ago; returns how many.
pub async fn purge_finished(
    conn: &mut PgConnection,
    hours: i32,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM sync_jobs WHERE correlation_id IN (SELECT correlation_id FROM sync_jobs \
         WHERE completed_at < now() - make_interval(hours => $1) LIMIT $2)",
    )
    .bind(hours)
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
