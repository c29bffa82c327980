//! Starting and stopping the service's parts in one process.

use crate::{
    api::{self, AppState},
    backlog,
    config::Settings,
    queue::{results, Publisher, Topology},
    retention,
    store::{self, leases, Sessions, StoreError},
    worker::{self, Worker},
};
use sqlx::PgPool;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Database connections per process.
const POOL_SIZE: u32 = 16;

/// Which parts run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP front and worker.
    All,
    /// HTTP front only.
    Api,
    /// Worker only.
    Worker,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running service; dropping it does not stop it, [`Service::shutdown`] does.
pub struct Service {
    /// Where the public API listens (None for a worker).
    pub http_addr: Option<SocketAddr>,
    /// Where the operations listener listens.
    pub ops_addr: SocketAddr,
    pub pool: PgPool,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    settings: Arc<Settings>,
}

/// The topology described by `settings`.
pub fn topology(settings: &Settings) -> Topology {
    Topology {
        prefix: settings.queue_prefix.clone(),
        shards: settings.shards,
        delivery_limit: settings.delivery_limit,
        max_queue_length: settings.max_queue_depth,
        results_ttl_ms: settings.results_ttl_secs.saturating_mul(1000),
        results_max_length: settings.results_max_length,
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

impl Service {
    /// Connects to PostgreSQL (creating and migrating the database), then
    /// starts the listeners and the worker that `mode` asks for. The broker
    /// may be down: the api then answers 503 until it is back.
    pub async fn start(settings: Settings, mode: Mode) -> Result<Service, StartError> {
        crate::telemetry::prometheus();
        let settings = Arc::new(settings);
        let leases = settings.lease_timing().map_err(StartError::Settings)?;
        // A worker's sessions carry its id, so that a successor can end them
        // should it freeze mid-batch; the database ends an idle transaction
        // of a frozen worker by itself after a lease TTL, too.
        let worker_id = Uuid::now_v7();
        let sessions = match mode {
            Mode::Api => Sessions {
                application_name: "sync-ingest api".into(),
                idle_in_transaction: None,
            },
            Mode::All | Mode::Worker => Sessions {
                application_name: leases::application_name(worker_id),
                // The api part of `all` holds a keyed submission's
                // transaction open across the broker's confirm.
                idle_in_transaction: Some(if mode == Mode::All {
                    leases.ttl.max(settings.confirm_timeout() * 2)
                } else {
                    leases.ttl
                }),
            },
        };
        let pool =
            store::connect_and_migrate_as(&settings.database_url, POOL_SIZE, &sessions).await?;
        let (membership, membership_view) = watch::channel(worker::Status::default());
        let name = match mode {
            Mode::All => "sync-ingest all",
            Mode::Api => "sync-ingest api",
            Mode::Worker => "sync-ingest worker results",
        };
        let publisher = Arc::new(Publisher::new(
            &settings.amqp_url,
            name,
            topology(&settings),
            settings.confirm_timeout(),
        ));
        if !publisher.is_ready().await {
            tracing::warn!("broker unreachable at start-up; will keep trying");
        }
        let state = AppState::new(
            settings.clone(),
            pool.clone(),
            publisher.clone(),
            (mode != Mode::Api).then(|| membership_view.clone()),
        );
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        // Background duties shut down with the rest, but nobody waits for
        // them to finish a round.
        tasks.spawn(retention::run(
            pool.clone(),
            settings.retention(),
            Duration::from_secs(settings.purge_interval_secs.max(1)),
            stop.clone(),
        ));
        tasks.spawn(crate::telemetry::sample_pool(pool.clone(), stop.clone()));
        if mode != Mode::Worker {
            let (bound, mut listening) = tokio::sync::watch::channel(false);
            tasks.spawn(results::listen(
                settings.amqp_url.clone(),
                topology(&settings),
                state.waiters.clone(),
                bound,
                stop.clone(),
            ));
            // Serve only once results can be heard, so `Prefer: wait` never
            // misses an early one; a broker that is down delays start-up by
            // at most the confirm timeout.
            let heard = listening.wait_for(|bound| *bound);
            if tokio::time::timeout(settings.confirm_timeout(), heard)
                .await
                .is_err()
            {
                tracing::warn!("results listener not bound yet; serving anyway");
            }
            tasks.spawn(backlog::run(
                settings.amqp_url.clone(),
                topology(&settings),
                pool.clone(),
                state.backlog.clone(),
                stop.clone(),
            ));
        }

        let http_addr = if mode == Mode::Worker {
            None
        } else {
            let listener = bind(settings.http_addr).await?;
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                addr: settings.http_addr,
                source,
            })?;
            let limit = api::ConnectionLimit::new(settings.max_connections);
            serve(
                &mut tasks,
                listener,
                api::public_router(state.clone()),
                &stop,
                &settings,
                Some(limit),
            );
            tracing::info!(%addr, "public API listening");
            Some(addr)
        };
        let ops_default = if mode == Mode::Worker {
            "127.0.0.1:9091"
        } else {
            "127.0.0.1:9090"
        };
        let ops_wanted = settings
            .ops_addr
            .unwrap_or_else(|| ops_default.parse().unwrap_or_else(|_| unreachable!()));
        let ops_listener = bind(ops_wanted).await?;
        let ops_addr = ops_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: ops_wanted,
                source,
            })?;
        serve(
            &mut tasks,
            ops_listener,
            api::ops_router(state.clone()),
            &stop,
            &settings,
            None,
        );
        tracing::info!(addr = %ops_addr, "operations listener listening");

        if mode != Mode::Api {
            let amqp = worker::consumer_uri(&settings.amqp_url, leases.ttl)
                .map_err(|e| StartError::Settings(format!("invalid AMQP_URL: {e}")))?;
            let worker = Worker::new(
                worker_id,
                pool.clone(),
                publisher,
                amqp,
                settings.prefetch,
                leases,
            );
            tasks.spawn(worker.run(stop.clone(), membership));
            // Started means joined: the first heartbeat (which claims the
            // shards) is a database round trip away, and until it went
            // through `/readyz` rightly says 503.
            let mut joined = membership_view;
            let first_beat = joined.wait_for(|status| status.renewed.is_some());
            if tokio::time::timeout(leases.ttl, first_beat).await.is_err() {
                tracing::warn!("no heartbeat yet; the worker keeps trying");
            }
        }
        Ok(Service {
            http_addr,
            ops_addr,
            pool,
            stop,
            tasks,
            settings,
        })
    }

    /// Asks every part to stop, without waiting for it.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Stops accepting and consuming, lets in-flight work finish, and waits
    /// (at most the shutdown timeout) for everything to end.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let timeout = self.settings.shutdown_timeout();
        let drained = tokio::time::timeout(timeout, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(?timeout, "shutdown timed out; abandoning unfinished work");
            self.tasks.abort_all();
        }
        self.pool.close().await;
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run_until_signalled(self) {
        wait_for_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

fn serve(
    tasks: &mut JoinSet<()>,
    listener: TcpListener,
    router: axum::Router,
    stop: &CancellationToken,
    settings: &Settings,
    limit: Option<api::ConnectionLimit>,
) {
    let patience = std::time::Duration::from_secs(settings.body_timeout_secs);
    tasks.spawn(api::serve(listener, router, stop.clone(), patience, limit));
}

async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
