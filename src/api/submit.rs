//! `POST /api/v1/sync/{entity}` and `POST /api/v1/sync/{entity}/delete`:
//! validate, tenant-check, record, publish — once per idempotency key — and
//! optionally wait for the result. Upserts and deletes take the same path.

use super::answer::{respond, Accepted};
use super::body::{read_body, request_hash, require_json};
use super::{backpressure, error::ApiError, prefer, state::AppState};
use crate::{
    auth::{access, Principal},
    domain::{BatchError, Entity, FieldError, Manifest, Operation, Work},
    queue::{ForwardedMessage, PublishError},
    store::{
        idempotency::{KeyLock, Recorded},
        jobs, Job, JobStatus, NewJob,
    },
    telemetry::{metrics as m, trace::TraceContext},
};
use axum::{
    body::Body,
    extract::{rejection::QueryRejection, Extension, Path, Query, State},
    http::HeaderMap,
    response::Response,
};
use serde::Deserialize;
use std::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

/// Query parameters of a submission.
#[derive(Debug, Default, Deserialize)]
pub struct SubmitParams {
    /// Run everything, then roll the upsert back.
    #[serde(default)]
    pub dry_run: bool,
}

/// A submission that passed every check, ready to be queued.
struct Submission {
    manifest: Manifest,
    /// The request body, forwarded as sent: read into its message.
    message: ForwardedMessage,
    dry_run: bool,
    request_hash: Vec<u8>,
    /// The request's trace, continued in the message.
    trace: TraceContext,
}

/// Accepts a batch of one entity's items to upsert or, on the route that
/// carries `Operation::Delete`, the keys of its rows to delete.
#[tracing::instrument(skip_all, fields(entity = %entity, operation = operation.as_str(), correlation_id, company_guid = %principal.company, item_count))]
#[allow(clippy::too_many_arguments)]
pub async fn submit(
    State(state): State<AppState>,
    Extension(operation): Extension<Operation>,
    Path(entity): Path<String>,
    params: Result<Query<SubmitParams>, QueryRejection>,
    principal: Principal,
    trace: Option<Extension<TraceContext>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (entity, params) = target(&principal, &entity, params)?;
    require_json(&headers)?;
    let key = prefer::idempotency_key(&headers)?;
    let wait = prefer::wait(&headers);
    let started = Instant::now();
    let message = read_body(&state, (operation, entity), &headers, body).await?;
    // Held until the handler has its answer, waiting (`Prefer: wait`)
    // included, or the client goes away.
    let _slot = state.in_flight.take()?;
    let started = stage_done("read", started);
    // Only a keyed request is ever compared with another one.
    let request_hash = if key.is_some() {
        request_hash((operation, entity), params.dry_run, message.items())
    } else {
        Vec::new()
    };
    let (manifest, message) = parse(&state, (operation, entity), message).await?;
    stage_done("check", started);
    let forbidden = access::forbidden_items(&principal, &manifest);
    if !forbidden.is_empty() {
        return Err(ApiError::CompanyAccessDenied { indexes: forbidden });
    }
    tracing::Span::current().record("item_count", manifest.len());
    let submission = Submission {
        request_hash,
        manifest,
        message,
        dry_run: params.dry_run,
        trace: trace.map_or_else(TraceContext::new_root, |Extension(t)| t),
    };
    let correlation_id = Uuid::now_v7();
    tracing::Span::current().record("correlation_id", tracing::field::display(correlation_id));
    // Registered before publishing, so a quick result cannot slip past.
    let waiter = wait.map(|_| state.waiters.register(correlation_id));
    let (accepted, replayed) =
        queue_to_the_end(&state, principal, key, submission, correlation_id).await?;
    let waiter = match waiter {
        Some(waiter) if accepted.job.correlation_id == correlation_id => Some(waiter),
        // A replay waits for the original job.
        Some(_) => Some(state.waiters.register(accepted.job.correlation_id)),
        None => None,
    };
    respond(&state, accepted, wait.zip(waiter), replayed).await
}

/// The entity a submission names and its query, once the caller may write.
fn target(
    principal: &Principal,
    entity: &str,
    params: Result<Query<SubmitParams>, QueryRejection>,
) -> Result<(Entity, SubmitParams), ApiError> {
    if !principal.can_write() {
        return Err(ApiError::InsufficientScope);
    }
    let entity: Entity = entity
        .parse()
        .map_err(|e: crate::domain::UnknownEntity| ApiError::NotFound(e.to_string()))?;
    let Query(params) = params.map_err(|rejection| {
        ApiError::Validation(vec![FieldError {
            index: None,
            field: Some("dry_run".into()),
            message: rejection.body_text(),
        }])
    })?;
    Ok((entity, params))
}

/// Queues a submission in a task of its own: recording, publishing and (on
/// a failed publish) withdrawing the job run to the end even if the client
/// hangs up. Cut short between the job row and the confirm, they would
/// leave a job queued for ever with no message.
async fn queue_to_the_end(
    state: &AppState,
    principal: Principal,
    key: Option<String>,
    submission: Submission,
    correlation_id: Uuid,
) -> Result<(Accepted, bool), ApiError> {
    let queued = tokio::spawn(
        queue(state.clone(), principal, key, submission, correlation_id)
            .instrument(tracing::Span::current()),
    );
    queued
        .await
        .map_err(|e| ApiError::Internal(format!("submission panicked: {e}")))?
}

/// Queues a submission, once per idempotency key. Returns (accepted, replayed).
async fn queue(
    state: AppState,
    principal: Principal,
    key: Option<String>,
    submission: Submission,
    correlation_id: Uuid,
) -> Result<(Accepted, bool), ApiError> {
    match key {
        Some(key) => {
            let _permit = state
                .keyed_submissions
                .acquire()
                .await
                .map_err(|_| ApiError::Internal("submission limiter closed".into()))?;
            submit_once(&state, &principal, &key, submission, correlation_id).await
        }
        None => Ok((
            submit_new(&state, &principal, submission, correlation_id).await?,
            false,
        )),
    }
}

/// Parses and validates on the blocking pool, a few batches at a time:
/// a 1000-piece body is a millisecond or more of CPU, which would stall the
/// async workers, and parsing more batches at once than there are cores
/// only multiplies the memory held by half-built batches.
async fn parse(
    state: &AppState,
    (operation, entity): (Operation, Entity),
    message: ForwardedMessage,
) -> Result<(Manifest, ForwardedMessage), ApiError> {
    let _permit = state
        .parse_permits
        .acquire()
        .await
        .map_err(|_| ApiError::Internal("parse limiter closed".into()))?;
    let limit = state.settings.batch_limit(entity);
    let (message, parsed) = tokio::task::spawn_blocking(move || {
        let read =
            Work::read(operation, entity, message.items(), limit).map(|work| Manifest::of(&work));
        (message, read)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("parsing panicked: {e}")))?;
    match parsed {
        Ok(manifest) => Ok((manifest, message)),
        Err(e @ BatchError::TooLarge { .. }) => Err(ApiError::BatchTooLarge(e.to_string())),
        Err(BatchError::Invalid(errors)) => Err(ApiError::Validation(errors)),
    }
}

/// Records how long a stage of a submission took (`sync_submission_stage_seconds`:
/// with the confirm's own histogram, where a request's time goes); returns
/// when the next stage starts.
fn stage_done(stage: &'static str, started: Instant) -> Instant {
    let now = Instant::now();
    metrics::histogram!(m::SUBMISSION_STAGE, "stage" => stage)
        .record(now.duration_since(started).as_secs_f64());
    now
}

/// Submits under an idempotency key: the first request with the key queues
/// the batch; a later one with the same body gets that job back; one with
/// another body is refused. Concurrent requests with one key are serialised
/// by a lock held until the key is recorded. Returns (accepted, replayed).
async fn submit_once(
    state: &AppState,
    principal: &Principal,
    key: &str,
    submission: Submission,
    correlation_id: Uuid,
) -> Result<(Accepted, bool), ApiError> {
    let (mut lock, recorded) = KeyLock::take(&state.pool, principal.company, key).await?;
    if let Some(recorded) = recorded {
        if recorded.request_hash != submission.request_hash {
            return Err(ApiError::IdempotencyKeyReused);
        }
        if let Some(job) = jobs::find_visible(&state.pool, recorded.correlation_id, None).await? {
            lock.release().await?;
            tracing::info!(original = %job.correlation_id, "idempotent replay");
            return Ok((
                Accepted {
                    job,
                    guids: recorded.guids,
                },
                true,
            ));
        }
        // The original job was purged: the key starts afresh.
    }
    let request_hash = submission.request_hash.clone();
    let accepted = submit_new(state, principal, submission, correlation_id).await?;
    let recorded = Recorded {
        request_hash,
        correlation_id: accepted.job.correlation_id,
        guids: accepted.guids.clone(),
    };
    if let Err(error) = lock.record(&recorded).await {
        // The batch is queued; only the key is lost. Say so, do not fail.
        tracing::error!(%error, "could not record the idempotency key");
    }
    lock.release().await?;
    Ok((accepted, false))
}

/// Records the job and publishes the batch; only a confirmed publish counts.
async fn submit_new(
    state: &AppState,
    principal: &Principal,
    submission: Submission,
    correlation_id: Uuid,
) -> Result<Accepted, ApiError> {
    let Submission {
        manifest,
        message,
        dry_run,
        trace,
        ..
    } = submission;
    let topology = state.publisher.topology();
    let owner = manifest.owner(principal.company);
    let shard = topology.shard_for(owner);
    if !manifest.is_empty() {
        backpressure::admit(state, owner, shard).await?;
    }
    let new_job = NewJob {
        correlation_id,
        company_guid: owner,
        entity: manifest.entity,
        operation: manifest.operation,
        item_count: i32::try_from(manifest.len()).unwrap_or(i32::MAX),
        dry_run,
        shard: i32::from(shard),
        submitted_by: principal.subject.clone(),
    };
    let Manifest { guids, .. } = manifest;
    let job = if guids.is_empty() {
        state.jobs.record(new_job, JobStatus::Succeeded).await?
    } else {
        // The message is finished first: through the job insert and the
        // confirm, only its bytes stay in memory.
        let body = message.finish(correlation_id, owner, dry_run, &guids);
        let started = Instant::now();
        let job = state.jobs.record(new_job, JobStatus::Queued).await?;
        stage_done("record", started);
        publish(state, job, shard, body, trace.child()).await?
    };
    let entity = job.entity.0.as_str();
    metrics::counter!(m::JOBS_SUBMITTED, "entity" => entity).increment(1);
    metrics::counter!(m::ITEMS_SUBMITTED, "entity" => entity).increment(guids.len() as u64);
    Ok(Accepted { job, guids })
}

/// Publishes the batch of a recorded job, withdrawing the job if the broker
/// does not confirm.
async fn publish(
    state: &AppState,
    job: Job,
    shard: u16,
    body: Vec<u8>,
    trace: TraceContext,
) -> Result<Job, ApiError> {
    let published =
        state
            .publisher
            .publish_batch(shard, job.correlation_id, job.entity.0, body, trace);
    let Err(error) = published.await else {
        return Ok(job);
    };
    tracing::warn!(%error, "publish not confirmed; withdrawing the job");
    if !jobs::delete_unconfirmed(&state.pool, job.correlation_id).await? {
        // A worker already took the job: the message did arrive after all.
        if let Some(job) = jobs::find_visible(&state.pool, job.correlation_id, None).await? {
            return Ok(job);
        }
    }
    Err(match error {
        PublishError::Rejected => {
            backpressure::refused("queue_full");
            ApiError::QueueFull {
                retry_after: state.backlog.retry_after(0).unwrap_or(5),
            }
        }
        PublishError::Unavailable(_) | PublishError::Timeout(_) | PublishError::Unroutable => {
            ApiError::BrokerUnavailable
        }
    })
}
