use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn pieces_are_inserted_then_updated() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let first = app.sync("pieces", &token, &json!([item("pieces", company), item("pieces", company)])).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(first["inserted"], 2);
    assert_eq!(first["updated"], 0);
    assert_eq!(app.count("pieces").await, 2);
}
