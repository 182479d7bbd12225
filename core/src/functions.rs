//! SQL functions Ignis adds to DataFusion's, registered in every session (the
//! driver plans with them, executors decode plans that call them).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, ListArray, StructArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use datafusion::common::Column;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::prelude::SessionContext;

use crate::stream::parse_duration;

/// Register Ignis's functions in `ctx`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(EventWindow::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(SlidingWindowList { signature: EventWindow::new().signature }));
    ctx.register_udf(ScalarUDF::new_from_impl(crate::scalar_subquery::ScalarSubqueryRow::default()));
}

/// `window(ts, '1 minute')`: the tumbling event-time window a timestamp falls
/// in, as Spark's `window` gives it: a struct `{start, end}` of the argument's
/// timestamp type, windows aligned to the Unix epoch. With a slide shorter
/// than the size (`window(ts, '10 minutes', '5 minutes')`) a row falls in
/// several windows; as a GROUP BY key the [`SlidingWindows`] rule counts it in each.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EventWindow {
    signature: Signature,
}

pub const WINDOW_FUNCTION: &str = "window";

impl EventWindow {
    pub fn new() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl Default for EventWindow {
    fn default() -> Self {
        Self::new()
    }
}

fn window_fields(ts: &DataType) -> Fields {
    Fields::from(vec![Field::new("start", ts.clone(), true), Field::new("end", ts.clone(), true)])
}

/// The size and slide of `window(ts, size[, slide])` from its literal
/// arguments, in microseconds (the slide is the size for a tumbling window).
pub fn window_size_micros(size: Option<&ScalarValue>, slide: Option<&ScalarValue>) -> DfResult<(i64, i64)> {
    let text = |v: Option<&ScalarValue>, what: &str| match v {
        Some(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s))) => {
            parse_duration(s).map_err(|e| datafusion::common::DataFusionError::Plan(format!("window {what}: {e}")))
        }
        _ => plan_err!("window {what} must be a string literal such as '1 minute'"),
    };
    let micros = |d: std::time::Duration, what: &str| {
        if d.is_zero() {
            return plan_err!("window {what} must be more than zero");
        }
        i64::try_from(d.as_micros()).or_else(|_| plan_err!("window {what} is too large"))
    };
    let size = micros(text(size, "size")?, "size")?;
    let slide = match slide {
        Some(_) => micros(text(slide, "slide")?, "slide")?,
        None => size,
    };
    if slide > size {
        return plan_err!("window slide must not be longer than its size");
    }
    Ok((size, slide))
}

/// Microseconds as a count of the time column's unit; `None` when they do not divide evenly.
fn in_unit(micros: i64, unit: &TimeUnit) -> Option<i64> {
    let n = match unit {
        TimeUnit::Nanosecond => micros.checked_mul(1000),
        TimeUnit::Microsecond => Some(micros),
        TimeUnit::Millisecond => (micros % 1000 == 0).then_some(micros / 1000),
        TimeUnit::Second => (micros % 1_000_000 == 0).then_some(micros / 1_000_000),
    };
    n.filter(|n| *n > 0)
}

impl ScalarUDFImpl for EventWindow {
    fn name(&self) -> &str {
        WINDOW_FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        if !(2..=3).contains(&arg_types.len()) {
            return plan_err!("window takes 2 or 3 arguments (time column, size[, slide]), got {}", arg_types.len());
        }
        let ts = match &arg_types[0] {
            t @ DataType::Timestamp(..) => t.clone(),
            DataType::Date32 | DataType::Date64 | DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
                DataType::Timestamp(TimeUnit::Microsecond, None)
            }
            other => return plan_err!("window needs a timestamp as its first argument, got {other}"),
        };
        let mut out = vec![ts];
        out.extend(arg_types[1..].iter().map(|_| DataType::Utf8));
        Ok(out)
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Struct(window_fields(&arg_types[0])))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<Arc<Field>> {
        window_size_micros(
            args.scalar_arguments.get(1).copied().flatten(),
            args.scalar_arguments.get(2).copied().flatten(),
        )?;
        let ts = args.arg_fields[0].data_type();
        Ok(Arc::new(Field::new(WINDOW_FUNCTION, DataType::Struct(window_fields(ts)), true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let (size_micros, slide_micros) = literal_sizes(&args)?;
        if slide_micros != size_micros {
            return exec_err!(
                "a sliding window(ts, size, slide) gives several windows per row: use it as a GROUP BY key"
            );
        }
        let ts = args.args[0].to_array(args.number_rows)?;
        let (raw, size) = raw_times(&ts, size_micros)?;
        let starts: Int64Array = raw.iter().map(|v| v.map(|v| v - v.rem_euclid(size))).collect();
        let ends: Int64Array = starts.iter().map(|v| v.and_then(|v| v.checked_add(size))).collect();
        let columns: Vec<ArrayRef> = vec![cast(&starts, ts.data_type())?, cast(&ends, ts.data_type())?];
        let array = StructArray::try_new(window_fields(ts.data_type()), columns, ts.nulls().cloned())?;
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}

fn literal_sizes(args: &ScalarFunctionArgs) -> DfResult<(i64, i64)> {
    let scalar = |i: usize| match args.args.get(i) {
        Some(ColumnarValue::Scalar(v)) => Some(v.clone()),
        _ => None,
    };
    window_size_micros(scalar(1).as_ref(), scalar(2).as_ref())
}

/// The time column as integers of its unit, and `micros` in that unit.
fn raw_times(ts: &ArrayRef, micros: i64) -> DfResult<(Int64Array, i64)> {
    let DataType::Timestamp(unit, _) = ts.data_type() else {
        return exec_err!("window: the time column is {}, not a timestamp", ts.data_type());
    };
    let Some(n) = in_unit(micros, unit) else {
        return exec_err!("window: {micros} us does not fit the time column's unit ({unit:?})");
    };
    let raw = cast(ts, &DataType::Int64)?;
    let raw = raw.as_any().downcast_ref::<Int64Array>().expect("cast to Int64 gives Int64Array").clone();
    Ok((raw, n))
}

/// Every sliding window a timestamp falls in, oldest first: the list the
/// [`SlidingWindows`] rule unnests under an aggregation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SlidingWindowList {
    signature: Signature,
}

pub const SLIDING_WINDOWS_FUNCTION: &str = "ignis_sliding_windows";

impl ScalarUDFImpl for SlidingWindowList {
    fn name(&self) -> &str {
        SLIDING_WINDOWS_FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        EventWindow::new().coerce_types(arg_types)
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        let element = Field::new("item", DataType::Struct(window_fields(&arg_types[0])), true);
        Ok(DataType::List(Arc::new(element)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let (size_micros, slide_micros) = literal_sizes(&args)?;
        let ts = args.args[0].to_array(args.number_rows)?;
        let (raw, size) = raw_times(&ts, size_micros)?;
        let (_, slide) = raw_times(&ts, slide_micros)?;
        let mut offsets = vec![0i32];
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        for v in raw.iter() {
            if let Some(v) = v {
                // Window starts are multiples of the slide in (v - size, v].
                let last = v - v.rem_euclid(slide);
                let mut start = last;
                let mut these = Vec::new();
                while start > v - size {
                    these.push(start);
                    start -= slide;
                }
                for s in these.into_iter().rev() {
                    starts.push(s);
                    ends.push(s + size);
                }
            }
            offsets.push(i32::try_from(starts.len()).map_err(|_| {
                datafusion::common::DataFusionError::Execution("window: too many sliding windows in one batch".into())
            })?);
        }
        let columns: Vec<ArrayRef> =
            vec![cast(&Int64Array::from(starts), ts.data_type())?, cast(&Int64Array::from(ends), ts.data_type())?];
        let structs = StructArray::try_new(window_fields(ts.data_type()), columns, None)?;
        let element = Arc::new(Field::new("item", DataType::Struct(window_fields(ts.data_type())), true));
        let list =
            ListArray::try_new(element, OffsetBuffer::new(offsets.into()), Arc::new(structs), ts.nulls().cloned())?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// Spark's sliding windows: an aggregation grouped by `window(ts, size,
/// slide)` (slide shorter than size) counts each row in every window it falls
/// in. The rule puts each row's windows under the aggregation as rows of
/// their own (a list, unnested) and groups by that column instead.
#[derive(Debug, Default)]
pub struct SlidingWindows;

const WINDOWS_COLUMN: &str = "__ignis_window";

impl AnalyzerRule for SlidingWindows {
    fn name(&self) -> &str {
        "ignis_sliding_windows"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up(|node| {
            let LogicalPlan::Aggregate(aggregate) = &node else { return Ok(Transformed::no(node)) };
            let sliding = aggregate.group_expr.iter().position(|e| sliding_window(e).is_some());
            let Some(at) = sliding else { return Ok(Transformed::no(node)) };
            let Some(call) = sliding_window(&aggregate.group_expr[at]) else { return Ok(Transformed::no(node)) };
            let name = aggregate.group_expr[at].schema_name().to_string();
            let list = Expr::ScalarFunction(ScalarFunction::new_udf(
                Arc::new(ScalarUDF::new_from_impl(SlidingWindowList { signature: EventWindow::new().signature })),
                call.args.clone(),
            ));
            let input = aggregate.input.as_ref().clone();
            let mut columns: Vec<Expr> = input.schema().columns().into_iter().map(Expr::Column).collect();
            columns.push(list.alias(WINDOWS_COLUMN));
            let expanded = LogicalPlanBuilder::from(input).project(columns)?.unnest_column(WINDOWS_COLUMN)?.build()?;
            let mut group = aggregate.group_expr.clone();
            group[at] = Expr::Column(Column::from_name(WINDOWS_COLUMN)).alias(name);
            let rewritten = Aggregate::try_new(Arc::new(expanded), group, aggregate.aggr_expr.clone())?;
            Ok(Transformed::yes(LogicalPlan::Aggregate(rewritten)))
        })
        .map(|t| t.data)
    }
}

/// The `window(ts, size, slide)` call (slide shorter than size) that `expr` is, under any alias.
fn sliding_window(expr: &Expr) -> Option<&ScalarFunction> {
    let expr = match expr {
        Expr::Alias(a) => a.expr.as_ref(),
        e => e,
    };
    let Expr::ScalarFunction(f) = expr else { return None };
    if f.name() != WINDOW_FUNCTION || f.args.len() != 3 {
        return None;
    }
    let literal = |i: usize| match &f.args[i] {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    };
    match window_size_micros(literal(1), literal(2)) {
        Ok((size, slide)) if slide != size => Some(f),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;

    use super::*;

    #[tokio::test]
    async fn sliding_windows_count_a_row_in_each_of_its_windows() {
        let ctx = crate::session::session_context(2, 8192, &Default::default());
        let batches = ctx
            .sql(
                "SELECT window(ts, '10 minutes', '5 minutes') AS w, count(*) AS n FROM (VALUES \
                 (TIMESTAMP '2026-11-29 10:01:00'), (TIMESTAMP '2026-11-29 10:07:00'), \
                 (TIMESTAMP '2026-11-29 10:12:00')) AS t(ts) GROUP BY 1 ORDER BY 1",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        let rows: Vec<&str> = text.lines().filter(|l| l.contains("start")).collect();
        let want = [
            ("09:55:00", "10:05:00", 1),
            ("10:00:00", "10:10:00", 2),
            ("10:05:00", "10:15:00", 2),
            ("10:10:00", "10:20:00", 1),
        ];
        assert_eq!(rows.len(), want.len(), "{text}");
        for (row, (start, end, n)) in rows.iter().zip(want) {
            assert!(row.contains(&format!("start: 2026-11-29T{start}, end: 2026-11-29T{end}")), "{text}");
            assert!(row.trim_end_matches('|').trim_end().ends_with(&format!(" {n}")), "{text}");
        }
        let err = ctx
            .sql("SELECT window(ts, '10 minutes', '5 minutes') FROM (VALUES (now())) AS t(ts)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("use it as a GROUP BY key"), "{err}");
    }

    #[tokio::test]
    async fn window_gives_spark_tumbling_windows() {
        let ctx = SessionContext::new();
        register(&ctx);
        let batches = ctx
            .sql(
                "SELECT window(ts, '1 minute') AS w FROM (VALUES \
                 (TIMESTAMP '2026-11-29 10:00:59'), (TIMESTAMP '2026-11-29 10:01:00'), (NULL)) AS t(ts)",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        assert!(text.contains("{start: 2026-11-29T10:00:00, end: 2026-11-29T10:01:00}"), "{text}");
        assert!(text.contains("{start: 2026-11-29T10:01:00, end: 2026-11-29T10:02:00}"), "{text}");
        let err = ctx.sql("SELECT window(now(), '1 minute', '2 minutes')").await.unwrap_err().to_string();
        assert!(err.contains("slide must not be longer than its size"), "{err}");
        let err = ctx.sql("SELECT window(now(), 'soon')").await.unwrap_err().to_string();
        assert!(err.contains("window size: \"soon\" is not a duration"), "{err}");
    }
}
