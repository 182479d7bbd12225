//! The DataFusion session settings every Ignis process uses, so a plan cut on
//! the driver means the same on any executor.

use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::joins::{DistributeJoins, SplitScans};

/// Settings for planning a distributed job.
///
/// - `target_partitions` is the shuffle partition count: every hash exchange the
///   optimiser inserts becomes a shuffle with this many reduce partitions.
/// - Round-robin repartitioning is off: it only spreads work across threads of
///   one process, and tasks already give us that parallelism.
/// - File-scan work stealing is off: a task runs one partition in isolation and
///   must read exactly its own file group, never its siblings'.
/// - Uncorrelated scalar subqueries are planned as joins, not as a
///   `ScalarSubqueryExec` whose results reach expressions through shared
///   in-process state that cannot cross a stage boundary.
/// - Dynamic filter pushdown is off: a filter fed by a join in one stage cannot
///   reach a scan that ran in an earlier stage. The stage cutter places
///   runtime filters across stages instead (`RuntimeFilterExec`).
pub fn session_config(shuffle_partitions: usize, batch_size: usize) -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_target_partitions(shuffle_partitions)
        .with_batch_size(batch_size)
        .with_round_robin_repartition(false)
        .with_information_schema(false);
    let opts = config.options_mut();
    opts.execution.enable_file_stream_work_stealing = false;
    opts.optimizer.enable_physical_uncorrelated_scalar_subquery = false;
    opts.optimizer.enable_dynamic_filter_pushdown = false;
    opts.optimizer.enable_topk_dynamic_filter_pushdown = false;
    opts.optimizer.enable_join_dynamic_filter_pushdown = false;
    opts.optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    config
}

/// A session context for planning (driver) or executing (executor) with the
/// given settings, and DataFusion's physical optimiser rules plus
/// [`DistributeJoins`] right after its join selection.
pub fn session_context(shuffle_partitions: usize, batch_size: usize) -> SessionContext {
    let mut rules = PhysicalOptimizer::new().rules;
    let after_join_selection = rules.iter().position(|r| r.name() == "join_selection").map_or(0, |i| i + 1);
    rules.insert(after_join_selection, Arc::new(DistributeJoins));
    rules.push(Arc::new(SplitScans));
    rules.insert(0, Arc::new(crate::statistics::NanSafeStatistics));
    let state = SessionStateBuilder::new()
        .with_config(session_config(shuffle_partitions, batch_size))
        .with_default_features()
        .with_physical_optimizer_rules(rules)
        .with_analyzer_rule(Arc::new(crate::functions::SlidingWindows))
        .with_runtime_env(crate::store::runtime_env())
        .build();
    let ctx = SessionContext::new_with_state(state);
    crate::functions::register(&ctx);
    ctx
}
