//! `POST /api/v1/sync/{entity}`: validate, tenant-check, record, publish.

use super::{error::ApiError, state::AppState};
use crate::{
    auth::{access, Principal},
    domain::{parse_batch, Batch, BatchError, Entity},
    queue::{BatchMessage, PublishError, MESSAGE_VERSION},
    store::{jobs, Job, NewJob},
    telemetry::metrics as m,
};
use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use uuid::Uuid;

/// The 202 body: the job resource plus every item's GUID, in order.
#[derive(Debug, Serialize)]
pub struct Accepted {
    #[serde(flatten)]
    pub job: Job,
    pub guids: Vec<Uuid>,
}

/// Accepts a batch of one entity's items.
#[tracing::instrument(skip_all, fields(entity = %entity, correlation_id, company_guid = %principal.company, item_count))]
pub async fn submit(
    State(state): State<AppState>,
    Path(entity): Path<String>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !principal.can_write() {
        return Err(ApiError::InsufficientScope);
    }
    let entity: Entity = entity
        .parse()
        .map_err(|e: crate::domain::UnknownEntity| ApiError::NotFound(e.to_string()))?;
    require_json(&headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: state.settings.max_body_bytes,
            }
        } else {
            ApiError::Validation(vec![crate::domain::FieldError {
                index: None,
                field: None,
                message: rejection.body_text(),
            }])
        }
    })?;
    let batch =
        parse_batch(entity, &body, state.settings.batch_limit(entity)).map_err(|e| match e {
            BatchError::TooLarge { .. } => ApiError::BatchTooLarge(e.to_string()),
            BatchError::Invalid(errors) => ApiError::Validation(errors),
        })?;
    let forbidden = access::forbidden_items(&principal, &batch);
    if !forbidden.is_empty() {
        return Err(ApiError::CompanyAccessDenied { indexes: forbidden });
    }
    tracing::Span::current().record("item_count", batch.len());
    let job = enqueue(&state, &principal, batch.clone()).await?;
    metrics::counter!(m::JOBS_SUBMITTED, "entity" => entity.as_str()).increment(1);
    metrics::counter!(m::ITEMS_SUBMITTED, "entity" => entity.as_str())
        .increment(batch.len() as u64);
    let location = format!("/api/v1/sync/jobs/{}", job.correlation_id);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(Accepted {
            job,
            guids: batch.guids(),
        }),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Records the job and publishes the batch; only a confirmed publish counts.
async fn enqueue(state: &AppState, principal: &Principal, batch: Batch) -> Result<Job, ApiError> {
    let topology = state.publisher.topology();
    let owner = batch.owner(principal.company);
    let shard = topology.shard_for(owner);
    let new_job = NewJob {
        correlation_id: Uuid::now_v7(),
        company_guid: owner,
        entity: batch.entity(),
        item_count: i32::try_from(batch.len()).unwrap_or(i32::MAX),
        dry_run: false,
        shard: i32::from(shard),
        submitted_by: principal.subject.clone(),
    };
    tracing::Span::current().record(
        "correlation_id",
        tracing::field::display(new_job.correlation_id),
    );
    if batch.is_empty() {
        return Ok(jobs::insert_empty_succeeded(&state.pool, &new_job).await?);
    }
    let job = jobs::insert_queued(&state.pool, &new_job).await?;
    let message = BatchMessage {
        version: MESSAGE_VERSION,
        correlation_id: job.correlation_id,
        company_guid: owner,
        dry_run: new_job.dry_run,
        batch,
    };
    let published = state.publisher.publish_batch(shard, &message).await;
    let Err(error) = published else {
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
        PublishError::Rejected => ApiError::QueueFull { retry_after: 5 },
        PublishError::Unavailable(_) | PublishError::Timeout(_) | PublishError::Unroutable => {
            ApiError::BrokerUnavailable
        }
    })
}
