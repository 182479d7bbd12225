//! Planning errors as user errors: where in the job it happened, then
//! DataFusion's message as DataFusion words it.

use datafusion::error::DataFusionError;
use ignis_core::error::IgnisError;

/// A DataFusion planning error as a user error that says where it happened.
pub(crate) fn plan_error(place: &str, e: DataFusionError) -> IgnisError {
    let e = IgnisError::from_datafusion(e);
    match e {
        IgnisError::DataFusion(inner) => IgnisError::Plan(format!("{place}: {}", describe(&inner))),
        other => other,
    }
}

/// DataFusion's own message (as DataFusion prints it, backtrace aside), so a
/// user searching for it finds DataFusion's documentation and issues.
pub(crate) fn describe(e: &DataFusionError) -> String {
    e.strip_backtrace()
}
