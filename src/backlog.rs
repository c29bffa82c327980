//! The backlog: how deep the request queues are (sampled from the broker)
//! and how fast each shard drains (from finished jobs), once a second —
//! never per request. Back-pressure (429), queue positions and start
//! estimates all read the latest sample.

use crate::{queue::Topology, store::jobs, telemetry::metrics as m};
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

/// Samples until `stop` fires.
pub async fn run(
    url: String,
    topology: Topology,
    pool: PgPool,
    backlog: Backlog,
    stop: CancellationToken,
) {
    let mut channel: Option<(Connection, Channel)> = None;
    loop {
        if channel
            .as_ref()
            .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            channel = open(&url).await.ok();
        }
        let mut sample = backlog.sample();
        if let Some((_, ch)) = &channel {
            match ready_counts(ch, &topology).await {
                Ok(ready) => sample.ready = ready,
                Err(error) => {
                    tracing::debug!(%error, "cannot sample queue depths");
                    channel = None;
                }
            }
        }
        if let Ok(finished) = jobs::recently_finished_by_shard(&pool, RATE_WINDOW_SECS).await {
            let mut rates = vec![0.0; usize::from(topology.shards)];
            for (shard, count) in finished {
                if let Some(rate) = usize::try_from(shard).ok().and_then(|s| rates.get_mut(s)) {
                    *rate = count as f64 / f64::from(RATE_WINDOW_SECS);
                }
            }
            sample.drain_per_sec = rates;
        }
        backlog.store(sample);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
    if let Some((connection, _)) = channel {
        let _ = connection.close(200, "stopping".into()).await;
    }
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
