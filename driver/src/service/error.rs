//! The one error type of the HTTP API: `{"error": {"code", "message"}}` with
//! the fitting status. A 4xx says what was wrong with the request; a 5xx is
//! logged and says nothing about internals.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ignis_core::error::{ErrorKind, IgnisError};
use serde::{Deserialize, Serialize};

/// `Retry-After` of a request that failed on a transient error.
const TRANSIENT_RETRY_AFTER_S: u64 = 5;

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
    /// storage or a service that did not answer in time is worth another try
    /// (503 with `Retry-After`); anything else is ours.
    pub fn from_job_error(e: IgnisError) -> Self {
        match e.kind() {
            ErrorKind::User => Self::bad_request(user_error_code(&e), e.to_string()),
            ErrorKind::Transient => {
                tracing::warn!(error = %e, "a request failed on a transient error");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "storage did not answer while the request was handled; retry (details in the driver log)",
                )
                .with_retry_after(TRANSIENT_RETRY_AFTER_S)
            }
            ErrorKind::Internal => Self::internal(e),
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

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use datafusion::error::DataFusionError;
    use ignis_core::error::ErrorKind;

    use super::ApiError;
    use crate::planner::plan_error;

    #[test]
    fn a_storage_failure_while_planning_is_retryable_and_a_bad_query_is_the_users() {
        let reset = object_store::Error::Generic { store: "S3", source: "connection reset by peer".into() };
        let err = plan_error("table 'orders' at s3://b/orders/", DataFusionError::ObjectStore(Box::new(reset)));
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert!(err.to_string().starts_with("table 'orders' at s3://b/orders/"), "{err}");
        let answer = ApiError::from_job_error(err);
        assert_eq!((answer.status, answer.body.code.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"));
        assert!(answer.retry_after.is_some());
        assert!(!answer.body.message.contains("s3://"), "{}", answer.body.message);

        let err = plan_error("sql", DataFusionError::Plan("column x not found".into()));
        assert_eq!(err.kind(), ErrorKind::User);
        let answer = ApiError::from_job_error(err);
        assert_eq!((answer.status, answer.body.code.as_str()), (StatusCode::BAD_REQUEST, "plan_error"));
        assert_eq!(answer.body.message, "sql: Error during planning: column x not found");
    }
}
