//! One shard's consumer, run only while this worker holds the shard's lease:
//! its own connection, one delivery at a time, strictly in order.

use super::consume::Worker;
use super::delivery::{settle, Disposition};
use crate::queue::reconnect::until_done;
use crate::store::leases::Fence;
use futures_util::StreamExt;
use lapin::Connection;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a shard's consumer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardEnd {
    /// Asked to stop: the batch in hand was finished first.
    Stopped,
    /// A batch found the lease gone: nothing of it was written.
    Fenced,
}

/// How long closing a connection may take; a broker that does not answer
/// sees it go when the process ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Consumes the shard `fence` names until `stop` fires or a batch is
/// fenced, reconnecting after broker failures. Every way out closes the
/// connection — never `basic.cancel`: on a single-active-consumer queue
/// RabbitMQ activates the next consumer on a cancel while the cancelled one
/// still holds messages, whereas a closed connection gives back everything
/// it held in one step, ahead of the ready messages, before anyone else is
/// active (`rabbit_fifo:handle_down`).
pub async fn run(worker: Worker, fence: Fence, stop: CancellationToken) -> ShardEnd {
    let what = format!("shard {}", fence.lease.shard);
    let session = || async {
        let connection = worker.connect(&what).await?;
        let ended = consume(&worker, &connection, fence, &stop).await;
        close(&connection).await;
        ended.map(Some)
    };
    until_done(&stop, &what, session)
        .await
        .unwrap_or(ShardEnd::Stopped)
}

async fn consume(
    worker: &Worker,
    connection: &Connection,
    fence: Fence,
    stop: &CancellationToken,
) -> Result<ShardEnd, lapin::Error> {
    let shard = fence.lease.shard;
    let queue = worker.topology().request_queue(shard);
    let (_channel, mut consumer) = worker
        .subscribe(connection, queue, &format!("worker-{shard}"))
        .await?;
    tracing::info!(shard, epoch = fence.lease.epoch, "consuming shard");
    loop {
        // Only between messages: the batch in hand is always finished.
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(ShardEnd::Stopped),
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => return Err(e),
            None => {
                return Err(lapin::Error::from(
                    lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
                ))
            }
        };
        let disposition = worker.handle(fence, &delivery, stop).await;
        settle(&delivery, disposition).await?;
        match disposition {
            Disposition::Fenced => {
                tracing::warn!(
                    shard,
                    epoch = fence.lease.epoch,
                    "lease lost: batch fenced off"
                );
                return Ok(ShardEnd::Fenced);
            }
            Disposition::GiveBack => return Ok(ShardEnd::Stopped),
            _ => {}
        }
    }
}

/// Closes `connection` (bounded); what it still held goes back to the queue.
pub(super) async fn close(connection: &Connection) {
    let closing = connection.close(200, "shard released".into());
    if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
        tracing::warn!("broker did not confirm closing a connection");
    }
}
