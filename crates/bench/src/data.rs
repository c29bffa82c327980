//! The benchmark's data: realistic pieces (~400 bytes of JSON each), in
//! batches, for several tenants, with a chosen share of updates.

use serde_json::{json, Value};
use uuid::Uuid;

/// One batch of pieces, as the JSON body a client sends.
#[derive(Debug, Clone)]
pub struct Pieces {
    /// Every piece's GUID, in order.
    pub guids: Vec<Uuid>,
    pub body: Vec<u8>,
}

impl Pieces {
    pub fn len(&self) -> usize {
        self.guids.len()
    }
}

/// One tenant's batches, in submission order.
#[derive(Debug, Clone)]
pub struct TenantLoad {
    pub company: Uuid,
    pub batches: Vec<Pieces>,
}

impl TenantLoad {
    /// Items across every batch.
    pub fn items(&self) -> usize {
        self.batches.iter().map(Pieces::len).sum()
    }
}

/// Every tenant's batches in the order they are sent: the first batch of
/// each tenant, then the second of each, and so on, as tenants' connectors
/// push side by side. Intake's requests and the raw publish's messages both
/// go in this order, so that the broker sees every shard's queue busy at
/// once in both, not one queue after another in one of them.
/// Yields each batch with the index of its tenant's load.
pub fn in_sending_order(loads: &[TenantLoad]) -> impl Iterator<Item = (usize, &Pieces)> {
    let longest = loads.iter().map(|l| l.batches.len()).max().unwrap_or(0);
    (0..longest).flat_map(move |round| {
        loads
            .iter()
            .enumerate()
            .filter_map(move |(tenant, load)| Some((tenant, load.batches.get(round)?)))
    })
}

/// Generates `total` pieces split over `tenants` tenants in batches of
/// `batch`; in every batch after a tenant's first, `update_ratio` of the
/// items reuse GUIDs that tenant already sent (so they are updates).
pub fn generate(total: usize, batch: usize, tenants: usize, update_ratio: f64) -> Vec<TenantLoad> {
    let tenants = tenants.max(1);
    let per_tenant = total.div_ceil(tenants);
    (0..tenants)
        .map(|t| {
            let company = Uuid::now_v7();
            let assembly = Uuid::now_v7();
            let article = Uuid::now_v7();
            let mut sent: Vec<Uuid> = Vec::new();
            let mut batches = Vec::new();
            let mut produced = 0;
            let mut seq = 0u64;
            while produced < per_tenant {
                let size = batch.min(per_tenant - produced);
                let updates = if sent.is_empty() {
                    0
                } else {
                    ((size as f64) * update_ratio) as usize
                };
                let mut items = Vec::with_capacity(size);
                for i in 0..size {
                    seq += 1;
                    let guid = if i < updates {
                        sent[(seq as usize * 7919) % sent.len()]
                    } else {
                        let guid = Uuid::now_v7();
                        sent.push(guid);
                        guid
                    };
                    items.push((guid, piece(guid, company, assembly, article, t, seq)));
                }
                // An update batch must not name one GUID twice.
                items.sort_by_key(|(guid, _)| *guid);
                items.dedup_by_key(|(guid, _)| *guid);
                produced += items.len();
                let (guids, pieces): (Vec<Uuid>, Vec<Value>) = items.into_iter().unzip();
                let body = serde_json::to_vec(&pieces).unwrap_or_default();
                batches.push(Pieces { guids, body });
            }
            TenantLoad { company, batches }
        })
        .collect()
}

fn piece(
    guid: Uuid,
    company: Uuid,
    assembly: Uuid,
    article: Uuid,
    tenant: usize,
    seq: u64,
) -> Value {
    json!({
        "guid": guid,
        "company_guid": company,
        "assembly_guid": assembly,
        "article_guid": article,
        "mark": format!("T{tenant}-P{seq:07}"),
        "quantity": 1 + seq % 7,
        "length_mm": 1000.0 + (seq % 5000) as f64,
        "width_mm": 200.0,
        "height_mm": 10.0 + (seq % 40) as f64,
        "weight_kg": 12.5 + (seq % 100) as f64 / 10.0,
        "attributes": {
            "profile": "HEA200",
            "grade": "S355J2",
            "finish": "hot-dip galvanized",
            "phase": seq % 12,
            "drawing": format!("DWG-{tenant}-{:05}", seq % 10_000),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_ingest::domain::{read_items, Piece};

    #[test]
    fn batches_go_one_per_tenant_in_turn_until_every_tenant_is_done() {
        // 3 tenants: 2500 pieces each in batches of 1000 → 1000, 1000, 500.
        let loads = generate(7_500, 1_000, 3, 0.0);
        let order: Vec<(usize, usize)> = in_sending_order(&loads)
            .map(|(tenant, batch)| (tenant, batch.len()))
            .collect();
        assert_eq!(
            order,
            [
                (0, 1000),
                (1, 1000),
                (2, 1000),
                (0, 1000),
                (1, 1000),
                (2, 1000),
                (0, 500),
                (1, 500),
                (2, 500),
            ]
        );
        for (tenant, batch) in in_sending_order(&loads) {
            let pieces: Vec<Piece> =
                read_items(sync_ingest::domain::Entity::Pieces, &batch.body, usize::MAX)
                    .expect("valid");
            assert!(pieces
                .iter()
                .all(|p| p.company_guid == loads[tenant].company));
            let guids: Vec<Uuid> = pieces.iter().map(|p| p.guid).collect();
            assert_eq!(guids, batch.guids);
        }
    }
}
