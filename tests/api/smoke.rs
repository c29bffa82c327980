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
