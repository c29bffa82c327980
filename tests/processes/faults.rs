use crate::cluster::{broker, sh, wait_port, Cluster, SERIAL};
use crate::load::{audit, push, Submission, Tenant, Verdict};
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
    BasicProperties,
};
use std::time::Duration;
use sync_ingest::app::topology;
use uuid::Uuid;

const PIECES_PER_BATCH: usize = 20;

/// Makes every batch's upsert take ~40 ms, so that a worker killed at a
/// random moment is most likely killed inside a transaction.
const SLOW_APPLY: &str = r#"
CREATE FUNCTION slow_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(0.04); RETURN NULL; END $$;
CREATE TRIGGER pieces_slow AFTER INSERT OR UPDATE ON pieces
    FOR EACH STATEMENT EXECUTE FUNCTION slow_apply();
"#;

pub async fn slow_down(cluster: &Cluster) {
    sqlx::raw_sql(SLOW_APPLY)
        .execute(&cluster.pool)
        .await
        .expect("slow trigger");
}
const PAUSE: Duration = Duration::from_millis(15);

/// The set-up of the load scenarios: api, three workers sharing four
/// shards, slow applies (so faults land inside transactions) and two
/// tenants.
async fn busy_cluster() -> (Cluster, Vec<Tenant>) {
    let mut cluster = Cluster::new(4, &[]).await;
    slow_down(&cluster).await;
    cluster.start_api().await;
    cluster.start_workers(3);
    let tenants = tenants(&cluster, 2).await;
    (cluster, tenants)
}

pub async fn tenants(cluster: &Cluster, n: usize) -> Vec<Tenant> {
    let mut tenants = Vec::new();
    for _ in 0..n {
        let company = Uuid::new_v4();
        let token = cluster.writer(company).await;
        tenants.push(Tenant::new(company, token, PIECES_PER_BATCH));
    }
    tenants
}

pub type Load = Vec<tokio::task::JoinHandle<Vec<Submission>>>;

/// Pushes `batches` per tenant (sequence numbers 1 to `batches`) in the
/// background.
pub fn start_load(cluster: &Cluster, tenants: &[Tenant], batches: i32) -> Load {
    tenants
        .iter()
        .map(|t| tokio::spawn(push(cluster.base(), t.clone(), 1..=batches, PAUSE)))
        .collect()
}

/// During an outage every refusal is a 503 and no request hangs (a hung
/// request shows as status 0: the client gave up after 15 s).
fn assert_outage_answers(scenario: &str, submissions: &[Vec<Submission>]) {
    for s in submissions.iter().flatten() {
        assert!(
            s.status == 202 || s.status == 503,
            "{scenario}: batch {} answered {}",
            s.seq,
            s.status
        );
    }
}

/// Continues each tenant's load with `seqs` once its first part is done.
/// One client per tenant, as the order guarantee assumes: two clients
/// pushing one tenant's batches at once have no order between them (a
/// second load started while the first still ran, on a machine where the
/// first outlasted the outage, interleaved its batches with the first's
/// and the audit called that out of order).
pub fn continue_load(
    cluster: &Cluster,
    tenants: &[Tenant],
    first: Load,
    seqs: std::ops::RangeInclusive<i32>,
) -> Load {
    first
        .into_iter()
        .zip(tenants)
        .map(|(first, tenant)| {
            let (base, tenant, seqs) = (cluster.base(), tenant.clone(), seqs.clone());
            tokio::spawn(async move {
                let mut all = first.await.expect("load");
                all.extend(push(base, tenant, seqs, PAUSE).await);
                all
            })
        })
        .collect()
}

pub async fn judge(
    scenario: &str,
    cluster: &Cluster,
    tenants: &[Tenant],
    loads: Load,
) -> (Verdict, Vec<Vec<Submission>>) {
    let mut all = Vec::new();
    for load in loads {
        all.push(load.await.expect("load task"));
    }
    if !cluster.drain(Duration::from_secs(90)).await {
        panic!(
            "{scenario}: jobs still open after 90 s (logs in {})\n{}",
            cluster.log_dir.display(),
            cluster.diagnosis().await
        );
    }
    let mut verdict = Verdict::default();
    for (tenant, submissions) in tenants.iter().zip(&all) {
        audit(&cluster.pool, tenant, submissions, &mut verdict).await;
    }
    let redelivered: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_jobs WHERE attempts > 1")
        .fetch_one(&cluster.pool)
        .await
        .expect("redeliveries");
    println!(
        "{} redelivered_jobs={redelivered}",
        verdict.summary(scenario)
    );
    assert!(verdict.is_clean(), "{scenario}: {verdict:?}");
    assert!(verdict.accepted > 0, "{scenario}: nothing was accepted");
    assert_eq!(verdict.applied, verdict.accepted, "{scenario}: {verdict:?}");
    (verdict, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_lose_nothing_and_double_nothing() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, tenants) = busy_cluster().await;
    let loads = start_load(&cluster, &tenants, 60);
    // kill -9 a worker at uneven moments, four times, restarting it each time.
    for (round, pause_ms) in [350u64, 720, 510, 900].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        let victim = round % 2;
        cluster.kill_worker(victim);
        tokio::time::sleep(Duration::from_millis(200)).await;
        cluster.restart_worker(victim);
    }
    judge("killed_workers", &cluster, &tenants, loads).await;
    cluster.teardown().await;
}

/// An outage of a service the cluster depends on, under load: `stop` it,
/// check that /readyz says so, `start` it, and check that the processes —
/// never restarted — become ready and accept every later batch, and that
/// the audit finds nothing lost, doubled or reordered.
async fn outage_scenario(scenario: &str, stop: &str, start: &str, port: u16) {
    let _serial = SERIAL.lock().await;
    let (cluster, tenants) = busy_cluster().await;
    let loads = start_load(&cluster, &tenants, 80);
    tokio::time::sleep(Duration::from_millis(600)).await;
    sh(stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ready_during_outage = reqwest::get(format!("{}/readyz", cluster.base()))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    sh(start);
    wait_port(port, Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let mut ready_again = false;
    for _ in 0..150 {
        let status = client
            .get(format!("{}/readyz", cluster.base()))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if matches!(status, Ok(200)) {
            ready_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        ready_again,
        "{scenario}: the api did not become ready again by itself"
    );
    let loads = continue_load(&cluster, &tenants, loads, 1001..=1010);
    let (verdict, submissions) = judge(scenario, &cluster, &tenants, loads).await;
    let (took, spread) = cluster
        .wait_spread(&[0, 1, 2], Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{scenario}: shards not spread again: {e}"));
    println!("scenario={scenario} spread_again={spread:?} within={took:?}");
    assert_outage_answers(scenario, &submissions);
    assert_eq!(
        ready_during_outage, 503,
        "{scenario}: /readyz must tell the truth during the outage"
    );
    assert!(
        verdict.refused > 0,
        "{scenario}: the outage must have refused some batches"
    );
    let accepted_after = submissions
        .iter()
        .flatten()
        .filter(|s| s.seq > 1000 && s.status == 202)
        .count();
    assert_eq!(
        accepted_after, 20,
        "{scenario}: every batch after the outage is accepted"
    );
    cluster.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_and_processes_recover_by_themselves() {
    outage_scenario(
        "broker_restart",
        "rabbitmqctl -q stop_app",
        "rabbitmqctl -q start_app",
        5672,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_loses_nothing_and_workers_resume() {
    outage_scenario(
        "database_restart",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main stop -m fast",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        5432,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_and_exits_zero() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, tenants) = busy_cluster().await;
    let loads = start_load(&cluster, &tenants, 60);
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (code, took) = tokio::task::block_in_place(|| {
            cluster.terminate_worker(round, Duration::from_secs(15))
        });
        assert_eq!(code, Some(0), "worker {round} exit after SIGTERM");
        assert!(
            took < Duration::from_secs(12),
            "worker {round} took {took:?}"
        );
        cluster.restart_worker(round);
    }
    judge("sigterm_workers", &cluster, &tenants, loads).await;
    let (code, _) = tokio::task::block_in_place(|| cluster.terminate_api(Duration::from_secs(15)));
    assert_eq!(code, Some(0), "api exit after SIGTERM");
    cluster.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_every_shard_goes_on() {
    let _serial = SERIAL.lock().await;
    let shards = 3;
    let mut cluster = Cluster::new(shards, &[]).await;
    cluster.start_api().await;
    cluster.start_workers(1);
    let topology = topology(&cluster.settings());
    let connection = broker().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    // Per shard: a job whose message is garbage, one with an unknown message
    // version, and a garbage message with no correlation id at all.
    let mut poisoned_jobs = Vec::new();
    for shard in 0..shards {
        let bodies: [(&[u8], bool); 3] = [
            (b"{not json", true),
            (
                br#"{"version":99,"correlation_id":"00000000-0000-0000-0000-000000000000"}"#,
                true,
            ),
            (b"\x00\x01garbage", false),
        ];
        for (body, with_job) in bodies {
            let mut properties = BasicProperties::default().with_delivery_mode(2);
            if with_job {
                let id = Uuid::now_v7();
                sqlx::query(
                    "INSERT INTO sync_jobs (correlation_id, company_guid, entity, status, \
                     item_count, shard, submitted_by) VALUES ($1, $2, 'pieces', 'queued', 1, $3, 'test')",
                )
                .bind(id)
                .bind(Uuid::new_v4())
                .bind(i32::from(shard))
                .execute(&cluster.pool)
                .await
                .expect("job row");
                properties = properties.with_correlation_id(id.to_string().into());
                poisoned_jobs.push(id);
            }
            let confirm = channel
                .basic_publish(
                    topology.requests_exchange().into(),
                    shard.to_string().into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            assert!(confirm.is_ack());
        }
    }
    // Valid batches after the poison, on every shard.
    let tenants = tenants(&cluster, 6).await;
    let loads = start_load(&cluster, &tenants, 5);
    judge("poison_messages", &cluster, &tenants, loads).await;
    for id in &poisoned_jobs {
        let (status, code): (String, Option<String>) = sqlx::query_as(
            "SELECT status, error->>'code' FROM sync_jobs WHERE correlation_id = $1",
        )
        .bind(id)
        .fetch_one(&cluster.pool)
        .await
        .expect("job");
        assert_eq!(status, "failed");
        assert_eq!(code.as_deref(), Some("invalid_message"));
    }
    let dead = channel
        .queue_declare(
            topology.dead().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("dead queue");
    assert_eq!(
        dead.message_count(),
        u32::from(shards) * 3,
        "every poison message is kept in {}",
        topology.dead()
    );
    println!(
        "scenario=poison_messages dead_lettered={} failed_jobs={}",
        dead.message_count(),
        poisoned_jobs.len()
    );
    let _ = connection.close(200, "done".into()).await;
    cluster.teardown().await;
}

/// A batch whose apply hangs (a test trigger sleeps on one mark), so the
/// worker can be killed in the middle of it, every time it is delivered.
const CRASH_TRIGGER: &str = r#"
CREATE FUNCTION stall_on_crash_mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.mark = 'crash' THEN PERFORM pg_sleep(2); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER pieces_stall BEFORE INSERT OR UPDATE ON pieces
    FOR EACH ROW EXECUTE FUNCTION stall_on_crash_mark();
"#;

async fn attempts(cluster: &Cluster, id: Uuid) -> i32 {
    sqlx::query_scalar("SELECT attempts FROM sync_jobs WHERE correlation_id = $1")
        .bind(id)
        .fetch_one(&cluster.pool)
        .await
        .expect("job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_that_keeps_killing_workers_is_dead_lettered_as_retries_exhausted() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new(1, &[("SYNC_DELIVERY_LIMIT", "1")]).await;
    sqlx::raw_sql(CRASH_TRIGGER)
        .execute(&cluster.pool)
        .await
        .expect("trigger");
    cluster.start_api().await;
    cluster.start_workers(1);
    let company = Uuid::new_v4();
    let token = cluster.writer(company).await;
    let client = reqwest::Client::new();
    let post = |mark: &'static str| {
        client
            .post(format!("{}/api/v1/sync/pieces", cluster.base()))
            .bearer_auth(&token)
            .json(&serde_json::json!([{
                "company_guid": company, "assembly_guid": company, "mark": mark
            }]))
            .send()
    };
    let crash: serde_json::Value = post("crash")
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let crash_id = Uuid::parse_str(crash["correlation_id"].as_str().expect("id")).expect("uuid");
    let after: serde_json::Value = post("fine")
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let after_id = Uuid::parse_str(after["correlation_id"].as_str().expect("id")).expect("uuid");

    // Delivery limit 1: the first delivery and one redelivery, each killed
    // mid-apply; the broker then dead-letters the message.
    for delivery in 1..=2 {
        for _ in 0..200 {
            if attempts(&cluster, crash_id).await >= delivery {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(attempts(&cluster, crash_id).await, delivery);
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.kill_worker(0);
        cluster.restart_worker(0);
    }
    assert!(
        cluster.drain(Duration::from_secs(60)).await,
        "jobs still open"
    );
    let job = |id: Uuid| {
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT status, error->>'code' FROM sync_jobs WHERE correlation_id = $1",
        )
        .bind(id)
        .fetch_one(&cluster.pool)
    };
    assert_eq!(
        job(crash_id).await.expect("job"),
        ("failed".to_owned(), Some("retries_exhausted".to_owned()))
    );
    assert_eq!(
        job(after_id).await.expect("job").0,
        "succeeded",
        "the shard goes on"
    );
    let crash_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM pieces WHERE mark = 'crash'")
        .fetch_one(&cluster.pool)
        .await
        .expect("count");
    assert_eq!(crash_rows, 0, "nothing of the crashing batch is written");
    println!(
        "scenario=crash_loop attempts=2 status=failed code=retries_exhausted next_job=succeeded"
    );
    cluster.teardown().await;
}
