//! The api's ear on the results exchange: one consumer per api process,
//! waking requests that wait (`Prefer: wait=N`) for their job to finish.

use super::topology::Topology;
use crate::telemetry::metrics as m;
use futures_util::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
    Connection, ConnectionProperties, Consumer,
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Requests waiting for their job, by correlation id.
#[derive(Clone, Default)]
pub struct JobWaiters {
    waiting: Arc<Mutex<HashMap<Uuid, watch::Sender<u64>>>>,
}

/// One request's wait; dropping it unregisters.
pub struct Waiter {
    id: Uuid,
    /// Bumped on every notification for this job.
    notified: watch::Receiver<u64>,
    waiters: JobWaiters,
}

impl JobWaiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, watch::Sender<u64>>> {
        // A poisoned map only means a panic elsewhere while it was held; the
        // map itself is still consistent (single inserts and removes).
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers interest in `id` (before its message is published, so the
    /// result cannot slip past).
    pub fn register(&self, id: Uuid) -> Waiter {
        let (sender, notified) = watch::channel(0);
        let mut waiting = self.lock();
        let notified = match waiting.get(&id) {
            Some(existing) => existing.subscribe(),
            None => {
                waiting.insert(id, sender);
                notified
            }
        };
        metrics::gauge!(m::WAITING_REQUESTS).set(waiting.len() as f64);
        Waiter {
            id,
            notified,
            waiters: self.clone(),
        }
    }

    /// Wakes whoever waits for `id`.
    pub fn notify(&self, id: Uuid) {
        if let Some(sender) = self.lock().get(&id) {
            sender.send_modify(|n| *n += 1);
        }
    }

    /// Wakes every waiting request, so each reads its job once: after the
    /// listener (re)connects, results published meanwhile were not heard.
    pub fn notify_all(&self) {
        for sender in self.lock().values() {
            sender.send_modify(|n| *n += 1);
        }
    }
}

impl Waiter {
    /// Waits until a notification for the job arrives or `limit` passes;
    /// true if one arrived. The caller then reads the job: a notification
    /// says "look again", not "finished".
    pub async fn wait(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.notified.changed())
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiting = self.waiters.lock();
        if waiting
            .get(&self.id)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            waiting.remove(&self.id);
        }
        metrics::gauge!(m::WAITING_REQUESTS).set(waiting.len() as f64);
    }
}

/// Listens to `{prefix}.results` on a private queue until `stop` fires,
/// reconnecting after failures.
/// `bound` turns true once the private queue is bound (the api waits for
/// that before serving, so no early result is missed).
pub async fn listen(
    url: String,
    topology: Topology,
    waiters: JobWaiters,
    bound: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let session = || async {
        listen_once(&url, &topology, &waiters, &bound, &stop).await?;
        Ok(None::<()>)
    };
    super::reconnect::until_done(&stop, "results listener", session).await;
}

async fn listen_once(
    url: &str,
    topology: &Topology,
    waiters: &JobWaiters,
    bound: &watch::Sender<bool>,
    stop: &CancellationToken,
) -> Result<(), lapin::Error> {
    let properties =
        ConnectionProperties::default().with_connection_name("sync-ingest api results".into());
    let connection = Connection::connect(url, properties).await?;
    let mut consumer = subscribe(&connection, topology).await?;
    // Results published while we were away are not replayed: every waiting
    // request reads its job row once now, and again when its wait ends.
    bound.send_replace(true);
    waiters.notify_all();
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(delivery) => delivery?,
            None => break,
        };
        let id = delivery.properties.correlation_id().as_ref();
        if let Some(id) = id.and_then(|id| Uuid::parse_str(id.as_str()).ok()) {
            waiters.notify(id);
        }
    }
    let _ = connection.close(200, "stopping".into()).await;
    Ok(())
}

/// A consumer of every result, on a queue of this connection's own.
async fn subscribe(connection: &Connection, topology: &Topology) -> Result<Consumer, lapin::Error> {
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    // Server-named, exclusive, auto-delete: it lives exactly as long as this
    // connection, so no api instance leaves a queue behind.
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("".into(), private, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            topology.results().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    channel
        .basic_consume(
            queue.name().clone(),
            "api-results".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
}
