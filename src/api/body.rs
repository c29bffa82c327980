//! Reading a submission's request: its content type, its body (bounded in
//! size and in time) and what makes two requests the same.

use super::{error::ApiError, state::AppState};
use crate::{
    domain::{Entity, FieldError, Operation},
    queue::ForwardedMessage,
    telemetry::metrics as m,
};
use axum::{
    body::Body,
    http::{header, HeaderMap},
};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

/// Reads the request body, up to `max_body_bytes`, straight into the
/// message its items will travel in (see [`ForwardedMessage`]).
pub(super) async fn read_body(
    state: &AppState,
    (operation, entity): (Operation, Entity),
    headers: &HeaderMap,
    body: Body,
) -> Result<ForwardedMessage, ApiError> {
    let limit = state.settings.max_body_bytes;
    let too_large = ApiError::PayloadTooLarge { limit };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|len| len > limit) {
        return Err(too_large);
    }
    let mut message = ForwardedMessage::new(entity, operation, announced.unwrap_or(0));
    let mut read = 0usize;
    let mut stream = body.into_data_stream();
    let whole = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::Validation(vec![FieldError::body(format!(
                    "cannot read the request body: {e}"
                ))])
            })?;
            read += chunk.len();
            if read > limit {
                return Err(too_large);
            }
            message.push_items(&chunk);
        }
        Ok(())
    };
    // A client that stalls mid-body would otherwise hold its connection and
    // buffer for ever.
    let secs = state.settings.body_timeout_secs;
    match tokio::time::timeout(std::time::Duration::from_secs(secs), whole).await {
        Ok(whole) => whole.map(|()| message),
        Err(_) => {
            metrics::counter!(m::BODY_TIMEOUTS).increment(1);
            Err(ApiError::BodyTimeout { secs })
        }
    }
}

pub(super) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// What makes two requests "the same" for an idempotency key.
pub(super) fn request_hash(
    (operation, entity): (Operation, Entity),
    dry_run: bool,
    body: &[u8],
) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(entity.as_str());
    // An upsert hashes as it did before deletes existed, so keys recorded
    // then still match.
    if operation == Operation::Delete {
        hash.update("\0delete");
    }
    hash.update([0, u8::from(dry_run), 0]);
    hash.update(body);
    hash.finalize().to_vec()
}
