//! The types of an item's fields. Each reads itself from the JSON text of
//! one value and carries its rule, so that holding a value of the type
//! means PostgreSQL can store it: a `Code` is a non-blank text of at most
//! 64 characters without U+0000, a `Quantity` an integer ≥ 1 that fits an
//! `integer` column, and so on.
//!
//! Values arrive as the text serde_json has already checked as JSON (see
//! `reader`); what kind of value it is shows in its first byte, and each
//! type reads only its own kind.

use chrono::NaiveDate;
use serde_json::{json, value::RawValue, Value};
use std::borrow::Cow;
use uuid::Uuid;

/// What is wrong with one field's value, in words for the client.
pub type Problem = Cow<'static, str>;

/// The column type a field is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Uuid,
    Text,
    Int4,
    Float8,
    Date,
    Jsonb,
}

/// One field's value as it is bound to its column.
#[derive(Debug, Clone, Copy)]
pub enum Cell<'a> {
    Uuid(Uuid),
    Text(&'a str),
    Int4(i32),
    Float8(f64),
    Date(NaiveDate),
    Jsonb(&'a RawValue),
}

/// A field's type: how it reads from JSON, how it is stored, how the
/// OpenAPI document describes it.
pub trait FieldValue<'a>: Sized {
    /// The column it is stored in.
    const COLUMN: ColumnType;

    /// Reads the JSON text of a value that is present and not `null`.
    fn read(json: &'a str) -> Result<Self, Problem>;
    /// JSON Schema of the values `read` accepts.
    fn schema() -> Value;
    /// The value as bound to its column.
    fn cell(&self) -> Cell<'_>;
}

/// The text of a JSON string, escapes decoded; `None` if `json` is not a
/// string. Most strings hold no escape and are borrowed as they are.
fn string(json: &str) -> Option<Result<Cow<'_, str>, Problem>> {
    let inner = json.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Ok(Cow::Borrowed(inner)));
    }
    // The outer parse checked the escapes' syntax but not what they stand
    // for: decoding fails only on a surrogate escape without its pair.
    Some(
        serde_json::from_str::<String>(json)
            .map(Cow::Owned)
            .map_err(|_| Problem::Borrowed(UNPAIRED_SURROGATE)),
    )
}

const UNPAIRED_SURROGATE: &str =
    "must not contain an unpaired surrogate escape (\\uD800-\\uDFFF without its pair)";

/// PostgreSQL cannot store U+0000 in `text` or `jsonb`.
pub(super) const NUL: &str = "must not contain the NUL character (U+0000)";

/// The text of a JSON number; `None` if `json` is not a number.
fn number(json: &str) -> Option<&str> {
    json.starts_with(|c: char| c == '-' || c.is_ascii_digit())
        .then_some(json)
}

/// A text of at most `MAX` characters without U+0000; non-blank (not empty,
/// not only whitespace) when `NON_BLANK`. Stored as given, not trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a, const MAX: usize, const NON_BLANK: bool>(pub Cow<'a, str>);

/// `number` and `mark`.
pub type Code<'a> = Text<'a, 64, true>;
/// A required `name`.
pub type Name<'a> = Text<'a, 255, true>;
/// An optional `name` (an assembly's), which may be blank.
pub type Label<'a> = Text<'a, 255, false>;
/// Descriptions, types, units.
pub type Note<'a> = Text<'a, 4000, false>;

impl<const MAX: usize, const NON_BLANK: bool> Text<'_, MAX, NON_BLANK> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'a, const MAX: usize, const NON_BLANK: bool> FieldValue<'a> for Text<'a, MAX, NON_BLANK> {
    const COLUMN: ColumnType = ColumnType::Text;

    fn read(json: &'a str) -> Result<Self, Problem> {
        let text = string(json).ok_or("must be a string")??;
        // Raw control characters are not JSON: only an escape holds a NUL.
        if matches!(text, Cow::Owned(_)) && text.contains('\0') {
            return Err(NUL.into());
        }
        if NON_BLANK && text.trim().is_empty() {
            return Err("must not be empty or blank".into());
        }
        // At most `MAX` bytes is at most `MAX` characters: counting is rare.
        if text.len() > MAX {
            let chars = text.chars().count();
            if chars > MAX {
                return Err(format!("must be at most {MAX} characters (got {chars})").into());
            }
        }
        Ok(Text(text))
    }

    fn schema() -> Value {
        let mut schema = json!({"type": "string", "maxLength": MAX, "pattern": "^[^\\u0000]*$"});
        if NON_BLANK {
            schema["allOf"] = json!([{"pattern": "\\S"}]);
        }
        schema
    }

    fn cell(&self) -> Cell<'_> {
        Cell::Text(&self.0)
    }
}

impl<'a> FieldValue<'a> for Uuid {
    const COLUMN: ColumnType = ColumnType::Uuid;

    fn read(json: &'a str) -> Result<Self, Problem> {
        let text = string(json).ok_or("must be a UUID string")??;
        Uuid::try_parse(&text).map_err(|_| "is not a valid UUID".into())
    }

    fn schema() -> Value {
        json!({"type": "string", "format": "uuid"})
    }

    fn cell(&self) -> Cell<'_> {
        Cell::Uuid(*self)
    }
}

/// An ISO-8601 calendar date, exactly `YYYY-MM-DD`.
impl<'a> FieldValue<'a> for NaiveDate {
    const COLUMN: ColumnType = ColumnType::Date;

    fn read(json: &'a str) -> Result<Self, Problem> {
        let text = string(json).ok_or("must be a date string (YYYY-MM-DD)")??;
        parse_date(&text).ok_or_else(|| "is not a valid date (YYYY-MM-DD)".into())
    }

    fn schema() -> Value {
        json!({"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"})
    }

    fn cell(&self) -> Cell<'_> {
        Cell::Date(*self)
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

/// A count: an integer ≥ 1 that fits an `integer` column; 1 when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity(pub i32);

impl Default for Quantity {
    fn default() -> Self {
        Quantity(1)
    }
}

impl<'a> FieldValue<'a> for Quantity {
    const COLUMN: ColumnType = ColumnType::Int4;

    fn read(json: &'a str) -> Result<Self, Problem> {
        let integer = number(json).filter(|n| !n.contains(['.', 'e', 'E']));
        let text = integer.ok_or("must be an integer")?;
        // Past i64 either way, the sign tells which bound it broke.
        let n = text.parse::<i64>().unwrap_or(if text.starts_with('-') {
            i64::MIN
        } else {
            i64::MAX
        });
        if n < 1 {
            return Err("must be at least 1".into());
        }
        i32::try_from(n)
            .map(Quantity)
            .map_err(|_| format!("must be at most {}", i32::MAX).into())
    }

    fn schema() -> Value {
        json!({"type": "integer", "minimum": 1, "maximum": i32::MAX})
    }

    fn cell(&self) -> Cell<'_> {
        Cell::Int4(self.0)
    }
}

/// A length or weight: a finite number ≥ 0, as the double nearest to the
/// decimal sent (Rust's parser rounds correctly; the worker reads the same
/// text with it, so the value stored is the one read here).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measure(pub f64);

impl<'a> FieldValue<'a> for Measure {
    const COLUMN: ColumnType = ColumnType::Float8;

    fn read(json: &'a str) -> Result<Self, Problem> {
        let text = number(json).ok_or("must be a number")?;
        match text.parse::<f64>() {
            Ok(n) if n >= 0.0 && n.is_finite() => Ok(Measure(n)),
            _ => Err("must be a finite number ≥ 0".into()),
        }
    }

    fn schema() -> Value {
        json!({"type": "number", "minimum": 0})
    }

    fn cell(&self) -> Cell<'_> {
        Cell::Float8(self.0)
    }
}

/// Lifecycle state of a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProjectStatus {
    Planned,
    #[default]
    Active,
    OnHold,
    Completed,
    Archived,
}

impl ProjectStatus {
    pub const ALL: [ProjectStatus; 5] = [
        ProjectStatus::Planned,
        ProjectStatus::Active,
        ProjectStatus::OnHold,
        ProjectStatus::Completed,
        ProjectStatus::Archived,
    ];

    /// The spelling in bodies and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectStatus::Planned => "planned",
            ProjectStatus::Active => "active",
            ProjectStatus::OnHold => "on_hold",
            ProjectStatus::Completed => "completed",
            ProjectStatus::Archived => "archived",
        }
    }
}

impl<'a> FieldValue<'a> for ProjectStatus {
    const COLUMN: ColumnType = ColumnType::Text;

    fn read(json: &'a str) -> Result<Self, Problem> {
        let text = string(json).ok_or("must be a string")??;
        ProjectStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = ProjectStatus::ALL.iter().map(|s| s.as_str()).collect();
                format!("must be one of: {}", names.join(", ")).into()
            })
    }

    fn schema() -> Value {
        let names: Vec<&str> = ProjectStatus::ALL.iter().map(|s| s.as_str()).collect();
        json!({"type": "string", "enum": names})
    }

    fn cell(&self) -> Cell<'_> {
        Cell::Text(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn texts_decode_escapes_and_keep_their_rules() {
        fn read(json: &str) -> Result<String, Problem> {
            Code::read(json).map(|t| t.0.into_owned())
        }
        assert_eq!(read(r#""A\u0041\n""#).as_deref(), Ok("AA\n"));
        assert_eq!(read(r#""\ud83d\ude00""#).as_deref(), Ok("😀"));
        assert_eq!(read(r#""\udc00""#), Err(UNPAIRED_SURROGATE.into()));
        assert_eq!(read(r#""a\ud800b""#), Err(UNPAIRED_SURROGATE.into()));
        assert_eq!(read(r#""a\u0000""#), Err(NUL.into()));
        assert!(read(r#"" \t""#).is_err());
        assert!(Note::read(r#"" ""#).is_ok());
        assert!(read(&format!("\"{}\"", "é".repeat(64))).is_ok());
        assert!(read(&format!("\"{}\"", "é".repeat(65))).is_err());
        assert!(read("12").is_err());
    }

    #[test]
    fn numbers_are_read_by_their_rules() {
        assert_eq!(Quantity::read("7"), Ok(Quantity(7)));
        for bad in [
            "0",
            "-0",
            "-3",
            "1.0",
            "1e2",
            "2147483648",
            "99999999999999999999",
        ] {
            assert!(Quantity::read(bad).is_err(), "{bad}");
        }
        assert_eq!(Quantity::read("2147483647"), Ok(Quantity(i32::MAX)));
        assert_eq!(Measure::read("1.5e3"), Ok(Measure(1500.0)));
        assert_eq!(Measure::read("-0"), Ok(Measure(-0.0)));
        for bad in ["-0.001", "1e400", "\"1\"", "true"] {
            assert!(Measure::read(bad).is_err(), "{bad}");
        }
    }
}
