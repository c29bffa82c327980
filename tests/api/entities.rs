//! What is stored for each entity (SPEC §4 "Stored form"), and the worker's
//! exactly-once and cross-tenant behaviour (SPEC §5, §6).

use crate::helpers::*;
use chrono::{DateTime, FixedOffset};
use lapin::{
    message::Delivery,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
};
use serde_json::{json, Map, Value};
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};
use sync_ingest::{
    app::topology,
    domain::{Batch, Entity},
    queue::BatchMessage,
};
use uuid::Uuid;

/// A fully populated item of `entity`; `variant` changes every value.
fn full_item(entity: &str, company: Uuid, guid: Uuid, variant: u32) -> Value {
    let attributes = json!({
        "variant": variant,
        "source": format!("  RaConnect {variant} ✓ "),
        "tags": ["a", variant.to_string()],
        "nested": {"ratio": 1.5, "ok": variant.is_multiple_of(2), "none": null},
        "exact": 9_007_199_254_740_993_u64,
        "negative": -42,
        "empty": {"object": {}, "array": []},
        "schlüssel ✓": "wert"
    });
    let mut item = match entity {
        "projects" => json!({
            "number": format!("P-{variant}"),
            "name": format!("  Bridge {variant} über den Fluss  "),
            "description": format!("line one\nline two {variant}"),
            "status": if variant.is_multiple_of(2) { "planned" } else { "on_hold" },
            "start_date": format!("2024-02-{:02}", 20 + variant),
            "end_date": "2024-02-29",
        }),
        "components" => json!({
            "project_guid": Uuid::new_v4(),
            "name": format!("Deck {variant} "),
            "component_type": format!("slab-{variant}"),
            "description": format!("Component {variant}"),
        }),
        "assemblies" => json!({
            "project_guid": Uuid::new_v4(),
            "component_guid": Uuid::new_v4(),
            "mark": format!(" A{variant}"),
            "name": format!("Beam {variant}"),
            "quantity": 6 + variant,
        }),
        "pieces" => json!({
            "assembly_guid": Uuid::new_v4(),
            "article_guid": Uuid::new_v4(),
            "mark": format!("p{variant} "),
            "quantity": 2 + variant,
            "length_mm": 1234.5 + f64::from(variant),
            "width_mm": 0.25,
            "height_mm": 0,
            "weight_kg": 12.75 * f64::from(variant + 1),
        }),
        "articles" => json!({
            "number": format!("HEA{}", 200 + variant),
            "name": format!("HEA {} ", 200 + variant),
            "unit": if variant.is_multiple_of(2) { "m" } else { "kg" },
            "description": format!("Wide flange beam {variant}"),
        }),
        other => panic!("no such entity {other}"),
    };
    item["guid"] = json!(guid);
    item["company_guid"] = json!(company);
    item["attributes"] = attributes;
    item
}

/// An item of `entity` with its required fields only (values unlike
/// [`full_item`]'s).
fn minimal_item(entity: &str, company: Uuid, guid: Uuid) -> Value {
    let mut item = item(entity, company);
    item["guid"] = json!(guid);
    item
}

/// The optional columns of `entity` and what an absent field is stored as.
fn optional_defaults(entity: &str) -> Vec<(&'static str, Value)> {
    let mut defaults = match entity {
        "projects" => vec![
            ("description", Value::Null),
            ("status", json!("active")),
            ("start_date", Value::Null),
            ("end_date", Value::Null),
        ],
        "components" => vec![
            ("component_type", Value::Null),
            ("description", Value::Null),
        ],
        "assemblies" => vec![
            ("component_guid", Value::Null),
            ("name", Value::Null),
            ("quantity", json!(1)),
        ],
        "pieces" => vec![
            ("article_guid", Value::Null),
            ("quantity", json!(1)),
            ("length_mm", Value::Null),
            ("width_mm", Value::Null),
            ("height_mm", Value::Null),
            ("weight_kg", Value::Null),
        ],
        "articles" => vec![("unit", Value::Null), ("description", Value::Null)],
        other => panic!("no such entity {other}"),
    };
    defaults.push(("attributes", Value::Null));
    defaults
}

/// Equal as JSON, numbers compared by value (`6` and `6.0` alike).
fn same_value(stored: &Value, sent: &Value) -> bool {
    match (stored.as_f64(), sent.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => stored == sent,
    }
}

/// Asserts `row` holds every field of `sent` as sent, the defaults for the
/// optional fields `sent` lacks, and no columns but those plus timestamps.
fn assert_stored_as_sent(entity: &str, row: &Value, sent: &Value) {
    let sent = sent.as_object().expect("item is an object");
    for (field, value) in sent {
        assert!(
            same_value(&row[field], value),
            "{entity}.{field}: stored {} but sent {value}\nrow: {row}",
            row[field]
        );
    }
    let mut columns: BTreeSet<String> = sent.keys().cloned().collect();
    for (field, default) in optional_defaults(entity) {
        columns.insert(field.to_owned());
        if !sent.contains_key(field) {
            assert_eq!(
                row[field], default,
                "{entity}.{field} absent from the item\nrow: {row}"
            );
        }
    }
    columns.extend(["created_at".to_owned(), "updated_at".to_owned()]);
    let stored: BTreeSet<String> = row.as_object().expect("row").keys().cloned().collect();
    assert_eq!(stored, columns, "{entity}: columns of the stored row");
}

fn timestamp(row: &Value, column: &str) -> DateTime<FixedOffset> {
    let text = row[column].as_str().expect("timestamp column");
    DateTime::parse_from_rfc3339(text).expect("rfc3339 timestamp")
}

async fn rows(app: &TestApp, entity: &str, guids: &[Uuid]) -> Vec<Value> {
    let mut rows = Vec::with_capacity(guids.len());
    for guid in guids {
        rows.push(app.row(entity, *guid).await.expect("row stored"));
    }
    rows
}

/// Insert, update with other values, update with required fields only:
/// counts and every column checked each time.
async fn assert_insert_then_update(entity: &str) {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let guids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();

    let first: Vec<Value> = guids
        .iter()
        .map(|g| full_item(entity, company, *g, 1))
        .collect();
    let job = app.sync(entity, &token, &json!(first)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        (&job["inserted"], &job["updated"]),
        (&json!(3), &json!(0)),
        "{job}"
    );
    let inserted = rows(&app, entity, &guids).await;
    for (row, sent) in inserted.iter().zip(&first) {
        assert_stored_as_sent(entity, row, sent);
    }

    let second: Vec<Value> = guids
        .iter()
        .map(|g| full_item(entity, company, *g, 2))
        .collect();
    let job = app.sync(entity, &token, &json!(second)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        (&job["inserted"], &job["updated"]),
        (&json!(0), &json!(3)),
        "{job}"
    );
    let updated = rows(&app, entity, &guids).await;
    for ((row, sent), before) in updated.iter().zip(&second).zip(&inserted) {
        assert_stored_as_sent(entity, row, sent);
        assert_eq!(row["created_at"], before["created_at"], "created_at kept");
        assert!(timestamp(row, "updated_at") > timestamp(before, "updated_at"));
    }

    let third: Vec<Value> = guids
        .iter()
        .map(|g| minimal_item(entity, company, *g))
        .collect();
    let job = app.sync(entity, &token, &json!(third)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        (&job["inserted"], &job["updated"]),
        (&json!(0), &json!(3)),
        "{job}"
    );
    for (row, sent) in rows(&app, entity, &guids).await.iter().zip(&third) {
        assert_stored_as_sent(entity, row, sent);
    }
    assert_eq!(app.count(entity).await, 3);
}

#[tokio::test]
async fn projects_are_inserted_then_updated_with_every_field_replaced() {
    assert_insert_then_update("projects").await;
}

#[tokio::test]
async fn components_are_inserted_then_updated_with_every_field_replaced() {
    assert_insert_then_update("components").await;
}

#[tokio::test]
async fn assemblies_are_inserted_then_updated_with_every_field_replaced() {
    assert_insert_then_update("assemblies").await;
}

#[tokio::test]
async fn pieces_are_inserted_then_updated_with_every_field_replaced() {
    assert_insert_then_update("pieces").await;
}

#[tokio::test]
async fn articles_are_inserted_then_updated_with_every_field_replaced() {
    assert_insert_then_update("articles").await;
}

/// Asserts a `company_access_violation` failure at `indexes` that names none
/// of `secrets` (the other tenant's GUIDs).
fn assert_access_violation(job: &Value, indexes: &[usize], secrets: &[Uuid]) {
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "company_access_violation", "{job}");
    assert_eq!(job["error"]["indexes"], json!(indexes), "{job}");
    assert!(job["error"]["message"].is_string(), "{job}");
    assert!(
        job["inserted"].is_null() && job["updated"].is_null(),
        "{job}"
    );
    assert_no_leak(&job.to_string(), secrets);
}

fn assert_no_leak(text: &str, secrets: &[Uuid]) {
    let lower = text.to_lowercase();
    for secret in secrets {
        assert!(
            !lower.contains(&secret.to_string()) && !lower.contains(&secret.simple().to_string()),
            "{secret} revealed in {text}"
        );
    }
}

/// Items the api forwards as sent (no GUID, attributes as written) and items
/// it must rewrite first (`null` for defaulted fields) land alike.
#[tokio::test]
async fn forwarded_and_rewritten_items_land_at_the_guids_the_api_answered() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let mut as_sent = item("pieces", company);
    as_sent["attributes"] = json!({"grade": "S355", "list": [1, 2.5, null]});
    let mut nulls = item("pieces", company);
    nulls["quantity"] = Value::Null;
    nulls["guid"] = Value::Null;

    for body in [
        json!([as_sent.clone(), as_sent]),
        json!([nulls.clone(), nulls]),
    ] {
        let accepted = app.accepted("pieces", &token, &body).await;
        let guids: Vec<Uuid> = serde_json::from_value(accepted["guids"].clone()).expect("guids");
        let id = accepted["correlation_id"].as_str().expect("correlation id");
        let job = app.finished_job(id, &token).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["inserted"], 2, "{job}");
        assert_ne!(guids[0], guids[1]);
        for (guid, sent) in guids.iter().zip(body.as_array().expect("items")) {
            let row = app
                .row("pieces", *guid)
                .await
                .expect("row at the answered guid");
            let quantity = if sent["quantity"].is_null() {
                json!(1)
            } else {
                sent["quantity"].clone()
            };
            assert_eq!(row["quantity"], quantity, "{row}");
            assert_eq!(row["attributes"], sent["attributes"], "{row}");
        }
    }
    assert_eq!(app.count("pieces").await, 4);
}

#[tokio::test]
async fn a_guid_owned_by_another_company_fails_the_job_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let (company_a, company_b) = (company(), company());
    let (token_a, token_b) = (app.writer(company_a).await, app.writer(company_b).await);
    let amqp = Amqp::connect(&app).await;

    for entity in ENTITIES {
        let owned = Uuid::new_v4();
        let job = app
            .sync(
                entity,
                &token_a,
                &json!([full_item(entity, company_a, owned, 1)]),
            )
            .await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let before = app.row(entity, owned).await.expect("A's row");

        let fresh = Uuid::new_v4();
        let batch = json!([
            minimal_item(entity, company_b, fresh),
            full_item(entity, company_b, owned, 2),
        ]);
        let job = app.sync(entity, &token_b, &batch).await;

        assert_access_violation(&job, &[1], &[company_a, owned]);
        assert_eq!(
            app.row(entity, owned).await.as_ref(),
            Some(&before),
            "{entity}: A's row"
        );
        assert_eq!(app.row(entity, fresh).await, None, "{entity}: B's new item");
        assert_eq!(app.count(entity).await, 1, "{entity}");

        let id = job["correlation_id"].as_str().expect("id");
        let result = amqp.result(&app, id).await;
        assert_eq!(
            result.routing_key.as_str(),
            format!("{company_b}.{entity}.failed")
        );
        let body = String::from_utf8(result.data).expect("utf-8");
        assert_no_leak(&body, &[company_a, owned]);
    }
}

/// (entity, reference field, referenced entity) for every reference column.
const REFERENCES: [(&str, &str, &str); 5] = [
    ("components", "project_guid", "projects"),
    ("assemblies", "project_guid", "projects"),
    ("assemblies", "component_guid", "components"),
    ("pieces", "assembly_guid", "assemblies"),
    ("pieces", "article_guid", "articles"),
];

#[tokio::test]
async fn a_reference_to_another_companys_entity_fails_the_job_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let (company_a, company_b) = (company(), company());
    let (token_a, token_b) = (app.writer(company_a).await, app.writer(company_b).await);
    let mut owned_by_a = Map::new();
    for target in ["projects", "components", "assemblies", "articles"] {
        let guid = Uuid::new_v4();
        let job = app
            .sync(
                target,
                &token_a,
                &json!([minimal_item(target, company_a, guid)]),
            )
            .await;
        assert_eq!(job["status"], "succeeded", "{job}");
        owned_by_a.insert(target.to_owned(), json!(guid));
    }

    for (entity, field, target) in REFERENCES {
        let foreign: Uuid = serde_json::from_value(owned_by_a[target].clone()).expect("guid");
        let (fresh, referencing) = (Uuid::new_v4(), Uuid::new_v4());
        let mut offending = minimal_item(entity, company_b, referencing);
        offending[field] = json!(foreign);
        let batch = json!([minimal_item(entity, company_b, fresh), offending]);

        let job = app.sync(entity, &token_b, &batch).await;

        let case = format!("{entity}.{field} -> {target}");
        assert_eq!(job["status"], "failed", "{case}: {job}");
        assert_access_violation(&job, &[1], &[company_a, foreign]);
        assert_eq!(app.row(entity, fresh).await, None, "{case}");
        assert_eq!(app.row(entity, referencing).await, None, "{case}");
    }
}

#[tokio::test]
async fn references_to_own_or_not_yet_existing_entities_are_accepted() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let mut own = Map::new();
    for target in ["projects", "components", "assemblies", "articles"] {
        let guid = Uuid::new_v4();
        app.sync(
            target,
            &token,
            &json!([minimal_item(target, company, guid)]),
        )
        .await;
        own.insert(target.to_owned(), json!(guid));
    }

    for (entity, field, target) in REFERENCES {
        let (to_own, to_missing) = (Uuid::new_v4(), Uuid::new_v4());
        let mut own_reference = minimal_item(entity, company, to_own);
        own_reference[field] = own[target].clone();
        let mut missing_reference = minimal_item(entity, company, to_missing);
        missing_reference[field] = json!(Uuid::new_v4());

        let job = app
            .sync(entity, &token, &json!([own_reference, missing_reference]))
            .await;

        let case = format!("{entity}.{field} -> {target}");
        assert_eq!(job["status"], "succeeded", "{case}: {job}");
        let row = app.row(entity, to_own).await.expect("row");
        assert_eq!(row[field], own[target], "{case}");
        let row = app.row(entity, to_missing).await.expect("row");
        assert_eq!(row[field], missing_reference[field], "{case}");
    }
}

/// A test's own AMQP connection, to read results and inject messages.
pub struct Amqp {
    _connection: Connection,
    channel: Channel,
}

impl Amqp {
    pub async fn connect(app: &TestApp) -> Amqp {
        let connection =
            Connection::connect(&app.settings.amqp_url, ConnectionProperties::default())
                .await
                .expect("broker reachable");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        Amqp {
            _connection: connection,
            channel,
        }
    }

    /// The next result for job `id` on `{prefix}.results` (others are
    /// consumed and skipped); panics after 10 s.
    pub async fn result(&self, app: &TestApp, id: &str) -> Delivery {
        let queue = topology(&app.settings).results();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let got = self
                .channel
                .basic_get(queue.clone().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get on the results queue");
            match got {
                Some(message) => {
                    let delivery = message.delivery;
                    let correlation = delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(|c| c.as_str().to_owned());
                    if correlation.as_deref() == Some(id) {
                        return delivery;
                    }
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("no result for job {id} on {queue}");
    }

    /// Publishes `message` to its company's request queue, as the api does.
    pub async fn publish_batch(&self, app: &TestApp, message: &Message) {
        let topology = topology(&app.settings);
        let shard = topology.shard_for(message.company);
        let properties = BasicProperties::default()
            .with_correlation_id(message.id.to_string().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let confirmation = self
            .channel
            .basic_publish(
                topology.requests_exchange().into(),
                shard.to_string().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                properties,
            )
            .await
            .expect("published")
            .await
            .expect("confirmed");
        assert!(
            matches!(confirmation, Confirmation::Ack(None)),
            "broker did not take the message: {confirmation:?}"
        );
    }
}

/// A message as the api publishes it.
pub struct Message {
    pub id: Uuid,
    pub company: Uuid,
    pub body: Vec<u8>,
}

fn message_for(entity: Entity, id: Uuid, company: Uuid, body: &Value) -> Message {
    let bytes = serde_json::to_vec(body).expect("json");
    let guids = Batch::read(entity, &bytes, usize::MAX)
        .expect("valid batch")
        .guids();
    let body = BatchMessage::forwarded(id, company, false, entity, &bytes, &guids);
    Message { id, company, body }
}

#[tokio::test]
async fn a_finished_job_publishes_its_result_to_the_results_queue() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let amqp = Amqp::connect(&app).await;

    let job = app
        .sync("articles", &token, &json!([item("articles", company)]))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let id = job["correlation_id"].as_str().expect("id");

    let result = amqp.result(&app, id).await;
    assert_eq!(
        result.routing_key.as_str(),
        format!("{company}.articles.succeeded")
    );
    let content_type = result
        .properties
        .content_type()
        .as_ref()
        .map(|c| c.as_str());
    assert_eq!(content_type, Some("application/json"));
    let body: Value = serde_json::from_slice(&result.data).expect("json result");
    assert_eq!(body, job);
}

#[tokio::test]
async fn redelivered_job_is_not_applied_twice() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let amqp = Amqp::connect(&app).await;
    let guids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let body = json!(guids
        .iter()
        .map(|g| full_item("pieces", company, *g, 1))
        .collect::<Vec<_>>());
    let job = app.sync("pieces", &token, &body).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    let id = job["correlation_id"].as_str().expect("id");
    amqp.result(&app, id).await;
    let stored = rows(&app, "pieces", &guids).await;

    let message = message_for(Entity::Pieces, id.parse().expect("uuid"), company, &body);
    amqp.publish_batch(&app, &message).await;

    // The stored result is published again …
    let again = amqp.result(&app, id).await;
    assert_eq!(
        again.routing_key.as_str(),
        format!("{company}.pieces.succeeded")
    );
    let again: Value = serde_json::from_slice(&again.data).expect("json result");
    assert_eq!(again, job);
    // … and nothing else changes: not the rows, not the counts, not attempts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rows(&app, "pieces", &guids).await, stored);
    assert_eq!(app.count("pieces").await, 3);
    let now: Value = app.get_job(id, &token).await.json().await.expect("job");
    assert_eq!(now, job);
}

#[tokio::test]
async fn a_message_whose_job_does_not_exist_writes_nothing() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let amqp = Amqp::connect(&app).await;
    let orphan_guid = Uuid::new_v4();
    let orphan = message_for(
        Entity::Projects,
        Uuid::now_v7(),
        company,
        &json!([minimal_item("projects", company, orphan_guid)]),
    );

    amqp.publish_batch(&app, &orphan).await;
    // Same company, same shard: applied strictly after the orphan.
    let job = app
        .sync("projects", &token, &json!([item("projects", company)]))
        .await;

    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(app.row("projects", orphan_guid).await, None);
    assert_eq!(app.count("projects").await, 1);
    assert_eq!(app.count("sync_jobs").await, 1);
}

#[tokio::test]
async fn identical_items_are_counted_unchanged_and_not_rewritten() {
    let app = TestApp::spawn().await;
    let company = company();
    let token = app.writer(company).await;
    let guids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let batch = |marks: [&str; 3]| {
        serde_json::Value::Array(
            guids
                .iter()
                .zip(marks)
                .map(|(guid, mark)| {
                    json!({"guid": guid, "company_guid": company, "assembly_guid": company,
                           "mark": mark, "attributes": {"k": [1, 2]}})
                })
                .collect(),
        )
    };
    let first = app.sync("pieces", &token, &batch(["a", "b", "c"])).await;
    assert_eq!(
        (first["inserted"].clone(), first["unchanged"].clone()),
        (json!(3), json!(0))
    );
    let before = app.row("pieces", guids[0]).await.expect("row");

    let same = app.sync("pieces", &token, &batch(["a", "b", "c"])).await;
    assert_eq!(same["status"], "succeeded", "{same}");
    assert_eq!(same["inserted"], 0);
    assert_eq!(same["updated"], 3, "unchanged rows still count as updated");
    assert_eq!(same["unchanged"], 3);
    assert_eq!(
        app.row("pieces", guids[0]).await.expect("row"),
        before,
        "not rewritten"
    );

    let one_changed = app.sync("pieces", &token, &batch(["a", "b", "C"])).await;
    assert_eq!(one_changed["updated"], 3);
    assert_eq!(one_changed["unchanged"], 2);
    assert_eq!(app.row("pieces", guids[2]).await.expect("row")["mark"], "C");
}
