//! The request contract of `POST /api/v1/sync/{entity}` (SPEC §4).

use crate::gate::BrokerGate;
use crate::helpers::*;
use reqwest::{header, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use sync_ingest::app::Mode;
use uuid::Uuid;

/// Asserts a problem+json answer with `status` and `code`, and returns its body.
async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    let body = assert_client_problem(response).await;
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert_eq!(body["code"], code, "{body}");
    body
}

/// Asserts a 4xx problem+json answer (RFC 9457 members present) and returns
/// its body.
async fn assert_client_problem(response: Response) -> Value {
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("body");
    assert!(status.is_client_error(), "status {status}, body {text}");
    assert!(
        content_type.starts_with("application/problem+json"),
        "content type {content_type:?}, body {text}"
    );
    let body: Value = serde_json::from_str(&text).expect("problem body is JSON");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    for member in ["type", "title", "detail", "code"] {
        assert!(body[member].is_string(), "problem lacks `{member}`: {body}");
    }
    body
}

/// The (index, field) pairs of a `validation_failed` body; every error has a
/// message and no pair is listed twice.
fn error_pairs(problem: &Value) -> BTreeSet<(Option<u64>, Option<String>)> {
    let errors = problem["errors"].as_array().expect("errors array");
    let pairs: BTreeSet<_> = errors
        .iter()
        .map(|e| {
            let message = e["message"].as_str().unwrap_or_default();
            assert!(!message.trim().is_empty(), "error without a message: {e}");
            (e["index"].as_u64(), e["field"].as_str().map(str::to_owned))
        })
        .collect();
    assert_eq!(
        pairs.len(),
        errors.len(),
        "an error is listed twice: {problem}"
    );
    pairs
}

fn pair(index: u64, field: &str) -> (Option<u64>, Option<String>) {
    (Some(index), Some(field.to_owned()))
}

/// Asserts a `validation_failed` answer naming exactly these (item, field)
/// pairs, and that no job was recorded.
async fn assert_refused(app: &TestApp, response: Response, expected: &[(u64, &str)]) {
    let problem = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let expected: BTreeSet<_> = expected.iter().map(|(i, f)| pair(*i, f)).collect();
    assert_eq!(error_pairs(&problem), expected, "{problem}");
    assert_eq!(job_rows(app).await, 0);
}

async fn job_rows(app: &TestApp) -> i64 {
    app.count("sync_jobs").await
}

fn is_timestamp(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

#[tokio::test]
async fn accepted_batch_answers_202_with_location_job_and_guids_in_item_order() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let given = [Uuid::new_v4(), Uuid::now_v7()];
    let mut first = item("projects", company);
    first["guid"] = json!(given[0]);
    let second = item("projects", company);
    let mut third = item("projects", company);
    third["guid"] = Value::Null;
    let mut fourth = item("projects", company);
    fourth["guid"] = json!(given[1]);

    let response = app
        .post("projects", &token, &json!([first, second, third, fourth]))
        .await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response
        .headers()
        .get(header::LOCATION)
        .expect("Location header")
        .to_str()
        .expect("ascii Location")
        .to_owned();
    let body: Value = response.json().await.expect("json body");
    let id = body["correlation_id"].as_str().expect("correlation_id");
    assert_eq!(location, format!("/api/v1/sync/jobs/{id}"));
    assert_eq!(body["entity"], "projects", "{body}");
    assert_eq!(body["status"], "queued", "{body}");
    assert_eq!(body["item_count"], 4, "{body}");
    assert!(body["inserted"].is_null(), "{body}");
    assert!(body["updated"].is_null(), "{body}");
    assert!(body["attempts"].is_i64(), "{body}");
    assert!(is_timestamp(&body["submitted_at"]), "{body}");

    let guids: Vec<Uuid> = serde_json::from_value(body["guids"].clone()).expect("guids");
    assert_eq!(guids.len(), 4, "{body}");
    assert_eq!(guids[0], given[0]);
    assert_eq!(guids[3], given[1]);
    for assigned in [guids[1], guids[2]] {
        assert_eq!(assigned.get_version_num(), 7, "assigned guid {assigned}");
    }
    assert_ne!(guids[1], guids[2]);

    let job = app.finished_job(id, &token).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["correlation_id"], id);
    let inserted = job["inserted"].as_i64().expect("inserted");
    let updated = job["updated"].as_i64().expect("updated");
    assert_eq!(inserted + updated, 4, "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    assert!(is_timestamp(&job["started_at"]), "{job}");
    assert!(is_timestamp(&job["completed_at"]), "{job}");
    assert!(job["error"].is_null(), "{job}");
    for guid in guids {
        let row = app
            .row("projects", guid)
            .await
            .expect("row stored under the answered guid");
        assert_eq!(row["company_guid"], json!(company));
    }

    let via_location = app
        .client
        .get(format!("{}{location}", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request sent");
    assert_eq!(via_location.status(), StatusCode::OK);
    let via_location: Value = via_location.json().await.expect("job");
    assert_eq!(via_location, job);
}

#[tokio::test]
async fn empty_array_answers_202_with_a_job_already_succeeded() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;

    let response = app.post("assemblies", &token, &json!([])).await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response
        .headers()
        .get(header::LOCATION)
        .expect("Location header")
        .to_str()
        .expect("ascii")
        .to_owned();
    let body: Value = response.json().await.expect("json");
    let id = body["correlation_id"].as_str().expect("correlation_id");
    assert_eq!(location, format!("/api/v1/sync/jobs/{id}"));
    assert_eq!(body["status"], "succeeded", "{body}");
    assert_eq!(body["item_count"], 0, "{body}");
    assert_eq!(body["inserted"], 0, "{body}");
    assert_eq!(body["updated"], 0, "{body}");
    assert_eq!(body["guids"], json!([]), "{body}");
    let job: Value = app.get_job(id, &token).await.json().await.expect("job");
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["inserted"], 0, "{job}");
    assert_eq!(job["updated"], 0, "{job}");
}

#[tokio::test]
async fn unknown_entity_is_404_problem() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;

    let response = app
        .post("widgets", &token, &json!([item("projects", company)]))
        .await;

    assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(job_rows(&app).await, 0);
}

#[tokio::test]
async fn every_validation_error_of_a_project_batch_is_listed_with_422() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let batch = json!([
        // 0: valid, with a name of exactly 255 characters.
        {"company_guid": company, "number": "P-0", "name": "n".repeat(255)},
        // 1: blank/empty required strings, bad enum, impossible and garbled dates.
        {"company_guid": company, "number": "", "name": "   ", "status": "done",
         "start_date": "2024-02-30", "end_date": "tomorrow"},
        // 2: end before start.
        {"company_guid": company, "number": "P-2", "name": "Late",
         "start_date": "2024-05-02", "end_date": "2024-05-01"},
        // 3: wrong types everywhere, and an unknown field.
        {"company_guid": company, "number": 12, "name": ["x"], "status": 1,
         "description": {}, "owner": "me"},
        // 4: not an object.
        17,
        // 5: bad UUID, non-ISO date, name one character too long.
        {"guid": "0000-bad", "company_guid": company, "number": "P-5",
         "name": "n".repeat(256), "start_date": "05/01/2024"},
        // 6: nothing at all.
        {},
        // 7: company_guid of the wrong type, attributes not an object.
        {"company_guid": 5, "number": "P-7", "name": "Seven", "attributes": [1, 2]}
    ]);

    let response = app.post("projects", &token, &batch).await;

    let problem = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let expected: BTreeSet<_> = [
        pair(1, "number"),
        pair(1, "name"),
        pair(1, "status"),
        pair(1, "start_date"),
        pair(1, "end_date"),
        pair(2, "end_date"),
        pair(3, "number"),
        pair(3, "name"),
        pair(3, "status"),
        pair(3, "description"),
        pair(3, "owner"),
        (Some(4), None),
        pair(5, "guid"),
        pair(5, "name"),
        pair(5, "start_date"),
        pair(6, "company_guid"),
        pair(6, "number"),
        pair(6, "name"),
        pair(7, "company_guid"),
        pair(7, "attributes"),
    ]
    .into_iter()
    .collect();
    assert_eq!(error_pairs(&problem), expected, "{problem}");
    assert_eq!(job_rows(&app).await, 0);
    assert_eq!(app.count("projects").await, 0);
}

#[tokio::test]
async fn every_validation_error_of_a_piece_batch_is_listed_with_422() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let assembly = Uuid::new_v4();
    let batch = json!([
        // 0: valid, with a mark of exactly 64 characters (multi-byte ones).
        {"company_guid": company, "assembly_guid": assembly, "mark": "ü".repeat(64),
         "quantity": 2, "length_mm": 0, "weight_kg": 12.5},
        // 1: bad UUID, mark of 65 characters, quantity 0, negative length,
        //    unknown field.
        {"company_guid": company, "assembly_guid": "not-a-uuid", "mark": "m".repeat(65),
         "quantity": 0, "length_mm": -1, "colour": "red"},
        // 2: guid of the wrong type, blank mark, fractional quantity, width as
        //    text, attributes not an object.
        {"guid": 42, "company_guid": company, "assembly_guid": assembly, "mark": "   ",
         "quantity": 1.5, "width_mm": "wide", "attributes": [1, 2]},
        // 3: not an object.
        "a piece",
        // 4: required fields missing or null, more wrong types.
        {"company_guid": "xyz", "assembly_guid": null, "article_guid": "1234",
         "height_mm": -0.5, "weight_kg": true},
        // 5: valid.
        {"company_guid": company, "assembly_guid": assembly, "mark": "ok"},
        // 6: quantity beyond a 32-bit integer, mark not a string.
        {"company_guid": company, "assembly_guid": assembly, "mark": 7,
         "quantity": 3_000_000_000_u64}
    ]);

    let response = app.post("pieces", &token, &batch).await;

    let problem = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let expected: BTreeSet<_> = [
        pair(1, "assembly_guid"),
        pair(1, "mark"),
        pair(1, "quantity"),
        pair(1, "length_mm"),
        pair(1, "colour"),
        pair(2, "guid"),
        pair(2, "mark"),
        pair(2, "quantity"),
        pair(2, "width_mm"),
        pair(2, "attributes"),
        (Some(3), None),
        pair(4, "company_guid"),
        pair(4, "assembly_guid"),
        pair(4, "mark"),
        pair(4, "article_guid"),
        pair(4, "height_mm"),
        pair(4, "weight_kg"),
        pair(6, "mark"),
        pair(6, "quantity"),
    ]
    .into_iter()
    .collect();
    assert_eq!(error_pairs(&problem), expected, "{problem}");
    assert_eq!(job_rows(&app).await, 0);
    assert_eq!(app.count("pieces").await, 0);
}

#[tokio::test]
async fn duplicate_guids_within_a_batch_are_rejected_with_422() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let guid = Uuid::new_v4();
    let mut first = item("articles", company);
    first["guid"] = json!(guid);
    let mut other = item("articles", company);
    other["guid"] = json!(Uuid::new_v4());
    // The same UUID spelled in upper case is still the same GUID.
    let mut again = item("articles", company);
    again["guid"] = json!(guid.to_string().to_uppercase());

    let response = app
        .post("articles", &token, &json!([first, other, again]))
        .await;

    let problem = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let expected: BTreeSet<_> = [pair(2, "guid")].into_iter().collect();
    assert_eq!(error_pairs(&problem), expected, "{problem}");
    assert_eq!(job_rows(&app).await, 0);
}

#[tokio::test]
async fn malformed_json_is_rejected_with_422() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let body = format!(r#"[{{"company_guid": "{company}", "number": "P-1", "name": "#);

    let response = app
        .post_raw("projects", &token, "application/json", body.into_bytes())
        .await;

    let problem = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert!(
        !problem["errors"].as_array().expect("errors").is_empty(),
        "{problem}"
    );
    assert_eq!(job_rows(&app).await, 0);
}

#[tokio::test]
async fn a_body_that_is_not_an_array_is_rejected_with_422() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;

    for body in [item("projects", company), json!("projects"), json!(null)] {
        let response = app.post("projects", &token, &body).await;
        assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    assert_eq!(job_rows(&app).await, 0);
}

#[tokio::test]
async fn absurdly_deep_nesting_in_attributes_is_a_client_error_not_a_crash() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let depth = 100_000;
    let body = format!(
        r#"[{{"company_guid": "{company}", "number": "P-1", "name": "Deep", "attributes": {{"a": {}{}}}}}]"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );

    let response = app
        .post_raw("projects", &token, "application/json", body.into_bytes())
        .await;

    assert_client_problem(response).await;
    assert_eq!(job_rows(&app).await, 0);
    // The service is still up and still accepts work.
    app.accepted("projects", &token, &json!([item("projects", company)]))
        .await;
}

#[tokio::test]
async fn pieces_over_1000_are_rejected_with_400() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let pieces: Vec<Value> = (0..1001).map(|_| item("pieces", company)).collect();

    let response = app.post("pieces", &token, &json!(pieces)).await;

    assert_problem(response, StatusCode::BAD_REQUEST, "batch_too_large").await;
    assert_eq!(job_rows(&app).await, 0);
    assert_eq!(app.count("pieces").await, 0);
}

#[tokio::test]
async fn exactly_1000_pieces_are_accepted() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let pieces: Vec<Value> = (0..1000).map(|_| item("pieces", company)).collect();

    let job = app.sync("pieces", &token, &json!(pieces)).await;

    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["item_count"], 1000);
    assert_eq!(job["inserted"], 1000);
    assert_eq!(app.count("pieces").await, 1000);
}

#[tokio::test]
async fn items_over_max_batch_are_rejected_with_400_and_pieces_keep_their_own_limit() {
    let app = TestApp::spawn_with(Mode::All, |s| s.max_batch = 3).await;
    let company = company();
    let token = app.writer(company).await;
    let projects = |n: usize| {
        json!((0..n)
            .map(|_| item("projects", company))
            .collect::<Vec<_>>())
    };

    let response = app.post("projects", &token, &projects(4)).await;
    assert_problem(response, StatusCode::BAD_REQUEST, "batch_too_large").await;
    assert_eq!(job_rows(&app).await, 0);

    app.accepted("projects", &token, &projects(3)).await;
    let pieces: Vec<Value> = (0..4).map(|_| item("pieces", company)).collect();
    app.accepted("pieces", &token, &json!(pieces)).await;
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_rejected_with_413() {
    let app = TestApp::spawn_with(Mode::All, |s| s.max_body_bytes = 2048).await;
    let company = company();
    let token = app.writer(company).await;
    let mut big = item("projects", company);
    big["description"] = json!("d".repeat(3000));

    let response = app.post("projects", &token, &json!([big])).await;

    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert_eq!(job_rows(&app).await, 0);
    // A body under the limit still goes through.
    app.accepted("projects", &token, &json!([item("projects", company)]))
        .await;
}

/// Sends `body` in chunks of `chunk` bytes (no Content-Length) and returns
/// the status line and body of the answer.
async fn post_chunked(app: &TestApp, token: &str, body: &[u8], chunk: usize) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let mut request = format!(
        "POST /api/v1/sync/projects HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for part in body.chunks(chunk) {
        request.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        request.extend_from_slice(part);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // Written whole: a refused request may be answered before the rest is read.
    let _ = stream.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("answered in time");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.lines().next().unwrap_or_default().to_owned();
    (status, answer)
}

#[tokio::test]
async fn a_chunked_body_is_read_whole_and_held_to_the_limit() {
    let app = TestApp::spawn_with(Mode::All, |s| s.max_body_bytes = 2048).await;
    let company = company();
    let token = app.writer(company).await;
    let items: Vec<Value> = (0..3).map(|_| item("projects", company)).collect();
    let body = serde_json::to_vec(&items).expect("json");
    assert!(body.len() < 2048);

    let (status, answer) = post_chunked(&app, &token, &body, 100).await;
    assert!(status.starts_with("HTTP/1.1 202"), "{answer}");
    let json = &answer[answer.find("\r\n\r\n").expect("head") + 4..];
    let accepted: Value = serde_json::from_str(json).expect("a JSON answer");
    assert_eq!(accepted["item_count"], 3, "{answer}");
    assert_eq!(
        accepted["guids"].as_array().map(Vec::len),
        Some(3),
        "{answer}"
    );
    assert_eq!(job_rows(&app).await, 1);

    let mut big = item("projects", company);
    big["description"] = json!("d".repeat(3000));
    let body = serde_json::to_vec(&json!([big])).expect("json");
    let (status, answer) = post_chunked(&app, &token, &body, 500).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert_eq!(job_rows(&app).await, 1);
}

#[tokio::test]
async fn a_text_plain_body_is_rejected_with_415() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let body = serde_json::to_vec(&json!([item("projects", company)])).expect("json");

    let response = app.post_raw("projects", &token, "text/plain", body).await;

    assert_problem(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert_eq!(job_rows(&app).await, 0);
}

#[tokio::test]
async fn a_body_without_content_type_is_rejected_with_415() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let body = serde_json::to_vec(&json!([item("projects", company)])).expect("json");

    let response = app
        .client
        .post(format!("{}/api/v1/sync/projects", app.base))
        .bearer_auth(&token)
        .body(body)
        .send()
        .await
        .expect("request sent");

    assert_problem(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert_eq!(job_rows(&app).await, 0);
}

#[tokio::test]
async fn json_with_a_charset_parameter_is_accepted() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let body = serde_json::to_vec(&json!([item("projects", company)])).expect("json");

    let response = app
        .post_raw("projects", &token, "application/json; charset=utf-8", body)
        .await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn unreachable_broker_answers_503_with_retry_after_and_leaves_no_job() {
    let app = TestApp::spawn_with(Mode::Api, |s| {
        s.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    })
    .await;
    let company = company();
    let token = app.writer(company).await;

    let response = app
        .post("projects", &token, &json!([item("projects", company)]))
        .await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .expect("Retry-After header")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s > 0),
        "Retry-After {retry_after:?}"
    );
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("application/problem+json"));
    let problem: Value = response.json().await.expect("json");
    assert_eq!(problem["status"], 503, "{problem}");
    assert_eq!(problem["code"], "broker_unavailable", "{problem}");
    assert_eq!(job_rows(&app).await, 0);
}

#[tokio::test]
async fn a_client_hanging_up_while_the_broker_hangs_leaves_no_queued_job() {
    let gate = BrokerGate::opened().await;
    let mut app = TestApp::spawn_with(Mode::Api, |s| {
        s.amqp_url = gate.url.clone();
        s.confirm_timeout_ms = 1_000;
    })
    .await;
    let company = company();
    let token = app.writer(company).await;
    gate.freeze();

    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .expect("client");
    let sent = impatient
        .post(format!("{}/api/v1/sync/projects", app.base))
        .bearer_auth(&token)
        .json(&json!([item("projects", company)]))
        .send()
        .await;
    assert!(
        sent.is_err(),
        "the request should still be waiting on the broker"
    );

    // The api gives up on the confirm after 1 s and withdraws the job, even
    // though nobody is left to tell.
    let mut rows = job_rows(&app).await;
    for _ in 0..50 {
        if rows == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        rows = job_rows(&app).await;
    }
    // Thawed before asserting, so that a failure unwinds instead of hanging
    // in the clean-up; which goes to the broker itself, not the proxy.
    gate.open();
    app.settings.amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f".into();
    assert_eq!(rows, 0, "a job without a confirmed message was left behind");
}

#[tokio::test]
async fn strings_with_nul_characters_are_rejected_with_422() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let mut name = item("projects", company);
    name["name"] = json!("a\u{0}b");
    let mut description = item("projects", company);
    description["description"] = json!("\u{0}");
    let mut value = item("projects", company);
    value["attributes"] = json!({"k": ["x\u{0}y"]});
    let mut key = item("projects", company);
    key["attributes"] = json!({"k\u{0}": 1});

    let response = app
        .post("projects", &token, &json!([name, description, value, key]))
        .await;

    let expected = [
        (0, "name"),
        (1, "description"),
        (2, "attributes"),
        (3, "attributes"),
    ];
    assert_refused(&app, response, &expected).await;
}

/// The body as raw text: `serde_json` cannot write an unpaired surrogate or
/// a key twice.
fn raw_projects(company: Uuid, items: &[&str]) -> Vec<u8> {
    let items: Vec<String> = items
        .iter()
        .map(|extra| {
            format!(r#"{{"company_guid": "{company}", "number": "P-1", "name": "n"{extra}}}"#)
        })
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

#[tokio::test]
async fn unpaired_surrogates_are_rejected_with_422_naming_item_and_field() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let body = raw_projects(
        company,
        &[
            r#", "attributes": {"k": "\udc00"}"#,
            r#", "attributes": {"k\ud800": 1}"#,
            r#", "description": "a\ud800b""#,
            r#", "description": "\ud83d\ude00 paired""#,
        ],
    );

    let response = app
        .post_raw("projects", &token, "application/json", body)
        .await;

    let expected = [(0, "attributes"), (1, "attributes"), (2, "description")];
    assert_refused(&app, response, &expected).await;
}

#[tokio::test]
async fn a_key_named_twice_in_an_item_is_rejected_with_422() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let body = raw_projects(
        company,
        &[
            r#", "name": "second""#,
            r#", "n\u0061me": "escaped""#,
            r#", "attributes": {"k": 1, "k": 2}"#,
        ],
    );

    let response = app
        .post_raw("projects", &token, "application/json", body)
        .await;

    assert_refused(&app, response, &[(0, "name"), (1, "name")]).await;
}

#[tokio::test]
async fn dates_not_written_yyyy_mm_dd_are_rejected_with_422() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let dates = [
        "24-01-05",
        "2024-1-5",
        "2024-01-5",
        "+2024-01-05",
        " 2024-01-05",
        "-4800-01-01",
    ];
    let batch: Vec<Value> = dates
        .iter()
        .map(|date| {
            let mut project = item("projects", company);
            project["start_date"] = json!(date);
            project
        })
        .collect();

    let response = app.post("projects", &token, &json!(batch)).await;

    let problem = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let expected: BTreeSet<_> = (0..dates.len() as u64)
        .map(|index| pair(index, "start_date"))
        .collect();
    assert_eq!(error_pairs(&problem), expected, "{problem}");
    assert_eq!(job_rows(&app).await, 0);
}

#[tokio::test]
async fn a_wrong_method_on_the_submit_route_is_405_problem() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;

    let response = app
        .client
        .put(format!("{}/api/v1/sync/projects", app.base))
        .bearer_auth(&token)
        .json(&json!([item("projects", company)]))
        .send()
        .await
        .expect("request sent");

    let allow = response
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(allow.contains("POST"), "Allow: {allow:?}");
    assert_problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    assert_eq!(job_rows(&app).await, 0);
}

#[tokio::test]
async fn a_body_that_stalls_is_answered_408_and_its_connection_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(Mode::All, |s| s.body_timeout_secs = 1).await;
    let token = app.writer(company()).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/v1/sync/projects HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n["
    );
    stream.write_all(head.as_bytes()).await.expect("sent");
    let started = std::time::Instant::now();

    // The answer comes, and then the end of the connection: read to the end.
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("answered and closed in time")
    .expect("read");
    let waited = started.elapsed();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let body: Value = serde_json::from_str(&answer[answer.find("\r\n\r\n").expect("head") + 4..])
        .expect("a problem body");
    assert_eq!(body["code"], "body_timeout", "{answer}");
    assert!(
        waited >= std::time::Duration::from_millis(900),
        "{waited:?}"
    );
    assert_eq!(job_rows(&app).await, 0);
    let metrics = app.ops_get("/metrics").await.text().await.expect("metrics");
    let timed_out = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sync_http_body_timeouts_total "))
        .and_then(|n| n.trim().parse::<f64>().ok());
    assert!(timed_out >= Some(1.0), "{metrics}");
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_body_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(Mode::All, |s| s.body_timeout_secs = 1).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("sent");
    let mut answer = vec![0; 4096];
    let read = stream.read(&mut answer).await.expect("answered");
    assert!(
        answer[..read].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer[..read])
    );
    let started = std::time::Instant::now();

    // Kept alive, then nothing more: the server ends the connection.
    let rest = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("closed in time");
    assert!(matches!(rest, Ok(0) | Err(_)), "{rest:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
}
