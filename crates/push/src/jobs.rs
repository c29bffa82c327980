//! `sync-ingest jobs`: the caller's jobs from `GET /api/v1/sync/jobs`, a
//! line each, newest first — "which of today's jobs failed?".

use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write as _;

/// Arguments of `sync-ingest jobs`.
#[derive(Debug, Clone, clap::Args)]
pub struct JobsArgs {
    /// Base URL of the api.
    #[arg(long, env = "SYNC_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// API key or JWT (`Authorization: Bearer`).
    #[arg(long, env = "SYNC_TOKEN", hide_env_values = true)]
    pub token: String,

    /// Only these statuses (comma-separated: queued, processing, succeeded,
    /// failed, cancelled).
    #[arg(long)]
    pub status: Option<String>,

    /// Only this entity's jobs.
    #[arg(long)]
    pub entity: Option<String>,

    /// Only `upsert` or `delete` jobs.
    #[arg(long)]
    pub operation: Option<String>,

    /// Only jobs submitted after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,

    /// At most this many jobs (pages of up to 1000 are fetched as needed).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Debug, Deserialize)]
struct Page {
    jobs: Vec<Value>,
    next_cursor: Option<String>,
}

/// Runs `sync-ingest jobs`: the jobs on stdout, problems on stderr; the
/// process exit code (0, or 1 when the api refused or could not be asked).
pub async fn run(args: JobsArgs) -> i32 {
    match list(&args).await {
        Ok(lines) => {
            print!("{lines}");
            0
        }
        Err(error) => {
            eprintln!("jobs: {error}");
            1
        }
    }
}

async fn list(args: &JobsArgs) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{}/api/v1/sync/jobs", args.url.trim_end_matches('/'));
    let mut out = String::new();
    let mut shown = 0;
    let mut cursor: Option<String> = None;
    while shown < args.limit {
        let mut query: Vec<(&str, String)> = [
            ("status", &args.status),
            ("entity", &args.entity),
            ("operation", &args.operation),
            ("submitted_after", &args.since),
            ("cursor", &cursor),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value.clone()?)))
        .collect();
        query.push(("limit", (args.limit - shown).min(1000).to_string()));
        let response = client
            .get(&url)
            .bearer_auth(args.token.trim())
            .query(&query)
            .send()
            .await
            .map_err(|e| format!("cannot ask {url}: {e}"))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("HTTP {status}: {body}"));
        }
        let page: Page = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        for job in &page.jobs {
            let _ = writeln!(out, "{}", line(job));
        }
        shown += page.jobs.len();
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    Ok(out)
}

/// One job as a line: id, entity, operation, status, items, submitted, and
/// the error code of a failed job.
fn line(job: &Value) -> String {
    let text = |name: &str| job[name].as_str().unwrap_or("-").to_owned();
    format!(
        "{}  {:<10} {:<6} {:<10} {:>5}  {}  {}",
        text("correlation_id"),
        text("entity"),
        text("operation"),
        text("status"),
        job["item_count"],
        text("submitted_at"),
        job["error"]["code"].as_str().unwrap_or(""),
    )
    .trim_end()
    .to_owned()
}
