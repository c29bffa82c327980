//! Finishing a job the worker cannot apply, and publishing a finished
//! job's result: the last steps of a shard's delivery and of a dead letter.

use super::apply::{fail_job, Outcome};
use super::context::{Worker, PERMANENT_TRIES};
use super::delivery::Disposition;
use super::retry::{retry_in_place, GaveUp};
use crate::store::{leases::Fence, Job, JobError};
use crate::telemetry::trace::TraceContext;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

impl Worker {
    /// Fails a job for good (under `fence`, where there is one) and
    /// publishes its result. None when done; otherwise what to do with the
    /// delivery instead: give it back (stopping) or drop the shard (fenced).
    pub(super) async fn finish_failed(
        &self,
        id: Uuid,
        error: JobError,
        trace: Option<TraceContext>,
        fence: Option<Fence>,
        stop: &CancellationToken,
    ) -> Option<Disposition> {
        let failed = retry_in_place(
            stop,
            "fail_job",
            PERMANENT_TRIES,
            crate::store::StoreError::is_transient,
            || fail_job(&self.pool, id, &error, fence.as_ref()),
        )
        .await;
        match failed {
            Ok(Outcome::Finished(applied)) => {
                if self.publish_result(&applied.job, trace, stop).await {
                    None
                } else {
                    Some(Disposition::GiveBack)
                }
            }
            Ok(Outcome::NoJob) => None,
            Ok(Outcome::Fenced) => Some(Disposition::Fenced),
            Err(GaveUp::Stopping) => Some(Disposition::GiveBack),
            Err(GaveUp::Permanent(e)) => {
                tracing::error!(error = %e, "could not record the job's failure");
                None
            }
        }
    }

    /// Publishes the job resource to the results exchange, retrying until
    /// confirmed; false if interrupted by shutdown.
    pub(super) async fn publish_result(
        &self,
        job: &Job,
        trace: Option<TraceContext>,
        stop: &CancellationToken,
    ) -> bool {
        let body = serde_json::to_vec(job).unwrap_or_default();
        let routing_key = format!(
            "{}.{}.{}",
            job.company_guid,
            job.entity.0,
            job.status.as_str()
        );
        retry_in_place(
            stop,
            "publish_result",
            u32::MAX,
            |_| true,
            || {
                self.publisher
                    .publish_result(&routing_key, job.correlation_id, &body, trace)
            },
        )
        .await
        .is_ok()
    }
}
