//! A deletion: the key of an entity row that the source of truth no
//! longer has. Read by the same reader as the entities' items, with the
//! same rules for its two fields.

use super::items::{required, Field, Item, Problems, Reference, Slot};
use super::values::{unreadable, Cell, ColumnType, FieldValue};
use serde::Deserializer;
use uuid::Uuid;

/// One item of a delete request: `{"guid", "company_guid"}`, both required,
/// nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deletion {
    pub guid: Uuid,
    pub company_guid: Uuid,
}

/// A deletion's fields as read so far.
#[derive(Default)]
pub struct DeletionDraft {
    guid: Slot<Uuid>,
    company_guid: Slot<Uuid>,
}

impl DeletionDraft {
    fn slot(&mut self, at: usize) -> &mut Slot<Uuid> {
        if at == 0 {
            &mut self.guid
        } else {
            &mut self.company_guid
        }
    }
}

impl<'a> Item<'a> for Deletion {
    const FIELDS: &'static [Field] = &[
        Field {
            name: "guid",
            required: true,
            column: ColumnType::Uuid,
            schema: <Uuid as FieldValue>::schema,
        },
        Field {
            name: "company_guid",
            required: true,
            column: ColumnType::Uuid,
            schema: <Uuid as FieldValue>::schema,
        },
    ];
    type Draft = DeletionDraft;

    fn read_field<D: Deserializer<'a>>(
        draft: &mut DeletionDraft,
        at: usize,
        value: D,
    ) -> Result<(), D::Error> {
        *draft.slot(at) = Some(<Uuid as FieldValue>::read(value)?);
        Ok(())
    }

    fn unreadable(draft: &mut DeletionDraft, at: usize, json: &str) {
        *draft.slot(at) = Some(Err(unreadable::<Uuid>(json)));
    }

    fn given_guid(draft: &DeletionDraft) -> Option<Uuid> {
        match draft.guid {
            Some(Ok(Some(guid))) => Some(guid),
            _ => None,
        }
    }

    fn from_draft(draft: DeletionDraft, problems: &mut Problems) -> Option<Self> {
        let guid = required(draft.guid, "guid", problems);
        let company_guid = required(draft.company_guid, "company_guid", problems);
        Some(Deletion {
            guid: guid?,
            company_guid: company_guid?,
        })
    }

    fn guid(&self) -> Uuid {
        self.guid
    }

    fn set_guid(&mut self, guid: Uuid) {
        self.guid = guid;
    }

    fn company_guid(&self) -> Uuid {
        self.company_guid
    }

    fn references(&self) -> Vec<Reference> {
        Vec::new()
    }

    fn cells<'s>(&'s self, out: &mut Vec<Option<Cell<'s>>>) {
        out.push(Some(Cell::Uuid(self.guid)));
        out.push(Some(Cell::Uuid(self.company_guid)));
    }
}
