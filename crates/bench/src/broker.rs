//! Bringing the broker to the same state before every measured run.
//!
//! RabbitMQ writes every quorum-queue message to one write-ahead log shared
//! by all queues and, once that log reaches `wal_max_size_bytes` (512 MiB by
//! default), starts a new one and copies the full one's entries into each
//! queue's segment files. One round of the benchmark (raw publish, relay,
//! intake: ~170 MB each at the default size) writes about one log's worth,
//! so a roll-over landed in one of the three phases of nearly every round,
//! mostly the same phase round after round, and that phase paid for copying
//! 512 MiB: which phase it was decided the ratios more than anything the
//! service did (README, "Benchmark"). Rolling the log over before each
//! measured run, and waiting for the copy to finish, keeps every run's bytes
//! within one log: each run measures what the broker does with its own
//! messages.

use super::cpu;
use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

/// Rolls the quorum queues' WAL over: the log's name comes from the ra
/// system's own configuration, as RabbitMQ 3.10 and later name it.
const ROLL_OVER: &str = "ra_log_wal:force_roll_over(maps:get(wal, maps:get(names, \
                         ra_system:fetch(quorum_queues)))).";

/// Cleared by the first roll-over that fails: the report says whether every
/// measured run started on a fresh log. (A fact about the whole run, kept
/// where every phase can reach it without threading it through each.)
static EVERY_ROLL_OVER_DONE: AtomicBool = AtomicBool::new(true);

/// Before a measured run: rolls the broker's WAL over, when it runs on this
/// machine, and waits until the broker has gone quiet (see
/// [`cpu::broker_quiet`]), the copy of the old log included.
pub async fn settle(broker: Option<u32>) {
    // After one failure the run stops asking: where rabbitmqctl cannot
    // reach the node, each attempt would only wait for its timeout.
    if every_roll_over_done() {
        let rolled_over = broker.is_some() && roll_over_wal().await;
        if !rolled_over {
            EVERY_ROLL_OVER_DONE.store(false, Ordering::Relaxed);
            eprintln!(
                "bench: cannot roll the broker's quorum WAL over (needs a broker on this \
                 machine and rabbitmqctl); a run that a roll-over lands in will be slower"
            );
        }
    }
    cpu::broker_quiet(broker).await;
}

/// True when every measured run so far started on a fresh WAL.
pub fn every_roll_over_done() -> bool {
    EVERY_ROLL_OVER_DONE.load(Ordering::Relaxed)
}

/// Asks the local node to roll its WAL over; true when it said `ok`.
async fn roll_over_wal() -> bool {
    let asked = tokio::task::spawn_blocking(|| {
        Command::new("rabbitmqctl")
            .args(["--timeout", "10", "eval", ROLL_OVER])
            .output()
    });
    match tokio::time::timeout(Duration::from_secs(15), asked).await {
        Ok(Ok(Ok(output))) => {
            output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "ok"
        }
        _ => false,
    }
}
