//! What a worker is made of and shares among its tasks, and how it reaches
//! the broker.

use crate::queue::{Publisher, Topology};
use lapin::{
    options::{BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
    uri::AMQPUri,
    Channel, Connection, ConnectionProperties, Consumer,
};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use uuid::Uuid;

/// Permanent (non-transient) database errors tolerated for one message
/// before its job is failed.
pub(super) const PERMANENT_TRIES: u32 = 3;

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
    pub(super) publisher: Arc<Publisher>,
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

impl LeaseTiming {
    /// The timing `settings` ask for, or why it does not fit.
    pub fn of(settings: &crate::config::Settings) -> Result<LeaseTiming, String> {
        let (ttl, heartbeat) = (settings.lease_ttl_secs, settings.heartbeat_secs);
        if heartbeat.saturating_mul(3) > ttl {
            return Err(format!(
                "SYNC_HEARTBEAT_SECS ({heartbeat}) must be at most a third of \
                 SYNC_LEASE_TTL_SECS ({ttl})"
            ));
        }
        Ok(LeaseTiming {
            ttl: Duration::from_secs(ttl),
            heartbeat: Duration::from_secs(heartbeat),
        })
    }
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
}
