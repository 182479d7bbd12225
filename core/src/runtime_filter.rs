//! Runtime join filters across stages (Spark's runtime filters, DataFusion's
//! dynamic join filters).
//!
//! In one process DataFusion narrows the probe side of a hash join to the keys
//! its build side holds while the probe side is still being scanned. Across
//! stages that is too late: by the time a join runs, its inputs have already
//! been written through the shuffle in full (TPC-H q18 shuffled all six million
//! rows of `lineitem` to keep the few hundred whose order appears among 57
//! large orders). The stage cutter instead lets the stage that feeds one side of
//! a join wait for the stage that holds the other side's keys, and puts a
//! [`RuntimeFilterExec`] under its shuffle writer: rows whose key the other side
//! does not hold are dropped before they are written.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Int64Type, Schema};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::HashSet;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

/// A key side with more rows than this is not worth a filter: every task
/// would read it whole and hold it as a hash set (about 32 bytes a key: 128
/// MB at the limit) to test every probe row against; the rows pass
/// unfiltered instead. (It was 500,000 until TPC-H SF10, where the date-range
/// key sides of q3 and q5 hold 1.5-2.3 million orders and their filters were
/// dropped: 2.4x and 3.6x single-node DataFusion's time.)
pub const MAX_KEY_ROWS: usize = 4_000_000;
/// After this many input rows, a filter that dropped less than
/// [`MIN_DROPPED_PERCENT`] of them stops filtering.
const CHECK_AFTER_ROWS: usize = 100_000;
const MIN_DROPPED_PERCENT: usize = 10;

/// Passes the rows of `input` whose key columns all hold values found in the
/// matching columns of `keys` (read whole, by every partition). Rows with a
/// null key are dropped: they match nothing in an equi-join.
#[derive(Debug)]
pub struct RuntimeFilterExec {
    input: Arc<dyn ExecutionPlan>,
    keys: Arc<dyn ExecutionPlan>,
    /// Pairs of (column of `input`, column of `keys`).
    on: Vec<(usize, usize)>,
    cache: Arc<PlanProperties>,
}

impl RuntimeFilterExec {
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        keys: Arc<dyn ExecutionPlan>,
        on: Vec<(usize, usize)>,
    ) -> Result<Self> {
        if keys.output_partitioning().partition_count() != 1 {
            return Err(DataFusionError::Internal("RuntimeFilterExec takes a single-partition key side".into()));
        }
        if let Some(mismatch) = Self::mismatch(&input.schema(), &keys.schema(), &on) {
            return Err(DataFusionError::Internal(format!("RuntimeFilterExec: {mismatch}")));
        }
        if on.is_empty() {
            return Err(DataFusionError::Internal("RuntimeFilterExec needs a key column".into()));
        }
        let cache = input.properties().clone();
        Ok(Self { input, keys, on, cache })
    }

    /// Why the `on` pairs cannot filter `input` by `keys` (a missing column or
    /// different types), if they cannot.
    pub fn mismatch(input: &Schema, keys: &Schema, on: &[(usize, usize)]) -> Option<String> {
        on.iter().find_map(|&(i, k)| {
            let (Some(a), Some(b)) = (input.fields().get(i), keys.fields().get(k)) else {
                return Some(format!("no columns {i} / {k}"));
            };
            (a.data_type() != b.data_type())
                .then(|| format!("{} is {} but its keys {} are {}", a.name(), a.data_type(), b.name(), b.data_type()))
        })
    }

    pub fn on(&self) -> &[(usize, usize)] {
        &self.on
    }

    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    pub fn keys(&self) -> &Arc<dyn ExecutionPlan> {
        &self.keys
    }
}

impl DisplayAs for RuntimeFilterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let (input, keys) = (self.input.schema(), self.keys.schema());
        let pairs: Vec<String> = self
            .on
            .iter()
            .map(|&(i, k)| format!("{}@{i} in {}@{k}", input.field(i).name(), keys.field(k).name()))
            .collect();
        write!(f, "RuntimeFilterExec: {}", pairs.join(", "))
    }
}

impl ExecutionPlan for RuntimeFilterExec {
    fn name(&self) -> &str {
        "RuntimeFilterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input, &self.keys]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true, false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input, keys] = <[_; 2]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("RuntimeFilterExec takes two children".into()))?;
        Ok(Arc::new(Self::try_new(input, keys, self.on.clone())?))
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        let keys = self.keys.execute(0, context)?;
        let schema = self.input.schema();
        let on = self.on.clone();
        let filtered = futures::stream::once(async move {
            let sets = key_sets(keys, &on, &schema).await?;
            Ok::<_, DataFusionError>(filter(input, sets, on))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.input.schema(), filtered)))
    }
}

/// The set of key values the other side holds, one per key column, or `None`
/// when the key side is too large to be worth it. (Each column is checked on
/// its own: a row can still pass whose combination of keys the other side
/// lacks; the join drops it.)
async fn key_sets(
    mut keys: SendableRecordBatchStream,
    on: &[(usize, usize)],
    schema: &Schema,
) -> Result<Option<Vec<KeySet>>> {
    let mut sets = on.iter().map(|&(i, _)| KeySet::new(schema.field(i).data_type())).collect::<Result<Vec<_>>>()?;
    let mut rows = 0;
    while let Some(batch) = keys.next().await {
        let batch = batch?;
        rows += batch.num_rows();
        if rows > MAX_KEY_ROWS {
            return Ok(None);
        }
        for (set, &(_, k)) in sets.iter_mut().zip(on) {
            set.insert(batch.column(k))?;
        }
    }
    Ok(Some(sets.into_iter().map(KeySet::finish).collect()))
}

/// A dense key set spends at most this many bits per distinct key: about
/// what a hash set of `i64` spends, so the bitmap is never the larger, and a
/// probe is one load where the hash set's is a hash and, once it outgrows
/// the cache, a miss a row (TPC-H q4's 570K order keys of a quarter span
/// 60M at SF10: 104 bits a key).
const DENSE_BITS_PER_KEY: u64 = 160;

/// The values of one key column.
enum KeySet {
    /// Integer columns, widened to `i64`, while the key side is read.
    Collecting(Vec<i64>),
    /// Integers within a range not much wider than their number (surrogate
    /// keys: TPC-H's 2.3 million order keys of a year at SF10 span 60 million,
    /// a 7.5 MB bitmap where a hash set takes 40 MB): one bit per value of the
    /// range, from `min`.
    Dense { min: i64, span: u64, bits: Vec<u64> },
    /// Other integers.
    Ints(HashSet<i64>),
    /// Any other type, in arrow's row format.
    Rows(RowConverter, HashSet<Box<[u8]>>),
}

impl KeySet {
    fn new(data_type: &DataType) -> Result<Self> {
        Ok(if is_small_int(data_type) {
            Self::Collecting(Vec::new())
        } else {
            Self::Rows(RowConverter::new(vec![SortField::new(data_type.clone())])?, HashSet::default())
        })
    }

    /// The set to probe, once every key is in: integers become a bitmap
    /// when their range is narrow enough, a hash set otherwise.
    fn finish(self) -> Self {
        let Self::Collecting(ints) = self else { return self };
        let (Some(&min), Some(&max)) = (ints.iter().min(), ints.iter().max()) else {
            return Self::Ints(HashSet::default());
        };
        let span = max as i128 - min as i128 + 1;
        let most = (ints.len() as u64).saturating_mul(DENSE_BITS_PER_KEY).max(1 << 16);
        let Some(span) = u64::try_from(span).ok().filter(|&s| s <= most) else {
            return Self::Ints(ints.into_iter().collect());
        };
        let mut bits = vec![0u64; span.div_ceil(64) as usize];
        for &v in &ints {
            let at = v.wrapping_sub(min) as u64;
            bits[(at / 64) as usize] |= 1 << (at % 64);
        }
        // Repeated keys counted above: measured against the distinct ones.
        let distinct: u64 = bits.iter().map(|w| u64::from(w.count_ones())).sum();
        if span > distinct.saturating_mul(DENSE_BITS_PER_KEY).max(1 << 16) {
            return Self::Ints(ints.into_iter().collect());
        }
        Self::Dense { min, span, bits }
    }

    /// Add the non-null values of `array` (before [`KeySet::finish`]).
    fn insert(&mut self, array: &ArrayRef) -> Result<()> {
        match self {
            Self::Collecting(ints) => {
                let array = cast(array, &DataType::Int64)?;
                ints.extend(array.as_primitive::<Int64Type>().iter().flatten());
            }
            Self::Dense { .. } | Self::Ints(_) => {
                return Err(DataFusionError::Internal("runtime filter keys added after they were finished".into()));
            }
            Self::Rows(converter, set) => {
                let rows = converter.convert_columns(std::slice::from_ref(array))?;
                for i in (0..array.len()).filter(|&i| array.is_valid(i)) {
                    set.insert(rows.row(i).as_ref().into());
                }
            }
        }
        Ok(())
    }

    /// Which values of `array` are in the set (nulls are not).
    fn contains(&self, array: &ArrayRef) -> Result<BooleanBuffer> {
        Ok(match self {
            Self::Dense { min, span, bits } => {
                let ints = cast(array, &DataType::Int64)?;
                let ints = ints.as_primitive::<Int64Type>();
                BooleanBuffer::collect_bool(ints.len(), |i| {
                    let at = ints.value(i).wrapping_sub(*min) as u64;
                    ints.is_valid(i) && at < *span && bits[(at / 64) as usize] & (1 << (at % 64)) != 0
                })
            }
            Self::Collecting(_) => {
                return Err(DataFusionError::Internal("runtime filter probed before its keys were all in".into()));
            }
            Self::Ints(set) => {
                let ints = cast(array, &DataType::Int64)?;
                let ints = ints.as_primitive::<Int64Type>();
                BooleanBuffer::collect_bool(ints.len(), |i| ints.is_valid(i) && set.contains(&ints.value(i)))
            }
            Self::Rows(converter, set) => {
                let rows = converter.convert_columns(std::slice::from_ref(array))?;
                BooleanBuffer::collect_bool(array.len(), |i| array.is_valid(i) && set.contains(rows.row(i).as_ref()))
            }
        })
    }
}

/// Integer types that widen to `i64` without loss.
fn is_small_int(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
    )
}

/// `input` with rows whose keys are in `sets` kept (`None`: all kept), until
/// the filter proves not to drop enough rows.
fn filter(
    input: SendableRecordBatchStream,
    sets: Option<Vec<KeySet>>,
    on: Vec<(usize, usize)>,
) -> impl futures::Stream<Item = Result<RecordBatch>> {
    let mut sets = sets;
    let (mut seen, mut kept) = (0usize, 0usize);
    input.filter_map(move |batch| {
        let out = match (batch, &sets) {
            (Err(e), _) => Some(Err(e)),
            (Ok(batch), None) => Some(Ok(batch)),
            (Ok(batch), Some(key_sets)) => match apply(key_sets, &on, &batch) {
                Err(e) => Some(Err(e)),
                Ok(filtered) => {
                    seen += batch.num_rows();
                    kept += filtered.num_rows();
                    if seen >= CHECK_AFTER_ROWS && (seen - kept) * 100 < seen * MIN_DROPPED_PERCENT {
                        sets = None;
                    }
                    (filtered.num_rows() > 0).then_some(Ok(filtered))
                }
            },
        };
        futures::future::ready(out)
    })
}

fn apply(sets: &[KeySet], on: &[(usize, usize)], batch: &RecordBatch) -> Result<RecordBatch> {
    let mut mask: Option<BooleanBuffer> = None;
    for (set, &(i, _)) in sets.iter().zip(on) {
        let found = set.contains(batch.column(i))?;
        mask = Some(match mask {
            None => found,
            Some(m) => &m & &found,
        });
    }
    match mask {
        Some(mask) => Ok(filter_record_batch(batch, &BooleanArray::new(mask, None))?),
        None => Ok(batch.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int32Array, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::execution::TaskContext;
    use datafusion::physical_plan::{ExecutionPlan, collect};

    use super::{MAX_KEY_ROWS, RuntimeFilterExec};

    fn source(columns: Vec<(&str, Vec<Option<i64>>)>) -> Arc<dyn ExecutionPlan> {
        let fields: Vec<Field> = columns.iter().map(|(n, _)| Field::new(*n, DataType::Int64, true)).collect();
        let schema = Arc::new(Schema::new(fields));
        let arrays = columns.into_iter().map(|(_, v)| Arc::new(Int64Array::from(v)) as _).collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays).unwrap();
        MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap()
    }

    /// The `v` column of the rows that pass.
    async fn passing(keys: Vec<Option<i64>>) -> Vec<String> {
        let input = {
            let schema = Arc::new(Schema::new(vec![
                Field::new("v", DataType::Utf8, false),
                Field::new("k", DataType::Int64, true),
            ]));
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(vec!["a", "b", "c", "null", "b2", "e"])),
                    Arc::new(Int64Array::from(vec![Some(1), Some(2), Some(3), None, Some(2), Some(5)])),
                ],
            )
            .unwrap();
            MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap()
        };
        let keys = source(vec![("other", keys.iter().map(|_| Some(0)).collect()), ("key", keys)]);
        let filter = Arc::new(RuntimeFilterExec::try_new(input, keys, vec![(1, 1)]).unwrap());
        let batches = collect(filter, Arc::new(TaskContext::default())).await.unwrap();
        batches
            .iter()
            .flat_map(|b| {
                let v = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                v.iter().map(|s| s.unwrap().to_owned()).collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn keeps_rows_whose_key_the_other_side_holds_and_drops_null_keys() {
        assert_eq!(passing(vec![Some(2), None, Some(5), Some(2)]).await, ["b", "b2", "e"]);
        // No keys at all: nothing can match.
        assert!(passing(vec![]).await.is_empty());
        // Too many keys to be worth it: every row passes.
        let many: Vec<Option<i64>> = (0..=MAX_KEY_ROWS as i64).map(|k| Some(k + 100)).collect();
        assert_eq!(passing(many).await, ["a", "b", "c", "null", "b2", "e"]);
    }

    #[tokio::test]
    async fn several_key_columns_of_other_types_are_each_checked() {
        let batch = |ks: Vec<i32>, names: Vec<Option<&str>>| {
            let schema = Arc::new(Schema::new(vec![
                Field::new("k", DataType::Int32, false),
                Field::new("name", DataType::Utf8, true),
            ]));
            let columns = vec![Arc::new(Int32Array::from(ks)) as _, Arc::new(StringArray::from(names)) as _];
            let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
            MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap()
        };
        let input = batch(vec![1, 1, 2, 3, 2], vec![Some("x"), Some("y"), Some("x"), Some("x"), None]);
        let keys = batch(vec![1, 2], vec![Some("x"), Some("z")]);
        let filter = Arc::new(RuntimeFilterExec::try_new(input, keys, vec![(0, 0), (1, 1)]).unwrap());
        let batches = collect(filter, Arc::new(TaskContext::default())).await.unwrap();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        // (1, x) and (2, x): each column's value is among the keys; (1, y), (3, x) and (2, NULL) are not.
        assert_eq!(rows, 2);
    }

    /// The probes of `keys` (as `Int64`) that the finished set holds, and whether it became a bitmap.
    fn probe(keys: &[Option<i64>], probes: &[Option<i64>]) -> (Vec<Option<i64>>, bool) {
        let mut set = super::KeySet::new(&DataType::Int64).unwrap();
        set.insert(&(Arc::new(Int64Array::from(keys.to_vec())) as _)).unwrap();
        let set = set.finish();
        let found = set.contains(&(Arc::new(Int64Array::from(probes.to_vec())) as _)).unwrap();
        let held = probes.iter().zip(found.iter()).filter(|(_, f)| *f).map(|(p, _)| *p).collect();
        (held, matches!(set, super::KeySet::Dense { .. }))
    }

    #[test]
    fn narrow_integer_ranges_become_bitmaps_that_answer_like_hash_sets() {
        let probes: Vec<Option<i64>> = [i64::MIN, -70_001, -70_000, -1, 0, 1, 63, 64, 65, 99_999, 100_000, i64::MAX]
            .into_iter()
            .map(Some)
            .chain([None])
            .collect();
        // Keys from -70,000 to 99,999, every 7th: 24,286 keys over a range of 170,000.
        let dense: Vec<Option<i64>> = (-70_000..100_000).step_by(7).map(Some).chain([None, Some(64)]).collect();
        let expected: Vec<Option<i64>> =
            probes.iter().filter(|p| p.is_some_and(|v| dense.contains(&Some(v)))).copied().collect();
        assert_eq!(probe(&dense, &probes), (expected.clone(), true));
        // The same keys spread too thin for a bitmap: one key at the far end.
        let mut sparse = dense.clone();
        sparse.push(Some(i64::MAX));
        let mut with_max = expected;
        with_max.push(Some(i64::MAX));
        assert_eq!(probe(&sparse, &probes), (with_max, false));
        // Both extremes of i64: the span does not overflow.
        assert_eq!(probe(&[Some(i64::MIN), Some(i64::MAX)], &probes).0, [Some(i64::MIN), Some(i64::MAX)]);
        assert_eq!(probe(&[], &probes), (vec![], false));
        // Two keys repeated 10,000 times each over a range of 100,001: dense
        // by rows, not by distinct keys.
        let repeated: Vec<Option<i64>> = [Some(0), Some(100_000)].repeat(10_000);
        assert_eq!(probe(&repeated, &probes), (vec![Some(0), Some(100_000)], false));
    }

    #[tokio::test]
    async fn mismatched_key_types_are_refused() {
        let input = source(vec![("k", vec![Some(1)])]);
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec!["1"]))]).unwrap();
        let keys = MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap();
        let err = RuntimeFilterExec::try_new(input, keys, vec![(0, 0)]).unwrap_err();
        assert!(err.to_string().contains("k is Int64 but its keys k are Utf8"), "{err}");
    }
}
