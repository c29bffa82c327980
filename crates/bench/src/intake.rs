//! Phase 4, intake: every batch POSTed to a fresh api with no worker.

use super::*;

/// One intake run's figures.
pub(crate) struct Intake {
    pub(crate) rate: Rate,
    pub(crate) latency: Latency,
    pub(crate) time: Option<ServerTime>,
    pub(crate) cpu: CpuPerItem,
    pub(crate) load: Option<MachineLoad>,
    pub(crate) api_rss: Option<u64>,
}

/// Submits every batch to a fresh api with no worker, `concurrency`
/// requests at a time. Returns the stack, its backlog queued.
pub(crate) async fn intake_run(
    base: &Settings,
    loads: &[data::TenantLoad],
    concurrency: usize,
    broker_pid: Option<u32>,
) -> Result<(service::Stack, Intake), BenchError> {
    let items: usize = loads.iter().map(data::TenantLoad::items).sum();
    let mut stack = service::Stack::new(base, "intake").await?;
    stack.start_api().await?;
    let requests = stack.requests(loads).await?;
    stack
        .warm_up(&requests, concurrency, WARM_UP_ROUNDS)
        .await?;
    broker::settle(broker_pid).await;
    let meter = CpuMeter::bench_and_broker(broker_pid)
        .with("api", stack.api_pid())
        .with_postgres(cpu::postgres(&stack.pool).await);
    let before = stack.api_metrics().await?;
    let (rate, latency) = service::post_all(requests, concurrency).await?;
    let load = meter.load();
    let time = ServerTime::between(&before, &stack.api_metrics().await?);
    let cpu = meter.settled_per_item(items).await;
    let (api_rss, _) = stack.peak_rss();
    eprintln!(
        "bench: intake             {:>9.0} items/s (p50 {:.1} ms, p99 {:.1} ms; {}); {}",
        rate.items_per_sec,
        latency.p50_ms,
        latency.p99_ms,
        ServerTime::describe(time),
        cpu::describe_phase(&cpu, load)
    );
    let run = Intake {
        rate,
        latency,
        time,
        cpu,
        load,
        api_rss,
    };
    Ok((stack, run))
}
