//! `ApiError`: every way a request can fail, and its one rendering as
//! RFC 9457 problem details.

use crate::{domain::FieldError, store::RecordError};
use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

/// Seconds a client should wait before retrying after 429/503.
const RETRY_AFTER_SECS: u64 = 5;

/// An RFC 9457 problem details body, as every error is answered.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable snake_case code to branch on.
    pub code: String,
    /// Validation errors: every offending item and field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// Items of another company (`company_access_denied`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indexes: Option<Vec<usize>>,
}

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("the token lacks the scope or role for this operation")]
    InsufficientScope,
    #[error("items belong to a company the caller may not write")]
    CompanyAccessDenied { indexes: Vec<usize> },
    #[error("{0}")]
    NotFound(String),
    #[error("this method is not allowed on this resource")]
    MethodNotAllowed,
    #[error("the request body is invalid")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    BatchTooLarge(String),
    #[error("the Idempotency-Key header must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("the job is {}; only a queued job can be cancelled", .0.as_str())]
    JobNotCancellable(crate::store::JobStatus),
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    #[error("the request body did not arrive within {secs} s")]
    BodyTimeout { secs: u64 },
    #[error("the request queues are full; retry later")]
    QueueFull { retry_after: u64 },
    #[error("this company has more items waiting than its limit; retry later")]
    CompanyBacklogFull { retry_after: u64 },
    #[error("the message broker is unavailable; retry later")]
    BrokerUnavailable,
    #[error("the database is unavailable; retry later")]
    DatabaseUnavailable,
    #[error("too many requests are in progress; retry later")]
    Overloaded,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::InsufficientScope | ApiError::CompanyAccessDenied { .. } => {
                StatusCode::FORBIDDEN
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BatchTooLarge(_) | ApiError::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
            ApiError::IdempotencyKeyReused | ApiError::JobNotCancellable(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::QueueFull { .. } | ApiError::CompanyBacklogFull { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::BrokerUnavailable | ApiError::DatabaseUnavailable | ApiError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable snake_case code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::InsufficientScope => "insufficient_scope",
            ApiError::CompanyAccessDenied { .. } => "company_access_denied",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Validation(_) => "validation_failed",
            ApiError::BatchTooLarge(_) => "batch_too_large",
            ApiError::InvalidIdempotencyKey => "invalid_idempotency_key",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::JobNotCancellable(_) => "job_not_cancellable",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::CompanyBacklogFull { .. } => "company_backlog_full",
            ApiError::BrokerUnavailable => "broker_unavailable",
            ApiError::DatabaseUnavailable => "database_unavailable",
            ApiError::Overloaded => "overloaded",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::InsufficientScope => "Insufficient scope",
            ApiError::CompanyAccessDenied { .. } => "Company access denied",
            ApiError::NotFound(_) => "Not found",
            ApiError::MethodNotAllowed => "Method not allowed",
            ApiError::Validation(_) => "Validation failed",
            ApiError::BatchTooLarge(_) => "Batch too large",
            ApiError::InvalidIdempotencyKey => "Invalid idempotency key",
            ApiError::IdempotencyKeyReused => "Idempotency key reused",
            ApiError::JobNotCancellable(_) => "Job not cancellable",
            ApiError::PayloadTooLarge { .. } => "Payload too large",
            ApiError::UnsupportedMediaType => "Unsupported media type",
            ApiError::BodyTimeout { .. } => "Request timeout",
            ApiError::QueueFull { .. } | ApiError::CompanyBacklogFull { .. } => "Too many requests",
            ApiError::BrokerUnavailable | ApiError::DatabaseUnavailable | ApiError::Overloaded => {
                "Service unavailable"
            }
            ApiError::Internal(_) => "Internal server error",
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if crate::store::is_transient(&error) {
            tracing::warn!(%error, "database unavailable");
            ApiError::DatabaseUnavailable
        } else {
            ApiError::Internal(error.to_string())
        }
    }
}

impl From<RecordError> for ApiError {
    fn from(error: RecordError) -> Self {
        match error {
            RecordError::Database(error) => {
                if crate::store::is_transient(&error) {
                    tracing::warn!(%error, "database unavailable");
                    ApiError::DatabaseUnavailable
                } else {
                    ApiError::Internal(error.to_string())
                }
            }
            RecordError::Stopped => ApiError::Internal(error.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            // Logged here, never shown: internals do not leak to clients.
            tracing::error!(%detail, "internal error");
        }
        let (errors, indexes) = match &self {
            ApiError::Validation(errors) => (Some(errors.clone()), None),
            ApiError::CompanyAccessDenied { indexes } => (None, Some(indexes.clone())),
            _ => (None, None),
        };
        let body = Problem {
            problem_type: format!(
                "https://sync-ingest.dev/problems/{}",
                self.code().replace('_', "-")
            ),
            title: self.title().to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: self.code().to_owned(),
            errors,
            indexes,
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            ApiError::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"sync-ingest\""),
                );
            }
            ApiError::InsufficientScope => {
                // RFC 6750 §3.1.
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"sync-ingest\", error=\"insufficient_scope\"",
                    ),
                );
            }
            ApiError::QueueFull { retry_after } | ApiError::CompanyBacklogFull { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ApiError::BrokerUnavailable | ApiError::DatabaseUnavailable | ApiError::Overloaded => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            // The rest of the body may still come: the connection cannot
            // carry another request.
            ApiError::BodyTimeout { .. } => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
