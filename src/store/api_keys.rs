//! The `api_keys` table. Secrets are never stored, only their SHA-256.

use super::StoreError;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// A key as listed to operators: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ApiKeyRecord {
    pub id: String,
    pub company_guid: Uuid,
    pub scopes: Vec<String>,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key as the authenticator needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredKey {
    pub company_guid: Uuid,
    pub scopes: Vec<String>,
    pub secret_hash: Vec<u8>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Stores a new key.
pub async fn insert(
    pool: &PgPool,
    id: &str,
    company: Uuid,
    scopes: &[String],
    name: Option<&str>,
    secret_hash: &[u8],
) -> Result<ApiKeyRecord, StoreError> {
    sqlx::query_as(
        "INSERT INTO api_keys (id, company_guid, scopes, name, secret_hash) \
         VALUES ($1, $2, $3, $4, $5) \
         RETURNING id, company_guid, scopes, name, created_at, revoked_at",
    )
    .bind(id)
    .bind(company)
    .bind(scopes)
    .bind(name)
    .bind(secret_hash)
    .fetch_one(pool)
    .await
    .map_err(StoreError::from)
}

/// The key with this lookup id, revoked or not.
pub async fn find(pool: &PgPool, id: &str) -> Result<Option<StoredKey>, StoreError> {
    sqlx::query_as(
        "SELECT company_guid, scopes, secret_hash, revoked_at FROM api_keys WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)
}

/// Every key, or one company's, oldest first.
pub async fn list(pool: &PgPool, company: Option<Uuid>) -> Result<Vec<ApiKeyRecord>, StoreError> {
    sqlx::query_as(
        "SELECT id, company_guid, scopes, name, created_at, revoked_at FROM api_keys \
         WHERE $1::uuid IS NULL OR company_guid = $1 ORDER BY created_at, id",
    )
    .bind(company)
    .fetch_all(pool)
    .await
    .map_err(StoreError::from)
}

/// Revokes a key; false if there is no such key. Revoking twice keeps the
/// first revocation time.
pub async fn revoke(pool: &PgPool, id: &str) -> Result<bool, StoreError> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?;
    Ok(done.rows_affected() == 1)
}
