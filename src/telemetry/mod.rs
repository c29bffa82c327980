//! Logging and metrics set-up.

pub mod metrics;
pub mod trace;

use crate::config::LogFormat;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::OnceLock;
use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global tracing subscriber (`RUST_LOG`, default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The process-wide Prometheus recorder (global by design), installed on
/// first use.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = metrics::prometheus_builder()
                .install_recorder()
                .unwrap_or_else(|e| panic!("the metrics recorder installs once: {e}"));
            metrics::describe();
            handle
        })
        .clone()
}

/// Samples the database pool's connections into `sync_db_pool_connections`
/// every few seconds until `stop` fires.
pub async fn sample_pool(pool: sqlx::PgPool, stop: tokio_util::sync::CancellationToken) {
    loop {
        let size = f64::from(pool.size());
        let idle = pool.num_idle() as f64;
        ::metrics::gauge!(metrics::DB_POOL_CONNECTIONS, "state" => "idle").set(idle);
        ::metrics::gauge!(metrics::DB_POOL_CONNECTIONS, "state" => "in_use").set(size - idle);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    }
}
