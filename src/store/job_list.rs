//! A company's jobs, newest first, a page at a time.
//!
//! Pages are cut by the key (submitted_at, correlation_id): a page starts
//! below the last key of the one before, so jobs that arrive while a client
//! pages never shift what it has still to read. The index
//! `sync_jobs_company_list_idx` serves the order for any number of jobs.

use super::jobs::{Job, JobStatus, COLUMNS};
use super::StoreError;
use crate::domain::{Entity, Operation};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// Later than every job: 9999-12-31T23:59:59Z.
const END_OF_TIME: DateTime<Utc> = match DateTime::from_timestamp(253_402_300_799, 0) {
    Some(at) => at,
    None => DateTime::<Utc>::MAX_UTC,
};

/// Where a page ends: the key of its last job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub submitted_at: DateTime<Utc>,
    pub correlation_id: Uuid,
}

impl Cursor {
    /// The opaque text a client passes back.
    pub fn encode(&self) -> String {
        format!(
            "{}_{}",
            self.submitted_at.timestamp_micros(),
            self.correlation_id.simple()
        )
    }

    /// The cursor `encode` wrote, or None.
    pub fn decode(text: &str) -> Option<Cursor> {
        let (micros, id) = text.split_once('_')?;
        Some(Cursor {
            submitted_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            correlation_id: Uuid::try_parse(id).ok()?,
        })
    }
}

/// Which jobs of one company a page lists.
#[derive(Debug, Clone)]
pub struct JobFilter {
    pub company: Uuid,
    /// Empty: every status.
    pub statuses: Vec<JobStatus>,
    pub entity: Option<Entity>,
    pub operation: Option<Operation>,
    pub submitted_after: Option<DateTime<Utc>>,
    pub submitted_before: Option<DateTime<Utc>>,
    pub after: Option<Cursor>,
    pub limit: u16,
}

/// A page of jobs, and the cursor of the next one if there are more.
pub async fn page(
    pool: &PgPool,
    filter: &JobFilter,
) -> Result<(Vec<Job>, Option<Cursor>), StoreError> {
    // Bounds are always given, never `$n IS NULL OR …`: a prepared
    // statement's generic plan can then still seek the index to them.
    let after = filter.after.unwrap_or(Cursor {
        submitted_at: END_OF_TIME,
        correlation_id: Uuid::max(),
    });
    let statuses: Option<Vec<&str>> =
        (!filter.statuses.is_empty()).then(|| filter.statuses.iter().map(|s| s.as_str()).collect());
    let mut jobs: Vec<Job> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM sync_jobs WHERE company_guid = $1 \
           AND ($2::text[] IS NULL OR status = ANY($2)) \
           AND ($3::text IS NULL OR entity = $3) \
           AND ($4::text IS NULL OR operation = $4) \
           AND submitted_at > $5 AND submitted_at < $6 \
           AND (submitted_at, correlation_id) < ($7, $8) \
         ORDER BY submitted_at DESC, correlation_id DESC LIMIT $9"
    ))
    .bind(filter.company)
    .bind(statuses)
    .bind(filter.entity.map(Entity::as_str))
    .bind(filter.operation.map(Operation::as_str))
    .bind(filter.submitted_after.unwrap_or(DateTime::UNIX_EPOCH))
    .bind(filter.submitted_before.unwrap_or(END_OF_TIME))
    .bind(after.submitted_at)
    .bind(after.correlation_id)
    // One more than asked: whether there is a next page.
    .bind(i64::from(filter.limit) + 1)
    .fetch_all(pool)
    .await?;
    let next = (jobs.len() > usize::from(filter.limit)).then(|| {
        jobs.truncate(usize::from(filter.limit));
        jobs.last().map(|last| Cursor {
            submitted_at: last.submitted_at,
            correlation_id: last.correlation_id,
        })
    });
    Ok((jobs, next.flatten()))
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn a_cursor_reads_back_as_written_and_garbage_is_none() {
        let cursor = Cursor {
            submitted_at: chrono::DateTime::from_timestamp_micros(1_765_000_000_123_456)
                .expect("valid"),
            correlation_id: uuid::Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for garbage in ["", "_", "12_zz", "x_0193c1c2000070008000000000000001", "1"] {
            assert_eq!(Cursor::decode(garbage), None, "{garbage}");
        }
    }
}
