//! PostgreSQL access. Every SQL statement of the service lives below here.

pub mod api_keys;
pub mod deletions;
mod entities;
pub mod idempotency;
mod job;
pub mod job_list;
pub mod jobs;
pub mod leases;
mod recorder;

pub use entities::{find_foreign_references, upsert_batch, UpsertOutcome};
pub use jobs::{Job, JobError, JobErrorCode, JobStatus, NewJob};
pub use recorder::{JobRecorder, RecordError};

use sqlx::{
    migrate::MigrateError,
    postgres::{PgConnectOptions, PgPoolOptions},
    ConnectOptions, Connection, PgConnection, PgPool,
};
use std::{str::FromStr, time::Duration};

/// What can go wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] MigrateError),
    #[error("invalid DATABASE_URL: {0}")]
    Url(String),
    #[error("the database did not answer within {0:?}")]
    TimedOut(Duration),
}

impl StoreError {
    /// True when trying again later may succeed: the database is unreachable
    /// or restarting, or the transaction lost a serialization or deadlock race.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => is_transient(e),
            StoreError::TimedOut(_) => true,
            StoreError::Migrate(_) | StoreError::Url(_) => false,
        }
    }
}

/// Bounds a call: one that would hang (a partition that drops packets
/// leaves a socket waiting for many minutes) fails after `limit` instead.
pub async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, call).await {
        Ok(done) => Ok(done?),
        Err(_) => Err(StoreError::TimedOut(limit)),
    }
}

/// See [`StoreError::is_transient`].
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 40001 serialization_failure, 40P01 deadlock_detected,
            // 08… connection exceptions, 57P0… admin/crash shutdown,
            // 53… insufficient resources.
            code == "40001"
                || code == "40P01"
                || code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
        }),
        _ => false,
    }
}

/// Connects to the database, creating it first if it does not exist, and
/// applies pending migrations.
pub async fn connect_and_migrate(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    connect_and_migrate_as(url, max_connections, &Sessions::default()).await
}

/// How a process's database sessions present themselves to PostgreSQL.
#[derive(Debug, Clone)]
pub struct Sessions {
    /// `application_name`: a worker's names its id (see `leases`).
    pub application_name: String,
    /// `idle_in_transaction_session_timeout`: the database ends a
    /// transaction whose client went quiet (a paused worker) after this.
    pub idle_in_transaction: Option<Duration>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            application_name: "sync-ingest".into(),
            idle_in_transaction: None,
        }
    }
}

/// [`connect_and_migrate`] with sessions named and bounded by `sessions`.
pub async fn connect_and_migrate_as(
    url: &str,
    max_connections: u32,
    sessions: &Sessions,
) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::Url(e.to_string()))?;
    create_database_if_missing(&options).await?;
    let mut options = options.application_name(&sessions.application_name);
    if let Some(timeout) = sessions.idle_in_transaction {
        let millis = timeout.as_millis().max(1).to_string();
        options = options.options([("idle_in_transaction_session_timeout", millis)]);
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Applies pending migrations (forward only). Concurrent callers are
/// serialized by sqlx's advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), StoreError> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it between our check and CREATE.
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await?;
    Ok(())
}

/// Takes the session-level advisory lock named `name` if it is free; it is
/// held until [`unlock_session`] or the end of the session.
pub async fn try_lock_session(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(name)
        .fetch_one(conn)
        .await
}

/// Releases a lock taken with [`try_lock_session`].
pub async fn unlock_session(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

/// True when the database answers a trivial query.
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}
