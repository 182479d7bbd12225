use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use ignis_core::error::{IgnisError, Result};
use ignis_core::map_batches::BatchFunction;

use super::host::{Component, FunctionKind, Instances};

/// A transform of a Wasm component (a batch in, a batch out), for
/// `map_batches` steps. Each batch is one call into an instance of the component.
#[derive(Debug)]
pub struct WasmTransform {
    component: Arc<Component>,
    name: String,
    instances: Instances,
}

impl WasmTransform {
    /// The transform `name` of `component`, or an error if it has none.
    pub fn new(component: Arc<Component>, name: &str) -> Result<Self> {
        let info = component.function(name).ok_or_else(|| {
            IgnisError::Udf(format!("component {} has no function named '{name}'", component.label()))
        })?;
        if info.kind != FunctionKind::Transform {
            return Err(IgnisError::Udf(format!(
                "'{name}' of component {} is not a transform (map_batches takes a #[transform] function)",
                component.label()
            )));
        }
        Ok(Self { component, name: name.to_owned(), instances: Instances::default() })
    }

    /// The columns the transform produces from input with these columns.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        self.component.transform_output_schema(&self.name, input)
    }
}

impl BatchFunction for WasmTransform {
    fn name(&self) -> &str {
        &self.name
    }

    fn call(&self, input: RecordBatch) -> Result<RecordBatch> {
        self.component.call_transform(&self.instances, &self.name, &input)
    }
}
