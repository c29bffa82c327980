//! The consume loop: one task per shard, strictly in delivery order.

use super::apply::{apply_batch, describe, fail_job};
use super::dead_letters::DeadLetterRecorder;
use super::delivery::{correlation_id, record_completion, settle, trace_context, Disposition};
use super::retry::{retry_in_place, GaveUp};
use crate::queue::{BatchMessage, Publisher, Topology};
use crate::store::{Job, JobError};
use crate::telemetry::{metrics as m, trace::TraceContext};
use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
    Channel, Connection, ConnectionProperties, Consumer,
};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tokio::task::JoinSet;
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

/// A worker: consumes every shard's request queue (single active consumer
/// per shard, so several workers share the shards and fail over).
#[derive(Clone)]
pub struct Worker {
    pool: PgPool,
    publisher: Arc<Publisher>,
    amqp_url: String,
    prefetch: u16,
}

impl Worker {
    /// A worker applying to `pool` and publishing results with `publisher`.
    pub fn new(pool: PgPool, publisher: Arc<Publisher>, amqp_url: &str, prefetch: u16) -> Self {
        Worker {
            pool,
            publisher,
            amqp_url: amqp_url.to_owned(),
            prefetch,
        }
    }

    /// The request queues' delivery limit.
    pub(super) fn delivery_limit(&self) -> u32 {
        self.topology().delivery_limit
    }

    fn topology(&self) -> &Topology {
        self.publisher.topology()
    }

    /// Consumes until `stop` fires, reconnecting after broker failures.
    pub async fn run(self, stop: CancellationToken) {
        let mut pause = Duration::from_millis(200);
        while !stop.is_cancelled() {
            match self.consume_all(&stop).await {
                Ok(()) => pause = Duration::from_millis(200),
                Err(error) => {
                    tracing::warn!(%error, ?pause, "worker lost the broker; reconnecting");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
        tracing::info!("worker stopped");
    }

    /// One connection's life: a channel and a consumer per shard, plus the
    /// dead-letter recorder.
    async fn consume_all(&self, stop: &CancellationToken) -> Result<(), lapin::Error> {
        let connection = Arc::new(within_setup_timeout(self.connect()).await?);

        // Ends this connection's tasks when the connection fails, without
        // stopping the worker.
        let session = stop.child_token();
        let mut tasks = JoinSet::new();
        for shard in 0..self.topology().shards {
            let worker = self.clone();
            let connection = connection.clone();
            let session = session.clone();
            tasks.spawn(async move { worker.run_shard(&connection, shard, &session).await });
        }
        let worker = self.clone();
        let recorder_connection = connection.clone();
        let recorder_session = session.clone();
        tasks.spawn(async move {
            worker
                .run_dead_letter_recorder(&recorder_connection, &recorder_session)
                .await
        });
        tracing::info!(shards = self.topology().shards, "worker consuming");

        let mut outcome = Ok(());
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Err(e)) = joined {
                // The connection is gone: the broker returns every unacked
                // message as it notices, atomically with failing over.
                outcome = Err(e);
                session.cancel();
            }
        }
        if outcome.is_ok() {
            // Stopping. Closing consumers gracefully would let RabbitMQ 3.x
            // activate the next single active consumer while a message
            // delivered to us is still checked out, and that message would
            // then be applied after its successor. So the connection is left
            // to close with the process: the broker sees it go and returns
            // what we held in one step, in order.
            std::mem::forget(connection);
        }
        outcome
    }

    /// Connects and declares the topology.
    async fn connect(&self) -> Result<Connection, lapin::Error> {
        let properties =
            ConnectionProperties::default().with_connection_name("sync-ingest worker".into());
        let connection = Connection::connect(&self.amqp_url, properties).await?;
        let setup = connection.create_channel().await?;
        self.topology().declare(&setup).await?;
        let _ = setup.close(200, "declared".into()).await;
        Ok(connection)
    }

    /// Runs the dead-letter recorder, reopening its channel if it fails
    /// while the connection is up.
    async fn run_dead_letter_recorder(
        &self,
        connection: &Connection,
        stop: &CancellationToken,
    ) -> Result<(), lapin::Error> {
        let recorder = DeadLetterRecorder::new(self.clone());
        loop {
            let (channel, consumer) = self
                .open_consumer(connection, self.topology().dead_jobs(), "dead-letters")
                .await?;
            match recorder.run(consumer, stop).await {
                Ok(()) => {
                    let _ = channel.close(200, "stopping".into()).await;
                    return Ok(());
                }
                Err(error) if connection.status().connected() && !stop.is_cancelled() => {
                    tracing::warn!(%error, "dead-letter channel failed; reopening it");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn open_consumer(
        &self,
        connection: &Connection,
        queue: String,
        tag: &str,
    ) -> Result<(Channel, Consumer), lapin::Error> {
        within_setup_timeout(self.subscribe(connection, queue, tag)).await
    }

    async fn subscribe(
        &self,
        connection: &Connection,
        queue: String,
        tag: &str,
    ) -> Result<(Channel, Consumer), lapin::Error> {
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
    }

    /// Consumes one shard until stopped. A failed channel (the connection
    /// still up) is reopened; the broker returned its messages when it closed
    /// it. A failed connection ends the shard.
    async fn run_shard(
        &self,
        connection: &Connection,
        shard: u16,
        stop: &CancellationToken,
    ) -> Result<(), lapin::Error> {
        loop {
            let (channel, mut consumer) = self
                .open_consumer(
                    connection,
                    self.topology().request_queue(shard),
                    &format!("worker-{shard}"),
                )
                .await?;
            match self.consume_shard(shard, &mut consumer, stop).await {
                Ok(()) => {
                    // See `consume_all`: no graceful cancel while stopping.
                    std::mem::forget(consumer);
                    std::mem::forget(channel);
                    return Ok(());
                }
                Err(error) if connection.status().connected() && !stop.is_cancelled() => {
                    tracing::warn!(shard, %error, "shard channel failed; reopening it");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn consume_shard(
        &self,
        shard: u16,
        consumer: &mut Consumer,
        stop: &CancellationToken,
    ) -> Result<(), lapin::Error> {
        loop {
            // Only between messages: the batch in hand is always finished.
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(lapin::Error::from(
                        lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
                    ))
                }
            };
            let disposition = self.handle(shard, &delivery, stop).await;
            settle(&delivery, disposition).await?;
        }
    }

    /// Handles one delivery behind a panic boundary.
    async fn handle(
        &self,
        shard: u16,
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
            shard,
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
                    .process(&data, properties_id, redelivered, trace, &stop_inner)
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
        stop: &CancellationToken,
    ) -> Disposition {
        let message = match BatchMessage::from_json(data) {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(%error, correlation_id = ?properties_id, "unreadable message");
                if let Some(id) = properties_id {
                    let job_error = JobError::invalid_message(&error.to_string());
                    if !self.finish_failed(id, job_error, trace, stop).await {
                        return Disposition::Requeue;
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
        span.record("entity", message.batch.entity().as_str());
        let entity = message.batch.entity().as_str();
        if redelivered {
            metrics::counter!(m::REDELIVERIES, "entity" => entity).increment(1);
        }
        let started = std::time::Instant::now();
        let applied = retry_in_place(
            stop,
            "apply",
            PERMANENT_TRIES,
            crate::store::StoreError::is_transient,
            || apply_batch(&self.pool, &message),
        )
        .await;
        let job = match applied {
            Ok(Some(applied)) => {
                if applied.just_finished {
                    record_completion(&applied.job, started.elapsed());
                }
                applied.job
            }
            Ok(None) => {
                tracing::warn!("no job for this message (publish was not confirmed); dropping it");
                return Disposition::Ack;
            }
            Err(GaveUp::Stopping) => return Disposition::Requeue,
            Err(GaveUp::Permanent(error)) => {
                tracing::error!(%error, "batch cannot be applied");
                let attempts = PERMANENT_TRIES;
                if !self
                    .finish_failed(
                        message.correlation_id,
                        JobError::retries_exhausted(attempts),
                        trace,
                        stop,
                    )
                    .await
                {
                    return Disposition::Requeue;
                }
                return Disposition::Ack;
            }
        };
        tracing::info!(
            batch = %describe(&message.batch),
            status = job.status.as_str(),
            inserted = job.inserted.unwrap_or(0),
            updated = job.updated.unwrap_or(0),
            attempts = job.attempts,
            "job finished"
        );
        if self.publish_result(&job, trace, stop).await {
            Disposition::Ack
        } else {
            Disposition::Requeue
        }
    }

    /// Fails a job for good and publishes its result; false if interrupted
    /// by shutdown.
    pub(super) async fn finish_failed(
        &self,
        id: Uuid,
        error: JobError,
        trace: Option<TraceContext>,
        stop: &CancellationToken,
    ) -> bool {
        let failed = retry_in_place(
            stop,
            "fail_job",
            PERMANENT_TRIES,
            crate::store::StoreError::is_transient,
            || fail_job(&self.pool, id, &error),
        )
        .await;
        match failed {
            Ok(Some(job)) => self.publish_result(&job, trace, stop).await,
            Ok(None) => true,
            Err(GaveUp::Stopping) => false,
            Err(GaveUp::Permanent(e)) => {
                tracing::error!(error = %e, "could not record the job's failure");
                true
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
