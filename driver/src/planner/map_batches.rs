//! Planning `map_batches` steps: a logical node that holds the transform's
//! name and the columns it announced, and the extension planner that turns it
//! into an [`ignis_core::map_batches::MapBatchesExec`].

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, DFSchemaRef, Result as DfResult, internal_err, plan_err};
use datafusion::dataframe::DataFrame;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use datafusion::prelude::SessionContext;
use ignis_core::map_batches::MapBatchesExec;
use ignis_executor::udf::WasmTransform;

/// `map_batches(function)` over `input`: every batch of the input through a
/// transform. Nothing is pushed through it (the transform sees all columns).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MapBatchesNode {
    input: LogicalPlan,
    function: String,
    schema: DFSchemaRef,
}

impl PartialOrd for MapBatchesNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.function.partial_cmp(&other.function)? {
            Ordering::Equal => self.input.partial_cmp(&other.input),
            unequal => Some(unequal),
        }
    }
}

impl UserDefinedLogicalNodeCore for MapBatchesNode {
    fn name(&self) -> &str {
        "MapBatches"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MapBatches: function={}", self.function)
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> DfResult<Self> {
        if !exprs.is_empty() || inputs.len() != 1 {
            return internal_err!("MapBatches has no expressions and one input");
        }
        Ok(Self { input: inputs.remove(0), function: self.function.clone(), schema: self.schema.clone() })
    }
}

/// The transforms a job's components offer, by name.
#[derive(Debug, Default)]
pub struct Transforms(HashMap<String, Arc<WasmTransform>>);

impl Transforms {
    pub fn new(transforms: Vec<Arc<WasmTransform>>) -> Self {
        Self(
            transforms.into_iter().map(|t| (ignis_core::map_batches::BatchFunction::name(&*t).to_owned(), t)).collect(),
        )
    }

    fn names(&self) -> String {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        if names.is_empty() { "none".to_owned() } else { names.join(", ") }
    }

    /// `df` with transform `function` applied to every batch. Asks the
    /// transform which columns it makes of `df`'s columns.
    pub async fn apply(&self, df: DataFrame, function: &str) -> DfResult<DataFrame> {
        let Some(transform) = self.0.get(function).cloned() else {
            return plan_err!(
                "no transform named '{function}' in the job's UDF components (transforms offered: {})",
                self.names()
            );
        };
        let input_schema = Arc::new(df.schema().as_arrow().clone());
        let schema = tokio::task::spawn_blocking(move || transform.output_schema(&input_schema))
            .await
            .map_err(|e| datafusion::error::DataFusionError::Internal(e.to_string()))??;
        let schema = Arc::new(DFSchema::try_from(schema)?);
        let (state, input) = df.into_parts();
        let node = MapBatchesNode { input, function: function.to_owned(), schema };
        Ok(DataFrame::new(state, LogicalPlan::Extension(Extension { node: Arc::new(node) })))
    }
}

/// `ctx` planning `map_batches` nodes with these transforms.
pub fn with_planner(ctx: SessionContext, transforms: Arc<Transforms>) -> SessionContext {
    let planner = Arc::new(Planner { extension: Arc::new(NodePlanner { transforms }) });
    SessionContext::new_with_state(
        SessionStateBuilder::new_from_existing(ctx.state()).with_query_planner(planner).build(),
    )
}

/// DataFusion's planner plus the `MapBatches` node.
#[derive(Debug)]
struct Planner {
    extension: Arc<NodePlanner>,
}

#[async_trait]
impl QueryPlanner for Planner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![self.extension.clone()])
            .create_physical_plan(logical_plan, session)
            .await
    }
}

#[derive(Debug)]
struct NodePlanner {
    transforms: Arc<Transforms>,
}

#[async_trait]
impl ExtensionPlanner for NodePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<MapBatchesNode>() else {
            return Ok(None);
        };
        let (Some(transform), [input]) = (self.transforms.0.get(&node.function), physical_inputs) else {
            return internal_err!("MapBatches {} cannot be planned", node.function);
        };
        let schema = Arc::new(node.schema.as_arrow().clone());
        Ok(Some(Arc::new(MapBatchesExec::new(input.clone(), transform.clone(), schema))))
    }
}
