//! How joins (and scans) are distributed across tasks, on top of DataFusion's join
//! selection (which is tuned for one process, where a repartition is a cheap
//! in-memory shuffle and every partition can share state):
//!
//! - Broadcast a small build side, as Spark does below
//!   `spark.sql.autoBroadcastJoinThreshold`. DataFusion makes a hash join
//!   `CollectLeft` (one hash table of the whole build side, probed by every
//!   partition) only below 1 MiB. Here a partitioned join shuffles both sides
//!   through storage; when the build side is small, sending it to every probe
//!   task costs far less than shuffling the large probe side (TPC-H q5 at SF1
//!   shuffled all of `lineitem`, ~280 MiB, to join it with ~3 MiB of orders).
//!   Only join types whose output each probe partition can produce alone are
//!   broadcast (inner, right, right semi, right anti).
//! - Partition a `CollectLeft` join that must track which build rows matched
//!   (left/full outer, left semi/anti/mark) when its probe side is not small.
//!   In one process the probe partitions share that state; across tasks they
//!   cannot, so the stage cutter would gather the whole probe side into one
//!   task (TPC-H q21: all of `lineitem` through one task on one core). A
//!   partitioned join handles each key in one task and runs in parallel.
//!   Null-aware anti joins (`NOT IN`) stay `CollectLeft`: DataFusion needs them so.
//! - The stage cutter runs the `CollectLeft` build-tracking joins that remain
//!   (small probe side, or null-aware) with the build side split across tasks
//!   and the probe side sent whole to each ([`BroadcastExec`]), instead of
//!   both sides in one task.
//! - [`SplitScans`] cuts large file scans into more tasks than workers.

use std::fmt;
use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
    SendableRecordBatchStream, replace_children_if_necessary,
};

/// Build sides estimated below this many bytes are broadcast (Spark's default).
pub const BROADCAST_BYTES: usize = 10 << 20;
/// When a size in bytes is unknown: build sides estimated below this many rows.
pub const BROADCAST_ROWS: usize = 1 << 20;

/// Runs after DataFusion's join selection, before distribution is enforced.
#[derive(Debug, Default)]
pub struct DistributeJoins;

impl PhysicalOptimizerRule for DistributeJoins {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|plan| {
            let Some(join) = plan.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(plan));
            };
            let broadcastable = matches!(
                join.join_type(),
                JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti
            );
            let mode = match join.partition_mode() {
                PartitionMode::Partitioned if broadcastable && !join.null_aware && is_small(join.left()) => {
                    PartitionMode::CollectLeft
                }
                PartitionMode::CollectLeft if !broadcastable && !join.null_aware && !is_small(join.right()) => {
                    PartitionMode::Partitioned
                }
                _ => return Ok(Transformed::no(plan)),
            };
            let join = join.builder().with_partition_mode(mode).build()?;
            Ok(Transformed::yes(Arc::new(join) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        "ignis_distribute_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// File scans are cut into this many tasks per shuffle partition, when each
/// task still reads at least DataFusion's `repartition_file_min_size` (10 MiB)
/// of files.
pub const SCAN_TASKS_PER_PARTITION: usize = 2;

/// Runs last: splits every multi-partition file scan into more, smaller
/// partitions (byte ranges of its files), so a scan stage has more tasks than
/// workers and the scheduler evens out uneven splits: a task whose range
/// holds more row groups no longer holds up the stage alone (in one process
/// DataFusion's partitions steal work from each other; tasks cannot).
#[derive(Debug, Default)]
pub struct SplitScans;

/// A broadcast join's build side estimated above this many bytes keeps its
/// probe side's scan from being split further: every task of the stage
/// builds the whole hash table again (TPC-H q10 at SF10: 570K customers with
/// their text columns, built by each `lineitem` task), so twice the tasks
/// cost one more build per worker. Where the size is unknown, an eighth of
/// the broadcast row bound stands in for it.
pub const REBUILT_BYTES: usize = 4 << 20;

impl PhysicalOptimizerRule for SplitScans {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        split_scans(plan, config, true)
    }

    fn name(&self) -> &str {
        "ignis_split_scans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// [`SplitScans`] of `plan`: its scans (where `split` holds) cut into twice
/// the partitions.
fn split_scans(plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions, split: bool) -> Result<Arc<dyn ExecutionPlan>> {
    let large_build = plan.downcast_ref::<HashJoinExec>().is_some_and(|join| {
        *join.partition_mode() == PartitionMode::CollectLeft
            && !is_below(join.left(), REBUILT_BYTES, BROADCAST_ROWS / 8)
    });
    let children = plan
        .children()
        .into_iter()
        .enumerate()
        .map(|(i, child)| split_scans(child.clone(), config, split && !(large_build && i == 1)))
        .collect::<Result<Vec<_>>>()?;
    let plan = replace_children_if_necessary(plan, children)?;
    let target = config.execution.target_partitions * SCAN_TASKS_PER_PARTITION;
    let partitions = plan.output_partitioning().partition_count();
    let min_bytes = (config.optimizer.repartition_file_min_size * target) as u64;
    let big_enough = file_bytes(&plan).is_some_and(|bytes| bytes >= min_bytes);
    if !split || partitions <= 1 || partitions >= target || !big_enough {
        return Ok(plan);
    }
    Ok(plan.repartitioned(target, config)?.unwrap_or(plan))
}

/// The bytes of files a file scan reads (its ranges, or whole files); `None`
/// for any other operator.
fn file_bytes(plan: &Arc<dyn ExecutionPlan>) -> Option<u64> {
    let config = plan.downcast_ref::<DataSourceExec>()?.data_source().downcast_ref::<FileScanConfig>()?;
    let files = config.file_groups.iter().flat_map(|group| group.iter());
    Some(files.map(|f| f.range.as_ref().map_or(f.object_meta.size, |r| (r.end - r.start).max(0) as u64)).sum())
}

/// Whether the plan's estimated output is below the broadcast threshold
/// (then gathering it is cheap too);
/// unknown sizes are not small.
fn is_small(plan: &Arc<dyn ExecutionPlan>) -> bool {
    is_below(plan, BROADCAST_BYTES, BROADCAST_ROWS)
}

/// Whether the plan's estimated output is below `bytes` (or, where its size
/// is unknown, below `rows` rows); unknown sizes are not.
fn is_below(plan: &Arc<dyn ExecutionPlan>, bytes: usize, rows: usize) -> bool {
    let Ok(stats) = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new()) else {
        return false;
    };
    if let Some(size) = stats.total_byte_size.get_value() {
        *size < bytes
    } else if let Some(n) = stats.num_rows.get_value() {
        *n < rows
    } else {
        false
    }
}

/// Every one of its `partitions` partitions streams all rows of its
/// single-partition input: the probe side of a join whose build side is split
/// across tasks, where each build row must meet every probe row (left
/// semi/anti/outer joins with a small probe side).
#[derive(Debug)]
pub struct BroadcastExec {
    input: Arc<dyn ExecutionPlan>,
    cache: Arc<PlanProperties>,
}

impl BroadcastExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, partitions: usize) -> Result<Self> {
        if input.output_partitioning().partition_count() != 1 {
            return Err(DataFusionError::Internal("BroadcastExec takes a single-partition input".into()));
        }
        let cache = PlanProperties::new(
            input.equivalence_properties().clone(),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self { input, cache: Arc::new(cache) })
    }

    pub fn partitions(&self) -> usize {
        self.cache.output_partitioning().partition_count()
    }
}

impl DisplayAs for BroadcastExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "BroadcastExec: partitions={}", self.partitions())
    }
}

impl ExecutionPlan for BroadcastExec {
    crate::unary_plan_methods!("BroadcastExec", |this, input| BroadcastExec::try_new(input, this.partitions())?);

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        if partition >= self.partitions() {
            return Err(DataFusionError::Internal(format!(
                "BroadcastExec has {} partitions, asked for {partition}",
                self.partitions()
            )));
        }
        self.input.execute(0, context)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::displayable;

    use crate::session::session_context;

    /// `rows` rows of `k`, `v`: two Int64 columns, 16 bytes a row.
    fn batch(rows: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(0..rows)), Arc::new(Int64Array::from_iter_values(0..rows))],
        )
        .unwrap()
    }

    fn table(rows: i64) -> Arc<MemTable> {
        let batch = batch(rows);
        Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap())
    }

    async fn join_modes(sql: &str) -> Vec<String> {
        let ctx = session_context(3, 8192, &Default::default());
        // 3.2 MB: above DataFusion's 1 MiB, below the 10 MiB broadcast threshold.
        ctx.register_table("small", table(200_000)).unwrap();
        // 32 MB: above both.
        ctx.register_table("big", table(2_000_000)).unwrap();
        // 16 KB: below both.
        ctx.register_table("tiny", table(1_000)).unwrap();
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let text = displayable(plan.as_ref()).indent(false).to_string();
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("HashJoinExec: "))
            .map(|l| l.split(", on=").next().unwrap().to_owned())
            .collect()
    }

    /// Tasks of the scan of `files` Parquet files of `rows` rows each, with
    /// DataFusion's minimum split size set to `min_bytes`.
    async fn scan_tasks(files: usize, rows: i64, min_bytes: usize) -> usize {
        scan_tasks_of(files, rows, min_bytes, "SELECT k FROM t WHERE v > 5").await
    }

    /// Partitions of the first file scan of `sql` over `t` (as [`scan_tasks`]) and the memory tables
    /// `build` (3.2 MB) and `big_build` (6.4 MB: over [`super::REBUILT_BYTES`], under the broadcast threshold).
    async fn scan_tasks_of(files: usize, rows: i64, min_bytes: usize, sql: &str) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let batch = batch(rows);
        for i in 0..files {
            let file = std::fs::File::create(dir.path().join(format!("part-{i}.parquet"))).unwrap();
            let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
        }
        let ctx = session_context(3, 8192, &Default::default());
        ctx.state_ref().write().config_mut().options_mut().optimizer.repartition_file_min_size = min_bytes;
        let location = format!("{}/", dir.path().display());
        ctx.register_parquet("t", &location, Default::default()).await.unwrap();
        ctx.register_table("build", table(200_000)).unwrap();
        ctx.register_table("big_build", table(400_000)).unwrap();
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let text = displayable(plan.as_ref()).indent(false).to_string();
        let scan = text.lines().find(|l| l.contains("file_type=parquet")).expect("a file scan");
        scan.split("file_groups={").nth(1).and_then(|g| g.split(' ').next()).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn large_scans_get_two_tasks_per_shuffle_partition_and_small_ones_stay() {
        // 4 files of ~1.6 MB: DataFusion splits them into 3 partitions; Ignis into 6 small enough ones.
        assert_eq!(scan_tasks(4, 200_000, 1 << 10).await, 6);
        // Below 6 x the minimum split size: left as DataFusion planned it.
        assert_eq!(scan_tasks(4, 200_000, 10 << 20).await, 3);
    }

    #[tokio::test]
    async fn the_probe_scan_of_a_large_broadcast_build_is_not_split_further() {
        let join = |table: &str| format!("SELECT t.k, b.v FROM t JOIN {table} b ON t.k = b.k WHERE t.v > 5");
        assert_eq!(scan_tasks_of(4, 400_000, 1 << 10, &join("build")).await, 6);
        // Each task would build the 6.4 MB hash table again.
        assert_eq!(scan_tasks_of(4, 400_000, 1 << 10, &join("big_build")).await, 3);
    }

    #[tokio::test]
    async fn joins_are_broadcast_partitioned_or_gathered_by_type_and_size() {
        let cases = [
            ("SELECT * FROM big JOIN small ON big.k = small.k", "mode=CollectLeft, join_type=Inner"),
            // DataFusion puts the small side on the build side: a right join, which a broadcast can run.
            ("SELECT * FROM big LEFT JOIN small ON big.k = small.k", "mode=CollectLeft, join_type=Right"),
            // Unmatched rows of the small build side are needed: every probe row of a key in one place.
            ("SELECT * FROM big FULL JOIN small ON big.k = small.k", "mode=Partitioned, join_type=Full"),
            ("SELECT * FROM big a JOIN big b ON a.k = b.k", "mode=Partitioned, join_type=Inner"),
            // DataFusion collects the tiny side; the big probe side is partitioned rather than gathered.
            ("SELECT * FROM tiny WHERE k IN (SELECT k FROM big)", "mode=Partitioned, join_type=LeftSemi"),
            // A small probe side is cheap to gather into one task: left as DataFusion chose.
            ("SELECT * FROM tiny WHERE k IN (SELECT k FROM small)", "mode=CollectLeft, join_type=LeftSemi"),
        ];
        for (sql, expected) in cases {
            assert_eq!(join_modes(sql).await, [expected], "{sql}");
        }
    }
}
