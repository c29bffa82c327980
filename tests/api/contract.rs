//! The client contract (SPEC §4–§5, issue 4): waiting with `Prefer: wait`,
//! idempotent retries, back-pressure, results over AMQP, dry runs, queue
//! position and estimated start, and retention.

use crate::helpers::*;
use chrono::{DateTime, Utc};
use futures_util::{future::join_all, StreamExt};
use lapin::{
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use sync_ingest::{
    app::{topology, Mode},
    retention::{purge_once, Purged, Retention},
};
use uuid::Uuid;

/// A response header as a string, if present.
fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Status, headers of interest and JSON body of a response.
struct Answer {
    status: StatusCode,
    preference_applied: Option<String>,
    replayed: Option<String>,
    location: Option<String>,
    body: Value,
}

async fn answer(response: Response) -> Answer {
    let answer = Answer {
        status: response.status(),
        preference_applied: header(&response, "preference-applied"),
        replayed: header(&response, "idempotent-replayed"),
        location: header(&response, "location"),
        body: Value::Null,
    };
    Answer {
        body: response.json().await.expect("json body"),
        ..answer
    }
}

fn correlation_id(body: &Value) -> String {
    body["correlation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no correlation id in {body}"))
        .to_owned()
}

fn timestamp(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("not a timestamp: {value}"))
        .with_timezone(&Utc)
}

/// A piece of `company` with a given GUID and mark.
fn piece(company: Uuid, guid: Uuid, mark: &str) -> Value {
    json!({"company_guid": company, "guid": guid, "assembly_guid": Uuid::new_v4(), "mark": mark})
}

/// A company whose batches go to request queue `shard`.
fn company_on_shard(app: &TestApp, shard: u16) -> Uuid {
    let topology = topology(&app.settings);
    std::iter::repeat_with(Uuid::new_v4)
        .find(|c| topology.shard_for(*c) == shard)
        .expect("some company lands on every shard")
}

/// Ready messages across every request queue.
async fn queued_messages(app: &TestApp) -> u32 {
    let mut total = 0;
    for queue in topology(&app.settings).request_queues() {
        total += app.queue_messages(&queue).await;
    }
    total
}

/// Polls `probe` every 50 ms until it returns Some (at most `limit`).
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `{prefix}.results` holds `n` messages, then makes sure no
/// more arrive for a moment.
async fn assert_results_queued(app: &TestApp, n: u32) {
    let results = topology(&app.settings).results();
    eventually(
        Duration::from_secs(10),
        "results to be published",
        || async { (app.queue_messages(&results).await >= n).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.queue_messages(&results).await, n, "results published");
}

// ---------------------------------------------------------------- wait

#[tokio::test]
async fn prefer_wait_answers_200_with_the_finished_job() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let given = Uuid::new_v4();
    let body = json!([piece(company, given, "p1"), item("pieces", company)]);

    let started = Instant::now();
    let response = app
        .post_with("pieces", &token, &body, &[("prefer", "wait=10")])
        .await;
    let answer = answer(response).await;

    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by the result, not by the timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.preference_applied.as_deref(), Some("wait=10"));
    let job = &answer.body;
    let id = correlation_id(job);
    assert_eq!(
        answer.location.as_deref(),
        Some(format!("/api/v1/sync/jobs/{id}").as_str())
    );
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["entity"], "pieces");
    assert_eq!(job["item_count"], 2);
    assert_eq!(job["inserted"], 2);
    assert_eq!(job["updated"], 0);
    assert_eq!(job["error"], Value::Null);
    assert!(job["completed_at"].is_string(), "{job}");
    assert!(job.get("queue_position").is_none(), "{job}");
    let guids = job["guids"].as_array().expect("guids");
    assert_eq!(guids.len(), 2);
    assert_eq!(guids[0], json!(given));
    let assigned: Uuid = serde_json::from_value(guids[1].clone()).expect("assigned GUID");
    assert!(app.row("pieces", given).await.is_some());
    assert!(app.row("pieces", assigned).await.is_some());
}

#[tokio::test]
async fn prefer_wait_that_times_out_answers_202_with_the_queued_job() {
    let app = TestApp::spawn_with(Mode::Api, |_| {}).await;
    let company = company();
    let token = app.writer(company).await;

    let started = Instant::now();
    let response = app
        .post_with(
            "pieces",
            &token,
            &json!([item("pieces", company)]),
            &[("prefer", "wait=1")],
        )
        .await;
    let elapsed = started.elapsed();
    let answer = answer(response).await;

    assert!(elapsed >= Duration::from_secs(1), "waited {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "waited {elapsed:?}");
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(answer.preference_applied.as_deref(), Some("wait=1"));
    assert_eq!(answer.body["status"], "queued", "{}", answer.body);
    assert_eq!(answer.body["inserted"], Value::Null);
    let id = correlation_id(&answer.body);
    let job: Value = app.get_job(&id, &token).await.json().await.expect("job");
    assert_eq!(job["status"], "queued", "{job}");
}

#[tokio::test]
async fn prefer_wait_above_60_seconds_is_capped_at_60() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;

    let started = Instant::now();
    let response = app
        .post_with(
            "articles",
            &token,
            &json!([item("articles", company)]),
            &[("prefer", "respond-async, wait=600")],
        )
        .await;
    let answer = answer(response).await;

    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.preference_applied.as_deref(), Some("wait=60"));
    assert_eq!(answer.body["status"], "succeeded", "{}", answer.body);
    assert_eq!(answer.body["inserted"], 1);
}

#[tokio::test]
async fn prefer_wait_right_after_start_is_woken_by_the_result() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    for _ in 0..5 {
        // A fresh api process next to the running worker, used at once.
        let mut settings = app.settings.clone();
        settings.ops_addr = Some("127.0.0.1:0".parse().expect("address"));
        let api = sync_ingest::app::Service::start(settings, Mode::Api)
            .await
            .expect("api starts");
        let base = api.http_addr.expect("api listens");

        let started = Instant::now();
        let response = app
            .client
            .post(format!("http://{base}/api/v1/sync/pieces"))
            .bearer_auth(&token)
            .header("prefer", "wait=3")
            .json(&json!([item("pieces", company)]))
            .send()
            .await
            .expect("request sent");
        let elapsed = started.elapsed();
        api.begin_shutdown();

        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            elapsed < Duration::from_secs(2),
            "a job finished in milliseconds was answered after {elapsed:?}"
        );
    }
}

// --------------------------------------------------------- idempotency

#[tokio::test]
async fn same_idempotency_key_and_body_replays_the_original_job() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let body = json!([
        piece(company, Uuid::new_v4(), "p1"),
        item("pieces", company)
    ]);
    let key = [("idempotency-key", "order-4711")];

    let first = answer(app.post_with("pieces", &token, &body, &key).await).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    assert_eq!(first.replayed, None);
    let id = correlation_id(&first.body);
    app.finished_job(&id, &token).await;
    assert_results_queued(&app, 1).await;

    let second = answer(app.post_with("pieces", &token, &body, &key).await).await;

    assert_eq!(second.status, StatusCode::ACCEPTED, "{}", second.body);
    assert_eq!(second.replayed.as_deref(), Some("true"));
    assert_eq!(correlation_id(&second.body), id);
    assert_eq!(second.body["guids"], first.body["guids"]);
    assert_eq!(second.body["status"], "succeeded", "{}", second.body);
    assert_eq!(second.body["inserted"], 2);
    assert_eq!(
        second.location.as_deref(),
        Some(format!("/api/v1/sync/jobs/{id}").as_str())
    );
    assert_eq!(app.count("sync_jobs").await, 1);
    assert_eq!(app.count("pieces").await, 2);
    assert_results_queued(&app, 1).await;
}

#[tokio::test]
async fn same_idempotency_key_with_another_body_is_409_and_queues_nothing() {
    let app = TestApp::spawn_with(Mode::Api, |_| {}).await;
    let company = company();
    let token = app.writer(company).await;
    let key = [("idempotency-key", "order-4711")];
    let first = app
        .post_with("pieces", &token, &json!([item("pieces", company)]), &key)
        .await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);

    let other_body = json!([item("pieces", company), item("pieces", company)]);
    let response = app.post_with("pieces", &token, &other_body, &key).await;

    let body = problem(response, StatusCode::CONFLICT, "idempotency_key_reused").await;
    assert!(body["detail"].is_string(), "{body}");
    assert_eq!(app.count("sync_jobs").await, 1);
    assert_eq!(queued_messages(&app).await, 1);
}

#[tokio::test]
async fn same_idempotency_key_as_a_dry_run_is_another_request() {
    let app = TestApp::spawn_with(Mode::Api, |_| {}).await;
    let company = company();
    let token = app.writer(company).await;
    let key = [("idempotency-key", "k1")];
    let body = json!([item("pieces", company)]);
    let real = app.post_with("pieces", &token, &body, &key).await;
    assert_eq!(real.status(), StatusCode::ACCEPTED);

    let response = app
        .post_with("pieces?dry_run=true", &token, &body, &key)
        .await;

    problem(response, StatusCode::CONFLICT, "idempotency_key_reused").await;
    assert_eq!(app.count("sync_jobs").await, 1);
}

#[tokio::test]
async fn idempotency_keys_are_scoped_per_company() {
    let app = TestApp::spawn_with(Mode::Api, |_| {}).await;
    let (a, b) = (company(), company());
    let key = [("idempotency-key", "shared-key")];

    let for_a = app
        .post_with(
            "pieces",
            &app.writer(a).await,
            &json!([item("pieces", a)]),
            &key,
        )
        .await;
    let for_b = app
        .post_with(
            "pieces",
            &app.writer(b).await,
            &json!([item("pieces", b)]),
            &key,
        )
        .await;
    let (for_a, for_b) = (answer(for_a).await, answer(for_b).await);

    assert_eq!(for_a.status, StatusCode::ACCEPTED, "{}", for_a.body);
    assert_eq!(for_b.status, StatusCode::ACCEPTED, "{}", for_b.body);
    assert_eq!(for_b.replayed, None);
    assert_ne!(correlation_id(&for_a.body), correlation_id(&for_b.body));
    assert_eq!(app.count("sync_jobs").await, 2);
    assert_eq!(queued_messages(&app).await, 2);
}

#[tokio::test]
async fn idempotency_key_longer_than_255_characters_is_400() {
    let app = TestApp::spawn_with(Mode::Api, |_| {}).await;
    let company = company();
    let token = app.writer(company).await;
    let body = json!([item("pieces", company)]);

    let too_long = "k".repeat(256);
    let response = app
        .post_with("pieces", &token, &body, &[("idempotency-key", &too_long)])
        .await;
    problem(response, StatusCode::BAD_REQUEST, "invalid_idempotency_key").await;
    assert_eq!(app.count("sync_jobs").await, 0);

    let response = app
        .post_with("pieces", &token, &body, &[("idempotency-key", "")])
        .await;
    problem(response, StatusCode::BAD_REQUEST, "invalid_idempotency_key").await;
    assert_eq!(app.count("sync_jobs").await, 0);

    let longest = "k".repeat(255);
    let response = app
        .post_with("pieces", &token, &body, &[("idempotency-key", &longest)])
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(app.count("sync_jobs").await, 1);
}

#[tokio::test]
async fn idempotency_key_older_than_24_hours_starts_afresh() {
    let app = TestApp::spawn_with(Mode::Api, |s| s.purge_interval_secs = 3600).await;
    let company = company();
    let token = app.writer(company).await;
    let body = json!([item("pieces", company)]);
    let first = app
        .accepted("pieces", &token, &json!([item("pieces", company)]))
        .await;
    // The key was used 25 hours ago, for that other request.
    sqlx::query(
        "INSERT INTO idempotency_keys (company_guid, key, request_hash, correlation_id, guids, \
             created_at) \
         VALUES ($1, 'daily-export', '\\x00', $2, '{}', now() - interval '25 hours')",
    )
    .bind(company)
    .bind(Uuid::parse_str(&correlation_id(&first)).expect("uuid"))
    .execute(&app.pool)
    .await
    .expect("old key recorded");

    let response = app
        .post_with(
            "pieces",
            &token,
            &body,
            &[("idempotency-key", "daily-export")],
        )
        .await;
    let answer = answer(response).await;

    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(answer.replayed, None);
    assert_ne!(correlation_id(&answer.body), correlation_id(&first));
    assert_eq!(app.count("sync_jobs").await, 2);
    assert_eq!(queued_messages(&app).await, 2);
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_make_one_job() {
    let app = TestApp::spawn_with(Mode::Api, |_| {}).await;
    let company = company();
    let token = app.writer(company).await;
    let body = json!([item("pieces", company), item("pieces", company)]);
    let key = [("idempotency-key", "burst-1")];

    let responses = join_all((0..10).map(|_| app.post_with("pieces", &token, &body, &key))).await;
    let answers = join_all(responses.into_iter().map(answer)).await;

    for answer in &answers {
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        assert_eq!(answer.body["guids"], answers[0].body["guids"]);
    }
    let ids: std::collections::BTreeSet<String> =
        answers.iter().map(|a| correlation_id(&a.body)).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let replays = answers
        .iter()
        .filter(|a| a.replayed.as_deref() == Some("true"))
        .count();
    assert_eq!(replays, 9);
    assert_eq!(app.count("sync_jobs").await, 1);
    assert_eq!(queued_messages(&app).await, 1);
}

#[tokio::test]
async fn burst_of_requests_with_distinct_idempotency_keys_is_accepted() {
    // More concurrent keyed requests than the api's 16 database connections;
    // the same burst without keys is accepted at once.
    let app = TestApp::spawn_with(Mode::Api, |_| {}).await;
    let company = company();
    let token = app.writer(company).await;
    let body = json!([item("pieces", company)]);
    let keys: Vec<String> = (0..24).map(|i| format!("burst-{i}")).collect();
    let headers: Vec<[(&str, &str); 1]> = keys
        .iter()
        .map(|k| [("idempotency-key", k.as_str())])
        .collect();

    let started = Instant::now();
    let responses = join_all(
        headers
            .iter()
            .map(|h| app.post_with("pieces", &token, &body, h)),
    )
    .await;
    let elapsed = started.elapsed();
    let answers = join_all(responses.into_iter().map(answer)).await;

    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    assert_eq!(app.count("sync_jobs").await, 24);
}

// ------------------------------------------------------- back-pressure

#[tokio::test]
async fn full_request_queue_refuses_the_publish_with_429() {
    let app = TestApp::spawn_with(Mode::Api, |s| {
        s.max_queue_depth = 2;
        s.shards = 1;
    })
    .await;
    let company = company();
    let token = app.writer(company).await;
    for _ in 0..2 {
        app.accepted("pieces", &token, &json!([item("pieces", company)]))
            .await;
    }

    // A quorum queue with `reject-publish` starts refusing once it is over
    // its `x-max-length` (RabbitMQ 3.10 takes one message beyond it), so the
    // refusal comes with the third or the fourth batch.
    let mut accepted = 2;
    let refused = loop {
        let response = app
            .post("pieces", &token, &json!([item("pieces", company)]))
            .await;
        if response.status() != StatusCode::ACCEPTED {
            break response;
        }
        accepted += 1;
        assert!(accepted <= 3, "the broker kept accepting past its limit");
    };

    let retry_after = header(&refused, "retry-after").expect("Retry-After");
    let seconds: u64 = retry_after.parse().expect("Retry-After in seconds");
    assert!((1..=60).contains(&seconds), "Retry-After {seconds}");
    problem(refused, StatusCode::TOO_MANY_REQUESTS, "queue_full").await;
    assert_eq!(app.count("sync_jobs").await, accepted, "no job left behind");
    assert_eq!(queued_messages(&app).await, accepted as u32);
    let again = app
        .post("pieces", &token, &json!([item("pieces", company)]))
        .await;
    problem(again, StatusCode::TOO_MANY_REQUESTS, "queue_full").await;
    assert_eq!(app.count("sync_jobs").await, accepted);
}

#[tokio::test]
async fn queues_deeper_than_the_limit_answer_429_from_the_sampled_depth() {
    let app = TestApp::spawn_with(Mode::Api, |s| {
        s.max_queue_depth = 2;
        s.shards = 2;
    })
    .await;
    let (first, second) = (company_on_shard(&app, 0), company_on_shard(&app, 1));
    let (first_token, second_token) = (app.writer(first).await, app.writer(second).await);
    for _ in 0..2 {
        app.accepted("pieces", &first_token, &json!([item("pieces", first)]))
            .await;
    }
    app.accepted("pieces", &second_token, &json!([item("pieces", second)]))
        .await;
    // The sampler reads the depth once a second.
    tokio::time::sleep(Duration::from_millis(2000)).await;

    // Shard 1 holds one message, below its own limit: only the sampled
    // total (3 > 2) refuses this.
    let response = app
        .post("pieces", &second_token, &json!([item("pieces", second)]))
        .await;

    let retry_after = header(&response, "retry-after").expect("Retry-After");
    let seconds: u64 = retry_after.parse().expect("Retry-After in seconds");
    assert!((1..=60).contains(&seconds), "Retry-After {seconds}");
    problem(response, StatusCode::TOO_MANY_REQUESTS, "queue_full").await;
    assert_eq!(app.count("sync_jobs").await, 3);
    let shard_1 = topology(&app.settings).request_queue(1);
    assert_eq!(app.queue_messages(&shard_1).await, 1);
}

// ------------------------------------------------------ results over AMQP

#[tokio::test]
async fn results_reach_a_queue_bound_to_one_companys_routing_key() {
    let app = TestApp::spawn().await;
    let (a, b) = (company(), company());
    let topology = topology(&app.settings);
    let connection = app.amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    topology.declare(&channel).await.expect("topology declared");
    let own = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("own queue");
    channel
        .queue_bind(
            own.name().clone(),
            topology.results().into(),
            format!("{a}.#").into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bound to company A's results");
    let mut consumer = channel
        .basic_consume(
            own.name().clone(),
            "integration".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consuming");

    let (token_a, token_b) = (app.writer(a).await, app.writer(b).await);
    let mut jobs_a = Vec::new();
    for _ in 0..2 {
        jobs_a.push(
            app.sync("pieces", &token_a, &json!([item("pieces", a)]))
                .await,
        );
    }
    app.sync("pieces", &token_b, &json!([item("pieces", b)]))
        .await;
    // Every result, B's included, has been published by now.
    assert_results_queued(&app, 3).await;

    let mut received = Vec::new();
    while let Ok(Some(delivery)) =
        tokio::time::timeout(Duration::from_millis(1000), consumer.next()).await
    {
        received.push(delivery.expect("delivery"));
    }

    assert_eq!(received.len(), 2, "exactly A's two results");
    for (delivery, job) in received.iter().zip(&jobs_a) {
        assert_eq!(
            delivery.routing_key.as_str(),
            format!("{a}.pieces.succeeded")
        );
        let id = correlation_id(job);
        assert_eq!(
            delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some(id.as_str())
        );
        assert_eq!(
            delivery
                .properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str()),
            Some("application/json")
        );
        let body: Value = serde_json::from_slice(&delivery.data).expect("JSON result");
        assert_eq!(body["correlation_id"], job["correlation_id"]);
        assert_eq!(body["status"], "succeeded");
        assert_eq!(body["inserted"], 1);
        assert!(body.get("company_guid").is_none(), "{body}");
    }
    let _ = connection.close(200, "done".into()).await;
}

// ------------------------------------------------------------- dry run

/// Every entity table as JSON text, rows ordered by GUID.
async fn snapshot(app: &TestApp) -> Vec<String> {
    let mut tables = Vec::new();
    for table in ENTITIES {
        let rows: String = sqlx::query_scalar(&format!(
            "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY guid), '[]')::text FROM {table} t"
        ))
        .fetch_one(&app.pool)
        .await
        .expect("snapshot");
        tables.push(rows);
    }
    tables
}

#[tokio::test]
async fn dry_run_reports_what_would_happen_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let existing = Uuid::new_v4();
    let setup = app
        .sync(
            "pieces",
            &token,
            &json!([piece(company, existing, "before")]),
        )
        .await;
    assert_eq!(setup["status"], "succeeded");
    let before = snapshot(&app).await;
    let new = Uuid::new_v4();
    let body = json!([
        piece(company, existing, "after"),
        piece(company, new, "new"),
        item("pieces", company),
    ]);

    let accepted = answer(
        app.post_with("pieces?dry_run=true", &token, &body, &[])
            .await,
    )
    .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    assert_eq!(accepted.body["dry_run"], true, "{}", accepted.body);
    let job = app
        .finished_job(&correlation_id(&accepted.body), &token)
        .await;

    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["dry_run"], true);
    assert_eq!(job["item_count"], 3);
    assert_eq!(job["inserted"], 2);
    assert_eq!(job["updated"], 1);
    assert_eq!(snapshot(&app).await, before);
    assert!(app.row("pieces", new).await.is_none());
    let stored = app.row("pieces", existing).await.expect("existing piece");
    assert_eq!(stored["mark"], "before");
}

#[tokio::test]
async fn dry_run_with_another_companys_guid_fails_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let (a, b) = (company(), company());
    let (token_a, token_b) = (app.writer(a).await, app.writer(b).await);
    let foreign = Uuid::new_v4();
    app.sync("pieces", &token_b, &json!([piece(b, foreign, "theirs")]))
        .await;
    let before = snapshot(&app).await;
    let body = json!([item("pieces", a), piece(a, foreign, "mine")]);

    let response = app
        .post_with(
            "pieces?dry_run=true",
            &token_a,
            &body,
            &[("prefer", "wait=10")],
        )
        .await;
    let answer = answer(response).await;

    // A failed job is a finished one: the wait ends with 200 too.
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let job = &answer.body;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["dry_run"], true);
    assert_eq!(job["error"]["code"], "company_access_violation", "{job}");
    assert_eq!(job["error"]["indexes"], json!([1]));
    assert_eq!(job["inserted"], Value::Null);
    assert!(!job.to_string().contains(&b.to_string()), "{job}");
    assert_eq!(snapshot(&app).await, before);
    let theirs = app.row("pieces", foreign).await.expect("B's piece");
    assert_eq!(theirs["mark"], "theirs");
    assert_eq!(theirs["company_guid"], json!(b));
}

// ------------------------------------------------------ position and ETA

/// Inserts `n` jobs of another company finished just now on `shard`, so the
/// shard has a recent drain rate.
async fn finished_jobs_on_shard(app: &TestApp, shard: i32, n: usize) {
    for _ in 0..n {
        sqlx::query(
            "INSERT INTO sync_jobs (correlation_id, company_guid, entity, status, item_count, \
                 inserted, updated, attempts, shard, submitted_by, started_at, completed_at) \
             VALUES ($1, $2, 'pieces', 'succeeded', 1, 1, 0, 1, $3, 'test', now(), now())",
        )
        .bind(Uuid::now_v7())
        .bind(Uuid::new_v4())
        .bind(shard)
        .execute(&app.pool)
        .await
        .expect("finished job inserted");
    }
}

async fn job(app: &TestApp, id: &str, token: &str) -> Value {
    let response = app.get_job(id, token).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("job")
}

/// Waits until job `id` has `status`, and returns it.
async fn job_with_status(app: &TestApp, id: &str, token: &str, status: &str) -> Value {
    eventually(Duration::from_secs(10), status, || async {
        let job = job(app, id, token).await;
        (job["status"] == status).then_some(job)
    })
    .await
}

fn assert_no_progress(job: &Value) {
    assert!(job.get("queue_position").is_none(), "{job}");
    assert!(job.get("estimated_start_at").is_none(), "{job}");
}

#[tokio::test]
async fn queued_jobs_show_a_position_and_estimated_start_that_advance() {
    let app = TestApp::spawn_with(Mode::Api, |_| {}).await;
    let company = company();
    let token = app.writer(company).await;
    let shard = i32::from(topology(&app.settings).shard_for(company));
    finished_jobs_on_shard(&app, shard, 3).await;
    // Four stored pieces; job i updates piece i, so a test transaction
    // holding piece i's row lock keeps job i processing.
    let pieces: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for guid in &pieces {
        sqlx::query(
            "INSERT INTO pieces (guid, company_guid, assembly_guid, mark) \
             VALUES ($1, $2, $3, 'old')",
        )
        .bind(guid)
        .bind(company)
        .bind(Uuid::new_v4())
        .execute(&app.pool)
        .await
        .expect("piece inserted");
    }
    let mut ids = Vec::new();
    for guid in &pieces {
        let accepted = app
            .accepted("pieces", &token, &json!([piece(company, *guid, "new")]))
            .await;
        assert!(accepted["queue_position"].as_u64() >= Some(1), "{accepted}");
        ids.push(correlation_id(&accepted));
    }

    // The drain rate is sampled once a second.
    eventually(Duration::from_secs(5), "an estimate", || async {
        let job = job(&app, &ids[0], &token).await;
        job.get("estimated_start_at").map(|_| ())
    })
    .await;
    let mut previous_start = None;
    for (i, id) in ids.iter().enumerate() {
        let job = job(&app, id, &token).await;
        assert_eq!(job["status"], "queued", "{job}");
        assert_eq!(job["queue_position"], i + 1, "{job}");
        let start = timestamp(&job["estimated_start_at"]);
        assert!(previous_start.is_none_or(|p| p <= start), "{job}");
        previous_start = Some(start);
    }
    let first_start = timestamp(&job(&app, &ids[0], &token).await["estimated_start_at"]);
    assert!((first_start - Utc::now()).num_seconds().abs() < 5);

    let mut locks = Vec::new();
    for guid in &pieces {
        let mut tx = app.pool.begin().await.expect("transaction");
        sqlx::query("SELECT 1 FROM pieces WHERE guid = $1 FOR UPDATE")
            .bind(guid)
            .execute(&mut *tx)
            .await
            .expect("row locked");
        locks.push(tx);
    }
    let _worker = app.spawn_worker().await;

    let mut last_positions = Vec::new();
    for (done, lock) in locks.into_iter().enumerate() {
        let processing = job_with_status(&app, &ids[done], &token, "processing").await;
        assert_no_progress(&processing);
        for (i, id) in ids.iter().enumerate().skip(done + 1) {
            let waiting = job(&app, id, &token).await;
            assert_eq!(waiting["status"], "queued", "{waiting}");
            assert_eq!(waiting["queue_position"], i - done + 1, "{waiting}");
            assert!(waiting["estimated_start_at"].is_string(), "{waiting}");
        }
        last_positions.push(job(&app, &ids[3], &token).await["queue_position"].clone());
        lock.commit().await.expect("row released");
        let finished = job_with_status(&app, &ids[done], &token, "succeeded").await;
        assert_no_progress(&finished);
        assert_eq!(finished["updated"], 1);
    }
    assert_eq!(last_positions, [json!(4), json!(3), json!(2), Value::Null]);
}

// ----------------------------------------------------------- retention

/// Inserts a finished job completed `hours_ago`; returns its id.
async fn job_finished_hours_ago(app: &TestApp, hours_ago: f64) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO sync_jobs (correlation_id, company_guid, entity, status, item_count, \
             inserted, updated, attempts, shard, submitted_by, submitted_at, started_at, \
             completed_at) \
         VALUES ($1, $2, 'pieces', 'succeeded', 1, 1, 0, 1, 0, 'test', \
             now() - make_interval(secs => $3 * 3600 + 1), \
             now() - make_interval(secs => $3 * 3600 + 1), \
             now() - make_interval(secs => $3 * 3600))",
    )
    .bind(id)
    .bind(Uuid::new_v4())
    .bind(hours_ago)
    .execute(&app.pool)
    .await
    .expect("job inserted");
    id
}

/// Inserts an idempotency key created `hours_ago`.
async fn key_created_hours_ago(app: &TestApp, key: &str, hours_ago: f64) {
    sqlx::query(
        "INSERT INTO idempotency_keys (company_guid, key, request_hash, correlation_id, guids, \
             created_at) \
         VALUES ($1, $2, '\\x00', $3, '{}', now() - make_interval(secs => $4 * 3600))",
    )
    .bind(Uuid::new_v4())
    .bind(key)
    .bind(Uuid::now_v7())
    .bind(hours_ago)
    .execute(&app.pool)
    .await
    .expect("key inserted");
}

async fn job_exists(app: &TestApp, id: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sync_jobs WHERE correlation_id = $1)")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .expect("exists query")
}

async fn key_exists(app: &TestApp, key: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM idempotency_keys WHERE key = $1)")
        .bind(key)
        .fetch_one(&app.pool)
        .await
        .expect("exists query")
}

const RETENTION: Retention = Retention {
    job_hours: 168,
    tombstone_days: 30,
};

#[tokio::test]
async fn purge_removes_jobs_and_keys_past_retention_and_keeps_the_rest() {
    let app = TestApp::spawn_with(Mode::Api, |s| s.purge_interval_secs = 3600).await;
    // Let the service's own first purge (at start-up) run on the empty
    // database before rows are planted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old_job = job_finished_hours_ago(&app, 200.0).await;
    let recent_job = job_finished_hours_ago(&app, 1.0).await;
    let company = company();
    let token = app.writer(company).await;
    let queued = app
        .accepted("pieces", &token, &json!([item("pieces", company)]))
        .await;
    sqlx::query("UPDATE sync_jobs SET submitted_at = now() - interval '300 hours' WHERE correlation_id = $1")
        .bind(Uuid::parse_str(&correlation_id(&queued)).expect("uuid"))
        .execute(&app.pool)
        .await
        .expect("backdated");
    key_created_hours_ago(&app, "old-key", 25.0).await;
    key_created_hours_ago(&app, "recent-key", 23.0).await;

    let purged = purge_once(&app.pool, RETENTION).await.expect("purge runs");

    assert_eq!(
        purged,
        Purged {
            jobs: 1,
            idempotency_keys: 1,
            tombstones: 0,
        }
    );
    assert!(!job_exists(&app, old_job).await);
    assert!(job_exists(&app, recent_job).await);
    let queued_id = Uuid::parse_str(&correlation_id(&queued)).expect("uuid");
    assert!(job_exists(&app, queued_id).await, "open jobs are kept");
    assert!(!key_exists(&app, "old-key").await);
    assert!(key_exists(&app, "recent-key").await);
    assert_eq!(
        purge_once(&app.pool, RETENTION).await.expect("purge runs"),
        Purged::default()
    );
}

#[tokio::test]
async fn finished_jobs_past_retention_are_purged_periodically() {
    let app = TestApp::spawn_with(Mode::All, |s| {
        s.purge_interval_secs = 1;
        s.job_retention_hours = 0;
    })
    .await;
    let company = company();
    let token = app.writer(company).await;
    // Waiting in the request, not polling: the job may be gone by the
    // time a poll would look.
    let response = app
        .post_with(
            "pieces",
            &token,
            &json!([item("pieces", company)]),
            &[("prefer", "wait=10")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let job: Value = response.json().await.expect("job");
    assert_eq!(job["status"], "succeeded", "{job}");
    let id = correlation_id(&job);

    eventually(Duration::from_secs(5), "the purge", || async {
        (app.get_job(&id, &token).await.status() == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert_eq!(app.count("sync_jobs").await, 0);
    assert_eq!(app.count("pieces").await, 1, "only the job is purged");
}
