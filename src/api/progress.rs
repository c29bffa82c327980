//! Queue position and estimated start of a waiting job.

use super::state::AppState;
use crate::store::{Job, JobStatus};
use chrono::Utc;

/// Fills `queue_position`/`estimated_start_at` of a queued job, given how
/// many jobs are ahead of it in its shard.
pub fn with_progress(state: &AppState, mut job: Job, ahead: u64) -> Job {
    if job.status != JobStatus::Queued {
        return job;
    }
    job.queue_position = Some(i64::try_from(ahead).unwrap_or(i64::MAX).saturating_add(1));
    let shard = usize::try_from(job.shard).unwrap_or(0);
    job.estimated_start_at = state.backlog.drain_rate(shard).map(|rate| {
        let seconds = ahead as f64 / rate;
        Utc::now() + chrono::Duration::milliseconds((seconds * 1000.0) as i64)
    });
    job
}

/// Progress of a job just accepted: what its shard held at the last sample
/// is what is ahead of it (approximate, at no database cost).
pub fn accepted(state: &AppState, job: Job) -> Job {
    let shard = usize::try_from(job.shard).unwrap_or(0);
    let ahead = state.backlog.ready(shard);
    with_progress(state, job, ahead)
}
