//! SPEC §4 "Deleting": `POST /api/v1/sync/{entity}/delete`, applied in
//! order with the company's upserts, leaving tombstones.

use crate::entities::{Amqp, Message};
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use sync_ingest::{
    app::Mode,
    domain::{Entity, Operation},
    queue::ForwardedMessage,
};
use uuid::Uuid;

/// The delete body for `guids` of `company`.
fn keys(company: Uuid, guids: &[Uuid]) -> Value {
    json!(guids
        .iter()
        .map(|g| json!({"guid": g, "company_guid": company}))
        .collect::<Vec<_>>())
}

/// Pieces of `company` with these GUIDs, marked `mark`.
fn pieces(company: Uuid, guids: &[Uuid], mark: &str) -> Value {
    json!(guids
        .iter()
        .map(
            |g| json!({"guid": g, "company_guid": company, "assembly_guid": company, "mark": mark})
        )
        .collect::<Vec<_>>())
}

fn new_guids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::now_v7()).collect()
}

async fn tombstones(app: &TestApp, correlation_id: &str) -> Vec<(String, Uuid, Uuid)> {
    sqlx::query_as(
        "SELECT entity, guid, company_guid FROM sync_deletions \
         WHERE correlation_id = $1 ORDER BY guid",
    )
    .bind(Uuid::parse_str(correlation_id).expect("uuid"))
    .fetch_all(&app.pool)
    .await
    .expect("tombstones")
}

#[tokio::test]
async fn a_delete_removes_the_companys_rows_counts_them_and_leaves_tombstones() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let guids = new_guids(3);
    app.sync("pieces", &token, &pieces(company, &guids, "m"))
        .await;
    let unknown = Uuid::now_v7();

    let accepted = app
        .accepted(
            "pieces/delete",
            &token,
            &keys(company, &[guids[0], guids[1], unknown]),
        )
        .await;
    assert_eq!(accepted["operation"], "delete", "{accepted}");
    assert_eq!(accepted["guids"], json!([guids[0], guids[1], unknown]));
    let id = accepted["correlation_id"].as_str().expect("id");
    let job = app.finished_job(id, &token).await;

    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        (
            &job["deleted"],
            &job["not_found"],
            &job["inserted"],
            &job["updated"]
        ),
        (&json!(2), &json!(1), &json!(0), &json!(0)),
        "{job}"
    );
    assert!(app.row("pieces", guids[0]).await.is_none());
    assert!(app.row("pieces", guids[1]).await.is_none());
    assert!(
        app.row("pieces", guids[2]).await.is_some(),
        "another row was deleted"
    );
    let mut expected = vec![
        ("pieces".to_owned(), guids[0], company),
        ("pieces".to_owned(), guids[1], company),
    ];
    expected.sort_by_key(|t| t.1);
    assert_eq!(tombstones(&app, id).await, expected);
    let deleted_at_set: bool =
        sqlx::query_scalar("SELECT bool_and(deleted_at IS NOT NULL) FROM sync_deletions")
            .fetch_one(&app.pool)
            .await
            .expect("read");
    assert!(deleted_at_set);
    let metrics = app.ops_get("/metrics").await.text().await.expect("metrics");
    let applied = metrics
        .lines()
        .find(|l| {
            l.starts_with("sync_items_applied_total")
                && l.contains("op=\"deleted\"")
                && l.contains("entity=\"pieces\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(applied >= Some(2.0), "{metrics}");
}

#[tokio::test]
async fn a_delete_naming_another_companys_guid_fails_and_deletes_nothing() {
    let app = TestApp::spawn().await;
    let (owner, intruder) = (company(), company());
    let owner_token = app.writer(owner).await;
    let intruder_token = app.writer(intruder).await;
    let theirs = new_guids(1);
    let mine = new_guids(1);
    app.sync("pieces", &owner_token, &pieces(owner, &theirs, "theirs"))
        .await;
    app.sync("pieces", &intruder_token, &pieces(intruder, &mine, "mine"))
        .await;

    let accepted = app
        .accepted(
            "pieces/delete",
            &intruder_token,
            &keys(intruder, &[mine[0], theirs[0]]),
        )
        .await;
    let id = accepted["correlation_id"].as_str().expect("id");
    let job = app.finished_job(id, &intruder_token).await;

    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "company_access_violation", "{job}");
    assert_eq!(job["error"]["indexes"], json!([1]), "{job}");
    assert!(!job.to_string().contains(&owner.to_string()), "{job}");
    assert!(app.row("pieces", theirs[0]).await.is_some());
    assert!(
        app.row("pieces", mine[0]).await.is_some(),
        "a failed job deleted a row"
    );
    assert!(tombstones(&app, id).await.is_empty());
}

#[tokio::test]
async fn the_delete_endpoint_refuses_what_an_upsert_refuses() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let guid = Uuid::now_v7();

    // Every problem, each on its item and field.
    let body = json!([
        {"company_guid": company},
        {"guid": "not-a-uuid", "company_guid": company},
        {"guid": guid, "company_guid": company, "mark": "x"},
        {"guid": guid, "company_guid": company},
        "nope"
    ]);
    let problem_body = problem(
        app.post("pieces/delete", &token, &body).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let named: Vec<(Value, Value)> = problem_body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| (e["index"].clone(), e["field"].clone()))
        .collect();
    assert_eq!(
        named,
        vec![
            (json!(0), json!("guid")),
            (json!(1), json!("guid")),
            (json!(2), json!("mark")),
            (json!(3), json!("guid")),
            (json!(4), Value::Null),
        ],
        "{problem_body}"
    );

    let other = keys(crate::helpers::company(), &[guid]);
    let denied = problem(
        app.post("pieces/delete", &token, &other).await,
        StatusCode::FORBIDDEN,
        "company_access_denied",
    )
    .await;
    assert_eq!(denied["indexes"], json!([0]));

    let too_many = keys(company, &new_guids(1001));
    problem(
        app.post("pieces/delete", &token, &too_many).await,
        StatusCode::BAD_REQUEST,
        "batch_too_large",
    )
    .await;
    let as_text = app
        .client
        .post(format!("{}/api/v1/sync/pieces/delete", app.base))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body(keys(company, &[guid]).to_string())
        .send()
        .await
        .expect("answered");
    problem(
        as_text,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    problem(
        app.post("widgets/delete", &token, &keys(company, &[guid]))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let reader = app.key(company, &["sync:read"]).await;
    problem(
        app.post("pieces/delete", &reader, &keys(company, &[guid]))
            .await,
        StatusCode::FORBIDDEN,
        "insufficient_scope",
    )
    .await;
    let anonymous = app
        .client
        .post(format!("{}/api/v1/sync/pieces/delete", app.base))
        .json(&keys(company, &[guid]))
        .send()
        .await
        .expect("answered");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.count("sync_jobs").await,
        0,
        "a refused delete was queued"
    );
}

#[tokio::test]
async fn a_delete_takes_an_idempotency_key_a_dry_run_and_prefer_wait() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let guids = new_guids(2);
    app.sync(
        "articles",
        &token,
        &json!(guids
            .iter()
            .map(|g| json!({"guid": g, "company_guid": company, "number": "A", "name": "a"}))
            .collect::<Vec<_>>()),
    )
    .await;

    let dry = app
        .post_with(
            "articles/delete?dry_run=true",
            &token,
            &keys(company, &guids),
            &[("prefer", "wait=10")],
        )
        .await;
    assert_eq!(dry.status(), StatusCode::OK);
    let dry: Value = dry.json().await.expect("job");
    assert_eq!(
        (dry["dry_run"].clone(), dry["deleted"].clone()),
        (json!(true), json!(2)),
        "{dry}"
    );
    assert_eq!(app.count("articles").await, 2, "a dry run deleted");
    assert_eq!(
        app.count("sync_deletions").await,
        0,
        "a dry run left tombstones"
    );

    let headers = [("idempotency-key", "delete-1"), ("prefer", "wait=10")];
    let first: Value = app
        .post_with("articles/delete", &token, &keys(company, &guids), &headers)
        .await
        .json()
        .await
        .expect("job");
    let again = app
        .post_with("articles/delete", &token, &keys(company, &guids), &headers)
        .await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.expect("job");
    assert_eq!(again["correlation_id"], first["correlation_id"]);
    assert_eq!(first["deleted"], 2, "{first}");
    // The key is the delete's: an upsert under it is another request.
    let upsert = app
        .post_with(
            "articles",
            &token,
            &json!([item("articles", company)]),
            &[("idempotency-key", "delete-1")],
        )
        .await;
    problem(upsert, StatusCode::CONFLICT, "idempotency_key_reused").await;
    assert_eq!(app.count("articles").await, 0);
}

#[tokio::test]
async fn upserts_and_deletes_of_a_company_apply_in_the_order_answered_across_two_workers() {
    let app = TestApp::spawn_with(Mode::Api, |s| s.shards = 4).await;
    let _workers = [app.spawn_worker().await, app.spawn_worker().await];
    let mut expected = Vec::new();
    for round in 0..6 {
        let company = company();
        let token = app.writer(company).await;
        let guids = new_guids(5);
        // Each answered before the next is sent: upsert → delete → upsert,
        // and every other company ends on a second delete.
        app.accepted("pieces", &token, &pieces(company, &guids, "first"))
            .await;
        app.accepted("pieces/delete", &token, &keys(company, &guids))
            .await;
        let ends_deleted = round % 2 == 1;
        if ends_deleted {
            app.accepted("pieces", &token, &pieces(company, &guids, "second"))
                .await;
            app.accepted("pieces/delete", &token, &keys(company, &guids))
                .await;
        } else {
            app.accepted("pieces", &token, &pieces(company, &guids, "last"))
                .await;
        }
        expected.push((guids, ends_deleted));
    }
    for _ in 0..400 {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sync_jobs WHERE status IN ('queued', 'processing')",
        )
        .fetch_one(&app.pool)
        .await
        .expect("counted");
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (guids, ends_deleted) in &expected {
        for guid in guids {
            let row = app.row("pieces", *guid).await;
            if *ends_deleted {
                assert!(row.is_none(), "a deleted piece came back: {row:?}");
            } else {
                assert_eq!(row.expect("recreated")["mark"], "last");
            }
        }
    }
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sync_jobs WHERE status <> 'succeeded'")
            .fetch_one(&app.pool)
            .await
            .expect("counted");
    assert_eq!(failed, 0);
    // Every recreated piece was deleted once, and its tombstone stays.
    assert_eq!(app.count("sync_deletions").await, 3 * 5 + 3 * 10);
}

#[tokio::test]
async fn a_redelivered_delete_is_applied_once() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let amqp = Amqp::connect(&app).await;
    let guids = new_guids(3);
    app.sync("pieces", &token, &pieces(company, &guids, "m"))
        .await;
    let body = keys(company, &guids[..2]);
    let job = app.sync("pieces/delete", &token, &body).await;
    assert_eq!(
        (job["deleted"].clone(), job["attempts"].clone()),
        (json!(2), json!(1)),
        "{job}"
    );
    let id = job["correlation_id"].as_str().expect("id");
    amqp.result(&app, id).await;
    // Recreated in between: a second application would delete them again.
    app.sync("pieces", &token, &pieces(company, &guids[..2], "back"))
        .await;

    let bytes = serde_json::to_vec(&body).expect("json");
    let mut message = ForwardedMessage::new(Entity::Pieces, Operation::Delete, bytes.len());
    message.push_items(&bytes);
    let id_uuid = Uuid::parse_str(id).expect("uuid");
    let message = Message {
        id: id_uuid,
        company,
        body: message.finish(id_uuid, company, false, &guids[..2]),
    };
    amqp.publish_batch(&app, &message).await;

    let again: Value = serde_json::from_slice(&amqp.result(&app, id).await.data).expect("json");
    assert_eq!(again, job, "the stored result, published again");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.count("pieces").await, 3, "the delete was applied twice");
    assert_eq!(app.count("sync_deletions").await, 2);
    let now: Value = app.get_job(id, &token).await.json().await.expect("job");
    assert_eq!(now, job);
}

#[tokio::test]
async fn tombstones_past_their_retention_are_purged_and_a_deleted_guid_may_come_back() {
    let app = TestApp::spawn_with(Mode::All, |s| s.purge_interval_secs = 3600).await;
    let company = company();
    let token = app.writer(company).await;
    let guids = new_guids(2);
    app.sync("pieces", &token, &pieces(company, &guids, "m"))
        .await;
    app.sync("pieces/delete", &token, &keys(company, &guids))
        .await;
    sqlx::query(
        "UPDATE sync_deletions SET deleted_at = now() - interval '31 days' WHERE guid = $1",
    )
    .bind(guids[0])
    .execute(&app.pool)
    .await
    .expect("backdated");

    let retention = sync_ingest::retention::Retention {
        job_hours: 168,
        tombstone_days: 30,
    };
    let purged = sync_ingest::retention::purge_once(&app.pool, retention)
        .await
        .expect("purged");

    assert_eq!(purged.tombstones, 1);
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT guid FROM sync_deletions")
        .fetch_all(&app.pool)
        .await
        .expect("read");
    assert_eq!(left, [guids[1]]);
    // An upsert of a deleted GUID creates it again.
    let job = app
        .sync("pieces", &token, &pieces(company, &guids, "again"))
        .await;
    assert_eq!(
        (job["inserted"].clone(), job["updated"].clone()),
        (json!(2), json!(0))
    );
    assert_eq!(
        app.row("pieces", guids[1]).await.expect("back")["mark"],
        "again"
    );
}
