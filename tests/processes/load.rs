//! The load the scenarios push, and the audit that judges it.
//!
//! Each tenant submits batches one after another (the next only once the
//! previous was answered), every batch updating the same pieces with the
//! batch's sequence number as `quantity`. The audit log then shows, per
//! piece, every value ever applied in order: an accepted value missing is a
//! lost batch, a value twice a duplicate, a value lower than its predecessor
//! an ordering violation.

use serde_json::{json, Value};
use sqlx::PgPool;
use std::{collections::HashMap, time::Duration};
use uuid::Uuid;

/// One company pushing into the cluster.
#[derive(Clone)]
pub struct Tenant {
    pub company: Uuid,
    pub token: String,
    pub pieces: Vec<Uuid>,
}

impl Tenant {
    /// A tenant updating `pieces` pieces.
    pub fn new(company: Uuid, token: String, pieces: usize) -> Self {
        Tenant {
            company,
            token,
            pieces: (0..pieces).map(|_| Uuid::now_v7()).collect(),
        }
    }

    fn batch(&self, seq: i32) -> Value {
        let assembly = self.company;
        Value::Array(
            self.pieces
                .iter()
                .map(|guid| {
                    json!({
                        "guid": guid,
                        "company_guid": self.company,
                        "assembly_guid": assembly,
                        "mark": format!("P-{seq}"),
                        "quantity": seq,
                        "attributes": {"seq": seq}
                    })
                })
                .collect(),
        )
    }
}

/// What the api answered to one batch.
#[derive(Debug, Clone)]
pub struct Submission {
    pub seq: i32,
    /// HTTP status; 0 when no answer came (connection refused, timeout).
    pub status: u16,
    pub correlation_id: Option<String>,
}

/// Pushes one batch per sequence number for one tenant, sequentially,
/// pausing `pause` between them.
pub async fn push(
    base: String,
    tenant: Tenant,
    seqs: std::ops::RangeInclusive<i32>,
    pause: Duration,
) -> Vec<Submission> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let mut submissions = Vec::new();
    for seq in seqs {
        let sent = client
            .post(format!("{base}/api/v1/sync/pieces"))
            .bearer_auth(&tenant.token)
            .json(&tenant.batch(seq))
            .send()
            .await;
        let submission = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                Submission {
                    seq,
                    status,
                    correlation_id: body["correlation_id"].as_str().map(str::to_owned),
                }
            }
            Err(_) => Submission {
                seq,
                status: 0,
                correlation_id: None,
            },
        };
        submissions.push(submission);
        tokio::time::sleep(pause).await;
    }
    submissions
}

/// The audit's findings over all tenants.
#[derive(Debug, Default)]
pub struct Verdict {
    pub accepted: usize,
    pub refused: usize,
    pub applied: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
    pub refused_but_applied: usize,
    pub bad_jobs: usize,
    pub wrong_final_state: usize,
}

impl Verdict {
    /// One line for the CI log.
    pub fn summary(&self, scenario: &str) -> String {
        format!(
            "scenario={scenario} accepted={} refused={} applied={} lost={} duplicated={} \
             out_of_order={} refused_but_applied={} bad_jobs={} wrong_final_state={}",
            self.accepted,
            self.refused,
            self.applied,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.refused_but_applied,
            self.bad_jobs,
            self.wrong_final_state
        )
    }

    /// True when nothing was lost, doubled, reordered or wrongly applied.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.refused_but_applied == 0
            && self.bad_jobs == 0
            && self.wrong_final_state == 0
    }
}

/// Judges one tenant's submissions against the audit log and the jobs.
pub async fn audit(
    pool: &PgPool,
    tenant: &Tenant,
    submissions: &[Submission],
    verdict: &mut Verdict,
) {
    let accepted: Vec<i32> = submissions
        .iter()
        .filter(|s| s.status == 202)
        .map(|s| s.seq)
        .collect();
    // Only a definite answer other than 202 promises "not applied"; a request
    // that got no answer may or may not have been.
    let refused: Vec<i32> = submissions
        .iter()
        .filter(|s| s.status != 202 && s.status != 0)
        .map(|s| s.seq)
        .collect();
    verdict.accepted += accepted.len();
    verdict.refused += refused.len();
    let mut applied_everywhere: HashMap<i32, usize> = HashMap::new();
    for guid in &tenant.pieces {
        let log: Vec<i32> =
            sqlx::query_scalar("SELECT quantity FROM apply_log WHERE guid = $1 ORDER BY id")
                .bind(guid)
                .fetch_all(pool)
                .await
                .expect("audit log");
        let mut seen: HashMap<i32, usize> = HashMap::new();
        for value in &log {
            *seen.entry(*value).or_default() += 1;
        }
        verdict.duplicated += seen.values().filter(|n| **n > 1).count();
        verdict.out_of_order += log.windows(2).filter(|w| w[1] <= w[0]).count();
        verdict.lost += accepted.iter().filter(|s| !seen.contains_key(s)).count();
        verdict.refused_but_applied += refused.iter().filter(|s| seen.contains_key(s)).count();
        for seq in seen.keys() {
            *applied_everywhere.entry(*seq).or_default() += 1;
        }
        let last_accepted = accepted.last().copied();
        let stored: Option<i32> = sqlx::query_scalar("SELECT quantity FROM pieces WHERE guid = $1")
            .bind(guid)
            .fetch_optional(pool)
            .await
            .expect("piece");
        // Without a timed-out batch after the last accepted one, the final
        // state must be exactly the last accepted batch.
        let unanswered_after = submissions
            .iter()
            .any(|s| s.status == 0 && Some(s.seq) > last_accepted);
        if !unanswered_after && stored != last_accepted {
            verdict.wrong_final_state += 1;
        }
    }
    verdict.applied += accepted
        .iter()
        .filter(|s| applied_everywhere.get(s) == Some(&tenant.pieces.len()))
        .count();
    for submission in submissions.iter().filter(|s| s.status == 202) {
        let id = submission
            .correlation_id
            .as_deref()
            .and_then(|id| Uuid::parse_str(id).ok())
            .expect("a 202 carries a correlation id");
        let job: Option<(String, i32, Option<i32>, Option<i32>)> = sqlx::query_as(
            "SELECT status, item_count, inserted, updated FROM sync_jobs WHERE correlation_id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await
        .expect("job");
        let ok = matches!(job, Some((status, count, Some(i), Some(u)))
            if status == "succeeded" && i + u == count);
        if !ok {
            verdict.bad_jobs += 1;
        }
    }
}
