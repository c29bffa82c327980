//! The job recorder: jobs of concurrent submissions recorded together,
//! each with its own row, and a failure shared by the jobs of its statement.

use crate::helpers::{company, TestApp};
use futures_util::future::join_all;
use sync_ingest::{
    domain::Entity,
    store::{is_transient, Job, JobRecorder, JobStatus, NewJob, RecordError},
};
use uuid::Uuid;

fn new_job(n: i32) -> NewJob {
    NewJob {
        correlation_id: Uuid::now_v7(),
        company_guid: company(),
        entity: if n % 2 == 0 {
            Entity::Pieces
        } else {
            Entity::Projects
        },
        operation: sync_ingest::domain::Operation::Upsert,
        item_count: n,
        dry_run: n % 3 == 0,
        shard: n % 4,
        submitted_by: format!("key:{n}"),
    }
}

/// Empty batches' jobs start succeeded; the rest queued.
fn status(n: i32) -> JobStatus {
    if n % 5 == 0 {
        JobStatus::Succeeded
    } else {
        JobStatus::Queued
    }
}

fn assert_row_is(row: &Job, job: &NewJob, status: JobStatus) {
    assert_eq!(row.correlation_id, job.correlation_id);
    assert_eq!(row.company_guid, job.company_guid);
    assert_eq!(row.entity.0, job.entity);
    assert_eq!(row.item_count, job.item_count);
    assert_eq!(row.dry_run, job.dry_run);
    assert_eq!(row.shard, job.shard);
    assert_eq!(row.status, status);
    let finished = status.is_finished();
    let zero = finished.then_some(0);
    assert_eq!(
        (row.inserted, row.updated, row.unchanged),
        (zero, zero, zero)
    );
    assert_eq!(row.started_at.is_some(), finished);
    assert_eq!(row.completed_at.is_some(), finished);
}

#[tokio::test]
async fn concurrent_jobs_are_recorded_together_each_with_its_own_row() {
    let app = TestApp::spawn().await;
    let recorder = JobRecorder::start(app.pool.clone());
    let jobs: Vec<NewJob> = (1..=150).map(new_job).collect();
    // All are handed over before the recorder first runs (this test's
    // runtime has one thread), so they go in as few statements as the
    // group size allows.
    let rows = join_all(
        jobs.iter()
            .zip(1..)
            .map(|(job, n)| recorder.record(job.clone(), status(n))),
    )
    .await;
    for ((row, job), n) in rows.iter().zip(&jobs).zip(1..) {
        let row = row.as_ref().expect("recorded");
        assert_row_is(row, job, status(n));
    }
    let (stored, statements): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT submitted_at) FROM sync_jobs WHERE submitted_by LIKE 'key:%'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(stored, 150);
    // A statement's rows share its transaction's `now()`.
    assert!(
        (2..=10).contains(&statements),
        "150 jobs in {statements} statements"
    );
    let submitted_by: String =
        sqlx::query_scalar("SELECT submitted_by FROM sync_jobs WHERE correlation_id = $1")
            .bind(jobs[41].correlation_id)
            .fetch_one(&app.pool)
            .await
            .expect("row");
    assert_eq!(submitted_by, "key:42");
}

#[tokio::test]
async fn a_failed_statement_fails_each_of_its_jobs_and_the_recorder_goes_on() {
    let app = TestApp::spawn().await;
    let recorder = JobRecorder::start(app.pool.clone());
    // A negative count breaks the table's CHECK: the whole statement fails.
    let broken = NewJob {
        item_count: -1,
        ..new_job(2)
    };
    let together = [new_job(1), broken, new_job(3)];
    let results = join_all(
        together
            .iter()
            .map(|job| recorder.record(job.clone(), JobStatus::Queued)),
    )
    .await;
    for result in &results {
        match result {
            Err(RecordError::Database(error)) => assert!(!is_transient(error), "{error}"),
            other => panic!("expected the statement's error, got {other:?}"),
        }
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_jobs")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(stored, 0, "nothing of a failed statement is kept");
    let later = new_job(4);
    let row = recorder
        .record(later.clone(), JobStatus::Queued)
        .await
        .expect("recorded after the failure");
    assert_row_is(&row, &later, JobStatus::Queued);
}

#[tokio::test]
async fn a_job_recorded_without_a_database_gets_a_transient_error() {
    let app = TestApp::spawn().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect(&app.settings.database_url)
        .await
        .expect("pool");
    let recorder = JobRecorder::start(pool.clone());
    pool.close().await;
    match recorder.record(new_job(1), JobStatus::Queued).await {
        Err(RecordError::Database(error)) => assert!(is_transient(&error), "{error}"),
        other => panic!("expected a transient error, got {other:?}"),
    }
}
