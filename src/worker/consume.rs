//! A worker's core: what it is made of, and how it handles one delivery —
//! apply, record, publish the result — whatever shard it came from.

use super::apply::{apply_batch, describe, fail_job, Outcome};
use super::delivery::{correlation_id, record_completion, trace_context, Disposition};
use super::retry::{retry_in_place, GaveUp};
use crate::queue::{BatchMessage, Publisher, Topology};
use crate::store::{leases::Fence, Job, JobError};
use crate::telemetry::{metrics as m, trace::TraceContext};
use lapin::{
    message::Delivery,
    options::{BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
    uri::AMQPUri,
    Channel, Connection, ConnectionProperties, Consumer,
};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// Permanent (non-transient) database errors tolerated for one message
/// before its job is failed.
const PERMANENT_TRIES: u32 = 3;

/// How long connecting, declaring and subscribing may take. A broker that is
/// still starting can accept a connection and then never answer; without a
/// bound the worker would wait on it forever instead of reconnecting.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

async fn within_setup_timeout<T>(
    setup: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, lapin::Error> {
    match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
        Ok(outcome) => outcome,
        Err(_) => {
            tracing::warn!(?SETUP_TIMEOUT, "broker did not answer while setting up");
            Err(lapin::Error::from(
                lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
            ))
        }
    }
}

/// What a worker is made of and shares among its tasks: the database, the
/// result publisher, its identity in the membership and how it reaches the
/// broker.
#[derive(Clone)]
pub struct Worker {
    pub(super) pool: PgPool,
    publisher: Arc<Publisher>,
    /// The broker URL for consuming, with the AMQP heartbeat set (see
    /// [`consumer_uri`]).
    amqp: AMQPUri,
    prefetch: u16,
    pub(super) id: Uuid,
    pub(super) leases: LeaseTiming,
}

/// How long a lease lasts and how often it is renewed.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    pub ttl: Duration,
    pub heartbeat: Duration,
}

/// The consumers' broker URL: `url`, with an AMQP heartbeat of half the
/// lease TTL unless the URL sets one. The broker gives a consumer's
/// messages back only once it sees the connection dead, and a paused
/// process keeps its TCP connection open: the heartbeat is what bounds how
/// long a paused worker's shard waits for its successor.
pub fn consumer_uri(url: &str, ttl: Duration) -> Result<AMQPUri, String> {
    let mut uri: AMQPUri = url.parse()?;
    if uri.query.heartbeat.is_none() {
        let seconds = (ttl.as_secs() / 2).max(1);
        uri.query.heartbeat = Some(u16::try_from(seconds).unwrap_or(u16::MAX));
    }
    Ok(uri)
}

impl Worker {
    /// A worker with identity `id`, applying to `pool` and publishing
    /// results with `publisher`.
    pub fn new(
        id: Uuid,
        pool: PgPool,
        publisher: Arc<Publisher>,
        amqp: AMQPUri,
        prefetch: u16,
        leases: LeaseTiming,
    ) -> Self {
        Worker {
            pool,
            publisher,
            amqp,
            prefetch,
            id,
            leases,
        }
    }

    /// The request queues' delivery limit.
    pub(super) fn delivery_limit(&self) -> u32 {
        self.topology().delivery_limit
    }

    pub(super) fn topology(&self) -> &Topology {
        self.publisher.topology()
    }

    /// Runs until `stop` fires: the membership (which claims shards and
    /// runs their consumers) and the dead-letter recorder. On `stop`, the
    /// shards are handed over before this returns.
    pub async fn run(self, stop: CancellationToken, status: watch::Sender<super::Status>) {
        let recorder = tokio::spawn(super::dead_letters::run(self.clone(), stop.clone()));
        super::membership::run(self, status, stop).await;
        let _ = recorder.await;
        tracing::info!("worker stopped");
    }

    /// Connects (bounded by the set-up timeout) and declares the topology.
    pub(super) async fn connect(&self, role: &str) -> Result<Connection, lapin::Error> {
        within_setup_timeout(async {
            let properties = ConnectionProperties::default()
                .with_connection_name(format!("sync-ingest worker {role}").into());
            let connection = Connection::connect_uri(self.amqp.clone(), properties).await?;
            let setup = connection.create_channel().await?;
            self.topology().declare(&setup).await?;
            let _ = setup.close(200, "declared".into()).await;
            Ok(connection)
        })
        .await
    }

    /// A channel consuming `queue` with the worker's prefetch.
    pub(super) async fn subscribe(
        &self,
        connection: &Connection,
        queue: String,
        tag: &str,
    ) -> Result<(Channel, Consumer), lapin::Error> {
        within_setup_timeout(async {
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    format!("{tag}-{}", std::process::id()).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok((channel, consumer))
        })
        .await
    }

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
                tracing::error!(%error, correlation_id = ?properties_id, "unreadable message");
                if let Some(id) = properties_id {
                    let job_error = JobError::invalid_message(&error.to_string());
                    let failed = self.finish_failed(id, job_error, trace, Some(fence), stop);
                    if let Some(unfinished) = failed.await {
                        return unfinished;
                    }
                }
                return Disposition::DeadLetter;
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
        tracing::info!(
            batch = %describe(&message.work),
            status = job.status.as_str(),
            inserted = job.inserted.unwrap_or(0),
            updated = job.updated.unwrap_or(0),
            attempts = job.attempts,
            "job finished"
        );
        if self.publish_result(&job, trace, stop).await {
            Disposition::Ack
        } else {
            Disposition::GiveBack
        }
    }

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
    async fn publish_result(
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
