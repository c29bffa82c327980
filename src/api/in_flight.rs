//! The bound on requests worked on at once (`max_requests_in_flight`).
//!
//! A request holds a slot only while the api works on it: a submission
//! takes its slot once its body has arrived. A client still sending, or
//! stalled mid-body, costs a connection (bounded by `max_connections`) and
//! the bytes it sent, until the body timeout closes it, but never a slot,
//! so slow uploads cannot shed the requests of everyone else.

use super::error::ApiError;
use crate::telemetry::metrics as m;
use axum::{error_handling::HandleErrorLayer, Router};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{limit::GlobalConcurrencyLimitLayer, BoxError, ServiceBuilder};

/// The slots for requests in flight, shared by every route of a listener.
#[derive(Clone)]
pub struct InFlight(Arc<Semaphore>);

/// A request's slot, given back when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    pub fn new(max: usize) -> Self {
        InFlight(Arc::new(Semaphore::new(max.max(1))))
    }

    /// A slot for a request whose body has arrived, or 503 `overloaded`.
    pub fn take(&self) -> Result<Slot, ApiError> {
        self.0
            .clone()
            .try_acquire_owned()
            .map(|permit| Slot { _permit: permit })
            .map_err(|_| overloaded())
    }

    /// Bounds `routes`: each request takes a slot as it starts, or is
    /// answered 503 `overloaded` at once.
    pub fn bound<S: Clone + Send + Sync + 'static>(&self, routes: Router<S>) -> Router<S> {
        routes.route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(shed))
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::with_semaphore(self.0.clone())),
        )
    }
}

fn overloaded() -> ApiError {
    metrics::counter!(m::REQUESTS_SHED).increment(1);
    ApiError::Overloaded
}

/// The answer to a request refused by the tower layers.
async fn shed(error: BoxError) -> ApiError {
    if error.is::<tower::load_shed::error::Overloaded>() {
        overloaded()
    } else {
        ApiError::Internal(error.to_string())
    }
}
