//! Authentication (API keys, JWTs) and authorization (scopes, tenancy).

pub mod access;
pub mod api_key;
mod jwt;
mod principal;

pub use jwt::JwtVerifier;
pub use principal::{Principal, Role, SCOPE_READ, SCOPE_WRITE};

use sqlx::PgPool;

/// Why a bearer token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("could not check the API key: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Turns an `Authorization` header into a [`Principal`].
#[derive(Debug, Clone)]
pub struct Authenticator {
    pool: PgPool,
    jwt: Option<JwtVerifier>,
}

impl Authenticator {
    /// API keys are checked against `pool`; JWTs only when `jwt` is set.
    pub fn new(pool: PgPool, jwt: Option<JwtVerifier>) -> Self {
        Authenticator { pool, jwt }
    }

    /// Authenticates the value of an `Authorization` header.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let (scheme, token) = header.split_once(' ').ok_or(AuthError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing);
        }
        let token = token.trim();
        if api_key::looks_like_key(token) {
            return api_key::verify(&self.pool, token)
                .await?
                .ok_or_else(|| AuthError::Invalid("unknown or revoked API key".into()));
        }
        let jwt = self
            .jwt
            .as_ref()
            .ok_or_else(|| AuthError::Invalid("JWTs are not accepted here".into()))?;
        jwt.verify(token)
            .map_err(|e| AuthError::Invalid(format!("{e}")))
    }
}
