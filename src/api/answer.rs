//! The answer to an accepted submission: `202` with the job and its GUIDs,
//! or — when the client asked to wait (`Prefer: wait`) and the job finished
//! in time — `200` with the finished job.

use super::{error::ApiError, progress, state::AppState};
use crate::{
    queue::{guid_list, results::Waiter},
    store::{jobs, Job},
};
use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use uuid::Uuid;

/// The 202 (or 200) body: the job resource plus every item's GUID, in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    #[serde(flatten)]
    pub job: Job,
    pub guids: Vec<Uuid>,
}

impl Accepted {
    /// The answer's body: what `serde_json` writes for `self`, with the
    /// GUIDs — most of it — written by [`guid_list`], not through serde.
    fn to_json(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(512);
        serde_json::to_writer(&mut body, &self.job)
            .unwrap_or_else(|e| unreachable!("a job always serialises: {e}"));
        guid_list::add_to_object(&mut body, &self.guids);
        body
    }
}

/// 202 with the job, or — when the client asked to wait and the job
/// finished in time — 200 with the finished job.
pub(super) async fn respond(
    state: &AppState,
    mut accepted: Accepted,
    wait: Option<(u64, Waiter)>,
    replayed: bool,
) -> Result<Response, ApiError> {
    let waited = wait.as_ref().map(|(secs, _)| *secs);
    if let Some((secs, mut waiter)) = wait {
        // Woken by the job's result (or by the listener reconnecting): read
        // the row, and keep waiting until it is finished or time is up.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        while !accepted.job.status.is_finished() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !waiter.wait(left).await {
                break;
            }
            if let Some(job) =
                jobs::find_visible(&state.pool, accepted.job.correlation_id, None).await?
            {
                accepted.job = job;
            }
        }
    }
    let finished = accepted.job.status.is_finished();
    let status = if waited.is_some() && finished {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let location = format!("/api/v1/sync/jobs/{}", accepted.job.correlation_id);
    // RFC 7240: the preference was honoured (we waited), whatever the outcome.
    let wait_header = waited.and_then(|secs| HeaderValue::from_str(&format!("wait={secs}")).ok());
    accepted.job = progress::accepted(state, accepted.job);
    let json = HeaderValue::from_static("application/json");
    let mut response = (status, [(header::CONTENT_TYPE, json)], accepted.to_json()).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    if let Some(value) = wait_header {
        headers.insert("preference-applied", value);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Entity, Operation};
    use crate::store::{jobs::EntityColumn, JobError, JobStatus};
    use chrono::Utc;

    fn job(status: JobStatus) -> Job {
        Job {
            correlation_id: Uuid::now_v7(),
            company_guid: Uuid::now_v7(),
            entity: EntityColumn(Entity::Pieces),
            operation: Operation::Upsert,
            status,
            item_count: 3,
            inserted: None,
            updated: None,
            unchanged: None,
            deleted: None,
            not_found: None,
            error: None,
            attempts: 0,
            dry_run: false,
            shard: 2,
            submitted_at: Utc::now(),
            started_at: None,
            completed_at: None,
            queue_position: None,
            estimated_start_at: None,
        }
    }

    #[test]
    fn the_answer_body_is_what_serde_writes_for_it() {
        let queued = Job {
            queue_position: Some(4),
            estimated_start_at: Some(Utc::now()),
            ..job(JobStatus::Queued)
        };
        let finished = Job {
            inserted: Some(0),
            updated: Some(0),
            unchanged: Some(0),
            dry_run: true,
            started_at: Some(Utc::now()),
            completed_at: Some(Utc::now()),
            error: Some(JobError::company_access_violation(vec![1])),
            ..job(JobStatus::Failed)
        };
        for (job, count) in [(queued, 3), (finished, 0), (job(JobStatus::Succeeded), 1)] {
            let accepted = Accepted {
                job,
                guids: (0..count).map(|_| Uuid::new_v4()).collect(),
            };
            let written: serde_json::Value =
                serde_json::from_slice(&accepted.to_json()).expect("valid JSON");
            assert_eq!(written, serde_json::to_value(&accepted).expect("json"));
        }
    }
}
