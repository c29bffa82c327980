//! Set-based upserts of whole batches, guarded by tenant.
//!
//! One statement per batch: `INSERT … SELECT * FROM UNNEST(…) ON CONFLICT
//! (guid) DO UPDATE … WHERE t.company_guid = EXCLUDED.company_guid`. A row
//! whose GUID another company owns is neither updated nor returned, which is
//! how a cross-tenant GUID is detected without ever reading the other
//! tenant's row.

use crate::domain::{Batch, Cell, ColumnType, Entity, Field, Item};
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

/// The PostgreSQL type of a column's array elements.
fn sql_type(column: ColumnType) -> &'static str {
    match column {
        ColumnType::Uuid => "uuid",
        ColumnType::Text => "text",
        ColumnType::Int4 => "int4",
        ColumnType::Float8 => "float8",
        ColumnType::Date => "date",
        ColumnType::Jsonb => "jsonb",
    }
}

fn upsert_sql(table: &str, fields: &[Field]) -> String {
    let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
    let arrays: Vec<String> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| format!("${}::{}[]", i + 1, sql_type(f.column)))
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

/// One column of a batch, bound as one array.
enum Column<'a> {
    Uuid(Vec<Option<Uuid>>),
    Text(Vec<Option<&'a str>>),
    Int4(Vec<Option<i32>>),
    Float8(Vec<Option<f64>>),
    Date(Vec<Option<chrono::NaiveDate>>),
    Jsonb(Vec<Option<Json<&'a RawValue>>>),
}

impl<'a> Column<'a> {
    fn new(column: ColumnType, rows: usize) -> Self {
        match column {
            ColumnType::Uuid => Column::Uuid(Vec::with_capacity(rows)),
            ColumnType::Text => Column::Text(Vec::with_capacity(rows)),
            ColumnType::Int4 => Column::Int4(Vec::with_capacity(rows)),
            ColumnType::Float8 => Column::Float8(Vec::with_capacity(rows)),
            ColumnType::Date => Column::Date(Vec::with_capacity(rows)),
            ColumnType::Jsonb => Column::Jsonb(Vec::with_capacity(rows)),
        }
    }

    /// Adds a row's cell; the item type's cells match its fields' columns
    /// by construction (`domain::items`).
    fn push(&mut self, cell: Option<Cell<'a>>) {
        match (self, cell) {
            (Column::Uuid(v), Some(Cell::Uuid(x))) => v.push(Some(x)),
            (Column::Text(v), Some(Cell::Text(x))) => v.push(Some(x)),
            (Column::Int4(v), Some(Cell::Int4(x))) => v.push(Some(x)),
            (Column::Float8(v), Some(Cell::Float8(x))) => v.push(Some(x)),
            (Column::Date(v), Some(Cell::Date(x))) => v.push(Some(x)),
            (Column::Jsonb(v), Some(Cell::Jsonb(x))) => v.push(Some(Json(x))),
            (Column::Uuid(v), None) => v.push(None),
            (Column::Text(v), None) => v.push(None),
            (Column::Int4(v), None) => v.push(None),
            (Column::Float8(v), None) => v.push(None),
            (Column::Date(v), None) => v.push(None),
            (Column::Jsonb(v), None) => v.push(None),
            (_, Some(cell)) => unreachable!("a {cell:?} in another type's column"),
        }
    }

    fn bind(self, q: PgQuery<'a>) -> PgQuery<'a> {
        match self {
            Column::Uuid(v) => q.bind(v),
            Column::Text(v) => q.bind(v),
            Column::Int4(v) => q.bind(v),
            Column::Float8(v) => q.bind(v),
            Column::Date(v) => q.bind(v),
            Column::Jsonb(v) => q.bind(v),
        }
    }
}

/// The upsert of `items`, every column bound. Items are sorted by GUID, so
/// that concurrent transactions lock rows in the same order and cannot
/// deadlock.
fn upsert_query<'q, 'b: 'q, T: Item<'b>>(sql: &'q str, items: &'q [T]) -> PgQuery<'q> {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_unstable_by_key(|it| it.guid());
    let mut columns: Vec<Column> = T::FIELDS
        .iter()
        .map(|f| Column::new(f.column, items.len()))
        .collect();
    let mut cells = Vec::with_capacity(columns.len());
    for item in sorted {
        cells.clear();
        item.cells(&mut cells);
        for (column, cell) in columns.iter_mut().zip(cells.drain(..)) {
            column.push(cell);
        }
    }
    columns
        .into_iter()
        .fold(sqlx::query(sql), |q, column| column.bind(q))
}

/// Upserts the whole batch with one statement, inside the caller's
/// transaction. Items whose GUID another company owns are reported in
/// `foreign_indexes` and left untouched.
pub async fn upsert_batch(
    conn: &mut PgConnection,
    batch: &Batch<'_>,
) -> Result<UpsertOutcome, sqlx::Error> {
    if batch.is_empty() {
        return Ok(UpsertOutcome::default());
    }
    let table = batch.entity().as_str();
    let sql = upsert_sql(table, crate::domain::fields(batch.entity()));
    let rows: Vec<PgRow> = crate::with_items!(batch, |items| upsert_query(&sql, &items[..])
        .fetch_all(&mut *conn)
        .await?);
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
    batch: &Batch<'_>,
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
