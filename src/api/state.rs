//! What every handler can reach.

use crate::{
    auth::Authenticator, backlog::Backlog, config::Settings, queue::results::JobWaiters,
    queue::Publisher, store::JobRecorder,
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
    pub membership: Option<tokio::sync::watch::Receiver<crate::worker::Status>>,
}
