//! Publishing with publisher confirms over a long-lived connection.
//!
//! The connection and its confirm-mode channels are opened on first use and
//! reopened after any failure; a publish never waits longer than the
//! confirm timeout, so a request never hangs on a dead broker.

use super::topology::Topology;
use crate::domain::Entity;
use crate::telemetry::{metrics as m, trace::TraceContext};
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
};
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
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

struct Link {
    connection: Connection,
    channels: Vec<Channel>,
}

impl Link {
    fn healthy(&self) -> bool {
        self.connection.status().connected() && self.channels.iter().all(|c| c.status().connected())
    }
}

#[derive(Default)]
struct LinkState {
    link: Option<Arc<Link>>,
    last_failure: Option<Instant>,
}

/// Publishes batches and results with confirms.
pub struct Publisher {
    url: String,
    name: String,
    topology: Topology,
    confirm_timeout: Duration,
    state: Mutex<LinkState>,
    next_channel: AtomicUsize,
}

impl Publisher {
    /// A publisher for `url`; nothing is opened until first use.
    pub fn new(url: &str, name: &str, topology: Topology, confirm_timeout: Duration) -> Self {
        Publisher {
            url: url.to_owned(),
            name: name.to_owned(),
            topology,
            confirm_timeout,
            state: Mutex::new(LinkState::default()),
            next_channel: AtomicUsize::new(0),
        }
    }

    /// The topology this publisher declares and publishes into.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    async fn open(&self) -> Result<Link, lapin::Error> {
        let properties =
            ConnectionProperties::default().with_connection_name(self.name.clone().into());
        let connection = Connection::connect(&self.url, properties).await?;
        let mut channels = Vec::with_capacity(CHANNELS);
        for _ in 0..CHANNELS {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channels.push(channel);
        }
        self.topology.declare(&channels[0]).await?;
        Ok(Link {
            connection,
            channels,
        })
    }

    async fn link(&self) -> Result<Arc<Link>, PublishError> {
        let mut state = self.state.lock().await;
        if let Some(link) = &state.link {
            if link.healthy() {
                return Ok(link.clone());
            }
            state.link = None;
        }
        if let Some(at) = state.last_failure {
            if at.elapsed() < RECONNECT_PAUSE {
                return Err(PublishError::Unavailable("reconnecting".into()));
            }
        }
        match tokio::time::timeout(self.confirm_timeout, self.open()).await {
            Ok(Ok(link)) => {
                let link = Arc::new(link);
                state.link = Some(link.clone());
                state.last_failure = None;
                tracing::info!(publisher = %self.name, "connected to the broker");
                Ok(link)
            }
            Ok(Err(e)) => {
                state.last_failure = Some(Instant::now());
                tracing::warn!(publisher = %self.name, error = %e, "cannot connect to the broker");
                Err(PublishError::Unavailable(e.to_string()))
            }
            Err(_) => {
                state.last_failure = Some(Instant::now());
                Err(PublishError::Unavailable("connect timed out".into()))
            }
        }
    }

    /// Forgets the current connection so the next publish opens a new one.
    /// The old one is closed in the background: a broker that is failing
    /// may take long to answer the close, and every publish and readiness
    /// check would queue behind it on the state lock.
    async fn drop_link(&self) {
        let Some(link) = self.state.lock().await.link.take() else {
            return;
        };
        let timeout = self.confirm_timeout;
        tokio::spawn(async move {
            let closing = link.connection.close(200, "reconnecting".into());
            let _ = tokio::time::timeout(timeout, closing).await;
        });
    }

    /// True when the broker is reachable (connecting now if needed).
    pub async fn is_ready(&self) -> bool {
        self.link().await.is_ok()
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
        let link = self.link().await?;
        let index = self.next_channel.fetch_add(1, Ordering::Relaxed) % link.channels.len();
        let channel = &link.channels[index];
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let properties = properties
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let started = Instant::now();
        let confirmed = tokio::time::timeout(self.confirm_timeout, async move {
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    &body,
                    properties,
                )
                .await?;
            drop(body);
            confirm.await
        })
        .await;
        let outcome = match &confirmed {
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
        match confirmed {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Rejected),
            Ok(Ok(Confirmation::NotRequested)) => {
                self.drop_link().await;
                Err(PublishError::Unavailable(
                    "channel lost confirm mode".into(),
                ))
            }
            Ok(Err(e)) => {
                self.drop_link().await;
                Err(PublishError::Unavailable(e.to_string()))
            }
            Err(_) => {
                // A channel that does not confirm in time is suspect; start afresh.
                self.drop_link().await;
                Err(PublishError::Timeout(self.confirm_timeout))
            }
        }
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
