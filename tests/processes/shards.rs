//! Workers share the shards (SPEC §6): the split, hand-overs under ordered
//! load (kill -9, joins, SIGTERM) and the fence that keeps a frozen worker
//! from committing after its successor.

use crate::cluster::{Cluster, SERIAL};
use crate::faults::{judge, slow_down, start_load, tenants};
use crate::load::{audit, push, Submission, Tenant, Verdict};
use crate::telemetry::{sample, scrape};
use std::time::{Duration, Instant};
use sync_ingest::app::topology;
use uuid::Uuid;

/// A joining worker gets its share, and a dead one's shards move, within
/// this (SPEC §6).
const MOVE_LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_eight_shards_and_each_applies_its_companies() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new(8, &[]).await;
    cluster.start_api().await;
    cluster.start_workers(3);
    let (took, spread) = cluster
        .wait_spread(&[0, 1, 2], Duration::from_secs(20))
        .await
        .expect("three workers split eight shards");
    let mut sizes: Vec<usize> = spread.iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![2, 3, 3], "{spread:?}");

    // One job from each of 48 companies.
    let topology = topology(&cluster.settings());
    let client = reqwest::Client::new();
    let mut companies = Vec::new();
    for _ in 0..48 {
        let company = Uuid::new_v4();
        let token = cluster.writer(company).await;
        let status = client
            .post(format!("{}/api/v1/sync/pieces", cluster.base()))
            .bearer_auth(&token)
            .json(&serde_json::json!([{
                "company_guid": company, "assembly_guid": company, "mark": "m"
            }]))
            .send()
            .await
            .expect("post")
            .status();
        assert_eq!(status, 202);
        companies.push(company);
    }
    assert!(cluster.drain(Duration::from_secs(60)).await, "jobs open");
    let mut applied = Vec::new();
    for (index, shards) in spread.iter().enumerate() {
        let expected = companies
            .iter()
            .filter(|c| shards.contains(&topology.shard_for(**c)))
            .count();
        let metrics = scrape(&cluster.ops(Some(index))).await;
        let done = sample(
            &metrics,
            "sync_jobs_completed_total",
            &[("entity", "pieces"), ("status", "succeeded")],
        );
        assert_eq!(
            done as usize, expected,
            "worker {index} (shards {shards:?}) applies exactly its companies' jobs"
        );
        assert!(expected > 0, "worker {index} pulls its weight");
        let held = sample(&metrics, "sync_worker_shards_held", &[]);
        assert_eq!(held as usize, shards.len());
        applied.push(expected);
    }
    println!("scenario=three_workers spread={spread:?} within={took:?} jobs_applied={applied:?}");
    cluster.teardown().await;
}

/// A dozen companies, each updating the same pieces round after round.
async fn ordered_load_cluster(workers: usize) -> (Cluster, Vec<Tenant>) {
    let mut cluster = Cluster::new(8, &[]).await;
    slow_down(&cluster).await;
    cluster.start_api().await;
    cluster.start_workers(workers);
    let among: Vec<usize> = (0..workers).collect();
    cluster
        .wait_spread(&among, Duration::from_secs(20))
        .await
        .expect("workers split the shards");
    let tenants = tenants(&cluster, 12).await;
    (cluster, tenants)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_shards_move_within_ten_seconds_and_order_holds() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, tenants) = ordered_load_cluster(3).await;
    let loads = start_load(&cluster, &tenants, 60);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.kill_worker(1);
    let (took, spread) = cluster
        .wait_spread(&[0, 2], Duration::from_secs(20))
        .await
        .expect("the survivors take the dead worker's shards");
    assert!(
        took < MOVE_LIMIT,
        "a dead worker's shards move within {MOVE_LIMIT:?}, took {took:?}"
    );
    println!("scenario=killed_worker_shards spread={spread:?} moved_within={took:?}");
    judge("killed_worker_shards", &cluster, &tenants, loads).await;
    cluster.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_joining_and_leaving_under_load_keep_order() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, tenants) = ordered_load_cluster(1).await;
    let loads = start_load(&cluster, &tenants, 80);
    let mut joins = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.start_workers(1);
        let among: Vec<usize> = (0..cluster.workers.len()).collect();
        let (took, _) = cluster
            .wait_spread(&among, Duration::from_secs(20))
            .await
            .expect("a joining worker gets its share");
        assert!(took < MOVE_LIMIT, "a join took {took:?}");
        joins.push(took);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, stopped_in) =
        tokio::task::block_in_place(|| cluster.terminate_worker(0, Duration::from_secs(15)));
    assert_eq!(code, Some(0), "a worker leaving on SIGTERM exits 0");
    let (left, _) = cluster
        .wait_spread(&[1, 2], Duration::from_secs(20))
        .await
        .expect("the leaver's shards are taken");
    assert!(
        left < Duration::from_secs(3),
        "SIGTERM hands over at once, took {left:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_workers(1);
    judge("join_and_leave", &cluster, &tenants, loads).await;
    let (_, spread) = cluster
        .wait_spread(&[1, 2, 3], Duration::from_secs(20))
        .await
        .expect("the last joiner gets its share");
    println!(
        "scenario=join_and_leave joins_within={joins:?} sigterm_exit={stopped_in:?} \
         leave_taken_within={left:?} spread={spread:?}"
    );
    cluster.teardown().await;
}

async fn job_status(cluster: &Cluster, id: &str) -> (String, i32) {
    sqlx::query_as("SELECT status, attempts FROM sync_jobs WHERE correlation_id = $1::uuid")
        .bind(id)
        .fetch_one(&cluster.pool)
        .await
        .expect("job")
}

/// Waits until a worker has started job `id` (its attempt is counted), and
/// a little more, so that it stands where the test stalls it.
async fn wait_until_started(cluster: &Cluster, id: &str) {
    for _ in 0..100 {
        if job_status(cluster, id).await.1 >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn submit(cluster: &Cluster, tenant: &Tenant, seq: i32) -> Submission {
    let mut answered = push(cluster.base(), tenant.clone(), seq..=seq, Duration::ZERO).await;
    let submission = answered.pop().expect("one submission");
    assert_eq!(submission.status, 202, "batch {seq}");
    submission
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_worker_is_fenced_off_and_its_successor_applies_in_order() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new(2, &[]).await;
    cluster.start_api().await;
    cluster.start_workers(2);
    let (_, spread) = cluster
        .wait_spread(&[0, 1], Duration::from_secs(20))
        .await
        .expect("two workers, a shard each");
    let company = Uuid::new_v4();
    let tenant = Tenant::new(company, cluster.writer(company).await, 3);
    let shard = topology(&cluster.settings()).shard_for(company);
    let holder = spread
        .iter()
        .position(|held| held.contains(&shard))
        .expect("someone holds the shard");
    let successor = 1 - holder;

    let mut submissions = vec![submit(&cluster, &tenant, 1).await];
    assert!(cluster.drain(Duration::from_secs(30)).await, "batch 1 open");

    // Batch 2 stalls on a row lock the test holds, in the holder's
    // transaction; then the holder freezes and the lock goes away.
    let mut blocker = cluster.pool.begin().await.expect("tx");
    sqlx::query("SELECT 1 FROM pieces WHERE guid = $1 FOR UPDATE")
        .bind(tenant.pieces[0])
        .execute(&mut *blocker)
        .await
        .expect("row lock");
    let second = submit(&cluster, &tenant, 2).await;
    let second_id = second.correlation_id.clone().expect("id");
    submissions.push(second);
    wait_until_started(&cluster, &second_id).await;
    assert_eq!(job_status(&cluster, &second_id).await.0, "processing");
    cluster.signal_worker(holder, "STOP");
    let paused = Instant::now();
    blocker.rollback().await.expect("lock released");

    // The company's next batch is applied by the other worker while the
    // holder is still frozen.
    let third = submit(&cluster, &tenant, 3).await;
    let third_id = third.correlation_id.clone().expect("id");
    submissions.push(third);
    let limit = Duration::from_secs(45);
    while job_status(&cluster, &third_id).await.0 != "succeeded" {
        assert!(
            paused.elapsed() < limit,
            "batch 3 not applied {limit:?} after the holder froze\n{}",
            cluster.diagnosis().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let taken_over = paused.elapsed();
    let successor_metrics = scrape(&cluster.ops(Some(successor))).await;
    assert!(
        sample(
            &successor_metrics,
            "sync_shard_handovers_total",
            &[("reason", "expiry")]
        ) >= 1.0,
        "the successor counts the take-over"
    );

    // Thawed, the holder's transaction must not commit.
    cluster.signal_worker(holder, "CONT");
    cluster
        .wait_spread(&[0, 1], Duration::from_secs(30))
        .await
        .expect("the thawed worker rejoins and the shards are split again");
    submissions.push(submit(&cluster, &tenant, 4).await);
    assert!(cluster.drain(Duration::from_secs(30)).await, "jobs open");
    let mut verdict = Verdict::default();
    audit(&cluster.pool, &tenant, &submissions, &mut verdict).await;
    println!(
        "scenario=paused_worker taken_over_after={taken_over:?} {}",
        verdict.summary("paused_worker")
    );
    assert!(verdict.is_clean(), "{verdict:?}");
    assert_eq!(verdict.applied, 4, "{verdict:?}");
    cluster.teardown().await;
}

/// The correlation id a request message carries.
fn correlation_of(delivery: &lapin::message::Delivery) -> Option<String> {
    let id = delivery.properties.correlation_id().as_ref()?;
    Some(id.as_str().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_worker_gives_its_message_back_before_the_next_consumer_gets_any() {
    use futures_util::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new(1, &[]).await;
    cluster.start_api().await;
    cluster.start_workers(1);
    cluster
        .wait_spread(&[0], Duration::from_secs(20))
        .await
        .expect("the worker holds the shard");
    let company = Uuid::new_v4();
    let tenant = Tenant::new(company, cluster.writer(company).await, 2);
    let mut submissions = vec![submit(&cluster, &tenant, 1).await];
    assert!(cluster.drain(Duration::from_secs(30)).await, "batch 1 open");

    // The test's own consumer waits behind the worker's (single active
    // consumer): it is what a successor would see.
    let connection = crate::cluster::broker().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let queue = topology(&cluster.settings()).request_queue(0);
    let mut successor = channel
        .basic_consume(
            queue.as_str().into(),
            "successor".into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("consume");

    // Batch 2's fence waits on the lease row the test holds; meanwhile the
    // lease passes to another owner. Batch 3 waits in the queue.
    let mut lease = cluster.pool.begin().await.expect("tx");
    sqlx::query("SELECT 1 FROM sync_shard_leases WHERE shard = 0 FOR UPDATE")
        .execute(&mut *lease)
        .await
        .expect("lease row lock");
    let second = submit(&cluster, &tenant, 2).await;
    let third = submit(&cluster, &tenant, 3).await;
    submissions.extend([second.clone(), third.clone()]);
    let second_id = second.correlation_id.clone().expect("id");
    wait_until_started(&cluster, &second_id).await;
    sqlx::query(
        "UPDATE sync_shard_leases SET owner = $1, epoch = epoch + 1, \
         expires_at = now() + interval '1 hour' WHERE shard = 0",
    )
    .bind(Uuid::now_v7())
    .execute(&mut *lease)
    .await
    .expect("lease taken");
    lease.commit().await.expect("commit");

    // The fenced worker's message comes back first, then the next one.
    let mut order = Vec::new();
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(30), successor.next())
            .await
            .expect("the successor is given the shard's messages")
            .expect("a delivery")
            .expect("no error");
        order.push(correlation_of(&delivery));
        delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .expect("ack");
    }
    assert_eq!(
        order,
        vec![second.correlation_id.clone(), third.correlation_id.clone()],
        "the fenced batch is given back ahead of the next one"
    );
    assert_eq!(job_status(&cluster, &second_id).await.0, "processing");
    let metrics = scrape(&cluster.ops(Some(0))).await;
    assert_eq!(
        sample(
            &metrics,
            "sync_shard_handovers_total",
            &[("reason", "fenced")]
        ),
        1.0
    );
    // Nothing of the fenced batch was written.
    let mut verdict = Verdict::default();
    audit(&cluster.pool, &tenant, &submissions[..1], &mut verdict).await;
    assert!(verdict.is_clean(), "{verdict:?}");
    println!("scenario=fenced_worker given_back_in_order={order:?}");
    let _ = connection.close(200, "done".into()).await;
    cluster.teardown().await;
}
