//! How long to wait before retrying: exponential backoff with jitter, never
//! shorter than the server's `Retry-After`.

use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::Duration;

/// The first retry's nominal delay.
const BASE: Duration = Duration::from_millis(250);
/// The longest nominal delay of the exponential part.
const CAP: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured; a larger one is clamped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The delay before retry number `retry` (0 for the first), given the
/// server's `Retry-After` and a random `jitter` in [0, 1).
///
/// The exponential part is "equal jitter" (half fixed, half random), so
/// concurrent batches that failed together do not retry together. A
/// `Retry-After` is a floor, with up to a quarter of it added at random for
/// the same reason.
pub fn delay(retry: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let jitter = jitter.clamp(0.0, 1.0);
    let nominal = BASE.saturating_mul(1u32 << retry.min(16)).min(CAP);
    let exponential = nominal.mul_f64(0.5 + 0.5 * jitter);
    match retry_after {
        Some(after) => {
            let after = after.min(MAX_RETRY_AFTER);
            exponential.max(after + after.mul_f64(0.25 * jitter))
        }
        None => exponential,
    }
}

/// The delay-seconds form of `Retry-After` (all this api sends); an HTTP
/// date is ignored and the exponential backoff applies alone.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A random jitter in [0, 1).
pub fn jitter() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn delays_double_from_250_ms_up_to_30_s_with_jitter_within_half() {
        assert_eq!(delay(0, None, 1.0), Duration::from_millis(250));
        assert_eq!(delay(0, None, 0.0), Duration::from_millis(125));
        assert_eq!(delay(3, None, 1.0), Duration::from_secs(2));
        assert_eq!(delay(20, None, 1.0), CAP);
        assert_eq!(delay(u32::MAX, None, 0.0), CAP / 2);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let five = Some(Duration::from_secs(5));
        assert_eq!(delay(0, five, 0.0), Duration::from_secs(5));
        assert_eq!(delay(0, five, 0.99).as_millis(), 6237);
        // Backoff that already exceeds Retry-After wins.
        assert_eq!(delay(10, five, 1.0), CAP);
        assert_eq!(
            delay(0, Some(Duration::from_secs(86_400)), 0.0),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn retry_after_seconds_are_read_and_dates_ignored() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static(" 7 "));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
