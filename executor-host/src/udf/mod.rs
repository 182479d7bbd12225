//! The Wasm UDF host: user functions compiled to WebAssembly components
//! (world `ignis:udf` in `wit/`), run sandboxed in wasmtime and offered to
//! DataFusion as ordinary functions.
//!
//! - [`UdfHost`] owns the engine. It compiles a component once per digest and
//!   keeps the precompiled artefact on disk, so a later process loads it in
//!   about a millisecond instead of recompiling.
//! - Calls run in instances from an `InstancePre` (pooling allocator), kept
//!   for the next call while calls succeed and dropped after any failure,
//!   under a memory limit, an epoch deadline and a WASI context that grants
//!   nothing: no files, no environment, no network. Guest stderr is captured,
//!   bounded, into the error. A trap, a timeout or memory exhaustion becomes
//!   an error naming the function and the limit; the instance is dropped and
//!   the host goes on.
//! - [`WasmScalarUdf`] and [`WasmAggregateUdf`] are DataFusion functions over
//!   one component function each; aggregates keep one instance per task with
//!   one guest resource per group. [`WasmTransform`] runs `map_batches` steps
//!   (a batch in, a batch out) through `ignis_core::map_batches`.

/// Two Wasm functions are the same function when they are the same name in
/// the same component (by digest).
macro_rules! wasm_function_identity {
    ($t:ty) => {
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                self.component.digest() == other.component.digest() && self.name == other.name
            }
        }

        impl Eq for $t {}

        impl std::hash::Hash for $t {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.component.digest().hash(state);
                self.name.hash(state);
            }
        }
    };
}

mod aggregate;
mod clock;
mod host;
mod scalar;
mod stderr;
mod transform;

pub use aggregate::WasmAggregateUdf;
pub use host::{Component, FunctionInfo, FunctionKind, Instances, Limits, UdfHost, WIT_PACKAGE, digest_of};
pub use scalar::WasmScalarUdf;
pub use transform::WasmTransform;

use std::sync::Arc;

use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use ignis_core::error::Result;

/// A component's functions in the forms DataFusion and Ignis run them.
#[derive(Debug, Default)]
pub struct Functions {
    pub scalars: Vec<ScalarUDF>,
    pub aggregates: Vec<AggregateUDF>,
    /// For `map_batches` steps.
    pub transforms: Vec<Arc<WasmTransform>>,
}

/// A component's functions, ready to register.
pub fn functions(component: &Arc<Component>) -> Result<Functions> {
    let mut out = Functions::default();
    for f in component.functions() {
        match f.kind {
            FunctionKind::Scalar { .. } => {
                out.scalars.push(ScalarUDF::new_from_impl(WasmScalarUdf::new(component.clone(), &f.name)?))
            }
            FunctionKind::Aggregate { .. } => {
                out.aggregates.push(AggregateUDF::new_from_impl(WasmAggregateUdf::new(component.clone(), &f.name)?))
            }
            FunctionKind::Transform => out.transforms.push(Arc::new(WasmTransform::new(component.clone(), &f.name)?)),
        }
    }
    Ok(out)
}
