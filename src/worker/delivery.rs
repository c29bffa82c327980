//! What a worker reads from and tells the broker about one delivery, and
//! what it records when a job finishes.

use crate::store::Job;
use crate::telemetry::{metrics as m, trace::TraceContext};
use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions},
    Connection, Consumer,
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What to tell the broker about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Disposition {
    /// Done (applied, failed for good, or nothing to do).
    Ack,
    /// Unusable: to the dead-letter queue.
    DeadLetter,
    /// Applying it panicked: deliver it again (a message that keeps doing so
    /// reaches the delivery limit and is dead-lettered).
    Requeue,
    /// Not finished because the consumer is stopping: left unsettled, and
    /// given back when the consumer closes its connection — which returns
    /// everything it held in one step, ahead of the ready messages.
    GiveBack,
    /// This worker no longer holds the shard: nothing was written; given
    /// back like `GiveBack`, and the shard's consumer stops.
    Fenced,
}

pub(super) fn record_completion(job: &Job, apply: Duration) {
    let entity = job.entity.0.as_str();
    metrics::counter!(m::JOBS_COMPLETED, "entity" => entity, "status" => job.status.as_str())
        .increment(1);
    metrics::histogram!(m::BATCH_APPLY, "entity" => entity).record(apply.as_secs_f64());
    if let Some(started) = job.started_at {
        let wait = (started - job.submitted_at).to_std().unwrap_or_default();
        metrics::histogram!(m::QUEUE_WAIT, "entity" => entity).record(wait.as_secs_f64());
    }
    if job.dry_run {
        // Nothing was written.
        return;
    }
    let as_u64 = |n: Option<i32>| n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    metrics::counter!(m::ITEMS_APPLIED, "entity" => entity, "op" => "inserted")
        .increment(as_u64(job.inserted));
    metrics::counter!(m::ITEMS_APPLIED, "entity" => entity, "op" => "updated")
        .increment(as_u64(job.updated));
    if job.deleted.is_some() {
        metrics::counter!(m::ITEMS_APPLIED, "entity" => entity, "op" => "deleted")
            .increment(as_u64(job.deleted));
    }
}

/// How long an ack may take before the connection is deemed dead: one sent
/// just as the connection dies may never be answered.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Tells the broker what became of `delivery` (bounded by the settle
/// timeout; a timeout counts as a lost connection).
pub(super) async fn settle(
    delivery: &Delivery,
    disposition: Disposition,
) -> Result<(), lapin::Error> {
    match tokio::time::timeout(SETTLE_TIMEOUT, settle_now(delivery, disposition)).await {
        Ok(settled) => settled,
        Err(_) => Err(closed()),
    }
}

async fn settle_now(delivery: &Delivery, disposition: Disposition) -> Result<(), lapin::Error> {
    // `Ok(false)` means the ack was not sent (channel gone): the message
    // comes again and is recognised as finished then.
    match disposition {
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await.map(drop),
        Disposition::DeadLetter => delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .map(drop),
        Disposition::Requeue => delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .map(drop),
        Disposition::GiveBack | Disposition::Fenced => Ok(()),
    }
}

/// The next delivery of `consumer`, or None once `stop` fires. A stream
/// that ends, or a connection that is no longer connected while the
/// consumer waits (its stream does not always end then), is an error: the
/// caller reconnects.
pub(super) async fn next_delivery(
    consumer: &mut Consumer,
    connection: &Connection,
    stop: &CancellationToken,
) -> Result<Option<Delivery>, lapin::Error> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => Ok(None),
        next = consumer.next() => match next {
            Some(Ok(delivery)) => Ok(Some(delivery)),
            Some(Err(e)) => Err(e),
            None => Err(closed()),
        },
        () = lost(connection) => Err(closed()),
    }
}

fn closed() -> lapin::Error {
    lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
        lapin::ConnectionState::Closed,
    ))
}

/// Resolves once `connection` is no longer connected.
async fn lost(connection: &Connection) {
    while connection.status().connected() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(super) fn correlation_id(delivery: &Delivery) -> Option<Uuid> {
    delivery
        .properties
        .correlation_id()
        .as_ref()
        .and_then(|id| Uuid::parse_str(id.as_str()).ok())
}

/// The trace context a message carries (`traceparent` header), if any.
pub(super) fn trace_context(delivery: &Delivery) -> Option<TraceContext> {
    match delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get("traceparent")?
    {
        lapin::types::AMQPValue::LongString(s) => TraceContext::parse(&s.to_string()),
        _ => None,
    }
}
