//! The end of a push: what happened to every batch, totalled and printed.

use super::{client::JobReport, error::BatchFailure, progress::per_second};
use std::{fmt::Write, ops::Range, time::Duration};
use sync_ingest::domain::Entity;

/// Failed batches listed one by one; the rest are counted.
const LISTED_FAILURES: usize = 50;
/// Offending items listed per failed batch.
const LISTED_ITEMS: usize = 20;

/// How one batch ended.
#[derive(Debug)]
pub struct BatchOutcome {
    /// 1-based, in input order.
    pub number: usize,
    /// Its items' positions in the input (0-based).
    pub items: Range<usize>,
    /// The succeeded job, or why there is none.
    pub result: Result<JobReport, BatchFailure>,
}

/// Totals of a finished push.
#[derive(Debug)]
pub struct Summary {
    pub entity: Entity,
    pub dry_run: bool,
    pub items: usize,
    pub batches: usize,
    pub succeeded: usize,
    pub inserted: u64,
    pub updated: u64,
    /// None when no job reported it.
    pub unchanged: Option<u64>,
    /// Delete jobs' counts; None for upserts.
    pub deleted: Option<u64>,
    pub not_found: Option<u64>,
    pub applied_items: u64,
    pub retries: u64,
    pub elapsed: Duration,
    /// Failed batches, in input order.
    pub failures: Vec<BatchOutcome>,
}

impl Summary {
    /// Totals `outcomes` (in any order).
    pub fn new(
        entity: Entity,
        dry_run: bool,
        items: usize,
        mut outcomes: Vec<BatchOutcome>,
        retries: u64,
        elapsed: Duration,
    ) -> Summary {
        outcomes.sort_by_key(|o| o.number);
        let mut summary = Summary {
            entity,
            dry_run,
            items,
            batches: outcomes.len(),
            succeeded: 0,
            inserted: 0,
            updated: 0,
            unchanged: None,
            deleted: None,
            not_found: None,
            applied_items: 0,
            retries,
            elapsed,
            failures: Vec::new(),
        };
        for outcome in outcomes {
            match &outcome.result {
                Ok(job) => {
                    summary.succeeded += 1;
                    summary.applied_items += job.item_count;
                    summary.inserted += job.inserted.unwrap_or(0);
                    summary.updated += job.updated.unwrap_or(0);
                    for (total, count) in [
                        (&mut summary.unchanged, job.unchanged),
                        (&mut summary.deleted, job.deleted),
                        (&mut summary.not_found, job.not_found),
                    ] {
                        if let Some(count) = count {
                            *total.get_or_insert(0) += count;
                        }
                    }
                }
                Err(_) => summary.failures.push(outcome),
            }
        }
        summary
    }

    /// True when every batch ended in a succeeded job.
    pub fn all_succeeded(&self) -> bool {
        self.failures.is_empty()
    }

    /// The summary as printed on stdout.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let dry_run = if self.dry_run {
            " (dry run: counts say what would have happened; nothing was written)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "push {}: {} succeeded, {} failed{dry_run}",
            self.entity,
            self.succeeded,
            self.failures.len()
        );
        let mut line = |name: &str, value: String| {
            let _ = writeln!(out, "{:<11}{value}", format!("{name}:"));
        };
        line("items", self.items.to_string());
        line("batches", self.batches.to_string());
        line("succeeded", self.succeeded.to_string());
        line("failed", self.failures.len().to_string());
        line("inserted", self.inserted.to_string());
        line("updated", self.updated.to_string());
        for (name, count) in [
            ("unchanged", self.unchanged),
            ("deleted", self.deleted),
            ("not_found", self.not_found),
        ] {
            if let Some(count) = count {
                line(name, count.to_string());
            }
        }
        line("retries", self.retries.to_string());
        line("elapsed", format!("{:.2} s", self.elapsed.as_secs_f64()));
        line(
            "rate",
            format!(
                "{:.0} items/s",
                per_second(self.applied_items, self.elapsed)
            ),
        );
        self.render_failures(&mut out);
        out
    }

    fn render_failures(&self, out: &mut String) {
        let (not_sent, failed): (Vec<_>, Vec<_>) = self
            .failures
            .iter()
            .partition(|o| matches!(o.result, Err(BatchFailure::NotSent)));
        if failed.is_empty() && not_sent.is_empty() {
            return;
        }
        let _ = writeln!(out, "failed batches:");
        for outcome in failed.iter().take(LISTED_FAILURES) {
            if let Err(failure) = &outcome.result {
                let _ = writeln!(out, "  {}", describe(outcome, failure));
            }
        }
        if failed.len() > LISTED_FAILURES {
            let _ = writeln!(out, "  … and {} more", failed.len() - LISTED_FAILURES);
        }
        if !not_sent.is_empty() {
            let _ = writeln!(
                out,
                "  {} batches not sent: the refusal above applies to every batch",
                not_sent.len()
            );
        }
    }
}

/// One failed batch on one line, item indexes made input positions.
fn describe(outcome: &BatchOutcome, failure: &BatchFailure) -> String {
    let first = outcome.items.start;
    let mut text = format!(
        "batch {} (items {}-{}): {failure}",
        outcome.number,
        first,
        outcome.items.end.saturating_sub(1)
    );
    if let BatchFailure::Refused { errors, .. } = failure {
        for error in errors.iter().take(3) {
            match error.index {
                Some(index) => {
                    let _ = write!(text, "; item {}: {}", first + index, error.text);
                }
                None => {
                    let _ = write!(text, "; {}", error.text);
                }
            }
        }
        if errors.len() > 3 {
            let _ = write!(text, "; … {} errors in all", errors.len());
        }
    }
    let indexes = failure.item_indexes();
    if !indexes.is_empty() {
        let listed: Vec<String> = indexes
            .iter()
            .take(LISTED_ITEMS)
            .map(|i| (first + i).to_string())
            .collect();
        let more = if indexes.len() > LISTED_ITEMS {
            format!(" … ({} in all)", indexes.len())
        } else {
            String::new()
        };
        let _ = write!(text, "; offending items: {}{more}", listed.join(", "));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ItemProblem;
    use sync_ingest::store::{JobError, JobStatus};
    use uuid::Uuid;

    fn succeeded(number: usize, items: Range<usize>, inserted: u64) -> BatchOutcome {
        let count = items.len() as u64;
        BatchOutcome {
            number,
            items,
            result: Ok(JobReport {
                correlation_id: Uuid::nil(),
                status: JobStatus::Succeeded,
                item_count: count,
                inserted: Some(inserted),
                updated: Some(count - inserted),
                unchanged: None,
                deleted: None,
                not_found: None,
                error: None,
            }),
        }
    }

    #[test]
    fn totals_add_up_and_failures_name_input_positions() {
        let outcomes = vec![
            BatchOutcome {
                number: 3,
                items: 20..25,
                result: Err(BatchFailure::JobFailed {
                    correlation_id: Uuid::nil(),
                    error: JobError::company_access_violation(vec![1, 4]),
                }),
            },
            succeeded(1, 0..10, 10),
            BatchOutcome {
                number: 2,
                items: 10..20,
                result: Err(BatchFailure::Refused {
                    status: 422,
                    code: "validation_failed".into(),
                    detail: "the request body is invalid".into(),
                    indexes: vec![2],
                    errors: vec![ItemProblem {
                        index: Some(2),
                        text: "`mark`: must not be blank".into(),
                    }],
                }),
            },
        ];
        let summary = Summary::new(
            Entity::Pieces,
            false,
            25,
            outcomes,
            1,
            Duration::from_secs(2),
        );
        assert!(!summary.all_succeeded());
        let text = summary.render();
        assert!(text.contains("inserted:  10\n"), "{text}");
        assert!(text.contains("failed:    2\n"), "{text}");
        assert!(text.contains("rate:      5 items/s\n"), "{text}");
        assert!(
            text.contains("batch 2 (items 10-19): HTTP 422 validation_failed: the request body is invalid; item 12: `mark`: must not be blank; offending items: 12\n"),
            "{text}"
        );
        assert!(
            text.contains("batch 3 (items 20-24): job 00000000-0000-0000-0000-000000000000 failed: company_access_violation:"),
            "{text}"
        );
        assert!(text.contains("offending items: 21, 24\n"), "{text}");
        assert!(
            text.find("batch 2").unwrap_or(0) < text.find("batch 3").unwrap_or(0),
            "{text}"
        );
    }
}
