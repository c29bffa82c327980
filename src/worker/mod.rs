//! The worker: joins the membership, holds its share of the shards, and
//! consumes each held shard's request queue — apply each batch, publish its
//! result, then ack.

mod apply;
mod consume;
mod context;
mod dead_letters;
mod delivery;
mod finish;
mod lifecycle;
mod membership;
mod plan;
mod retry;
mod shard;
mod status;

pub use apply::{apply_batch, Outcome};
pub use context::{consumer_uri, LeaseTiming, Worker};
pub use status::Status;
