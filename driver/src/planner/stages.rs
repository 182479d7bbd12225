//! Cutting a physical plan into stages.
//!
//! Every exchange becomes a stage boundary: the exchange's input becomes a
//! stage whose root is a [`ShuffleWriterExec`], and the exchange is replaced by
//! a [`ShuffleReaderExec`] in the stage that consumes it.
//!
//! - `RepartitionExec` (hash or round-robin): the writer splits rows into the
//!   exchange's partitions; reader partition `r` reads piece `r` of every map
//!   output. An order-preserving repartition gets a per-partition sort above
//!   its reader, since concatenated pieces are no longer sorted.
//! - `CoalescePartitionsExec`, `SortPreservingMergeExec` over several
//!   partitions: each map task writes one piece; reader partition `m` reads map
//!   task `m`'s piece, and the merge (kept in the consuming stage) combines
//!   them, preserving order for the sort-preserving merge.
//!
//! A stage that would compute what a stage already cut computes (a view or
//! subquery used twice) is not made again: its consumers read the first
//! one's output, as Spark reuses an exchange.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::physical_expr_common::physical_expr::is_volatile;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::joins::{CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PartitionMode};
use datafusion::physical_plan::recursive_query::RecursiveQueryExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::work_table::WorkTableExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning, displayable};
use ignis_core::codec::encode_plan;
use ignis_core::error::{IgnisError, Result};
use ignis_core::ids::StageId;
use ignis_core::joins::BroadcastExec;
use ignis_core::runtime_filter::RuntimeFilterExec;
use ignis_core::shuffle::{ShuffleReaderExec, ShuffleWriterExec};

/// How a stage's output reaches the stage that reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exchange {
    /// Rows are split into `partitions` reduce partitions (hash or round-robin);
    /// `keys` describes the split for display.
    Split { partitions: usize, keys: String },
    /// Each map task's output stays whole; the reader has one partition per map task.
    Gather,
    /// The final stage: its output is the job's result.
    Result,
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub id: StageId,
    /// The stage's plan: a `ShuffleWriterExec` root for an intermediate stage,
    /// the job's final operators for the result stage.
    pub plan: Arc<dyn ExecutionPlan>,
    /// One task per partition of the plan.
    pub tasks: usize,
    /// Stages whose shuffle output this stage reads.
    pub inputs: Vec<StageId>,
    pub exchange: Exchange,
    /// The stages that read this one's output (none for the result stage;
    /// more than one where a stage's output is reused).
    pub consumers: Vec<StageId>,
}

/// The stage DAG of one job, in an order where inputs come first; the last
/// stage is the result stage.
#[derive(Debug, Clone)]
pub struct StageGraph {
    pub stages: Vec<Stage>,
}

impl StageGraph {
    /// Cut `plan` at every exchange.
    pub fn cut(plan: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let mut cutter = Cutter { stages: vec![], shown: vec![] };
        let root = cutter.cut(plan)?;
        let id = cutter.next_id();
        let inputs = reader_stages(&root);
        cutter.consumed_by(&inputs, id);
        let tasks = root.output_partitioning().partition_count();
        cutter.stages.push(Stage { id, plan: root, tasks, inputs, exchange: Exchange::Result, consumers: vec![] });
        Ok(Self { stages: cutter.stages })
    }

    pub fn stage(&self, id: StageId) -> Option<&Stage> {
        self.stages.iter().find(|s| s.id == id)
    }

    pub fn result_stage(&self) -> &Stage {
        // `cut` always pushes the result stage last.
        &self.stages[self.stages.len() - 1]
    }

    pub fn total_tasks(&self) -> usize {
        self.stages.iter().map(|s| s.tasks).sum()
    }

    /// The stage DAG as text: each stage, its tasks, its operators and where its
    /// output goes; `result` says where the result stage's rows go.
    pub fn display(&self, result: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} stages, {} tasks", self.stages.len(), self.total_tasks());
        for stage in &self.stages {
            let inputs = if stage.inputs.is_empty() {
                String::new()
            } else {
                let ids: Vec<String> = stage.inputs.iter().map(|i| format!("stage {i}")).collect();
                format!(", reads {}", ids.join(", "))
            };
            let _ = writeln!(out, "\nStage {} ({} tasks{inputs})", stage.id, stage.tasks);
            let target = stage.consumers.iter().map(|c| format!("stage {c}")).collect::<Vec<_>>().join(", ");
            let edge = match &stage.exchange {
                Exchange::Split { partitions, keys } => {
                    format!("shuffle {keys} into {partitions} partitions -> {target}")
                }
                Exchange::Gather => format!("shuffle (gather {} partitions) -> {target}", stage.tasks),
                Exchange::Result => result.to_string(),
            };
            let _ = writeln!(out, "  output: {edge}");
            for line in displayable(stage.plan.as_ref()).indent(false).to_string().lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
        out
    }
}

/// The partitions of each upstream stage's output that partition `partition`
/// of a stage plan reads: a task is sent the pieces of those only. An
/// operator reads the same partition of a child with as many partitions,
/// except those that read all of a child (merges, a cross join's left side,
/// in-process repartitions, a recursive query) or its one partition
/// (broadcast, a runtime filter's keys). A partition a task was not sent
/// fails loudly in its reader, never reads as empty.
pub(crate) fn partitions_read(plan: &Arc<dyn ExecutionPlan>, partition: usize) -> HashMap<StageId, BTreeSet<usize>> {
    fn visit(plan: &Arc<dyn ExecutionPlan>, partitions: &[usize], out: &mut HashMap<StageId, BTreeSet<usize>>) {
        if let Some(reader) = plan.downcast_ref::<ShuffleReaderExec>() {
            out.entry(reader.stage_id()).or_default().extend(partitions.iter().copied());
            return;
        }
        let own = plan.output_partitioning().partition_count();
        for (i, child) in plan.children().into_iter().enumerate() {
            let count = child.output_partitioning().partition_count();
            let first_only = plan.is::<BroadcastExec>() || (plan.is::<RuntimeFilterExec>() && i == 1);
            let gathers = plan.is::<CoalescePartitionsExec>()
                || plan.is::<SortPreservingMergeExec>()
                || plan.is::<RepartitionExec>()
                || plan.is::<RecursiveQueryExec>()
                || (plan.is::<CrossJoinExec>() && i == 0);
            let read: Vec<usize> = if first_only {
                vec![0]
            } else if count == own && !gathers {
                partitions.to_vec()
            } else {
                (0..count).collect()
            };
            visit(child, &read, out);
        }
    }
    let mut out = HashMap::new();
    visit(plan, &[partition], &mut out);
    out
}

/// Whether a plan reads a recursive query's work table.
fn reads_work_table(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.is::<WorkTableExec>() || plan.children().into_iter().any(reads_work_table)
}

/// Stage ids of the shuffle readers in a plan.
pub(crate) fn reader_stages(plan: &Arc<dyn ExecutionPlan>) -> Vec<StageId> {
    let mut ids = vec![];
    if let Some(r) = plan.downcast_ref::<ShuffleReaderExec>() {
        ids.push(r.stage_id());
    }
    for child in plan.children() {
        for id in reader_stages(child) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// A join that collects its build (left) side in every task and must also emit
/// build rows after seeing every probe row (left/full outer, semi, anti, mark)
/// relies on the probe partitions running in one process, sharing which build
/// rows matched. Tasks run partitions apart, so:
/// - a hash join that does not emit unmatched probe rows (all those but full
///   outer) whose build side is split keeps it split across tasks and gets
///   the whole probe side in each ([`BroadcastExec`]): each build row is
///   still matched against every probe row, once. (The probe sides of these
///   joins are the small ones: the join rule partitions the others.)
/// - any other gets a single probe partition: its probe side becomes a gather
///   stage, and one task runs the join.
fn distribute_build_tracking_join(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let (join_type, right) = if let Some(j) = plan.downcast_ref::<HashJoinExec>() {
        if *j.partition_mode() != PartitionMode::CollectLeft {
            return Ok(plan);
        }
        (*j.join_type(), j.right().clone())
    } else if let Some(j) = plan.downcast_ref::<NestedLoopJoinExec>() {
        (*j.join_type(), j.right().clone())
    } else {
        return Ok(plan);
    };
    let emits_build_rows = matches!(
        join_type,
        JoinType::Left | JoinType::Full | JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark
    );
    if !emits_build_rows || right.output_partitioning().partition_count() <= 1 {
        return Ok(plan);
    }
    let probe = Arc::new(CoalescePartitionsExec::new(right));
    if let Some(join) = plan.downcast_ref::<HashJoinExec>()
        && join_type != JoinType::Full
        && let Some(merge) = join.left().downcast_ref::<CoalescePartitionsExec>()
        && merge.fetch().is_none()
        && merge.input().output_partitioning().partition_count() > 1
    {
        // The join's output is split as its build side now. Nothing above it
        // pairs partitions with another input: its output had no hash
        // partitioning, so any such consumer reads it through an exchange.
        let build_partitions = merge.input().output_partitioning().partition_count();
        let children = vec![merge.input().clone(), Arc::new(BroadcastExec::try_new(probe, build_partitions)?) as _];
        return Ok(join
            .builder()
            .with_partition_mode(PartitionMode::Partitioned)
            .with_new_children(children)?
            .build_exec()?);
    }
    let left = plan.children()[0].clone();
    with_children(plan, vec![left, probe])
}

pub(crate) fn with_children(
    plan: Arc<dyn ExecutionPlan>,
    children: Vec<Arc<dyn ExecutionPlan>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(plan.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))?)
}

struct Cutter {
    stages: Vec<Stage>,
    /// Each cut stage's plan as text, shown once, for [`Cutter::same_stage`].
    shown: Vec<(String, StageId)>,
}

fn shown(plan: &Arc<dyn ExecutionPlan>) -> String {
    displayable(plan.as_ref()).indent(true).to_string()
}

/// Whether any expression of `plan` is volatile (`random()`, ...): two runs may differ.
pub(crate) fn is_volatile_plan(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut found = false;
    let _ = plan.apply_expressions(&mut |e| {
        found |= is_volatile(e);
        Ok(TreeNodeRecursion::Continue)
    });
    found || plan.children().into_iter().any(is_volatile_plan)
}

impl Cutter {
    fn next_id(&self) -> StageId {
        StageId(self.stages.len() as u32 + 1)
    }

    fn cut(&mut self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(recursive) = plan.downcast_ref::<RecursiveQueryExec>() {
            let static_term = self.cut(recursive.static_term().clone())?;
            let recursive_term = self.cut_around_work_table(recursive.recursive_term().clone())?;
            return with_children(plan, vec![static_term, recursive_term]);
        }
        let plan = distribute_build_tracking_join(plan)?;
        let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
        let plan = if children.is_empty() {
            plan
        } else {
            let new_children = children.into_iter().map(|c| self.cut(c)).collect::<Result<Vec<_>>>()?;
            with_children(plan, new_children)?
        };

        if let Some(repartition) = plan.downcast_ref::<RepartitionExec>() {
            let input = repartition.input().clone();
            let partitioning = repartition.partitioning().clone();
            let keys = match &partitioning {
                Partitioning::Hash(exprs, _) => {
                    let names: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
                    format!("hash({})", names.join(", "))
                }
                Partitioning::RoundRobinBatch(_) => "round-robin".to_string(),
                other => return Err(IgnisError::internal(format!("unsupported exchange partitioning {other}"))),
            };
            let partitions = partitioning.partition_count();
            let ordering = repartition.preserve_order().then(|| input.output_ordering().cloned()).flatten();
            let reader = self.add_stage(input, Some(partitioning), Exchange::Split { partitions, keys }, partitions)?;
            // A reader concatenates its pieces; where the plan relies on the
            // exchange keeping rows sorted, sort each partition again.
            return Ok(match ordering {
                Some(ordering) => Arc::new(SortExec::new(ordering, reader).with_preserve_partitioning(true)),
                None => reader,
            });
        }

        let is_merge = plan.is::<CoalescePartitionsExec>() || plan.is::<SortPreservingMergeExec>();
        if is_merge {
            let input = plan.children()[0].clone();
            let maps = input.output_partitioning().partition_count();
            if maps > 1 {
                let reader = self.add_stage(input, None, Exchange::Gather, maps)?;
                return with_children(plan, vec![reader]);
            }
        }
        Ok(plan)
    }

    /// The recursive term of a recursive query runs again on each round's
    /// rows, which reach it through the work table in the task's memory: the
    /// exchanges between the work table and the recursive query stay inside
    /// the task (DataFusion's in-process repartitions and merges), and only
    /// parts that do not read the work table become stages.
    fn cut_around_work_table(&mut self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        if !reads_work_table(&plan) {
            return self.cut(plan);
        }
        let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
        if children.is_empty() {
            return Ok(plan);
        }
        let children = children.into_iter().map(|c| self.cut_around_work_table(c)).collect::<Result<Vec<_>>>()?;
        with_children(plan, children)
    }

    /// Make `input` a stage that writes with `partitioning`, and return the
    /// reader (with `reader_partitions` partitions) that replaces it.
    fn add_stage(
        &mut self,
        input: Arc<dyn ExecutionPlan>,
        partitioning: Option<Partitioning>,
        exchange: Exchange,
        reader_partitions: usize,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = input.schema();
        let tasks = input.output_partitioning().partition_count();
        let inputs = reader_stages(&input);
        let writer: Arc<dyn ExecutionPlan> = Arc::new(ShuffleWriterExec::try_new(input, partitioning.clone())?);
        let text = shown(&writer);
        let id = match self.same_stage(&writer, &text) {
            Some(same) => same,
            None => {
                let id = self.next_id();
                self.consumed_by(&inputs, id);
                self.shown.push((text, id));
                self.stages.push(Stage { id, plan: writer, tasks, inputs, exchange, consumers: vec![] });
                id
            }
        };
        let reader = ShuffleReaderExec::new(id, schema, reader_partitions);
        Ok(Arc::new(match partitioning {
            Some(hash @ Partitioning::Hash(..)) => reader.with_partitioning(hash)?,
            _ => reader,
        }))
    }

    fn stage(&self, id: StageId) -> Option<&Stage> {
        self.stages.iter().find(|s| s.id == id)
    }

    fn consumed_by(&mut self, inputs: &[StageId], consumer: StageId) {
        for s in self.stages.iter_mut().filter(|s| inputs.contains(&s.id)) {
            s.consumers.push(consumer);
        }
    }

    /// A stage already cut whose output is what `writer` would write: the
    /// same operators over the same inputs (TPC-H q15's revenue view,
    /// aggregated from `lineitem` for the join and again for its maximum).
    /// Plans are the same when they encode to the same bytes; a plan with a
    /// volatile expression never is.
    fn same_stage(&self, writer: &Arc<dyn ExecutionPlan>, text: &str) -> Option<StageId> {
        let mut same = self.shown.iter().filter(|(t, _)| t == text).filter_map(|(_, id)| self.stage(*id)).peekable();
        same.peek()?;
        if is_volatile_plan(writer) {
            return None;
        }
        let bytes = encode_plan(writer.clone()).ok()?;
        same.find(|s| encode_plan(s.plan.clone()).is_ok_and(|b| b == bytes)).map(|s| s.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_is_sent_its_own_partition_of_a_split_input_and_all_of_a_gathered_one() {
        let ctx = ignis_core::session::session_context(3, 8192, &Default::default());
        ctx.sql("CREATE TABLE t AS VALUES (1, 'x'), (2, 'y'), (3, 'x')").await.unwrap();
        let sql = "SELECT column2, count(*) FROM t GROUP BY column2 ORDER BY column2";
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let graph = StageGraph::cut(plan).unwrap();
        let (mut split, mut gathered) = (0, 0);
        for stage in &graph.stages {
            for p in 0..stage.tasks {
                let reads = partitions_read(&stage.plan, p);
                for input in &stage.inputs {
                    let upstream = graph.stage(*input).unwrap();
                    let expected: BTreeSet<usize> = match upstream.exchange {
                        Exchange::Split { .. } => {
                            split += 1;
                            [p].into()
                        }
                        _ => {
                            gathered += 1;
                            (0..upstream.tasks).collect()
                        }
                    };
                    assert_eq!(reads.get(input), Some(&expected), "stage {} task {p}", stage.id);
                }
            }
        }
        assert!(split >= 3 && gathered >= 1, "the plan has both kinds of input: {split} split, {gathered} gathered");
    }

    #[tokio::test]
    async fn a_view_used_twice_is_one_stage_read_twice_unless_it_is_volatile() {
        let ctx = ignis_core::session::session_context(3, 8192, &Default::default());
        ctx.sql("CREATE TABLE t AS VALUES (1, 'x'), (2, 'y'), (3, 'x')").await.unwrap();
        for (aggregate, reused) in [("count(*)", true), ("sum(random())", false)] {
            let sql = format!(
                "WITH c AS (SELECT column2 AS k, {aggregate} AS n FROM t GROUP BY column2) \
                 SELECT k FROM c WHERE n = (SELECT max(n) FROM c)"
            );
            let plan = ctx.sql(&sql).await.unwrap().create_physical_plan().await.unwrap();
            let graph = StageGraph::cut(plan).unwrap();
            let shared: Vec<_> = graph.stages.iter().filter(|s| s.consumers.len() > 1).collect();
            assert_eq!(shared.len(), usize::from(reused), "{aggregate}: {}", graph.display("collect"));
            if reused {
                // The view's partial aggregation, read by the join's side and by the max.
                let shown = displayable(shared[0].plan.as_ref()).indent(false).to_string();
                assert!(shown.contains("mode=Partial, gby=[column2"), "{shown}");
            }
        }
    }
}
