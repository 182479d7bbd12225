//! Errors as a pyspark client understands them: a gRPC status whose
//! `grpc-status-details-bin` holds an `ErrorInfo` naming the Spark exception
//! class, so `AnalysisException`, `ParseException` ... reach Python with
//! Ignis's message.

use std::collections::HashMap;

use ignis_core::error::{ErrorKind, IgnisError};
use prost::Message;
use tonic::{Code, Status};

use super::proto::rpc;
use crate::service::{ApiError, ErrorBody};

const ANALYSIS: &str = "org.apache.spark.sql.AnalysisException";
const PARSE: &str = "org.apache.spark.sql.catalyst.parser.ParseException";
const SPARK: &str = "org.apache.spark.SparkException";
const NO_SUCH_ELEMENT: &str = "org.apache.spark.SparkNoSuchElementException";
const ILLEGAL_ARGUMENT: &str = "java.lang.IllegalArgumentException";

/// A status with the Spark exception classes (most specific first) and
/// the error class taken from a `[ERROR_CLASS]` prefix of the message.
pub fn status(code: Code, classes: &[&str], message: &str) -> Status {
    let mut metadata = HashMap::new();
    metadata.insert("classes".to_string(), serde_json::json!(classes).to_string());
    if let Some(class) = message.strip_prefix('[').and_then(|m| m.split_once(']')).map(|(c, _)| c) {
        metadata.insert("errorClass".to_string(), class.to_string());
    }
    let info = rpc::ErrorInfo {
        reason: classes.first().copied().unwrap_or(SPARK).to_string(),
        domain: "org.apache.spark".into(),
        metadata,
    };
    let details = rpc::Status {
        code: code as i32,
        message: message.to_string(),
        details: vec![rpc::Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
            value: info.encode_to_vec(),
        }],
    };
    Status::with_details(code, message, details.encode_to_vec().into())
}

/// An Ignis error as the exception Spark would raise.
pub fn from_ignis(e: &IgnisError) -> Status {
    let message = e.to_string();
    match e {
        IgnisError::Plan(m) if is_syntax_error(m) => status(Code::InvalidArgument, &[PARSE, ANALYSIS], &message),
        IgnisError::Plan(_) | IgnisError::Output(_) => status(Code::InvalidArgument, &[ANALYSIS], &message),
        IgnisError::Job(m) if m.starts_with("[RESOURCE_EXHAUSTED]") => status(Code::ResourceExhausted, &[SPARK], m),
        IgnisError::Job(m) if m.starts_with("[INSUFFICIENT_PERMISSIONS]") => {
            status(Code::PermissionDenied, &[SPARK], m)
        }
        IgnisError::Job(_) => status(Code::InvalidArgument, &[ILLEGAL_ARGUMENT], &message),
        IgnisError::Cancelled => cancelled(),
        _ => match e.kind() {
            ErrorKind::Internal => internal(e),
            _ => status(Code::Internal, &[SPARK], &message),
        },
    }
}

/// A failed job's error, as its status records it.
pub fn from_job(body: &ErrorBody) -> Status {
    let message = &body.message;
    match body.code.as_str() {
        "plan_error" if is_syntax_error(message) => status(Code::InvalidArgument, &[PARSE, ANALYSIS], message),
        "plan_error" | "output_conflict" => status(Code::InvalidArgument, &[ANALYSIS], message),
        "invalid_job" => status(Code::InvalidArgument, &[ILLEGAL_ARGUMENT], message),
        "cancelled" => cancelled(),
        "internal" => status(Code::Internal, &[SPARK], message),
        _ => status(Code::Internal, &[SPARK], message),
    }
}

/// A refusal of the HTTP API's rules (storage policy, limits) in gRPC terms.
pub fn from_api(e: &ApiError) -> Status {
    let code = match e.status.as_u16() {
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        429 => Code::ResourceExhausted,
        400..=499 => Code::InvalidArgument,
        _ => Code::Internal,
    };
    status(code, &[SPARK], &e.body.message)
}

pub fn cancelled() -> Status {
    status(Code::Cancelled, &[SPARK], "[OPERATION_CANCELED] Operation has been cancelled (the Ignis job was cancelled)")
}

pub fn conf_not_found(key: &str) -> Status {
    status(
        Code::NotFound,
        &[NO_SUCH_ELEMENT],
        &format!("[SQL_CONF_NOT_FOUND] The SQL config \"{key}\" cannot be found."),
    )
}

pub fn invalid(message: impl Into<String>) -> Status {
    status(Code::InvalidArgument, &[ILLEGAL_ARGUMENT], &message.into())
}

fn internal(e: &IgnisError) -> Status {
    tracing::error!(error = %e, "internal error answering a Spark Connect request");
    status(Code::Internal, &[SPARK], "internal error; see the driver log")
}

fn is_syntax_error(message: &str) -> bool {
    message.contains("SQL error: ParserError")
}
