//! Accepted means applicable: generated bodies (`bodies`) against the
//! reader, and against the running service with a real worker.

use crate::bodies::{body, same, BodyCase};
use crate::helpers::*;
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, TestRunner},
};
use reqwest::StatusCode;
use serde_json::{json, Map, Value};
use sync_ingest::domain::{
    Batch, BatchError, Cell, Code, Entity, FieldValue, Given, Item, Measure, Note, Quantity,
};
use uuid::Uuid;

fn any_body(items: std::ops::Range<usize>) -> impl Strategy<Value = BodyCase> {
    prop::sample::select(&Entity::ALL[..]).prop_flat_map(move |entity| body(entity, items.clone()))
}

/// An item's columns as the store binds them, by field name.
fn columns<'a, T: Item<'a>>(item: &T) -> Map<String, Value> {
    let mut cells = Vec::new();
    item.cells(&mut cells);
    T::FIELDS
        .iter()
        .zip(cells)
        .map(|(field, cell)| {
            let value = match cell {
                None => Value::Null,
                Some(Cell::Uuid(u)) => json!(u),
                Some(Cell::Text(t)) => json!(t),
                Some(Cell::Int4(n)) => json!(n),
                Some(Cell::Float8(n)) => json!(n),
                Some(Cell::Date(d)) => json!(d.to_string()),
                Some(Cell::Jsonb(raw)) => serde_json::from_str(raw.get()).expect("json"),
            };
            (field.name.to_owned(), value)
        })
        .collect()
}

fn assert_holds(columns: &Map<String, Value>, expected: &Map<String, Value>, what: &str) {
    for (name, value) in expected {
        let stored = columns.get(name).unwrap_or(&Value::Null);
        assert!(
            same(stored, value),
            "{what}: {name} is {stored}, expected {value}"
        );
    }
}

/// The (item, field) pairs of a refusal, in order, each once.
fn error_pairs(errors: &[Value]) -> Vec<(usize, Option<String>)> {
    let mut pairs: Vec<(usize, Option<String>)> = errors
        .iter()
        .map(|e| {
            let index = e["index"].as_u64().expect("every error names its item");
            (index as usize, e["field"].as_str().map(str::to_owned))
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

proptest! {
    #![proptest_config(Config { cases: 1500, failure_persistence: None, ..Config::default() })]

    /// The reader accepts exactly the bodies the contract accepts, with the
    /// values sent, and lists exactly the items it refuses.
    #[test]
    fn every_generated_body_is_read_as_the_contract_says(case in any_body(0..5)) {
        let read = Batch::read(case.entity, case.json.as_bytes(), 1000);
        match read {
            Ok(batch) => {
                prop_assert!(case.valid(), "accepted, but {:?} are invalid: {}",
                    case.errors(), case.json);
                let read: Vec<Map<String, Value>> =
                    sync_ingest::with_items!(&batch, |items| items.iter().map(columns).collect());
                prop_assert_eq!(read.len(), case.items.len());
                for (item, columns) in case.items.iter().zip(&read) {
                    assert_holds(columns, &item.stored, &case.json);
                }
            }
            Err(BatchError::Invalid(errors)) => {
                let errors: Vec<Value> = errors.iter().map(|e| json!(e)).collect();
                prop_assert_eq!(error_pairs(&errors), case.errors(), "{}", case.json);
            }
            Err(too_large) => prop_assert!(false, "{too_large}"),
        }
    }
}

/// Bodies drawn up front: the service is async, proptest's runner is not.
fn draw(count: usize) -> Vec<BodyCase> {
    let mut runner = TestRunner::new(Config::default());
    let strategy = any_body(1..4);
    (0..count)
        .map(|_| strategy.new_tree(&mut runner).expect("a body").current())
        .collect()
}

async fn stored_row(app: &TestApp, entity: Entity, guid: Uuid) -> Map<String, Value> {
    let row = app.row(entity.as_str(), guid).await;
    let Some(Value::Object(row)) = row else {
        panic!("no {entity} row {guid}");
    };
    row
}

/// Every accepted body is applied by a real worker with exactly the values
/// sent; every refused one is a 422 that lists the invalid items.
#[tokio::test]
async fn generated_bodies_are_applied_as_sent_or_refused_item_by_item() {
    let app = TestApp::spawn_with_jwt().await;
    // Items name companies of their own: a SystemAdmin may write to any, so
    // that only the body decides.
    let token = jwt(company(), &["SystemAdmin"]);
    let (mut accepted, mut refused) = (0, 0);
    for case in draw(60) {
        let body = case.json.clone().into_bytes();
        let response = app
            .post_raw(case.entity.as_str(), &token, "application/json", body)
            .await;
        let status = response.status();
        let answer: Value = response.json().await.expect("json answer");
        if !case.valid() {
            refused += 1;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{answer}: {}",
                case.json
            );
            assert_eq!(answer["code"], "validation_failed");
            let errors = answer["errors"].as_array().expect("errors");
            assert_eq!(
                error_pairs(errors),
                case.errors(),
                "{answer}: {}",
                case.json
            );
            continue;
        }
        accepted += 1;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}: {}", case.json);
        let id = answer["correlation_id"].as_str().expect("id");
        let job = app.finished_job(id, &token).await;
        assert_eq!(job["status"], "succeeded", "{job}: {}", case.json);
        let guids = answer["guids"].as_array().expect("guids");
        assert_eq!(guids.len(), case.items.len(), "{answer}");
        for (item, guid) in case.items.iter().zip(guids) {
            let guid: Uuid = guid.as_str().and_then(|g| g.parse().ok()).expect("guid");
            let row = stored_row(&app, case.entity, guid).await;
            assert_holds(&row, &item.stored, &case.json);
        }
    }
    // Both verdicts were tried, each often enough to mean something.
    assert!(
        accepted >= 10 && refused >= 10,
        "{accepted} accepted, {refused} refused"
    );
}

fn errors_of(entity: Entity, body: &str) -> Vec<(Option<usize>, Option<String>, String)> {
    match Batch::read(entity, body.as_bytes(), 10) {
        Err(BatchError::Invalid(errors)) => errors
            .into_iter()
            .map(|e| (e.index, e.field, e.message))
            .collect(),
        other => panic!("expected validation errors, got {other:?}"),
    }
}

fn fields_of(
    errors: &[(Option<usize>, Option<String>, String)],
) -> Vec<(Option<usize>, Option<&str>)> {
    errors.iter().map(|(i, f, _)| (*i, f.as_deref())).collect()
}

#[test]
fn every_error_of_every_item_is_listed_in_item_order() {
    let nil = Uuid::nil();
    let body = json!([
        {"company_guid": "nope", "mark": "", "extra": 1},
        {"company_guid": nil, "assembly_guid": nil, "mark": "m", "quantity": 0},
        {"guid": nil, "company_guid": nil, "assembly_guid": nil, "mark": "m"},
        {"guid": nil, "company_guid": nil, "assembly_guid": nil, "mark": "m"},
        [1],
    ]);
    let errors = errors_of(Entity::Pieces, &body.to_string());
    assert_eq!(
        fields_of(&errors),
        [
            (Some(0), Some("extra")),
            (Some(0), Some("company_guid")),
            (Some(0), Some("assembly_guid")),
            (Some(0), Some("mark")),
            (Some(1), Some("quantity")),
            (Some(3), Some("guid")),
            (Some(4), None),
        ]
    );
    let messages: Vec<&str> = errors.iter().map(|(_, _, m)| m.as_str()).collect();
    assert_eq!(
        messages,
        [
            "unknown field",
            "is not a valid UUID",
            "is required",
            "must not be empty or blank",
            "must be at least 1",
            "duplicates the guid of item 2",
            "each item must be a JSON object",
        ]
    );
}

#[test]
fn whole_body_problems_have_neither_index_nor_field() {
    for body in ["{}", "[{", "[1] x", "\"items\"", "", "[{\"a\": 1e}]"] {
        let errors = errors_of(Entity::Articles, body);
        assert_eq!(fields_of(&errors), [(None, None)], "{body}: {errors:?}");
    }
    let not_utf8 = Batch::read(Entity::Articles, b"[\"\xff\"]", 10);
    assert!(matches!(not_utf8, Err(BatchError::Invalid(e)) if e[0].message.contains("UTF-8")));
}

#[test]
fn items_past_the_limit_are_counted_not_read() {
    let body = format!("[{}]", ["{\"not\": \"read\"}"; 12].join(","));
    assert_eq!(
        Batch::read(Entity::Projects, body.as_bytes(), 10),
        Err(BatchError::TooLarge {
            entity: Entity::Projects,
            count: 12,
            limit: 10
        })
    );
}

#[test]
fn absent_and_null_take_defaults_and_missing_guids_are_assigned() {
    let (given, company) = (Uuid::now_v7(), Uuid::now_v7());
    let body = json!([
        {"guid": given, "company_guid": company, "number": "1", "name": "a", "status": null},
        {"guid": null, "company_guid": company, "number": "2", "name": "b", "end_date": null},
    ]);
    let bytes = body.to_string().into_bytes();
    let Ok(Batch::Projects(projects)) = Batch::read(Entity::Projects, &bytes, 10) else {
        panic!("projects expected");
    };
    assert_eq!(projects[0].guid, given);
    assert_eq!(projects[1].guid.get_version_num(), 7);
    assert!(projects
        .iter()
        .all(|p| p.status.as_str() == "active" && p.end_date.is_none()));
}

/// A value as its type reads it; one serde_json cannot read is refused.
fn value<T: FieldValue<'static>>(json: &'static str) -> Given<T> {
    let mut d = serde_json::Deserializer::from_str(json);
    T::read(&mut d).unwrap_or_else(|e| Err(e.to_string().into()))
}

#[test]
fn texts_decode_escapes_and_keep_their_rules() {
    let text = |json| value::<Code>(json).map(|t| t.map(|t| t.as_str().to_owned()));
    assert_eq!(text(r#""A\u0041\n""#), Ok(Some("AA\n".into())));
    assert_eq!(text(r#""\ud83d\ude00""#), Ok(Some("😀".into())));
    assert_eq!(text("null"), Ok(None));
    for bad in [
        r#""\udc00""#,
        r#""a\ud800b""#,
        r#""a\u0000""#,
        r#"" \t""#,
        "12",
        "[]",
    ] {
        assert!(text(bad).is_err(), "{bad}");
    }
    assert!(value::<Note>(r#"" ""#).is_ok());
    assert!(text(format!("\"{}\"", "é".repeat(64)).leak()).is_ok());
    assert!(text(format!("\"{}\"", "é".repeat(65)).leak()).is_err());
}

#[test]
fn numbers_are_read_by_their_rules() {
    assert_eq!(value::<Quantity>("7"), Ok(Some(Quantity(7))));
    assert_eq!(
        value::<Quantity>("2147483647"),
        Ok(Some(Quantity(i32::MAX)))
    );
    for bad in [
        "0",
        "-0",
        "-3",
        "1.0",
        "1e2",
        "2147483648",
        "99999999999999999999",
        "1e400",
    ] {
        assert!(value::<Quantity>(bad).is_err(), "{bad}");
    }
    assert_eq!(value::<Measure>("1.5e3"), Ok(Some(Measure(1500.0))));
    assert_eq!(value::<Measure>("-0"), Ok(Some(Measure(-0.0))));
    // The double nearest to the decimal, not merely a close one.
    assert_eq!(
        value::<Measure>("2.2250738585072011e-308"),
        Ok(Some(Measure(2.225_073_858_507_201e-308)))
    );
    for bad in ["-0.001", "-2", "1e400", "\"1\"", "true", "[1]"] {
        assert!(value::<Measure>(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_value_serde_json_cannot_read_is_told_as_its_field_tells_its_kind() {
    let nil = Uuid::nil();
    let body = format!(
        r#"[{{"company_guid": "{nil}", "assembly_guid": "{nil}", "mark": "\udc00",
              "length_mm": 1e400, "quantity": -1e400, "article_guid": {{"\ud800": 1}}}}]"#
    );
    let errors = errors_of(Entity::Pieces, &body);
    let messages: Vec<(Option<&str>, &str)> = errors
        .iter()
        .map(|(_, f, m)| (f.as_deref(), m.as_str()))
        .collect();
    assert_eq!(messages.len(), 4, "{errors:?}");
    assert!(
        messages[0] == (Some("article_guid"), "must be a UUID string"),
        "{errors:?}"
    );
    assert!(
        messages[1].0 == Some("mark") && messages[1].1.contains("surrogate"),
        "{errors:?}"
    );
    assert!(messages[2] == (Some("quantity"), messages[2].1) && messages[2].1.contains("integer"));
    assert!(
        messages[3] == (Some("length_mm"), "must be a finite number ≥ 0"),
        "{errors:?}"
    );
}

/// A raw control character is not JSON, wherever it is: the two ways the
/// reader reads a body agree on that.
#[test]
fn a_raw_control_character_in_a_key_is_malformed_json_in_any_item() {
    let nil = Uuid::nil();
    let bad_key = format!(
        r#"{{"company_guid": "{nil}", "number": "P", "name": "n", "a{ctl}b": 1}}"#,
        ctl = '\u{1}'
    );
    let unreadable = format!(r#"{{"company_guid": "{nil}", "number": "P", "name": "\udc00"}}"#);
    for body in [
        format!("[{bad_key}]"),
        format!("[{bad_key}, {unreadable}]"),
        format!("[{unreadable}, {bad_key}]"),
    ] {
        let errors = errors_of(Entity::Projects, &body);
        assert_eq!(fields_of(&errors), [(None, None)], "{body}: {errors:?}");
    }
}
