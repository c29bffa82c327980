//! `sync-ingest push`: the bulk loader. Reads files of items (or, with
//! `--delete`, of the keys of rows to delete), submits them in batches with
//! bounded concurrency, retries what is transient under a stable
//! `Idempotency-Key`, follows every job to its end and prints a summary.

mod backoff;
mod client;
mod error;
mod input;
pub mod jobs;
mod progress;
mod summary;

pub use client::JobReport;
pub use error::{BatchFailure, ItemProblem, PushError};
pub use summary::{BatchOutcome, Summary};

use client::{Client, ClientConfig};
use futures_util::{stream, StreamExt};
use progress::{Progress, Reporter};
use sha2::{Digest, Sha256};
use std::{
    ops::Range,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};
use sync_ingest::{
    domain::{Entity, Operation},
    store::{JobError, JobErrorCode, JobStatus},
};

/// Arguments of `sync-ingest push`.
#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {
    /// Files of items, each a JSON array or NDJSON (one item per line);
    /// `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// The entity the items are.
    #[arg(long, value_parser = entity_parser())]
    pub entity: Entity,

    /// Base URL of the api.
    #[arg(long, env = "SYNC_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// API key or JWT (`Authorization: Bearer`).
    #[arg(long, env = "SYNC_TOKEN", hide_env_values = true)]
    pub token: String,

    /// Items per request; defaults to, and may not exceed, the entity's
    /// limit (pieces 1000, others 5000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: Option<u32>,

    /// Batches in flight at once (submitted or being followed). 1 keeps
    /// the input order of application.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,

    /// Run everything and roll the changes back: counts without writes.
    #[arg(long)]
    pub dry_run: bool,

    /// Delete the rows the items name (each `{"guid", "company_guid"}`)
    /// instead of upserting them.
    #[arg(long)]
    pub delete: bool,

    /// Seconds each request waits for its job (`Prefer: wait`) before
    /// polling; 0 polls at once.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub wait_secs: u64,

    /// Retries of one request after 429, 5xx or a network error.
    #[arg(long, default_value_t = 10)]
    pub max_retries: u32,

    /// Derive idempotency keys from this id instead of a fresh one: rerun an
    /// interrupted push with the id it printed and the same files and
    /// batch size, and batches it already queued are not queued again.
    #[arg(long)]
    pub run_id: Option<String>,
}

fn entity_parser() -> impl clap::builder::TypedValueParser<Value = Entity> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Entity::ALL.map(Entity::as_str))
        .try_map(|name| name.parse::<Entity>())
}

/// The most items one request of `entity` may carry (SPEC §2 defaults; a
/// server configured lower answers `400 batch_too_large`).
pub fn batch_limit(entity: Entity) -> usize {
    match entity {
        Entity::Pieces => 1000,
        _ => 5000,
    }
}

/// How a push ended, as the process sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushStatus {
    /// Every batch ended in a succeeded job.
    Succeeded,
    /// At least one batch was refused or its job failed.
    SomeFailed,
    /// Bad arguments or input: nothing was sent.
    Usage,
}

impl PushStatus {
    /// The process exit code: 0, 1 or 2.
    pub fn exit_code(self) -> i32 {
        match self {
            PushStatus::Succeeded => 0,
            PushStatus::SomeFailed => 1,
            PushStatus::Usage => 2,
        }
    }
}

/// Runs `sync-ingest push`: progress and errors on stderr, the summary on
/// stdout.
pub async fn run(args: PushArgs) -> PushStatus {
    match push(args).await {
        Ok(summary) => {
            print!("{}", summary.render());
            if summary.all_succeeded() {
                PushStatus::Succeeded
            } else {
                PushStatus::SomeFailed
            }
        }
        Err(error) => {
            eprintln!("push: {error}");
            PushStatus::Usage
        }
    }
}

/// What every batch of one run shares.
struct Run<'a> {
    client: Client,
    items: &'a input::Items,
    progress: Arc<Progress>,
    entity: Entity,
    operation: Operation,
    dry_run: bool,
    run_id: String,
    /// Set after a refusal that every later batch would meet too.
    stop: AtomicBool,
}

/// Reads the inputs and pushes them; Err only for usage and input errors.
pub async fn push(args: PushArgs) -> Result<Summary, PushError> {
    let batch_size = batch_size(&args)?;
    // Blocking reads are fine here: nothing else runs yet.
    let items = input::Items::read(&args.files)?;
    let progress = Arc::new(Progress::new(items.len()));
    let operation = if args.delete {
        Operation::Delete
    } else {
        Operation::Upsert
    };
    let config = ClientConfig {
        base_url: args.url.clone(),
        token: args.token.clone(),
        entity: args.entity,
        operation,
        dry_run: args.dry_run,
        wait_secs: args.wait_secs,
        max_retries: args.max_retries,
    };
    let run = Run {
        client: Client::new(&config, progress.clone())?,
        items: &items,
        progress: progress.clone(),
        entity: args.entity,
        operation,
        dry_run: args.dry_run,
        run_id: args
            .run_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        stop: AtomicBool::new(false),
    };
    if items.is_empty() {
        eprintln!("push: the input holds no items; nothing to send");
    }
    let plan = batches(items.len(), batch_size);
    eprintln!(
        "push: {} {} {} in {} batches of up to {batch_size} to {} (run id {})",
        operation.as_str(),
        items.len(),
        args.entity,
        plan.len(),
        args.url,
        run.run_id
    );
    let reporter = Reporter::start(progress.clone());
    let outcomes: Vec<BatchOutcome> = stream::iter(plan.into_iter().enumerate())
        .map(|(index, range)| send_batch(&run, index + 1, range))
        .buffer_unordered(args.concurrency as usize)
        .collect()
        .await;
    reporter.finish().await;
    Ok(Summary::new(
        args.entity,
        args.dry_run,
        items.len(),
        outcomes,
        progress.retries(),
        progress.elapsed(),
    ))
}

/// The batch size asked for, within the entity's limit.
fn batch_size(args: &PushArgs) -> Result<usize, PushError> {
    let limit = batch_limit(args.entity);
    match args.batch_size.map(|n| n as usize) {
        Some(requested) if requested > limit => Err(PushError::BatchTooLarge {
            requested,
            entity: args.entity,
            limit,
        }),
        Some(requested) => Ok(requested),
        None => Ok(limit),
    }
}

/// Consecutive ranges of at most `size` items covering `0..total`.
fn batches(total: usize, size: usize) -> Vec<Range<usize>> {
    (0..total)
        .step_by(size.max(1))
        .map(|start| start..(start + size).min(total))
        .collect()
}

/// Submits batch `number` and follows its job to the end.
async fn send_batch(run: &Run<'_>, number: usize, items: Range<usize>) -> BatchOutcome {
    let count = items.len();
    let result = if run.stop.load(Ordering::Relaxed) {
        Err(BatchFailure::NotSent)
    } else {
        let body = run.items.body(items.clone());
        let key = idempotency_key(run, number, &body);
        submit_and_follow(run, body, &key, count).await
    };
    match &result {
        Ok(_) => run.progress.applied(count),
        Err(failure) => {
            if failure.applies_to_every_batch() {
                run.stop.store(true, Ordering::Relaxed);
            }
            run.progress.failed(count);
        }
    }
    BatchOutcome {
        number,
        items,
        result,
    }
}

async fn submit_and_follow(
    run: &Run<'_>,
    body: Vec<u8>,
    key: &str,
    count: usize,
) -> Result<JobReport, BatchFailure> {
    let job = run.client.submit(&body, key).await?;
    drop(body);
    run.progress.accepted(count);
    let job = run.client.follow(job).await?;
    match job.status {
        JobStatus::Succeeded => Ok(job),
        JobStatus::Cancelled => Err(BatchFailure::Cancelled {
            correlation_id: job.correlation_id,
        }),
        _ => Err(BatchFailure::JobFailed {
            correlation_id: job.correlation_id,
            error: job.error.unwrap_or_else(|| JobError {
                code: JobErrorCode::Unknown,
                message: "the job failed without saying why".into(),
                indexes: None,
            }),
        }),
    }
}

/// `push-` and the SHA-256 of the run, the request's entity, operation and
/// dry-run flag, the batch's place and its body: the same on every retry of the
/// batch, different for any other request — so a retry after an unanswered
/// attempt gets the original job, and another run applies the file again.
fn idempotency_key(run: &Run<'_>, number: usize, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(run.run_id.as_bytes());
    hash.update([0]);
    hash.update(run.entity.as_str());
    // An upsert's key is what it was before deletes, so reruns still match.
    if run.operation == Operation::Delete {
        hash.update("\0delete");
    }
    hash.update([0, u8::from(run.dry_run), 0]);
    hash.update((number as u64).to_be_bytes());
    hash.update(body);
    format!("push-{:x}", hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_item_once_within_the_size() {
        assert_eq!(batches(0, 1000), Vec::<Range<usize>>::new());
        assert_eq!(batches(2500, 1000), vec![0..1000, 1000..2000, 2000..2500]);
        assert_eq!(batches(3, 3), vec![0..3]);
    }

    #[test]
    fn push_parses_its_flags_with_defaults() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            push: PushArgs,
        }
        let cli: Cli = clap::Parser::try_parse_from([
            "push", "--entity", "pieces", "--token", "k", "a.json", "-",
        ])
        .expect("parses");
        assert_eq!(cli.push.entity, Entity::Pieces);
        assert_eq!(cli.push.concurrency, 4);
        assert_eq!(cli.push.wait_secs, 30);
        assert_eq!(cli.push.max_retries, 10);
        assert_eq!(cli.push.files.len(), 2);
        let unknown = <Cli as clap::Parser>::try_parse_from([
            "push", "--entity", "bolts", "--token", "k", "a.json",
        ]);
        assert!(unknown.is_err());
    }
}
