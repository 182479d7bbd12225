//! Broadcast joins with a small build side, as Spark does below
//! `spark.sql.autoBroadcastJoinThreshold`.
//!
//! DataFusion's join selection turns a hash join into `CollectLeft` (one hash
//! table of the whole build side, probed by every partition) only below 1 MiB,
//! a threshold tuned for one process, where repartitioning is a cheap
//! in-memory shuffle. Here a partitioned join shuffles both sides through
//! storage; when the build side is small, sending it to every probe task costs
//! far less than shuffling the large probe side (TPC-H q5 at SF1 shuffled all
//! of `lineitem`, ~280 MiB, to join it with ~3 MiB of orders).
//!
//! Only join types whose output each probe partition can produce alone are
//! broadcast (inner, right, right semi, right anti): the others must track
//! which build rows matched across all partitions, which a broadcast across
//! tasks cannot do.

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};

/// Build sides estimated below this many bytes are broadcast (Spark's default).
pub const BROADCAST_BYTES: usize = 10 << 20;
/// When a size in bytes is unknown: build sides estimated below this many rows.
pub const BROADCAST_ROWS: usize = 1 << 20;

/// Runs after DataFusion's join selection, before distribution is enforced.
#[derive(Debug, Default)]
pub struct BroadcastSmallJoins;

impl PhysicalOptimizerRule for BroadcastSmallJoins {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|plan| {
            let Some(join) = plan.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(plan));
            };
            let broadcastable = matches!(
                join.join_type(),
                JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti
            );
            if *join.partition_mode() != PartitionMode::Partitioned
                || !broadcastable
                || join.null_aware
                || !is_small(join.left())
            {
                return Ok(Transformed::no(plan));
            }
            let broadcast = join.builder().with_partition_mode(PartitionMode::CollectLeft).build()?;
            Ok(Transformed::yes(Arc::new(broadcast) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        "ignis_broadcast_small_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether the plan's estimated output is below the broadcast threshold;
/// unknown sizes are not small.
fn is_small(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let Ok(stats) = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new()) else {
        return false;
    };
    if let Some(bytes) = stats.total_byte_size.get_value() {
        *bytes < BROADCAST_BYTES
    } else if let Some(rows) = stats.num_rows.get_value() {
        *rows < BROADCAST_ROWS
    } else {
        false
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

    /// A table of `rows` rows (`k`, `v`: two Int64 columns, 16 bytes a row).
    fn table(rows: i64) -> Arc<MemTable> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..rows)), Arc::new(Int64Array::from_iter_values(0..rows))],
        )
        .unwrap();
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())
    }

    async fn join_modes(sql: &str) -> Vec<String> {
        let ctx = session_context(3, 8192);
        // 3.2 MB: above DataFusion's 1 MiB, below the 10 MiB broadcast threshold.
        ctx.register_table("small", table(200_000)).unwrap();
        // 32 MB: above both.
        ctx.register_table("big", table(2_000_000)).unwrap();
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let text = displayable(plan.as_ref()).indent(false).to_string();
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("HashJoinExec: "))
            .map(|l| l.split(", on=").next().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn small_build_sides_of_inner_and_right_joins_are_broadcast() {
        let inner = join_modes("SELECT * FROM big JOIN small ON big.k = small.k").await;
        assert_eq!(inner, ["mode=CollectLeft, join_type=Inner"]);
        // DataFusion puts the small side on the build side: a right join that a broadcast can run.
        let left = join_modes("SELECT * FROM big LEFT JOIN small ON big.k = small.k").await;
        assert_eq!(left, ["mode=CollectLeft, join_type=Right"]);
    }

    #[tokio::test]
    async fn joins_that_track_build_rows_or_have_big_sides_stay_partitioned() {
        // Unmatched rows of the small (build) side are needed: every probe row must be seen in one place.
        let full = join_modes("SELECT * FROM big FULL JOIN small ON big.k = small.k").await;
        assert_eq!(full, ["mode=Partitioned, join_type=Full"]);
        let big = join_modes("SELECT * FROM big a JOIN big b ON a.k = b.k").await;
        assert_eq!(big, ["mode=Partitioned, join_type=Inner"]);
    }
}
