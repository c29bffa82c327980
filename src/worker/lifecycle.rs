//! A worker's life: the membership, which claims shards and runs their
//! consumers, beside the dead-letter recorder.

use super::context::Worker;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

impl Worker {
    /// Runs until `stop` fires: the membership (which claims shards and
    /// runs their consumers) and the dead-letter recorder. On `stop`, the
    /// shards are handed over before this returns.
    pub async fn run(self, stop: CancellationToken, status: watch::Sender<super::Status>) {
        let recorder = tokio::spawn(super::dead_letters::run(self.clone(), stop.clone()));
        super::membership::run(self, status, stop).await;
        let _ = recorder.await;
        tracing::info!("worker stopped");
    }
}
