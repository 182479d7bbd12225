//! The one error type of `ignis-core`, and how errors are classified for retry.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use serde::{Deserialize, Serialize};

pub type Result<T, E = IgnisError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum IgnisError {
    /// The job specification is malformed (names the field).
    #[error("invalid job: {0}")]
    Job(String),
    /// The query cannot be planned: bad SQL, unknown column, wrong type.
    #[error("{0}")]
    Plan(String),
    /// The input data cannot be read as declared (missing file, bad value).
    #[error("{0}")]
    Input(String),
    /// A user-defined function failed: it trapped, hit a limit, or reported an
    /// error (names the function), or a component cannot be used.
    #[error("{0}")]
    Udf(String),
    /// Output location or mode conflict (for example mode = error and data exists).
    #[error("{0}")]
    Output(String),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer speaks another protocol version or sent something unreadable.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A task failed on an executor; the message comes from there.
    #[error("{message}")]
    Task { kind: ErrorKind, message: String },
    /// The job was cancelled before it finished.
    #[error("job cancelled")]
    Cancelled,
    /// A bug in Ignis.
    #[error("internal error: {0}")]
    Internal(String),
}

/// How a failure should be treated by the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The user's job or data is wrong; retrying gives the same answer.
    User,
    /// Storage, network, memory: another attempt may succeed.
    Transient,
    /// A bug; retried, since it may be an unlucky race.
    Internal,
}

impl ErrorKind {
    pub fn is_retryable(self) -> bool {
        !matches!(self, ErrorKind::User)
    }

    /// The kind of a DataFusion error (through the errors it wraps).
    pub fn of_datafusion(e: &DataFusionError) -> Self {
        datafusion_kind(e)
    }
}

impl IgnisError {
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::Internal(msg.into())
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            IgnisError::Job(_)
            | IgnisError::Plan(_)
            | IgnisError::Input(_)
            | IgnisError::Output(_)
            | IgnisError::Udf(_)
            | IgnisError::Cancelled => ErrorKind::User,
            IgnisError::DataFusion(e) => datafusion_kind(e),
            IgnisError::Arrow(e) => arrow_kind(e),
            IgnisError::Parquet(_) => ErrorKind::User,
            IgnisError::ObjectStore(e) => object_store_kind(e),
            IgnisError::Io(e) => io_kind(e),
            IgnisError::Protocol(_) | IgnisError::Internal(_) => ErrorKind::Internal,
            IgnisError::Task { kind, .. } => *kind,
        }
    }

    /// Turn a DataFusion error back into ours where it wraps one of ours.
    pub fn from_datafusion(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<IgnisError>() {
                Ok(ours) => *ours,
                Err(other) => IgnisError::DataFusion(DataFusionError::External(other)),
            },
            other => IgnisError::DataFusion(other),
        }
    }
}

impl From<IgnisError> for DataFusionError {
    fn from(e: IgnisError) -> Self {
        match e {
            IgnisError::DataFusion(inner) => inner,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

fn object_store_kind(e: &object_store::Error) -> ErrorKind {
    match e {
        object_store::Error::NotFound { .. }
        | object_store::Error::InvalidPath { .. }
        | object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => ErrorKind::User,
        _ => ErrorKind::Transient,
    }
}

/// A file that is missing, unreadable or malformed stays so when read again;
/// other i/o failures (a reset connection, a full disk) may pass.
fn io_kind(e: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as Io;
    match e.kind() {
        Io::NotFound
        | Io::PermissionDenied
        | Io::InvalidInput
        | Io::InvalidData
        | Io::IsADirectory
        | Io::NotADirectory => ErrorKind::User,
        _ => ErrorKind::Transient,
    }
}

fn arrow_kind(e: &ArrowError) -> ErrorKind {
    match e {
        ArrowError::IoError(_, e) => io_kind(e),
        ArrowError::ExternalError(inner) => external_kind(inner.as_ref()),
        ArrowError::MemoryError(_) => ErrorKind::Transient,
        _ => ErrorKind::User,
    }
}

fn external_kind(e: &(dyn std::error::Error + Send + Sync + 'static)) -> ErrorKind {
    if let Some(ours) = e.downcast_ref::<IgnisError>() {
        return ours.kind();
    }
    if let Some(df) = e.downcast_ref::<DataFusionError>() {
        return datafusion_kind(df);
    }
    if let Some(os) = e.downcast_ref::<object_store::Error>() {
        return object_store_kind(os);
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return io_kind(io);
    }
    ErrorKind::Internal
}

fn datafusion_kind(e: &DataFusionError) -> ErrorKind {
    match e {
        DataFusionError::ArrowError(a, _) => arrow_kind(a),
        DataFusionError::ParquetError(_) => ErrorKind::User,
        DataFusionError::ObjectStore(os) => object_store_kind(os),
        DataFusionError::IoError(e) => io_kind(e),
        DataFusionError::SQL(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Plan(_)
        | DataFusionError::Configuration(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::Execution(_) => ErrorKind::User,
        DataFusionError::ResourcesExhausted(_) | DataFusionError::ExecutionJoin(_) => ErrorKind::Transient,
        DataFusionError::External(inner) => external_kind(inner.as_ref()),
        DataFusionError::Context(_, inner) => datafusion_kind(inner),
        DataFusionError::Shared(inner) => datafusion_kind(inner),
        DataFusionError::Diagnostic(_, inner) => datafusion_kind(inner),
        DataFusionError::Collection(errs) => errs.first().map(datafusion_kind).unwrap_or(ErrorKind::Internal),
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_errors_are_not_retried_and_io_errors_are() {
        let plan = IgnisError::DataFusion(DataFusionError::Plan("no such column".into()));
        assert_eq!(plan.kind(), ErrorKind::User);
        let io = IgnisError::DataFusion(DataFusionError::IoError(std::io::Error::other("reset")));
        assert!(io.kind().is_retryable());
        // A file that cannot be read is read again in vain.
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(IgnisError::DataFusion(DataFusionError::IoError(denied)).kind(), ErrorKind::User);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(IgnisError::Io(reset).kind(), ErrorKind::Transient);
        let wrapped = DataFusionError::from(IgnisError::Input("bad value".into()));
        assert_eq!(IgnisError::from_datafusion(wrapped).kind(), ErrorKind::User);
    }
}
