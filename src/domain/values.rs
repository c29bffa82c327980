//! The types of an item's fields. Each carries its rule, so that holding a
//! value of the type means PostgreSQL can store it: a `Code` is a non-blank
//! text of at most 64 characters without U+0000, a `Quantity` an integer
//! ≥ 1 that fits an `integer` column, and so on.
//!
//! serde_json reads the value and hands it over as a [`Scalar`] (strings
//! borrowed from the body where they hold no escape); each type reads only
//! its own kind and says what is wrong with any other.

pub use super::scalar::Scalar;
use super::scalar::ScalarVisitor;
use chrono::NaiveDate;
use serde::de::Deserializer;
use serde_json::{json, value::RawValue, Value};
use std::borrow::Cow;
use uuid::Uuid;

pub use super::errors::Problem;

/// A field's value as read: `Ok(None)` for `null`, which stands for absent.
pub type Given<T> = Result<Option<T>, Problem>;

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
pub trait FieldValue<'de>: Sized {
    /// The column it is stored in.
    const COLUMN: ColumnType;

    /// The value, from anything but `null`.
    fn from_scalar(value: Scalar<'de>) -> Result<Self, Problem>;
    /// JSON Schema of the values it reads.
    fn schema() -> Value;
    /// The value as bound to its column.
    fn cell(&self) -> Cell<'_>;

    fn read<D: Deserializer<'de>>(d: D) -> Result<Given<Self>, D::Error> {
        Ok(match d.deserialize_any(ScalarVisitor)? {
            Scalar::Null => Ok(None),
            value => Self::from_scalar(value).map(Some),
        })
    }
}

/// What is wrong with a value serde_json cannot read at all — its grammar
/// is checked first, so only a string with an escape that stands for no
/// character, a number beyond a double, or an object with such a key (an
/// array's content is skipped unread) — said as `T` says it of a value of
/// that kind.
pub fn unreadable<'de, T: FieldValue<'de>>(json: &str) -> Problem {
    let like = match json.as_bytes().first() {
        Some(b'"') => return UNPAIRED_SURROGATE.into(),
        Some(b'{') => Scalar::Object,
        _ => Scalar::Float(f64::INFINITY),
    };
    T::from_scalar(like)
        .err()
        .unwrap_or_else(|| "cannot be read".into())
}

pub(super) const UNPAIRED_SURROGATE: &str =
    "must not contain an unpaired surrogate escape (\\uD800-\\uDFFF without its pair)";

/// PostgreSQL cannot store U+0000 in `text` or `jsonb`.
pub(super) const NUL: &str = "must not contain the NUL character (U+0000)";

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

    fn from_scalar(value: Scalar<'a>) -> Result<Self, Problem> {
        let text = value.text("must be a string")?;
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

    fn from_scalar(value: Scalar<'a>) -> Result<Self, Problem> {
        let text = value.text("must be a UUID string")?;
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

    fn from_scalar(value: Scalar<'a>) -> Result<Self, Problem> {
        let text = value.text("must be a date string (YYYY-MM-DD)")?;
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

const INTEGER: &str =
    "must be an integer from 1 to 2147483647, written without a fraction or exponent";

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

    fn from_scalar(value: Scalar<'a>) -> Result<Self, Problem> {
        match value {
            Scalar::Unsigned(0) | Scalar::Negative(_) => Err("must be at least 1".into()),
            Scalar::Unsigned(n) => i32::try_from(n)
                .map(Quantity)
                .map_err(|_| format!("must be at most {}", i32::MAX).into()),
            // `3.0`, `3e0` and integers past 64 bits: not an integer token.
            _ => Err(INTEGER.into()),
        }
    }

    fn schema() -> Value {
        json!({"type": "integer", "minimum": 1, "maximum": i32::MAX})
    }

    fn cell(&self) -> Cell<'_> {
        Cell::Int4(self.0)
    }
}

const MEASURE: &str = "must be a finite number ≥ 0";

/// A length or weight: a finite number ≥ 0, as the double nearest to the
/// decimal sent (serde_json's `float_roundtrip` rounds correctly; the worker
/// reads the same text the same way, so the value stored is the one read
/// here).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measure(pub f64);

impl<'a> FieldValue<'a> for Measure {
    const COLUMN: ColumnType = ColumnType::Float8;

    fn from_scalar(value: Scalar<'a>) -> Result<Self, Problem> {
        let n = match value {
            Scalar::Unsigned(n) => n as f64,
            Scalar::Float(n) => n,
            Scalar::Negative(_) => return Err(MEASURE.into()),
            _ => return Err("must be a number".into()),
        };
        // `-0` is ≥ 0.
        if n >= 0.0 && n.is_finite() {
            Ok(Measure(n))
        } else {
            Err(MEASURE.into())
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

    fn from_scalar(value: Scalar<'a>) -> Result<Self, Problem> {
        let text = value.text("must be a string")?;
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
}
