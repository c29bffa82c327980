//! What every handler can reach.

use crate::{auth::Authenticator, config::Settings, queue::Publisher};
use sqlx::PgPool;
use std::sync::Arc;

/// Shared, cheaply cloned state of the HTTP front.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: PgPool,
    pub publisher: Arc<Publisher>,
    pub auth: Authenticator,
}
