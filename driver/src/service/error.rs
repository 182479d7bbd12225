//! The one error type of the HTTP API: `{"error": {"code", "message"}}` with
//! the fitting status. A 4xx says what was wrong with the request; a 5xx is
//! logged and says nothing about internals.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ignis_core::error::{ErrorKind, IgnisError};
use serde::{Deserialize, Serialize};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

/// The `error` object of every error response, and of a failed job's status.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

#[derive(Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, body: ErrorBody { code: code.to_string(), message: message.into() }, retry_after: None }
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// A failure of ours: logged in full, answered without detail.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error answering a request");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the driver log")
    }

    /// A job that cannot be planned or read is the caller's mistake (400);
    /// anything else is ours.
    pub fn from_job_error(e: IgnisError) -> Self {
        match e.kind() {
            ErrorKind::User => Self::bad_request(user_error_code(&e), e.to_string()),
            _ => Self::internal(e),
        }
    }
}

/// A stable code for a user error, for clients to branch on.
pub fn user_error_code(e: &IgnisError) -> &'static str {
    match e {
        IgnisError::Job(_) => "invalid_job",
        IgnisError::Input(_) => "invalid_input",
        IgnisError::Output(_) => "output_conflict",
        IgnisError::Udf(_) => "invalid_udf",
        IgnisError::Cancelled => "cancelled",
        IgnisError::Task { .. } => "task_failed",
        _ => "plan_error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(ErrorEnvelope { error: self.body })).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        // A body refused for its size was not read: the connection cannot carry
        // another request, and a client that pooled it would send one into a
        // closing connection.
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            response
                .headers_mut()
                .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
