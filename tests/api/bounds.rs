//! What a client gets beyond the public listener's bounds on connections
//! and on requests in flight.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;
use sync_ingest::app::Mode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

async fn connect(app: &TestApp) -> TcpStream {
    let addr = app.base.trim_start_matches("http://").to_owned();
    TcpStream::connect(&addr).await.expect("connect")
}

/// A GET of `/healthz` on `stream`, kept alive; the status line, or `None`
/// when the server closed the connection instead.
async fn healthz(stream: &mut TcpStream) -> Option<String> {
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
        .await;
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered or closed in time");
    match read {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(
            String::from_utf8_lossy(&answer[..n])
                .lines()
                .next()?
                .to_owned(),
        ),
    }
}

fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
}

#[tokio::test]
async fn a_connection_beyond_the_limit_is_closed_and_a_freed_slot_is_used_again() {
    let app = TestApp::spawn_with(Mode::All, |s| s.max_connections = 2).await;
    let mut first = connect(&app).await;
    let mut second = connect(&app).await;
    assert_eq!(
        healthz(&mut first).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    assert_eq!(
        healthz(&mut second).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );

    let mut third = connect(&app).await;
    assert_eq!(
        healthz(&mut third).await,
        None,
        "a third connection was served"
    );
    let metrics = app.ops_get("/metrics").await.text().await.expect("metrics");
    assert!(
        metric(&metrics, "sync_http_connections_refused_total") >= Some(1.0),
        "{metrics}"
    );
    // The whole test process's open connections, other tests' included.
    assert!(
        metric(&metrics, "sync_http_connections_open") >= Some(2.0),
        "{metrics}"
    );

    drop(first);
    let mut served = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        served = healthz(&mut connect(&app).await).await;
        if served.is_some() {
            break;
        }
    }
    assert_eq!(served.as_deref(), Some("HTTP/1.1 200 OK"));
    assert_eq!(
        healthz(&mut second).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
}

#[tokio::test]
async fn a_request_beyond_the_limit_in_flight_is_answered_503_at_once() {
    let app = TestApp::spawn_with(Mode::All, |s| s.max_requests_in_flight = 1).await;
    let token = app.writer(company()).await;
    // A submission whose body never comes holds the one slot.
    let mut stalled = connect(&app).await;
    let head = format!(
        "POST /api/v1/sync/projects HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n["
    );
    stalled.write_all(head.as_bytes()).await.expect("sent");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let response = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let problem: Value = response.json().await.expect("problem body");
    assert_eq!(problem["code"], "overloaded", "{problem}");

    // The stalled client goes away: its request ends, and the slot is free.
    drop(stalled);
    let mut status = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let response = app.client.get(format!("{}/healthz", app.base)).send().await;
        status = response.ok().map(|r| r.status());
        if status == Some(StatusCode::OK) {
            break;
        }
    }
    assert_eq!(status, Some(StatusCode::OK));
    let metrics = app.ops_get("/metrics").await.text().await.expect("metrics");
    assert!(
        metric(&metrics, "sync_http_requests_shed_total") >= Some(1.0),
        "{metrics}"
    );
}

/// Posts `count` one-project batches for `company` to `base`; the statuses.
async fn push_projects(
    app: &TestApp,
    base: &str,
    token: &str,
    company: uuid::Uuid,
    count: usize,
) -> Vec<reqwest::Response> {
    let mut answers = Vec::new();
    for _ in 0..count {
        let body = serde_json::json!([item("projects", company)]);
        let response = app
            .client
            .post(format!("{base}/api/v1/sync/projects"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("answered");
        answers.push(response);
    }
    answers
}

#[tokio::test]
async fn a_company_over_its_backlog_is_throttled_on_every_api_while_others_are_accepted() {
    // Two apis, no worker: nothing drains until the test starts one.
    let app = TestApp::spawn_with(Mode::Api, |s| s.max_company_backlog = 3).await;
    let mut second_settings = app.settings.clone();
    second_settings.ops_addr = Some("127.0.0.1:0".parse().unwrap());
    let second = sync_ingest::app::Service::start(second_settings, Mode::Api)
        .await
        .expect("a second api starts");
    let second_base = format!("http://{}", second.http_addr.expect("public listener"));
    let (noisy, quiet) = (company(), company());
    let noisy_token = app.writer(noisy).await;
    let quiet_token = app.writer(quiet).await;

    // Four items accepted (the fourth takes the backlog over the cap of 3),
    // two on each api; then the noisy company is refused on both.
    let mut statuses = Vec::new();
    for base in [&app.base, &second_base, &app.base, &second_base] {
        let answers = push_projects(&app, base, &noisy_token, noisy, 1).await;
        statuses.push(answers[0].status());
    }
    assert_eq!(statuses, [StatusCode::ACCEPTED; 4]);
    for base in [&app.base, &second_base] {
        let answer = push_projects(&app, base, &noisy_token, noisy, 1)
            .await
            .remove(0);
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = answer.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!((1..=300).contains(&retry_after), "{retry_after}");
        let problem: Value = answer.json().await.expect("problem");
        assert_eq!(problem["code"], "company_backlog_full", "{problem}");
    }
    // The quiet company is accepted all the while, on both.
    for base in [&app.base, &second_base] {
        let answer = push_projects(&app, base, &quiet_token, quiet, 1)
            .await
            .remove(0);
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
    }
    let metrics = app.ops_get("/metrics").await.text().await.expect("metrics");
    assert!(
        metric(
            &metrics,
            "sync_submissions_refused_total{reason=\"company_backlog_full\"}"
        ) >= Some(1.0),
        "{metrics}"
    );

    // A worker drains the backlog: the cap is released.
    let _worker = app.spawn_worker().await;
    let mut status = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answer = push_projects(&app, &second_base, &noisy_token, noisy, 1)
            .await
            .remove(0);
        status = Some(answer.status());
        if status == Some(StatusCode::ACCEPTED) {
            break;
        }
    }
    assert_eq!(status, Some(StatusCode::ACCEPTED));
    second.begin_shutdown();
}
