//! Publishing with publisher confirms over a long-lived connection.
//!
//! The confirm-mode channels live in a `deadpool` pool on one connection,
//! opened on first use and reopened after a failure; a publish never waits
//! longer than the confirm timeout, so a request never hangs on a dead
//! broker.

use super::topology::Topology;
use crate::domain::Entity;
use crate::telemetry::{metrics as m, trace::TraceContext};
use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult};
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use uuid::Uuid;

/// Channels per connection; confirms on one channel are serialised by the
/// broker, so a few of them let concurrent requests overlap.
pub const CHANNELS: usize = 4;
/// After a failed connect, callers fail fast for this long instead of each
/// trying again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Why a message is not (known to be) in the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("broker refused the message (queue full)")]
    Rejected,
    #[error("message could not be routed to any queue")]
    Unroutable,
}

/// A confirm-mode channel, and which of the manager's connections it is on.
pub struct ConfirmChannel {
    channel: Channel,
    generation: u64,
}

/// The connection the channels share, numbered so that a failure is pinned
/// on the connection that failed, never on a newer one.
#[derive(Default)]
struct Link {
    connection: Option<Connection>,
    generation: u64,
    last_failure: Option<Instant>,
}

/// Opens confirm-mode channels on one shared connection (declaring the
/// topology on each new connection) and recycles only those still open.
pub struct Channels {
    url: String,
    name: String,
    topology: Topology,
    /// How long opening a connection may take.
    connect_timeout: Duration,
    link: Mutex<Link>,
}

impl Channels {
    /// Forgets connection `generation` if it is still the current one, so
    /// that the next channel opens a new connection; the old one is closed
    /// in the background, since a failing broker may be slow to answer.
    async fn forget(&self, generation: u64, timeout: Duration) {
        let mut link = self.link.lock().await;
        if link.generation != generation {
            return;
        }
        if let Some(connection) = link.connection.take() {
            tokio::spawn(async move {
                let closing = connection.close(200, "reconnecting".into());
                let _ = tokio::time::timeout(timeout, closing).await;
            });
        }
    }

    async fn connect(&self) -> Result<Connection, lapin::Error> {
        let properties =
            ConnectionProperties::default().with_connection_name(self.name.clone().into());
        let connection = Connection::connect(&self.url, properties).await?;
        let setup = connection.create_channel().await?;
        self.topology.declare(&setup).await?;
        let _ = setup.close(200, "declared".into()).await;
        tracing::info!(publisher = %self.name, "connected to the broker");
        Ok(connection)
    }
}

impl managed::Manager for Channels {
    type Type = ConfirmChannel;
    type Error = lapin::Error;

    async fn create(&self) -> Result<ConfirmChannel, lapin::Error> {
        let mut link = self.link.lock().await;
        if !link
            .connection
            .as_ref()
            .is_some_and(|c| c.status().connected())
        {
            if link
                .last_failure
                .is_some_and(|at| at.elapsed() < RECONNECT_PAUSE)
            {
                return Err(closed());
            }
            // Bounded here, not by the pool: a connect that timed out must
            // count as a failure, so that the callers behind it fail fast.
            let connected = tokio::time::timeout(self.connect_timeout, self.connect())
                .await
                .unwrap_or_else(|_| Err(closed()));
            match connected {
                Ok(connection) => {
                    link.connection = Some(connection);
                    link.generation += 1;
                    link.last_failure = None;
                }
                Err(error) => {
                    tracing::warn!(publisher = %self.name, %error, "cannot connect to the broker");
                    link.last_failure = Some(Instant::now());
                    return Err(error);
                }
            }
        }
        let Some(connection) = &link.connection else {
            unreachable!("a connection was just opened");
        };
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(ConfirmChannel {
            channel,
            generation: link.generation,
        })
    }

    async fn recycle(
        &self,
        pooled: &mut ConfirmChannel,
        _: &Metrics,
    ) -> RecycleResult<lapin::Error> {
        if pooled.channel.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("channel closed"))
        }
    }
}

/// The error of a connection that is not there.
fn closed() -> lapin::Error {
    lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed).into()
}

/// Publishes batches and results with confirms.
pub struct Publisher {
    topology: Topology,
    confirm_timeout: Duration,
    channels: managed::Pool<Channels>,
}

impl Publisher {
    /// A publisher for `url`; nothing is opened until first use.
    pub fn new(url: &str, name: &str, topology: Topology, confirm_timeout: Duration) -> Self {
        let manager = Channels {
            url: url.to_owned(),
            name: name.to_owned(),
            topology: topology.clone(),
            // Within `channel`'s bound, so that a connect that times out is
            // recorded as a failure before the caller gives up on it.
            connect_timeout: confirm_timeout.mul_f64(0.8),
            link: Mutex::new(Link::default()),
        };
        // A publish holds its channel only to hand the message over, not
        // for the confirm: a few channels serve any number of publishes.
        let channels = managed::Pool::builder(manager)
            .max_size(CHANNELS)
            .build()
            .unwrap_or_else(|e| unreachable!("a pool without timeouts always builds: {e}"));
        Publisher {
            topology,
            confirm_timeout,
            channels,
        }
    }

    /// The topology this publisher declares and publishes into.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// A confirm-mode channel, from the pool or newly opened, within the
    /// confirm timeout: a publish waits at most that long for its channel,
    /// and as long again for its confirm.
    async fn channel(&self) -> Result<Object<Channels>, PublishError> {
        let got = tokio::time::timeout(self.confirm_timeout, self.channels.get()).await;
        match got {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(PoolError::Backend(e))) => Err(PublishError::Unavailable(e.to_string())),
            Ok(Err(other)) => Err(PublishError::Unavailable(other.to_string())),
            Err(_) => Err(PublishError::Unavailable("no channel in time".into())),
        }
    }

    /// Forgets the connection of a publish that failed, which is suspect:
    /// its channels fail their recycling, and the next one opens a new
    /// connection. A newer connection is never touched.
    async fn discard(&self, generation: u64) {
        let manager = self.channels.manager();
        manager.forget(generation, self.confirm_timeout).await;
    }

    /// True when the broker is reachable (connecting now if needed).
    pub async fn is_ready(&self) -> bool {
        self.channel().await.is_ok()
    }

    /// Publishes `body` persistently and mandatorily, and waits for the
    /// broker's confirm. Only `Ok` means the message is durably queued.
    /// `body` is dropped once handed to the connection: a batch is hundreds
    /// of KiB, and it need not wait for the confirm in memory twice.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: Vec<u8>,
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let pooled = self.channel().await?;
        let generation = pooled.generation;
        let properties = properties
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let started = Instant::now();
        let sent = send(pooled, exchange, routing_key, body, properties);
        let confirmed = tokio::time::timeout(self.confirm_timeout, sent).await;
        record_confirm(&confirmed, started);
        let failed = match confirmed {
            Ok(Ok(Confirmation::Ack(None))) => return Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => return Err(PublishError::Unroutable),
            Ok(Ok(Confirmation::Nack(_))) => return Err(PublishError::Rejected),
            Ok(Ok(Confirmation::NotRequested)) => {
                PublishError::Unavailable("channel lost confirm mode".into())
            }
            Ok(Err(e)) => PublishError::Unavailable(e.to_string()),
            // A channel that does not confirm in time is suspect, and so is
            // its connection.
            Err(_) => PublishError::Timeout(self.confirm_timeout),
        };
        self.discard(generation).await;
        Err(failed)
    }

    /// Publishes a batch to its shard's request queue.
    pub async fn publish_batch(
        &self,
        shard: u16,
        correlation_id: Uuid,
        entity: Entity,
        body: Vec<u8>,
        trace: TraceContext,
    ) -> Result<(), PublishError> {
        let mut headers = FieldTable::default();
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(trace.to_string().into()),
        );
        headers.insert(
            "x-sync-entity".into(),
            AMQPValue::LongString(entity.as_str().into()),
        );
        let properties = message_properties(correlation_id).with_headers(headers);
        self.publish(
            &self.topology.requests_exchange(),
            &shard.to_string(),
            body,
            properties,
        )
        .await
    }

    /// Publishes a job resource to the results exchange.
    pub async fn publish_result(
        &self,
        routing_key: &str,
        correlation_id: Uuid,
        body: &[u8],
        trace: Option<TraceContext>,
    ) -> Result<(), PublishError> {
        let mut properties = message_properties(correlation_id);
        if let Some(trace) = trace {
            let mut headers = FieldTable::default();
            headers.insert(
                "traceparent".into(),
                AMQPValue::LongString(trace.child().to_string().into()),
            );
            properties = properties.with_headers(headers);
        }
        match self
            .publish(
                &self.topology.results(),
                routing_key,
                body.to_vec(),
                properties,
            )
            .await
        {
            // A result nobody is bound to hear is not an error: the job row
            // holds it too. (`{prefix}.results` normally catches everything.)
            Err(PublishError::Unroutable) => Ok(()),
            other => other,
        }
    }
}

/// Publishes `body` on the pooled channel, mandatory, gives the channel
/// back to the pool, and waits for the confirm. `body` is dropped once
/// handed to the connection: a batch is hundreds of KiB, and it need not
/// wait for the confirm in memory twice.
async fn send(
    pooled: Object<Channels>,
    exchange: &str,
    routing_key: &str,
    body: Vec<u8>,
    properties: BasicProperties,
) -> Result<Confirmation, lapin::Error> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirm = pooled
        .channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            options,
            &body,
            properties,
        )
        .await?;
    drop(pooled);
    drop(body);
    confirm.await
}

/// How long the confirm took, by outcome, and the failures by reason.
fn record_confirm(
    confirmed: &Result<Result<Confirmation, lapin::Error>, tokio::time::error::Elapsed>,
    started: Instant,
) {
    let outcome = match confirmed {
        Ok(Ok(Confirmation::Ack(None))) => "ack",
        Ok(Ok(Confirmation::Ack(Some(_)))) => "returned",
        Ok(Ok(Confirmation::Nack(_))) => "nack",
        Ok(Ok(Confirmation::NotRequested)) | Ok(Err(_)) => "error",
        Err(_) => "timeout",
    };
    metrics::histogram!(m::PUBLISH_CONFIRM, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    if outcome != "ack" {
        metrics::counter!(m::PUBLISH_FAILURES, "reason" => outcome).increment(1);
    }
}

fn message_properties(correlation_id: Uuid) -> BasicProperties {
    let id = correlation_id.to_string();
    BasicProperties::default()
        .with_correlation_id(id.clone().into())
        .with_message_id(id.into())
        .with_timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
}
