//! Exchange and queue names and their declaration (SPEC §5, §6).

use lapin::{
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
    Channel, ExchangeKind,
};
use uuid::Uuid;

/// The names and arguments of everything the service declares.
#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
    pub shards: u16,
    pub delivery_limit: u32,
    pub max_queue_length: u64,
    pub results_ttl_ms: u64,
    pub results_max_length: u64,
}

impl Topology {
    /// Direct exchange the api publishes batches to, routing key = shard.
    pub fn requests_exchange(&self) -> String {
        format!("{}.requests", self.prefix)
    }

    /// The request queue of one shard.
    pub fn request_queue(&self, shard: u16) -> String {
        format!("{}.requests.{shard}", self.prefix)
    }

    /// Fanout exchange and queue for dead letters.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Internal copy of every dead letter, consumed by workers to mark the
    /// message's job failed; `{prefix}.dead` keeps the message for operators.
    pub fn dead_jobs(&self) -> String {
        format!("{}.dead.jobs", self.prefix)
    }

    /// Topic exchange and catch-all queue for results.
    pub fn results(&self) -> String {
        format!("{}.results", self.prefix)
    }

    /// The shard of a company: FNV-1a over the UUID's 16 bytes, modulo the
    /// shard count. Stable across processes, versions and platforms, so every
    /// api instance sends one company's batches to the same queue.
    pub fn shard_for(&self, company: Uuid) -> u16 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in company.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        (hash % u64::from(self.shards)) as u16
    }

    /// Every queue the service declares.
    pub fn all_queues(&self) -> Vec<String> {
        let mut queues = self.request_queues();
        queues.extend([self.dead(), self.dead_jobs(), self.results()]);
        queues
    }

    /// Every exchange the service declares.
    pub fn all_exchanges(&self) -> Vec<String> {
        vec![self.requests_exchange(), self.dead(), self.results()]
    }

    /// Deletes everything `declare` made (a test's or benchmark's prefix),
    /// over its own connection to `url`; best effort, errors are ignored.
    pub async fn remove(&self, url: &str) {
        let Ok(connection) = lapin::Connection::connect(url, Default::default()).await else {
            return;
        };
        if let Ok(channel) = connection.create_channel().await {
            for queue in self.all_queues() {
                let _ = channel.queue_delete(queue.into(), Default::default()).await;
            }
            for exchange in self.all_exchanges() {
                let _ = channel
                    .exchange_delete(exchange.into(), Default::default())
                    .await;
            }
            let _ = channel.close(200, "removed".into()).await;
        }
        let _ = connection.close(200, "removed".into()).await;
    }

    /// Every request queue name.
    pub fn request_queues(&self) -> Vec<String> {
        (0..self.shards).map(|s| self.request_queue(s)).collect()
    }

    fn request_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        let mut put = |k: &str, v: AMQPValue| {
            args.insert(ShortString::from(k), v);
        };
        put("x-queue-type", long_string("quorum"));
        put("x-single-active-consumer", AMQPValue::Boolean(true));
        put(
            "x-delivery-limit",
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        put("x-overflow", long_string("reject-publish"));
        put("x-dead-letter-exchange", long_string(&self.dead()));
        put("x-dead-letter-strategy", long_string("at-least-once"));
        put(
            "x-max-length",
            AMQPValue::LongLongInt(i64::try_from(self.max_queue_length).unwrap_or(i64::MAX)),
        );
        args
    }

    /// Declares every exchange, queue and binding; safe to repeat.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let queue_options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let exchanges = [
            (self.dead(), ExchangeKind::Fanout),
            (self.requests_exchange(), ExchangeKind::Direct),
            (self.results(), ExchangeKind::Topic),
        ];
        for (exchange, kind) in exchanges {
            channel
                .exchange_declare(exchange.into(), kind, durable, FieldTable::default())
                .await?;
        }
        for bound in self.bound_queues() {
            channel
                .queue_declare(bound.queue.as_str().into(), queue_options, bound.arguments)
                .await?;
            channel
                .queue_bind(
                    bound.queue.into(),
                    bound.exchange.into(),
                    bound.key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Every queue with its arguments, and the exchange and key that bind it.
    fn bound_queues(&self) -> Vec<BoundQueue> {
        let dead_letters = |queue: String| BoundQueue {
            queue,
            arguments: quorum(),
            exchange: self.dead(),
            key: String::new(),
        };
        let mut queues = vec![dead_letters(self.dead()), dead_letters(self.dead_jobs())];
        queues.extend((0..self.shards).map(|shard| BoundQueue {
            queue: self.request_queue(shard),
            arguments: self.request_queue_arguments(),
            exchange: self.requests_exchange(),
            key: shard.to_string(),
        }));
        queues.push(BoundQueue {
            queue: self.results(),
            arguments: self.results_queue_arguments(),
            exchange: self.results(),
            key: "#".into(),
        });
        queues
    }

    /// The results queue: a bounded buffer, oldest dropped first.
    fn results_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        let long = |n: u64| AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX));
        args.insert("x-message-ttl".into(), long(self.results_ttl_ms));
        args.insert("x-max-length".into(), long(self.results_max_length));
        args.insert("x-overflow".into(), long_string("drop-head"));
        args
    }
}

/// A queue as declared, and its one binding.
struct BoundQueue {
    queue: String,
    arguments: FieldTable,
    exchange: String,
    key: String,
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(shards: u16) -> Topology {
        Topology {
            prefix: "sync".into(),
            shards,
            delivery_limit: 5,
            max_queue_length: 10,
            results_ttl_ms: 1,
            results_max_length: 1,
        }
    }

    #[test]
    fn shard_of_a_company_is_fixed_forever() {
        // These values are part of the deployed contract: every api instance
        // and version must route a company to the same shard.
        let company = Uuid::parse_str("3f0c2a4e-8b1d-4c9e-9a57-2b6f1d0e7c11").unwrap();
        // (Cross-checked with an independent FNV-1a implementation.)
        assert_eq!(topology(8).shard_for(company), 1);
        assert_eq!(topology(1).shard_for(company), 0);
        assert_eq!(topology(8).shard_for(Uuid::nil()), 5);
    }

    #[test]
    fn companies_spread_over_every_shard() {
        let topology = topology(8);
        let mut seen = [0usize; 8];
        for i in 0..800u128 {
            seen[usize::from(topology.shard_for(Uuid::from_u128(i * 7919)))] += 1;
        }
        assert!(seen.iter().all(|n| *n > 50), "{seen:?}");
    }
}
