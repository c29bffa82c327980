//! A cluster of real `sync-ingest` processes (api and workers) on their own
//! database and queue prefix, and the faults we inflict on it.

use sqlx::PgPool;
use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use sync_ingest::{app::topology, auth::api_key, config::Settings};
use uuid::Uuid;

/// Every test here takes this: some stop the shared RabbitMQ or PostgreSQL,
/// and all of them load the machine with several processes.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The machine's RabbitMQ, as every process of a cluster reaches it.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A connection of the test's own to the broker.
pub async fn broker() -> lapin::Connection {
    lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
        .await
        .expect("broker")
}

const BINARY: &str = env!("CARGO_BIN_EXE_sync-ingest");
const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// One spawned process.
pub struct Process {
    pub child: Child,
    pub http_port: Option<u16>,
    pub ops_port: u16,
}

/// The processes of one scenario and the resources they share.
pub struct Cluster {
    pub database_url: String,
    pub database: String,
    pub prefix: String,
    pub shards: u16,
    pub pool: PgPool,
    pub api: Option<Process>,
    pub workers: Vec<Option<Process>>,
    pub log_dir: PathBuf,
    extra_env: Vec<(String, String)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Cluster {
    /// Creates and migrates the database (with the audit trigger).
    pub async fn new(shards: u16, extra_env: &[(&str, &str)]) -> Cluster {
        let id = Uuid::new_v4().simple().to_string();
        let database = format!("sync_test_fault_{}", &id[..12]);
        let database_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
        let prefix = format!("fault_{}", &id[..12]);
        let log_dir = std::env::temp_dir().join(format!("sync-faults-{prefix}"));
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let pool = sync_ingest::store::connect_and_migrate(&database_url, 4)
            .await
            .expect("database ready");
        sqlx::raw_sql(AUDIT_SQL)
            .execute(&pool)
            .await
            .expect("audit trigger installed");
        Cluster {
            database_url,
            database,
            prefix,
            shards,
            pool,
            api: None,
            workers: Vec::new(),
            log_dir,
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn spawn(&self, role: &'static str, label: &str) -> Process {
        let http_port = (role == "api").then(free_port);
        let ops_port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{label}.log")))
            .expect("log file");
        let mut command = Command::new(BINARY);
        command
            .arg(role)
            .env("DATABASE_URL", &self.database_url)
            .env("AMQP_URL", AMQP_URL)
            .env("SYNC_QUEUE_PREFIX", &self.prefix)
            .env("SYNC_SHARDS", self.shards.to_string())
            .env("SYNC_OPS_ADDR", format!("127.0.0.1:{ops_port}"))
            .env("SYNC_CONFIRM_TIMEOUT_MS", "2000")
            .env("SYNC_SHUTDOWN_TIMEOUT_SECS", "10")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some(port) = http_port {
            command.env("SYNC_HTTP_ADDR", format!("127.0.0.1:{port}"));
        }
        for (k, v) in &self.extra_env {
            command.env(k, v);
        }
        Process {
            child: command.spawn().expect("process spawned"),
            http_port,
            ops_port,
        }
    }

    /// Starts the api and waits until it is ready.
    pub async fn start_api(&mut self) {
        let api = self.spawn("api", "api");
        let port = api.http_port.expect("api port");
        self.api = Some(api);
        wait_ready(&format!("http://127.0.0.1:{port}/readyz")).await;
    }

    /// The api's base URL.
    pub fn base(&self) -> String {
        let port = self
            .api
            .as_ref()
            .and_then(|a| a.http_port)
            .expect("api running");
        format!("http://127.0.0.1:{port}")
    }

    /// The operations listener of the api, or of worker `index`.
    pub fn ops(&self, worker: Option<usize>) -> String {
        let process = match worker {
            None => self.api.as_ref(),
            Some(index) => self.workers.get(index).and_then(Option::as_ref),
        };
        format!(
            "http://127.0.0.1:{}",
            process.expect("process running").ops_port
        )
    }

    /// Everything process `label` (`api`, `worker-0`, …) logged so far.
    pub fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("{label}.log"))).unwrap_or_default()
    }

    /// Starts `n` workers.
    pub fn start_workers(&mut self, n: usize) {
        for _ in 0..n {
            let index = self.workers.len();
            let worker = self.spawn("worker", &format!("worker-{index}"));
            self.workers.push(Some(worker));
        }
    }

    /// (Re)starts worker `index` if it is not running.
    pub fn restart_worker(&mut self, index: usize) {
        if self.workers[index].is_none() {
            self.workers[index] = Some(self.spawn("worker", &format!("worker-{index}")));
        }
    }

    /// `kill -9` of worker `index`.
    pub fn kill_worker(&mut self, index: usize) {
        if let Some(mut worker) = self.workers[index].take() {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
    }

    /// SIGSTOP (`pause`) or SIGCONT of worker `index`: a frozen process
    /// keeps its connections open.
    pub fn signal_worker(&self, index: usize, signal: &str) {
        let pid = self.workers[index]
            .as_ref()
            .expect("worker running")
            .child
            .id();
        sh(&format!("kill -{signal} {pid}"));
    }

    /// The shards worker `index` holds, from its `/readyz` (None while it
    /// does not answer, or is not a current member).
    pub async fn shards_of(&self, index: usize) -> Option<Vec<u16>> {
        let process = self.workers.get(index)?.as_ref()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .ok()?;
        let url = format!("http://127.0.0.1:{}/readyz", process.ops_port);
        let response = client.get(url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body: serde_json::Value = response.json().await.ok()?;
        serde_json::from_value(body["shards"].clone()).ok()
    }

    /// Waits (at most `limit`) until the workers `among` split the shards
    /// evenly: each holds ⌊S/N⌋ or ⌈S/N⌉ (N ≤ S), none holds a shard twice,
    /// every shard is held. Returns how long that took and each one's
    /// shards, or what they held last.
    pub async fn wait_spread(
        &self,
        among: &[usize],
        limit: Duration,
    ) -> Result<(Duration, Vec<Vec<u16>>), String> {
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < limit {
            last.clear();
            for index in among {
                last.push(self.shards_of(*index).await);
            }
            if let Some(held) = last.iter().cloned().collect::<Option<Vec<_>>>() {
                if is_even_split(self.shards, &held) {
                    return Ok((started.elapsed(), held));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("no even split within {limit:?}: {last:?}"))
    }

    /// SIGTERM to worker `index`; returns its exit status and how long it took.
    pub fn terminate_worker(&mut self, index: usize, limit: Duration) -> (Option<i32>, Duration) {
        let mut worker = self.workers[index].take().expect("worker running");
        terminate(&mut worker.child, limit)
    }

    /// SIGTERM to the api.
    pub fn terminate_api(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let mut api = self.api.take().expect("api running");
        terminate(&mut api.child, limit)
    }

    /// An API key with `sync:write` for `company`.
    pub async fn writer(&self, company: Uuid) -> String {
        api_key::issue(
            &self.pool,
            company,
            &["sync:write".to_owned()],
            Some("faults"),
        )
        .await
        .expect("key")
        .token
    }

    /// Waits until no job is queued or processing (at most `limit`).
    pub async fn drain(&self, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sync_jobs WHERE status IN ('queued', 'processing')",
            )
            .fetch_one(&self.pool)
            .await
            .unwrap_or(1);
            if open == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// What a failed drain needs to be understood: the open jobs, the
    /// broker's view of this cluster's queues and consumers, and the end of
    /// every process's log (CI keeps only the test output).
    pub async fn diagnosis(&self) -> String {
        let open: Vec<(Uuid, String, i32, i32)> = sqlx::query_as(
            "SELECT correlation_id, status, attempts, shard FROM sync_jobs \
             WHERE status IN ('queued', 'processing') ORDER BY submitted_at LIMIT 20",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        let mut out = format!("open jobs (first 20): {open:?}\n");
        for args in [
            &[
                "list_queues",
                "name",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
            ][..],
            &[
                "list_consumers",
                "queue_name",
                "channel_pid",
                "active",
                "activity_status",
            ][..],
        ] {
            let listed = Command::new("rabbitmqctl")
                .arg("-q")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            out.push_str(&format!("rabbitmqctl {}:\n", args[0]));
            for line in listed.lines().filter(|l| l.contains(&self.prefix)) {
                out.push_str(&format!("  {line}\n"));
            }
        }
        let mut labels = vec!["api".to_owned()];
        labels.extend((0..self.workers.len()).map(|i| format!("worker-{i}")));
        for label in labels {
            let log = self.log(&label);
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!("--- last lines of {label}.log ---\n"));
            for line in &lines[lines.len().saturating_sub(25)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Settings matching the processes' (for queue names).
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::defaults();
        settings.queue_prefix = self.prefix.clone();
        settings.shards = self.shards;
        settings
    }

    /// Stops every process and removes the database and queues.
    pub async fn teardown(mut self) {
        if let Some(mut api) = self.api.take() {
            let _ = api.child.kill();
            let _ = api.child.wait();
        }
        for index in 0..self.workers.len() {
            self.kill_worker(index);
        }
        self.pool.close().await;
        let topology = topology(&self.settings());
        topology.remove(AMQP_URL).await;
        if let Ok(admin) = PgPool::connect(PG_ADMIN).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.database
            ))
            .execute(&admin)
            .await;
        }
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(api) = &mut self.api {
            let _ = api.child.kill();
        }
        for worker in self.workers.iter_mut().flatten() {
            let _ = worker.child.kill();
        }
    }
}

/// True when `held` (one list per worker) covers every one of `shards`
/// exactly once, each worker with ⌊S/N⌋ or ⌈S/N⌉ of them.
fn is_even_split(shards: u16, held: &[Vec<u16>]) -> bool {
    let (s, n) = (usize::from(shards), held.len().max(1));
    let mut all: Vec<u16> = held.iter().flatten().copied().collect();
    all.sort_unstable();
    all == (0..shards).collect::<Vec<_>>()
        && held
            .iter()
            .all(|h| h.len() == s / n || h.len() == s.div_ceil(n))
}

fn terminate(child: &mut Child, limit: Duration) -> (Option<i32>, Duration) {
    let started = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    while started.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return (status.code(), started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    (None, started.elapsed())
}

async fn wait_ready(url: &str) {
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(response) = client.get(url).send().await {
            if response.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never became ready");
}

/// Test-only audit: every row version written to `pieces`, in commit
/// order per row. A rolled-back transaction leaves no trace, so this shows
/// exactly what was applied, how often, and in which order.
const AUDIT_SQL: &str = r#"
CREATE TABLE apply_log (
    id bigserial PRIMARY KEY,
    guid uuid NOT NULL,
    company_guid uuid NOT NULL,
    quantity integer NOT NULL
);
CREATE FUNCTION log_piece() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO apply_log (guid, company_guid, quantity)
    VALUES (NEW.guid, NEW.company_guid, NEW.quantity);
    RETURN NEW;
END $$;
CREATE TRIGGER pieces_audit AFTER INSERT OR UPDATE ON pieces
    FOR EACH ROW EXECUTE FUNCTION log_piece();
"#;

/// Runs a shell command, panicking if it fails.
pub fn sh(command: &str) {
    let status = Command::new("bash")
        .args(["-c", command])
        .status()
        .expect("command runs");
    assert!(status.success(), "`{command}` failed: {status}");
}

/// True when something listens on `port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Waits (at most `limit`) until `port` accepts connections.
pub async fn wait_port(port: u16, limit: Duration) {
    let started = Instant::now();
    while !port_open(port) {
        assert!(started.elapsed() < limit, "port {port} did not open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
