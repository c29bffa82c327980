//! Liveness and readiness.

use super::state::AppState;
use axum::{extract::State, http::StatusCode, Json};
use serde_json::{json, Value};

/// The process is alive.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database and the broker are reachable; in a worker, its heartbeat is
/// current too (it holds its leases or is a standby), and the body says
/// which shards it holds.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (database, broker) =
        tokio::join!(crate::store::ping(&state.pool), state.publisher.is_ready());
    let membership = state.membership.as_ref().map(|m| m.borrow().clone());
    let member = membership.as_ref().is_none_or(|m| m.is_current());
    let ready = database && broker && member;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let mut body = json!({
        "status": word(ready),
        "database": word(database),
        "broker": word(broker),
    });
    if let Some(m) = membership {
        body["membership"] = json!(word(member));
        body["shards"] = json!(m.shards);
        body["workers"] = json!(m.workers);
    }
    (status, Json(body))
}
