//! The job resource: `GET /api/v1/sync/jobs/{correlation_id}`, the list
//! `GET /api/v1/sync/jobs` and `POST /api/v1/sync/jobs/{correlation_id}/cancel`.

use super::{error::ApiError, progress, state::AppState};
use crate::{
    auth::Principal,
    domain::{Entity, FieldError, Operation},
    store::{
        job_list::{self, Cursor, JobFilter},
        jobs, Job, JobStatus,
    },
    telemetry::metrics as m,
};
use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    Json,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job as its company sees it; another company's job is 404, exactly like
/// an unknown one.
#[tracing::instrument(skip_all, fields(correlation_id = %id))]
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    principal: Principal,
) -> Result<Json<Job>, ApiError> {
    if !principal.can_read() {
        return Err(ApiError::InsufficientScope);
    }
    let uuid = job_id(&id)?;
    let job = jobs::find_visible(&state.pool, uuid, principal.visible_company())
        .await?
        .ok_or_else(|| unknown(&id))?;
    let job = if job.status == JobStatus::Queued {
        let ahead = jobs::open_jobs_ahead(&state.pool, &job).await?;
        progress::with_progress(&state, job, u64::try_from(ahead).unwrap_or(0))
    } else {
        job
    };
    Ok(Json(job))
}

/// Cancels a job still queued: its message is acked unapplied when a
/// worker reaches it. A job already taken or finished is 409; another
/// company's, like an unknown one, 404.
#[tracing::instrument(skip_all, fields(correlation_id = %id))]
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    principal: Principal,
) -> Result<Json<Job>, ApiError> {
    if !principal.can_write() {
        return Err(ApiError::InsufficientScope);
    }
    let uuid = job_id(&id)?;
    let company = principal.visible_company();
    if let Some(job) = jobs::cancel(&state.pool, uuid, company).await? {
        let (entity, status) = (job.entity.0.as_str(), job.status.as_str());
        metrics::counter!(m::JOBS_COMPLETED, "entity" => entity, "status" => status).increment(1);
        tracing::info!("job cancelled");
        // A `Prefer: wait` on this instance need not wait for the worker
        // to reach the message.
        state.waiters.notify(uuid);
        return Ok(Json(job));
    }
    match jobs::find_visible(&state.pool, uuid, company).await? {
        Some(job) => Err(ApiError::JobNotCancellable(job.status)),
        None => Err(unknown(&id)),
    }
}

/// The id in a job's path; a malformed one is as unknown as any other.
fn job_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| unknown(id))
}

/// The 404 of a job that is unknown, or another company's: the same answer.
fn unknown(id: &str) -> ApiError {
    ApiError::NotFound(format!("no job {id}"))
}

/// The query of `GET /api/v1/sync/jobs`, as sent: each parameter is read
/// below, so that every bad one is named.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    entity: Option<String>,
    operation: Option<String>,
    submitted_after: Option<String>,
    submitted_before: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    company_guid: Option<String>,
}

/// A page of the job list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// Jobs per page unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: u16 = 100;
const MAX_LIMIT: u16 = 1000;

/// The caller's company's jobs, newest first (a SystemAdmin may name
/// another company).
#[tracing::instrument(skip_all)]
pub async fn list_jobs(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
    principal: Principal,
) -> Result<Json<JobPage>, ApiError> {
    if !principal.can_read() {
        return Err(ApiError::InsufficientScope);
    }
    let Query(query) = query
        .map_err(|rejection| ApiError::Validation(vec![FieldError::body(rejection.body_text())]))?;
    let filter = filter(&principal, query).map_err(ApiError::Validation)?;
    let (jobs, next) = job_list::page(&state.pool, &filter).await?;
    Ok(Json(JobPage {
        jobs,
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// The filter a query asks for, or every problem with its parameters.
fn filter(principal: &Principal, query: ListQuery) -> Result<JobFilter, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut take = |e: FieldError| errors.push(e);
    let statuses = statuses(query.status.as_deref()).map_err(&mut take).ok();
    let entity = parsed("entity", query.entity, |e| {
        e.parse::<Entity>().map_err(|e| e.to_string())
    })
    .map_err(&mut take)
    .ok();
    let operation = parsed("operation", query.operation, |o| o.parse::<Operation>())
        .map_err(&mut take)
        .ok();
    let submitted_after = parsed("submitted_after", query.submitted_after, instant)
        .map_err(&mut take)
        .ok();
    let submitted_before = parsed("submitted_before", query.submitted_before, instant)
        .map_err(&mut take)
        .ok();
    let limit = parsed("limit", query.limit, limit).map_err(&mut take).ok();
    let after = parsed("cursor", query.cursor, |c| {
        Cursor::decode(&c).ok_or_else(|| "is not a cursor this api gave".to_owned())
    })
    .map_err(&mut take)
    .ok();
    let company = parsed("company_guid", query.company_guid, |c| {
        company(principal, &c)
    })
    .map_err(&mut take)
    .ok();
    // Each is None only where its parameter was refused.
    let (Some(statuses), Some(entity), Some(operation), Some(after_time)) =
        (statuses, entity, operation, submitted_after)
    else {
        return Err(errors);
    };
    let (Some(before_time), Some(limit), Some(after), Some(company)) =
        (submitted_before, limit, after, company)
    else {
        return Err(errors);
    };
    Ok(JobFilter {
        company: company.unwrap_or(principal.company),
        statuses,
        entity,
        operation,
        submitted_after: after_time,
        submitted_before: before_time,
        after,
        limit: limit.unwrap_or(DEFAULT_LIMIT),
    })
}

/// An optional parameter read by `read`; a problem is named after `field`.
fn parsed<T>(
    field: &str,
    text: Option<String>,
    read: impl FnOnce(String) -> Result<T, String>,
) -> Result<Option<T>, FieldError> {
    text.map(read).transpose().map_err(|message| FieldError {
        index: None,
        field: Some(field.to_owned()),
        message,
    })
}

/// `status`: a comma list of statuses (empty: every status).
fn statuses(text: Option<&str>) -> Result<Vec<JobStatus>, FieldError> {
    let names = text.into_iter().flat_map(|s| s.split(','));
    names
        .map(|name| {
            JobStatus::ALL
                .into_iter()
                .find(|s| s.as_str() == name.trim())
                .ok_or_else(|| FieldError {
                    index: None,
                    field: Some("status".into()),
                    message: format!("unknown status `{name}`"),
                })
        })
        .collect()
}

fn instant(text: String) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(&text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| format!("must be an RFC 3339 date-time ({e})"))
}

fn limit(text: String) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(format!("must be an integer from 1 to {MAX_LIMIT}")),
    }
}

/// The company a caller may list: its own, or any for a SystemAdmin.
fn company(principal: &Principal, text: &str) -> Result<Uuid, String> {
    match Uuid::parse_str(text) {
        Ok(company) if company == principal.company || principal.is_system_admin() => Ok(company),
        Ok(_) => Err("only a SystemAdmin may name another company".into()),
        Err(e) => Err(format!("must be a UUID ({e})")),
    }
}
