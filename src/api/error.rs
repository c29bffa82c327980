//! `ApiError`: every way a request can fail, and its one rendering as
//! RFC 9457 problem details.

use crate::{
    domain::FieldError,
    store::{RecordError, StoreError},
};
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
    /// Each error's status, stable snake_case code and title: the one table
    /// of them (the OpenAPI document and the README list the same codes).
    fn kind(&self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            ApiError::Unauthorized(_) => (S::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::InsufficientScope => {
                (S::FORBIDDEN, "insufficient_scope", "Insufficient scope")
            }
            ApiError::CompanyAccessDenied { .. } => (
                S::FORBIDDEN,
                "company_access_denied",
                "Company access denied",
            ),
            ApiError::NotFound(_) => (S::NOT_FOUND, "not_found", "Not found"),
            ApiError::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            ),
            ApiError::Validation(_) => (
                S::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "Validation failed",
            ),
            ApiError::BatchTooLarge(_) => (S::BAD_REQUEST, "batch_too_large", "Batch too large"),
            ApiError::InvalidIdempotencyKey => (
                S::BAD_REQUEST,
                "invalid_idempotency_key",
                "Invalid idempotency key",
            ),
            ApiError::IdempotencyKeyReused => (
                S::CONFLICT,
                "idempotency_key_reused",
                "Idempotency key reused",
            ),
            ApiError::JobNotCancellable(_) => {
                (S::CONFLICT, "job_not_cancellable", "Job not cancellable")
            }
            ApiError::PayloadTooLarge { .. } => (
                S::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
            ),
            ApiError::UnsupportedMediaType => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            ),
            ApiError::BodyTimeout { .. } => (S::REQUEST_TIMEOUT, "body_timeout", "Request timeout"),
            ApiError::QueueFull { .. } => (S::TOO_MANY_REQUESTS, "queue_full", "Too many requests"),
            ApiError::CompanyBacklogFull { .. } => (
                S::TOO_MANY_REQUESTS,
                "company_backlog_full",
                "Too many requests",
            ),
            ApiError::BrokerUnavailable => (
                S::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                "Service unavailable",
            ),
            ApiError::DatabaseUnavailable => (
                S::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "Service unavailable",
            ),
            ApiError::Overloaded => (S::SERVICE_UNAVAILABLE, "overloaded", "Service unavailable"),
            ApiError::Internal(_) => (
                S::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Internal server error",
            ),
        }
    }

    fn status(&self) -> StatusCode {
        self.kind().0
    }

    /// The stable snake_case code clients branch on.
    pub fn code(&self) -> &'static str {
        self.kind().1
    }

    fn title(&self) -> &'static str {
        self.kind().2
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::database(error.is_transient(), &error)
    }
}

impl From<RecordError> for ApiError {
    fn from(error: RecordError) -> Self {
        match error {
            RecordError::Database(error) => {
                ApiError::database(crate::store::is_transient(&error), &error)
            }
            RecordError::Stopped => ApiError::Internal(error.to_string()),
        }
    }
}

impl ApiError {
    /// A database error: 503 while it may pass, 500 otherwise.
    fn database(transient: bool, error: &dyn std::fmt::Display) -> ApiError {
        if transient {
            tracing::warn!(%error, "database unavailable");
            ApiError::DatabaseUnavailable
        } else {
            ApiError::Internal(error.to_string())
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
