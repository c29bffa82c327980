//! Reconnecting to the broker: one loop for every long-lived consumer, so
//! each waits with the same capped backoff after losing its connection.

use std::{future::Future, time::Duration};
use tokio_util::sync::CancellationToken;

const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Runs `session` (one connection's life, `what` in logs) again and again
/// until it finishes with `Ok(Some(value))` or `stop` fires (None). A
/// session that ends with `Ok(None)` is started again after 200 ms; one
/// that fails, after a pause that doubles with every failure in a row
/// (200 ms to 5 s).
pub async fn until_done<T, F, Fut>(
    stop: &CancellationToken,
    what: &str,
    mut session: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, lapin::Error>>,
{
    let mut pause = FIRST_PAUSE;
    while !stop.is_cancelled() {
        match session().await {
            Ok(Some(value)) => return Some(value),
            Ok(None) => pause = FIRST_PAUSE,
            Err(error) => tracing::warn!(%error, ?pause, what, "lost the broker; reconnecting"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
    None
}
