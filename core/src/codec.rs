//! Plan fragments on the wire: datafusion-proto bytes, with this extension
//! codec for Ignis's own operators. Decoding attaches the task's shuffle input
//! locations to each [`ShuffleReaderExec`], so one encoded plan serves every
//! task of a stage.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Literal};
use datafusion::physical_plan::recursive_query::RecursiveQueryExec;
use datafusion::physical_plan::work_table::WorkTableExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion_proto::bytes::{
    physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_proto_converter,
};
use datafusion_proto::physical_plan::from_proto::{parse_physical_expr_with_converter, parse_protobuf_partitioning};
use datafusion_proto::physical_plan::to_proto::{serialize_partitioning, serialize_physical_expr_with_converter};
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalPlanNodeExt, PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf;
use prost::Message;

use crate::csv::{CsvScanExec, CsvScanOptions};
use crate::error::{IgnisError, Result};
use crate::ids::StageId;
use crate::joins::BroadcastExec;
use crate::map_batches::{BatchFunctions, MapBatchesExec};
use crate::plan_nodes::{
    self, IgnisNode, KeyPair, Node, WindowFlag, WindowFlagList, projection_from_proto, projection_to_proto,
    schema_from_proto, schema_to_proto,
};
use crate::protocol::{PieceLocation, StageInput};
use crate::runtime_filter::RuntimeFilterExec;
use crate::shuffle::{ShuffleReaderExec, ShuffleWriterExec};
use crate::window_flags::{self, WindowFlags, WindowFlagsExec};

/// Encodes and decodes Ignis operators inside datafusion-proto plans.
#[derive(Debug, Default)]
pub struct IgnisCodec {
    inputs: HashMap<StageId, Vec<Option<Vec<PieceLocation>>>>,
    /// When encoding: the rows of each recursive query's work table (its
    /// output schema), by the query's name.
    work_tables: HashMap<String, SchemaRef>,
}

impl IgnisCodec {
    /// A codec that gives decoded shuffle readers these input locations.
    pub fn with_inputs(inputs: &[StageInput]) -> Self {
        Self { inputs: inputs.iter().map(|i| (i.stage_id, i.partitions.clone())).collect(), ..Self::default() }
    }

    /// A codec for encoding `plan`.
    fn for_plan(plan: &Arc<dyn ExecutionPlan>) -> Self {
        use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
        let mut work_tables = HashMap::new();
        let _ = plan.apply(|node| {
            if let Some(recursive) = node.downcast_ref::<RecursiveQueryExec>() {
                work_tables.insert(recursive.name().to_owned(), recursive.schema());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        Self { work_tables, ..Self::default() }
    }
}

/// The columns of a recursive query's rows that a work table scan reads (it
/// has no getter for them): its columns by name among the query's; `None`
/// when it reads them all.
fn work_table_projection(rows: &Schema, read: &Schema) -> DfResult<Option<Vec<usize>>> {
    if rows.fields() == read.fields() {
        return Ok(None);
    }
    let projection = read
        .fields()
        .iter()
        .map(|field| {
            let mut found = rows.fields().iter().enumerate().filter(|(_, f)| f.name() == field.name());
            match (found.next(), found.next()) {
                (Some((i, _)), None) => Ok(i),
                _ => Err(DataFusionError::NotImplemented(format!(
                    "a recursive query's column '{}' cannot be told apart from its other columns on the way to an \
                     executor; give its columns distinct names",
                    field.name()
                ))),
            }
        })
        .collect::<DfResult<Vec<_>>>()?;
    Ok(Some(projection))
}

/// Serialise a plan with Ignis's codec.
pub fn encode_plan(plan: Arc<dyn ExecutionPlan>) -> Result<Vec<u8>> {
    refuse_lossy_plans(&plan)?;
    let plan = window_flags::wrap(plan)?;
    let plan = unproject_series(plan)?;
    let codec = IgnisCodec::for_plan(&plan);
    Ok(physical_plan_to_bytes_with_proto_converter(plan, &codec, &IgnisConverter)?.to_vec())
}

/// A `generate_series`/`range` scan that reads no column (`count(*)`):
/// datafusion-proto 55 writes its projected (empty) schema but not the
/// projection, and the executor's generator then makes batches with a
/// column its schema does not have. It is written as the whole series (one
/// `value` column) under a projection to no column instead.
fn unproject_series(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    use datafusion::arrow::datatypes::{Field, TimeUnit};
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::functions_table::generate_series::{GenericSeriesState, TimestampValue};
    use datafusion::physical_plan::memory::LazyMemoryExec;
    use datafusion::physical_plan::projection::ProjectionExec;
    plan.transform_up(|node| {
        let Some(scan) = node.downcast_ref::<LazyMemoryExec>() else { return Ok(Transformed::no(node)) };
        let [generator] = scan.generators().as_slice() else { return Ok(Transformed::no(node)) };
        if !scan.schema().fields().is_empty() {
            return Ok(Transformed::no(node));
        }
        let value_type = {
            let state = generator.read();
            let any = state.as_any();
            if any.is::<GenericSeriesState<i64>>() {
                Some(DataType::Int64)
            } else {
                any.downcast_ref::<GenericSeriesState<TimestampValue>>()
                    .map(|s| DataType::Timestamp(TimeUnit::Nanosecond, s.current().tz_str().cloned()))
            }
        };
        let Some(value_type) = value_type else { return Ok(Transformed::no(node)) };
        let whole = Arc::new(Schema::new(vec![Field::new("value", value_type, false)]));
        let series = Arc::new(LazyMemoryExec::try_new(whole, scan.generators().clone())?);
        let none: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::new();
        Ok(Transformed::yes(Arc::new(ProjectionExec::try_new(none, series)?) as Arc<dyn ExecutionPlan>))
    })
    .map(|t| t.data)
}

/// Writes plans as datafusion-proto does, but a Float16 literal (which
/// datafusion-proto 55 decodes as a Float32: an executor then fails on the
/// type, or panics in a kernel) as a cast of the same value as a Float32
/// literal, which is exact.
struct IgnisConverter;

impl PhysicalProtoConverterExtension for IgnisConverter {
    fn proto_to_execution_plan(
        &self,
        proto: &protobuf::PhysicalPlanNode,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        proto.try_into_physical_plan_with_context(ctx, self)
    }

    fn execution_plan_to_proto(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> DfResult<protobuf::PhysicalPlanNode> {
        protobuf::PhysicalPlanNode::try_from_physical_plan_with_converter(plan.clone(), codec, self)
    }

    fn proto_to_physical_expr(
        &self,
        proto: &protobuf::PhysicalExprNode,
        input_schema: &Schema,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        parse_physical_expr_with_converter(proto, input_schema, ctx, self)
    }

    fn physical_expr_to_proto(
        &self,
        expr: &Arc<dyn PhysicalExpr>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> DfResult<protobuf::PhysicalExprNode> {
        if let Some(literal) = expr.downcast_ref::<Literal>()
            && let ScalarValue::Float16(value) = literal.value()
        {
            let wide = Arc::new(Literal::new(ScalarValue::Float32(value.map(f32::from))));
            let cast: Arc<dyn PhysicalExpr> = Arc::new(CastExpr::new(wide, DataType::Float16, None));
            return serialize_physical_expr_with_converter(&cast, codec, self);
        }
        serialize_physical_expr_with_converter(expr, codec, self)
    }
}

/// datafusion-proto 55 drops parts of some plans: the `FILTER` of aggregates
/// used as window functions, and an empty grouping set (`GROUPING SETS (())`:
/// its groups encode as no bits at all). An executor would compute another
/// answer, so such a plan is refused. (The flags it drops from window
/// functions travel beside them: see [`window_flags`]; Float16 literals are
/// written as casts: see [`IgnisConverter`].)
fn refuse_lossy_plans(plan: &Arc<dyn ExecutionPlan>) -> Result<()> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::physical_expr::window::{PlainAggregateWindowExpr, SlidingAggregateWindowExpr};
    plan.apply(|node| {
        if let Some(aggregate) = node.downcast_ref::<datafusion::physical_plan::aggregates::AggregateExec>() {
            let group_by = aggregate.group_expr();
            if group_by.has_grouping_set() && group_by.expr().is_empty() && !group_by.groups().is_empty() {
                return Err(DataFusionError::NotImplemented(
                    "GROUPING SETS (()) with no grouping column cannot be sent to an executor (datafusion-proto 55 \
                     drops the empty grouping set), so Ignis does not run it; use the aggregate without GROUP BY"
                        .into(),
                ));
            }
        }
        let Some(exprs) = window_flags::window_exprs(node) else { return Ok(TreeNodeRecursion::Continue) };
        for expr in exprs {
            // The expression's name is DataFusion's rendering of the SQL, clauses included.
            let any = expr.as_any();
            let aggregate = any.is::<PlainAggregateWindowExpr>() || any.is::<SlidingAggregateWindowExpr>();
            let filtered = aggregate && expr.name().contains(" FILTER (WHERE ");
            if !filtered {
                continue;
            }
            return Err(DataFusionError::NotImplemented(format!(
                "window expression {}: its FILTER clause cannot be sent to an executor (datafusion-proto 55 drops it), so Ignis does not run it",
                expr.name()
            )));
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}

/// Deserialise a plan, attaching `inputs` to its shuffle readers.
pub fn decode_plan(bytes: &[u8], ctx: &TaskContext, inputs: &[StageInput]) -> Result<Arc<dyn ExecutionPlan>> {
    let codec = IgnisCodec::with_inputs(inputs);
    physical_plan_from_bytes_with_extension_codec(bytes, ctx, &codec).map_err(IgnisError::from_datafusion)
}

impl PhysicalExtensionCodec for IgnisCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let node = IgnisNode::decode(buf)
            .ok()
            .and_then(|n| n.node)
            .ok_or_else(|| DataFusionError::Internal("unknown Ignis plan node".into()))?;
        match node {
            Node::ShuffleReader(n) => {
                let stage_id = StageId(n.stage_id);
                let schema = schema_from_proto(n.schema.as_ref(), "shuffle reader")?;
                let mut reader = ShuffleReaderExec::new(stage_id, schema.clone(), n.partitions as usize);
                if let Some(proto) = n.partitioning {
                    let decode_ctx = PhysicalPlanDecodeContext::new(ctx, self);
                    if let Some(p) = parse_protobuf_partitioning(Some(&proto), &decode_ctx, &schema, proto_converter)? {
                        reader = reader.with_partitioning(p)?;
                    }
                }
                Ok(match self.inputs.get(&stage_id) {
                    Some(pieces) => Arc::new(reader.with_pieces(pieces.clone())?),
                    None => Arc::new(reader),
                })
            }
            Node::ShuffleWriter(n) => {
                let [input] = inputs else {
                    return Err(DataFusionError::Internal("ShuffleWriterExec takes one input".into()));
                };
                let partitioning = match n.partitioning {
                    None => None,
                    Some(proto) => {
                        let decode_ctx = PhysicalPlanDecodeContext::new(ctx, self);
                        parse_protobuf_partitioning(Some(&proto), &decode_ctx, &input.schema(), proto_converter)?
                    }
                };
                Ok(Arc::new(ShuffleWriterExec::try_new(input.clone(), partitioning)?))
            }
            Node::CsvScan(n) => {
                let schema = schema_from_proto(n.schema.as_ref(), "CSV scan")?;
                let options = n.options.ok_or_else(|| DataFusionError::Internal("CSV scan without options".into()))?;
                let projection = projection_from_proto(n.projection);
                Ok(Arc::new(CsvScanExec::try_new(n.files, schema, CsvScanOptions::try_from(options)?, projection)?))
            }
            Node::MapBatches(n) => {
                let [input] = inputs else {
                    return Err(DataFusionError::Internal("MapBatchesExec takes one input".into()));
                };
                let found = ctx.session_config().get_extension::<BatchFunctions>();
                let Some(f) = found.as_ref().and_then(|functions| functions.get(&n.function)) else {
                    return Err(IgnisError::Udf(format!(
                        "map_batches: no transform named '{}' among this task's UDF components",
                        n.function
                    ))
                    .into());
                };
                let schema = schema_from_proto(n.schema.as_ref(), "map_batches")?;
                Ok(Arc::new(MapBatchesExec::new(input.clone(), f.clone(), schema)))
            }
            Node::Broadcast(n) => {
                let [input] = inputs else {
                    return Err(DataFusionError::Internal("BroadcastExec takes one input".into()));
                };
                Ok(Arc::new(BroadcastExec::try_new(input.clone(), n.partitions as usize)?))
            }
            Node::RuntimeFilter(n) => {
                let [input, keys] = inputs else {
                    return Err(DataFusionError::Internal("RuntimeFilterExec takes two inputs".into()));
                };
                let on = n.on.iter().map(|k| (k.probe as usize, k.key as usize)).collect();
                Ok(Arc::new(RuntimeFilterExec::try_new(input.clone(), keys.clone(), on)?))
            }
            Node::RecursiveQuery(n) => {
                let [static_term, recursive_term] = inputs else {
                    return Err(DataFusionError::Internal("RecursiveQueryExec takes two inputs".into()));
                };
                // Building it connects the recursive term's work table to it.
                Ok(Arc::new(RecursiveQueryExec::try_new(
                    n.name,
                    schema_from_proto(n.schema.as_ref(), "recursive query")?,
                    static_term.clone(),
                    recursive_term.clone(),
                    n.is_distinct,
                )?))
            }
            Node::WorkTable(n) => {
                let rows = schema_from_proto(n.rows.as_ref(), "work table")?;
                Ok(Arc::new(WorkTableExec::new(n.name, rows, projection_from_proto(n.projection))?))
            }
            Node::WindowFlags(n) => {
                let [window] = inputs else {
                    return Err(DataFusionError::Internal("WindowFlagsExec takes one input".into()));
                };
                let flags: Vec<WindowFlags> = n.flags.into_iter().map(WindowFlags::from).collect();
                window_flags::unwrap(window, &flags)
            }
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let node = if let Some(reader) = node.downcast_ref::<ShuffleReaderExec>() {
            let partitioning = match reader.partitioning() {
                p @ Partitioning::Hash(..) => Some(serialize_partitioning(p, self, proto_converter)?),
                _ => None,
            };
            Node::ShuffleReader(plan_nodes::ShuffleReader {
                stage_id: reader.stage_id().0,
                partitions: reader.partition_count() as u64,
                schema: schema_to_proto(&reader.schema())?,
                partitioning,
            })
        } else if let Some(writer) = node.downcast_ref::<ShuffleWriterExec>() {
            let partitioning =
                writer.partitioning().map(|p| serialize_partitioning(p, self, proto_converter)).transpose()?;
            Node::ShuffleWriter(plan_nodes::ShuffleWriter { partitioning })
        } else if let Some(scan) = node.downcast_ref::<CsvScanExec>() {
            Node::CsvScan(plan_nodes::CsvScan {
                files: scan.files().to_vec(),
                schema: schema_to_proto(scan.data_schema())?,
                options: Some(scan.options().into()),
                projection: projection_to_proto(scan.projection()),
            })
        } else if let Some(map) = node.downcast_ref::<MapBatchesExec>() {
            Node::MapBatches(plan_nodes::MapBatches {
                function: map.function().name().to_owned(),
                schema: schema_to_proto(&map.schema())?,
            })
        } else if let Some(broadcast) = node.downcast_ref::<BroadcastExec>() {
            Node::Broadcast(plan_nodes::Broadcast { partitions: broadcast.partitions() as u64 })
        } else if let Some(filter) = node.downcast_ref::<RuntimeFilterExec>() {
            let on = filter.on().iter().map(|&(probe, key)| KeyPair { probe: probe as u64, key: key as u64 });
            Node::RuntimeFilter(plan_nodes::RuntimeFilter { on: on.collect() })
        } else if let Some(recursive) = node.downcast_ref::<RecursiveQueryExec>() {
            Node::RecursiveQuery(plan_nodes::RecursiveQuery {
                name: recursive.name().to_owned(),
                is_distinct: recursive.is_distinct(),
                schema: schema_to_proto(&recursive.schema())?,
            })
        } else if let Some(work_table) = node.downcast_ref::<WorkTableExec>() {
            let name = work_table.name().to_owned();
            let rows =
                self.work_tables.get(&name).cloned().ok_or_else(|| {
                    DataFusionError::Internal(format!("work table {name} outside its recursive query"))
                })?;
            let projection = work_table_projection(&rows, &work_table.schema())?;
            Node::WorkTable(plan_nodes::WorkTable {
                name,
                rows: schema_to_proto(&rows)?,
                projection: projection_to_proto(projection.as_ref()),
            })
        } else if let Some(flagged) = node.downcast_ref::<WindowFlagsExec>() {
            Node::WindowFlags(WindowFlagList { flags: flagged.flags().iter().map(WindowFlag::from).collect() })
        } else {
            return Err(DataFusionError::NotImplemented(format!(
                "operator {} cannot be sent to an executor",
                node.name()
            )));
        };
        IgnisNode { node: Some(node) }.encode(buf).map_err(|e| DataFusionError::Internal(e.to_string()))
    }
}
