use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn pieces_are_inserted_then_updated() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let first = app
        .sync(
            "pieces",
            &token,
            &json!([item("pieces", company), item("pieces", company)]),
        )
        .await;
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(first["inserted"], 2);
    assert_eq!(first["updated"], 0);
    assert_eq!(app.count("pieces").await, 2);
}

#[tokio::test]
async fn metrics_are_served_on_the_operations_listener_only() {
    let app = TestApp::spawn().await;
    let ops = app.ops_get("/metrics").await;
    assert_eq!(ops.status(), reqwest::StatusCode::OK);
    assert!(ops.text().await.expect("text").contains("sync_"));
    let public = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(public.status(), reqwest::StatusCode::NOT_FOUND);
    for base in [&app.base, &app.ops] {
        for path in ["/healthz", "/readyz"] {
            let response = app
                .client
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), reqwest::StatusCode::OK, "{base}{path}");
        }
    }
}

#[tokio::test]
async fn a_request_in_flight_when_the_api_stops_is_answered_and_new_connections_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let body = serde_json::to_vec(&json!([item("pieces", company)])).expect("json");
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/v1/sync/pieces HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(first).await.expect("half the body");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    app.begin_shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stream.write_all(rest).await.expect("the rest of the body");
    let mut answer = Vec::new();
    // The connection closes once the answer is written.
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("answered in time")
    .expect("read");

    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "a stopped api still accepts connections"
    );
}
