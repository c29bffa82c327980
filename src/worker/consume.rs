//! Handling one delivery of a shard — apply, record, publish the result —
//! behind a panic boundary.

use super::apply::{apply_batch, describe, Outcome};
use super::context::{Worker, PERMANENT_TRIES};
use super::delivery::{correlation_id, record_completion, trace_context, Disposition};
use super::retry::{retry_in_place, GaveUp};
use crate::queue::BatchMessage;
use crate::store::{leases::Fence, JobError};
use crate::telemetry::{metrics as m, trace::TraceContext};
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

impl Worker {
    /// Handles one delivery of the shard `fence` names, behind a panic
    /// boundary.
    pub(super) async fn handle(
        &self,
        fence: Fence,
        delivery: &Delivery,
        stop: &CancellationToken,
    ) -> Disposition {
        let worker = self.clone();
        let data = delivery.data.clone();
        let properties_id = correlation_id(delivery);
        let redelivered = delivery.redelivered;
        let trace = trace_context(delivery);
        let stop_inner = stop.clone();
        let span = tracing::info_span!(
            "job",
            shard = fence.lease.shard,
            epoch = fence.lease.epoch,
            correlation_id = tracing::field::Empty,
            entity = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        if let Some(trace) = &trace {
            span.record("trace_id", trace.trace_id());
        }
        let task = tokio::spawn(
            async move {
                worker
                    .process(&data, properties_id, redelivered, trace, fence, &stop_inner)
                    .await
            }
            .instrument(span),
        );
        match task.await {
            Ok(disposition) => disposition,
            Err(panic) => {
                // Deliver it again; a message that keeps crashing the worker
                // reaches the broker's delivery limit and is dead-lettered,
                // and the dead-letter recorder fails its job.
                tracing::error!(?panic, redelivered, "applying a batch panicked");
                Disposition::Requeue
            }
        }
    }

    async fn process(
        &self,
        data: &[u8],
        properties_id: Option<Uuid>,
        redelivered: bool,
        trace: Option<TraceContext>,
        fence: Fence,
        stop: &CancellationToken,
    ) -> Disposition {
        let message = match BatchMessage::from_json(data) {
            Ok(message) => message,
            Err(error) => {
                return self
                    .unreadable(error, properties_id, trace, fence, stop)
                    .await
            }
        };
        let span = tracing::Span::current();
        span.record(
            "correlation_id",
            tracing::field::display(message.correlation_id),
        );
        span.record("entity", message.work.entity().as_str());
        let entity = message.work.entity().as_str();
        if redelivered {
            metrics::counter!(m::REDELIVERIES, "entity" => entity).increment(1);
        }
        let started = std::time::Instant::now();
        let applied = retry_in_place(
            stop,
            "apply",
            PERMANENT_TRIES,
            crate::store::StoreError::is_transient,
            || apply_batch(&self.pool, &message, Some(&fence)),
        )
        .await;
        let job = match applied {
            Ok(Outcome::Finished(applied)) => {
                if applied.just_finished {
                    record_completion(&applied.job, started.elapsed());
                }
                applied.job
            }
            Ok(Outcome::NoJob) => {
                tracing::warn!("no job for this message (publish was not confirmed); dropping it");
                return Disposition::Ack;
            }
            Ok(Outcome::Fenced) => return Disposition::Fenced,
            Err(GaveUp::Stopping) => return Disposition::GiveBack,
            Err(GaveUp::Permanent(error)) => {
                tracing::error!(%error, "batch cannot be applied");
                let error = JobError::retries_exhausted(PERMANENT_TRIES);
                let failed =
                    self.finish_failed(message.correlation_id, error, trace, Some(fence), stop);
                return failed.await.unwrap_or(Disposition::Ack);
            }
        };
        self.finished(&message, &job, trace, stop).await
    }

    /// Logs a finished job and publishes its result: then the delivery may
    /// be acked.
    async fn finished(
        &self,
        message: &BatchMessage<'_>,
        job: &crate::store::Job,
        trace: Option<TraceContext>,
        stop: &CancellationToken,
    ) -> Disposition {
        tracing::info!(
            batch = %describe(&message.work),
            status = job.status.as_str(),
            inserted = job.inserted.unwrap_or(0),
            updated = job.updated.unwrap_or(0),
            attempts = job.attempts,
            "job finished"
        );
        if self.publish_result(job, trace, stop).await {
            Disposition::Ack
        } else {
            Disposition::GiveBack
        }
    }

    /// A message that cannot be read: its job (if its id can be read) fails
    /// as `invalid_message`, and the message goes to the dead letters.
    async fn unreadable(
        &self,
        error: crate::queue::EnvelopeError,
        properties_id: Option<Uuid>,
        trace: Option<TraceContext>,
        fence: Fence,
        stop: &CancellationToken,
    ) -> Disposition {
        tracing::error!(%error, correlation_id = ?properties_id, "unreadable message");
        if let Some(id) = properties_id {
            let job_error = JobError::invalid_message(&error.to_string());
            let failed = self.finish_failed(id, job_error, trace, Some(fence), stop);
            if let Some(unfinished) = failed.await {
                return unfinished;
            }
        }
        Disposition::DeadLetter
    }
}
