//! Request headers of the client contract: `Prefer: wait=N` (RFC 7240) and
//! `Idempotency-Key`.

use super::error::ApiError;
use axum::http::HeaderMap;

/// The longest a request may wait for its job.
pub const MAX_WAIT_SECS: u64 = 60;
/// The longest accepted idempotency key.
pub const MAX_KEY_LEN: usize = 255;

/// The `wait` preference in seconds, capped at [`MAX_WAIT_SECS`]; None when
/// absent or unreadable (an unreadable preference is ignored, as RFC 7240
/// asks).
pub fn wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|token| {
            let (name, value) = token.trim().split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())?
        })
        .next()
        .map(|secs| secs.min(MAX_WAIT_SECS))
}

/// The `Idempotency-Key`, if sent: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        })
        .ok_or(ApiError::InvalidIdempotencyKey)?;
    Ok(Some(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn prefer(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("prefer", HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn wait_is_read_among_other_preferences_and_capped() {
        assert_eq!(wait(&prefer("wait=5")), Some(5));
        assert_eq!(wait(&prefer("respond-async, wait=10")), Some(10));
        assert_eq!(wait(&prefer("handling=lenient; wait=\"3\"")), Some(3));
        assert_eq!(wait(&prefer("wait=600")), Some(MAX_WAIT_SECS));
        assert_eq!(wait(&prefer("wait=soon")), None);
        assert_eq!(wait(&HeaderMap::new()), None);
    }
}
