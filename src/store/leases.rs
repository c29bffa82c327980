//! Worker membership and shard leases (SPEC §6 "Workers share the shards").
//!
//! A worker heartbeats its row in `sync_workers`; a shard's row in
//! `sync_shard_leases` names its owner, the epoch of the claim and when the
//! lease runs out. Every batch transaction checks the lease it runs under
//! ([`fence`]) with a `FOR KEY SHARE` lock, and a claim takes the row
//! `FOR UPDATE`: the two conflict, so a claim waits for a batch of the old
//! owner to end, and that batch, if it has not checked yet, sees the new
//! epoch and rolls back. Heartbeats update non-key columns only, which does
//! not conflict with a batch's `FOR KEY SHARE`: a long batch never delays
//! its own worker's heartbeat.

use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// The channel `NOTIFY`ed whenever a worker joins or a shard is released,
/// so that the others rebalance at once instead of at their next beat.
pub const CHANGES: &str = "sync_shards";

/// A shard held under one claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lease {
    pub shard: u16,
    pub epoch: i64,
}

/// What one heartbeat saw.
#[derive(Debug, Clone, Default)]
pub struct Standing {
    /// Whether this heartbeat (re)registered the worker.
    pub joined: bool,
    /// Live workers, in rank order.
    pub members: Vec<Uuid>,
    /// This worker's leases, renewed.
    pub held: Vec<Lease>,
    /// Shards that no live lease covers, with the owner whose lease ran out
    /// (None for a released shard).
    pub free: Vec<(u16, Option<Uuid>)>,
}

/// The `application_name` of a worker's database connections: how a
/// successor finds the backends of a worker whose lease ran out.
pub fn application_name(worker: Uuid) -> String {
    format!("sync-ingest worker {worker}")
}

fn interval(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Makes sure every shard below `shards` has a lease row.
pub async fn ensure_shards(pool: &PgPool, shards: u16) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sync_shard_leases (shard) SELECT generate_series(0, $1 - 1) \
         ON CONFLICT (shard) DO NOTHING",
    )
    .bind(i32::from(shards))
    .execute(pool)
    .await?;
    Ok(())
}

/// One heartbeat, in one transaction: (re)registers `worker`, forgets the
/// workers whose heartbeat ran out, renews this worker's unexpired leases
/// and reads the membership and the free shards.
#[tracing::instrument(skip_all)]
pub async fn heartbeat(
    pool: &PgPool,
    worker: Uuid,
    name: &str,
    shards: u16,
    ttl: Duration,
) -> Result<Standing, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    // A worker frozen in the middle of its own heartbeat holds its rows
    // locked until its session is ended: wait for nothing of it.
    sqlx::query("SET LOCAL lock_timeout = 1000")
        .execute(&mut *tx)
        .await?;
    // Expiry counts from the clock, not from the start of the transaction,
    // which a slow round trip may have delayed.
    let joined: bool = sqlx::query_scalar(
        "INSERT INTO sync_workers (id, name, expires_at) \
         VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3)) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), expires_at = EXCLUDED.expires_at \
         RETURNING (xmax = 0)",
    )
    .bind(worker)
    .bind(name)
    .bind(interval(ttl))
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM sync_workers WHERE id IN \
         (SELECT id FROM sync_workers WHERE expires_at <= now() FOR UPDATE SKIP LOCKED)",
    )
    .execute(&mut *tx)
    .await?;
    let held = renew_on(&mut tx, worker, shards, ttl).await?;
    let members: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM sync_workers ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    let free: Vec<(i32, Option<Uuid>)> = sqlx::query_as(
        "SELECT shard, owner FROM sync_shard_leases \
         WHERE shard < $1 AND (owner IS NULL OR expires_at <= now()) ORDER BY shard",
    )
    .bind(i32::from(shards))
    .fetch_all(&mut *tx)
    .await?;
    if joined {
        notify(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(Standing {
        joined,
        members,
        held,
        free: free
            .into_iter()
            .map(|(shard, owner)| (shard_number(shard), owner))
            .collect(),
    })
}

/// Renews `worker`'s unexpired leases (below `shards`) and returns them;
/// the heartbeat of a worker that has left the membership and is handing
/// its shards over.
pub async fn renew(
    pool: &PgPool,
    worker: Uuid,
    shards: u16,
    ttl: Duration,
) -> Result<Vec<Lease>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    renew_on(&mut conn, worker, shards, ttl).await
}

async fn renew_on(
    conn: &mut PgConnection,
    worker: Uuid,
    shards: u16,
    ttl: Duration,
) -> Result<Vec<Lease>, sqlx::Error> {
    let held: Vec<(i32, i64)> = sqlx::query_as(
        "UPDATE sync_shard_leases SET expires_at = clock_timestamp() + make_interval(secs => $2) \
         WHERE owner = $1 AND expires_at > now() AND shard < $3 RETURNING shard, epoch",
    )
    .bind(worker)
    .bind(interval(ttl))
    .bind(i32::from(shards))
    .fetch_all(conn)
    .await?;
    Ok(held
        .into_iter()
        .map(|(shard, epoch)| Lease {
            shard: shard_number(shard),
            epoch,
        })
        .collect())
}

fn shard_number(shard: i32) -> u16 {
    u16::try_from(shard).unwrap_or(u16::MAX)
}

/// Ends every database session of `worker`, whose lease ran out: a worker
/// that was paused in the middle of a batch keeps its transaction, and the
/// row locks the next owner needs, open until then. Returns how many
/// sessions were ended.
pub async fn end_sessions_of(pool: &PgPool, worker: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(application_name(worker))
    .fetch_one(pool)
    .await
}

/// Claims `shard` for `worker` if no live lease covers it: epoch + 1. Waits
/// at most `wait` for a batch of the previous owner to end (its fence lock);
/// None if the shard was taken, or is still busy.
pub async fn claim(
    pool: &PgPool,
    shard: u16,
    worker: Uuid,
    ttl: Duration,
    wait: Duration,
) -> Result<Option<Lease>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = {}",
        wait.as_millis().max(1)
    ))
    .execute(&mut *tx)
    .await?;
    let claimed: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(
        "WITH old AS (SELECT shard FROM sync_shard_leases \
             WHERE shard = $1 AND (owner IS NULL OR expires_at <= now()) FOR UPDATE) \
         UPDATE sync_shard_leases l SET owner = $2, epoch = l.epoch + 1, claimed_at = now(), \
             expires_at = clock_timestamp() + make_interval(secs => $3) \
         FROM old WHERE l.shard = old.shard RETURNING l.epoch",
    )
    .bind(i32::from(shard))
    .bind(worker)
    .bind(interval(ttl))
    .fetch_optional(&mut *tx)
    .await;
    match claimed {
        Ok(epoch) => {
            tx.commit().await?;
            Ok(epoch.map(|epoch| Lease { shard, epoch }))
        }
        // 55P03 lock_not_available: the previous owner's batch still runs.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("55P03") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Gives `lease` up (its consumer has stopped) and tells the others.
pub async fn release(pool: &PgPool, worker: Uuid, lease: Lease) -> Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let done = sqlx::query(
        "UPDATE sync_shard_leases SET owner = NULL, expires_at = now() \
         WHERE shard = $1 AND owner = $2 AND epoch = $3",
    )
    .bind(i32::from(lease.shard))
    .bind(worker)
    .bind(lease.epoch)
    .execute(&mut *tx)
    .await?;
    notify(&mut tx).await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Removes `worker` from the membership (it is stopping) and tells the
/// others. Its leases must have been released first.
pub async fn leave(pool: &PgPool, worker: Uuid) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("DELETE FROM sync_workers WHERE id = $1")
        .bind(worker)
        .execute(&mut *tx)
        .await?;
    notify(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

async fn notify(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANGES)
        .execute(conn)
        .await?;
    Ok(())
}

/// What a batch runs under: the worker and the lease it claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub worker: Uuid,
    pub lease: Lease,
}

/// The fence, inside a batch's transaction: true while the worker still
/// holds the lease. Holds a `FOR KEY SHARE` lock on the lease row to the end
/// of the transaction, so no claim can take the shard before it commits.
pub async fn fence(conn: &mut PgConnection, fence: &Fence) -> Result<bool, sqlx::Error> {
    let held: Option<i32> = sqlx::query_scalar(
        "SELECT shard FROM sync_shard_leases WHERE shard = $1 AND owner = $2 AND epoch = $3 \
         FOR KEY SHARE",
    )
    .bind(i32::from(fence.lease.shard))
    .bind(fence.worker)
    .bind(fence.lease.epoch)
    .fetch_optional(conn)
    .await?;
    Ok(held.is_some())
}
