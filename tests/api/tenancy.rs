//! SPEC §3: a caller writes and sees only its own company's data.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

/// A batch of four projects where items 1 and 3 belong to `other`.
fn batch_with_foreign_items_1_and_3(own: Uuid, other: Uuid) -> Value {
    json!([
        item("projects", own),
        item("projects", other),
        item("projects", own),
        item("projects", other),
    ])
}

/// Asserts that nothing of a refused batch was recorded or applied.
async fn assert_nothing_queued(app: &TestApp) {
    assert_eq!(app.count("sync_jobs").await, 0, "a job was recorded");
    // Give a wrongly queued batch time to reach the database.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.count("projects").await, 0, "entities were written");
    assert_eq!(app.count("sync_jobs").await, 0, "a job was recorded");
}

#[tokio::test]
async fn items_of_another_company_are_refused_with_403_listing_their_indexes_for_a_key() {
    let app = TestApp::spawn().await;
    let (own, other) = (company(), company());
    let key = app.writer(own).await;

    let response = app
        .post(
            "projects",
            &key,
            &batch_with_foreign_items_1_and_3(own, other),
        )
        .await;

    let body = problem(response, StatusCode::FORBIDDEN, "company_access_denied").await;
    assert_eq!(body["indexes"], json!([1, 3]), "{body}");
    assert!(!body.to_string().contains(&other.to_string()), "{body}");
    assert_nothing_queued(&app).await;
}

#[tokio::test]
async fn items_of_another_company_are_refused_with_403_listing_their_indexes_for_a_company_admin() {
    let app = TestApp::spawn_with_jwt().await;
    let (own, other) = (company(), company());
    let admin = jwt(own, &["CompanyAdmin"]);

    let response = app
        .post(
            "projects",
            &admin,
            &batch_with_foreign_items_1_and_3(own, other),
        )
        .await;

    let body = problem(response, StatusCode::FORBIDDEN, "company_access_denied").await;
    assert_eq!(body["indexes"], json!([1, 3]), "{body}");
    assert_nothing_queued(&app).await;
}

#[tokio::test]
async fn batch_entirely_of_another_company_is_refused_with_403_listing_every_index() {
    let app = TestApp::spawn_with_jwt().await;
    let (own, other) = (company(), company());
    let integration = jwt(own, &["Integration"]);
    let batch = json!([item("projects", other), item("projects", other)]);

    let response = app.post("projects", &integration, &batch).await;

    let body = problem(response, StatusCode::FORBIDDEN, "company_access_denied").await;
    assert_eq!(body["indexes"], json!([0, 1]), "{body}");
    assert_nothing_queued(&app).await;
}

/// Submits one project for `company` as `token` and returns the job id.
async fn submitted_job(app: &TestApp, token: &str, company: Uuid) -> String {
    let accepted = app
        .accepted("projects", token, &json!([item("projects", company)]))
        .await;
    accepted["correlation_id"]
        .as_str()
        .expect("correlation id")
        .to_owned()
}

/// A 404 problem body with the job id in it replaced by a placeholder.
async fn not_found_without_id(response: reqwest::Response, id: &str) -> Value {
    let mut body = problem(response, StatusCode::NOT_FOUND, "not_found").await;
    if let Some(detail) = body["detail"].as_str() {
        body["detail"] = json!(detail.replace(id, "{id}"));
    }
    body
}

#[tokio::test]
async fn another_tenants_get_of_a_job_is_404_exactly_like_an_unknown_id() {
    let app = TestApp::spawn_with_jwt().await;
    let (owner, stranger) = (company(), company());
    let id = submitted_job(&app, &app.writer(owner).await, owner).await;
    let unknown = Uuid::now_v7().to_string();

    for token in [
        app.writer(stranger).await,
        app.key(stranger, &["sync:read"]).await,
        jwt(stranger, &["CompanyAdmin"]),
        jwt(stranger, &["Integration"]),
    ] {
        let foreign = not_found_without_id(app.get_job(&id, &token).await, &id).await;
        let missing = not_found_without_id(app.get_job(&unknown, &token).await, &unknown).await;
        assert_eq!(foreign, missing);
        assert!(
            !foreign.to_string().contains(&owner.to_string()),
            "{foreign}"
        );
    }
    let own = app.get_job(&id, &app.writer(owner).await).await;
    assert_eq!(own.status(), StatusCode::OK);
}

#[tokio::test]
async fn job_id_that_is_not_a_uuid_is_404() {
    let app = TestApp::spawn().await;
    let key = app.writer(company()).await;

    for id in [
        "not-a-uuid",
        "12345",
        "0193c1c2-zzzz-7000-8000-000000000000",
    ] {
        let body = not_found_without_id(app.get_job(id, &key).await, id).await;
        assert!(body["detail"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn system_admin_may_get_any_companys_job() {
    let app = TestApp::spawn_with_jwt().await;
    let (owner, admins_company) = (company(), company());
    let id = submitted_job(&app, &app.writer(owner).await, owner).await;

    let response = app
        .get_job(&id, &jwt(admins_company, &["SystemAdmin"]))
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let job: Value = response.json().await.expect("job");
    assert_eq!(job["correlation_id"], id);
    assert_eq!(job["entity"], "projects");
}

#[tokio::test]
async fn guid_owned_by_another_company_fails_the_job_and_leaves_that_row_untouched() {
    let app = TestApp::spawn().await;
    let (owner, intruder) = (company(), company());
    let guid = Uuid::new_v4();
    let mut original = item("projects", owner);
    original["guid"] = json!(guid);
    original["name"] = json!("Owner's bridge");
    let done = app
        .sync("projects", &app.writer(owner).await, &json!([original]))
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let mut hijack = item("projects", intruder);
    hijack["guid"] = json!(guid);
    hijack["name"] = json!("Hijacked");

    let job = app
        .sync(
            "projects",
            &app.writer(intruder).await,
            &json!([item("projects", intruder), hijack]),
        )
        .await;

    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "company_access_violation", "{job}");
    assert_eq!(job["error"]["indexes"], json!([1]), "{job}");
    assert!(!job.to_string().contains(&owner.to_string()), "{job}");
    assert!(!job.to_string().contains("Owner's bridge"), "{job}");
    let row = app.row("projects", guid).await.expect("owner's row");
    assert_eq!(row["company_guid"], owner.to_string());
    assert_eq!(row["name"], "Owner's bridge");
    assert_eq!(
        app.count("projects").await,
        1,
        "the batch was not rolled back"
    );
}

#[tokio::test]
async fn reference_to_another_companys_entity_fails_the_job() {
    let app = TestApp::spawn().await;
    let (owner, intruder) = (company(), company());
    let project = Uuid::new_v4();
    let mut owners_project = item("projects", owner);
    owners_project["guid"] = json!(project);
    app.sync(
        "projects",
        &app.writer(owner).await,
        &json!([owners_project]),
    )
    .await;
    let mut component = item("components", intruder);
    component["project_guid"] = json!(project);

    let job = app
        .sync(
            "components",
            &app.writer(intruder).await,
            &json!([item("components", intruder), component]),
        )
        .await;

    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "company_access_violation", "{job}");
    assert_eq!(job["error"]["indexes"], json!([1]), "{job}");
    assert!(!job.to_string().contains(&owner.to_string()), "{job}");
    assert_eq!(app.count("components").await, 0);
}
