//! Back-pressure on submissions: the broker's bound, shared by everyone
//! (`max_queue_depth`), and each company's own (`max_company_backlog`), so
//! that one company's burst never shuts the others out.

use super::{error::ApiError, state::AppState};
use crate::{store::jobs, telemetry::metrics as m};
use uuid::Uuid;

/// `Retry-After` while the shard has finished nothing lately.
const UNKNOWN_DRAIN_SECS: u64 = 30;
/// The longest `Retry-After` a company is told.
const MAX_COMPANY_RETRY_SECS: u64 = 300;

/// Whether a non-empty batch of `company`, bound for `shard`, may be queued.
pub(super) async fn admit(state: &AppState, company: Uuid, shard: u16) -> Result<(), ApiError> {
    if let Some(retry_after) = state.backlog.retry_after(state.settings.max_queue_depth) {
        refused("queue_full");
        return Err(ApiError::QueueFull { retry_after });
    }
    // The job rows are the count every api instance sees alike.
    let (jobs, items) = jobs::open_backlog(&state.pool, company).await?;
    let cap = state.settings.max_company_backlog;
    if items <= cap {
        return Ok(());
    }
    let drain = state.backlog.drain_rate(usize::from(shard));
    refused("company_backlog_full");
    Err(ApiError::CompanyBacklogFull {
        retry_after: company_retry_after(jobs, items, cap, drain),
    })
}

/// How long a company with `items` in `jobs` open, over its `cap`, should
/// wait: the time its shard, finishing `drain` jobs a second, takes to work
/// off the excess, counted in whole jobs of the company's average size. A
/// lower bound: other companies' jobs on the shard share that drain.
fn company_retry_after(jobs: i64, items: i64, cap: i64, drain: Option<f64>) -> u64 {
    // Jobs are worked off whole: even one item over is a job to wait for.
    let excess_jobs = ((items - cap).max(0) as f64 * jobs as f64 / items.max(1) as f64)
        .ceil()
        .max(1.0);
    let seconds = match drain {
        Some(rate) if rate > 0.0 => (excess_jobs / rate).ceil() as u64,
        _ => UNKNOWN_DRAIN_SECS,
    };
    seconds.clamp(1, MAX_COMPANY_RETRY_SECS)
}

/// Counts a batch refused with 429, by why.
pub(super) fn refused(reason: &'static str) {
    metrics::counter!(m::SUBMISSIONS_REFUSED, "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::company_retry_after;

    #[test]
    fn the_wait_is_the_excess_in_jobs_over_the_drain_rate() {
        // 8 items in 4 jobs, cap 3: 5 items over, 2.5 jobs, so 3 whole
        // jobs; at 0.1 job/s, 30 s.
        assert_eq!(company_retry_after(4, 8, 3, Some(0.1)), 30);
        // Twice the drain, half the wait.
        assert_eq!(company_retry_after(4, 8, 3, Some(0.2)), 15);
        // One item over is still a whole job to wait for.
        assert_eq!(company_retry_after(1_000, 200_001, 200_000, Some(50.0)), 1);
        assert_eq!(company_retry_after(2, 400, 399, Some(0.01)), 100);
    }

    #[test]
    fn without_a_drain_rate_or_with_a_huge_excess_the_wait_is_bounded() {
        assert_eq!(company_retry_after(4, 8, 3, None), 30);
        assert_eq!(company_retry_after(4, 8, 3, Some(0.0)), 30);
        assert_eq!(company_retry_after(10_000, 1_000_000, 1, Some(0.01)), 300);
    }
}
