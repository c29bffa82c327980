//! Which fields each entity accepts, and what each field must look like.
//! Validation walks these tables so that every error of a batch is found,
//! not just the first one serde would stop at.

use super::{Entity, ProjectStatus};

/// The shape a field's value must have.
#[derive(Debug, Clone, Copy)]
pub enum FieldKind {
    /// A UUID string.
    Uuid,
    /// A string of at most `max` characters.
    Text { max: usize },
    /// One of a fixed set of strings.
    OneOf(&'static [&'static str]),
    /// An ISO-8601 calendar date (`YYYY-MM-DD`).
    Date,
    /// An integer ≥ 1 that fits a 32-bit column.
    Quantity,
    /// A finite number ≥ 0.
    Measure,
    /// Any JSON object.
    Object,
}

/// One accepted top-level field of an item.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: FieldKind,
    pub required: bool,
}

const fn required(name: &'static str, kind: FieldKind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const fn optional(name: &'static str, kind: FieldKind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

/// Limits from the contract, in characters.
pub const CODE: FieldKind = FieldKind::Text { max: 64 };
pub const NAME: FieldKind = FieldKind::Text { max: 255 };
pub const TEXT: FieldKind = FieldKind::Text { max: 4000 };

/// Fields every entity has.
const COMMON: [Field; 3] = [
    optional("guid", FieldKind::Uuid),
    required("company_guid", FieldKind::Uuid),
    optional("attributes", FieldKind::Object),
];

const PROJECT: [Field; 6] = [
    required("number", CODE),
    required("name", NAME),
    optional("description", TEXT),
    optional("status", FieldKind::OneOf(&ProjectStatus::NAMES)),
    optional("start_date", FieldKind::Date),
    optional("end_date", FieldKind::Date),
];

const COMPONENT: [Field; 4] = [
    required("project_guid", FieldKind::Uuid),
    required("name", NAME),
    optional("component_type", TEXT),
    optional("description", TEXT),
];

const ASSEMBLY: [Field; 5] = [
    required("project_guid", FieldKind::Uuid),
    required("mark", CODE),
    optional("component_guid", FieldKind::Uuid),
    optional("name", NAME),
    optional("quantity", FieldKind::Quantity),
];

const PIECE: [Field; 8] = [
    required("assembly_guid", FieldKind::Uuid),
    required("mark", CODE),
    optional("article_guid", FieldKind::Uuid),
    optional("quantity", FieldKind::Quantity),
    optional("length_mm", FieldKind::Measure),
    optional("width_mm", FieldKind::Measure),
    optional("height_mm", FieldKind::Measure),
    optional("weight_kg", FieldKind::Measure),
];

const ARTICLE: [Field; 4] = [
    required("number", CODE),
    required("name", NAME),
    optional("unit", TEXT),
    optional("description", TEXT),
];

/// The fields an entity accepts besides the common ones.
pub fn entity_fields(entity: Entity) -> &'static [Field] {
    match entity {
        Entity::Projects => &PROJECT,
        Entity::Components => &COMPONENT,
        Entity::Assemblies => &ASSEMBLY,
        Entity::Pieces => &PIECE,
        Entity::Articles => &ARTICLE,
    }
}

/// Every field an entity accepts, common ones first.
pub fn fields(entity: Entity) -> impl Iterator<Item = &'static Field> {
    COMMON.iter().chain(entity_fields(entity))
}
