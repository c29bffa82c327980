//! Bodies as a client might write them — escapes, surrogates, U+0000,
//! number forms, every rule's boundaries, unknown and repeated keys, deep
//! nesting, whitespace — each with the verdict SPEC §4 gives it and, for
//! a valid item, the values its row must hold.
//!
//! The rules here are written from the contract, not taken from the
//! service's own description of the entities: they are what it is checked
//! against.

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use sync_ingest::domain::Entity;
use uuid::Uuid;

/// What a field holds, by SPEC §4.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Uuid,
    /// (max characters, must not be blank)
    Text(usize, bool),
    Status,
    Date,
    Quantity,
    Measure,
    Attributes,
}

/// (name, kind, required) of every field of `entity`.
pub fn spec(entity: Entity) -> Vec<(&'static str, Kind, bool)> {
    use Kind::*;
    let (code, name, note) = (Text(64, true), Text(255, true), Text(4000, false));
    let own: Vec<(&'static str, Kind, bool)> = match entity {
        Entity::Projects => vec![
            ("number", code, true),
            ("name", name, true),
            ("description", note, false),
            ("status", Status, false),
            ("start_date", Date, false),
            ("end_date", Date, false),
        ],
        Entity::Components => vec![
            ("project_guid", Uuid, true),
            ("name", name, true),
            ("component_type", note, false),
            ("description", note, false),
        ],
        Entity::Assemblies => vec![
            ("project_guid", Uuid, true),
            ("component_guid", Uuid, false),
            ("mark", code, true),
            ("name", Text(255, false), false),
            ("quantity", Quantity, false),
        ],
        Entity::Pieces => vec![
            ("assembly_guid", Uuid, true),
            ("article_guid", Uuid, false),
            ("mark", code, true),
            ("quantity", Quantity, false),
            ("length_mm", Measure, false),
            ("width_mm", Measure, false),
            ("height_mm", Measure, false),
            ("weight_kg", Measure, false),
        ],
        Entity::Articles => vec![
            ("number", code, true),
            ("name", name, true),
            ("unit", note, false),
            ("description", note, false),
        ],
    };
    let mut fields = vec![("guid", Uuid, false), ("company_guid", Uuid, true)];
    fields.extend(own);
    fields.push(("attributes", Attributes, false));
    fields
}

/// A value's JSON text and, when valid, what its column must hold.
#[derive(Debug, Clone)]
pub struct Sample {
    pub json: String,
    pub stored: Option<Value>,
}

fn valid(json: impl Into<String>, stored: Value) -> Sample {
    Sample {
        json: json.into(),
        stored: Some(stored),
    }
}

fn invalid(json: impl Into<String>) -> Sample {
    Sample {
        json: json.into(),
        stored: None,
    }
}

const CHARS: &[char] = &[
    'a', 'Z', '7', ' ', 'é', '€', '中', '😀', '"', '\\', '/', '\n', '\t', '\u{7f}', '\u{2028}',
];

/// `text` as a JSON string, each character escaped (`\uXXXX`, a pair for
/// one beyond the BMP) where `escape` says so, and wherever JSON must.
pub fn encode(text: &[(char, bool)]) -> String {
    let mut out = String::from("\"");
    for &(c, escape) in text {
        if escape || c < ' ' || c == '"' || c == '\\' {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

fn chars(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<(char, bool)>> {
    prop::collection::vec(
        (prop::sample::select(CHARS), prop::bool::weighted(0.2)),
        len,
    )
}

/// An escape that JSON's grammar allows but no text holds.
fn lone_surrogate() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&["\\ud800", "\\udbff", "\\udc00", "\\udfff", "\\ud83dx"][..])
}

/// A JSON string holding `bad` among characters.
fn spoilt(bad: impl Strategy<Value = &'static str>) -> impl Strategy<Value = String> {
    (chars(0..4), bad, chars(0..4)).prop_map(|(a, bad, b)| {
        let (a, b) = (encode(&a), encode(&b));
        format!("{}{bad}{}", &a[..a.len() - 1], &b[1..])
    })
}

/// Values of a JSON type other than a string.
fn wrong_type() -> impl Strategy<Value = Sample> {
    prop::sample::select(
        &[
            "12",
            "-1.5",
            "1e400",
            "{\"\\udc00\": 1}",
            "true",
            "false",
            "[]",
            "[\"a\"]",
            "{}",
            "{\"a\":1}",
        ][..],
    )
    .prop_map(invalid)
}

/// Values of a JSON type other than a number.
fn not_a_number() -> impl Strategy<Value = Sample> {
    prop::sample::select(&["\"1\"", "true", "null", "[]", "[1]", "{}"][..])
        .prop_filter("null is absent", |t| *t != "null")
        .prop_map(invalid)
}

fn text(max: usize, non_blank: bool) -> BoxedStrategy<Sample> {
    let plain = chars(0..12).prop_map(move |text| {
        let decoded: String = text.iter().map(|(c, _)| c).collect();
        let ok = !(non_blank && decoded.trim().is_empty());
        Sample {
            json: encode(&text),
            stored: ok.then(|| json!(decoded)),
        }
    });
    let longest = "é".repeat(max);
    prop_oneof![
        6 => plain,
        1 => Just(valid(format!("\"{longest}\""), json!(longest))),
        1 => Just(invalid(format!("\"{}\"", "x".repeat(max + 1)))),
        1 => spoilt(Just("\\u0000")).prop_map(invalid),
        1 => spoilt(lone_surrogate()).prop_map(invalid),
        1 => wrong_type(),
    ]
    .boxed()
}

fn uuid() -> BoxedStrategy<Sample> {
    let forms = (any::<u128>(), 0..5u8, any::<bool>()).prop_map(|(n, form, escape)| {
        let guid = Uuid::from_u128(n);
        let mut text = match form {
            0 => guid.hyphenated().to_string(),
            1 => guid.hyphenated().to_string().to_uppercase(),
            2 => guid.simple().to_string(),
            3 => guid.urn().to_string(),
            _ => guid.braced().to_string(),
        };
        if escape {
            // The first character as an escape: the same UUID.
            let first = text.remove(0);
            text = format!("\\u{:04x}{text}", first as u32);
        }
        valid(format!("\"{text}\""), json!(guid))
    });
    prop_oneof![
        6 => forms,
        1 => prop::sample::select(&["\"not-a-uuid\"", "\"1234\"", "\"\"",
            "\"123e4567-e89b-12d3-a456-42661417400g\""][..]).prop_map(invalid),
        1 => spoilt(lone_surrogate()).prop_map(invalid),
        1 => wrong_type(),
    ]
    .boxed()
}

fn quantity() -> BoxedStrategy<Sample> {
    prop_oneof![
        4 => (1..=i32::MAX).prop_map(|n| valid(n.to_string(), json!(n))),
        1 => Just(valid("1", json!(1))),
        1 => Just(valid(i32::MAX.to_string(), json!(i32::MAX))),
        2 => prop::sample::select(&["0", "-0", "-7", "2147483648", "1.0", "1e2", "3E0",
            "99999999999999999999", "-99999999999999999999", "\"3\""][..]).prop_map(invalid),
        1 => not_a_number(),
    ]
    .boxed()
}

fn measure() -> BoxedStrategy<Sample> {
    let forms = (0u64..1_000_000, 0u8..6, -320i32..300).prop_map(|(n, form, exp)| {
        let text = match form {
            0 => n.to_string(),
            1 => format!("{}.{:03}", n / 1000, n % 1000),
            2 => format!("{n}e{exp}"),
            3 => format!("{}.{}E+{}", n % 10, n, exp.unsigned_abs() % 300),
            4 => format!("0.{n:06}e-{}", exp.unsigned_abs()),
            _ => u64::MAX.to_string(),
        };
        let n: f64 = text.parse().expect("a number");
        Sample {
            stored: n.is_finite().then(|| json!(n)),
            json: text,
        }
    });
    prop_oneof![
        6 => forms,
        1 => prop::sample::select(&["-0", "0.0", "1e308", "-0e5"][..])
            .prop_map(|t| valid(t, json!(t.parse::<f64>().expect("number")))),
        2 => prop::sample::select(&["-1", "-0.001", "1e400", "-1e400", "\"1\""][..]).prop_map(invalid),
        1 => not_a_number(),
    ]
    .boxed()
}

fn date() -> BoxedStrategy<Sample> {
    prop_oneof![
        4 => (1..=9999i32, 1..=12u32, 1..=28u32).prop_map(|(y, m, d)| {
            let text = format!("{y:04}-{m:02}-{d:02}");
            valid(format!("\"{text}\""), json!(text))
        }),
        1 => Just(valid("\"2024-02-29\"", json!("2024-02-29"))),
        2 => prop::sample::select(&["\"2023-02-29\"", "\"2024-1-5\"", "\"24-01-05\"",
            "\"2024-01-05T00:00:00\"", "\"+2024-01-05\"", "20240105"][..]).prop_map(invalid),
        1 => wrong_type(),
    ]
    .boxed()
}

fn status() -> BoxedStrategy<Sample> {
    const NAMES: [&str; 5] = ["planned", "active", "on_hold", "completed", "archived"];
    prop_oneof![
        4 => prop::sample::select(&NAMES[..]).prop_map(|n| valid(format!("\"{n}\""), json!(n))),
        1 => Just(valid("\"\\u0061ctive\"", json!("active"))),
        1 => prop::sample::select(&["\"Active\"", "\"done\"", "\"\""][..]).prop_map(invalid),
        1 => wrong_type(),
    ]
    .boxed()
}

/// A JSON value inside attributes: (text, value).
fn tree() -> impl Strategy<Value = (String, Value)> {
    let leaf = prop_oneof![
        Just(("null".to_owned(), Value::Null)),
        any::<bool>().prop_map(|b| (b.to_string(), json!(b))),
        any::<i64>().prop_map(|n| (n.to_string(), json!(n))),
        (-1e300..1e300f64).prop_map(|n| (format!("{n:e}"), json!(n))),
        chars(0..6).prop_map(|t| (
            encode(&t),
            json!(t.iter().map(|(c, _)| c).collect::<String>())
        )),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|items| {
                let texts: Vec<String> = items.iter().map(|(t, _)| t.clone()).collect();
                (
                    format!("[{}]", texts.join(", ")),
                    json!(items.into_iter().map(|(_, v)| v).collect::<Vec<_>>()),
                )
            }),
            object(inner),
        ]
    })
}

fn object(inner: impl Strategy<Value = (String, Value)>) -> impl Strategy<Value = (String, Value)> {
    prop::collection::vec((chars(1..5), inner), 0..4).prop_map(|members| {
        let mut texts = Vec::new();
        let mut value = Map::new();
        for (key, (text, member)) in members {
            let name: String = key.iter().map(|(c, _)| c).collect();
            // Keys once each: jsonb keeps the last of two, and that is not
            // what is being tested here.
            if !value.contains_key(&name) {
                value.insert(name, member);
                texts.push(format!("{}: {text}", encode(&key)));
            }
        }
        (format!("{{{}}}", texts.join(", ")), Value::Object(value))
    })
}

fn nested(depth: usize) -> String {
    format!(
        "{{\"a\":{}1{}}}",
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    )
}

fn attributes() -> BoxedStrategy<Sample> {
    let deepest: Value = serde_json::from_str(&nested(100)).unwrap_or(Value::Null);
    prop_oneof![
        6 => object(tree()).prop_map(|(text, value)| valid(text, value)),
        1 => Just(valid(nested(100), deepest)),
        1 => Just(invalid(nested(101))),
        1 => spoilt(Just("\\u0000")).prop_map(|s| invalid(format!("{{\"k\": {s}}}"))),
        1 => spoilt(Just("\\u0000")).prop_map(|s| invalid(format!("{{{s}: 1}}"))),
        1 => spoilt(lone_surrogate()).prop_map(|s| invalid(format!("{{\"k\": [{s}]}}"))),
        1 => spoilt(lone_surrogate()).prop_map(|s| invalid(format!("{{{s}: 1}}"))),
        1 => prop::sample::select(&["{\"n\": 1e-20000}", "{\"n\": [0e1001]}", "{\"n\": {\"m\": 1E+1001}}"][..]).prop_map(invalid),
        1 => prop::sample::select(&["[1]", "\"{}\"", "3", "true"][..]).prop_map(invalid),
    ]
    .boxed()
}

pub fn sample(kind: Kind) -> BoxedStrategy<Sample> {
    match kind {
        Kind::Uuid => uuid(),
        Kind::Text(max, non_blank) => text(max, non_blank),
        Kind::Status => status(),
        Kind::Date => date(),
        Kind::Quantity => quantity(),
        Kind::Measure => measure(),
        Kind::Attributes => attributes(),
    }
}

/// One item of a body.
#[derive(Debug, Clone)]
pub struct ItemCase {
    /// (key's JSON text, value's JSON text), in order.
    members: Vec<(String, String)>,
    /// The text of an item that is not an object.
    other: Option<&'static str>,
    space: &'static str,
    /// Whether the first member is the `guid`.
    guid_member: bool,
    /// The fields a refusal must name (`None`: the item as a whole).
    pub errors: BTreeSet<Option<&'static str>>,
    /// The GUID the item gives, if it gives a valid one.
    pub given: Option<Uuid>,
    /// For a valid item, each column's value (`guid` when given).
    pub stored: Map<String, Value>,
}

impl ItemCase {
    pub fn valid(&self) -> bool {
        self.errors.is_empty()
    }

    fn render(&self) -> String {
        if let Some(other) = self.other {
            return other.to_owned();
        }
        let s = self.space;
        let members: Vec<String> = self
            .members
            .iter()
            .map(|(key, value)| format!("{s}{key}{s}:{s}{value}{s}"))
            .collect();
        format!("{{{}}}", members.join(","))
    }
}

/// A key spelt with some characters escaped: the same name.
fn key(name: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::bool::weighted(0.1), name.len())
        .prop_map(move |escapes| encode(&name.chars().zip(escapes).collect::<Vec<_>>()))
}

/// One field as a valid item has it — (key, value; `None` absent, `null`
/// if so drawn) — and a value that breaks its rule.
fn member(
    name: &'static str,
    kind: Kind,
    required: bool,
) -> impl Strategy<Value = (String, Option<Sample>, Sample)> {
    let good = sample(kind).prop_filter("valid", |s| s.stored.is_some());
    let bad = sample(kind).prop_filter("invalid", |s| s.stored.is_none());
    let absent = if required { 0 } else { 2 };
    let good = prop_oneof![
        6 => good.prop_map(Some),
        absent => Just(Some(invalid("null"))),
        absent => Just(None),
    ];
    (key(name), good, bad)
}

/// What makes an item invalid, if anything.
#[derive(Debug, Clone, Copy)]
enum Spoil {
    Value(usize),
    Missing(usize),
    Unknown(&'static str),
    /// The field named again, with the same value.
    Repeated(usize),
    /// The field named again, with a value that breaks its rule.
    RepeatedBadly(usize),
    NotAnObject(&'static str),
}

fn spoil(fields: usize) -> impl Strategy<Value = Option<Spoil>> {
    let unknown = prop::sample::select(&["colour", "Mark", "guid "][..]);
    let other =
        prop::sample::select(&["[1, 2]", "\"item\"", "3", "null", "\"\\udc00\"", "1e400"][..]);
    let how = prop_oneof![
        5 => (0..fields).prop_map(Spoil::Value),
        1 => (0..fields).prop_map(Spoil::Missing),
        1 => unknown.prop_map(Spoil::Unknown),
        1 => (0..fields).prop_map(Spoil::Repeated),
        1 => (0..fields).prop_map(Spoil::RepeatedBadly),
        1 => other.prop_map(Spoil::NotAnObject),
    ];
    prop::option::weighted(0.35, how)
}

fn default_of(kind: Kind) -> Value {
    match kind {
        Kind::Status => json!("active"),
        Kind::Quantity => json!(1),
        _ => Value::Null,
    }
}

fn item(entity: Entity) -> impl Strategy<Value = ItemCase> {
    let fields = spec(entity);
    let members: Vec<_> = fields.iter().map(|&(n, k, r)| member(n, k, r)).collect();
    let space = prop::sample::select(&["", " ", "\n  ", "\t", "\r\n"][..]);
    (members, spoil(fields.len()), space).prop_map(move |(members, spoil, space)| {
        let mut case = ItemCase {
            members: Vec::new(),
            other: None,
            space,
            guid_member: false,
            errors: BTreeSet::new(),
            given: None,
            stored: Map::new(),
        };
        // Each field's member, and a value that breaks its rule.
        let mut named = Vec::new();
        for (at, (&(name, kind, required), (key, good, bad))) in
            fields.iter().zip(members).enumerate()
        {
            let value = match spoil {
                Some(Spoil::Value(i)) if i == at => Some(bad.clone()),
                Some(Spoil::Missing(i)) if i == at && required => None,
                _ => good,
            };
            case.guid_member |= at == 0 && value.is_some();
            named.push(
                value
                    .as_ref()
                    .map(|_| (case.members.len(), key.clone(), bad.json)),
            );
            let stored = match value {
                None => None,
                Some(value) => {
                    case.members.push((key, value.json.clone()));
                    if value.json != "null" && value.stored.is_none() {
                        case.errors.insert(Some(name));
                        continue;
                    }
                    value.stored
                }
            };
            match stored {
                Some(stored) => {
                    if name == "guid" {
                        case.given = stored.as_str().and_then(|s| s.parse().ok());
                    }
                    case.stored.insert(name.into(), stored);
                }
                None if required => {
                    case.errors.insert(Some(name));
                }
                None if name == "guid" => {}
                None => {
                    case.stored.insert(name.into(), default_of(kind));
                }
            }
        }
        // Across fields, once every field is valid.
        if let (true, Some(Value::String(start)), Some(Value::String(end))) = (
            case.errors.is_empty(),
            case.stored.get("start_date"),
            case.stored.get("end_date"),
        ) {
            if end < start {
                case.errors.insert(Some("end_date"));
            }
        }
        let again = |i: usize| named[i].clone().map(|(at, key, bad)| (i, at, key, bad));
        match spoil {
            Some(Spoil::Unknown(key)) => {
                case.members.push((format!("\"{key}\""), "1".into()));
                case.errors.insert(Some(key));
            }
            Some(Spoil::Repeated(i)) => {
                if let Some((i, at, _, _)) = again(i) {
                    case.members.push(case.members[at].clone());
                    case.errors.insert(Some(fields[i].0));
                }
            }
            Some(Spoil::RepeatedBadly(i)) => {
                if let Some((i, _, key, bad)) = again(i) {
                    case.members.push((key, bad));
                    case.errors.insert(Some(fields[i].0));
                }
            }
            Some(Spoil::NotAnObject(text)) => {
                case.other = Some(text);
                case.given = None;
                case.errors = [None].into();
            }
            _ => {}
        }
        case
    })
}

/// A body of `entity` items.
#[derive(Debug, Clone)]
pub struct BodyCase {
    pub entity: Entity,
    pub items: Vec<ItemCase>,
    pub json: String,
}

impl BodyCase {
    pub fn valid(&self) -> bool {
        self.items.iter().all(ItemCase::valid)
    }

    /// The (item, field) pairs a refusal must list.
    pub fn errors(&self) -> Vec<(usize, Option<String>)> {
        let mut errors: Vec<(usize, Option<String>)> = self
            .items
            .iter()
            .enumerate()
            .flat_map(|(i, item)| item.errors.iter().map(move |f| (i, f.map(str::to_owned))))
            .collect();
        errors.sort();
        errors
    }
}

pub fn body(entity: Entity, items: std::ops::Range<usize>) -> impl Strategy<Value = BodyCase> {
    let same_guid = prop::bool::weighted(0.1);
    (prop::collection::vec(item(entity), items), same_guid).prop_map(move |(mut items, same)| {
        let first = items.first().and_then(|i| i.given);
        if let (true, Some(guid)) = (same && items.len() > 1 && items[1].valid(), first) {
            // The second item gives the first one's GUID.
            let second = &mut items[1];
            let given = ("\"guid\"".to_owned(), format!("\"{guid}\""));
            if second.guid_member {
                second.members[0] = given;
            } else {
                second.members.insert(0, given);
            }
            second.errors.insert(Some("guid"));
        }
        let texts: Vec<String> = items.iter().map(ItemCase::render).collect();
        BodyCase {
            entity,
            json: format!("[\n{}\n]", texts.join(",\n")),
            items,
        }
    })
}

/// Whether a column's value is the one expected: numbers as doubles (jsonb
/// and `to_jsonb` spell them their own way), objects whatever their key
/// order.
pub fn same(stored: &Value, expected: &Value) -> bool {
    match (stored, expected) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
        }
        _ => stored == expected,
    }
}
