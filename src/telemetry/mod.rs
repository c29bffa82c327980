//! Logging and metrics set-up.

pub mod metrics;

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
