//! Example UDFs for the orders table (`examples/orders`): a string scalar
//! (`normalize`), a numeric scalar (`with_tax`), an aggregate (`geo_mean`) and
//! a batch transform for `map_batches` steps (`order_bands`).

use std::sync::Arc;

use ignis_udf::arrow_array::cast::AsArray;
use ignis_udf::arrow_array::types::{ArrowPrimitiveType, Float64Type, Int64Type};
use ignis_udf::arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, PrimitiveArray, RecordBatch, StringArray};
use ignis_udf::arrow_schema::{DataType, Field, Schema};
use ignis_udf::arrow_select::filter::filter_record_batch;

/// Trims a product name, lower-cases it and turns each run of spaces,
/// dashes and underscores into one dash: " Big  Widget_2 " -> "big-widget-2".
#[ignis_udf::scalar]
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending_dash = false;
    for c in name.trim().chars() {
        if c == ' ' || c == '-' || c == '_' {
            pending_dash = !out.is_empty();
        } else {
            if pending_dash {
                out.push('-');
                pending_dash = false;
            }
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Price with tax at `rate_percent`, rounded to cents; a null rate means no tax.
#[ignis_udf::scalar]
fn with_tax(price: f64, rate_percent: Option<f64>) -> f64 {
    let gross = price * (1.0 + rate_percent.unwrap_or(0.0) / 100.0);
    (gross * 100.0).round() / 100.0
}

/// Geometric mean of the positive values (others are skipped); null when there are none.
#[derive(Default)]
struct GeoMean {
    log_sum: f64,
    count: u64,
}

#[ignis_udf::aggregate]
impl ignis_udf::Aggregate for GeoMean {
    const NAME: &'static str = "geo_mean";
    const DESCRIPTION: &'static str = "Geometric mean of the positive values; null when there are none.";
    type Args = (f64,);
    type Output = Option<f64>;

    fn update(&mut self, (x,): (f64,)) {
        if x > 0.0 {
            self.log_sum += x.ln();
            self.count += 1;
        }
    }

    fn merge(&mut self, other: Self) {
        self.log_sum += other.log_sum;
        self.count += other.count;
    }

    fn finish(&self) -> Option<f64> {
        (self.count > 0).then(|| (self.log_sum / self.count as f64).exp())
    }

    fn to_state(&self) -> Vec<u8> {
        [self.log_sum.to_le_bytes(), self.count.to_le_bytes()].concat()
    }

    fn from_state(bytes: &[u8]) -> Result<Self, String> {
        let (log_sum, count) = bytes.split_at_checked(8).ok_or("state is not 16 bytes")?;
        Ok(GeoMean {
            log_sum: f64::from_le_bytes(log_sum.try_into().map_err(|_| "state is not 16 bytes")?),
            count: u64::from_le_bytes(count.try_into().map_err(|_| "state is not 16 bytes")?),
        })
    }
}

/// Keeps the orders with a positive quantity and adds `revenue` (price ×
/// quantity) and `band`: "small" below 100, "medium" below 1000, else "large".
#[ignis_udf::transform]
fn order_bands(batch: RecordBatch) -> Result<RecordBatch, String> {
    let keep: BooleanArray =
        column::<Int64Type>(&batch, "quantity")?.iter().map(|q| Some(q.is_some_and(|q| q > 0))).collect();
    let batch = filter_record_batch(&batch, &keep).map_err(|e| e.to_string())?;
    let quantity = column::<Int64Type>(&batch, "quantity")?;
    let price = column::<Float64Type>(&batch, "price")?;
    let revenue: Float64Array = price.iter().zip(quantity.iter()).map(|(p, q)| Some(p? * q? as f64)).collect();
    let band: StringArray = revenue
        .iter()
        .map(|r| {
            r.map(|r| match r {
                r if r < 100.0 => "small",
                r if r < 1000.0 => "medium",
                _ => "large",
            })
        })
        .collect();
    let mut fields = batch.schema().fields().to_vec();
    fields.push(Arc::new(Field::new("revenue", DataType::Float64, true)));
    fields.push(Arc::new(Field::new("band", DataType::Utf8, true)));
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(revenue));
    columns.push(Arc::new(band));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// Column `name` of `batch` as an array of `T`, or an error naming what is there.
fn column<'a, T: ArrowPrimitiveType>(batch: &'a RecordBatch, name: &str) -> Result<&'a PrimitiveArray<T>, String> {
    let found = batch.column_by_name(name).ok_or_else(|| format!("the input has no column '{name}'"))?;
    found
        .as_primitive_opt::<T>()
        .ok_or_else(|| format!("column '{name}' is {}, not {}", found.data_type(), T::DATA_TYPE))
}

ignis_udf::export!(normalize, with_tax, GeoMean, order_bands);
