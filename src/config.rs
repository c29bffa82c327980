//! Service settings: flags with environment-variable fallbacks (SPEC §2).

use clap::{Args, ValueEnum};
use std::{net::SocketAddr, time::Duration};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the api and the worker need to run. Defaults let
/// `sync-ingest all` run against a local PostgreSQL and RabbitMQ as is.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// PostgreSQL URL; the database is created if missing.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/sync_ingest"
    )]
    pub database_url: String,

    /// RabbitMQ URL.
    #[arg(
        long,
        global = true,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    /// Public listener (api): /api/v1/…, /healthz, /readyz.
    #[arg(
        long,
        global = true,
        env = "SYNC_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http_addr: SocketAddr,

    /// Operations listener: /metrics, /healthz, /readyz. Defaults to
    /// 127.0.0.1:9090, or 127.0.0.1:9091 for `worker`.
    #[arg(long, global = true, env = "SYNC_OPS_ADDR")]
    pub ops_addr: Option<SocketAddr>,

    /// Prefix of every exchange and queue name.
    #[arg(long, global = true, env = "SYNC_QUEUE_PREFIX", default_value = "sync")]
    pub queue_prefix: String,

    /// Number of request queues (shards).
    #[arg(long, global = true, env = "SYNC_SHARDS", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub shards: u16,

    /// Larger request bodies get 413.
    #[arg(long, global = true, env = "SYNC_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// A request body not fully arrived within this many seconds gets 408
    /// and its connection closed; a request's headers must arrive within it
    /// too, and a kept-alive connection idle this long is closed.
    #[arg(
        long,
        global = true,
        env = "SYNC_BODY_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub body_timeout_secs: u64,

    /// Connections the public listener keeps open at once; one more is
    /// closed as soon as it is accepted.
    #[arg(
        long,
        global = true,
        env = "SYNC_MAX_CONNECTIONS",
        default_value_t = 1024
    )]
    pub max_connections: usize,

    /// Requests the public listener works on at once (`Prefer: wait` ones
    /// included); one more is answered 503 at once.
    #[arg(
        long,
        global = true,
        env = "SYNC_MAX_REQUESTS_IN_FLIGHT",
        default_value_t = 256
    )]
    pub max_requests_in_flight: usize,

    /// Items of one company accepted and not yet finished above which that
    /// company (only) gets 429 company_backlog_full.
    #[arg(
        long,
        global = true,
        env = "SYNC_MAX_COMPANY_BACKLOG",
        default_value_t = 200_000
    )]
    pub max_company_backlog: i64,

    /// Items per request for every entity but pieces.
    #[arg(long, global = true, env = "SYNC_MAX_BATCH", default_value_t = 5000)]
    pub max_batch: usize,

    /// Items per request for pieces.
    #[arg(
        long,
        global = true,
        env = "SYNC_MAX_BATCH_PIECES",
        default_value_t = 1000
    )]
    pub max_batch_pieces: usize,

    /// Ready messages across the request queues above which the api answers 429;
    /// also each request queue's `x-max-length`.
    #[arg(
        long,
        global = true,
        env = "SYNC_MAX_QUEUE_DEPTH",
        default_value_t = 100_000
    )]
    pub max_queue_depth: u64,

    /// How often a request queue's message may be redelivered before it is
    /// dead-lettered (`x-delivery-limit`).
    #[arg(long, global = true, env = "SYNC_DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,

    /// Unacknowledged messages a worker holds per shard. Keep it 1: when a
    /// worker dies, every message it held counts a delivery, so with more
    /// the innocent messages behind a crashing one would share its fate at
    /// the delivery limit.
    #[arg(long, global = true, env = "SYNC_PREFETCH", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,

    /// How long a worker's shard leases (and its place among the workers)
    /// last without a heartbeat: a worker that died or froze loses its
    /// shards after at most this plus one heartbeat interval.
    #[arg(long, global = true, env = "SYNC_LEASE_TTL_SECS", default_value_t = 6, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_ttl_secs: u64,

    /// How often a worker renews its leases and rebalances; at most a third
    /// of the lease TTL, so that two heartbeats may fail before it runs out.
    #[arg(long, global = true, env = "SYNC_HEARTBEAT_SECS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1200))]
    pub heartbeat_secs: u64,

    /// How long the api waits for the broker to confirm a publish.
    #[arg(
        long,
        global = true,
        env = "SYNC_CONFIRM_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub confirm_timeout_ms: u64,

    /// Time-to-live of messages in the `{prefix}.results` queue.
    #[arg(
        long,
        global = true,
        env = "SYNC_RESULTS_TTL_SECS",
        default_value_t = 86_400
    )]
    pub results_ttl_secs: u64,

    /// Maximum length of the `{prefix}.results` queue.
    #[arg(
        long,
        global = true,
        env = "SYNC_RESULTS_MAX_LENGTH",
        default_value_t = 100_000
    )]
    pub results_max_length: u64,

    /// HS256 secret for JWTs; unset: JWTs are refused.
    #[arg(long, global = true, env = "SYNC_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Required `iss` of JWTs, when set.
    #[arg(long, global = true, env = "SYNC_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of JWTs, when set.
    #[arg(long, global = true, env = "SYNC_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Finished jobs older than this are purged.
    #[arg(
        long,
        global = true,
        env = "SYNC_JOB_RETENTION_HOURS",
        default_value_t = 168
    )]
    pub job_retention_hours: u64,

    /// Tombstones of deleted rows older than this many days are purged.
    #[arg(
        long,
        global = true,
        env = "SYNC_TOMBSTONE_RETENTION_DAYS",
        default_value_t = 30
    )]
    pub tombstone_retention_days: u64,

    /// How often expired jobs and idempotency keys are purged.
    #[arg(
        long,
        global = true,
        env = "SYNC_PURGE_INTERVAL_SECS",
        default_value_t = 300
    )]
    pub purge_interval_secs: u64,

    /// Bound on a graceful shutdown.
    #[arg(
        long,
        global = true,
        env = "SYNC_SHUTDOWN_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub shutdown_timeout_secs: u64,

    /// `text` or `json` logs.
    #[arg(long, global = true, env = "SYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Settings {
    /// Settings as if no flag and no environment variable were given.
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        let parsed: Only = clap::Parser::try_parse_from(["sync-ingest"])
            .unwrap_or_else(|e| panic!("built-in defaults must parse: {e}"));
        parsed.settings
    }

    /// Items allowed in one request for `entity`.
    pub fn batch_limit(&self, entity: crate::domain::Entity) -> usize {
        match entity {
            crate::domain::Entity::Pieces => self.max_batch_pieces,
            _ => self.max_batch,
        }
    }

    /// How long the api waits for a publisher confirm.
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }

    /// Bound on a graceful shutdown.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}
