//! The fast path for valid batches: deserialize the body straight into the
//! typed items, then apply the rules the types alone do not express.
//!
//! Most batches are valid, and building a `serde_json::Value` tree for every
//! item only to walk it was most of the api's CPU time under load. When
//! anything is off — a type, a missing or unknown field, a broken rule — this
//! path gives up and the field-by-field walk in `validate` runs instead: it
//! alone reports errors, so both paths accept exactly the same batches and
//! only the walk ever explains a refusal (`tests` below hold them to that).

use super::schema::{fields, FieldKind};
use super::validate::{check_measure, check_quantity, check_text};
use super::{
    Article, Assembly, Attributes, Batch, BatchError, Component, Entity, Piece, Project, SyncItem,
};
use serde::de::DeserializeOwned;
use std::collections::HashSet;

/// `Some` when the body is a valid batch (or too large), `None` when the
/// thorough walk must decide. The body is text already checked as UTF-8:
/// the parser then skips its per-string checks.
pub(super) fn parse_valid(
    entity: Entity,
    body: &str,
    limit: usize,
) -> Option<Result<Batch, BatchError>> {
    Some(match entity {
        Entity::Projects => typed(body, limit)?.map(Batch::Projects),
        Entity::Components => typed(body, limit)?.map(Batch::Components),
        Entity::Assemblies => typed(body, limit)?.map(Batch::Assemblies),
        Entity::Pieces => typed(body, limit)?.map(Batch::Pieces),
        Entity::Articles => typed(body, limit)?.map(Batch::Articles),
    })
}

fn typed<T: DeserializeOwned + Rules + SyncItem>(
    body: &str,
    limit: usize,
) -> Option<Result<Vec<T>, BatchError>> {
    let items: Vec<T> = serde_json::from_str(body).ok()?;
    if items.len() > limit {
        return Some(Err(BatchError::TooLarge {
            entity: T::ENTITY,
            count: items.len(),
            limit,
        }));
    }
    let mut guids = HashSet::with_capacity(items.len());
    let valid = items
        .iter()
        .all(|item| item.obeys_rules() && guids.insert(item.guid()));
    valid.then_some(Ok(items))
}

/// The rules of the schema that deserialization does not enforce.
trait Rules {
    fn obeys_rules(&self) -> bool;
}

/// `value` obeys the rule of `entity`'s field `name` (absent is fine: a
/// required field that is absent never deserializes).
fn text(entity: Entity, name: &str, value: Option<&str>) -> bool {
    let Some(value) = value else { return true };
    fields(entity).any(|field| {
        field.name == name
            && matches!(field.kind, FieldKind::Text { max }
                if check_text(value, max, field.required).is_ok())
    })
}

fn quantity(n: i32) -> bool {
    check_quantity(i64::from(n)).is_ok()
}

fn measures(values: &[Option<f64>]) -> bool {
    values.iter().flatten().all(|&n| check_measure(n).is_ok())
}

/// Deeper attributes are left to the walk, whose parser has a recursion
/// limit (128 levels for the whole body: array, item, then attributes).
pub(super) const MAX_DEPTH: usize = 100;

/// The walk's `check_object`, on the raw text.
fn attributes(value: &Option<Attributes>) -> bool {
    value
        .as_ref()
        .is_none_or(|a| a.is_object() && !a.contains_nul() && !a.nests_deeper_than(MAX_DEPTH))
}

impl Rules for Project {
    fn obeys_rules(&self) -> bool {
        let e = Entity::Projects;
        text(e, "number", Some(&self.number))
            && text(e, "name", Some(&self.name))
            && text(e, "description", self.description.as_deref())
            && attributes(&self.attributes)
            && match (self.start_date, self.end_date) {
                (Some(start), Some(end)) => end >= start,
                _ => true,
            }
    }
}

impl Rules for Component {
    fn obeys_rules(&self) -> bool {
        let e = Entity::Components;
        text(e, "name", Some(&self.name))
            && text(e, "component_type", self.component_type.as_deref())
            && text(e, "description", self.description.as_deref())
            && attributes(&self.attributes)
    }
}

impl Rules for Assembly {
    fn obeys_rules(&self) -> bool {
        let e = Entity::Assemblies;
        text(e, "mark", Some(&self.mark))
            && text(e, "name", self.name.as_deref())
            && quantity(self.quantity)
            && attributes(&self.attributes)
    }
}

impl Rules for Piece {
    fn obeys_rules(&self) -> bool {
        let e = Entity::Pieces;
        text(e, "mark", Some(&self.mark))
            && quantity(self.quantity)
            && measures(&[
                self.length_mm,
                self.width_mm,
                self.height_mm,
                self.weight_kg,
            ])
            && attributes(&self.attributes)
    }
}

impl Rules for Article {
    fn obeys_rules(&self) -> bool {
        let e = Entity::Articles;
        text(e, "number", Some(&self.number))
            && text(e, "name", Some(&self.name))
            && text(e, "unit", self.unit.as_deref())
            && text(e, "description", self.description.as_deref())
            && attributes(&self.attributes)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::scan::scan;
    use super::super::validate::walk;
    use super::*;
    use crate::queue::BatchMessage;
    use serde_json::{json, Map, Value};
    use uuid::Uuid;

    const LIMIT: usize = 10;

    /// A valid item of `entity` with every field set (at its limits where it
    /// has some).
    pub(in crate::domain) fn full_item(entity: Entity) -> Map<String, Value> {
        let mut item = Map::new();
        for field in fields(entity) {
            let value = match field.kind {
                FieldKind::Uuid => json!(uuid::Uuid::now_v7()),
                // Multi-byte, so lengths count characters, not bytes.
                FieldKind::Text { max } => json!("é".repeat(max.min(16))),
                FieldKind::OneOf(names) => json!(names[0]),
                FieldKind::Date if field.name == "end_date" => json!("2024-12-31"),
                FieldKind::Date => json!("2024-01-01"),
                FieldKind::Quantity => json!(3),
                FieldKind::Measure => json!(12.5),
                FieldKind::Object => json!({"grade": "S355", "n": [1, {"x": null}]}),
            };
            item.insert(field.name.to_owned(), value);
        }
        item
    }

    /// Values worth trying in a field of `kind`, valid and not.
    fn variants(kind: FieldKind) -> Vec<Value> {
        let mut values = vec![
            Value::Null,
            json!(true),
            json!(7),
            json!(-1),
            json!(1.5),
            json!("text"),
            json!([1, 2]),
            json!({}),
            json!(""),
            json!("  "),
            json!("a\u{0}b"),
        ];
        values.extend(match kind {
            FieldKind::Uuid => vec![
                json!(uuid::Uuid::nil()),
                json!(uuid::Uuid::now_v7().simple().to_string()),
                json!(uuid::Uuid::now_v7().urn().to_string()),
                json!(uuid::Uuid::now_v7().to_string().to_uppercase()),
                json!((0..16).collect::<Vec<u8>>()),
                json!("123e4567-e89b-12d3-a456-42661417400"),
            ],
            FieldKind::Text { max } => vec![
                json!("x".repeat(max)),
                json!("x".repeat(max + 1)),
                json!("é".repeat(max + 1)),
                json!(" ok "),
            ],
            FieldKind::OneOf(names) => names
                .iter()
                .map(|n| json!(n))
                .chain([json!("Active")])
                .collect(),
            FieldKind::Date => vec![
                json!("2023-06-30"),
                json!("2025-02-28"),
                json!("2024-02-30"),
                json!("24-01-05"),
                json!("+2024-01-05"),
                json!("2024-1-5"),
                json!("2024-01-05T00:00:00"),
            ],
            FieldKind::Quantity => vec![
                json!(0),
                json!(1),
                json!(1.0),
                json!(i64::from(i32::MAX)),
                json!(i64::from(i32::MAX) + 1),
                json!(u64::MAX),
            ],
            FieldKind::Measure => vec![
                json!(0),
                json!(-0.0),
                json!(-0.001),
                json!(1e308),
                json!(u64::MAX),
            ],
            FieldKind::Object => vec![
                json!({"k\u{0}": 1}),
                json!({"a": ["x\u{0}"]}),
                json!({"deep": {"er": [null, 1.5, "s"]}}),
                nested(MAX_DEPTH),
                nested(MAX_DEPTH + 1),
                nested(200),
            ],
        });
        values
    }

    /// An object nesting `depth` levels.
    fn nested(depth: usize) -> Value {
        let text = format!(
            "{{\"a\":{}1{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        );
        serde_json::from_str(&text).unwrap_or_else(|_| {
            // Past the parser's limit as a Value: build it by hand.
            json!({"a": (1..depth).fold(json!(1), |inner, _| json!([inner]))})
        })
    }

    /// Whatever the fast path or the scanner accepts, the walk accepts
    /// identically — compact or pretty-printed.
    pub(in crate::domain) fn agree(entity: Entity, body: &str, guids_given: bool) {
        agree_typed(entity, body, guids_given);
        agree_scanned(entity, body, guids_given);
        if let Ok(value) = serde_json::from_str::<Value>(body) {
            let pretty = serde_json::to_string_pretty(&value).expect("pretty");
            agree_typed(entity, &pretty, guids_given);
            agree_scanned(entity, &pretty, guids_given);
        }
    }

    /// The scanner keeps only GUIDs and companies, and the items travel on
    /// as sent: the worker must read them into the batch the walk reads.
    fn agree_scanned(entity: Entity, body: &str, guids_given: bool) {
        let Some(manifest) = scan(entity, body, LIMIT) else {
            return;
        };
        let mut walked = walk(entity, body.as_bytes(), LIMIT)
            .unwrap_or_else(|e| panic!("{entity:?}: scanned but refused ({e:?}): {body}"));
        if guids_given {
            assert_eq!(manifest.guids, walked.guids(), "{entity:?}: {body}");
        }
        walked.assign_guids(&manifest.guids);
        assert_eq!(manifest.companies, walked.companies(), "{body}");
        let message = BatchMessage::forwarded(
            Uuid::nil(),
            Uuid::nil(),
            false,
            entity,
            body.as_bytes(),
            &manifest.guids,
        );
        let read = BatchMessage::from_json(&message)
            .unwrap_or_else(|e| panic!("{entity:?}: the worker cannot read ({e}): {body}"));
        let comparable = |batch: Batch| serde_json::to_value(batch).expect("serialises");
        assert_eq!(
            comparable(read.batch),
            comparable(walked),
            "{entity:?}: {body}"
        );
    }

    fn agree_typed(entity: Entity, body: &str, guids_given: bool) {
        let Some(fast) = parse_valid(entity, body, LIMIT) else {
            return;
        };
        let walked = walk(entity, body.as_bytes(), LIMIT);
        let comparable = |outcome: Result<Batch, BatchError>| {
            outcome.map(|batch| {
                let mut value = serde_json::to_value(batch).expect("serialises");
                if !guids_given {
                    for item in value["items"].as_array_mut().expect("items") {
                        item.as_object_mut().expect("item").remove("guid");
                    }
                }
                value
            })
        };
        assert_eq!(comparable(fast), comparable(walked), "{entity:?}: {body}");
    }

    fn body(items: &[&Map<String, Value>]) -> String {
        serde_json::to_string(items).expect("body")
    }

    #[test]
    fn valid_batches_take_the_fast_path() {
        for entity in Entity::ALL {
            let (a, b) = (full_item(entity), full_item(entity));
            let body = body(&[&a, &b]);
            assert!(
                matches!(parse_valid(entity, &body, LIMIT), Some(Ok(_))),
                "{entity:?}"
            );
            assert!(scan(entity, &body, LIMIT).is_some(), "{entity:?}: {body}");
            agree(entity, &body, true);
            let mut minimal = Map::new();
            for field in fields(entity).filter(|f| f.required) {
                minimal.insert(field.name.to_owned(), a[field.name].clone());
            }
            let body = serde_json::to_string(&[minimal]).expect("body");
            assert!(parse_valid(entity, &body, LIMIT).is_some());
            assert!(scan(entity, &body, LIMIT).is_some(), "{entity:?}: {body}");
            agree(entity, &body, false);
        }
    }

    #[test]
    fn both_paths_agree_on_every_variant_of_every_field() {
        for entity in Entity::ALL {
            let other = full_item(entity);
            for field in fields(entity) {
                let mut absent = full_item(entity);
                absent.remove(field.name);
                agree(entity, &body(&[&absent, &other]), field.name != "guid");
                for value in variants(field.kind) {
                    let mut item = full_item(entity);
                    item.insert(field.name.to_owned(), value);
                    let guids_given = !(field.name == "guid" && item["guid"].is_null());
                    agree(entity, &body(&[&item, &other]), guids_given);
                }
            }
        }
    }

    #[test]
    fn both_paths_agree_on_batch_level_problems() {
        for entity in Entity::ALL {
            let item = full_item(entity);
            let mut unknown = item.clone();
            unknown.insert("colour".into(), json!("red"));
            let mut duplicate_key = serde_json::to_string(&item).expect("item");
            duplicate_key.insert_str(1, r#""company_guid":"not a uuid","#);
            for body in [
                body(&[&item, &item]),
                body(&[&unknown]),
                body(&[&item; LIMIT + 1]),
                format!("[{duplicate_key}]"),
                "[]".to_owned(),
                "[1]".to_owned(),
                "{}".to_owned(),
                "[{".to_owned(),
            ] {
                agree(entity, &body, true);
            }
            let too_many = vec![full_item(entity); LIMIT + 1];
            let too_many: Vec<&Map<String, Value>> = too_many.iter().collect();
            assert!(matches!(
                parse_valid(entity, &body(&too_many), LIMIT),
                Some(Err(BatchError::TooLarge { .. }))
            ));
        }
    }
}
