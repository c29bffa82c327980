//! The job resource (SPEC §5) and what the api records of a new job: the
//! types that `jobs` reads and writes, as clients and the worker see them.

use crate::domain::{Entity, Operation};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

/// Where a job is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Processing,
    Succeeded,
    Failed,
    /// Withdrawn by its client while still queued; never applied.
    Cancelled,
}

impl JobStatus {
    /// Every status, in the order of a job's life.
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Processing,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// True once the job will not change any more.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// The stored and published spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// Why a job failed: the codes of SPEC §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobErrorCode {
    /// A GUID or reference owned by another company.
    CompanyAccessViolation,
    /// The queued message could not be read.
    InvalidMessage,
    /// The batch failed on every allowed attempt.
    RetriesExhausted,
    /// A code this build does not know, as a client of a newer server
    /// reads it; never written.
    #[serde(other)]
    Unknown,
}

impl JobErrorCode {
    /// The stored and answered spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobErrorCode::CompanyAccessViolation => "company_access_violation",
            JobErrorCode::InvalidMessage => "invalid_message",
            JobErrorCode::RetriesExhausted => "retries_exhausted",
            JobErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for JobErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job failed, as shown to its owner. Never names another tenant's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    pub code: JobErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indexes: Option<Vec<usize>>,
}

impl JobError {
    /// Some items use GUIDs or references owned by another company.
    pub fn company_access_violation(indexes: Vec<usize>) -> Self {
        JobError {
            code: JobErrorCode::CompanyAccessViolation,
            message: "items use GUIDs or references that belong to another company".into(),
            indexes: Some(indexes),
        }
    }

    /// The queued message could not be read.
    pub fn invalid_message(reason: &str) -> Self {
        JobError {
            code: JobErrorCode::InvalidMessage,
            message: format!("the queued message could not be read: {reason}"),
            indexes: None,
        }
    }

    /// The batch failed on every allowed attempt.
    pub fn retries_exhausted(attempts: u32) -> Self {
        JobError {
            code: JobErrorCode::RetriesExhausted,
            message: format!("the batch could not be applied after {attempts} attempts"),
            indexes: None,
        }
    }
}

/// A job row, serialised as the job resource of SPEC §5.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Job {
    pub correlation_id: Uuid,
    #[serde(skip)]
    pub company_guid: Uuid,
    #[sqlx(try_from = "String")]
    #[schema(value_type = Entity)]
    pub entity: EntityColumn,
    #[sqlx(try_from = "String")]
    pub operation: Operation,
    pub status: JobStatus,
    pub item_count: i32,
    pub inserted: Option<i32>,
    pub updated: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unchanged: Option<i32>,
    /// A delete job that succeeded: rows removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<i32>,
    /// A delete job that succeeded: GUIDs that named no row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_found: Option<i32>,
    #[sqlx(json(nullable))]
    pub error: Option<JobError>,
    pub attempts: i32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    #[serde(skip)]
    pub shard: i32,
    #[serde(serialize_with = "millis")]
    pub submitted_at: DateTime<Utc>,
    #[serde(serialize_with = "opt_millis")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "opt_millis")]
    pub completed_at: Option<DateTime<Utc>>,
    /// While queued: approximate place in its shard (1 = next).
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i64>,
    /// While queued: when a worker should start it, from the shard's
    /// recent drain rate (absent while that rate is unknown).
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_millis")]
    pub estimated_start_at: Option<DateTime<Utc>>,
}

/// The `entity` column, read back into an [`Entity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct EntityColumn(pub Entity);

impl TryFrom<String> for EntityColumn {
    type Error = crate::domain::UnknownEntity;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse().map(EntityColumn)
    }
}

fn millis<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn opt_millis<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => millis(at, s),
        None => s.serialize_none(),
    }
}

/// What the api records before publishing a batch.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub correlation_id: Uuid,
    pub company_guid: Uuid,
    pub entity: Entity,
    pub operation: Operation,
    pub item_count: i32,
    pub dry_run: bool,
    pub shard: i32,
    pub submitted_by: String,
}
