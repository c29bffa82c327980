//! The dead-letter recorder: every message that reaches `{prefix}.dead` is
//! also copied (fanout) to `{prefix}.dead.jobs`, where this consumer marks
//! its job failed — a message that kept crashing workers until the broker's
//! delivery limit dead-lettered it ends as `retries_exhausted`. The copy in
//! `{prefix}.dead` stays for operators.

use super::context::Worker;
use super::delivery::{correlation_id, next_delivery, settle, trace_context, Disposition};
use super::shard::{close, close_then_drop};
use crate::queue::reconnect::until_done;
use crate::store::JobError;
use crate::telemetry::metrics as m;
use lapin::{message::Delivery, types::AMQPValue, Connection, Consumer};
use tokio_util::sync::CancellationToken;

/// Runs the recorder on a connection of its own until `stop` fires,
/// reconnecting after broker failures. Every worker runs one; the broker
/// hands each dead letter to one of them.
pub(super) async fn run(worker: Worker, stop: CancellationToken) {
    let recorder = DeadLetterRecorder::new(worker.clone());
    let session = || async {
        let connection = worker.connect("dead letters").await?;
        let queue = worker.topology().dead_jobs();
        let recorded = match worker.subscribe(&connection, queue, "dead-letters").await {
            Ok((channel, mut consumer)) => {
                let recorded = recorder.run(&connection, &mut consumer, &stop).await;
                close_then_drop(&connection, (channel, consumer)).await;
                recorded
            }
            Err(error) => {
                close(&connection).await;
                Err(error)
            }
        };
        recorded.map(|()| None::<()>)
    };
    until_done(&stop, "dead-letter recorder", session).await;
}

/// Consumes `{prefix}.dead.jobs`.
pub struct DeadLetterRecorder {
    worker: Worker,
}

impl DeadLetterRecorder {
    /// A recorder failing jobs through `worker`'s database and publisher.
    pub fn new(worker: Worker) -> Self {
        DeadLetterRecorder { worker }
    }

    /// Records dead letters until `stop` fires or the connection fails.
    pub async fn run(
        &self,
        connection: &Connection,
        consumer: &mut Consumer,
        stop: &CancellationToken,
    ) -> Result<(), lapin::Error> {
        while let Some(delivery) = next_delivery(consumer, connection, stop).await? {
            let disposition = self.record(&delivery, stop).await;
            settle(&delivery, disposition).await?;
            if disposition == Disposition::GiveBack {
                break;
            }
        }
        Ok(())
    }

    async fn record(&self, delivery: &Delivery, stop: &CancellationToken) -> Disposition {
        let reason = header_text(delivery, "x-first-death-reason").unwrap_or_default();
        let entity = header_text(delivery, "x-sync-entity").unwrap_or_else(|| "unknown".into());
        let id = correlation_id(delivery);
        tracing::warn!(correlation_id = ?id, %reason, %entity, "message dead-lettered");
        if let Some(id) = id {
            let error = if reason == "delivery_limit" {
                JobError::retries_exhausted(self.worker.delivery_limit() + 1)
            } else {
                JobError::invalid_message(&format!("the message was dead-lettered ({reason})"))
            };
            // Only a job that has not finished yet is changed. Dead letters
            // belong to no shard: there is no lease to fence with.
            let failed = self
                .worker
                .finish_failed(id, error, trace_context(delivery), None, stop);
            if let Some(unfinished) = failed.await {
                return unfinished;
            }
        }
        metrics::counter!(m::DEAD_LETTERED, "entity" => entity).increment(1);
        Disposition::Ack
    }
}

fn header_text(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
