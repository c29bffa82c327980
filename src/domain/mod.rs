//! The five entities: their fields, the rules their values obey, and the
//! one reader of a body of items. No I/O here.
//!
//! Layers, bottom up: `values` (field types and their rules), `attributes`,
//! `items` (each entity described once), `batch`, `reader`.

/// A serde visitor's methods for JSON's scalars other than strings (which
/// serde_json hands to `visit_bool`, `visit_i64`, `visit_u64`, `visit_f64`
/// and `visit_unit`), each answering `$answer(self)`.
macro_rules! visit_scalars {
    ($answer:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            $answer(self)
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            $answer(self)
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            $answer(self)
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            $answer(self)
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            $answer(self)
        }
    };
}

mod attributes;
mod batch;
mod entity;
mod items;
mod reader;
mod values;

pub use attributes::{Attributes, MAX_DEPTH};
pub use batch::{Batch, Manifest};
pub use entity::{Entity, UnknownEntity};
pub use items::{fields, Article, Assembly, Component, Field, Item, Piece, Project, Reference};
pub use reader::{read_items, BatchError, FieldError};
pub use values::{
    Cell, Code, ColumnType, FieldValue, Given, Label, Measure, Name, Note, ProjectStatus, Quantity,
    Scalar, Text,
};
