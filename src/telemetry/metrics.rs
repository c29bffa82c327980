//! Every metric's name, description and buckets (SPEC §7), in one place.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

pub const HTTP_REQUESTS: &str = "sync_http_requests_total";
pub const HTTP_DURATION: &str = "sync_http_request_duration_seconds";
pub const JOBS_SUBMITTED: &str = "sync_jobs_submitted_total";
pub const ITEMS_SUBMITTED: &str = "sync_items_submitted_total";
pub const JOBS_COMPLETED: &str = "sync_jobs_completed_total";
pub const ITEMS_APPLIED: &str = "sync_items_applied_total";
pub const BATCH_APPLY: &str = "sync_batch_apply_seconds";
pub const QUEUE_WAIT: &str = "sync_job_queue_wait_seconds";
pub const QUEUE_MESSAGES: &str = "sync_queue_messages";
pub const DEAD_LETTERED: &str = "sync_jobs_dead_lettered_total";
pub const REDELIVERIES: &str = "sync_job_redeliveries_total";

// Beyond the contract: what an operator also needs.
pub const HTTP_IN_FLIGHT: &str = "sync_http_requests_in_flight";
pub const PUBLISH_CONFIRM: &str = "sync_publish_confirm_seconds";
pub const PUBLISH_FAILURES: &str = "sync_publish_failures_total";
pub const QUEUE_CONSUMERS: &str = "sync_queue_consumers";
pub const DB_POOL_CONNECTIONS: &str = "sync_db_pool_connections";
pub const APPLY_RETRIES: &str = "sync_apply_retries_total";
pub const WAITING_REQUESTS: &str = "sync_waiting_requests";
pub const SUBMISSION_STAGE: &str = "sync_submission_stage_seconds";
pub const SHARDS_HELD: &str = "sync_worker_shards_held";
pub const SHARDS_UNOWNED: &str = "sync_shards_unowned";
pub const WORKERS_LIVE: &str = "sync_workers_live";
pub const SHARD_HANDOVERS: &str = "sync_shard_handovers_total";
pub const BODY_TIMEOUTS: &str = "sync_http_body_timeouts_total";
pub const CONNECTIONS_OPEN: &str = "sync_http_connections_open";
pub const CONNECTIONS_REFUSED: &str = "sync_http_connections_refused_total";
pub const REQUESTS_SHED: &str = "sync_http_requests_shed_total";
pub const SUBMISSIONS_REFUSED: &str = "sync_submissions_refused_total";

/// HTTP handling: sub-millisecond to tens of seconds (waiting requests).
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// One batch's transaction: milliseconds to seconds.
const APPLY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Time in the queue: milliseconds when idle, hours during a backlog.
const WAIT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
    14400.0,
];

/// Publisher confirms: sub-millisecond to the confirm timeout.
const CONFIRM_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus builder with our buckets.
pub fn prometheus_builder() -> PrometheusBuilder {
    let builder = PrometheusBuilder::new();
    let with = |b: PrometheusBuilder, name: &str, buckets: &[f64]| {
        b.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
            .unwrap_or_else(|e| panic!("static buckets are valid: {e}"))
    };
    let builder = with(builder, HTTP_DURATION, HTTP_BUCKETS);
    let builder = with(builder, BATCH_APPLY, APPLY_BUCKETS);
    let builder = with(builder, PUBLISH_CONFIRM, CONFIRM_BUCKETS);
    let builder = with(builder, SUBMISSION_STAGE, CONFIRM_BUCKETS);
    with(builder, QUEUE_WAIT, WAIT_BUCKETS)
}

/// Registers every metric's description.
pub fn describe() {
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by route and status");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "HTTP request handling time");
    describe_counter!(JOBS_SUBMITTED, "Jobs accepted (202) by the api");
    describe_counter!(ITEMS_SUBMITTED, "Items in accepted jobs");
    describe_counter!(JOBS_COMPLETED, "Jobs finished by workers, by status");
    describe_counter!(ITEMS_APPLIED, "Items written by workers, by op");
    describe_histogram!(
        BATCH_APPLY,
        Unit::Seconds,
        "Time to apply one batch's transaction"
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time from submission to a worker starting the job"
    );
    describe_gauge!(QUEUE_MESSAGES, "Messages ready in a queue, as last sampled");
    describe_counter!(DEAD_LETTERED, "Messages sent to the dead-letter queue");
    describe_counter!(
        REDELIVERIES,
        "Request messages delivered again after a failure"
    );
    describe_gauge!(HTTP_IN_FLIGHT, "HTTP requests being handled now");
    describe_histogram!(
        PUBLISH_CONFIRM,
        Unit::Seconds,
        "Time from publish to broker confirm, by outcome"
    );
    describe_counter!(PUBLISH_FAILURES, "Publishes not confirmed, by reason");
    describe_gauge!(
        QUEUE_CONSUMERS,
        "Consumers attached to a request queue, as last sampled"
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Database pool connections, by state (idle, in_use)"
    );
    describe_counter!(
        APPLY_RETRIES,
        "Transient failures retried in place, by operation"
    );
    describe_gauge!(
        WAITING_REQUESTS,
        "Requests waiting for their job (Prefer: wait)"
    );
    describe_gauge!(SHARDS_HELD, "Shards this worker holds the lease of");
    describe_gauge!(
        SHARDS_UNOWNED,
        "Shards no live lease covered at this worker's last heartbeat"
    );
    describe_gauge!(WORKERS_LIVE, "Live workers at this worker's last heartbeat");
    describe_counter!(
        SHARD_HANDOVERS,
        "Shards handed over, by reason: join (given up to a joining worker), leave (released on stop), expiry (taken over after its lease ran out), fenced (a batch found the lease gone)"
    );
    describe_gauge!(CONNECTIONS_OPEN, "Connections open on the public listener");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed on accept because SYNC_MAX_CONNECTIONS were open"
    );
    describe_counter!(
        REQUESTS_SHED,
        "Requests answered 503 because SYNC_MAX_REQUESTS_IN_FLIGHT were in progress"
    );
    describe_counter!(
        SUBMISSIONS_REFUSED,
        "Batches answered 429, by reason: queue_full (the request queues past SYNC_MAX_QUEUE_DEPTH, or a shard at its length limit), company_backlog_full (the company past SYNC_MAX_COMPANY_BACKLOG)"
    );
    describe_counter!(
        BODY_TIMEOUTS,
        "Requests answered 408 because their body did not arrive within SYNC_BODY_TIMEOUT_SECS"
    );
    describe_histogram!(
        SUBMISSION_STAGE,
        Unit::Seconds,
        "Time a submission spent reading its body, checking it and recording its job, by stage"
    );
}
