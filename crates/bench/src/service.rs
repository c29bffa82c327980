//! The service measured as users run it: `sync-ingest api` and `worker`
//! child processes (this same executable) on their own database and queue
//! prefix, driven over HTTP.

use super::{
    data::{self, TenantLoad},
    stats::{Latency, Rate},
    BenchError,
};
use sqlx::PgPool;
use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use sync_ingest::{app::topology, auth::api_key, config::Settings, store};

/// A prepared POST: where to, its bearer token if any, the items it
/// carries, its body.
pub struct Request {
    pub url: String,
    pub token: Option<String>,
    pub items: usize,
    pub body: Vec<u8>,
}

/// A throw-away deployment: its own database, prefix and processes.
pub struct Stack {
    settings: Settings,
    database: String,
    pub pool: PgPool,
    /// The api's process, HTTP port and ops port.
    api: Option<(Child, u16, u16)>,
    /// The workers' processes and ops ports.
    workers: Vec<(Child, u16)>,
}

fn free_port() -> Result<u16, BenchError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Peak resident memory of a process in bytes (`VmHWM`), Linux only.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Stack {
    /// Creates the database (migrated) for a stack derived from `base`.
    pub async fn new(base: &Settings, name: &str) -> Result<Stack, BenchError> {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let mut settings = base.clone();
        let database = format!("sync_bench_{name}_{id}");
        let server = base
            .database_url
            .rsplit_once('/')
            .map_or(base.database_url.as_str(), |(server, _)| server);
        settings.database_url = format!("{server}/{database}");
        settings.queue_prefix = format!("bench_{name}_{id}");
        let pool = store::connect_and_migrate(&settings.database_url, 8).await?;
        Ok(Stack {
            settings,
            database,
            pool,
            api: None,
            workers: Vec::new(),
        })
    }

    fn spawn(
        &self,
        role: &str,
        http_port: Option<u16>,
        ops_port: u16,
    ) -> Result<Child, BenchError> {
        let mut command = Command::new(service_binary()?);
        command
            .arg(role)
            .env("DATABASE_URL", &self.settings.database_url)
            .env("AMQP_URL", &self.settings.amqp_url)
            .env("SYNC_QUEUE_PREFIX", &self.settings.queue_prefix)
            .env("SYNC_SHARDS", self.settings.shards.to_string())
            .env("SYNC_OPS_ADDR", format!("127.0.0.1:{ops_port}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(port) = http_port {
            command.env("SYNC_HTTP_ADDR", format!("127.0.0.1:{port}"));
        }
        Ok(command.spawn()?)
    }

    /// Starts the api and waits until it is ready.
    pub async fn start_api(&mut self) -> Result<(), BenchError> {
        let (port, ops_port) = (free_port()?, free_port()?);
        self.api = Some((self.spawn("api", Some(port), ops_port)?, port, ops_port));
        let client = reqwest::Client::new();
        for _ in 0..200 {
            let ready = client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(BenchError::Service("the api did not become ready".into()))
    }

    /// Starts one worker process (it takes its share of the shards).
    pub fn start_worker(&mut self) -> Result<(), BenchError> {
        let ops_port = free_port()?;
        let worker = self.spawn("worker", None, ops_port)?;
        self.workers.push((worker, ops_port));
        Ok(())
    }

    /// The api's process id.
    pub fn api_pid(&self) -> Option<u32> {
        self.api.as_ref().map(|(c, _, _)| c.id())
    }

    /// The api's metrics, as Prometheus scrapes them.
    pub async fn api_metrics(&self) -> Result<String, BenchError> {
        let (_, _, ops_port) = self
            .api
            .as_ref()
            .ok_or_else(|| BenchError::Service("no api".into()))?;
        let url = format!("http://127.0.0.1:{ops_port}/metrics");
        Ok(reqwest::get(url).await?.error_for_status()?.text().await?)
    }

    /// The first worker's process id.
    pub fn worker_pid(&self) -> Option<u32> {
        self.worker_pids().first().copied()
    }

    /// Every worker's process id.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(|(w, _)| w.id()).collect()
    }

    /// Items each worker applied, from its metrics.
    pub async fn items_applied_by_worker(&self) -> Result<Vec<f64>, BenchError> {
        let mut applied = Vec::new();
        for (_, ops_port) in &self.workers {
            let url = format!("http://127.0.0.1:{ops_port}/metrics");
            let exposition = reqwest::get(url).await?.error_for_status()?.text().await?;
            let name = sync_ingest::telemetry::metrics::ITEMS_APPLIED;
            applied.push(super::stats::counter_total(&exposition, name, &[]));
        }
        Ok(applied)
    }

    /// Peak RSS of the api and of the first worker.
    pub fn peak_rss(&self) -> (Option<u64>, Option<u64>) {
        (
            self.api_pid().and_then(peak_rss),
            self.worker_pid().and_then(peak_rss),
        )
    }

    /// Where the api takes batches of pieces.
    fn submit_url(&self) -> Result<String, BenchError> {
        let (_, port, _) = self
            .api
            .as_ref()
            .ok_or_else(|| BenchError::Service("no api".into()))?;
        Ok(format!("http://127.0.0.1:{port}/api/v1/sync/pieces"))
    }

    /// Every batch as a request (token, item count, body), tenants
    /// interleaved so every shard has work from the start; built ahead so
    /// that serialising them is not counted as the client's work.
    pub async fn requests(&self, loads: &[TenantLoad]) -> Result<Vec<Request>, BenchError> {
        let mut tokens = Vec::new();
        for load in loads {
            let key = api_key::issue(
                &self.pool,
                load.company,
                &["sync:write".to_owned()],
                Some("bench"),
            )
            .await?;
            tokens.push(key.token);
        }
        let url = self.submit_url()?;
        Ok(data::in_sending_order(loads)
            .map(|(tenant, batch)| Request {
                url: url.clone(),
                token: Some(tokens[tenant].clone()),
                items: batch.len(),
                body: batch.body.clone(),
            })
            .collect())
    }

    /// Brings a fresh api to the state it is in after serving a while, so
    /// that intake measures its steady capacity rather than its first
    /// moments: `rounds` × `concurrency` empty batches, which open every
    /// pooled database connection and every client connection and run the
    /// submission's statements on them once, and queue nothing.
    pub async fn warm_up(
        &self,
        requests: &[Request],
        concurrency: usize,
        rounds: usize,
    ) -> Result<(), BenchError> {
        let mut tokens: Vec<&String> = requests.iter().filter_map(|r| r.token.as_ref()).collect();
        tokens.sort();
        tokens.dedup();
        let url = self.submit_url()?;
        let empty = tokens
            .iter()
            .cycle()
            .take(concurrency * rounds)
            .map(|token| Request {
                url: url.clone(),
                token: Some((*token).clone()),
                items: 0,
                body: b"[]".to_vec(),
            })
            .collect();
        post_all(empty, concurrency).await.map(|_| ())
    }

    /// Waits until every job is finished; fails if any failed.
    pub async fn wait_drained(&self, limit: Duration) -> Result<(), BenchError> {
        let started = Instant::now();
        loop {
            let (open, failed): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE status IN ('queued', 'processing')), \
                        count(*) FILTER (WHERE status = 'failed') FROM sync_jobs",
            )
            .fetch_one(&self.pool)
            .await?;
            if failed > 0 {
                return Err(BenchError::Service(format!("{failed} jobs failed")));
            }
            if open == 0 {
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(BenchError::Service(format!(
                    "{open} jobs still open after {limit:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Time from submission to completion of every job.
    pub async fn job_latencies(&self) -> Result<Latency, BenchError> {
        let millis: Vec<f64> = sqlx::query_scalar(
            "SELECT (extract(epoch FROM completed_at - submitted_at) * 1000)::float8 FROM sync_jobs",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(Latency::of(
            millis
                .into_iter()
                .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0))
                .collect(),
        ))
    }

    /// Stops the processes and removes the database and queues.
    pub async fn teardown(mut self) {
        if let Some((mut api, _, _)) = self.api.take() {
            let _ = api.kill();
            let _ = api.wait();
        }
        for (mut worker, _) in self.workers.drain(..) {
            let _ = worker.kill();
            let _ = worker.wait();
        }
        self.pool.close().await;
        let topology = topology(&self.settings);
        topology.remove(&self.settings.amqp_url).await;
        drop_database(&self.settings.database_url, &self.database).await;
    }
}

/// POSTs every request, `concurrency` at a time (requests taken in order,
/// so each tenant's batches go in order), and returns the accepted rate
/// and the request latencies. Anything but `202` fails the run.
pub async fn post_all(
    requests: Vec<Request>,
    concurrency: usize,
) -> Result<(Rate, Latency), BenchError> {
    let work = Arc::new(Mutex::new(requests.into_iter()));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let work = work.clone();
        let client = client.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut accepted = 0usize;
            loop {
                let next = work.lock().map_err(|_| BenchError::Poisoned)?.next();
                let Some(request) = next else {
                    break;
                };
                let sent = Instant::now();
                let mut post = client
                    .post(&request.url)
                    .header("content-type", "application/json")
                    .body(request.body);
                if let Some(token) = &request.token {
                    post = post.bearer_auth(token);
                }
                let response = post.send().await?;
                let status = response.status();
                // Read to the end, as a client does: a connection whose
                // answer was left unread cannot be reused.
                response.bytes().await?;
                latencies.push(sent.elapsed());
                if status != reqwest::StatusCode::ACCEPTED {
                    return Err(BenchError::Service(format!("submission answered {status}")));
                }
                accepted += request.items;
            }
            Ok::<_, BenchError>((accepted, latencies))
        });
    }
    let mut accepted = 0;
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (items, samples) = done.map_err(|e| BenchError::Task(e.to_string()))??;
        accepted += items;
        latencies.extend(samples);
    }
    Ok((
        Rate::new(accepted, started.elapsed()),
        Latency::of(latencies),
    ))
}

/// Drops a benchmark database (connecting to `postgres` on the same server).
pub async fn drop_database(url: &str, database: &str) {
    let admin = url
        .rsplit_once('/')
        .map_or(url.to_owned(), |(server, _)| format!("{server}/postgres"));
    if let Ok(pool) = PgPool::connect(&admin).await {
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
        ))
        .execute(&pool)
        .await;
        pool.close().await;
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some((api, _, _)) = &mut self.api {
            let _ = api.kill();
        }
        for (worker, _) in &mut self.workers {
            let _ = worker.kill();
        }
    }
}

/// The `sync-ingest` binary the benchmark measures: the one built beside
/// it (`cargo build --workspace` puts them in one folder).
fn service_binary() -> Result<std::path::PathBuf, BenchError> {
    let beside = std::env::current_exe()?.with_file_name("sync-ingest");
    if beside.is_file() {
        Ok(beside)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no service binary at {} (build the workspace: cargo build --workspace)",
                beside.display()
            ),
        )
        .into())
    }
}
