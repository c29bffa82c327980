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

impl Service {
    /// Connects to PostgreSQL (creating and migrating the database), then
    /// starts the listeners and the worker that `mode` asks for. The broker
    /// may be down: the api then answers 503 until it is back.
    pub async fn start(settings: Settings, mode: Mode) -> Result<Service, StartError> {
        crate::telemetry::prometheus();
        let settings = Arc::new(settings);
        let leases = worker::LeaseTiming::of(&settings).map_err(StartError::Settings)?;
        let worker_id = Uuid::now_v7();
        let sessions = sessions(mode, worker_id, leases, &settings);
        let pool =
            store::connect_and_migrate_as(&settings.database_url, POOL_SIZE, &sessions).await?;
        let (membership, membership_view) = watch::channel(worker::Status::default());
        let publisher = publisher(&settings, mode).await;
        let state = AppState::new(
            settings.clone(),
            pool.clone(),
            publisher.clone(),
            (mode != Mode::Api).then(|| membership_view.clone()),
        );
        let mut parts = Parts {
            settings: settings.clone(),
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
        };
        parts.start_duties(&pool);
        let http_addr = match mode {
            Mode::Worker => None,
            Mode::All | Mode::Api => Some(parts.start_front(&state).await?),
        };
        let ops_addr = parts.start_ops(mode, &state).await?;
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
            parts
                .start_worker(worker, (membership, membership_view), leases.ttl)
                .await;
        }
        let Parts { stop, tasks, .. } = parts;
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

/// How a process's database sessions are marked and bounded. A worker's
/// carry its id, so that a successor can end them should it freeze
/// mid-batch; the database ends an idle transaction of a frozen worker by
/// itself after a lease TTL, too.
fn sessions(
    mode: Mode,
    worker_id: Uuid,
    leases: worker::LeaseTiming,
    settings: &Settings,
) -> Sessions {
    match mode {
        Mode::Api => Sessions {
            application_name: "sync-ingest api".into(),
            idle_in_transaction: None,
        },
        // The api part of `all` holds a keyed submission's transaction open
        // across the broker's confirm.
        Mode::All => Sessions {
            application_name: leases::application_name(worker_id),
            idle_in_transaction: Some(leases.ttl.max(settings.confirm_timeout() * 2)),
        },
        Mode::Worker => Sessions {
            application_name: leases::application_name(worker_id),
            idle_in_transaction: Some(leases.ttl),
        },
    }
}

/// The process's publisher (batches and results), connected if the broker
/// is there; if not, it connects on first use.
async fn publisher(settings: &Settings, mode: Mode) -> Arc<Publisher> {
    let name = match mode {
        Mode::All => "sync-ingest all",
        Mode::Api => "sync-ingest api",
        Mode::Worker => "sync-ingest worker results",
    };
    let publisher = Arc::new(Publisher::new(
        &settings.amqp_url,
        name,
        topology(settings),
        settings.confirm_timeout(),
    ));
    if !publisher.is_ready().await {
        tracing::warn!("broker unreachable at start-up; will keep trying");
    }
    publisher
}

/// What is being started: the tasks of one process and what stops them.
struct Parts {
    settings: Arc<Settings>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Parts {
    /// Background duties: they shut down with the rest, but nobody waits
    /// for them to finish a round.
    fn start_duties(&mut self, pool: &PgPool) {
        let every = Duration::from_secs(self.settings.purge_interval_secs.max(1));
        let retention = retention::run(
            pool.clone(),
            retention::Retention::of(&self.settings),
            every,
            self.stop.clone(),
        );
        self.tasks.spawn(retention);
        let stop = self.stop.clone();
        self.tasks
            .spawn(crate::telemetry::sample_pool(pool.clone(), stop));
    }

    /// The HTTP front: the results listener, the backlog sampler and the
    /// public listener; its address.
    async fn start_front(&mut self, state: &AppState) -> Result<SocketAddr, StartError> {
        let settings = self.settings.clone();
        let (bound, mut listening) = watch::channel(false);
        self.tasks.spawn(results::listen(
            settings.amqp_url.clone(),
            topology(&settings),
            state.waiters.clone(),
            bound,
            self.stop.clone(),
        ));
        // Serve only once results can be heard, so `Prefer: wait` never
        // misses an early one; a broker that is down delays start-up by at
        // most the confirm timeout.
        let heard = listening.wait_for(|bound| *bound);
        if tokio::time::timeout(settings.confirm_timeout(), heard)
            .await
            .is_err()
        {
            tracing::warn!("results listener not bound yet; serving anyway");
        }
        self.tasks.spawn(backlog::run(
            settings.amqp_url.clone(),
            topology(&settings),
            state.pool.clone(),
            state.backlog.clone(),
            self.stop.clone(),
        ));
        let limit = api::ConnectionLimit::new(settings.max_connections);
        let router = api::public_router(state.clone());
        let addr = self.listen(settings.http_addr, router, Some(limit)).await?;
        tracing::info!(%addr, "public API listening");
        Ok(addr)
    }

    /// The operations listener (`/metrics`, probes); its address.
    async fn start_ops(&mut self, mode: Mode, state: &AppState) -> Result<SocketAddr, StartError> {
        let default = if mode == Mode::Worker {
            "127.0.0.1:9091"
        } else {
            "127.0.0.1:9090"
        };
        let wanted = self
            .settings
            .ops_addr
            .unwrap_or_else(|| default.parse().unwrap_or_else(|_| unreachable!()));
        let addr = self
            .listen(wanted, api::ops_router(state.clone()), None)
            .await?;
        tracing::info!(%addr, "operations listener listening");
        Ok(addr)
    }

    /// Serves `router` on `wanted` until the stop; the address it got.
    async fn listen(
        &mut self,
        wanted: SocketAddr,
        router: axum::Router,
        limit: Option<api::ConnectionLimit>,
    ) -> Result<SocketAddr, StartError> {
        let bind_error = |source| StartError::Bind {
            addr: wanted,
            source,
        };
        let listener = TcpListener::bind(wanted).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let patience = Duration::from_secs(self.settings.body_timeout_secs);
        let served = api::serve(listener, router, self.stop.clone(), patience, limit);
        self.tasks.spawn(served);
        Ok(addr)
    }

    /// Runs `worker`, and returns once it has joined: the first heartbeat
    /// (which claims the shards) is a database round trip away, and until
    /// it went through `/readyz` rightly says 503.
    async fn start_worker(
        &mut self,
        worker: Worker,
        (membership, mut joined): (
            watch::Sender<worker::Status>,
            watch::Receiver<worker::Status>,
        ),
        ttl: Duration,
    ) {
        self.tasks.spawn(worker.run(self.stop.clone(), membership));
        let first_beat = joined.wait_for(|status| status.renewed.is_some());
        if tokio::time::timeout(ttl, first_beat).await.is_err() {
            tracing::warn!("no heartbeat yet; the worker keeps trying");
        }
    }
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
