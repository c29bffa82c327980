//! `GET /api/v1/sync/jobs/{correlation_id}`.

use super::{error::ApiError, progress, state::AppState};
use crate::{
    auth::Principal,
    store::{jobs, Job, JobStatus},
};
use axum::{
    extract::{Path, State},
    Json,
};
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
    let not_found = || ApiError::NotFound(format!("no job {id}"));
    let uuid = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let job = jobs::find_visible(&state.pool, uuid, principal.visible_company())
        .await?
        .ok_or_else(not_found)?;
    let job = if job.status == JobStatus::Queued {
        let ahead = jobs::open_jobs_ahead(&state.pool, &job).await?;
        progress::with_progress(&state, job, u64::try_from(ahead).unwrap_or(0))
    } else {
        job
    };
    Ok(Json(job))
}
