use std::fmt;

use crate::bindings::ignis::udf::types::UdfError;

/// Why a call failed; crosses the boundary as the WIT `udf-error` variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    UnknownFunction(String),
    InvalidArguments(String),
    InvalidData(String),
    Failed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownFunction(m) => write!(f, "unknown function: {m}"),
            Error::InvalidArguments(m) => write!(f, "invalid arguments: {m}"),
            Error::InvalidData(m) => write!(f, "invalid data: {m}"),
            Error::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<arrow_schema::ArrowError> for Error {
    fn from(e: arrow_schema::ArrowError) -> Self {
        Error::InvalidData(e.to_string())
    }
}

impl From<Error> for UdfError {
    fn from(e: Error) -> Self {
        match e {
            Error::UnknownFunction(m) => UdfError::UnknownFunction(m),
            Error::InvalidArguments(m) => UdfError::InvalidArguments(m),
            Error::InvalidData(m) => UdfError::InvalidData(m),
            Error::Failed(m) => UdfError::Failed(m),
        }
    }
}
