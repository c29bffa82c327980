//! Small statistics for the benchmark report.

use serde::Serialize;
use std::time::Duration;

/// A measured throughput.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rate {
    pub items: usize,
    pub seconds: f64,
    pub items_per_sec: f64,
}

impl Rate {
    /// `items` in `elapsed`.
    pub fn new(items: usize, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Rate {
            items,
            seconds,
            items_per_sec: items as f64 / seconds,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of `samples`.
    pub fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[index].as_secs_f64() * 1000.0
        };
        Latency {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}
