//! Planning errors as user errors: where in the job it happened, then
//! DataFusion's message as DataFusion words it.

use datafusion::error::DataFusionError;
use ignis_core::error::{ErrorKind, IgnisError};

/// A DataFusion planning error as a user error that says where it happened.
/// An error that is not the user's (storage that did not answer while a
/// table was listed) keeps its kind, so it is retried or answered as such,
/// with the place added.
pub(crate) fn plan_error(place: &str, e: DataFusionError) -> IgnisError {
    user_error(place, e, IgnisError::Plan)
}

/// `e` with `place` in front: as `user(message)` when it is the user's
/// mistake, otherwise still DataFusion's error (of its own kind).
pub(crate) fn user_error(place: &str, e: DataFusionError, user: impl FnOnce(String) -> IgnisError) -> IgnisError {
    match IgnisError::from_datafusion(e) {
        IgnisError::DataFusion(inner) if ErrorKind::of_datafusion(&inner) != ErrorKind::User => {
            IgnisError::DataFusion(inner.context(place))
        }
        IgnisError::DataFusion(inner) => user(format!("{place}: {}", describe(&inner))),
        other => other,
    }
}

/// DataFusion's own message (as DataFusion prints it, backtrace aside), so a
/// user searching for it finds DataFusion's documentation and issues.
pub(crate) fn describe(e: &DataFusionError) -> String {
    e.strip_backtrace()
}
