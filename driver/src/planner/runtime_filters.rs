//! Placing runtime join filters ([`RuntimeFilterExec`]) in a cut stage graph.
//!
//! For every hash join, each side whose unmatched rows do not reach the join's
//! output (both sides of an inner or semi join; the non-preserved side of an
//! outer or anti join) may be narrowed to the keys the other side holds. The
//! narrowing pays where it happens before a shuffle: the side's key columns are
//! followed down through the operators of the join's stage that pass them on
//! unchanged (projections, filters, group-by keys, joins, merges) to the shuffle
//! readers they come from, and the stages behind those readers get the filter
//! under their writer (or, where such a stage passes the columns on from
//! readers of its own, the stages behind those, as deep as they go). The keys
//! come from the stage the other side's key columns lead to; they hold every key that side can have (maybe more). Where
//! the other side is a small filtered plan reading no other stage (a filtered
//! dimension table scanned inside the join's stage), the filtered tasks run a
//! copy of it instead and wait for nothing. Before placing, a small filtered
//! local side also narrows the local scans of its join's other side that the
//! keys come from ([`reduce_local_sides`]), so a dimension joined under a
//! filtered one becomes a small filtered key side itself.
//!
//! The filtered stage then waits for the key stage. That is worth it when the
//! key side is small and selective, which the plan cannot tell for sure, so:
//! - only key stages computed under a filter (a `WHERE` or `HAVING` somewhere
//!   in them or the stages they read), and not estimated clearly large, are
//!   used;
//! - when the waiting stage is submitted, the driver knows the key stage's
//!   rows and drops the filter from its tasks ([`drop_oversized`]) if there
//!   are more than [`MAX_KEY_ROWS`] or about as many as the rows to narrow;
//! - a task whose filter drops too few rows stops filtering.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{JoinType, NullEquality};
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning, PhysicalExpr};
use ignis_core::error::Result;
use ignis_core::ids::StageId;
use ignis_core::joins::BroadcastExec;
use ignis_core::runtime_filter::{MAX_KEY_ROWS, RuntimeFilterExec};
use ignis_core::shuffle::{ShuffleReaderExec, ShuffleWriterExec};

use super::stages::{Stage, is_volatile_plan, reader_stages, with_children};

/// A shuffle reader of the join's stage (reading `stage`) and columns of its rows.
#[derive(Clone)]
struct Origin {
    stage: StageId,
    reader: Arc<dyn ExecutionPlan>,
    columns: Vec<usize>,
}

/// Where a filter's keys come from.
#[derive(Clone)]
enum Keys {
    /// Another stage's output, through a reader of it.
    Stage(Origin),
    /// A small plan of the join's stage that reads no other stage (a filtered
    /// dimension table): the filtered stage's tasks run a copy of it.
    Local { plan: Arc<dyn ExecutionPlan>, columns: Vec<usize> },
}

impl Keys {
    /// The stage the keys are read from (none for a local key side).
    fn stage(&self) -> Option<StageId> {
        match self {
            Keys::Stage(origin) => Some(origin.stage),
            Keys::Local { .. } => None,
        }
    }
}

/// Identifies the keys of a placed filter, so a stage is not filtered twice by the same keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum KeysId {
    Stage(StageId),
    Local(*const ()),
}

/// One filter to place: the stage behind `target` keeps the rows whose
/// `target.columns` are among the key columns of `keys`.
struct Placement {
    target: Origin,
    keys: Keys,
}

/// Add runtime filters to `stages` (see the module docs).
pub fn add(stages: &mut [Stage]) -> Result<()> {
    for stage in stages.iter_mut() {
        stage.plan = reduce_local_sides(stage.plan.clone())?;
    }
    let mut placements = vec![];
    for stage in stages.iter() {
        joins(&stage.plan, &mut |join| placements.extend(join_placements(join, stages)));
    }
    let mut placed: HashSet<(StageId, KeysId)> = HashSet::new();
    for Placement { target, keys } in placements {
        for target in deepest(stages, target, keys.stage()) {
            place(stages, target, keys.clone(), &mut placed)?;
        }
    }
    Ok(())
}

/// Where a filter meant for `target`'s stage drops the same rows earliest:
/// when that stage passes the filtered columns on unchanged from shuffle
/// readers of its own, the stages behind them are filtered instead, as deep
/// as the columns go (TPC-H q7 at SF10: the nation filter of a supplier key,
/// meant for the stage above the `lineitem`/`orders` join, narrows the
/// `supplier` scan that the `lineitem` stage joins with, so `lineitem` is
/// narrowed before its shuffle). A deeper stage that the key stage needs
/// cannot wait for it and is passed over.
fn deepest(stages: &[Stage], target: Origin, key_stage: Option<StageId>) -> Vec<Origin> {
    let writer_input = stages
        .iter()
        .find(|s| s.id == target.stage)
        .and_then(|s| s.plan.downcast_ref::<ShuffleWriterExec>())
        .map(|w| w.input().clone());
    let Some(input) = writer_input else { return vec![target] };
    if !read_once(stages, target.stage) {
        // Narrowing a stage below narrows this one for its other readers too.
        return vec![target];
    }
    let deeper: Vec<Origin> = origins(&input, &target.columns)
        .into_iter()
        .filter(|o| !cannot_wait(stages, key_stage, o.stage) && read_once(stages, o.stage))
        .collect();
    if deeper.is_empty() {
        return vec![target];
    }
    deeper.into_iter().flat_map(|o| deepest(stages, o, key_stage)).collect()
}

/// Put the filter of `keys` under the writer of `target`'s stage (once per stage and keys).
fn place(stages: &mut [Stage], target: Origin, keys: Keys, placed: &mut HashSet<(StageId, KeysId)>) -> Result<()> {
    let target_stage = target.stage;
    let key_stage = keys.stage();
    let (key_side, key_columns, id) = match keys {
        Keys::Stage(origin) => {
            let mut reader = origin.reader;
            if reader.output_partitioning().partition_count() > 1 {
                reader = Arc::new(CoalescePartitionsExec::new(reader));
            }
            (reader, origin.columns, KeysId::Stage(origin.stage))
        }
        Keys::Local { plan, columns } => {
            let id = KeysId::Local(Arc::as_ptr(&plan) as *const ());
            (plan, columns, id)
        }
    };
    // A stage filtered twice by the same keys, by keys that need its own
    // output, or whose output another reader needs whole, is left alone.
    if cannot_wait(stages, key_stage, target_stage)
        || placed.contains(&(target_stage, id))
        || !read_once(stages, target_stage)
    {
        return Ok(());
    }
    let Some(stage) = stages.iter_mut().find(|s| s.id == target_stage) else {
        return Ok(());
    };
    let Some(writer) = stage.plan.downcast_ref::<ShuffleWriterExec>() else {
        return Ok(());
    };
    let on: Vec<(usize, usize)> = target.columns.iter().copied().zip(key_columns).collect();
    if RuntimeFilterExec::mismatch(&writer.input().schema(), &key_side.schema(), &on).is_some() {
        return Ok(());
    }
    let filter = Arc::new(RuntimeFilterExec::try_new(writer.input().clone(), key_side, on)?);
    stage.plan = with_children(stage.plan.clone(), vec![filter])?;
    if let Some(key_stage) = key_stage
        && !stage.inputs.contains(&key_stage)
    {
        stage.inputs.push(key_stage);
    }
    placed.insert((target_stage, id));
    Ok(())
}

fn joins(plan: &Arc<dyn ExecutionPlan>, f: &mut dyn FnMut(&HashJoinExec)) {
    if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
        f(join);
    }
    for child in plan.children() {
        joins(child, f);
    }
}

/// Whether `stage` cannot wait for the keys of `key_stage`: they are its own
/// output or need it.
fn cannot_wait(stages: &[Stage], key_stage: Option<StageId>, stage: StageId) -> bool {
    key_stage.is_some_and(|k| k == stage || depends_on(stages, k, stage))
}

/// Whether one shuffle reader only reads `stage`'s rows: a stage reused by
/// several (the same view twice) must keep every row for all of them. The
/// key sides of runtime filters do not count: the rows such a filter drops
/// reach no output, so neither do their keys.
fn read_once(stages: &[Stage], stage: StageId) -> bool {
    fn count(plan: &Arc<dyn ExecutionPlan>, stage: StageId) -> usize {
        let own = plan.downcast_ref::<ShuffleReaderExec>().is_some_and(|r| r.stage_id() == stage);
        let children = plan.children();
        let rows = if plan.is::<RuntimeFilterExec>() { &children[..1] } else { &children[..] };
        usize::from(own) + rows.iter().map(|c| count(c, stage)).sum::<usize>()
    }
    stages.iter().map(|s| count(&s.plan, stage)).sum::<usize>() == 1
}

/// Whether `stage` reads `other`'s output, directly or through other stages.
fn depends_on(stages: &[Stage], stage: StageId, other: StageId) -> bool {
    let Some(s) = stages.iter().find(|s| s.id == stage) else {
        return false;
    };
    s.inputs.iter().any(|&i| i == other || depends_on(stages, i, other))
}

fn has_filter(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.is::<FilterExec>() || plan.children().into_iter().any(has_filter)
}

/// Local key sides are run again by every filtered task: at most this many rows (estimated).
const LOCAL_KEY_ROWS: usize = 100_000;

/// Whether `plan` can be run by the filtered stage's tasks for its keys: one
/// partition, reading only DataFusion's file and memory scans (not another
/// stage, nor a CSV scan counting malformed rows into the job's metrics), a
/// filter, few rows, and nothing volatile (a second run must give the same
/// rows).
fn is_small_local_filter(plan: &Arc<dyn ExecutionPlan>) -> bool {
    fn plain_scans(plan: &Arc<dyn ExecutionPlan>) -> bool {
        let children = plan.children();
        if children.is_empty() { plan.is::<DataSourceExec>() } else { children.into_iter().all(plain_scans) }
    }
    plan.output_partitioning().partition_count() == 1
        && plain_scans(plan)
        && has_filter(plan)
        && estimated_output(plan).is_some_and(|rows| rows <= LOCAL_KEY_ROWS)
        && !is_volatile_plan(plan)
}

/// Whether `stage` or a stage it reads filters rows.
fn filters_rows(stages: &[Stage], stage: StageId) -> bool {
    let Some(s) = stages.iter().find(|s| s.id == stage) else {
        return false;
    };
    has_filter(&s.plan) || s.inputs.iter().any(|&i| filters_rows(stages, i))
}

/// Key stages estimated above this many rows are not used. Estimates of
/// filtered rows are rough (DataFusion assumes a fixed selectivity where it
/// cannot tell), so this only rules out the clearly large; the run-time limit
/// does the rest.
const ESTIMATE_LIMIT: usize = 4 * MAX_KEY_ROWS;

/// DataFusion's estimate of the rows `stage` outputs (0 when unknown).
fn estimated_rows(stages: &[Stage], stage: StageId) -> usize {
    let Some(plan) = stages.iter().find(|s| s.id == stage).map(|s| &s.plan) else {
        return 0;
    };
    estimated_output(plan.downcast_ref::<ShuffleWriterExec>().map_or(plan, |w| w.input())).unwrap_or(0)
}

fn estimated_output(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    let stats = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new()).ok()?;
    stats.num_rows.get_value().copied()
}

/// `plan` without the runtime filters whose key stage turned out larger than
/// [`MAX_KEY_ROWS`] (`rows` gives a finished stage's output rows), where each
/// task would read the whole key side only to let every row through, or over
/// half the rows estimated for the side it narrows.
pub fn drop_oversized(
    plan: Arc<dyn ExecutionPlan>,
    rows: &dyn Fn(StageId) -> Option<u64>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let plan = plan.transform_up(|node| {
        let Some(filter) = node.downcast_ref::<RuntimeFilterExec>() else {
            return Ok(Transformed::no(node));
        };
        let key_rows: u64 = reader_stages(filter.keys()).into_iter().filter_map(rows).sum();
        // A key side about as large as the side it would narrow drops little.
        let input_rows = estimated_output(filter.input()).unwrap_or(usize::MAX) as u64;
        if key_rows > MAX_KEY_ROWS as u64 || key_rows.saturating_mul(2) > input_rows {
            return Ok(Transformed::yes(filter.input().clone()));
        }
        Ok(Transformed::no(node))
    })?;
    Ok(plan.data)
}

fn join_placements(join: &HashJoinExec, stages: &[Stage]) -> Vec<Placement> {
    let Some((filter_left, filter_right)) = narrowable(join) else {
        return vec![];
    };
    let Some((left_keys, right_keys)) = key_columns(join) else {
        return vec![];
    };
    let mut out = vec![];
    let mut narrow = |side: &Arc<dyn ExecutionPlan>,
                      side_keys: &[usize],
                      other: &Arc<dyn ExecutionPlan>,
                      other_keys| {
        let keys = match origins(other, other_keys).into_iter().next() {
            Some(origin) => {
                if !filters_rows(stages, origin.stage) || estimated_rows(stages, origin.stage) > ESTIMATE_LIMIT {
                    return;
                }
                Keys::Stage(origin)
            }
            None if is_small_local_filter(other) => Keys::Local { plan: other.clone(), columns: other_keys.to_vec() },
            None => return,
        };
        for target in origins(side, side_keys) {
            out.push(Placement { target, keys: keys.clone() });
        }
    };
    if filter_right {
        narrow(join.right(), &right_keys, join.left(), &left_keys);
    }
    if filter_left {
        narrow(join.left(), &left_keys, join.right(), &right_keys);
    }
    out
}

/// Which sides of `join` (left, right) may lose the rows whose keys the other
/// side lacks without changing its output: their unmatched rows do not reach
/// it. `None` for joins whose keys do not simply match (null-aware, nulls
/// equal) or that stop early.
fn narrowable(join: &HashJoinExec) -> Option<(bool, bool)> {
    if join.null_aware || join.null_equality() != NullEquality::NullEqualsNothing || join.fetch().is_some() {
        return None;
    }
    Some(match join.join_type() {
        JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi => (true, true),
        JoinType::Left | JoinType::LeftAnti => (false, true),
        JoinType::Right | JoinType::RightAnti => (true, false),
        JoinType::Full | JoinType::LeftMark | JoinType::RightMark => (false, false),
    })
}

/// A local part of a stage (a subtree reading no other stage) whose
/// `columns` reach a join's keys unchanged, and the small filtered local
/// side of that join whose `keys` they must be among.
struct Reduction {
    part: Arc<dyn ExecutionPlan>,
    columns: Vec<usize>,
    side: Arc<dyn ExecutionPlan>,
    keys: Vec<usize>,
}

/// Within one stage: where a join's side may lose the rows whose keys the
/// other side lacks and that other side is a small filtered local plan, the
/// local parts of the first side that its keys come from keep only the rows
/// with those keys (a right semi join built from the small side). TPC-H q5:
/// `nation` is joined with the lineitem rows before the filtered `region`
/// joins with it; as the region's nations it is a small filtered key side
/// itself, whose keys then narrow `supplier` and `customer` before their
/// shuffles (and the nation join probes fewer rows). A side that is all
/// local is left alone: the join narrows it already.
fn reduce_local_sides(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let mut reductions: Vec<Reduction> = vec![];
    joins(&plan, &mut |join| {
        let (Some((filter_left, filter_right)), Some((left_keys, right_keys))) = (narrowable(join), key_columns(join))
        else {
            return;
        };
        let sides = [
            (filter_right, join.right(), &right_keys, join.left(), &left_keys),
            (filter_left, join.left(), &left_keys, join.right(), &right_keys),
        ];
        for (narrow, side, side_keys, other, other_keys) in sides {
            if !narrow || !is_small_local_filter(other) {
                continue;
            }
            for (part, columns) in
                trace(side, side_keys, &|plan, cols| (!reads_stage(plan)).then(|| (plan.clone(), cols.to_vec())))
            {
                if !Arc::ptr_eq(&part, side) {
                    reductions.push(Reduction { part, columns, side: other.clone(), keys: other_keys.clone() });
                }
            }
        }
    });
    if reductions.is_empty() {
        return Ok(plan);
    }
    let plan = plan.transform_up(|node| {
        let Some(r) = reductions.iter().find(|r| Arc::ptr_eq(&r.part, &node)) else {
            return Ok(Transformed::no(node));
        };
        let on = r.keys.iter().zip(&r.columns).map(|(&k, &c)| -> Result<_> {
            let key: Arc<dyn PhysicalExpr> =
                Arc::new(Column::new_with_schema(r.side.schema().field(k).name(), &r.side.schema())?);
            let col: Arc<dyn PhysicalExpr> =
                Arc::new(Column::new_with_schema(node.schema().field(c).name(), &node.schema())?);
            Ok((key, col))
        });
        let semi = HashJoinExec::try_new(
            r.side.clone(),
            node.clone(),
            on.collect::<Result<_>>()?,
            None,
            &JoinType::RightSemi,
            None,
            PartitionMode::CollectLeft,
            NullEquality::NullEqualsNothing,
            false,
        )?;
        Ok(Transformed::yes(Arc::new(semi) as Arc<dyn ExecutionPlan>))
    })?;
    Ok(plan.data)
}

fn reads_stage(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.is::<ShuffleReaderExec>() || plan.children().into_iter().any(reads_stage)
}

/// The left and right key column indices of a join whose keys are all plain columns.
/// Before the plan is cut: a partitioned hash join one of whose sides is a
/// filtered aggregation (`GROUP BY k HAVING ...`, TPC-H q18's subquery) gets
/// an exchange above that side, on the join keys and into as many partitions
/// as it has. DataFusion needs none there (the aggregation is partitioned on
/// the key already), so the filtered keys would be computed inside the
/// join's stage, where no runtime filter can use them; as a stage of their
/// own they narrow the other side before its shuffle. The exchange moves
/// only the filtered groups.
pub fn key_sides_as_stages(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let plan = plan.transform_up(|node| {
        let Some(join) = node.downcast_ref::<HashJoinExec>() else { return Ok(Transformed::no(node)) };
        if *join.partition_mode() != PartitionMode::Partitioned {
            return Ok(Transformed::no(node));
        }
        let (left_keys, right_keys): (Vec<_>, Vec<_>) = join.on().iter().cloned().unzip();
        let mut children = vec![join.left().clone(), join.right().clone()];
        let mut changed = false;
        for (child, keys) in children.iter_mut().zip([left_keys, right_keys]) {
            if is_filtered_aggregation(child) {
                let partitions = child.output_partitioning().partition_count();
                *child = Arc::new(RepartitionExec::try_new(child.clone(), Partitioning::Hash(keys, partitions))?);
                changed = true;
            }
        }
        if !changed {
            return Ok(Transformed::no(node));
        }
        Ok(Transformed::yes(with_children(node, children)?))
    })?;
    Ok(plan.data)
}

/// A `FilterExec` over a final aggregation (through projections).
fn is_filtered_aggregation(plan: &Arc<dyn ExecutionPlan>) -> bool {
    fn below_projections(mut node: &Arc<dyn ExecutionPlan>) -> &Arc<dyn ExecutionPlan> {
        while let Some(projection) = node.downcast_ref::<ProjectionExec>() {
            node = projection.input();
        }
        node
    }
    let Some(filter) = below_projections(plan).downcast_ref::<FilterExec>() else { return false };
    below_projections(filter.input())
        .downcast_ref::<AggregateExec>()
        .is_some_and(|a| matches!(a.mode(), AggregateMode::Final | AggregateMode::FinalPartitioned))
}

fn key_columns(join: &HashJoinExec) -> Option<(Vec<usize>, Vec<usize>)> {
    let left = join.on().iter().map(|(l, _)| column(l)).collect::<Option<_>>()?;
    let right = join.on().iter().map(|(_, r)| column(r)).collect::<Option<_>>()?;
    Some((left, right))
}

fn column(expr: &Arc<dyn PhysicalExpr>) -> Option<usize> {
    expr.downcast_ref::<Column>().map(Column::index)
}

/// `cols` mapped through `f`, or `None` if any column does not map.
fn remap(cols: &[usize], f: impl Fn(usize) -> Option<usize>) -> Option<Vec<usize>> {
    cols.iter().map(|&c| f(c)).collect()
}

/// The shuffle readers under `plan` (in its stage) whose rows reach `plan`'s
/// `cols` unchanged, so that dropping a reader row by those values drops
/// exactly the output rows holding them (and nothing else).
fn origins(plan: &Arc<dyn ExecutionPlan>, cols: &[usize]) -> Vec<Origin> {
    trace(plan, cols, &|plan, cols| {
        let reader = plan.downcast_ref::<ShuffleReaderExec>()?;
        Some(Origin { stage: reader.stage_id(), reader: plan.clone(), columns: cols.to_vec() })
    })
}

/// What a trace makes of a node and the columns followed down to it (`None`: follow them further).
type Found<T> = dyn Fn(&Arc<dyn ExecutionPlan>, &[usize]) -> Option<T>;

/// What `found` makes of the first nodes under `plan` (in its stage) whose
/// rows reach `plan`'s `cols` unchanged, following the columns down as
/// [`origins`] describes.
fn trace<T>(plan: &Arc<dyn ExecutionPlan>, cols: &[usize], found: &Found<T>) -> Vec<T> {
    if let Some(t) = found(plan, cols) {
        return vec![t];
    }
    if plan.is::<ShuffleReaderExec>() || plan.fetch().is_some() {
        return vec![];
    }
    let through_first_child = plan.is::<CoalescePartitionsExec>()
        || plan.is::<BroadcastExec>()
        || plan.is::<SortExec>()
        || plan.is::<RuntimeFilterExec>();
    if through_first_child {
        return trace(plan.children()[0], cols, found);
    }
    if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
        let exprs = projection.expr();
        let inner = remap(cols, |c| column(&exprs.get(c)?.expr));
        return inner.map(|inner| trace(projection.input(), &inner, found)).unwrap_or_default();
    }
    if let Some(filter) = plan.downcast_ref::<FilterExec>() {
        let inner = match filter.projection() {
            Some(p) => remap(cols, |c| p.get(c).copied()),
            None => Some(cols.to_vec()),
        };
        return inner.map(|inner| trace(filter.input(), &inner, found)).unwrap_or_default();
    }
    if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
        let groups = aggregate.group_expr();
        if groups.has_grouping_set() {
            return vec![];
        }
        let exprs = groups.expr();
        let inner = remap(cols, |c| column(&exprs.get(c)?.0));
        return inner.map(|inner| trace(aggregate.input(), &inner, found)).unwrap_or_default();
    }
    if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
        return join_trace(join, cols, found);
    }
    vec![]
}

fn join_trace<T>(join: &HashJoinExec, cols: &[usize], found: &Found<T>) -> Vec<T> {
    let cols = match &join.projection {
        Some(p) => match remap(cols, |c| p.get(c).copied()) {
            Some(c) => c,
            None => return vec![],
        },
        None => cols.to_vec(),
    };
    let left_width = join.left().schema().fields().len();
    // Which side's columns the join emits unchanged (a null-extended side's are not).
    let (left_out, right_out, right_offset) = match join.join_type() {
        JoinType::Inner => (true, true, left_width),
        JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => (true, false, 0),
        JoinType::Right => (false, true, left_width),
        JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => (false, true, 0),
        JoinType::Full => (false, false, 0),
    };
    let (side, inner): (_, Vec<usize>) = if left_out && cols.iter().all(|&c| c < left_width) {
        (0, cols)
    } else if right_out && cols.iter().all(|&c| c >= right_offset) {
        (1, cols.iter().map(|&c| c - right_offset).collect())
    } else {
        return vec![];
    };
    let width = [left_width, join.right().schema().fields().len()];
    if inner.iter().any(|&c| c >= width[side]) {
        return vec![];
    }
    let children = [join.left(), join.right()];
    let mut out = trace(children[side], &inner, found);
    // Where every column is a join key of an inner or semi join, the output
    // rows' values are also the other side's keys: narrow that side too.
    let equal_keys = matches!(join.join_type(), JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi)
        && join.null_equality() == NullEquality::NullEqualsNothing;
    if equal_keys {
        let Some((left_keys, right_keys)) = key_columns(join) else {
            return out;
        };
        let (mine, theirs) = if side == 0 { (&left_keys, &right_keys) } else { (&right_keys, &left_keys) };
        let other: Option<Vec<usize>> =
            inner.iter().map(|c| mine.iter().position(|k| k == c).map(|i| theirs[i])).collect();
        if let Some(other) = other {
            out.extend(trace(children[1 - side], &other, found));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::ExecutionPlan;
    use ignis_core::ids::StageId;
    use ignis_core::runtime_filter::{MAX_KEY_ROWS, RuntimeFilterExec};
    use ignis_core::shuffle::ShuffleReaderExec;

    use datafusion::common::{JoinType, NullEquality, ScalarValue};
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
    use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
    use datafusion::physical_plan::displayable;
    use datafusion::physical_plan::filter::FilterExec;
    use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
    use datafusion::physical_plan::repartition::RepartitionExec;
    use datafusion::physical_plan::{Partitioning, PhysicalExpr};

    use super::drop_oversized;
    use crate::planner::stages::StageGraph;

    /// A filter over `rows` input rows whose keys come from stage 2.
    fn filter(rows: i64) -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(0..rows))]).unwrap();
        let input = MemorySourceConfig::try_new_exec(&[vec![batch]], schema.clone(), None).unwrap();
        let keys = Arc::new(ShuffleReaderExec::new(StageId(2), schema, 1));
        Arc::new(RuntimeFilterExec::try_new(input, keys, vec![(0, 0)]).unwrap())
    }

    fn kept(plan: Arc<dyn ExecutionPlan>, key_rows: u64) -> bool {
        let rows = move |id: StageId| (id == StageId(2)).then_some(key_rows);
        drop_oversized(plan, &rows).unwrap().is::<RuntimeFilterExec>()
    }

    /// A memory scan of Int64 columns `names` in `partitions` partitions.
    fn scan(names: &[&str], partitions: usize) -> Arc<dyn ExecutionPlan> {
        let schema =
            Arc::new(Schema::new(names.iter().map(|n| Field::new(*n, DataType::Int64, false)).collect::<Vec<_>>()));
        let batch = RecordBatch::try_new(
            schema.clone(),
            names.iter().map(|_| Arc::new(Int64Array::from_iter_values(0..10)) as _).collect(),
        )
        .unwrap();
        let parts = vec![vec![batch]; partitions];
        MemorySourceConfig::try_new_exec(&parts, schema, None).unwrap()
    }

    fn col(plan: &Arc<dyn ExecutionPlan>, name: &str) -> Arc<dyn PhysicalExpr> {
        Arc::new(Column::new_with_schema(name, &plan.schema()).unwrap())
    }

    fn join(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        on: (&str, &str),
        mode: PartitionMode,
    ) -> Arc<dyn ExecutionPlan> {
        let on = vec![(col(&left, on.0), col(&right, on.1))];
        Arc::new(
            HashJoinExec::try_new(
                left,
                right,
                on,
                None,
                &JoinType::Inner,
                None,
                mode,
                NullEquality::NullEqualsNothing,
                false,
            )
            .unwrap(),
        )
    }

    fn hash(input: Arc<dyn ExecutionPlan>, key: &str) -> Arc<dyn ExecutionPlan> {
        let key = col(&input, key);
        Arc::new(RepartitionExec::try_new(input, Partitioning::Hash(vec![key], 2)).unwrap())
    }

    #[test]
    fn a_filter_goes_down_to_the_deepest_stage_that_passes_its_column_on() {
        // TPC-H q7's shape at SF10: the filtered `lineitem` joins a broadcast
        // `supplier` in its scan stage, then `orders` in a partitioned join
        // (so its keys narrow `orders` too); a filtered `nation` scan then
        // joins on the supplier's nation key, a stage above.
        let supplier = Arc::new(CoalescePartitionsExec::new(scan(&["s_suppkey", "s_nationkey"], 2)));
        let lineitem = join(
            supplier,
            filtered(scan(&["l_suppkey", "l_orderkey"], 2), "l_suppkey"),
            ("s_suppkey", "l_suppkey"),
            PartitionMode::CollectLeft,
        );
        let orders = scan(&["o_orderkey"], 2);
        let big = join(
            hash(orders, "o_orderkey"),
            hash(lineitem, "l_orderkey"),
            ("o_orderkey", "l_orderkey"),
            PartitionMode::Partitioned,
        );
        let nation = filtered(scan(&["n_nationkey"], 1), "n_nationkey");
        let plan = join(nation, hash(big, "s_nationkey"), ("n_nationkey", "s_nationkey"), PartitionMode::CollectLeft);

        let mut graph = StageGraph::cut(plan).unwrap();
        super::add(&mut graph.stages).unwrap();
        let filtered: Vec<String> = shown(&graph)
            .into_iter()
            .filter(|s| s.contains("RuntimeFilterExec: s_nationkey@1 in n_nationkey@0"))
            .collect();
        // Only the supplier stage: the lineitem stage then keeps that nation's
        // rows by its join (though the orders stage reads its keys).
        assert_eq!(filtered.len(), 1, "{}", graph.display("collect"));
        assert!(graph.display("collect").contains("RuntimeFilterExec: o_orderkey@0 in l_orderkey@"));
        assert!(filtered[0].starts_with("ShuffleWriterExec: partitioning=single"), "{}", filtered[0]);
    }

    /// `scan` filtered to the rows whose `name` is 3.
    fn filtered(scan: Arc<dyn ExecutionPlan>, name: &str) -> Arc<dyn ExecutionPlan> {
        let predicate = Arc::new(BinaryExpr::new(
            col(&scan, name),
            Operator::Eq,
            Arc::new(Literal::new(ScalarValue::Int64(Some(3)))),
        ));
        Arc::new(FilterExec::try_new(predicate, scan).unwrap())
    }

    /// The stages' plans, as `ignis explain` shows them.
    fn shown(graph: &StageGraph) -> Vec<String> {
        graph.stages.iter().map(|s| displayable(s.plan.as_ref()).indent(true).to_string()).collect()
    }

    #[test]
    fn a_dimension_joined_under_a_filtered_one_narrows_the_stages_below() {
        // TPC-H q5's shape: `lineitem` joins a broadcast `supplier`, then the
        // unfiltered `nation` on the supplier's nation key, then the filtered
        // `region` on the nation's region key, all in one stage.
        let supplier = Arc::new(CoalescePartitionsExec::new(scan(&["s_suppkey", "s_nationkey"], 2)));
        let lineitem = join(supplier, scan(&["l_suppkey"], 2), ("s_suppkey", "l_suppkey"), PartitionMode::CollectLeft);
        let nation = scan(&["n_nationkey", "n_regionkey"], 1);
        let nations = join(nation, lineitem, ("n_nationkey", "s_nationkey"), PartitionMode::CollectLeft);
        let region = filtered(scan(&["r_regionkey"], 1), "r_regionkey");
        let plan = join(region, nations, ("r_regionkey", "n_regionkey"), PartitionMode::CollectLeft);

        let mut graph = StageGraph::cut(plan).unwrap();
        super::add(&mut graph.stages).unwrap();
        let stages = shown(&graph);
        // The supplier stage keeps the suppliers of the region's nations.
        let (supplier, top) = (&stages[0], &stages[1]);
        assert_eq!(stages.len(), 2);
        assert!(supplier.contains("RuntimeFilterExec: s_nationkey@1 in n_nationkey@0"), "{supplier}");
        assert!(supplier.contains("join_type=RightSemi, on=[(r_regionkey@0, n_regionkey@1)]"), "{supplier}");
        // The join's stage joins the region's nations only.
        assert_eq!(top.matches("join_type=RightSemi").count(), 1, "{top}");
    }

    #[tokio::test]
    async fn a_stage_read_twice_is_not_narrowed_for_one_reader() {
        let ctx = ignis_core::session::session_context(3, 8192, &Default::default());
        ctx.sql("CREATE TABLE t AS VALUES (1, 'x'), (2, 'y'), (3, 'x')").await.unwrap();
        let sql = "WITH c AS (SELECT column1 AS k, count(*) AS n FROM t GROUP BY column1) \
                   SELECT c.k FROM c JOIN (SELECT column1 AS k FROM t WHERE column2 = 'y') f ON c.k = f.k \
                   UNION ALL SELECT k FROM c";
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let mut graph = StageGraph::cut(plan).unwrap();
        super::add(&mut graph.stages).unwrap();
        let all = graph.display("collect");
        let stages = shown(&graph);
        // The view's stage, read by the join and by the union's other branch.
        let view = &stages[0];
        assert!(view.contains("mode=Partial, gby=[column1"), "{all}");
        assert_eq!(all.matches("ShuffleReaderExec: stage=1,").count(), 2, "{all}");
        // The union's branch needs every group: the join's filter must not drop any.
        assert!(!view.contains("RuntimeFilterExec"), "{all}");
    }

    #[test]
    fn a_filter_for_one_reader_of_a_reused_stage_narrows_no_stage_below_it() {
        // A view used twice whose stage reads another stage: one reader is
        // joined with a filtered dimension, the other with an unfiltered one.
        let view = || hash(hash(scan(&["k", "v"], 2), "k"), "v");
        let narrowed = join(filtered(scan(&["f"], 1), "f"), view(), ("f", "k"), PartitionMode::CollectLeft);
        let whole = join(scan(&["g"], 1), view(), ("g", "k"), PartitionMode::CollectLeft);
        let plan = join(Arc::new(CoalescePartitionsExec::new(narrowed)), whole, ("k", "k"), PartitionMode::CollectLeft);

        let mut graph = StageGraph::cut(plan).unwrap();
        super::add(&mut graph.stages).unwrap();
        let all = graph.display("collect");
        let stages = shown(&graph);
        let view: Vec<_> = stages.iter().filter(|s| s.contains("ShuffleWriterExec: partitioning=Hash([")).collect();
        assert_eq!(view.len(), 2, "the view's two stages, each cut once: {all}");
        for stage in view {
            assert!(!stage.contains("RuntimeFilterExec"), "{all}");
        }
    }

    #[test]
    fn filters_whose_key_side_proved_large_are_dropped_before_the_tasks_run() {
        assert!(kept(filter(100_000), 57));
        // More keys than a task reads for a filter.
        assert!(!kept(filter(100_000), MAX_KEY_ROWS as u64 + 1));
        // Keys about as many as the rows they would narrow.
        assert!(!kept(filter(100_000), 60_000));
    }
}
