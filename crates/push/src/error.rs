//! What can go wrong in `push`: before sending (usage and input, exit 2) and
//! per batch (exit 1).

use std::path::PathBuf;
use sync_ingest::store::JobError;
use uuid::Uuid;

/// A problem with the command line or the input files: nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: invalid JSON: {message}")]
    InvalidJson {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}:{line}:{column}: item {item} is not a JSON object")]
    NotAnObject {
        path: PathBuf,
        line: usize,
        column: usize,
        item: usize,
    },
    #[error("`-` (standard input) can be given only once")]
    StdinTwice,
    #[error("--batch-size {requested} is over the {entity} limit of {limit} items per request")]
    BatchTooLarge {
        requested: usize,
        entity: sync_ingest::domain::Entity,
        limit: usize,
    },
    #[error("--url {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("--token is not a valid header value")]
    InvalidToken,
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// One validation error of a refused batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemProblem {
    /// The item's index within the batch; None for the body as a whole.
    pub index: Option<usize>,
    /// `field: message`, or just the message.
    pub text: String,
}

/// Why one batch did not end in a succeeded job.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchFailure {
    /// The api refused the request for good (a 4xx other than 429).
    #[error("HTTP {status} {code}: {detail}")]
    Refused {
        status: u16,
        code: String,
        detail: String,
        /// Indexes of the offending items within the batch, when the api named them.
        indexes: Vec<usize>,
        /// The first validation errors the api listed.
        errors: Vec<ItemProblem>,
    },
    /// The job ran and failed.
    #[error("job {correlation_id} failed: {}: {}", error.code, error.message)]
    JobFailed {
        correlation_id: Uuid,
        error: JobError,
    },
    /// The job was cancelled (by someone else) before it was applied.
    #[error("job {correlation_id} was cancelled before it was applied")]
    Cancelled { correlation_id: Uuid },
    /// Every allowed attempt met a transient error (429, 5xx, network).
    #[error("gave up after {attempts} attempts; last: {last}")]
    GaveUp { attempts: u32, last: String },
    /// The batch was queued, but following its job failed for good: its
    /// outcome is unknown.
    #[error("job {correlation_id} was queued, but its outcome is unknown: {reason}")]
    Unfollowed {
        correlation_id: Uuid,
        reason: String,
    },
    /// The api answered something that is not the contract.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// Not sent: an earlier refusal applies to every batch (bad token, …).
    #[error("not sent after an earlier refusal that applies to every batch")]
    NotSent,
}

impl BatchFailure {
    /// True when every other batch would be refused the same way, so
    /// sending them is pointless.
    pub fn applies_to_every_batch(&self) -> bool {
        match self {
            BatchFailure::Refused { status, code, .. } => {
                matches!(status, 401 | 404 | 415) || code == "insufficient_scope"
            }
            _ => false,
        }
    }

    /// Indexes of the offending items within the batch, if known.
    pub fn item_indexes(&self) -> &[usize] {
        match self {
            BatchFailure::Refused { indexes, .. } => indexes,
            BatchFailure::JobFailed { error, .. } => error.indexes.as_deref().unwrap_or_default(),
            _ => &[],
        }
    }
}
