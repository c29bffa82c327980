//! `sync-ingest bench`: measures the service against raw limits (issue 6).
//! Being written.

/// Arguments of `sync-ingest bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {}
