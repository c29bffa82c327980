use crate::cluster::{broker, Cluster, SERIAL};
use lapin::{
    options::{BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
    BasicProperties,
};
use serde_json::{json, Value};
use std::{process::Stdio, time::Duration};
use sync_ingest::app::topology;
use uuid::Uuid;

/// The value of one sample line (`name{labels} value`) in a scrape; 0 when
/// absent (a counter never incremented is not exported).
pub fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0.0)
}

pub async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text")
}

async fn post(
    cluster: &Cluster,
    token: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/api/v1/sync/pieces", cluster.base()))
        .bearer_auth(token)
        .json(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("post")
}

fn pieces(company: Uuid, guids: &[Uuid]) -> Value {
    Value::Array(
        guids
            .iter()
            .map(|g| json!({"guid": g, "company_guid": company, "assembly_guid": company, "mark": "m"}))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exactly_what_happened() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new(2, &[]).await;
    cluster.start_api().await;
    cluster.start_workers(1);
    let company = Uuid::new_v4();
    let token = cluster.writer(company).await;
    let guids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();

    // Two accepted batches (3 inserts, then 3 updates), one invalid, one
    // for another company.
    for _ in 0..2 {
        let response = post(
            &cluster,
            &token,
            &pieces(company, &guids),
            &[("prefer", "wait=10")],
        )
        .await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        post(&cluster, &token, &json!([{"mark": 1}]), &[])
            .await
            .status(),
        422
    );
    assert_eq!(
        post(&cluster, &token, &pieces(Uuid::new_v4(), &guids), &[])
            .await
            .status(),
        403
    );

    // A poison message, dead-lettered by the worker.
    let topology = topology(&cluster.settings());
    let connection = broker().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_publish(
            topology.requests_exchange().into(),
            "0".into(),
            BasicPublishOptions::default(),
            b"not json",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    assert!(cluster.drain(Duration::from_secs(30)).await);
    tokio::time::sleep(Duration::from_millis(2500)).await; // one backlog sample, dead letter recorded

    let api = scrape(&cluster.ops(None)).await;
    let route = ("route", "/api/v1/sync/{entity}");
    let post_status = |status| {
        sample(
            &api,
            "sync_http_requests_total",
            &[("method", "POST"), route, ("status", status)],
        )
    };
    assert_eq!(post_status("200"), 2.0);
    assert_eq!(post_status("422"), 1.0);
    assert_eq!(post_status("403"), 1.0);
    assert_eq!(
        sample(
            &api,
            "sync_http_request_duration_seconds_count",
            &[("method", "POST"), route]
        ),
        4.0
    );
    assert_eq!(
        sample(&api, "sync_jobs_submitted_total", &[("entity", "pieces")]),
        2.0
    );
    assert_eq!(
        sample(&api, "sync_items_submitted_total", &[("entity", "pieces")]),
        6.0
    );
    assert_eq!(
        sample(
            &api,
            "sync_publish_confirm_seconds_count",
            &[("outcome", "ack")]
        ),
        2.0
    );
    // Every submission is read; the invalid one is not checked through;
    // only the two accepted ones record a job.
    for (stage, count) in [("read", 4.0), ("check", 3.0), ("record", 2.0)] {
        assert_eq!(
            sample(
                &api,
                "sync_submission_stage_seconds_count",
                &[("stage", stage)]
            ),
            count,
            "{stage}"
        );
    }
    let shard_queue = topology.request_queue(topology.shard_for(company));
    assert!(
        api.contains(&format!("sync_queue_messages{{queue=\"{shard_queue}\"}}")),
        "{api}"
    );
    assert_eq!(
        sample(
            &api,
            "sync_queue_consumers",
            &[("queue", shard_queue.as_str())]
        ),
        1.0
    );
    assert!(api.contains("sync_db_pool_connections{state=\"idle\"}"));
    assert!(
        !api.contains("sync_jobs_completed_total"),
        "the api process completes no jobs"
    );

    let worker = scrape(&cluster.ops(Some(0))).await;
    let pieces_label = ("entity", "pieces");
    assert_eq!(
        sample(
            &worker,
            "sync_jobs_completed_total",
            &[pieces_label, ("status", "succeeded")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &worker,
            "sync_items_applied_total",
            &[pieces_label, ("op", "inserted")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &worker,
            "sync_items_applied_total",
            &[pieces_label, ("op", "updated")]
        ),
        3.0
    );
    assert_eq!(
        sample(&worker, "sync_batch_apply_seconds_count", &[pieces_label]),
        2.0
    );
    assert_eq!(
        sample(
            &worker,
            "sync_job_queue_wait_seconds_count",
            &[pieces_label]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &worker,
            "sync_jobs_dead_lettered_total",
            &[("entity", "unknown")]
        ),
        1.0
    );
    assert!(
        !worker.contains("sync_http_requests_total{method=\"POST\""),
        "the worker serves no API"
    );

    // The scrape is valid Prometheus text, as promtool reads it.
    if let Ok(mut promtool) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        promtool
            .stdin
            .take()
            .expect("stdin")
            .write_all(api.as_bytes())
            .expect("write");
        let output = promtool.wait_with_output().expect("promtool");
        // Lint findings go to stdout with a non-zero exit; parse errors too.
        assert!(
            output.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    } else {
        assert!(std::env::var("CI").is_err(), "CI must have promtool");
    }
    let _ = connection.close(200, "done".into()).await;
    cluster.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_is_one_trace_from_request_to_worker_span_and_result() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new(1, &[("SYNC_LOG_FORMAT", "json")]).await;
    cluster.start_api().await;
    cluster.start_workers(1);
    let company = Uuid::new_v4();
    let token = cluster.writer(company).await;

    // Listen to this company's results before submitting.
    let topology = topology(&cluster.settings());
    let connection = broker().await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    channel
        .queue_bind(
            queue.name().clone(),
            topology.results().into(),
            format!("{company}.#").into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let mut results = channel
        .basic_consume(
            queue.name().clone(),
            "trace-test".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let response = post(
        &cluster,
        &token,
        &pieces(company, &[Uuid::now_v7()]),
        &[("traceparent", &traceparent), ("prefer", "wait=10")],
    )
    .await;
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await.expect("job");
    let correlation_id = job["correlation_id"].as_str().expect("id").to_owned();

    // The result message continues the trace.
    use futures_util::StreamExt;
    let delivery = tokio::time::timeout(Duration::from_secs(10), results.next())
        .await
        .expect("a result in time")
        .expect("a delivery")
        .expect("no error");
    let header = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("traceparent").cloned());
    let Some(AMQPValue::LongString(result_trace)) = header else {
        panic!(
            "the result carries no traceparent: {:?}",
            delivery.properties.headers()
        );
    };
    assert!(result_trace
        .to_string()
        .starts_with(&format!("00-{trace_id}-")));

    // The worker's job span, in its JSON log, carries the same trace id.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let worker_log = cluster.log("worker-0");
    let finished: Vec<Value> = worker_log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "job finished")
        .collect();
    assert_eq!(finished.len(), 1, "{worker_log}");
    assert_eq!(finished[0]["span"]["trace_id"], trace_id);
    assert_eq!(
        finished[0]["span"]["correlation_id"],
        correlation_id.as_str()
    );
    // Every worker line is one JSON object.
    assert!(
        worker_log
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{worker_log}"
    );
    // And the api's request span has it too.
    assert!(
        cluster
            .log("api")
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| l["span"]["trace_id"] == trace_id),
        "api log lacks the trace id"
    );
    let _ = connection.close(200, "done".into()).await;
    cluster.teardown().await;
}
