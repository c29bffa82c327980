//! One shard's consumer, run only while this worker holds the shard's lease:
//! its own connection, one delivery at a time, strictly in order.

use super::consume::Worker;
use super::delivery::{settle, Disposition};
use crate::queue::reconnect::until_done;
use crate::store::leases::Fence;
use futures_util::StreamExt;
use lapin::{Connection, Consumer};
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
/// How long an ack may take before the connection is deemed dead.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

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
        if close(&connection).await {
            drop((consumer, channel));
        } else {
            // Still open as far as lapin knows: dropping would cancel.
            std::mem::forget((consumer, channel));
        }
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
    loop {
        // Only between messages: the batch in hand is always finished.
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(ShardEnd::Stopped),
            next = consumer.next() => next,
            () = lost(connection) => return Err(closed()),
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => return Err(e),
            None => return Err(closed()),
        };
        let disposition = worker.handle(fence, &delivery, stop).await;
        // An ack sent just as the connection dies may never be answered.
        match tokio::time::timeout(SETTLE_TIMEOUT, settle(&delivery, disposition)).await {
            Ok(settled) => settled?,
            Err(_) => return Err(closed()),
        }
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

fn closed() -> lapin::Error {
    lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
        lapin::ConnectionState::Closed,
    ))
}

/// Resolves once `connection` is no longer connected: a consumer whose
/// connection died does not always see its stream end.
async fn lost(connection: &Connection) {
    while connection.status().connected() {
        tokio::time::sleep(Duration::from_secs(1)).await;
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
