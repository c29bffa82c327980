//! The raw limits the service is measured against: the worker's upsert
//! statement driven directly, and the broker with pipelined confirms.

use super::cpu::{CpuMeter, CpuPerItem, MachineLoad};
use super::{
    broker,
    data::{self, TenantLoad},
    stats::Rate,
    BenchError,
};
use futures_util::{stream::FuturesUnordered, StreamExt};
use lapin::{
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions,
    },
    types::FieldTable,
    BasicProperties, Connection, ConnectionProperties,
};
use sqlx::{Acquire, PgPool};
use std::{sync::Mutex, time::Instant};
use sync_ingest::{
    domain::{Batch, Entity},
    queue::{BatchMessage, Topology},
    store,
};
use uuid::Uuid;

/// Upserts every batch with `store::upsert_batch`, one transaction per
/// batch, from `connections` connections at once.
pub async fn database(
    pool: &PgPool,
    loads: &[TenantLoad],
    connections: usize,
) -> Result<Rate, BenchError> {
    // Read before the clock starts: this is the database's rate alone.
    let work = loads
        .iter()
        .flat_map(|l| &l.batches)
        .map(|pieces| Batch::read(Entity::Pieces, &pieces.body, usize::MAX))
        .collect::<Result<Vec<Batch>, _>>()?;
    let items: usize = work.iter().map(Batch::len).sum();
    let queue = Mutex::new(work.into_iter());
    let started = Instant::now();
    // The connections take turns on this task: the database does the work.
    let connection = || async {
        let mut conn = pool.acquire().await?;
        loop {
            let next = queue.lock().map_err(|_| BenchError::Poisoned)?.next();
            let Some(batch) = next else { break };
            let mut tx = conn.begin().await?;
            store::upsert_batch(&mut tx, &batch).await?;
            tx.commit().await?;
        }
        Ok::<(), BenchError>(())
    };
    futures_util::future::try_join_all((0..connections.max(1)).map(|_| connection())).await?;
    Ok(Rate::new(items, started.elapsed()))
}

/// One message of the raw broker baseline.
pub struct RawMessage {
    pub items: usize,
    pub shard: u16,
    pub body: Vec<u8>,
}

/// The messages the api would publish for these loads.
pub fn messages(loads: &[TenantLoad], topology: &Topology) -> Vec<RawMessage> {
    data::in_sending_order(loads)
        .map(|(tenant, items)| {
            let company = loads[tenant].company;
            let id = Uuid::now_v7();
            RawMessage {
                items: items.len(),
                shard: topology.shard_for(company),
                body: BatchMessage::forwarded(
                    id,
                    company,
                    false,
                    Entity::Pieces,
                    &items.body,
                    &items.guids,
                ),
            }
        })
        .collect()
}

/// Raw broker limits: (publish, consume).
pub struct BrokerRates {
    pub publish: Rate,
    pub consume: Rate,
    /// CPU the publisher and the broker spent per item while publishing.
    pub publish_cpu: CpuPerItem,
    /// How busy the cores were while publishing.
    pub publish_load: Option<MachineLoad>,
}

impl BrokerRates {
    /// The better of two runs, publish and consume each on their own.
    pub fn best_with(self, other: BrokerRates) -> BrokerRates {
        let consume = if other.consume.items_per_sec > self.consume.items_per_sec {
            other.consume
        } else {
            self.consume
        };
        let (publish, publish_cpu, publish_load) =
            if other.publish.items_per_sec > self.publish.items_per_sec {
                (other.publish, other.publish_cpu, other.publish_load)
            } else {
                (self.publish, self.publish_cpu, self.publish_load)
            };
        BrokerRates {
            publish,
            consume,
            publish_cpu,
            publish_load,
        }
    }
}

/// Publishes `messages` as the api does — persistent, mandatory, through
/// the requests exchange into their shards' quorum queues, declared with the
/// service's own topology, taking turns on `channels` confirm-mode channels
/// of one connection — with up to `window` confirms outstanding, then
/// consumes and acks them all. Nothing else happens: the broker's limit for
/// the service's traffic.
pub async fn broker(
    url: &str,
    topology: &Topology,
    messages: &[RawMessage],
    (channels, window): (usize, usize),
    broker_pid: Option<u32>,
) -> Result<BrokerRates, BenchError> {
    let items: usize = messages.iter().map(|m| m.items).sum();
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let mut publishers = Vec::new();
    for _ in 0..channels.max(1) {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        publishers.push(channel);
    }
    topology.declare(&publishers[0]).await?;
    broker::settle(broker_pid).await;
    let cpu = CpuMeter::bench_and_broker(broker_pid);
    let started = Instant::now();
    publish_all(topology, messages, &publishers, window).await?;
    let publish = Rate::new(items, started.elapsed());
    let publish_load = cpu.load();
    let publish_cpu = cpu.settled_per_item(items).await;
    let consuming = consume_all(&connection, topology, messages.len()).await?;
    let consume = Rate::new(items, consuming);
    let _ = connection.close(200, "bench done".into()).await;
    topology.remove(url).await;
    Ok(BrokerRates {
        publish,
        consume,
        publish_cpu,
        publish_load,
    })
}

/// Publishes every message, taking turns on `channels`, with up to
/// `window` confirms outstanding.
async fn publish_all(
    topology: &Topology,
    messages: &[RawMessage],
    channels: &[lapin::Channel],
    window: usize,
) -> Result<(), BenchError> {
    let exchange = topology.requests_exchange();
    let mut in_flight = FuturesUnordered::new();
    for (message, channel) in messages.iter().zip(channels.iter().cycle()) {
        if in_flight.len() >= window {
            if let Some(confirm) = in_flight.next().await {
                check_ack(confirm)?;
            }
        }
        let confirm = channel
            .basic_publish(
                exchange.as_str().into(),
                message.shard.to_string().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await?;
        in_flight.push(confirm);
    }
    while let Some(confirm) = in_flight.next().await {
        check_ack(confirm)?;
    }
    Ok(())
}

/// Consumes and acks `count` messages from every request queue; how long
/// that took, once subscribed.
async fn consume_all(
    connection: &Connection,
    topology: &Topology,
    count: usize,
) -> Result<std::time::Duration, BenchError> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(100, BasicQosOptions::default()).await?;
    let mut consumers = Vec::new();
    for queue in topology.request_queues() {
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("bench-{queue}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        consumers.push(consumer);
    }
    let mut deliveries = futures_util::stream::select_all(consumers);
    let started = Instant::now();
    for _ in 0..count {
        let Some(delivery) = deliveries.next().await else {
            break;
        };
        delivery?.ack(BasicAckOptions::default()).await?;
    }
    let consuming = started.elapsed();
    drop(deliveries);
    let _ = channel.close(200, "consumed".into()).await;
    Ok(consuming)
}

fn check_ack(confirm: lapin::Result<lapin::Confirmation>) -> Result<(), BenchError> {
    match confirm? {
        lapin::Confirmation::Ack(None) => Ok(()),
        other => Err(BenchError::Broker(format!("publish not acked: {other:?}"))),
    }
}
