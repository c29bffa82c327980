//! The five entities: their fields, the rules their values obey, and the
//! one reader of a body of items. No I/O here.
//!
//! Layers, bottom up: `entity`, `errors`, `scalar` (a JSON value as a field
//! sees it), `values` (field types and their rules), `attributes`, `items`
//! (each entity described once), `deletion` (the key of a row to delete),
//! `batch`, `reader`; each uses only those below it.

mod attributes;
mod batch;
mod deletion;
mod entity;
mod errors;
mod items;
mod reader;
mod scalar;
mod values;

pub use attributes::{Attributes, MAX_DEPTH};
pub use batch::{Batch, Manifest, Work};
pub use deletion::Deletion;
pub use entity::{Entity, Operation, UnknownEntity};
pub use errors::{BatchError, FieldError};
pub use items::{fields, Article, Assembly, Component, Field, Item, Piece, Project, Reference};
pub use reader::read_items;
pub use values::{
    Cell, Code, ColumnType, FieldValue, Given, Label, Measure, Name, Note, ProjectStatus, Quantity,
    Scalar, Text,
};
