//! An item's free-form `attributes`, kept as the JSON text the client sent.
//!
//! The service never looks inside them beyond two rules (an object, no
//! NUL), so building a `serde_json::Value` tree for every item — and
//! cloning it to bind it — was pure cost on the api and the worker alike.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

/// Raw JSON text of an item's attributes.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Attributes(Box<RawValue>);

impl Attributes {
    /// The JSON text.
    pub fn json(&self) -> &RawValue {
        &self.0
    }

    /// True when the text is a JSON object.
    pub fn is_object(&self) -> bool {
        self.0.get().trim_start().starts_with('{')
    }

    /// True when a string (or key) in it holds U+0000, which PostgreSQL
    /// cannot store.
    pub fn contains_nul(&self) -> bool {
        contains_nul(self.0.get())
    }

    /// True when objects and arrays nest more than `limit` levels deep in it
    /// (an object of scalars is one level). Kept as text, attributes escape
    /// the parser's recursion limit, so this stands in for it.
    pub fn nests_deeper_than(&self, limit: usize) -> bool {
        nests_deeper_than(self.0.get(), limit)
    }
}

/// [`Attributes::contains_nul`] on JSON text. In JSON text that character
/// can only be the escape `\u0000`; escapes never overlap, so one pass over
/// them finds it.
pub(super) fn contains_nul(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(offset) = memchr::memchr(b'\\', &bytes[at..]) {
        let escape = at + offset;
        if bytes.get(escape + 1) == Some(&b'u') {
            if bytes.get(escape + 2..escape + 6) == Some(b"0000") {
                return true;
            }
            at = escape + 6;
        } else {
            at = escape + 2;
        }
        if at >= bytes.len() {
            break;
        }
    }
    false
}

/// [`Attributes::nests_deeper_than`] on JSON text.
pub(super) fn nests_deeper_than(text: &str, limit: usize) -> bool {
    // Each level takes an opening and a closing bracket, so short text
    // cannot nest deeply; and depth never exceeds the number of opening
    // brackets, much cheaper to count than telling strings from
    // structure. Only text that passes both is walked.
    if text.len() <= 2 * limit {
        return false;
    }
    let brackets = text.bytes().filter(|&b| b == b'{' || b == b'[').count();
    brackets > limit && depth(text) > limit
}

/// How deeply objects and arrays nest in JSON text.
fn depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    deepest
}

impl From<&serde_json::Value> for Attributes {
    fn from(value: &serde_json::Value) -> Self {
        Attributes(serde_json::value::to_raw_value(value).expect("a Value always serialises"))
    }
}

/// Equal when the texts are equal (the same value spelt differently is not).
impl PartialEq for Attributes {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(text: &str) -> Attributes {
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn nul_is_found_as_the_escape_only() {
        assert!(parsed(r#"{"a": [1, {"b": "x\u0000"}]}"#).contains_nul());
        assert!(parsed(r#"{"k\u0000": 1}"#).contains_nul());
        assert!(parsed(r#"{"a": "\\\u0000"}"#).contains_nul());
        assert!(!parsed(r#"{"a": "\\u0000"}"#).contains_nul());
        assert!(parsed(r#"{"a": "\u00001"}"#).contains_nul());
        assert!(!parsed(r#"{"a": "\u0041\u00e9"}"#).contains_nul());
        assert!(!parsed(r#"{"a": "\"", "b": "\\"}"#).contains_nul());
        assert!(Attributes::from(&json!({"k": "a\u{0}"})).contains_nul());
    }

    #[test]
    fn depth_counts_nesting_outside_strings() {
        assert_eq!(depth("{}"), 1);
        assert_eq!(depth(r#"{"a": [1, {"b": "[[{{"}], "c": {}}"#), 3);
        assert_eq!(depth(r#"{"a": "\"[", "b": "\\", "c": [[]]}"#), 3);
    }

    #[test]
    fn nesting_is_compared_with_a_limit() {
        let text = format!(
            "{{\"a\": {}1{}, \"b\": \"[[[[\"}}",
            "[".repeat(3),
            "]".repeat(3)
        );
        let attributes = parsed(&text);
        assert!(attributes.nests_deeper_than(3));
        assert!(!attributes.nests_deeper_than(4));
        assert!(!parsed(r#"{"b": "[[[[[["}"#).nests_deeper_than(1));
        // The tightest nesting there is: two bytes a level.
        assert!(parsed("[[[]]]").nests_deeper_than(2));
        assert!(!parsed("[[[]]]").nests_deeper_than(3));
    }

    #[test]
    fn only_objects_are_objects() {
        assert!(parsed(r#" {"a": 1}"#).is_object());
        for text in ["[1]", "\"{\"", "1", "null", "true"] {
            assert!(!parsed(text).is_object(), "{text}");
        }
    }
}
