//! Planning: three front ends (job SQL, job steps, Spark Connect relations in
//! `crate::connect`) make a DataFusion plan; from there one path: DataFusion
//! optimises it and plans it physically (with Ignis's join distribution rule,
//! `ignis_core::session`), [`stages`] cuts it into stages at every exchange,
//! and [`runtime_filters`] places join filters between stages.
//!
//! ```text
//!  job.sql ──── statements (queries only) ─┐
//!  job.steps ── steps ─────────────────────┼─> DataFrame ─> physical plan ─> stages::StageGraph
//!  Spark Connect relations (connect) ──────┘   (tables)                      + runtime_filters
//! ```

mod errors;
mod job;
mod map_batches;
pub(crate) mod runtime_filters;
pub mod stages;
pub mod statements;
mod steps;

use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use ignis_core::error::Result;

pub(crate) use errors::plan_error;
pub use job::{PlannedJob, plan_dataframe, plan_job};
pub(crate) use job::{parse_schema, parse_sql, plan_sql, register_tables};
use stages::StageGraph;

/// The stages of a physical plan: cut at every exchange, with runtime join
/// filters placed between them when `runtime_filters` is on.
pub fn distribute(physical: Arc<dyn ExecutionPlan>, runtime_filters: bool) -> Result<StageGraph> {
    let physical = if runtime_filters { runtime_filters::key_sides_as_stages(physical)? } else { physical };
    let mut graph = StageGraph::cut(physical)?;
    if runtime_filters {
        runtime_filters::add(&mut graph.stages)?;
    }
    Ok(graph)
}
