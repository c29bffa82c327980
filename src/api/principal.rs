//! Extracting the authenticated [`Principal`] from a request.

use super::{error::ApiError, state::AppState};
use crate::auth::{AuthError, Principal};
use axum::{extract::FromRequestParts, http::request::Parts};

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        state.auth.authenticate(header).await.map_err(|e| match e {
            AuthError::Missing => ApiError::Unauthorized("a bearer token is required".into()),
            AuthError::Invalid(reason) => {
                tracing::info!(%reason, "token refused");
                ApiError::Unauthorized("the bearer token is invalid, expired or revoked".into())
            }
            AuthError::Store(e) => ApiError::from(e),
        })
    }
}
