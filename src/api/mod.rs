//! The HTTP front: routers for the public and the operations listener.

mod answer;
mod backpressure;
mod body;
mod error;
mod health;
mod http_metrics;
mod in_flight;
mod jobs;
mod listener;
mod openapi;
mod prefer;
mod principal;
mod progress;
mod state;
mod submit;

pub use answer::Accepted;
pub use error::ApiError;
pub use in_flight::InFlight;
pub use listener::{serve, ConnectionLimit};
pub use state::AppState;

use crate::domain::Operation;
use axum::{
    http::header,
    middleware,
    response::IntoResponse,
    routing::{get, post},
    Extension, Router,
};
use tower_http::trace::TraceLayer;

/// The public API: `/api/v1/…`, `/healthz`, `/readyz`. At most
/// `max_requests_in_flight` requests are worked on at once (see
/// [`InFlight`]); one more is answered 503 `overloaded` at once, so that
/// memory stays bounded whatever clients do.
pub fn public_router(state: AppState) -> Router {
    let bounded = state.in_flight.bound(
        Router::new()
            .route("/api/v1/sync/jobs", get(jobs::list_jobs))
            .route("/api/v1/sync/jobs/{correlation_id}", get(jobs::get_job))
            .route(
                "/api/v1/sync/jobs/{correlation_id}/cancel",
                post(jobs::cancel_job),
            )
            .route("/api/v1/openapi.json", get(openapi_document))
            .route("/healthz", get(health::healthz))
            .route("/readyz", get(health::readyz)),
    );
    Router::new()
        // The body is read, held to `max_body_bytes` and `body_timeout_secs`,
        // by the handler, which takes its in-flight slot once it has arrived.
        .route(
            "/api/v1/sync/{entity}",
            post(submit::submit).layer(Extension(Operation::Upsert)),
        )
        .route(
            "/api/v1/sync/{entity}/delete",
            post(submit::submit).layer(Extension(Operation::Delete)),
        )
        .merge(bounded)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(http_metrics::trace_context))
        .layer(middleware::from_fn(http_metrics::track))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::extract::Request| {
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        uri = %request.uri(),
                        trace_id = tracing::field::Empty,
                    )
                })
                .on_response(
                    tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO),
                ),
        )
        .with_state(state)
}

/// The operations listener: `/metrics`, `/healthz`, `/readyz`. Never public.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such resource".into())
}

async fn openapi_document(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<serde_json::Value> {
    axum::Json(openapi::document(&state.settings))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::prometheus().render(),
    )
}
