//! The backlog: how deep the request queues are (sampled from the broker)
//! and how fast each shard drains (from finished jobs), once a second —
//! never per request. Back-pressure (429), queue positions and start
//! estimates all read the latest sample.

use crate::{
    queue::{reconnect, Topology},
    store::jobs,
    telemetry::metrics as m,
};
use lapin::{
    options::QueueDeclareOptions, types::FieldTable, Channel, Connection, ConnectionProperties,
};
use sqlx::PgPool;
use std::{
    sync::{Arc, RwLock},
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// How often the backlog is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The window over which drain rates are measured.
const RATE_WINDOW_SECS: i32 = 60;

/// The latest sample.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Ready messages per shard.
    pub ready: Vec<u64>,
    /// Jobs finished per second per shard, over the last minute.
    pub drain_per_sec: Vec<f64>,
}

impl Sample {
    /// Ready messages across every request queue.
    pub fn total_ready(&self) -> u64 {
        self.ready.iter().sum()
    }

    fn total_drain(&self) -> f64 {
        self.drain_per_sec.iter().sum()
    }
}

/// Shared view of the latest sample.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    latest: Arc<RwLock<Sample>>,
}

impl Backlog {
    /// The latest sample (empty before the first one).
    pub fn sample(&self) -> Sample {
        self.latest.read().map(|s| s.clone()).unwrap_or_default()
    }

    fn store(&self, sample: Sample) {
        if let Ok(mut latest) = self.latest.write() {
            *latest = sample;
        }
    }

    /// When the queues hold more than `max_ready` messages: the seconds a
    /// client should wait, from the excess and the current drain rate.
    pub fn retry_after(&self, max_ready: u64) -> Option<u64> {
        let sample = self.sample();
        let total = sample.total_ready();
        if total <= max_ready {
            return None;
        }
        let excess = (total - max_ready) as f64;
        let rate = sample.total_drain();
        let seconds = if rate > 0.0 {
            (excess / rate).ceil()
        } else {
            30.0
        };
        Some((seconds as u64).clamp(1, 60))
    }

    /// Jobs per second shard `shard` finished lately, if it finished any.
    pub fn drain_rate(&self, shard: usize) -> Option<f64> {
        self.sample()
            .drain_per_sec
            .get(shard)
            .copied()
            .filter(|r| *r > 0.0)
    }

    /// Ready messages in shard `shard` at the last sample.
    pub fn ready(&self, shard: usize) -> u64 {
        self.sample().ready.get(shard).copied().unwrap_or(0)
    }
}

/// Samples until `stop` fires, reconnecting to the broker as every
/// long-lived connection does (`queue::reconnect`).
pub async fn run(
    url: String,
    topology: Topology,
    pool: PgPool,
    backlog: Backlog,
    stop: CancellationToken,
) {
    let session = || async {
        let (connection, channel) = open(&url).await?;
        let sampled = sample_until_stopped(&channel, &topology, &pool, &backlog, &stop).await;
        if sampled.is_ok() {
            let _ = connection.close(200, "stopping".into()).await;
        }
        sampled.map(Some)
    };
    reconnect::until_done(&stop, "backlog sampler", session).await;
}

/// Samples once a second on `channel` until `stop` fires (Ok) or the
/// broker is lost (Err).
async fn sample_until_stopped(
    channel: &Channel,
    topology: &Topology,
    pool: &PgPool,
    backlog: &Backlog,
    stop: &CancellationToken,
) -> Result<(), lapin::Error> {
    loop {
        let ready = ready_counts(channel, topology).await?;
        let drain_per_sec = match jobs::recently_finished_by_shard(pool, RATE_WINDOW_SECS).await {
            Ok(finished) => rates(topology.shards, finished),
            // The database is away: keep the last rates.
            Err(_) => backlog.sample().drain_per_sec,
        };
        backlog.store(Sample {
            ready,
            drain_per_sec,
        });
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

/// Jobs finished per second per shard, from the count of each in the
/// rate window.
fn rates(shards: u16, finished: Vec<(i32, i64)>) -> Vec<f64> {
    let mut rates = vec![0.0; usize::from(shards)];
    for (shard, count) in finished {
        if let Some(rate) = usize::try_from(shard).ok().and_then(|s| rates.get_mut(s)) {
            *rate = count as f64 / f64::from(RATE_WINDOW_SECS);
        }
    }
    rates
}

async fn open(url: &str) -> Result<(Connection, Channel), lapin::Error> {
    let properties =
        ConnectionProperties::default().with_connection_name("sync-ingest backlog sampler".into());
    let connection = Connection::connect(url, properties).await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

/// Ready messages per request queue, via passive declares (which also
/// updates the `sync_queue_messages` gauges, dead letters included).
async fn ready_counts(channel: &Channel, topology: &Topology) -> Result<Vec<u64>, lapin::Error> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let mut ready = Vec::with_capacity(usize::from(topology.shards));
    for queue in topology.request_queues() {
        let declared = channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await?;
        let count = u64::from(declared.message_count());
        metrics::gauge!(m::QUEUE_CONSUMERS, "queue" => queue.clone())
            .set(f64::from(declared.consumer_count()));
        metrics::gauge!(m::QUEUE_MESSAGES, "queue" => queue).set(count as f64);
        ready.push(count);
    }
    let dead = topology.dead();
    let declared = channel
        .queue_declare(dead.as_str().into(), passive, FieldTable::default())
        .await?;
    metrics::gauge!(m::QUEUE_MESSAGES, "queue" => dead).set(f64::from(declared.message_count()));
    Ok(ready)
}
