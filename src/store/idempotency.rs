//! Idempotency keys: a retried request with the same key and body gets the
//! original job back instead of a second one.

use super::StoreError;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
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

/// A company's idempotency key, locked so that concurrent requests with
/// it run one after the other; the lock is held until [`KeyLock::release`]
/// (or the lock is dropped).
pub struct KeyLock {
    tx: Transaction<'static, Postgres>,
    company: Uuid,
    key: String,
}

impl KeyLock {
    /// Waits for the key's lock, then reads what the key recorded.
    pub async fn take(
        pool: &PgPool,
        company: Uuid,
        key: &str,
    ) -> Result<(KeyLock, Option<Recorded>), StoreError> {
        let mut tx = pool.begin().await?;
        let recorded = lock_and_find(&mut tx, company, key).await?;
        let lock = KeyLock {
            tx,
            company,
            key: key.to_owned(),
        };
        Ok((lock, recorded))
    }

    /// Records the key's first request, once the lock is released.
    pub async fn record(&mut self, recorded: &Recorded) -> Result<(), StoreError> {
        Ok(record(&mut self.tx, self.company, &self.key, recorded).await?)
    }

    /// Releases the lock, keeping what was recorded.
    pub async fn release(self) -> Result<(), StoreError> {
        Ok(self.tx.commit().await?)
    }
}

/// Takes the key's lock until the end of `tx`; then reads what it recorded.
async fn lock_and_find(
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
async fn record(
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
