//! Set-based upserts of whole batches, guarded by tenant.
//!
//! One statement per batch: `INSERT … SELECT * FROM UNNEST(…) ON CONFLICT
//! (guid) DO UPDATE … WHERE t.company_guid = EXCLUDED.company_guid`. A row
//! whose GUID another company owns is neither updated nor returned, which is
//! how a cross-tenant GUID is detected without ever reading the other
//! tenant's row.

use crate::domain::{
    Article, Assembly, Attributes, Batch, Component, Entity, Piece, Project, SyncItem,
};
use serde_json::value::RawValue;
use sqlx::{
    postgres::{PgArguments, PgRow},
    query::Query,
    types::Json,
    PgConnection, Postgres, Row,
};
use std::collections::{BTreeMap, HashSet};
use uuid::Uuid;

/// What one batch's upsert did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpsertOutcome {
    pub inserted: usize,
    /// Matched rows, `unchanged` included.
    pub updated: usize,
    /// Matched rows that already held exactly these values (not rewritten).
    pub unchanged: usize,
    /// Indexes of items whose GUID belongs to another company (nothing was
    /// written for them; the caller must roll back).
    pub foreign_indexes: Vec<usize>,
}

type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// (column, PostgreSQL array element type), key columns first.
type Columns = &'static [(&'static str, &'static str)];

const PROJECT_COLUMNS: Columns = &[
    ("guid", "uuid"),
    ("company_guid", "uuid"),
    ("number", "text"),
    ("name", "text"),
    ("description", "text"),
    ("status", "text"),
    ("start_date", "date"),
    ("end_date", "date"),
    ("attributes", "jsonb"),
];
const COMPONENT_COLUMNS: Columns = &[
    ("guid", "uuid"),
    ("company_guid", "uuid"),
    ("project_guid", "uuid"),
    ("name", "text"),
    ("component_type", "text"),
    ("description", "text"),
    ("attributes", "jsonb"),
];
const ASSEMBLY_COLUMNS: Columns = &[
    ("guid", "uuid"),
    ("company_guid", "uuid"),
    ("project_guid", "uuid"),
    ("component_guid", "uuid"),
    ("mark", "text"),
    ("name", "text"),
    ("quantity", "int4"),
    ("attributes", "jsonb"),
];
const PIECE_COLUMNS: Columns = &[
    ("guid", "uuid"),
    ("company_guid", "uuid"),
    ("assembly_guid", "uuid"),
    ("article_guid", "uuid"),
    ("mark", "text"),
    ("quantity", "int4"),
    ("length_mm", "float8"),
    ("width_mm", "float8"),
    ("height_mm", "float8"),
    ("weight_kg", "float8"),
    ("attributes", "jsonb"),
];
const ARTICLE_COLUMNS: Columns = &[
    ("guid", "uuid"),
    ("company_guid", "uuid"),
    ("number", "text"),
    ("name", "text"),
    ("unit", "text"),
    ("description", "text"),
    ("attributes", "jsonb"),
];

fn upsert_sql(table: &str, columns: Columns) -> String {
    let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
    let arrays: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("${}::{ty}[]", i + 1))
        .collect();
    let values: Vec<&str> = names
        .iter()
        .copied()
        .filter(|c| !matches!(*c, "guid" | "company_guid"))
        .collect();
    let updates: Vec<String> = values
        .iter()
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let current: Vec<String> = values.iter().map(|c| format!("t.{c}")).collect();
    let incoming: Vec<String> = values.iter().map(|c| format!("EXCLUDED.{c}")).collect();
    // A row that already holds exactly these values is not rewritten (no
    // dead tuple, no WAL, `updated_at` kept): it is counted `unchanged`.
    format!(
        "INSERT INTO {table} AS t ({names}) SELECT * FROM UNNEST({arrays}) \
         ON CONFLICT (guid) DO UPDATE SET {updates}, updated_at = now() \
         WHERE t.company_guid = EXCLUDED.company_guid \
           AND ({current}) IS DISTINCT FROM ({incoming}) \
         RETURNING guid, (xmax = 0) AS inserted",
        names = names.join(", "),
        arrays = arrays.join(", "),
        updates = updates.join(", "),
        current = current.join(", "),
        incoming = incoming.join(", "),
    )
}

/// Items sorted by GUID, so that concurrent transactions lock rows in the
/// same order and cannot deadlock.
fn sorted<T: SyncItem>(items: &[T]) -> Vec<&T> {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_unstable_by_key(|it| it.guid());
    sorted
}

fn column<'a, T, V>(items: &[&'a T], f: impl Fn(&'a T) -> V) -> Vec<V> {
    items.iter().map(|it| f(it)).collect()
}

fn attributes<'a, T>(
    items: &[&'a T],
    f: impl Fn(&'a T) -> &'a Option<Attributes>,
) -> Vec<Option<Json<&'a RawValue>>> {
    column(items, |it| f(it).as_ref().map(|a| Json(a.json())))
}

fn bind_projects<'q>(q: PgQuery<'q>, items: &[&'q Project]) -> PgQuery<'q> {
    q.bind(column(items, |p| p.guid))
        .bind(column(items, |p| p.company_guid))
        .bind(column(items, |p| p.number.as_str()))
        .bind(column(items, |p| p.name.as_str()))
        .bind(column(items, |p| p.description.as_deref()))
        .bind(column(items, |p| p.status.as_str()))
        .bind(column(items, |p| p.start_date))
        .bind(column(items, |p| p.end_date))
        .bind(attributes(items, |p| &p.attributes))
}

fn bind_components<'q>(q: PgQuery<'q>, items: &[&'q Component]) -> PgQuery<'q> {
    q.bind(column(items, |c| c.guid))
        .bind(column(items, |c| c.company_guid))
        .bind(column(items, |c| c.project_guid))
        .bind(column(items, |c| c.name.as_str()))
        .bind(column(items, |c| c.component_type.as_deref()))
        .bind(column(items, |c| c.description.as_deref()))
        .bind(attributes(items, |c| &c.attributes))
}

fn bind_assemblies<'q>(q: PgQuery<'q>, items: &[&'q Assembly]) -> PgQuery<'q> {
    q.bind(column(items, |a| a.guid))
        .bind(column(items, |a| a.company_guid))
        .bind(column(items, |a| a.project_guid))
        .bind(column(items, |a| a.component_guid))
        .bind(column(items, |a| a.mark.as_str()))
        .bind(column(items, |a| a.name.as_deref()))
        .bind(column(items, |a| a.quantity))
        .bind(attributes(items, |a| &a.attributes))
}

fn bind_pieces<'q>(q: PgQuery<'q>, items: &[&'q Piece]) -> PgQuery<'q> {
    q.bind(column(items, |p| p.guid))
        .bind(column(items, |p| p.company_guid))
        .bind(column(items, |p| p.assembly_guid))
        .bind(column(items, |p| p.article_guid))
        .bind(column(items, |p| p.mark.as_str()))
        .bind(column(items, |p| p.quantity))
        .bind(column(items, |p| p.length_mm))
        .bind(column(items, |p| p.width_mm))
        .bind(column(items, |p| p.height_mm))
        .bind(column(items, |p| p.weight_kg))
        .bind(attributes(items, |p| &p.attributes))
}

fn bind_articles<'q>(q: PgQuery<'q>, items: &[&'q Article]) -> PgQuery<'q> {
    q.bind(column(items, |a| a.guid))
        .bind(column(items, |a| a.company_guid))
        .bind(column(items, |a| a.number.as_str()))
        .bind(column(items, |a| a.name.as_str()))
        .bind(column(items, |a| a.unit.as_deref()))
        .bind(column(items, |a| a.description.as_deref()))
        .bind(attributes(items, |a| &a.attributes))
}

/// Upserts the whole batch with one statement, inside the caller's
/// transaction. Items whose GUID another company owns are reported in
/// `foreign_indexes` and left untouched.
pub async fn upsert_batch(
    conn: &mut PgConnection,
    batch: &Batch,
) -> Result<UpsertOutcome, sqlx::Error> {
    if batch.is_empty() {
        return Ok(UpsertOutcome::default());
    }
    let table = batch.entity().as_str();
    let rows: Vec<PgRow> = match batch {
        Batch::Projects(items) => {
            let sql = upsert_sql(table, PROJECT_COLUMNS);
            bind_projects(sqlx::query(&sql), &sorted(items))
                .fetch_all(&mut *conn)
                .await?
        }
        Batch::Components(items) => {
            let sql = upsert_sql(table, COMPONENT_COLUMNS);
            bind_components(sqlx::query(&sql), &sorted(items))
                .fetch_all(&mut *conn)
                .await?
        }
        Batch::Assemblies(items) => {
            let sql = upsert_sql(table, ASSEMBLY_COLUMNS);
            bind_assemblies(sqlx::query(&sql), &sorted(items))
                .fetch_all(&mut *conn)
                .await?
        }
        Batch::Pieces(items) => {
            let sql = upsert_sql(table, PIECE_COLUMNS);
            bind_pieces(sqlx::query(&sql), &sorted(items))
                .fetch_all(&mut *conn)
                .await?
        }
        Batch::Articles(items) => {
            let sql = upsert_sql(table, ARTICLE_COLUMNS);
            bind_articles(sqlx::query(&sql), &sorted(items))
                .fetch_all(&mut *conn)
                .await?
        }
    };
    let mut outcome = UpsertOutcome::default();
    let mut written = HashSet::with_capacity(rows.len());
    for row in rows {
        written.insert(row.try_get::<Uuid, _>("guid")?);
        if row.try_get::<bool, _>("inserted")? {
            outcome.inserted += 1;
        } else {
            outcome.updated += 1;
        }
    }
    // Rows not returned were either already up to date (same company) or
    // belong to another company; only the rare batch with such rows pays
    // for telling them apart.
    let guids = batch.guids();
    let companies = batch.companies();
    let skipped: Vec<usize> = (0..guids.len())
        .filter(|i| !written.contains(&guids[*i]))
        .collect();
    if !skipped.is_empty() {
        let own: HashSet<Uuid> = sqlx::query_scalar(&format!(
            "SELECT e.guid FROM UNNEST($1::uuid[], $2::uuid[]) AS s(guid, company_guid) \
             JOIN {table} e ON e.guid = s.guid AND e.company_guid = s.company_guid"
        ))
        .bind(skipped.iter().map(|i| guids[*i]).collect::<Vec<_>>())
        .bind(skipped.iter().map(|i| companies[*i]).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        for index in skipped {
            if own.contains(&guids[index]) {
                outcome.updated += 1;
                outcome.unchanged += 1;
            } else {
                outcome.foreign_indexes.push(index);
            }
        }
    }
    Ok(outcome)
}

/// (referenced guid, referencing item's company, item index) as arrays.
type ReferenceColumns = (Vec<Uuid>, Vec<Uuid>, Vec<i32>);

/// Indexes of items that reference an entity owned by a company other than
/// the item's own. References to entities that do not exist yet are fine.
pub async fn find_foreign_references(
    conn: &mut PgConnection,
    batch: &Batch,
) -> Result<Vec<usize>, sqlx::Error> {
    let mut by_target: BTreeMap<&'static str, ReferenceColumns> = BTreeMap::new();
    for (index, company, reference) in batch.references() {
        let (guids, companies, indexes) = by_target.entry(reference.target.as_str()).or_default();
        guids.push(reference.guid);
        companies.push(company);
        indexes.push(i32::try_from(index).unwrap_or(i32::MAX));
    }
    let mut foreign = Vec::new();
    for (table, (guids, companies, indexes)) in by_target {
        debug_assert!(Entity::ALL.iter().any(|e| e.as_str() == table));
        let found: Vec<i32> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT r.idx FROM UNNEST($1::uuid[], $2::uuid[], $3::int4[]) \
                 AS r(guid, company_guid, idx) \
             JOIN {table} e ON e.guid = r.guid \
             WHERE e.company_guid <> r.company_guid"
        ))
        .bind(guids)
        .bind(companies)
        .bind(indexes)
        .fetch_all(&mut *conn)
        .await?;
        foreign.extend(found.into_iter().filter_map(|i| usize::try_from(i).ok()));
    }
    foreign.sort_unstable();
    foreign.dedup();
    Ok(foreign)
}
