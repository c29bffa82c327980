//! Talking to the api: submit a batch (retrying what is worth retrying) and
//! follow its job to the end.

use super::{
    backoff,
    error::{BatchFailure, ItemProblem, PushError},
    progress::Progress,
};
use reqwest::{
    header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE},
    Response, StatusCode,
};
use serde::Deserialize;
use std::{sync::Arc, time::Duration};
use sync_ingest::{
    domain::{Entity, Operation},
    store::{JobError, JobStatus},
};
use uuid::Uuid;

/// How long to connect before calling it a network error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's own time beyond any `Prefer: wait`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The first pause between polls of a job, growing by half up to the last.
const POLL_FIRST: Duration = Duration::from_millis(200);
const POLL_MAX: Duration = Duration::from_secs(2);

/// The fields of the job resource (SPEC §5) that push reads.
#[derive(Debug, Clone, Deserialize)]
pub struct JobReport {
    pub correlation_id: Uuid,
    pub status: JobStatus,
    pub item_count: u64,
    pub inserted: Option<u64>,
    pub updated: Option<u64>,
    #[serde(default)]
    pub unchanged: Option<u64>,
    #[serde(default)]
    pub deleted: Option<u64>,
    #[serde(default)]
    pub not_found: Option<u64>,
    pub error: Option<JobError>,
}

/// A problem details body (RFC 9457), as far as push reads it.
#[derive(Debug, Default, Deserialize)]
struct ProblemBody {
    code: Option<String>,
    title: Option<String>,
    detail: Option<String>,
    indexes: Option<Vec<usize>>,
    errors: Option<Vec<FieldErrorBody>>,
}

#[derive(Debug, Deserialize)]
struct FieldErrorBody {
    index: Option<usize>,
    field: Option<String>,
    message: Option<String>,
}

/// One attempt's outcome.
enum Attempt<T> {
    Done(T),
    /// Transient: try again after at least `after`.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    Final(BatchFailure),
}

/// What the client needs to know about the run.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub base_url: String,
    pub token: String,
    pub entity: Entity,
    pub operation: Operation,
    pub dry_run: bool,
    pub wait_secs: u64,
    pub max_retries: u32,
}

/// An HTTP client bound to one api, token and entity.
pub struct Client {
    http: reqwest::Client,
    submit_url: String,
    jobs_url: String,
    authorization: HeaderValue,
    prefer: Option<HeaderValue>,
    wait: Duration,
    max_retries: u32,
    progress: Arc<Progress>,
}

impl Client {
    /// A client for `config`, counting retries in `progress`.
    pub fn new(config: &ClientConfig, progress: Arc<Progress>) -> Result<Client, PushError> {
        let base = config.base_url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(base).map_err(|e| PushError::InvalidUrl {
            url: config.base_url.clone(),
            reason: e.to_string(),
        })?;
        if parsed.scheme() != "http" {
            // Built without a TLS stack: say so rather than fail per batch.
            return Err(PushError::InvalidUrl {
                url: config.base_url.clone(),
                reason: "only http:// is supported (put a TLS proxy in front for https)".into(),
            });
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", config.token.trim()))
            .map_err(|_| PushError::InvalidToken)?;
        authorization.set_sensitive(true);
        let prefer = (config.wait_secs > 0)
            .then(|| HeaderValue::from_str(&format!("wait={}", config.wait_secs)).ok())
            .flatten();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("sync-ingest-push/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(PushError::Client)?;
        let dry_run = if config.dry_run { "?dry_run=true" } else { "" };
        let delete = match config.operation {
            Operation::Upsert => "",
            Operation::Delete => "/delete",
        };
        Ok(Client {
            http,
            submit_url: format!("{base}/api/v1/sync/{}{delete}{dry_run}", config.entity),
            jobs_url: format!("{base}/api/v1/sync/jobs/"),
            authorization,
            prefer,
            wait: Duration::from_secs(config.wait_secs),
            max_retries: config.max_retries,
            progress,
        })
    }

    /// Submits a batch until it is accepted (202, or 200 when it finished
    /// within the wait) or refused for good. Every attempt carries the same
    /// `key`, so a retry after an unanswered attempt never queues twice.
    pub async fn submit(&self, body: &[u8], key: &str) -> Result<JobReport, BatchFailure> {
        self.with_retries(async || {
            let mut request = self
                .http
                .post(&self.submit_url)
                .header(AUTHORIZATION, self.authorization.clone())
                .header(CONTENT_TYPE, "application/json")
                .header("idempotency-key", key)
                .timeout(self.wait + REQUEST_TIMEOUT)
                .body(body.to_vec());
            if let Some(prefer) = &self.prefer {
                request = request.header("prefer", prefer.clone());
            }
            match request.send().await {
                Ok(response) => job_answer(response, &[StatusCode::OK, StatusCode::ACCEPTED]).await,
                Err(error) => network_error(&error),
            }
        })
        .await
    }

    /// Polls the job until it succeeded or failed.
    pub async fn follow(&self, mut job: JobReport) -> Result<JobReport, BatchFailure> {
        let id = job.correlation_id;
        let mut pause = POLL_FIRST;
        while !job.status.is_finished() {
            tokio::time::sleep(pause).await;
            pause = pause.mul_f64(1.5).min(POLL_MAX);
            job = self
                .with_retries(async || {
                    let request = self
                        .http
                        .get(format!("{}{id}", self.jobs_url))
                        .header(AUTHORIZATION, self.authorization.clone())
                        .timeout(REQUEST_TIMEOUT);
                    match request.send().await {
                        Ok(response) => job_answer(response, &[StatusCode::OK]).await,
                        Err(error) => network_error(&error),
                    }
                })
                .await
                .map_err(|failure| BatchFailure::Unfollowed {
                    correlation_id: id,
                    reason: failure.to_string(),
                })?;
        }
        Ok(job)
    }

    /// Runs `attempt` until it is done, final, or out of retries.
    async fn with_retries<T>(
        &self,
        mut attempt: impl AsyncFnMut() -> Attempt<T>,
    ) -> Result<T, BatchFailure> {
        let mut retry = 0;
        loop {
            match attempt().await {
                Attempt::Done(value) => return Ok(value),
                Attempt::Final(failure) => return Err(failure),
                Attempt::Retry { after, reason } => {
                    if retry >= self.max_retries {
                        return Err(BatchFailure::GaveUp {
                            attempts: retry + 1,
                            last: reason,
                        });
                    }
                    self.progress.retried();
                    tokio::time::sleep(backoff::delay(retry, after, backoff::jitter())).await;
                    retry += 1;
                }
            }
        }
    }
}

/// Reads an answer that should carry a job resource with one of `expected`.
async fn job_answer(response: Response, expected: &[StatusCode]) -> Attempt<JobReport> {
    let status = response.status();
    let retry_after = backoff::retry_after(response.headers());
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(error) => return network_error(&error),
    };
    if expected.contains(&status) {
        return match serde_json::from_slice::<JobReport>(&bytes) {
            Ok(job) => Attempt::Done(job),
            Err(error) => Attempt::Final(BatchFailure::Protocol(format!(
                "HTTP {status} without a job resource: {error}"
            ))),
        };
    }
    let problem: ProblemBody = serde_json::from_slice(&bytes).unwrap_or_default();
    let code = problem.code.clone().unwrap_or_else(|| "-".to_owned());
    if is_transient(status) {
        return Attempt::Retry {
            after: retry_after,
            reason: format!("HTTP {} {code}", status.as_u16()),
        };
    }
    Attempt::Final(refusal(status, code, problem))
}

/// 429, 408 and every 5xx are worth another try (with the same key, so
/// this is safe); any other 4xx is final.
fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

fn network_error<T>(error: &reqwest::Error) -> Attempt<T> {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "connection failed"
    };
    Attempt::Retry {
        after: None,
        reason: format!("{kind}: {error}"),
    }
}

fn refusal(status: StatusCode, code: String, problem: ProblemBody) -> BatchFailure {
    let errors = problem.errors.unwrap_or_default();
    let mut indexes = problem.indexes.unwrap_or_default();
    indexes.extend(errors.iter().filter_map(|e| e.index));
    indexes.sort_unstable();
    indexes.dedup();
    let detail = problem
        .detail
        .or(problem.title)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
    let quoted = errors
        .into_iter()
        .map(|error| {
            let message = error.message.unwrap_or_else(|| "invalid".to_owned());
            ItemProblem {
                index: error.index,
                text: match error.field {
                    Some(field) => format!("`{field}`: {message}"),
                    None => message,
                },
            }
        })
        .collect();
    BatchFailure::Refused {
        status: status.as_u16(),
        code,
        detail,
        indexes,
        errors: quoted,
    }
}
