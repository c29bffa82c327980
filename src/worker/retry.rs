//! Retrying in place: a shard never skips ahead of a message it could not
//! finish, it waits and tries the same message again.

use crate::telemetry::metrics as m;
use std::{fmt::Display, future::Future, time::Duration};
use tokio_util::sync::CancellationToken;

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// Why a retry loop gave up.
#[derive(Debug)]
pub enum GaveUp<E> {
    /// The process is shutting down.
    Stopping,
    /// A permanent error, or too many of them.
    Permanent(E),
}

/// Runs `attempt` (named `operation` in logs and metrics) until it succeeds, backing off exponentially (capped)
/// between transient failures. `is_transient` errors are retried until
/// `stop` fires; other errors `permanent_tries` times in all.
pub async fn retry_in_place<T, E, F, Fut>(
    stop: &CancellationToken,
    operation: &str,
    permanent_tries: u32,
    is_transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, GaveUp<E>>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut pause = FIRST_PAUSE;
    let mut permanent_failures = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                if !is_transient(&error) {
                    permanent_failures += 1;
                    if permanent_failures >= permanent_tries {
                        return Err(GaveUp::Permanent(error));
                    }
                }
                metrics::counter!(m::APPLY_RETRIES, "operation" => operation.to_owned())
                    .increment(1);
                tracing::warn!(%error, ?pause, operation, "failed; retrying in place");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Err(GaveUp::Stopping),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}
