//! The worker: consumes request queues shard by shard, applies each batch,
//! publishes its result, then acks.

mod apply;
mod consume;
mod dead_letters;
mod delivery;
mod retry;

pub use apply::apply_batch;
pub use consume::Worker;
