use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::{can_cast_types, cast};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{DataFusionError, Result as DfResult, plan_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature};
use ignis_core::error::IgnisError;

use super::host::{Component, FunctionKind, Instances};

/// A scalar function of a Wasm component, as DataFusion sees it. Each batch
/// is one call into an instance of the component.
#[derive(Debug)]
pub struct WasmScalarUdf {
    component: Arc<Component>,
    name: String,
    arguments: Vec<DataType>,
    returns: DataType,
    signature: Signature,
    instances: Instances,
}

impl WasmScalarUdf {
    /// The scalar function `name` of `component`, or an error if it has none.
    pub fn new(component: Arc<Component>, name: &str) -> Result<Self, IgnisError> {
        let info = component.function(name).ok_or_else(|| {
            IgnisError::Udf(format!("component {} has no function named '{name}'", component.label()))
        })?;
        let FunctionKind::Scalar { arguments, returns } = &info.kind else {
            return Err(IgnisError::Udf(format!(
                "'{name}' of component {} is not a scalar function",
                component.label()
            )));
        };
        Ok(Self {
            name: name.to_owned(),
            arguments: arguments.clone(),
            returns: returns.clone(),
            signature: Signature::user_defined(info.volatility),
            instances: Instances::default(),
            component,
        })
    }
}

wasm_function_identity!(WasmScalarUdf);

impl ScalarUDFImpl for WasmScalarUdf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.returns.clone())
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        coerce_arguments(&self.name, &self.arguments, arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let mut fields = Vec::with_capacity(self.arguments.len());
        let mut columns = Vec::with_capacity(self.arguments.len());
        for (i, (value, wanted)) in args.args.iter().zip(&self.arguments).enumerate() {
            let array = value.to_array(rows)?;
            let array = if array.data_type() == wanted { array } else { cast(&array, wanted)? };
            fields.push(Field::new(format!("arg{i}"), wanted.clone(), true));
            columns.push(array);
        }
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        let out = run_outside_async(|| self.component.call_scalar(&self.instances, &self.name, &batch))
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let column = match out.columns() {
            [column] if column.len() == rows && column.data_type() == &self.returns => column.clone(),
            _ => {
                return Err(DataFusionError::External(Box::new(IgnisError::Udf(format!(
                    "UDF {} ({}) broke its contract: it must return one {} column of {rows} rows, \
                     returned {} column(s) of {} rows ({})",
                    self.name,
                    self.component.label(),
                    self.returns,
                    out.num_columns(),
                    out.num_rows(),
                    type_list(&out.schema().fields().iter().map(|f| f.data_type().clone()).collect::<Vec<_>>()),
                )))));
            }
        };
        Ok(ColumnarValue::Array(column))
    }
}

/// The declared argument types, when the given ones cast to them.
pub(crate) fn coerce_arguments(name: &str, declared: &[DataType], given: &[DataType]) -> DfResult<Vec<DataType>> {
    if given.len() != declared.len() {
        return plan_err!(
            "UDF {name} takes {} argument(s) ({}), got {}",
            declared.len(),
            type_list(declared),
            given.len()
        );
    }
    for (i, (given, wanted)) in given.iter().zip(declared).enumerate() {
        if given != wanted && !can_cast_types(given, wanted) {
            return plan_err!("UDF {name} argument {} must be {wanted}, got {given}", i + 1);
        }
    }
    Ok(declared.to_vec())
}

fn type_list(types: &[DataType]) -> String {
    types.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
}

/// Run a guest call off the async scheduler: WASI's synchronous host calls
/// (a guest writing to stderr) block on a Tokio runtime of their own, which
/// Tokio forbids on a runtime worker thread.
pub(crate) fn run_outside_async<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| s.spawn(f).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))),
        Err(_) => f(),
    }
}
