//! The HTTP behaviour that needs neither broker nor database, through the
//! public router itself (`tower::ServiceExt::oneshot`): content types,
//! limits, the authorization header, problem bodies. Runs in seconds with
//! no service on the machine: the pool and the publisher are never used.

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
    Router,
};
use serde_json::{json, Value};
use std::sync::Arc;
use sync_ingest::{
    api::{public_router, AppState},
    app::topology,
    config::Settings,
    queue::Publisher,
};
use tower::ServiceExt;
use uuid::Uuid;

const SECRET: &str = "router-test-secret-of-at-least-32-bytes";

/// The public router of a service whose database and broker are nowhere:
/// anything that reaches them fails, so a test that passes never did.
fn router(adjust: impl FnOnce(&mut Settings)) -> Router {
    let mut settings = Settings::defaults();
    settings.database_url = "postgres://nobody@127.0.0.1:1/none".into();
    settings.amqp_url = "amqp://nobody:none@127.0.0.1:1/%2f".into();
    settings.jwt_secret = Some(SECRET.into());
    adjust(&mut settings);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy(&settings.database_url)
        .expect("a lazy pool");
    let publisher = Publisher::new(
        &settings.amqp_url,
        "router test",
        topology(&settings),
        settings.confirm_timeout(),
    );
    public_router(AppState::new(
        Arc::new(settings),
        pool,
        Arc::new(publisher),
        None,
    ))
}

/// A JWT of `company` that may write.
fn token(company: Uuid) -> String {
    let claims = json!({
        "sub": "router-test", "company_guid": company, "roles": ["Integration"],
        "exp": jsonwebtoken::get_current_timestamp() + 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("signed")
}

fn post(path: &str, company: Uuid, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::AUTHORIZATION, format!("Bearer {}", token(company)))
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .expect("request")
}

/// The answer's status, headers and problem body (asserted problem+json).
async fn problem(router: Router, request: Request<Body>) -> (StatusCode, header::HeaderMap, Value) {
    let response = router.oneshot(request).await.expect("answered");
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "application/problem+json",
        "{status}"
    );
    let body: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    for field in ["type", "title", "detail", "code"] {
        assert!(body[field].is_string(), "{field} missing: {body}");
    }
    (status, headers, body)
}

#[tokio::test]
async fn a_missing_or_garbled_authorization_header_is_401_with_a_bearer_challenge() {
    for value in [
        None,
        Some("Bearer"),
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer not.a.jwt"),
    ] {
        let mut request = Request::get("/api/v1/sync/jobs");
        if let Some(value) = value {
            request = request.header(header::AUTHORIZATION, value);
        }
        let (status, headers, body) = problem(
            router(|_| {}),
            request.body(Body::empty()).expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{value:?}");
        assert_eq!(body["code"], "unauthorized");
        assert!(headers[header::WWW_AUTHENTICATE]
            .to_str()
            .expect("ascii")
            .starts_with("Bearer"));
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415_and_one_too_large_413() {
    let company = Uuid::now_v7();
    let (status, _, body) = problem(
        router(|_| {}),
        post("/api/v1/sync/pieces", company, "text/plain", "[]"),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );

    let big = vec![b' '; 2048];
    let (status, _, body) = problem(
        router(|s| s.max_body_bytes = 1024),
        post(
            "/api/v1/sync/pieces/delete",
            company,
            "application/json",
            big,
        ),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
}

#[tokio::test]
async fn malformed_json_too_many_items_and_foreign_items_are_refused_before_anything_is_stored() {
    let company = Uuid::now_v7();
    let (status, _, body) = problem(
        router(|_| {}),
        post(
            "/api/v1/sync/projects",
            company,
            "application/json",
            "[{\"number\": ",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["index"], Value::Null, "{body}");

    let keys: Vec<Value> = (0..3)
        .map(|_| json!({"guid": Uuid::now_v7(), "company_guid": company}))
        .collect();
    let (status, _, body) = problem(
        router(|s| s.max_batch = 2),
        post(
            "/api/v1/sync/articles/delete",
            company,
            "application/json",
            Value::Array(keys).to_string(),
        ),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("batch_too_large"))
    );

    let other = json!([{"guid": Uuid::now_v7(), "company_guid": Uuid::now_v7()}]);
    let (status, _, body) = problem(
        router(|_| {}),
        post(
            "/api/v1/sync/articles/delete",
            company,
            "application/json",
            other.to_string(),
        ),
    )
    .await;
    assert_eq!(
        (status, body["indexes"].clone()),
        (StatusCode::FORBIDDEN, json!([0]))
    );
}

#[tokio::test]
async fn unknown_routes_methods_entities_and_bad_idempotency_keys_have_their_codes() {
    let company = Uuid::now_v7();
    let cases = [
        (
            Request::get("/nope").body(Body::empty()).expect("request"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Request::delete("/healthz")
                .body(Body::empty())
                .expect("request"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            post("/api/v1/sync/widgets", company, "application/json", "[]"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            {
                let mut request = post("/api/v1/sync/pieces", company, "application/json", "[]");
                let too_long = header::HeaderValue::from_str(&"k".repeat(256)).expect("ascii");
                request.headers_mut().insert("idempotency-key", too_long);
                request
            },
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
        ),
    ];
    for (request, want_status, want_code) in cases {
        let (status, _, body) = problem(router(|_| {}), request).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (want_status, Some(want_code)),
            "{body}"
        );
    }
}

#[tokio::test]
async fn bad_job_list_parameters_are_422_naming_each() {
    let request = Request::get("/api/v1/sync/jobs?limit=0&status=done")
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", token(Uuid::now_v7())),
        )
        .body(Body::empty())
        .expect("request");
    let (status, _, body) = problem(router(|_| {}), request).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, ["status", "limit"]);
}
