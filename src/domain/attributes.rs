//! An item's free-form `attributes`: kept as the JSON text the client sent
//! (bound to the `jsonb` column as it is), once serde_json has walked it
//! to make sure PostgreSQL can store it.

use super::values::{Cell, ColumnType, FieldValue, Given, Problem, Scalar, NUL};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, value::RawValue, Value};
use std::{borrow::Cow, cell::Cell as Slot, fmt};

/// How deeply objects and arrays may nest in attributes (an object of
/// scalars is one level): well within serde_json's recursion limit and
/// PostgreSQL's stack.
pub const MAX_DEPTH: usize = 100;

/// A JSON object that `jsonb` stores: no U+0000 in a string or key, no
/// unpaired surrogate escape, nesting within [`MAX_DEPTH`], numbers within
/// a double's range (I-JSON, RFC 7493).
#[derive(Clone)]
pub struct Attributes<'a>(Cow<'a, RawValue>);

impl<'a> Attributes<'a> {
    /// The JSON text.
    pub fn json(&self) -> &RawValue {
        &self.0
    }
}

impl<'a> FieldValue<'a> for Attributes<'a> {
    const COLUMN: ColumnType = ColumnType::Jsonb;

    /// Only for what is not an object: objects are read by `read`.
    fn from_scalar(_: Scalar<'a>) -> Result<Self, Problem> {
        Err("must be a JSON object".into())
    }

    fn read<D: Deserializer<'a>>(d: D) -> Result<Given<Self>, D::Error> {
        let raw = <&'a RawValue>::deserialize(d)?;
        let json = raw.get();
        if json == "null" {
            return Ok(Ok(None));
        }
        if !json.starts_with('{') {
            return Ok(Err("must be a JSON object".into()));
        }
        let checked = match may_break_a_rule(json) {
            true => check(json),
            false => Ok(()),
        };
        Ok(checked.map(|()| Some(Attributes(Cow::Borrowed(raw)))))
    }

    fn schema() -> Value {
        json!({"type": "object"})
    }

    fn cell(&self) -> Cell<'_> {
        Cell::Jsonb(&self.0)
    }
}

/// Whether JSON text could break a rule of [`Attributes`] at all; if not,
/// the walk below is skipped, as it costs twice the reading of the text.
/// The text is valid JSON, so it holds no raw control character and is
/// valid UTF-8: only an escape can stand for U+0000 or an unpaired
/// surrogate, and only an exponent (a digit, then `e`) can make a number
/// beyond a double in text too short to nest past the limit or hold a
/// 300-digit number. Longer text, and anything that looks like one of these
/// (in a string too), is left to the walk, which decides.
fn may_break_a_rule(json: &str) -> bool {
    let bytes = json.as_bytes();
    bytes.len() > 2 * MAX_DEPTH
        || memchr::memchr(b'\\', bytes).is_some()
        || memchr::memchr2_iter(b'e', b'E', bytes)
            .any(|at| at > 0 && bytes[at - 1].is_ascii_digit())
}

/// Walks `json` with serde_json, which decodes every string and key as
/// `jsonb` will (an unpaired surrogate fails there as it would in
/// PostgreSQL), allocating nothing for text without escapes.
fn check(json: &str) -> Result<(), Problem> {
    let problem = Slot::new(None);
    let mut reader = serde_json::Deserializer::from_str(json);
    let walk = Walk {
        depth: 0,
        problem: &problem,
    };
    let walked = de::DeserializeSeed::deserialize(walk, &mut reader).and_then(|()| reader.end());
    match (walked, problem.take()) {
        (_, Some(problem)) => Err(problem),
        (Ok(()), None) => Ok(()),
        (Err(e), None) => Err(format!("is not JSON that PostgreSQL can store ({e})").into()),
    }
}

/// One value `depth` levels down; the first rule broken goes to `problem`
/// and stops the walk.
#[derive(Clone, Copy)]
struct Walk<'p> {
    depth: usize,
    problem: &'p Slot<Option<Problem>>,
}

impl Walk<'_> {
    fn refuse<E: de::Error>(self, problem: &'static str) -> E {
        self.problem.set(Some(problem.into()));
        E::custom(problem)
    }

    fn deeper<E: de::Error>(self) -> Result<Self, E> {
        if self.depth == MAX_DEPTH {
            return Err(self.refuse(DEEP));
        }
        Ok(Walk {
            depth: self.depth + 1,
            ..self
        })
    }
}

const DEEP: &str = "must not nest objects and arrays more than 100 levels deep";

impl<'de> de::DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    visit_scalars!(|_| Ok(()));

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        if s.contains('\0') {
            return Err(self.refuse(NUL));
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while map.next_key_seed(Key(self))?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// A key, read as a string so that serde_json decodes its escapes.
struct Key<'p>(Walk<'p>);

impl<'de> de::DeserializeSeed<'de> for Key<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self.0)
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
            r#"{"a": [1, {"b": "x"}], "c": null, "d": -0, "e": 1.5e300}"#,
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
            r#"{"a": [1e400]}"#,
            "[1]",
            "\"{\"",
        ] {
            assert!(verdict(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_text_that_cannot_break_a_rule_skips_the_walk() {
        assert!(!may_break_a_rule(
            r#"{"a": [1, 2.5, -0], "grade": "S355", "c": {}}"#
        ));
        let many_digits = format!("{{\"n\": {}}}", "9".repeat(301));
        for suspect in [
            r#"{"a": "\u0041"}"#,
            r#"{"n": 1e5}"#,
            r#"{"n": 2E-3}"#,
            &many_digits,
        ] {
            assert!(may_break_a_rule(suspect), "{suspect}");
        }
        assert!(may_break_a_rule(&nested(MAX_DEPTH + 1)));
        assert!(verdict(&format!("{{\"n\": {}}}", "9".repeat(400))).is_err());
    }

    #[test]
    fn nesting_is_bounded() {
        assert_eq!(verdict(&nested(MAX_DEPTH)), Ok(()));
        assert_eq!(verdict(&nested(MAX_DEPTH + 1)), Err(DEEP.into()));
        assert_eq!(verdict(&nested(10_000)), Err(DEEP.into()));
    }
}
