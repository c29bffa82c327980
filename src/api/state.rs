//! What every handler can reach.

use crate::{
    auth::{Authenticator, JwtVerifier},
    backlog::Backlog,
    config::Settings,
    queue::results::JobWaiters,
    queue::Publisher,
    store::JobRecorder,
    worker::Status,
};
use sqlx::PgPool;
use std::sync::Arc;

/// Shared, cheaply cloned state of the HTTP front.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: PgPool,
    /// Records the jobs of accepted submissions, several at a time.
    pub jobs: JobRecorder,
    pub publisher: Arc<Publisher>,
    pub auth: Authenticator,
    /// Requests waiting for their job (`Prefer: wait`).
    pub waiters: JobWaiters,
    /// Latest queue depths and drain rates.
    pub backlog: Backlog,
    /// A keyed submission holds one pooled connection (its key's lock) while
    /// it takes others; bounding how many run at once keeps them from
    /// taking the whole pool and waiting on each other.
    pub keyed_submissions: Arc<tokio::sync::Semaphore>,
    /// Requests worked on at once.
    pub in_flight: super::InFlight,
    /// Bodies being parsed at once (see `submit::parse`).
    pub parse_permits: Arc<tokio::sync::Semaphore>,
    /// The worker's place among the workers (None in an api-only process).
    pub membership: Option<tokio::sync::watch::Receiver<Status>>,
}

impl AppState {
    /// The state of a process's HTTP front. Nothing here connects: the pool
    /// and the publisher connect when first used.
    pub fn new(
        settings: Arc<Settings>,
        pool: PgPool,
        publisher: Arc<Publisher>,
        membership: Option<tokio::sync::watch::Receiver<Status>>,
    ) -> AppState {
        // An empty secret would let anyone sign tokens: treat it as unset.
        let jwt = settings
            .jwt_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|secret| {
                JwtVerifier::new(
                    secret,
                    settings.jwt_issuer.as_deref(),
                    settings.jwt_audience.as_deref(),
                )
            });
        let pooled = pool.options().get_max_connections() as usize;
        AppState {
            jobs: JobRecorder::start(pool.clone()),
            auth: Authenticator::new(pool.clone(), jwt),
            waiters: JobWaiters::default(),
            backlog: Backlog::default(),
            in_flight: super::InFlight::new(settings.max_requests_in_flight),
            keyed_submissions: Arc::new(tokio::sync::Semaphore::new((pooled / 2).max(1))),
            parse_permits: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            )),
            membership,
            settings,
            pool,
            publisher,
        }
    }
}
