//! `TestApp`: a real service (api + worker) on its own database and its own
//! queue prefix, against the machine's PostgreSQL and RabbitMQ.

use lapin::{Connection, ConnectionProperties};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use sync_ingest::{
    app::{topology, Mode, Service},
    auth::api_key,
    config::Settings,
};
use uuid::Uuid;

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A running service for one test, cleaned up (database dropped, queues
/// deleted) when dropped.
pub struct TestApp {
    pub base: String,
    pub ops: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
    pub settings: Settings,
    pub database: String,
    service: Option<Service>,
}

/// A fresh company GUID.
pub fn company() -> Uuid {
    Uuid::new_v4()
}

impl TestApp {
    /// api + worker with test settings.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(Mode::All, |_| {}).await
    }

    /// A service in `mode` with settings adjusted by `adjust`.
    pub async fn spawn_with(mode: Mode, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let id = Uuid::new_v4().simple().to_string();
        let database = format!("sync_test_{}", &id[..16]);
        let mut settings = Settings::defaults();
        settings.database_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
        settings.amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f".into();
        settings.queue_prefix = format!("test_{}", &id[..16]);
        settings.http_addr = "127.0.0.1:0".parse().unwrap();
        settings.ops_addr = Some("127.0.0.1:0".parse().unwrap());
        settings.shards = 2;
        settings.confirm_timeout_ms = 3000;
        settings.shutdown_timeout_secs = 5;
        adjust(&mut settings);
        let service = Service::start(settings.clone(), mode)
            .await
            .expect("service starts");
        let base = service
            .http_addr
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        let ops = format!("http://{}", service.ops_addr);
        TestApp {
            base,
            ops,
            pool: service.pool.clone(),
            client: reqwest::Client::new(),
            settings,
            database,
            service: Some(service),
        }
    }

    /// Asks the service to stop (its listeners stop accepting at once).
    pub fn begin_shutdown(&self) {
        if let Some(service) = &self.service {
            service.begin_shutdown();
        }
    }

    /// Issues an API key for `company` with `scopes`.
    pub async fn key(&self, company: Uuid, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        api_key::issue(&self.pool, company, &scopes, Some("test"))
            .await
            .expect("key issued")
            .token
    }

    /// A `sync:write` key for `company`.
    pub async fn writer(&self, company: Uuid) -> String {
        self.key(company, &["sync:write"]).await
    }

    /// POSTs a JSON body to `/api/v1/sync/{entity}`.
    pub async fn post(&self, entity: &str, token: &str, body: &Value) -> Response {
        self.client
            .post(format!("{}/api/v1/sync/{entity}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// POSTs raw bytes with a content type.
    pub async fn post_raw(
        &self,
        entity: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Response {
        self.client
            .post(format!("{}/api/v1/sync/{entity}", self.base))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    /// GETs a job.
    pub async fn get_job(&self, id: &str, token: &str) -> Response {
        self.client
            .get(format!("{}/api/v1/sync/jobs/{id}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    /// POSTs a batch, asserts 202, and returns the body.
    pub async fn accepted(&self, entity: &str, token: &str, body: &Value) -> Value {
        let response = self.post(entity, token, body).await;
        let status = response.status();
        let body: Value = response.json().await.expect("json body");
        assert_eq!(status, StatusCode::ACCEPTED, "body: {body}");
        body
    }

    /// Polls a job until it is finished (20 s at most) and returns it.
    pub async fn finished_job(&self, id: &str, token: &str) -> Value {
        for _ in 0..400 {
            let job: Value = self.get_job(id, token).await.json().await.expect("job");
            if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or(""))
            {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} did not finish in time");
    }

    /// Submits a batch and waits for its job to finish.
    pub async fn sync(&self, entity: &str, token: &str, body: &Value) -> Value {
        let accepted = self.accepted(entity, token, body).await;
        let id = accepted["correlation_id"].as_str().expect("correlation id");
        self.finished_job(id, token).await
    }

    /// GETs a path on the operations listener.
    pub async fn ops_get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.ops))
            .send()
            .await
            .expect("request sent")
    }

    /// Rows of `table` with this guid, as JSON objects.
    pub async fn row(&self, table: &str, guid: Uuid) -> Option<Value> {
        sqlx::query_scalar(&format!(
            "SELECT to_jsonb(t) FROM {table} t WHERE guid = $1"
        ))
        .bind(guid)
        .fetch_optional(&self.pool)
        .await
        .expect("row query")
    }

    /// Number of rows in `table`.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .expect("count query")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(service) = &self.service {
            service.begin_shutdown();
        }
        let settings = self.settings.clone();
        let database = self.database.clone();
        // The test's runtime is blocked here, so its tasks cannot redeclare
        // anything while a separate runtime removes the test's resources.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(remove_resources(settings, database));
        });
        let _ = cleanup.join();
    }
}

async fn remove_resources(settings: Settings, database: String) {
    let topology = topology(&settings);
    topology.remove(&settings.amqp_url).await;
    if let Ok(admin) = PgPool::connect(PG_ADMIN).await {
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
        ))
        .execute(&admin)
        .await;
        admin.close().await;
    }
}

/// A minimal valid item of `entity` for `company`.
pub fn item(entity: &str, company: Uuid) -> Value {
    let reference = Uuid::new_v4().to_string();
    match entity {
        "projects" => json!({"company_guid": company, "number": "P-1", "name": "Bridge"}),
        "components" => json!({"company_guid": company, "project_guid": reference, "name": "Deck"}),
        "assemblies" => json!({"company_guid": company, "project_guid": reference, "mark": "A1"}),
        "pieces" => json!({"company_guid": company, "assembly_guid": reference, "mark": "p1"}),
        "articles" => json!({"company_guid": company, "number": "HEA200", "name": "HEA 200"}),
        other => panic!("no such entity {other}"),
    }
}

/// The five entities as URL segments.
#[allow(dead_code)]
pub const ENTITIES: [&str; 5] = ["projects", "components", "assemblies", "pieces", "articles"];

/// The HS256 secret of [`TestApp::spawn_with_jwt`].
#[allow(dead_code)]
pub const JWT_SECRET: &str = "test-jwt-secret-of-at-least-32-bytes!";

impl TestApp {
    /// api + worker that accept HS256 JWTs signed with [`JWT_SECRET`].
    #[allow(dead_code)]
    pub async fn spawn_with_jwt() -> TestApp {
        Self::spawn_with(Mode::All, |s| s.jwt_secret = Some(JWT_SECRET.into())).await
    }
}

/// `claims` signed with `secret` using `algorithm`.
#[allow(dead_code)]
pub fn signed_jwt(algorithm: jsonwebtoken::Algorithm, secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("JWT signed")
}

/// Claims of a JWT for `company` with `roles`, valid for an hour.
#[allow(dead_code)]
pub fn jwt_claims(company: Uuid, roles: &[&str]) -> Value {
    json!({
        "sub": format!("user-{}", Uuid::new_v4()),
        "company_guid": company,
        "roles": roles,
        "exp": jsonwebtoken::get_current_timestamp() + 3600,
    })
}

/// An HS256 JWT signed with [`JWT_SECRET`] for `company` with `roles`.
#[allow(dead_code)]
pub fn jwt(company: Uuid, roles: &[&str]) -> String {
    signed_jwt(
        jsonwebtoken::Algorithm::HS256,
        JWT_SECRET,
        &jwt_claims(company, roles),
    )
}

/// Asserts `response` is problem+json with `status` and `code`; returns the body.
#[allow(dead_code)]
pub async fn problem(response: Response, status: StatusCode, code: &str) -> Value {
    let actual = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = response.json().await.expect("json body");
    assert_eq!(actual, status, "body: {body}");
    assert_eq!(content_type, "application/problem+json", "body: {body}");
    assert_eq!(body["code"], code, "body: {body}");
    assert_eq!(body["status"], status.as_u16(), "body: {body}");
    body
}

impl TestApp {
    /// POSTs a JSON body to `/api/v1/sync/{target}` with extra headers;
    /// `target` may carry a query (`pieces?dry_run=true`).
    #[allow(dead_code)]
    pub async fn post_with(
        &self,
        target: &str,
        token: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut request = self
            .client
            .post(format!("{}/api/v1/sync/{target}", self.base))
            .bearer_auth(token)
            .json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request sent")
    }

    /// Starts a worker-only service on this app's database and queues. Keep
    /// it alive for the rest of the test; never stop it and expect another
    /// worker to take over (a stopped worker keeps its connection open).
    #[allow(dead_code)]
    pub async fn spawn_worker(&self) -> Service {
        let mut settings = self.settings.clone();
        settings.ops_addr = Some("127.0.0.1:0".parse().unwrap());
        Service::start(settings, Mode::Worker)
            .await
            .expect("worker starts")
    }

    /// A connection to the test's broker.
    #[allow(dead_code)]
    pub async fn amqp(&self) -> Connection {
        Connection::connect(&self.settings.amqp_url, ConnectionProperties::default())
            .await
            .expect("broker reachable")
    }

    /// Ready messages in `queue` (a passive declare; the queue must exist).
    #[allow(dead_code)]
    pub async fn queue_messages(&self, queue: &str) -> u32 {
        let connection = self.amqp().await;
        let channel = connection.create_channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("queue exists");
        let _ = connection.close(200, "counted".into()).await;
        declared.message_count()
    }
}
