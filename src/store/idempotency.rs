//! Idempotency keys: a retried request with the same key and body gets the
//! original job back instead of a second one.

use sqlx::PgConnection;
use uuid::Uuid;

/// How long a key is remembered.
pub const KEY_LIFETIME_HOURS: i32 = 24;

/// What a key recorded about its first request.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Recorded {
    pub request_hash: Vec<u8>,
    pub correlation_id: Uuid,
    pub guids: Vec<Uuid>,
}

/// Takes the key's lock until the end of `tx`, so that concurrent requests
/// with one key run one after the other; then reads what it recorded.
pub async fn lock_and_find(
    tx: &mut PgConnection,
    company: Uuid,
    key: &str,
) -> Result<Option<Recorded>, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2, 7))")
        .bind(company)
        .bind(key)
        .execute(&mut *tx)
        .await?;
    sqlx::query_as(
        "SELECT request_hash, correlation_id, guids FROM idempotency_keys \
         WHERE company_guid = $1 AND key = $2 \
           AND created_at > now() - make_interval(hours => $3)",
    )
    .bind(company)
    .bind(key)
    .bind(KEY_LIFETIME_HOURS)
    .fetch_optional(&mut *tx)
    .await
}

/// Records the key's first request (replacing an expired record).
pub async fn record(
    tx: &mut PgConnection,
    company: Uuid,
    key: &str,
    recorded: &Recorded,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idempotency_keys (company_guid, key, request_hash, correlation_id, guids) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (company_guid, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, \
             correlation_id = EXCLUDED.correlation_id, guids = EXCLUDED.guids, created_at = now()",
    )
    .bind(company)
    .bind(key)
    .bind(&recorded.request_hash)
    .bind(recorded.correlation_id)
    .bind(&recorded.guids)
    .execute(tx)
    .await?;
    Ok(())
}

/// Deletes up to `limit` expired keys; returns how many.
pub async fn purge_expired(conn: &mut PgConnection, limit: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys \
         WHERE created_at < now() - make_interval(hours => $1) LIMIT $2)",
    )
    .bind(KEY_LIFETIME_HOURS)
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
