//! What a worker's `/readyz` reports of its place among the workers.

use std::time::{Duration, Instant};

/// What the worker's `/readyz` reports.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// When the last heartbeat went through.
    pub renewed: Option<Instant>,
    /// Shards held (consumers running and not stopping).
    pub shards: Vec<u16>,
    /// Live workers at the last heartbeat.
    pub workers: usize,
    /// How long a heartbeat stays good.
    pub ttl: Duration,
}

impl Status {
    /// True while the worker's place in the membership is current.
    pub fn is_current(&self) -> bool {
        self.renewed.is_some_and(|at| at.elapsed() < self.ttl)
    }
}
