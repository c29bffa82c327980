//! Membership: the worker's heartbeat, its share of the shards, and the
//! consumers of the shards it holds.
//!
//! Every heartbeat (and every change another worker announces) the worker
//! works out its quota from the live membership, gives up what it holds
//! beyond it and claims free shards up to it. A shard is given up in this
//! order: its consumer stops taking messages, finishes and acks the one in
//! hand, closes its connection (which gives any prefetched message back to
//! the head of the queue), and only then is the lease released — so the
//! next owner, which subscribes only once it has claimed the lease, finds
//! the shard's messages in order.

use super::context::Worker;
use super::plan;
use super::shard::{self, ShardEnd};
use super::status::Status;
use crate::store::{
    leases::{self, Fence, Lease, Standing},
    within,
};
use crate::telemetry::metrics as m;
use sqlx::postgres::PgListener;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};
use tokio::{
    sync::watch,
    task::{self, JoinSet},
};
use tokio_util::sync::CancellationToken;

/// How long a claim waits for the previous owner's batch to end.
const CLAIM_WAIT: Duration = Duration::from_secs(1);

/// Why a consumer is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaving {
    /// The shard goes to a worker that joined (this one is over its quota).
    Join,
    /// This worker is stopping.
    Leave,
    /// The lease is gone already (ran out, or taken): nothing to release.
    Lost,
}

impl Leaving {
    fn reason(self) -> &'static str {
        match self {
            Leaving::Join => "join",
            Leaving::Leave => "leave",
            Leaving::Lost => "lost",
        }
    }
}

/// A shard this worker holds, and its consumer.
struct Held {
    lease: Lease,
    stop: shard::Stop,
    leaving: Option<Leaving>,
}

struct Membership {
    worker: Worker,
    name: String,
    held: BTreeMap<u16, Held>,
    consumers: JoinSet<ShardEnd>,
    /// The shard of each consumer task, so that a task that panicked still
    /// says which shard it leaves.
    tasks: HashMap<task::Id, u16>,
    renewed: Option<Instant>,
    status: watch::Sender<Status>,
}

/// Heartbeats, balances and runs the shard consumers until `stop` fires,
/// then hands every shard over and leaves the membership.
pub async fn run(worker: Worker, status: watch::Sender<Status>, stop: CancellationToken) {
    let name = format!(
        "{} pid {}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
        std::process::id()
    );
    let mut membership = Membership {
        worker,
        name,
        held: BTreeMap::new(),
        consumers: JoinSet::new(),
        tasks: HashMap::new(),
        renewed: None,
        status,
    };
    let mut listener: Option<PgListener> = None;
    let beat = membership.worker.leases.heartbeat;
    loop {
        if membership.beat().await && listener.is_none() {
            listener = listen(&membership.worker.pool, beat).await;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(beat) => {}
            _ = announced(&mut listener) => {}
            Some(ended) = membership.consumers.join_next_with_id() => membership.ended(ended).await,
        }
    }
    drop(listener);
    membership.hand_over_all().await;
}

/// A listener for the changes other workers announce (None if it cannot
/// be had now: the heartbeat still rebalances, only later).
async fn listen(pool: &sqlx::PgPool, limit: Duration) -> Option<PgListener> {
    let listening = async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(leases::CHANGES).await?;
        Ok(listener)
    };
    within(limit, listening).await.ok()
}

/// Resolves when another worker announced a change; never without a
/// listener.
async fn announced(listener: &mut Option<PgListener>) {
    match listener {
        Some(l) => {
            if l.recv().await.is_err() {
                *listener = None;
            }
        }
        None => std::future::pending().await,
    }
}

impl Held {
    /// Tells the consumer to stop: after the batch in hand when the shard
    /// is given up, at once when the lease is gone.
    fn give_up(&mut self, why: Leaving) {
        if self.leaving != Some(Leaving::Lost) {
            self.leaving = Some(why);
        }
        self.stop.gracefully.cancel();
        if why == Leaving::Lost {
            self.stop.at_once.cancel();
        }
    }
}

impl Membership {
    /// The shards held and not being given up.
    fn kept(&self) -> impl Iterator<Item = u16> + '_ {
        self.held
            .iter()
            .filter(|(_, h)| h.leaving.is_none())
            .map(|(shard, _)| *shard)
    }

    fn fence(&self, lease: Lease) -> Fence {
        Fence {
            worker: self.worker.id,
            lease,
        }
    }

    /// One heartbeat and the moves it calls for; false if the database
    /// could not be reached.
    async fn beat(&mut self) -> bool {
        let sent = Instant::now();
        let (ttl, shards) = (self.worker.leases.ttl, self.worker.topology().shards);
        let (pool, limit) = (&self.worker.pool, self.worker.leases.heartbeat);
        if self.renewed.is_none() {
            // Before the first heartbeat: every shard needs its lease row
            // for the heartbeat to see it free.
            if let Err(error) = within(limit, leases::ensure_shards(pool, shards)).await {
                tracing::warn!(%error, "cannot create the shard leases");
            }
        }
        let heartbeat = leases::heartbeat(pool, self.worker.id, &self.name, shards, ttl);
        let standing = match within(limit, heartbeat).await {
            Ok(standing) => standing,
            Err(error) => {
                tracing::warn!(%error, "heartbeat failed");
                if self.renewed.is_some_and(|at| at.elapsed() >= ttl) {
                    // Our leases have run out: stop consuming, so the
                    // broker gives the shards' messages to their next
                    // owners.
                    self.stop_all(Leaving::Lost);
                }
                self.publish_status(0);
                return false;
            }
        };
        self.renewed = Some(sent);
        if standing.joined {
            tracing::info!(worker = %self.worker.id, members = standing.members.len(), "joined the workers");
        }
        self.rebalance(&standing, sent).await;
        self.publish_status(standing.members.len());
        true
    }

    /// Acts on a heartbeat sent at `sent`: stops the consumers of lost
    /// leases, gives up what is beyond the quota, claims up to it (for at
    /// most a heartbeat interval: the next heartbeat must not be late).
    async fn rebalance(&mut self, standing: &Standing, sent: Instant) {
        let renewed: BTreeMap<u16, Lease> = standing.held.iter().map(|l| (l.shard, *l)).collect();
        // Leases that ran out or were taken: stop their consumers.
        for (shard, held) in &mut self.held {
            if renewed.get(shard) != Some(&held.lease) && held.leaving != Some(Leaving::Lost) {
                tracing::warn!(shard, epoch = held.lease.epoch, "lease lost");
                held.give_up(Leaving::Lost);
            }
        }
        // Leases we hold without a consumer (a release that failed).
        let orphans: Vec<Lease> = renewed
            .values()
            .filter(|l| !self.held.contains_key(&l.shard))
            .copied()
            .collect();
        for lease in orphans {
            self.start(lease);
        }
        let me = self.worker.id;
        let quota = plan::quota(self.worker.topology().shards, &standing.members, me);
        let keep: BTreeSet<u16> = self.kept().collect();
        let free: Vec<u16> = standing
            .free
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| !self.held.contains_key(s))
            .collect();
        let rank = standing.members.iter().position(|m| *m == me);
        let moves = plan::moves(quota, &keep, &free, rank, standing.members.len());
        for shard in moves.release {
            if let Some(held) = self.held.get_mut(&shard) {
                tracing::info!(shard, quota, "giving the shard up to rebalance");
                held.give_up(Leaving::Join);
            }
        }
        for shard in moves.claim {
            if sent.elapsed() >= self.worker.leases.heartbeat {
                break;
            }
            let previous = standing
                .free
                .iter()
                .find(|(s, _)| *s == shard)
                .and_then(|(_, owner)| *owner);
            self.claim(shard, previous, &standing.members).await;
        }
        let unowned = free.iter().filter(|s| !self.held.contains_key(s)).count();
        metrics::gauge!(m::SHARDS_UNOWNED).set(unowned as f64);
    }

    /// Claims a free shard and starts its consumer. `previous` is the owner
    /// whose lease ran out: if it is no longer a live worker (dead, or
    /// paused), its database sessions are ended first, so a transaction it
    /// left open mid-batch cannot hold the locks the next batches need.
    async fn claim(&mut self, shard: u16, previous: Option<uuid::Uuid>, members: &[uuid::Uuid]) {
        let (pool, limit) = (&self.worker.pool, self.worker.leases.heartbeat);
        if let Some(stale) = previous.filter(|p| !members.contains(p)) {
            match within(limit, leases::end_sessions_of(pool, stale)).await {
                Ok(0) => {}
                Ok(ended) => {
                    tracing::warn!(shard, %stale, ended, "ended a stale worker's sessions")
                }
                Err(error) => tracing::warn!(%error, "cannot end a stale worker's sessions"),
            }
        }
        let ttl = self.worker.leases.ttl;
        let claim = leases::claim(pool, shard, self.worker.id, ttl, CLAIM_WAIT);
        match within(limit, claim).await {
            Ok(Some(lease)) => {
                if previous.is_some() {
                    tracing::warn!(
                        shard,
                        epoch = lease.epoch,
                        "took over a shard whose lease ran out"
                    );
                    metrics::counter!(m::SHARD_HANDOVERS, "reason" => "expiry").increment(1);
                } else {
                    tracing::info!(shard, epoch = lease.epoch, "claimed a shard");
                }
                self.start(lease);
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(shard, %error, "claim failed"),
        }
    }

    fn start(&mut self, lease: Lease) {
        let stop = shard::Stop::default();
        let consumer = shard::run(self.worker.clone(), self.fence(lease), stop.clone());
        let task = self.consumers.spawn(consumer);
        self.tasks.insert(task.id(), lease.shard);
        self.held.insert(
            lease.shard,
            Held {
                lease,
                stop,
                leaving: None,
            },
        );
    }

    fn stop_all(&mut self, why: Leaving) {
        for held in self.held.values_mut() {
            held.give_up(why);
        }
    }

    /// A consumer ended: release its lease unless it is lost already.
    async fn ended(&mut self, joined: Result<(task::Id, ShardEnd), task::JoinError>) {
        let (id, end) = match joined {
            Ok((id, end)) => (id, Some(end)),
            Err(error) => {
                tracing::error!(%error, "a shard consumer died");
                (error.id(), None)
            }
        };
        let Some(held) = self.tasks.remove(&id).and_then(|s| self.held.remove(&s)) else {
            return;
        };
        let shard = held.lease.shard;
        if end == Some(ShardEnd::Fenced) {
            metrics::counter!(m::SHARD_HANDOVERS, "reason" => "fenced").increment(1);
        } else if held.leaving != Some(Leaving::Lost) {
            // Given up on purpose — or its consumer died, and the shard is
            // claimed again (by anyone) with a new epoch.
            let release = leases::release(&self.worker.pool, self.worker.id, held.lease);
            match within(self.worker.leases.heartbeat, release).await {
                Ok(_) => {
                    if let Some(why @ (Leaving::Join | Leaving::Leave)) = held.leaving {
                        tracing::info!(shard, reason = why.reason(), "released the shard");
                        metrics::counter!(m::SHARD_HANDOVERS, "reason" => why.reason())
                            .increment(1);
                    }
                }
                // It runs out by itself, then.
                Err(error) => tracing::warn!(shard, %error, "cannot release the shard"),
            }
        }
        // (The borrow must end before `publish_status` writes the value.)
        let workers = self.status.borrow().workers;
        self.publish_status(workers);
    }

    /// Stopping. The worker leaves the membership first, so that the
    /// others' shares grow at once and each shard is claimed as soon as it
    /// is released; then every consumer finishes its batch in hand and
    /// closes, and each lease is released as its consumer ends. The leases
    /// still held are renewed meanwhile: a long last batch must not let
    /// them run out under it.
    async fn hand_over_all(&mut self) {
        let (pool, limit) = (&self.worker.pool, self.worker.leases.heartbeat);
        if let Err(error) = within(limit, leases::leave(pool, self.worker.id)).await {
            tracing::warn!(%error, "cannot leave the membership; it runs out by itself");
        }
        self.stop_all(Leaving::Leave);
        while !self.consumers.is_empty() {
            tokio::select! {
                Some(ended) = self.consumers.join_next_with_id() => self.ended(ended).await,
                _ = tokio::time::sleep(limit) => self.renew_while_leaving().await,
            }
        }
    }

    /// The heartbeat of a worker handing its shards over: its leases only.
    async fn renew_while_leaving(&mut self) {
        let (ttl, shards) = (self.worker.leases.ttl, self.worker.topology().shards);
        let renew = leases::renew(&self.worker.pool, self.worker.id, shards, ttl);
        match within(self.worker.leases.heartbeat, renew).await {
            Ok(renewed) => {
                self.renewed = Some(Instant::now());
                for held in self.held.values_mut() {
                    if !renewed.contains(&held.lease) {
                        held.give_up(Leaving::Lost);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot renew the leases being handed over");
                if self.renewed.is_some_and(|at| at.elapsed() >= ttl) {
                    self.stop_all(Leaving::Lost);
                }
            }
        }
    }

    fn publish_status(&self, workers: usize) {
        let shards: Vec<u16> = self.kept().collect();
        metrics::gauge!(m::SHARDS_HELD).set(shards.len() as f64);
        metrics::gauge!(m::WORKERS_LIVE).set(workers as f64);
        self.status.send_replace(Status {
            renewed: self.renewed,
            shards,
            workers,
            ttl: self.worker.leases.ttl,
        });
    }
}
