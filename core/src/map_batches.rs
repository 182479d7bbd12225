//! `map_batches` steps: a user function from a record batch to a record batch
//! (like Spark's `mapPartitions` / `mapInArrow`), run on every batch of every
//! partition where the data is, with no shuffle.
//!
//! The function itself lives elsewhere (a Wasm transform in the executor); this
//! crate knows it only as a [`BatchFunction`]. On the wire a
//! [`MapBatchesExec`] is the function's name and output schema; the decoding
//! task finds the function in the [`BatchFunctions`] of its session.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;

use crate::error::{IgnisError, Result};

/// A user function over whole batches. `call` blocks (it runs user code) and
/// is run on a blocking thread.
pub trait BatchFunction: fmt::Debug + Send + Sync {
    /// How jobs name it.
    fn name(&self) -> &str;

    /// The batch `input` turns into; its schema must be the one planned.
    fn call(&self, input: RecordBatch) -> Result<RecordBatch>;
}

/// The batch functions a task may run, by name: a session config extension.
#[derive(Debug, Default)]
pub struct BatchFunctions {
    functions: HashMap<String, Arc<dyn BatchFunction>>,
}

impl BatchFunctions {
    pub fn insert(&mut self, function: Arc<dyn BatchFunction>) {
        self.functions.insert(function.name().to_owned(), function);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn BatchFunction>> {
        self.functions.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }
}

/// Runs a [`BatchFunction`] on every batch of its input, partition by partition.
#[derive(Debug)]
pub struct MapBatchesExec {
    input: Arc<dyn ExecutionPlan>,
    function: Arc<dyn BatchFunction>,
    cache: Arc<PlanProperties>,
}

impl MapBatchesExec {
    /// `schema` is what the function returns for the input's schema, asked of
    /// it at planning time.
    pub fn new(input: Arc<dyn ExecutionPlan>, function: Arc<dyn BatchFunction>, schema: SchemaRef) -> Self {
        // Nothing is known of the output's columns, so nothing of its order or
        // partitioning carries over; the partition count does.
        let cache = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self { input, function, cache: Arc::new(cache) }
    }

    pub fn function(&self) -> &Arc<dyn BatchFunction> {
        &self.function
    }
}

impl DisplayAs for MapBatchesExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MapBatchesExec: function={}", self.function.name())
    }
}

impl ExecutionPlan for MapBatchesExec {
    crate::unary_plan_methods!("MapBatchesExec", |this, input| MapBatchesExec::new(
        input,
        this.function.clone(),
        this.schema()
    ));

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = self.schema();
        let function = self.function.clone();
        let expected = schema.clone();
        let output = input.then(move |batch| {
            let function = function.clone();
            let expected = expected.clone();
            async move {
                let batch = batch?;
                let name = function.name().to_owned();
                let out = tokio::task::spawn_blocking(move || function.call(batch))
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(IgnisError::internal(e.to_string()))))??;
                Ok(conform(out, &expected, &name)?)
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)))
    }
}

/// The batch under the planned schema. A batch whose columns differ from the
/// planned ones would break every operator after the step: say how.
fn conform(batch: RecordBatch, expected: &SchemaRef, function: &str) -> Result<RecordBatch> {
    let got = batch.schema();
    let same = got.fields().len() == expected.fields().len()
        && got
            .fields()
            .iter()
            .zip(expected.fields())
            .all(|(g, e)| g.name() == e.name() && g.data_type() == e.data_type());
    if !same {
        let show = |s: &SchemaRef| {
            s.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ")
        };
        return Err(IgnisError::Udf(format!(
            "map_batches {function}: returned columns ({}) other than the ones it announced for this input ({}); \
             a transform's output columns must depend only on its input columns, not on the rows",
            show(&got),
            show(expected)
        )));
    }
    RecordBatch::try_new(expected.clone(), batch.columns().to_vec()).map_err(|e| {
        IgnisError::Udf(format!("map_batches {function}: returned a batch that does not fit its columns: {e}"))
    })
}
