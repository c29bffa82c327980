//! The message a batch travels in, from api to worker.
//!
//! Version 2 carries every item's GUID in `guids`, beside the items, so that
//! the api forwards a valid request's items exactly as the client sent them
//! (some without a GUID). Workers still read version 1, whose items carry
//! their GUIDs, so a queue filled by an older api drains after an upgrade.

use super::guid_list;
use crate::domain::{BatchError, Entity, Operation, Work};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// Version of the message format the api writes.
pub const MESSAGE_VERSION: u32 = 2;

/// One accepted request, as the worker reads it: the job it belongs to and
/// its items (to upsert, or keys to delete), read by the same reader as the
/// api's (`domain::read_items`) and borrowing their texts from the message
/// body.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchMessage<'a> {
    pub version: u32,
    pub correlation_id: Uuid,
    /// The company the batch (and its job) belongs to.
    pub company_guid: Uuid,
    pub dry_run: bool,
    pub work: Work<'a>,
}

/// A message body as it travels; the items are read once the entity is
/// known.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    version: u32,
    correlation_id: Uuid,
    company_guid: Uuid,
    #[serde(default)]
    dry_run: bool,
    #[serde(borrow)]
    batch: Items<'a>,
    /// Every item's GUID, in order; they win over what the items say
    /// (version 2; absent in version 1).
    #[serde(default)]
    guids: Option<Vec<Uuid>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Items<'a> {
    entity: Entity,
    /// Absent: upsert (every message written before deletes existed).
    #[serde(default)]
    operation: Operation,
    #[serde(borrow)]
    items: &'a RawValue,
}

/// The fields of a message besides its items.
#[derive(Debug, Serialize)]
struct Header {
    version: u32,
    correlation_id: Uuid,
    company_guid: Uuid,
    dry_run: bool,
}

/// A message built around items as the client sent them, which are read
/// straight into it: the batch — hundreds of KiB — is copied once, from the
/// connection into the message, instead of into a body first and from there
/// into the message. The items come first, so nothing need be known of them
/// to start; the fields that depend on them follow (readers of JSON do not
/// care about the order of keys).
#[derive(Debug)]
pub struct ForwardedMessage {
    body: Vec<u8>,
    items_start: usize,
}

impl ForwardedMessage {
    /// A message for `entity` items to upsert or delete, sized for about
    /// `items_len` bytes of them (and their GUIDs) so that it need not grow.
    pub fn new(entity: Entity, operation: Operation, items_len: usize) -> Self {
        // A hyphenated GUID takes 39 bytes in the list; a full batch of
        // pieces, 430 bytes each, needs a tenth more room for them.
        let mut body = Vec::with_capacity(items_len + items_len / 8 + 256);
        body.extend_from_slice(br#"{"batch":{"entity":""#);
        body.extend_from_slice(entity.as_str().as_bytes());
        // An upsert says nothing, as every message did before deletes.
        if operation == Operation::Delete {
            body.extend_from_slice(br#"","operation":"delete"#);
        }
        body.extend_from_slice(br#"","items":"#);
        let items_start = body.len();
        ForwardedMessage { body, items_start }
    }

    /// Appends the next bytes of the items' JSON text.
    pub fn push_items(&mut self, bytes: &[u8]) {
        self.body.extend_from_slice(bytes);
    }

    /// The items' JSON text so far.
    pub fn items(&self) -> &[u8] {
        &self.body[self.items_start..]
    }

    /// The finished body, once the items are complete and valid: `guids`
    /// is every item's GUID, in order.
    pub fn finish(
        mut self,
        correlation_id: Uuid,
        company_guid: Uuid,
        dry_run: bool,
        guids: &[Uuid],
    ) -> Vec<u8> {
        let header = Header {
            version: MESSAGE_VERSION,
            correlation_id,
            company_guid,
            dry_run,
        };
        let body = &mut self.body;
        // Close the batch, then add the header's fields to the outer object.
        body.extend_from_slice(b"},");
        let fields_start = body.len();
        serde_json::to_writer(&mut *body, &header)
            .unwrap_or_else(|e| unreachable!("a header always serialises: {e}"));
        // `{"version":…}` becomes `"version":…` after the comma.
        body.remove(fields_start);
        guid_list::add_to_object(body, guids);
        self.body
    }
}

/// Why a delivered message is not a batch we can apply.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a batch message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unknown message version {0}")]
    UnknownVersion(u32),
    #[error("{guids} guids for {items} items")]
    GuidCount { guids: usize, items: usize },
    #[error("the items are not a valid batch: {0}")]
    Items(String),
}

impl<'a> BatchMessage<'a> {
    /// The body of a current-version message of `entity` items to upsert, copied
    /// from `items_json` (a JSON array of them) as they are; `guids` holds
    /// every item's GUID. The api builds it piece by piece
    /// ([`ForwardedMessage`]); this is the same in one call.
    pub fn forwarded(
        correlation_id: Uuid,
        company_guid: Uuid,
        dry_run: bool,
        entity: Entity,
        items_json: &[u8],
        guids: &[Uuid],
    ) -> Vec<u8> {
        let mut message = ForwardedMessage::new(entity, Operation::Upsert, items_json.len());
        message.push_items(items_json);
        message.finish(correlation_id, company_guid, dry_run, guids)
    }

    /// Reads a message body (version 1 or 2).
    pub fn from_json(body: &'a [u8]) -> Result<Self, EnvelopeError> {
        let envelope: Envelope<'a> = serde_json::from_slice(body)?;
        if !matches!(envelope.version, 1 | 2) {
            return Err(EnvelopeError::UnknownVersion(envelope.version));
        }
        let items = envelope.batch.items.get().as_bytes();
        let (operation, entity) = (envelope.batch.operation, envelope.batch.entity);
        let mut work = Work::read(operation, entity, items, usize::MAX).map_err(|e| {
            let problems = match e {
                BatchError::Invalid(errors) => serde_json::to_string(&errors).unwrap_or_default(),
                other => other.to_string(),
            };
            EnvelopeError::Items(problems)
        })?;
        match (envelope.version, &envelope.guids) {
            (1, _) => {}
            (2, Some(guids)) if guids.len() == work.len() => work.assign_guids(guids),
            (2, guids) => {
                return Err(EnvelopeError::GuidCount {
                    guids: guids.as_ref().map_or(0, Vec::len),
                    items: work.len(),
                })
            }
            (other, _) => return Err(EnvelopeError::UnknownVersion(other)),
        }
        Ok(BatchMessage {
            version: envelope.version,
            correlation_id: envelope.correlation_id,
            company_guid: envelope.company_guid,
            dry_run: envelope.dry_run,
            work,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{read_items, Batch, Deletion};
    use serde_json::json;

    fn items(company: Uuid) -> (Vec<u8>, Uuid) {
        let given = Uuid::now_v7();
        let body = serde_json::to_vec(&json!([
            {"company_guid": company, "assembly_guid": Uuid::now_v7(), "mark": "A-1",
             "attributes": {"grade": "S355", "n": [1.5, null]}},
            {"guid": given, "company_guid": company, "assembly_guid": Uuid::now_v7(),
             "mark": "A-2", "length_mm": 1200}
        ]))
        .expect("json");
        (body, given)
    }

    #[test]
    fn a_forwarded_body_reads_as_the_items_sent_with_their_guids() {
        let company = Uuid::now_v7();
        let (body, given) = items(company);
        let guids = [Uuid::now_v7(), given];
        let id = Uuid::now_v7();
        let message = BatchMessage::forwarded(id, company, true, Entity::Pieces, &body, &guids);
        let read = BatchMessage::from_json(&message).expect("readable");
        assert_eq!(
            (
                read.version,
                read.correlation_id,
                read.company_guid,
                read.dry_run
            ),
            (MESSAGE_VERSION, id, company, true)
        );
        let mut sent = Batch::Pieces(read_items(Entity::Pieces, &body, 10).expect("valid"));
        sent.assign_guids(&guids);
        assert_eq!(read.work, Work::Upsert(sent));
    }

    #[test]
    fn items_read_in_pieces_make_the_same_message() {
        let company = Uuid::now_v7();
        let (body, given) = items(company);
        let guids = [Uuid::now_v7(), given];
        let id = Uuid::now_v7();
        let whole = BatchMessage::forwarded(id, company, false, Entity::Pieces, &body, &guids);
        for piece in [1, 7, body.len()] {
            // Announced length wrong on purpose: the buffer grows as needed.
            let mut message = ForwardedMessage::new(Entity::Pieces, Operation::Upsert, 3);
            for chunk in body.chunks(piece) {
                message.push_items(chunk);
            }
            assert_eq!(message.items(), body.as_slice());
            assert_eq!(message.finish(id, company, false, &guids), whole);
        }
    }

    /// What the version before the forwarded items wrote: typed items,
    /// every field spelt out, `null` for absent ones.
    #[test]
    fn version_1_messages_are_still_read() {
        let (id, company, guid) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let v1 = json!({"version": 1, "correlation_id": id, "company_guid": company,
            "dry_run": false, "batch": {"entity": "projects", "items": [
                {"guid": guid, "company_guid": company, "number": "P-1", "name": "Hall",
                 "description": null, "status": "on_hold", "start_date": "2024-01-01",
                 "end_date": null, "attributes": {"a": 1}}]}});
        let body = v1.to_string();
        let read = BatchMessage::from_json(body.as_bytes()).expect("readable");
        let Work::Upsert(Batch::Projects(projects)) = &read.work else {
            panic!("projects expected")
        };
        assert_eq!(
            (projects[0].guid, projects[0].company_guid),
            (guid, company)
        );
        assert_eq!(projects[0].status, crate::domain::ProjectStatus::OnHold);
        assert_eq!(projects[0].end_date, None);
    }

    #[test]
    fn a_delete_message_reads_as_the_keys_sent() {
        let (id, company, guid) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let keys =
            serde_json::to_vec(&json!([{"guid": guid, "company_guid": company}])).expect("json");
        let mut message = ForwardedMessage::new(Entity::Articles, Operation::Delete, keys.len());
        message.push_items(&keys);
        let body = message.finish(id, company, false, &[guid]);
        let read = BatchMessage::from_json(&body).expect("readable");
        assert_eq!(
            read.work,
            Work::Delete(
                Entity::Articles,
                vec![Deletion {
                    guid,
                    company_guid: company
                }]
            )
        );
    }

    #[test]
    fn wrong_guid_counts_unknown_versions_and_invalid_items_are_refused() {
        let company = Uuid::now_v7();
        let (body, _) = items(company);
        let id = Uuid::now_v7();
        let short = BatchMessage::forwarded(id, company, false, Entity::Pieces, &body, &[id]);
        assert!(matches!(
            BatchMessage::from_json(&short),
            Err(EnvelopeError::GuidCount { guids: 1, items: 2 })
        ));
        let mut future: serde_json::Value = serde_json::from_slice(&short).expect("json");
        future["version"] = json!(3);
        assert!(matches!(
            BatchMessage::from_json(future.to_string().as_bytes()),
            Err(EnvelopeError::UnknownVersion(3))
        ));
        let invalid = BatchMessage::forwarded(id, company, false, Entity::Pieces, b"[{}]", &[id]);
        assert!(matches!(
            BatchMessage::from_json(&invalid),
            Err(EnvelopeError::Items(_))
        ));
    }
}
