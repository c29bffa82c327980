//! The message a batch travels in, from api to worker.
//!
//! Version 2 carries every item's GUID in `guids`, beside the items: that
//! lets the api forward a valid request's items exactly as the client sent
//! them (some without a GUID) instead of serialising them again, which was
//! a fifth of its CPU time. Workers still read version 1, whose items carry
//! their GUIDs, so a queue filled by an older api drains after an upgrade.

use crate::domain::{guid_list, Batch, Entity};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the message format the api writes.
pub const MESSAGE_VERSION: u32 = 2;

/// A generous guess of an item's serialised size, to size the buffer once.
const BYTES_PER_ITEM: usize = 512;

/// One accepted request: the job it belongs to and its validated items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchMessage {
    pub version: u32,
    pub correlation_id: Uuid,
    /// The company the batch (and its job) belongs to.
    pub company_guid: Uuid,
    #[serde(default)]
    pub dry_run: bool,
    pub batch: Batch,
    /// Every item's GUID, in order; they win over what the items say
    /// (version 2; absent in version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guids: Option<Vec<Uuid>>,
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
    /// A message for `entity` items, sized for about `items_len` bytes of
    /// them (and their GUIDs) so that it need not grow.
    pub fn new(entity: Entity, items_len: usize) -> Self {
        // A hyphenated GUID takes 39 bytes in the list; a full batch of
        // pieces, 430 bytes each, needs a tenth more room for them.
        let mut body = Vec::with_capacity(items_len + items_len / 8 + 256);
        body.extend_from_slice(br#"{"batch":{"entity":""#);
        body.extend_from_slice(entity.as_str().as_bytes());
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
}

impl BatchMessage {
    /// A current-version message for a validated batch.
    pub fn new(correlation_id: Uuid, company_guid: Uuid, dry_run: bool, batch: Batch) -> Self {
        BatchMessage {
            version: MESSAGE_VERSION,
            correlation_id,
            company_guid,
            dry_run,
            guids: Some(batch.guids()),
            batch,
        }
    }

    /// Serialises the message body.
    pub fn to_json(&self) -> Vec<u8> {
        // Sized up front: growing a buffer of a few hundred KiB by doubling
        // copies it over and over.
        let mut body = Vec::with_capacity(BYTES_PER_ITEM * self.batch.len() + 256);
        serde_json::to_writer(&mut body, self)
            .unwrap_or_else(|e| unreachable!("a batch always serialises: {e}"));
        body
    }

    /// The body of the message [`BatchMessage::new`] would make, with the
    /// items copied from `items_json` — a JSON array of `entity` items that
    /// parses to that batch, bar the GUIDs, which `guids` carries — rather
    /// than serialised again. The api builds it piece by piece
    /// ([`ForwardedMessage`]); this is the same in one call, for tests.
    #[cfg(test)]
    pub fn forwarded(
        correlation_id: Uuid,
        company_guid: Uuid,
        dry_run: bool,
        entity: Entity,
        items_json: &[u8],
        guids: &[Uuid],
    ) -> Vec<u8> {
        let mut message = ForwardedMessage::new(entity, items_json.len());
        message.push_items(items_json);
        message.finish(correlation_id, company_guid, dry_run, guids)
    }

    /// Reads a message body (version 1 or 2).
    pub fn from_json(body: &[u8]) -> Result<Self, EnvelopeError> {
        let mut message: BatchMessage = serde_json::from_slice(body)?;
        match (message.version, &message.guids) {
            (1, _) => {}
            (2, Some(guids)) if guids.len() == message.batch.len() => {
                message.batch.assign_guids(guids);
            }
            (2, guids) => {
                return Err(EnvelopeError::GuidCount {
                    guids: guids.as_ref().map_or(0, Vec::len),
                    items: message.batch.len(),
                })
            }
            (other, _) => return Err(EnvelopeError::UnknownVersion(other)),
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::parse_batch;
    use serde_json::json;

    fn body(company: Uuid) -> Vec<u8> {
        let given = Uuid::now_v7();
        serde_json::to_vec(&json!([
            {"company_guid": company, "assembly_guid": Uuid::now_v7(), "mark": "A-1",
             "attributes": {"grade": "S355", "n": [1.5, null]}},
            {"guid": given, "company_guid": company, "assembly_guid": Uuid::now_v7(),
             "mark": "A-2", "length_mm": 1200}
        ]))
        .expect("json")
    }

    #[test]
    fn a_forwarded_body_reads_as_the_message_it_stands_for() {
        let company = Uuid::now_v7();
        let items = body(company);
        let batch = parse_batch(Entity::Pieces, &items, 10).expect("valid");
        let id = Uuid::now_v7();
        let message = BatchMessage::new(id, company, true, batch.clone());

        let forwarded =
            BatchMessage::forwarded(id, company, true, Entity::Pieces, &items, &batch.guids());

        let read = BatchMessage::from_json(&forwarded).expect("readable");
        assert_eq!(read, message);
        assert_eq!(
            BatchMessage::from_json(&message.to_json()).expect("readable"),
            message
        );
    }

    #[test]
    fn items_read_in_pieces_make_the_same_message() {
        let company = Uuid::now_v7();
        let items = body(company);
        let guids = parse_batch(Entity::Pieces, &items, 10)
            .expect("valid")
            .guids();
        let id = Uuid::now_v7();
        let whole = BatchMessage::forwarded(id, company, false, Entity::Pieces, &items, &guids);
        for piece in [1, 7, items.len()] {
            // Announced length wrong on purpose: the buffer grows as needed.
            let mut message = ForwardedMessage::new(Entity::Pieces, 3);
            for chunk in items.chunks(piece) {
                message.push_items(chunk);
            }
            assert_eq!(message.items(), items.as_slice());
            assert_eq!(message.finish(id, company, false, &guids), whole);
        }
        let read = BatchMessage::from_json(&whole).expect("readable");
        assert_eq!((read.correlation_id, read.company_guid), (id, company));
        assert_eq!(read.guids.as_deref(), Some(guids.as_slice()));
    }

    #[test]
    fn version_1_messages_are_still_read() {
        let company = Uuid::now_v7();
        let batch = parse_batch(Entity::Pieces, &body(company), 10).expect("valid");
        let v1 = BatchMessage {
            version: 1,
            guids: None,
            ..BatchMessage::new(Uuid::now_v7(), company, false, batch)
        };
        assert_eq!(
            BatchMessage::from_json(&v1.to_json()).expect("readable"),
            v1
        );
    }

    #[test]
    fn wrong_guid_counts_and_unknown_versions_are_refused() {
        let company = Uuid::now_v7();
        let batch = parse_batch(Entity::Pieces, &body(company), 10).expect("valid");
        let mut short = BatchMessage::new(Uuid::now_v7(), company, false, batch.clone());
        short.guids = Some(vec![Uuid::now_v7()]);
        assert!(matches!(
            BatchMessage::from_json(&short.to_json()),
            Err(EnvelopeError::GuidCount { guids: 1, items: 2 })
        ));
        let mut future = BatchMessage::new(Uuid::now_v7(), company, false, batch);
        future.version = 3;
        assert!(matches!(
            BatchMessage::from_json(&future.to_json()),
            Err(EnvelopeError::UnknownVersion(3))
        ));
    }
}
