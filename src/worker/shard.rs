//! One shard's consumer, run only while this worker holds the shard's lease:
//! its own connection, one delivery at a time, strictly in order.

use super::context::Worker;
use super::delivery::{next_delivery, settle, Disposition};
use crate::queue::reconnect::until_done;
use crate::store::leases::Fence;
use lapin::{Channel, Connection, Consumer};
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

/// How a shard's consumer is told to stop.
#[derive(Clone, Default)]
pub struct Stop {
    /// Stop taking messages; the batch in hand is finished first.
    pub gracefully: CancellationToken,
    /// Stop at once, even in the middle of a batch (the lease is gone: the
    /// batch cannot commit after the next owner's claim, and comes again).
    pub at_once: CancellationToken,
}

/// Consumes the shard `fence` names until told to stop or a batch is
/// fenced, reconnecting after broker failures. Every way out closes the
/// connection — never `basic.cancel`: on a single-active-consumer queue
/// RabbitMQ activates the next consumer on a cancel while the cancelled one
/// still holds messages, whereas a closed connection gives back everything
/// it held in one step, ahead of the ready messages, before anyone else is
/// active (`rabbit_fifo:handle_down`). (Dropping a lapin `Consumer` whose
/// channel is open sends a cancel: it is dropped only once the connection
/// is closed.)
pub async fn run(worker: Worker, fence: Fence, stop: Stop) -> ShardEnd {
    let shard = fence.lease.shard;
    let what = format!("shard {shard}");
    let session = || async {
        let connection = worker.connect(&what).await?;
        let queue = worker.topology().request_queue(shard);
        let tag = format!("worker-{shard}");
        let (channel, mut consumer) = match worker.subscribe(&connection, queue, &tag).await {
            Ok(subscribed) => subscribed,
            Err(error) => {
                close(&connection).await;
                return Err(error);
            }
        };
        tracing::info!(shard, epoch = fence.lease.epoch, "consuming shard");
        let ended = tokio::select! {
            ended = consume(&worker, &connection, &mut consumer, fence, &stop.gracefully) => ended,
            _ = stop.at_once.cancelled() => Ok(ShardEnd::Stopped),
        };
        close_then_drop(&connection, (channel, consumer)).await;
        ended.map(Some)
    };
    until_done(&stop.gracefully, &what, session)
        .await
        .unwrap_or(ShardEnd::Stopped)
}

async fn consume(
    worker: &Worker,
    connection: &Connection,
    consumer: &mut Consumer,
    fence: Fence,
    stop: &CancellationToken,
) -> Result<ShardEnd, lapin::Error> {
    let shard = fence.lease.shard;
    // Only between messages: the batch in hand is always finished.
    while let Some(delivery) = next_delivery(consumer, connection, stop).await? {
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
    Ok(ShardEnd::Stopped)
}

/// Closes `connection`, then drops its channel and consumer. A lapin
/// `Consumer` dropped while its channel is open sends `basic.cancel`; if
/// the close was not confirmed, they are leaked rather than dropped.
pub(super) async fn close_then_drop(connection: &Connection, subscribed: (Channel, Consumer)) {
    if close(connection).await {
        drop(subscribed);
    } else {
        std::mem::forget(subscribed);
    }
}

/// Closes `connection` (bounded); what it still held goes back to the
/// queue. False if the broker did not confirm in time.
pub(super) async fn close(connection: &Connection) -> bool {
    let closing = connection.close(200, "consumer stopping".into());
    let closed = tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_ok();
    if !closed {
        tracing::warn!("broker did not confirm closing a connection");
    }
    closed
}
