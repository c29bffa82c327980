//! The message a batch travels in, from api to worker.

use crate::domain::Batch;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the message format; a worker refuses versions it does not know.
pub const MESSAGE_VERSION: u32 = 1;

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
}

/// Why a delivered message is not a batch we can apply.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a batch message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unknown message version {0}")]
    UnknownVersion(u32),
}

impl BatchMessage {
    /// Serialises the message body.
    pub fn to_json(&self) -> Vec<u8> {
        // Sized up front: growing a buffer of a few hundred KiB by doubling
        // copies it over and over.
        let mut body = Vec::with_capacity(BYTES_PER_ITEM * self.batch.len() + 256);
        serde_json::to_writer(&mut body, self)
            .unwrap_or_else(|e| unreachable!("a batch always serialises: {e}"));
        body
    }

    /// Reads a message body.
    pub fn from_json(body: &[u8]) -> Result<Self, EnvelopeError> {
        let message: BatchMessage = serde_json::from_slice(body)?;
        if message.version != MESSAGE_VERSION {
            return Err(EnvelopeError::UnknownVersion(message.version));
        }
        Ok(message)
    }
}
