//! The report of a run: every phase's figures, their ratios to the raw
//! limits, and the summary printed at the end.

use super::*;

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub items: usize,
    pub batch_size: usize,
    pub tenants: usize,
    pub update_ratio: f64,
    pub shards: u16,
    pub approx_item_bytes: usize,
    /// Whether every raw publish, relay and intake run started on a fresh
    /// quorum-queue WAL (see `src/bench/broker.rs`).
    pub broker_wal_rolled_over: bool,
    /// The raw publish's channels and confirms in flight.
    pub publish_channels: usize,
    pub publish_window: usize,
    pub raw_db_upsert: Rate,
    pub raw_broker_publish: Rate,
    /// Every raw publish run's items/s, round by round (the relay's and
    /// intake's runs of a round are at the same index); `raw_broker_publish`
    /// is the best.
    pub raw_broker_publish_runs: Vec<f64>,
    pub raw_broker_consume: Rate,
    /// The same messages POSTed through a relay that only publishes them.
    pub relay: Rate,
    /// Every relay run's items/s; `relay` is the best.
    pub relay_runs: Vec<f64>,
    pub relay_latency: Latency,
    pub intake: Rate,
    /// Every intake run's items/s; `intake` is the best.
    pub intake_runs: Vec<f64>,
    pub intake_latency: Latency,
    /// The best intake run's time in the api and confirm wait (means).
    pub intake_server_time: Option<ServerTime>,
    pub api_peak_rss_mb: Option<f64>,
    /// The backlog applied by one worker (`drain_by_workers[0]`).
    pub drain: Rate,
    /// The same backlog applied by 1, 2 and 3 worker processes.
    pub drain_by_workers: Vec<DrainRun>,
    /// The highest peak of any worker in the drains.
    pub worker_peak_rss_mb: Option<f64>,
    pub end_to_end: Rate,
    pub end_to_end_job_latency: Latency,
    /// CPU microseconds per item of each process, and of the whole
    /// machine (`machine`), by phase.
    pub cpu_us_per_item: BTreeMap<&'static str, CpuPerItem>,
    /// How busy the machine's cores were during each phase.
    pub cores_busy: BTreeMap<&'static str, MachineLoad>,
    pub ratios: Ratios,
}

/// The figures that matter, as fractions of their raw limits.
#[derive(Debug, Serialize)]
pub struct Ratios {
    pub intake_vs_broker_publish: f64,
    /// What HTTP in front of the broker leaves of its limit, by itself.
    pub relay_vs_broker_publish: f64,
    /// Intake against the least any api could do: the api's own share.
    pub intake_vs_relay: f64,
    pub drain_vs_db_upsert: f64,
    /// What sharing the shards costs or buys: 2 and 3 workers' drain
    /// against one's (the database is the limit on two cores, so about 1).
    pub drain_2_workers_vs_1: f64,
    pub drain_3_workers_vs_1: f64,
    pub end_to_end_vs_db_upsert: f64,
}

fn mb(bytes: Option<u64>) -> Option<f64> {
    bytes.map(|b| b as f64 / (1024.0 * 1024.0))
}

/// Every phase's figures, for the report.
pub(crate) struct Measured<'a> {
    pub(crate) args: &'a BenchArgs,
    pub(crate) shards: u16,
    pub(crate) items: usize,
    pub(crate) batch_size: usize,
    pub(crate) approx_item_bytes: usize,
    pub(crate) raw_db: Rate,
    pub(crate) rounds: Rounds,
    pub(crate) drains: Vec<(&'static str, drain::Drained)>,
    pub(crate) worker_rss: Option<u64>,
    pub(crate) end_to_end: EndToEnd,
}

impl Report {
    pub(crate) fn of(m: Measured<'_>) -> Report {
        let Measured {
            args,
            rounds: r,
            drains,
            end_to_end: e2e,
            ..
        } = m;
        let (broker, relay, intake) = (&r.broker, &r.relay, &r.intake);
        let drain = drains[0].1.run.rate;
        let ratios = Ratios::of(&r, &drains, e2e.rate, m.raw_db);
        let phases = [
            (
                "raw_broker_publish",
                broker.publish_cpu.clone(),
                broker.publish_load,
            ),
            ("relay", relay.cpu.clone(), relay.load),
            ("intake", intake.cpu.clone(), intake.load),
            ("end_to_end", e2e.cpu, e2e.load),
        ]
        .into_iter()
        .chain(
            drains
                .iter()
                .map(|(phase, d)| (*phase, d.cpu.clone(), d.load)),
        );
        let (cpu_us_per_item, cores_busy) = split_phases(phases);
        Report {
            items: m.items,
            batch_size: m.batch_size,
            tenants: args.tenants,
            update_ratio: args.update_ratio,
            shards: m.shards,
            approx_item_bytes: m.approx_item_bytes,
            broker_wal_rolled_over: broker::every_roll_over_done(),
            publish_channels: args.publish_channels,
            publish_window: args.publish_window,
            raw_db_upsert: m.raw_db,
            raw_broker_publish: broker.publish,
            raw_broker_publish_runs: r.raw_publish_runs.clone(),
            raw_broker_consume: broker.consume,
            relay: relay.rate,
            relay_runs: r.relay_runs.clone(),
            relay_latency: relay.latency,
            intake: intake.rate,
            intake_runs: r.intake_runs.clone(),
            intake_latency: intake.latency,
            intake_server_time: intake.time,
            api_peak_rss_mb: mb(r.api_rss),
            drain,
            drain_by_workers: drains.iter().map(|(_, d)| d.run.clone()).collect(),
            worker_peak_rss_mb: mb(m.worker_rss),
            end_to_end: e2e.rate,
            end_to_end_job_latency: e2e.job_latency,
            cpu_us_per_item,
            cores_busy,
            ratios,
        }
    }
}

impl Ratios {
    fn of(r: &Rounds, drains: &[(&str, drain::Drained)], end_to_end: Rate, raw_db: Rate) -> Ratios {
        let (broker, relay, intake) = (&r.broker.publish, &r.relay.rate, &r.intake.rate);
        Ratios {
            intake_vs_broker_publish: intake.items_per_sec / broker.items_per_sec,
            relay_vs_broker_publish: relay.items_per_sec / broker.items_per_sec,
            intake_vs_relay: intake.items_per_sec / relay.items_per_sec,
            drain_vs_db_upsert: drains[0].1.run.rate.items_per_sec / raw_db.items_per_sec,
            drain_2_workers_vs_1: drains[1].1.run.vs_one_worker,
            drain_3_workers_vs_1: drains[2].1.run.vs_one_worker,
            end_to_end_vs_db_upsert: end_to_end.items_per_sec / raw_db.items_per_sec,
        }
    }
}

/// Each phase's CPU per item, and how busy the cores were where that was
/// measured.
fn split_phases(
    phases: impl Iterator<Item = (&'static str, CpuPerItem, Option<MachineLoad>)>,
) -> (
    BTreeMap<&'static str, CpuPerItem>,
    BTreeMap<&'static str, MachineLoad>,
) {
    let (mut cpu, mut cores) = (BTreeMap::new(), BTreeMap::new());
    for (phase, per_item, load) in phases {
        cpu.insert(phase, per_item);
        if let Some(load) = load {
            cores.insert(phase, load);
        }
    }
    (cpu, cores)
}

/// Where a submission's time went, by the api's own metrics: the mean time
/// it spent answering one, and within that the mean time reading the body,
/// checking it, recording the job and waiting for the broker's confirm.
/// When the broker's confirms bound both intake and the raw publish,
/// intake's ratio to the raw publish is about the confirm's share.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerTime {
    pub request_ms: f64,
    pub read_ms: f64,
    pub check_ms: f64,
    pub record_ms: f64,
    pub confirm_ms: f64,
}

impl ServerTime {
    /// The figures of the submissions answered between two scrapes.
    pub(crate) fn between(before: &str, after: &str) -> Option<ServerTime> {
        use sync_ingest::telemetry::metrics as m;
        let mean = |name, labels: &[(&str, &str)]| {
            Totals::read(after, name, labels).mean_ms_since(Totals::read(before, name, labels))
        };
        let stage = |stage| mean(m::SUBMISSION_STAGE, &[("stage", stage)]);
        Some(ServerTime {
            request_ms: mean(
                m::HTTP_DURATION,
                &[("method", "POST"), ("route", "/api/v1/sync/{entity}")],
            )?,
            read_ms: stage("read")?,
            check_ms: stage("check")?,
            record_ms: stage("record")?,
            confirm_ms: mean(m::PUBLISH_CONFIRM, &[("outcome", "ack")])?,
        })
    }

    pub(crate) fn describe(time: Option<ServerTime>) -> String {
        time.map_or_else(
            || "api time n/a".into(),
            |t| {
                format!(
                    "in the api {:.0} ms: read {:.0}, check {:.0}, record {:.0}, confirm {:.0} ms",
                    t.request_ms, t.read_ms, t.check_ms, t.record_ms, t.confirm_ms
                )
            },
        )
    }
}

/// The human summary printed at the end of a run.
pub fn summary(report: &Report) -> String {
    let r = &report.ratios;
    let figures = format!(
        "relay      {:>9.0} items/s = {:.2} × raw broker publish (HTTP in front of the broker, nothing else)\n\
         intake     {:>9.0} items/s = {:.2} × raw broker publish ({:.0}/s) = {:.2} × relay; api peak RSS {}\n\
         drain      {:>9.0} items/s = {:.2} × raw db upsert ({:.0}/s); worker peak RSS {}\n\
         drain by workers {}\n\
         end to end {:>9.0} items/s = {:.2} × raw db upsert; job latency p99 {:.0} ms",
        report.relay.items_per_sec,
        r.relay_vs_broker_publish,
        report.intake.items_per_sec,
        r.intake_vs_broker_publish,
        report.raw_broker_publish.items_per_sec,
        r.intake_vs_relay,
        report
            .api_peak_rss_mb
            .map_or("n/a".into(), |m| format!("{m:.0} MB")),
        report.drain.items_per_sec,
        r.drain_vs_db_upsert,
        report.raw_db_upsert.items_per_sec,
        report
            .worker_peak_rss_mb
            .map_or("n/a".into(), |m| format!("{m:.0} MB")),
        report
            .drain_by_workers
            .iter()
            .map(|d| format!(
                "{}: {:.0}/s = {:.2} × one worker (shares {})",
                d.workers,
                d.rate.items_per_sec,
                d.vs_one_worker,
                shares_of(&d.shares)
            ))
            .collect::<Vec<_>>()
            .join("; "),
        report.end_to_end.items_per_sec,
        r.end_to_end_vs_db_upsert,
        report.end_to_end_job_latency.p99_ms,
    );
    let cpu = report.cpu_us_per_item.iter().map(|(phase, cpu)| {
        let load = report.cores_busy.get(phase).copied();
        format!("\ncpu {phase:<18} {}", cpu::describe_phase(cpu, load))
    });
    figures + &cpu.collect::<String>()
}

#[cfg(test)]
mod tests {
    use super::ServerTime;

    /// An api's exposition after `requests` submissions, each `ms` long in
    /// all and (read, check, record, confirm) long in its stages.
    fn exposition(requests: u32, ms: f64, stages: [f64; 4]) -> String {
        let n = f64::from(requests);
        let [read, check, record, confirm] = stages.map(|s| s * n / 1e3);
        let total = ms * n / 1e3;
        format!(
            "sync_http_request_duration_seconds_sum{{method=\"POST\",route=\"/api/v1/sync/{{entity}}\"}} {total}\n\
             sync_http_request_duration_seconds_count{{method=\"POST\",route=\"/api/v1/sync/{{entity}}\"}} {n}\n\
             sync_http_request_duration_seconds_sum{{method=\"GET\",route=\"/api/v1/jobs/{{id}}\"}} 99\n\
             sync_http_request_duration_seconds_count{{method=\"GET\",route=\"/api/v1/jobs/{{id}}\"}} 1\n\
             sync_submission_stage_seconds_sum{{stage=\"read\"}} {read}\n\
             sync_submission_stage_seconds_count{{stage=\"read\"}} {n}\n\
             sync_submission_stage_seconds_sum{{stage=\"check\"}} {check}\n\
             sync_submission_stage_seconds_count{{stage=\"check\"}} {n}\n\
             sync_submission_stage_seconds_sum{{stage=\"record\"}} {record}\n\
             sync_submission_stage_seconds_count{{stage=\"record\"}} {n}\n\
             sync_publish_confirm_seconds_sum{{outcome=\"ack\"}} {confirm}\n\
             sync_publish_confirm_seconds_count{{outcome=\"ack\"}} {n}\n\
             sync_publish_confirm_seconds_sum{{outcome=\"timeout\"}} 50\n\
             sync_publish_confirm_seconds_count{{outcome=\"timeout\"}} 5\n"
        )
    }

    #[test]
    fn server_time_is_the_mean_of_each_stage_between_two_scrapes() {
        let before = exposition(10, 100.0, [1.0, 2.0, 3.0, 50.0]);
        // 30 more submissions, each 60 ms: 4 + 6 + 8 + 40 of it in stages.
        let after = exposition(40, 70.0, [3.25, 5.0, 6.75, 42.5]);
        let time = ServerTime::between(&before, &after).expect("submissions in between");
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(time.request_ms, 60.0), "{time:?}");
        assert!(close(time.read_ms, 4.0), "{time:?}");
        assert!(close(time.check_ms, 6.0), "{time:?}");
        assert!(close(time.record_ms, 8.0), "{time:?}");
        assert!(close(time.confirm_ms, 40.0), "{time:?}");
    }

    #[test]
    fn server_time_needs_submissions_in_between() {
        let scrape = exposition(10, 100.0, [1.0, 2.0, 3.0, 50.0]);
        assert!(ServerTime::between(&scrape, &scrape).is_none());
    }
}
