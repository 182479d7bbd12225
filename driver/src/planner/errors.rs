//! Planning errors as user errors: DataFusion's message, without its
//! wrapper noise, prefixed with where in the job it happened.

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

/// DataFusion's message without the wrapper noise ("Error during planning: ...").
pub(crate) fn describe(e: &DataFusionError) -> String {
    let text = describe_inner(e);
    // A function signature mismatch arrives wrapped as an "internal" error whose
    // useful part is the list of candidate signatures.
    match text.find(NO_FUNCTION_MATCHES) {
        Some(i) => text[i..].to_string(),
        None => text,
    }
}

fn describe_inner(e: &DataFusionError) -> String {
    match e {
        DataFusionError::Diagnostic(_, inner) | DataFusionError::Context(_, inner) => describe_inner(inner),
        DataFusionError::SQL(err, _) => format!("SQL syntax error: {err}"),
        DataFusionError::Plan(m) => m.clone(),
        DataFusionError::SchemaError(err, _) => err.to_string(),
        other => other.to_string(),
    }
}

const NO_FUNCTION_MATCHES: &str = "No function matches";
