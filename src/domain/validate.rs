//! Turning a request body into a [`Batch`], collecting every error on the way.

use super::schema::{fields, Field, FieldKind};
use super::{Batch, Entity, Manifest};
use chrono::NaiveDate;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};
use std::collections::{hash_map::Entry, HashMap};
use uuid::Uuid;

/// One problem with one field of one item (or with the body as a whole,
/// when `index` and `field` are absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub index: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    fn body(message: impl Into<String>) -> Self {
        FieldError {
            index: None,
            field: None,
            message: message.into(),
        }
    }

    fn item(index: usize, field: &str, message: impl Into<String>) -> Self {
        FieldError {
            index: Some(index),
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }
}

/// Why a body is not a batch.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    /// More items than the entity's limit.
    #[error("{count} items exceed the limit of {limit} for {entity}")]
    TooLarge {
        entity: Entity,
        count: usize,
        limit: usize,
    },
    /// The body or some items are invalid; every problem found is listed.
    #[error("{} validation error(s)", .0.len())]
    Invalid(Vec<FieldError>),
}

/// A validated batch.
#[derive(Debug)]
pub enum Parsed {
    /// The body's items parse, with the item types alone, to a valid batch
    /// (bar the GUIDs some lack, which the manifest carries), so they travel
    /// on as sent and the worker reads them as they are.
    AsSent(Manifest),
    /// Valid only as the walk reads it (`null` for absent, say): the items
    /// must be serialised again.
    Normalised(Batch),
}

/// Parses and validates a request body of `entity` items, assigning a new
/// UUIDv7 to every item without a GUID. `limit` is the entity's batch limit.
/// Three readers, fastest first; each of the first two gives up on what it
/// does not read, and only the walk explains a refusal.
pub fn parse_submission(entity: Entity, body: &[u8], limit: usize) -> Result<Parsed, BatchError> {
    // One pass over the whole body checks UTF-8 far faster than a parser
    // checks it string by string; text that is not UTF-8 only the walk
    // explains.
    let Ok(text) = std::str::from_utf8(body) else {
        return walk(entity, body, limit).map(Parsed::Normalised);
    };
    if let Some(manifest) = super::scan::scan(entity, text, limit) {
        return Ok(Parsed::AsSent(manifest));
    }
    match super::fast::parse_valid(entity, text, limit) {
        Some(outcome) => outcome.map(|batch| Parsed::AsSent(Manifest::of(&batch))),
        None => walk(entity, body, limit).map(Parsed::Normalised),
    }
}

/// The typed batch of a valid body: [`parse_submission`] without the
/// scanner, which keeps no items.
pub fn parse_batch(entity: Entity, body: &[u8], limit: usize) -> Result<Batch, BatchError> {
    let Ok(text) = std::str::from_utf8(body) else {
        return walk(entity, body, limit);
    };
    match super::fast::parse_valid(entity, text, limit) {
        Some(outcome) => outcome,
        None => walk(entity, body, limit),
    }
}

/// The thorough path: walks every field of every item and collects every
/// error. The only one that explains a refusal.
pub(super) fn walk(entity: Entity, body: &[u8], limit: usize) -> Result<Batch, BatchError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BatchError::Invalid(vec![FieldError::body(format!("malformed JSON: {e}"))]))?;
    let Value::Array(items) = value else {
        return Err(BatchError::Invalid(vec![FieldError::body(
            "the body must be a JSON array of items",
        )]));
    };
    if items.len() > limit {
        return Err(BatchError::TooLarge {
            entity,
            count: items.len(),
            limit,
        });
    }
    let mut errors = Vec::new();
    let mut objects = Vec::with_capacity(items.len());
    let mut seen = HashMap::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        check_duplicate_guid(index, &item, &mut seen, &mut errors);
        if let Some(object) = check_item(entity, index, item, &mut errors) {
            objects.push(object);
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.index);
        return Err(BatchError::Invalid(errors));
    }
    let objects = objects.into_iter().map(|mut o| {
        // `null` means absent: the field takes its default.
        o.retain(|_, v| !v.is_null());
        o.entry("guid")
            .or_insert_with(|| Value::String(Uuid::now_v7().to_string()));
        Value::Object(o)
    });
    let typed = match entity {
        Entity::Projects => Batch::Projects(typed(objects)?),
        Entity::Components => Batch::Components(typed(objects)?),
        Entity::Assemblies => Batch::Assemblies(typed(objects)?),
        Entity::Pieces => Batch::Pieces(typed(objects)?),
        Entity::Articles => Batch::Articles(typed(objects)?),
    };
    Ok(typed)
}

/// Converts checked objects into typed items. The checks above guarantee
/// success; an error here is a gap in them, reported rather than panicking.
fn typed<T: DeserializeOwned>(objects: impl Iterator<Item = Value>) -> Result<Vec<T>, BatchError> {
    objects
        .enumerate()
        .map(|(index, object)| {
            serde_json::from_value(object).map_err(|e| {
                BatchError::Invalid(vec![FieldError {
                    index: Some(index),
                    field: None,
                    message: e.to_string(),
                }])
            })
        })
        .collect()
}

fn check_item(
    entity: Entity,
    index: usize,
    item: Value,
    errors: &mut Vec<FieldError>,
) -> Option<Map<String, Value>> {
    let Value::Object(object) = item else {
        errors.push(FieldError {
            index: Some(index),
            field: None,
            message: "each item must be a JSON object".into(),
        });
        return None;
    };
    let before = errors.len();
    for key in object.keys() {
        if !fields(entity).any(|f| f.name == key) {
            errors.push(FieldError::item(index, key, "unknown field"));
        }
    }
    for field in fields(entity) {
        match object.get(field.name) {
            None | Some(Value::Null) if field.required => {
                errors.push(FieldError::item(index, field.name, "is required"))
            }
            None | Some(Value::Null) => {}
            Some(value) => {
                if let Err(message) = check_value(field, value) {
                    errors.push(FieldError::item(index, field.name, message));
                }
            }
        }
    }
    check_date_order(index, &object, errors);
    (errors.len() == before).then_some(object)
}

fn check_value(field: &Field, value: &Value) -> Result<(), String> {
    match field.kind {
        FieldKind::Uuid => {
            let s = value.as_str().ok_or("must be a UUID string")?;
            Uuid::parse_str(s).map_err(|_| "is not a valid UUID")?;
        }
        FieldKind::Text { max } => {
            let s = value.as_str().ok_or("must be a string")?;
            check_text(s, max, field.required)?;
        }
        FieldKind::OneOf(allowed) => {
            let s = value.as_str().ok_or("must be a string")?;
            if !allowed.contains(&s) {
                return Err(format!("must be one of: {}", allowed.join(", ")));
            }
        }
        FieldKind::Date => {
            let s = value.as_str().ok_or("must be a date string (YYYY-MM-DD)")?;
            parse_date(s).ok_or("is not a valid date (YYYY-MM-DD)")?;
        }
        FieldKind::Quantity => {
            let n = value.as_i64().ok_or("must be an integer")?;
            check_quantity(n)?;
        }
        FieldKind::Measure => {
            let n = value.as_f64().ok_or("must be a number")?;
            check_measure(n)?;
        }
        FieldKind::Object => check_object(value)?,
    }
    Ok(())
}

// The rules on a value of the right type, shared with the typed fast path
// (`super::fast`) so both paths accept exactly the same items.

pub(super) fn check_text(s: &str, max: usize, required: bool) -> Result<(), String> {
    if s.contains('\0') {
        return Err(NUL_MESSAGE.into());
    }
    if required && s.trim().is_empty() {
        return Err("must not be empty or blank".into());
    }
    // Cheap first: a string of at most `max` bytes has at most `max` chars.
    if s.len() > max {
        let chars = s.chars().count();
        if chars > max {
            return Err(format!("must be at most {max} characters (got {chars})"));
        }
    }
    Ok(())
}

pub(super) fn check_quantity(n: i64) -> Result<(), String> {
    if n < 1 {
        return Err("must be at least 1".into());
    }
    if n > i64::from(i32::MAX) {
        return Err(format!("must be at most {}", i32::MAX));
    }
    Ok(())
}

pub(super) fn check_measure(n: f64) -> Result<(), String> {
    if !(n >= 0.0 && n.is_finite()) {
        return Err("must be a number ≥ 0".into());
    }
    Ok(())
}

pub(super) fn check_object(value: &Value) -> Result<(), String> {
    if !value.is_object() {
        return Err("must be a JSON object".into());
    }
    if contains_nul(value) {
        return Err(NUL_MESSAGE.into());
    }
    Ok(())
}

/// PostgreSQL cannot store U+0000 in `text` or `jsonb`: refused up front
/// rather than failing the job later.
const NUL_MESSAGE: &str = "must not contain the NUL character (U+0000)";

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// Exactly `YYYY-MM-DD`: chrono alone would also take `24-01-05` (year 24)
/// or signed years outside PostgreSQL's range.
pub(super) fn parse_date(s: &str) -> Option<NaiveDate> {
    let shape = s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    shape.then(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())?
}

fn check_date_order(index: usize, object: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    let date = |name| {
        object
            .get(name)
            .and_then(Value::as_str)
            .and_then(parse_date)
    };
    if let (Some(start), Some(end)) = (date("start_date"), date("end_date")) {
        if end < start {
            errors.push(FieldError::item(
                index,
                "end_date",
                "must not be before start_date",
            ));
        }
    }
}

/// Records `item`'s GUID, reporting it if an earlier item already used it.
fn check_duplicate_guid(
    index: usize,
    item: &Value,
    seen: &mut HashMap<Uuid, usize>,
    errors: &mut Vec<FieldError>,
) {
    let Some(guid) = item
        .get("guid")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
    else {
        return;
    };
    match seen.entry(guid) {
        Entry::Occupied(first) => errors.push(FieldError::item(
            index,
            "guid",
            format!("duplicates the guid of item {}", first.get()),
        )),
        Entry::Vacant(slot) => {
            slot.insert(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_must_be_exactly_yyyy_mm_dd() {
        assert!(parse_date("2024-01-05").is_some());
        for bad in [
            "24-01-05",
            "2024-1-5",
            "+2024-01-05",
            " 2024-01-05",
            "2024-02-30",
            "-480-01-01",
        ] {
            assert!(parse_date(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn nul_is_found_anywhere_in_attributes() {
        assert!(contains_nul(&json!({"a": [1, {"b": "x\u{0}"}]})));
        assert!(contains_nul(&json!({"k\u{0}": 1})));
        assert!(!contains_nul(&json!({"a": [1, {"b": "x"}]})));
    }

    #[test]
    fn every_error_of_every_item_is_reported() {
        let body = json!([
            {"company_guid": "nope", "mark": "", "extra": 1},
            {"company_guid": Uuid::nil(), "assembly_guid": Uuid::nil(), "mark": "m", "quantity": 0}
        ]);
        let Err(BatchError::Invalid(errors)) =
            parse_batch(Entity::Pieces, body.to_string().as_bytes(), 10)
        else {
            panic!("expected validation errors");
        };
        let pairs: Vec<(Option<usize>, Option<&str>)> = errors
            .iter()
            .map(|e| (e.index, e.field.as_deref()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                (Some(0), Some("extra")),
                (Some(0), Some("company_guid")),
                (Some(0), Some("assembly_guid")),
                (Some(0), Some("mark")),
                (Some(1), Some("quantity")),
            ]
        );
    }

    #[test]
    fn null_optional_fields_take_their_defaults() {
        let body = json!([{"company_guid": Uuid::nil(), "number": "1", "name": "a",
                           "status": null, "guid": null, "start_date": null}]);
        let Batch::Projects(projects) =
            parse_batch(Entity::Projects, body.to_string().as_bytes(), 10).unwrap()
        else {
            panic!("projects expected");
        };
        assert_eq!(projects[0].status, crate::domain::ProjectStatus::Active);
        assert_eq!(projects[0].start_date, None);
    }

    #[test]
    fn missing_guids_are_assigned_and_given_ones_kept() {
        let given = Uuid::now_v7();
        let body = json!([
            {"guid": given, "company_guid": Uuid::nil(), "number": "1", "name": "a"},
            {"company_guid": Uuid::nil(), "number": "2", "name": "b"}
        ]);
        let batch = parse_batch(Entity::Articles, body.to_string().as_bytes(), 10).unwrap();
        let guids = batch.guids();
        assert_eq!(guids[0], given);
        assert_eq!(guids[1].get_version_num(), 7);
    }
}
