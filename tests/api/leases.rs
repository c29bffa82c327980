//! Shard leases and the fence (SPEC §6 "Workers share the shards"),
//! against the real PostgreSQL: a batch under a lost lease writes nothing,
//! a claim waits for the batch running under the lease it takes over, and
//! heartbeats keep only the living.

use crate::helpers::*;
use serde_json::json;
use std::time::Duration;
use sync_ingest::{
    app::Mode,
    domain::Entity,
    queue::BatchMessage,
    store::{
        jobs::{self, JobStatus, NewJob},
        leases::{self, Fence, Lease},
    },
    worker::{apply_batch, Outcome},
};
use uuid::Uuid;

/// A lease that runs out almost at once, and one that does not.
const SHORT: Duration = Duration::from_millis(200);
const LONG: Duration = Duration::from_secs(60);
const NO_WAIT: Duration = Duration::from_millis(200);

/// An api-only service: the test is the only one touching the leases.
async fn app() -> TestApp {
    let app = TestApp::spawn_with(Mode::Api, |_| {}).await;
    leases::ensure_shards(&app.pool, 2)
        .await
        .expect("lease rows");
    app
}

/// A queued job of one project and the body of the message a worker would
/// read for it.
async fn queued_batch(app: &TestApp, company: Uuid, project: Uuid) -> Vec<u8> {
    let id = Uuid::now_v7();
    let body = json!([{"guid": project, "company_guid": company, "number": "P-1", "name": "p"}]);
    let bytes = serde_json::to_vec(&body).expect("json");
    let job = NewJob {
        correlation_id: id,
        company_guid: company,
        entity: Entity::Projects,
        operation: sync_ingest::domain::Operation::Upsert,
        item_count: 1,
        dry_run: false,
        shard: 0,
        submitted_by: "test".into(),
    };
    jobs::insert_all(&app.pool, &[(job, JobStatus::Queued)])
        .await
        .expect("job row");
    BatchMessage::forwarded(id, company, false, Entity::Projects, &bytes, &[project])
}

async fn claim(app: &TestApp, worker: Uuid, ttl: Duration) -> Option<Lease> {
    leases::claim(&app.pool, 0, worker, ttl, NO_WAIT)
        .await
        .expect("claim")
}

#[tokio::test]
async fn a_batch_under_a_lost_lease_is_fenced_and_writes_nothing() {
    let app = app().await;
    let (stale, successor) = (Uuid::now_v7(), Uuid::now_v7());
    let old = claim(&app, stale, SHORT).await.expect("free shard claimed");
    assert_eq!(
        claim(&app, successor, LONG).await,
        None,
        "a live lease is not taken"
    );
    tokio::time::sleep(SHORT * 2).await;
    let new = claim(&app, successor, LONG)
        .await
        .expect("a lease that ran out is taken");
    assert_eq!(new.epoch, old.epoch + 1);

    let (company, project) = (company(), Uuid::now_v7());
    let body = queued_batch(&app, company, project).await;
    let message = BatchMessage::from_json(&body).expect("readable");
    let fenced = Fence {
        worker: stale,
        lease: old,
    };
    let outcome = apply_batch(&app.pool, &message, Some(&fenced))
        .await
        .expect("apply");
    assert!(matches!(outcome, Outcome::Fenced), "{outcome:?}");
    assert_eq!(app.row("projects", project).await, None);

    let holder = Fence {
        worker: successor,
        lease: new,
    };
    let outcome = apply_batch(&app.pool, &message, Some(&holder))
        .await
        .expect("apply");
    let Outcome::Finished(applied) = outcome else {
        panic!("the lease holder applies the batch: {outcome:?}");
    };
    assert_eq!(applied.job.status, JobStatus::Succeeded);
    assert_eq!(applied.job.inserted, Some(1));
    assert!(app.row("projects", project).await.is_some());
}

#[tokio::test]
async fn a_claim_waits_for_the_batch_running_under_the_lease_it_takes_over() {
    let app = app().await;
    let (stale, successor) = (Uuid::now_v7(), Uuid::now_v7());
    let old = claim(&app, stale, SHORT).await.expect("claimed");
    let mut batch = app.pool.begin().await.expect("tx");
    let fence = Fence {
        worker: stale,
        lease: old,
    };
    assert!(leases::fence(&mut batch, &fence).await.expect("fence"));
    tokio::time::sleep(SHORT * 2).await;
    assert_eq!(
        claim(&app, successor, LONG).await,
        None,
        "the claim waits for the old owner's batch, and gives up after its wait"
    );
    batch.commit().await.expect("commit");
    let new = claim(&app, successor, LONG)
        .await
        .expect("claimed once the batch ended");
    assert_eq!(new.epoch, old.epoch + 1);

    // The old owner's next heartbeat does not renew what it lost.
    let standing = leases::heartbeat(&app.pool, stale, "stale", 2, LONG)
        .await
        .expect("heartbeat");
    assert!(standing.held.is_empty(), "{standing:?}");
}

#[tokio::test]
async fn heartbeats_renew_held_leases_and_forget_workers_that_stopped_beating() {
    let app = app().await;
    let (first, second, dying) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let joined = leases::heartbeat(&app.pool, first, "first", 2, LONG)
        .await
        .expect("heartbeat");
    assert!(joined.joined);
    assert_eq!(joined.members, vec![first]);
    assert_eq!(joined.free, vec![(0, None), (1, None)]);
    let lease = claim(&app, first, SHORT).await.expect("claimed");

    leases::heartbeat(&app.pool, dying, "dying", 2, SHORT)
        .await
        .expect("heartbeat");
    // Renewed before it runs out, the lease lives on past its first TTL.
    let renewed = leases::heartbeat(&app.pool, first, "first", 2, LONG)
        .await
        .expect("heartbeat");
    assert!(!renewed.joined);
    assert_eq!(renewed.held, vec![lease]);
    tokio::time::sleep(SHORT * 2).await;
    let later = leases::heartbeat(&app.pool, second, "second", 2, LONG)
        .await
        .expect("heartbeat");
    assert_eq!(
        later.members,
        vec![first, second],
        "the dying worker is gone"
    );
    assert_eq!(later.free, vec![(1, None)], "shard 0 is still held");

    assert!(leases::release(&app.pool, first, lease)
        .await
        .expect("release"));
    leases::leave(&app.pool, first).await.expect("leave");
    let after = leases::heartbeat(&app.pool, second, "second", 2, LONG)
        .await
        .expect("heartbeat");
    assert_eq!(after.members, vec![second]);
    assert_eq!(after.free, vec![(0, None), (1, None)]);
}
