//! The typed, validated form of each entity's items, as carried in queue
//! messages and written to the database.

use super::{Attributes, Entity};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Lifecycle state of a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProjectStatus {
    Planned,
    #[default]
    Active,
    OnHold,
    Completed,
    Archived,
}

impl ProjectStatus {
    /// Every accepted spelling, for validation messages.
    pub const NAMES: [&'static str; 5] = ["planned", "active", "on_hold", "completed", "archived"];

    /// The stored spelling.
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

/// A project: the root every other record hangs from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    #[serde(default = "Uuid::now_v7")]
    pub guid: Uuid,
    pub company_guid: Uuid,
    pub number: String,
    pub name: String,
    pub description: Option<String>,
    #[serde(default)]
    pub status: ProjectStatus,
    #[serde(default, deserialize_with = "strict_date")]
    pub start_date: Option<NaiveDate>,
    #[serde(default, deserialize_with = "strict_date")]
    pub end_date: Option<NaiveDate>,
    pub attributes: Option<Attributes>,
}

/// A component of a project (a building part, a system, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    #[serde(default = "Uuid::now_v7")]
    pub guid: Uuid,
    pub company_guid: Uuid,
    pub project_guid: Uuid,
    pub name: String,
    pub component_type: Option<String>,
    pub description: Option<String>,
    pub attributes: Option<Attributes>,
}

/// An assembly: pieces joined under one mark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assembly {
    #[serde(default = "Uuid::now_v7")]
    pub guid: Uuid,
    pub company_guid: Uuid,
    pub project_guid: Uuid,
    pub component_guid: Option<Uuid>,
    pub mark: String,
    pub name: Option<String>,
    #[serde(default = "one")]
    pub quantity: i32,
    pub attributes: Option<Attributes>,
}

/// A single manufactured piece of an assembly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piece {
    #[serde(default = "Uuid::now_v7")]
    pub guid: Uuid,
    pub company_guid: Uuid,
    pub assembly_guid: Uuid,
    pub article_guid: Option<Uuid>,
    pub mark: String,
    #[serde(default = "one")]
    pub quantity: i32,
    pub length_mm: Option<f64>,
    pub width_mm: Option<f64>,
    pub height_mm: Option<f64>,
    pub weight_kg: Option<f64>,
    pub attributes: Option<Attributes>,
}

/// A catalogue article (profile, plate, bolt …) pieces are made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Article {
    #[serde(default = "Uuid::now_v7")]
    pub guid: Uuid,
    pub company_guid: Uuid,
    pub number: String,
    pub name: String,
    pub unit: Option<String>,
    pub description: Option<String>,
    pub attributes: Option<Attributes>,
}

fn one() -> i32 {
    1
}

/// Dates exactly as validation accepts them (`YYYY-MM-DD`); chrono's own
/// deserializer is more lenient.
fn strict_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    super::validate::parse_date(&text)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("is not a valid date (YYYY-MM-DD)"))
}

/// A reference from an item to another entity, which must not belong to
/// another company.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference {
    pub target: Entity,
    pub guid: Uuid,
}

/// What every item has in common, whatever its entity.
pub trait SyncItem {
    /// The entity this item type belongs to.
    const ENTITY: Entity;
    /// The item's GUID (always assigned once validated).
    fn guid(&self) -> Uuid;
    /// The tenant the item belongs to.
    fn company_guid(&self) -> Uuid;
    /// The other entities this item points at.
    fn references(&self) -> Vec<Reference>;
}

fn reference(target: Entity, guid: Option<Uuid>) -> Option<Reference> {
    guid.map(|guid| Reference { target, guid })
}

macro_rules! sync_item {
    ($ty:ty, $entity:expr, |$it:ident| $refs:expr) => {
        impl SyncItem for $ty {
            const ENTITY: Entity = $entity;
            fn guid(&self) -> Uuid {
                self.guid
            }
            fn company_guid(&self) -> Uuid {
                self.company_guid
            }
            fn references(&self) -> Vec<Reference> {
                let $it = self;
                $refs.into_iter().flatten().collect()
            }
        }
    };
}

sync_item!(Project, Entity::Projects, |_p| [None]);
sync_item!(Article, Entity::Articles, |_a| [None]);
sync_item!(Component, Entity::Components, |c| [reference(
    Entity::Projects,
    Some(c.project_guid)
)]);
sync_item!(Assembly, Entity::Assemblies, |a| [
    reference(Entity::Projects, Some(a.project_guid)),
    reference(Entity::Components, a.component_guid),
]);
sync_item!(Piece, Entity::Pieces, |p| [
    reference(Entity::Assemblies, Some(p.assembly_guid)),
    reference(Entity::Articles, p.article_guid),
]);

/// A validated batch of one entity's items, GUIDs assigned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entity", content = "items", rename_all = "snake_case")]
pub enum Batch {
    Projects(Vec<Project>),
    Components(Vec<Component>),
    Assemblies(Vec<Assembly>),
    Pieces(Vec<Piece>),
    Articles(Vec<Article>),
}

/// Applies `$body` to the batch's item vector, whatever its type.
#[macro_export]
macro_rules! with_items {
    ($batch:expr, |$items:ident| $body:expr) => {
        match $batch {
            $crate::domain::Batch::Projects($items) => $body,
            $crate::domain::Batch::Components($items) => $body,
            $crate::domain::Batch::Assemblies($items) => $body,
            $crate::domain::Batch::Pieces($items) => $body,
            $crate::domain::Batch::Articles($items) => $body,
        }
    };
}

impl Batch {
    /// The entity of every item in the batch.
    pub fn entity(&self) -> Entity {
        match self {
            Batch::Projects(_) => Entity::Projects,
            Batch::Components(_) => Entity::Components,
            Batch::Assemblies(_) => Entity::Assemblies,
            Batch::Pieces(_) => Entity::Pieces,
            Batch::Articles(_) => Entity::Articles,
        }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        with_items!(self, |items| items.len())
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every item's GUID, in submission order.
    pub fn guids(&self) -> Vec<Uuid> {
        with_items!(self, |items| items.iter().map(SyncItem::guid).collect())
    }

    /// Gives the items these GUIDs, in order (as many as there are items).
    pub fn assign_guids(&mut self, guids: &[Uuid]) {
        with_items!(self, |items| {
            for (item, guid) in items.iter_mut().zip(guids) {
                item.guid = *guid;
            }
        })
    }

    /// Every item's company, in submission order.
    pub fn companies(&self) -> Vec<Uuid> {
        with_items!(self, |items| items
            .iter()
            .map(SyncItem::company_guid)
            .collect())
    }

    /// Every item's references, paired with the item's index.
    pub fn references(&self) -> Vec<(usize, Uuid, Reference)> {
        with_items!(self, |items| items
            .iter()
            .enumerate()
            .flat_map(|(i, it)| {
                let company = it.company_guid();
                it.references().into_iter().map(move |r| (i, company, r))
            })
            .collect())
    }
}
