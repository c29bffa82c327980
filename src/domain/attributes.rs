//! An item's free-form `attributes`: kept as the JSON text the client sent
//! (bound to the `jsonb` column as it is), once its text has been checked
//! for anything `jsonb` would refuse.

use super::values::{
    Cell, ColumnType, FieldValue, Given, Problem, Scalar, NUL, UNPAIRED_SURROGATE,
};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, value::RawValue, Value};
use std::{cell::Cell as Slot, fmt};

/// How deeply objects and arrays may nest in attributes (an object of
/// scalars is one level): well within serde_json's recursion limit and
/// PostgreSQL's stack.
pub const MAX_DEPTH: usize = 100;

/// A JSON object that `jsonb` stores: no U+0000 in a string or key, no
/// unpaired surrogate escape, nesting within [`MAX_DEPTH`], numbers that
/// `numeric` holds (see `number`).
#[derive(Clone)]
pub struct Attributes<'a>(&'a RawValue);

impl<'a> Attributes<'a> {
    /// The JSON text.
    pub fn json(&self) -> &RawValue {
        self.0
    }
}

impl<'a> FieldValue<'a> for Attributes<'a> {
    const COLUMN: ColumnType = ColumnType::Jsonb;

    /// Only for what is not an object: objects are read by `read`.
    fn from_scalar(_: Scalar<'a>) -> Result<Self, Problem> {
        Err(NOT_AN_OBJECT.into())
    }

    fn read<D: Deserializer<'a>>(d: D) -> Result<Given<Self>, D::Error> {
        let raw = <&'a RawValue>::deserialize(d)?;
        let json = raw.get();
        if json == "null" {
            return Ok(Ok(None));
        }
        if !json.starts_with('{') {
            return Ok(Err(NOT_AN_OBJECT.into()));
        }
        let checked = match may_break_a_rule(json) {
            true => check(json, 0),
            false => Ok(()),
        };
        Ok(checked.map(|()| Some(Attributes(raw))))
    }

    fn schema() -> Value {
        json!({"type": "object"})
    }

    fn cell(&self) -> Cell<'_> {
        Cell::Jsonb(self.0)
    }
}

/// Whether JSON text could break a rule of [`Attributes`] at all; if not,
/// the check below is skipped, as it costs more than reading the text.
/// The text is valid JSON, so it holds no raw control character and is
/// valid UTF-8: only an escape can stand for U+0000 or an unpaired
/// surrogate, and only an exponent (a digit, then `e`) can take a number
/// past `numeric`'s limits in text too short to nest past the limit or hold
/// a 1000-character number. Longer text, and anything that looks like one
/// of these (in a string too), is left to the check, which decides.
fn may_break_a_rule(json: &str) -> bool {
    let bytes = json.as_bytes();
    bytes.len() > 2 * MAX_DEPTH
        || memchr::memchr(b'\\', bytes).is_some()
        || memchr::memchr2_iter(b'e', b'E', bytes)
            .any(|at| at > 0 && bytes[at - 1].is_ascii_digit())
}

/// Checks one value's text, `depth` levels down; serde_json has checked its
/// grammar. Each container's members are taken as text and checked in turn,
/// so that every number is seen as written: `jsonb` keeps numbers as
/// `numeric`, which refuses what a double would round away (`1e-20000`).
fn check(json: &str, depth: usize) -> Result<(), Problem> {
    match json.as_bytes().first() {
        Some(b'{' | b'[') if depth == MAX_DEPTH => Err(DEEP.into()),
        Some(b'{' | b'[') => members(json, depth + 1),
        Some(b'"') => text(json),
        Some(b'-' | b'0'..=b'9') => number(json),
        _ => Ok(()),
    }
}

const NOT_AN_OBJECT: &str = "must be a JSON object";

const DEEP: &str = "must not nest objects and arrays more than 100 levels deep";

/// Only an escape can stand for U+0000 or an unpaired surrogate: the text
/// is valid UTF-8 and holds no raw control character.
fn text(json: &str) -> Result<(), Problem> {
    if !json.contains('\\') {
        return Ok(());
    }
    match serde_json::from_str::<String>(json) {
        Ok(text) if text.contains('\0') => Err(NUL.into()),
        Ok(_) => Ok(()),
        Err(_) => Err(UNPAIRED_SURROGATE.into()),
    }
}

/// A number `numeric` stores whatever its digits: at most 1000 characters
/// and an exponent within ±1000 keep it far inside `numeric`'s limits.
fn number(json: &str) -> Result<(), Problem> {
    let exponent = json.find(['e', 'E']).map(|at| &json[at + 1..]);
    let small = |e: &str| {
        e.trim_start_matches(['+', '-'])
            .parse::<u32>()
            .is_ok_and(|e| e <= 1000)
    };
    if json.len() <= 1000 && exponent.is_none_or(small) {
        Ok(())
    } else {
        Err("must hold numbers of at most 1000 characters, with an exponent within ±1000".into())
    }
}

/// The members of an object or array: each key, then each value's text.
fn members(json: &str, depth: usize) -> Result<(), Problem> {
    let problem = Slot::new(None);
    let mut reader = serde_json::Deserializer::from_str(json);
    let read = reader.deserialize_any(Members {
        depth,
        problem: &problem,
    });
    match (read, problem.take()) {
        (_, Some(problem)) => Err(problem),
        (Ok(()), None) => Ok(()),
        // Values are taken as text: only a key serde_json cannot decode.
        (Err(_), None) => Err(UNPAIRED_SURROGATE.into()),
    }
}

/// Reads a container's members; the first problem goes to `problem` and
/// stops the reading.
#[derive(Clone, Copy)]
struct Members<'p> {
    depth: usize,
    problem: &'p Slot<Option<Problem>>,
}

impl Members<'_> {
    fn value<E: de::Error>(self, json: &RawValue) -> Result<(), E> {
        check(json.get(), self.depth).map_err(|problem| self.refuse(problem))
    }

    fn refuse<E: de::Error>(self, problem: Problem) -> E {
        let error = E::custom(&problem);
        self.problem.set(Some(problem));
        error
    }
}

impl<'de> Visitor<'de> for Members<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object or an array")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<(), E> {
        match key.contains('\0') {
            true => Err(self.refuse(NUL.into())),
            false => Ok(()),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(json) = seq.next_element::<&RawValue>()? {
            self.value(json)?;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(self)?.is_some() {
            self.value(map.next_value::<&RawValue>()?)?;
        }
        Ok(())
    }
}

/// A key, read as a string so that serde_json decodes its escapes.
impl<'de> de::DeserializeSeed<'de> for Members<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

/// Equal when the texts are equal (the same value spelt differently is not).
impl PartialEq for Attributes<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl fmt::Debug for Attributes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(json: &str) -> Result<(), Problem> {
        let mut d = serde_json::Deserializer::from_str(json);
        Attributes::read(&mut d).expect("JSON").map(drop)
    }

    fn nested(depth: usize) -> String {
        format!(
            "{{\"a\":{}1{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    }

    #[test]
    fn only_storable_objects_are_attributes() {
        for good in [
            r#"{"a": [1, {"b": "x"}], "c": null, "d": -0, "e": 1.5e300, "f": [1e400, 1e-1000]}"#,
            r#"{"k\u00e9": "\ud83d\ude00", "q": "\"\\u0000\""}"#,
            "{}",
        ] {
            assert_eq!(verdict(good), Ok(()), "{good}");
        }
        assert_eq!(verdict(r#"{"a": "x\u0000"}"#), Err(NUL.into()));
        assert_eq!(verdict(r#"{"k\u0000": 1}"#), Err(NUL.into()));
        for bad in [
            r#"{"a": "\udc00"}"#,
            r#"{"a\ud800": 1}"#,
            r#"{"a": [1e-20000]}"#,
            r#"{"a": {"b": 0e1001}}"#,
            "[1]",
            "\"{\"",
        ] {
            assert!(verdict(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_text_that_cannot_break_a_rule_skips_the_check() {
        assert!(!may_break_a_rule(
            r#"{"a": [1, 2.5, -0], "grade": "S355", "c": {}}"#
        ));
        for suspect in [r#"{"a": "\u0041"}"#, r#"{"n": 1e5}"#, r#"{"n": 2E-3}"#] {
            assert!(may_break_a_rule(suspect), "{suspect}");
        }
        assert!(may_break_a_rule(&nested(MAX_DEPTH + 1)));
        let long = format!("{{\"n\": {}}}", "9".repeat(1001));
        assert!(may_break_a_rule(&long) && verdict(&long).is_err());
    }

    #[test]
    fn nesting_is_bounded() {
        assert_eq!(verdict(&nested(MAX_DEPTH)), Ok(()));
        assert_eq!(verdict(&nested(MAX_DEPTH + 1)), Err(DEEP.into()));
        assert_eq!(verdict(&nested(10_000)), Err(DEEP.into()));
    }
}
