//! `sync-ingest push`: the bulk loader (issue 6). Being written.

/// Arguments of `sync-ingest push`.
#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {}
