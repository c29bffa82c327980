//! Phase 5 of the benchmark: a backlog applied by one, two and three
//! worker processes, which split the shards between them as they join.

use super::{
    cpu::{self, CpuMeter, CpuPerItem, MachineLoad},
    service,
    stats::Rate,
    BenchError,
};
use serde::Serialize;
use std::time::{Duration, Instant};

/// One drain: a backlog applied by `workers` worker processes.
#[derive(Debug, Clone, Serialize)]
pub struct DrainRun {
    pub workers: usize,
    pub rate: Rate,
    pub vs_db_upsert: f64,
    /// Items/s against the one-worker drain of the same run.
    pub vs_one_worker: f64,
    /// Each worker's share of the items applied.
    pub shares: Vec<f64>,
}

/// The drains, by number of workers, and the phase each is reported as.
pub const DRAIN_PHASES: [(usize, &str); 3] =
    [(1, "drain"), (2, "drain_2_workers"), (3, "drain_3_workers")];

/// A drain's figures, with its CPU.
pub struct Drained {
    pub run: DrainRun,
    pub cpu: CpuPerItem,
    pub load: Option<MachineLoad>,
    pub worker_rss: Option<u64>,
}

/// Starts `workers` workers on `stack`'s backlog of `items` and measures
/// until every job is finished; then removes the stack.
pub async fn drain(
    mut stack: service::Stack,
    workers: usize,
    items: usize,
    raw_db_per_sec: f64,
    broker_pid: Option<u32>,
) -> Result<Drained, BenchError> {
    const ROLES: [&str; 3] = ["worker", "worker 2", "worker 3"];
    // Each drain writes a lot of WAL; without a checkpoint first, the drain
    // a checkpoint lands in pays for its predecessors' writes.
    if let Err(error) = sqlx::query("CHECKPOINT").execute(&stack.pool).await {
        eprintln!("bench: no checkpoint before the drain ({error})");
    }
    let started = Instant::now();
    for _ in 0..workers {
        stack.start_worker()?;
    }
    let roles = ROLES
        .into_iter()
        .zip(stack.worker_pids().into_iter().map(Some));
    let meter = CpuMeter::start(roles)
        .with("broker", broker_pid)
        .with_postgres(cpu::postgres(&stack.pool).await);
    stack.wait_drained(Duration::from_secs(900)).await?;
    let rate = Rate::new(items, started.elapsed());
    let load = meter.load();
    let cpu = meter.settled_per_item(items).await;
    let applied = stack.items_applied_by_worker().await?;
    let total: f64 = applied.iter().sum();
    let shares = applied.iter().map(|a| a / total.max(1.0)).collect();
    let worker_rss = stack
        .worker_pids()
        .into_iter()
        .filter_map(service::peak_rss)
        .max();
    stack.teardown().await;
    let run = DrainRun {
        workers,
        rate,
        vs_db_upsert: rate.items_per_sec / raw_db_per_sec,
        vs_one_worker: 1.0,
        shares,
    };
    eprintln!(
        "bench: drain, {workers} worker(s)  {:>9.0} items/s = {:.2} × raw db; shares {}; {}",
        rate.items_per_sec,
        run.vs_db_upsert,
        shares_of(&run.shares),
        cpu::describe_phase(&cpu, load)
    );
    Ok(Drained {
        run,
        cpu,
        load,
        worker_rss,
    })
}

/// Shares as percentages, for the console.
pub fn shares_of(shares: &[f64]) -> String {
    let shares: Vec<String> = shares
        .iter()
        .map(|s| format!("{:.0} %", s * 100.0))
        .collect();
    shares.join(" / ")
}
