//! The five entities: their types and validation. No I/O here.

mod attributes;
mod entity;
mod fast;
pub mod guid_list;
mod items;
mod scan;
pub mod schema;
mod validate;

pub use attributes::Attributes;
pub use entity::{Entity, UnknownEntity};
pub use items::{
    Article, Assembly, Batch, Component, Piece, Project, ProjectStatus, Reference, SyncItem,
};
pub use scan::Manifest;
pub use validate::{parse_batch, parse_submission, BatchError, FieldError, Parsed};
