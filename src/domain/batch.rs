//! A batch: one entity's items, read from one body.

use super::deletion::Deletion;
use super::items::{Article, Assembly, Component, Item, Piece, Project, Reference};
use super::{Entity, Operation};
use uuid::Uuid;

/// A valid batch of one entity's items, GUIDs assigned. Texts are borrowed
/// from the body they were read from.
#[derive(Debug, Clone, PartialEq)]
pub enum Batch<'a> {
    Projects(Vec<Project<'a>>),
    Components(Vec<Component<'a>>),
    Assemblies(Vec<Assembly<'a>>),
    Pieces(Vec<Piece<'a>>),
    Articles(Vec<Article<'a>>),
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

impl<'a> Batch<'a> {
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
        with_items!(self, |items| items.iter().map(Item::guid).collect())
    }

    /// Gives the items these GUIDs, in order (as many as there are items).
    pub fn assign_guids(&mut self, guids: &[Uuid]) {
        with_items!(self, |items| {
            for (item, guid) in items.iter_mut().zip(guids) {
                item.set_guid(*guid);
            }
        })
    }

    /// Every item's company, in submission order.
    pub fn companies(&self) -> Vec<Uuid> {
        with_items!(self, |items| items.iter().map(Item::company_guid).collect())
    }

    /// Every item's references, paired with the item's index and company.
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

/// A valid request's items: a batch to upsert, or the keys of one
/// entity's rows to delete.
#[derive(Debug, Clone, PartialEq)]
pub enum Work<'a> {
    Upsert(Batch<'a>),
    Delete(Entity, Vec<Deletion>),
}

impl Work<'_> {
    pub fn operation(&self) -> Operation {
        match self {
            Work::Upsert(_) => Operation::Upsert,
            Work::Delete(..) => Operation::Delete,
        }
    }

    pub fn entity(&self) -> Entity {
        match self {
            Work::Upsert(batch) => batch.entity(),
            Work::Delete(entity, _) => *entity,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Work::Upsert(batch) => batch.len(),
            Work::Delete(_, keys) => keys.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every item's GUID, in submission order.
    pub fn guids(&self) -> Vec<Uuid> {
        match self {
            Work::Upsert(batch) => batch.guids(),
            Work::Delete(_, keys) => keys.iter().map(|k| k.guid).collect(),
        }
    }

    /// Every item's company, in submission order.
    pub fn companies(&self) -> Vec<Uuid> {
        match self {
            Work::Upsert(batch) => batch.companies(),
            Work::Delete(_, keys) => keys.iter().map(|k| k.company_guid).collect(),
        }
    }

    /// Gives the items these GUIDs, in order (a deletion names its own).
    pub fn assign_guids(&mut self, guids: &[Uuid]) {
        if let Work::Upsert(batch) = self {
            batch.assign_guids(guids);
        }
    }
}

/// What the api keeps of a valid request, whose items travel on as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub operation: Operation,
    pub entity: Entity,
    /// Every item's GUID, in order (given or assigned).
    pub guids: Vec<Uuid>,
    /// Every item's company, in order.
    pub companies: Vec<Uuid>,
}

impl Manifest {
    /// The manifest of a request's items.
    pub fn of(work: &Work) -> Manifest {
        Manifest {
            operation: work.operation(),
            entity: work.entity(),
            guids: work.guids(),
            companies: work.companies(),
        }
    }

    pub fn len(&self) -> usize {
        self.guids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.guids.is_empty()
    }

    /// The company the batch's job belongs to: the items' own when they
    /// all name the same one, else (a SystemAdmin's mixed batch, or an
    /// empty one) the caller's.
    pub fn owner(&self, caller: Uuid) -> Uuid {
        match self.companies.first() {
            Some(first) if self.companies.iter().all(|c| c == first) => *first,
            _ => caller,
        }
    }
}
