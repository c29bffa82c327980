//! SPEC §5 "Listing and cancelling jobs": `GET /api/v1/sync/jobs` and
//! `POST /api/v1/sync/jobs/{correlation_id}/cancel`.

use crate::entities::Amqp;
use crate::helpers::*;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use std::collections::HashSet;
use sync_ingest::app::Mode;
use uuid::Uuid;

impl TestApp {
    async fn list(&self, token: &str, query: &str) -> Response {
        self.client
            .get(format!("{}/api/v1/sync/jobs?{query}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("answered")
    }

    /// A page of the job list (asserting 200): its jobs' ids and next cursor.
    async fn page(&self, token: &str, query: &str) -> (Vec<String>, Option<String>) {
        let response = self.list(token, query).await;
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, StatusCode::OK, "{body}");
        let ids = body["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .map(|j| j["correlation_id"].as_str().expect("id").to_owned())
            .collect();
        (ids, body["next_cursor"].as_str().map(str::to_owned))
    }

    async fn cancel(&self, token: &str, id: &str) -> Response {
        self.client
            .post(format!("{}/api/v1/sync/jobs/{id}/cancel", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("answered")
    }
}

fn id(job: &Value) -> String {
    job["correlation_id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn jobs_are_listed_newest_first_and_filtered() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let project = app
        .sync("projects", &token, &json!([item("projects", company)]))
        .await;
    let piece = app
        .sync("pieces", &token, &json!([item("pieces", company)]))
        .await;
    let guid = Uuid::now_v7();
    let delete = app
        .sync(
            "articles/delete",
            &token,
            &json!([{"guid": guid, "company_guid": company}]),
        )
        .await;
    let foreign = app
        .accepted(
            "components",
            &app.writer(crate::helpers::company()).await,
            &json!([]),
        )
        .await;
    let failed = {
        // A reference to another company's project fails the job.
        let other = crate::helpers::company();
        let theirs = app
            .sync(
                "projects",
                &app.writer(other).await,
                &json!([item("projects", other)]),
            )
            .await;
        let _ = theirs;
        let their_project: Uuid =
            sqlx::query_scalar("SELECT guid FROM projects WHERE company_guid = $1")
                .bind(other)
                .fetch_one(&app.pool)
                .await
                .expect("project");
        let mut component = item("components", company);
        component["project_guid"] = json!(their_project);
        app.sync("components", &token, &json!([component])).await
    };
    assert_eq!(failed["status"], "failed", "{failed}");

    let (all, next) = app.page(&token, "").await;
    assert_eq!(all, [id(&failed), id(&delete), id(&piece), id(&project)]);
    assert_eq!(next, None);
    assert!(
        !all.contains(&id(&foreign)),
        "another company's job is listed"
    );
    let response: Value = app
        .list(&token, "limit=1")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        response["jobs"][0],
        app.get_job(&id(&failed), &token)
            .await
            .json::<Value>()
            .await
            .expect("job")
    );

    for (query, expected) in [
        ("status=failed", vec![id(&failed)]),
        (
            "status=succeeded,failed&entity=components",
            vec![id(&failed)],
        ),
        ("operation=delete", vec![id(&delete)]),
        ("operation=upsert&entity=pieces", vec![id(&piece)]),
        ("status=queued,cancelled", vec![]),
    ] {
        assert_eq!(app.page(&token, query).await.0, expected, "{query}");
    }
    // The bounds to the microsecond, as stored (answers show milliseconds).
    let pool = app.pool.clone();
    let at = async |job: &Value| -> String {
        sqlx::query_scalar::<_, String>(
            "SELECT to_char(submitted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM sync_jobs WHERE correlation_id = $1",
        )
        .bind(Uuid::parse_str(&id(job)).expect("uuid"))
        .fetch_one(&pool)
        .await
        .expect("time")
    };
    let between = format!(
        "submitted_after={}&submitted_before={}",
        at(&project).await,
        at(&failed).await
    );
    assert_eq!(
        app.page(&token, &between).await.0,
        [id(&delete), id(&piece)]
    );
}

#[tokio::test]
async fn paging_through_more_jobs_than_a_page_while_new_jobs_arrive_sees_each_job_once() {
    // No worker: jobs stay queued, which the list shows as well.
    let app = TestApp::spawn_with(Mode::Api, |_| {}).await;
    let company = company();
    let token = app.writer(company).await;
    let mut submitted = Vec::new();
    for _ in 0..25 {
        submitted.push(id(&app
            .accepted("projects", &token, &json!([item("projects", company)]))
            .await));
    }

    let mut seen = Vec::new();
    let (page, mut cursor) = app.page(&token, "limit=10").await;
    seen.extend(page);
    // New jobs arrive between pages: they are newer than every listed one.
    for _ in 0..5 {
        app.accepted("projects", &token, &json!([item("projects", company)]))
            .await;
    }
    while let Some(next) = cursor {
        let (page, after) = app.page(&token, &format!("limit=10&cursor={next}")).await;
        assert!(page.len() <= 10);
        seen.extend(page);
        cursor = after;
    }
    submitted.reverse();
    assert_eq!(seen, submitted, "each job once, newest first");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 25);
}

#[tokio::test]
async fn only_a_system_admin_may_list_another_companys_jobs() {
    let app = TestApp::spawn_with_jwt().await;
    let (mine, theirs) = (company(), company());
    let token = jwt(mine, &["Integration"]);
    let job = app
        .accepted(
            "projects",
            &jwt(theirs, &["Integration"]),
            &json!([item("projects", theirs)]),
        )
        .await;

    assert_eq!(app.page(&token, "").await.0, Vec::<String>::new());
    let refused = app.list(&token, &format!("company_guid={theirs}")).await;
    let body = problem(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "company_guid");
    let admin = jwt(mine, &["SystemAdmin"]);
    assert_eq!(
        app.page(&admin, &format!("company_guid={theirs}")).await.0,
        [id(&job)]
    );
    assert_eq!(
        app.page(&admin, "").await.0,
        Vec::<String>::new(),
        "the admin's own company by default"
    );
}

#[tokio::test]
async fn bad_list_parameters_are_422_naming_each() {
    let app = TestApp::spawn_with(Mode::Api, |_| {}).await;
    let token = app.writer(company()).await;
    let response = app
        .list(&token, "status=done,queued&entity=widgets&operation=merge&submitted_after=yesterday&limit=0&cursor=zz")
        .await;
    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("field"))
        .collect();
    assert_eq!(
        fields,
        [
            "status",
            "entity",
            "operation",
            "submitted_after",
            "limit",
            "cursor"
        ]
    );
    for query in ["limit=1001", "limit=x", "sort=asc"] {
        problem(
            app.list(&token, query).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    let reader = app.key(company(), &["sync:read"]).await;
    assert_eq!(app.list(&reader, "").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_cancelled_job_is_never_applied_and_its_result_is_published() {
    // No worker yet: the job stays queued.
    let app = TestApp::spawn_with(Mode::Api, |_| {}).await;
    let company = company();
    let token = app.writer(company).await;
    let amqp = Amqp::connect(&app).await;
    let project = item("projects", company);
    let accepted = app.accepted("projects", &token, &json!([project])).await;
    let job_id = id(&accepted);

    let cancelled = app.cancel(&token, &job_id).await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    let cancelled: Value = cancelled.json().await.expect("job");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(cancelled["completed_at"].is_string(), "{cancelled}");
    // Cancelled is final: a second cancel is 409.
    problem(
        app.cancel(&token, &job_id).await,
        StatusCode::CONFLICT,
        "job_not_cancellable",
    )
    .await;

    // The worker reaches the message: it acks it, applies nothing, and
    // publishes the cancelled job.
    let _worker = app.spawn_worker().await;
    let result = amqp.result(&app, &job_id).await;
    assert_eq!(
        result.routing_key.as_str(),
        format!("{company}.projects.cancelled")
    );
    let published: Value = serde_json::from_slice(&result.data).expect("json");
    assert_eq!(published, cancelled);
    // A later job of the company is applied: the shard moved on.
    app.sync("projects", &token, &json!([item("projects", company)]))
        .await;
    let project_guid = Uuid::parse_str(accepted["guids"][0].as_str().expect("guid")).expect("uuid");
    assert!(
        app.row("projects", project_guid).await.is_none(),
        "a cancelled job was applied"
    );
    let now: Value = app
        .get_job(&job_id, &token)
        .await
        .json()
        .await
        .expect("job");
    assert_eq!(now, cancelled);
    let metrics = app.ops_get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sync_jobs_completed_total")
                && l.contains("status=\"cancelled\"")),
        "{metrics}"
    );
}

#[tokio::test]
async fn cancelling_a_finished_job_is_409_and_another_companys_or_an_unknown_one_404() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let job = app
        .sync("projects", &token, &json!([item("projects", company)]))
        .await;
    problem(
        app.cancel(&token, &id(&job)).await,
        StatusCode::CONFLICT,
        "job_not_cancellable",
    )
    .await;

    let queued_elsewhere = {
        let other = crate::helpers::company();
        app.accepted(
            "projects",
            &app.writer(other).await,
            &json!([item("projects", other)]),
        )
        .await
    };
    for unknown in [
        id(&queued_elsewhere),
        Uuid::now_v7().to_string(),
        "nope".to_owned(),
    ] {
        problem(
            app.cancel(&token, &unknown).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    let reader = app.key(company, &["sync:read"]).await;
    problem(
        app.cancel(&reader, &id(&job)).await,
        StatusCode::FORBIDDEN,
        "insufficient_scope",
    )
    .await;
}

#[tokio::test]
async fn a_cancel_racing_the_worker_either_cancels_or_lets_the_job_apply_never_both() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let (mut cancelled, mut applied) = (0, 0);
    for _ in 0..30 {
        let accepted = app
            .accepted("projects", &token, &json!([item("projects", company)]))
            .await;
        let job_id = id(&accepted);
        let answer = app.cancel(&token, &job_id).await.status();
        let job = app.finished_job(&job_id, &token).await;
        let guid = Uuid::parse_str(accepted["guids"][0].as_str().expect("guid")).expect("uuid");
        let row = app.row("projects", guid).await;
        match (answer, job["status"].as_str()) {
            (StatusCode::OK, Some("cancelled")) => {
                assert!(row.is_none(), "cancelled and applied: {job}");
                assert_eq!(job["inserted"], Value::Null, "{job}");
                cancelled += 1;
            }
            (StatusCode::CONFLICT, Some("succeeded")) => {
                assert!(row.is_some(), "succeeded but not applied: {job}");
                applied += 1;
            }
            other => panic!("cancel answered {other:?}: {job}"),
        }
    }
    eprintln!("cancel raced the worker: {cancelled} cancelled, {applied} applied");
}
