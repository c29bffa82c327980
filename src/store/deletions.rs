//! Deleting an entity's rows, each leaving a tombstone in `sync_deletions`.

use crate::domain::{Deletion, Entity};
use sqlx::PgConnection;
use uuid::Uuid;

/// The items of a delete batch whose GUID names a row of another company
/// (their indexes, in order). Naming them tells the caller only that its
/// own GUIDs are taken, nothing of the other company's data.
pub async fn foreign_rows(
    conn: &mut PgConnection,
    entity: Entity,
    items: &[Deletion],
) -> Result<Vec<usize>, sqlx::Error> {
    let (guids, companies) = columns(items);
    let indexes: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT d.i - 1 FROM UNNEST($1::uuid[], $2::uuid[]) WITH ORDINALITY AS d (guid, company, i) \
         JOIN {table} t ON t.guid = d.guid AND t.company_guid <> d.company ORDER BY 1",
        table = entity.as_str()
    ))
    .bind(guids)
    .bind(companies)
    .fetch_all(conn)
    .await?;
    Ok(indexes
        .into_iter()
        .filter_map(|i| usize::try_from(i).ok())
        .collect())
}

/// Deletes each item's row of its own company, leaving a tombstone for
/// every row removed, in one statement; returns how many were removed.
/// Rows are locked in GUID order, as upserts lock them.
pub async fn delete_rows(
    conn: &mut PgConnection,
    entity: Entity,
    items: &[Deletion],
    correlation_id: Uuid,
) -> Result<u64, sqlx::Error> {
    let mut sorted = items.to_vec();
    sorted.sort_unstable_by_key(|d| d.guid);
    let (guids, companies) = columns(&sorted);
    let done = sqlx::query(&format!(
        "WITH gone AS ( \
             DELETE FROM {table} t USING ( \
                 SELECT t.guid FROM UNNEST($1::uuid[], $2::uuid[]) AS d (guid, company) \
                 JOIN {table} t ON t.guid = d.guid AND t.company_guid = d.company \
                 ORDER BY t.guid FOR UPDATE OF t) AS mine \
             WHERE t.guid = mine.guid RETURNING t.guid, t.company_guid) \
         INSERT INTO sync_deletions (entity, guid, company_guid, correlation_id) \
         SELECT $3, guid, company_guid, $4 FROM gone",
        table = entity.as_str()
    ))
    .bind(guids)
    .bind(companies)
    .bind(entity.as_str())
    .bind(correlation_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

fn columns(items: &[Deletion]) -> (Vec<Uuid>, Vec<Uuid>) {
    items.iter().map(|d| (d.guid, d.company_guid)).unzip()
}

/// Deletes up to `limit` tombstones older than `days`; returns how many.
pub async fn purge_tombstones(
    conn: &mut PgConnection,
    days: u64,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM sync_deletions WHERE id IN ( \
             SELECT id FROM sync_deletions \
             WHERE deleted_at < now() - make_interval(days => $1) LIMIT $2)",
    )
    .bind(i32::try_from(days).unwrap_or(i32::MAX))
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
