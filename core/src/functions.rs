//! SQL functions Ignis adds to DataFusion's, registered in every session (the
//! driver plans with them, executors decode plans that call them).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, StructArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

use crate::stream::parse_duration;

/// Register Ignis's functions in `ctx`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(EventWindow::new()));
}

/// `window(ts, '1 minute')`: the tumbling event-time window a timestamp falls
/// in, as Spark's `window` gives it: a struct `{start, end}` of the argument's
/// timestamp type, windows aligned to the Unix epoch. A third argument (the
/// slide) equal to the size is accepted; sliding windows are not supported yet.
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

/// The window size of `window(ts, size[, slide])` from its literal arguments, in microseconds.
pub fn window_size_micros(size: Option<&ScalarValue>, slide: Option<&ScalarValue>) -> DfResult<i64> {
    let text = |v: Option<&ScalarValue>, what: &str| match v {
        Some(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s))) => {
            parse_duration(s).map_err(|e| datafusion::common::DataFusionError::Plan(format!("window {what}: {e}")))
        }
        _ => plan_err!("window {what} must be a string literal such as '1 minute'"),
    };
    let size = text(size, "size")?;
    if size.is_zero() {
        return plan_err!("window size must be more than zero");
    }
    if slide.is_some() && text(slide, "slide")? != size {
        return plan_err!(
            "sliding windows (a slide other than the size) are not supported yet; use a tumbling window(ts, size)"
        );
    }
    i64::try_from(size.as_micros()).or_else(|_| plan_err!("window size is too large"))
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
        let scalar = |i: usize| match args.args.get(i) {
            Some(ColumnarValue::Scalar(v)) => Some(v.clone()),
            _ => None,
        };
        let size_micros = window_size_micros(scalar(1).as_ref(), scalar(2).as_ref())?;
        let ts = args.args[0].to_array(args.number_rows)?;
        let DataType::Timestamp(unit, _) = ts.data_type() else {
            return exec_err!("window: the time column is {}, not a timestamp", ts.data_type());
        };
        let size = match unit {
            TimeUnit::Nanosecond => size_micros.checked_mul(1000),
            TimeUnit::Microsecond => Some(size_micros),
            TimeUnit::Millisecond => (size_micros % 1000 == 0).then_some(size_micros / 1000),
            TimeUnit::Second => (size_micros % 1_000_000 == 0).then_some(size_micros / 1_000_000),
        };
        let Some(size) = size.filter(|s| *s > 0) else {
            return exec_err!("window: a size of {size_micros} us does not fit the time column's unit ({unit:?})");
        };
        let raw = cast(&ts, &DataType::Int64)?;
        let raw = raw.as_any().downcast_ref::<Int64Array>().expect("cast to Int64 gives Int64Array");
        let starts: Int64Array = raw.iter().map(|v| v.map(|v| v - v.rem_euclid(size))).collect();
        let ends: Int64Array = starts.iter().map(|v| v.and_then(|v| v.checked_add(size))).collect();
        let columns: Vec<ArrayRef> = vec![cast(&starts, ts.data_type())?, cast(&ends, ts.data_type())?];
        let array = StructArray::try_new(window_fields(ts.data_type()), columns, ts.nulls().cloned())?;
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;

    use super::*;

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
        let err = ctx.sql("SELECT window(now(), '1 minute', '10 seconds')").await.unwrap_err().to_string();
        assert!(err.contains("sliding windows"), "{err}");
        let err = ctx.sql("SELECT window(now(), 'soon')").await.unwrap_err().to_string();
        assert!(err.contains("window size: \"soon\" is not a duration"), "{err}");
    }
}
