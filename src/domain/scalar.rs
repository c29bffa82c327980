//! A JSON value as serde_json hands it to a field's type.

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::{borrow::Cow, fmt};

use super::errors::Problem;

/// A JSON value as far as a field needs to know it: arrays and objects are
/// never a valid field value here, so their content is skipped.
#[derive(Debug)]
pub enum Scalar<'de> {
    Null,
    Bool,
    /// An integer token ≥ 0.
    Unsigned(u64),
    /// An integer token < 0.
    Negative(i64),
    /// Any other number (a fraction, an exponent, `-0`, or past 64 bits).
    Float(f64),
    Text(Cow<'de, str>),
    Array,
    Object,
}

impl<'de> Scalar<'de> {
    pub(super) fn text(self, expected: &'static str) -> Result<Cow<'de, str>, Problem> {
        match self {
            Scalar::Text(text) => Ok(text),
            _ => Err(expected.into()),
        }
    }
}

pub(super) struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Bool)
    }

    fn visit_u64<E>(self, n: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Unsigned(n))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Negative(n))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Float(n))
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Text(Cow::Borrowed(text)))
    }

    fn visit_str<E>(self, text: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Text(Cow::Owned(text.to_owned())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}
