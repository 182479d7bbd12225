//! The DataFusion session settings every Ignis process uses, so a plan cut on
//! the driver means the same on any executor.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::config::ConfigOptions;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::prelude::{SessionConfig, SessionContext};
use serde::{Deserialize, Serialize};

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
///   in-process state that cannot cross a stage boundary (each checked to
///   give at most one row: [`crate::scalar_subquery`]).
/// - Dynamic filter pushdown is off: a filter fed by a join in one stage cannot
///   reach a scan that ran in an earlier stage. The stage cutter places
///   runtime filters across stages instead (`RuntimeFilterExec`).
pub fn session_config(shuffle_partitions: usize, batch_size: usize, options: &SessionOptions) -> SessionConfig {
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
    options.apply(opts);
    config
}

/// A session context for planning (driver) or executing (executor) with the
/// given settings, and DataFusion's physical optimiser rules plus
/// [`DistributeJoins`] right after its join selection.
pub fn session_context(shuffle_partitions: usize, batch_size: usize, options: &SessionOptions) -> SessionContext {
    let mut rules = PhysicalOptimizer::new().rules;
    let after_join_selection = rules.iter().position(|r| r.name() == "join_selection").map_or(0, |i| i + 1);
    rules.insert(after_join_selection, Arc::new(DistributeJoins));
    rules.push(Arc::new(SplitScans));
    rules.insert(0, Arc::new(crate::statistics::NanSafeStatistics));
    // The job's object-store requests are counted for its receipt
    // (`crate::receipt`); the counters ride in the config.
    let (runtime, requests) = crate::receipt::counted(&crate::store::runtime_env());
    let state = SessionStateBuilder::new()
        .with_config(session_config(shuffle_partitions, batch_size, options).with_extension(requests))
        .with_default_features()
        .with_physical_optimizer_rules(rules)
        .with_analyzer_rule(Arc::new(crate::functions::SlidingWindows))
        .with_analyzer_rule(Arc::new(crate::scalar_subquery::SingleRowSubqueries))
        .with_runtime_env(runtime)
        .build();
    let ctx = SessionContext::new_with_state(state);
    crate::functions::register(&ctx);
    ctx
}

/// DataFusion session options a job sets by their `SET` names
/// (`config.options` of a job: `"datafusion.sql_parser.dialect" = "duckdb"`).
///
/// Only options that change what SQL means, not how Ignis distributes or
/// bounds a job, are open to jobs: every `datafusion.sql_parser.*` option but
/// `recursion_limit` (a bound that protects the driver's stack),
/// `datafusion.execution.time_zone`, `datafusion.execution.enable_recursive_ctes`,
/// and the types Parquet columns are read
/// as (`datafusion.execution.parquet.schema_force_view_types`,
/// `binary_as_string`). Rows per batch and partitions have job
/// settings of their own. The driver plans with these options and every
/// executor runs the job's tasks with them, so a time-zone-aware function
/// answers the same everywhere.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, OptionValue>", into = "BTreeMap<String, String>")]
pub struct SessionOptions(BTreeMap<String, String>);

/// An option's value as a job file writes it: `true`, `8`, or text.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OptionValue {
    Flag(bool),
    Integer(i64),
    Number(f64),
    Text(String),
}

impl std::fmt::Display for OptionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionValue::Flag(v) => write!(f, "{v}"),
            OptionValue::Integer(v) => write!(f, "{v}"),
            OptionValue::Number(v) => write!(f, "{v}"),
            OptionValue::Text(v) => f.write_str(v),
        }
    }
}

/// Why a job may not set `key`, or `None` when it may.
fn refusal(key: &str) -> Option<String> {
    const OPEN: &str = "datafusion.sql_parser.* (but recursion_limit), datafusion.execution.{time_zone, \
                        enable_recursive_ctes} and datafusion.execution.parquet.{schema_force_view_types, \
                        binary_as_string}";
    match key {
        "datafusion.execution.batch_size" => Some(format!("'{key}' is set by config.batch_size")),
        "datafusion.execution.target_partitions" => Some(format!("'{key}' is set by config.shuffle_partitions")),
        "datafusion.sql_parser.recursion_limit" => {
            Some(format!("'{key}' is a bound of the driver, not a job setting (a job may set {OPEN})"))
        }
        "datafusion.execution.time_zone"
        | "datafusion.execution.enable_recursive_ctes"
        | "datafusion.execution.parquet.schema_force_view_types"
        | "datafusion.execution.parquet.binary_as_string" => None,
        _ if key.starts_with("datafusion.sql_parser.") => None,
        _ => Some(format!("'{key}' is not an option a job may set (a job may set {OPEN})")),
    }
}

impl SessionOptions {
    /// Options checked against what a job may set and against DataFusion's own
    /// parsing of each value; the error names the option.
    pub fn new(options: impl IntoIterator<Item = (String, String)>) -> Result<Self, String> {
        let mut checked = BTreeMap::new();
        let mut config = ConfigOptions::default();
        for (key, value) in options {
            let key = key.trim().to_ascii_lowercase();
            if let Some(why) = refusal(&key) {
                return Err(why);
            }
            config
                .set(&key, &value)
                .map_err(|e| format!("'{key}' = '{value}': {}", e.find_root().strip_backtrace()))?;
            checked.insert(key, value);
        }
        Ok(Self(checked))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// DataFusion's defaults with these options set.
    pub fn config(&self) -> ConfigOptions {
        let mut config = ConfigOptions::default();
        self.apply(&mut config);
        config
    }

    /// Set every option; each was checked against DataFusion's parsing when
    /// the job arrived.
    pub fn apply(&self, config: &mut ConfigOptions) {
        for (key, value) in &self.0 {
            if let Err(e) = config.set(key, value) {
                tracing::warn!(%key, %value, error = %e, "a checked session option did not apply");
            }
        }
    }
}

impl TryFrom<BTreeMap<String, OptionValue>> for SessionOptions {
    type Error = String;

    fn try_from(options: BTreeMap<String, OptionValue>) -> Result<Self, String> {
        Self::new(options.into_iter().map(|(k, v)| (k, v.to_string())))
    }
}

impl From<SessionOptions> for BTreeMap<String, String> {
    fn from(options: SessionOptions) -> Self {
        options.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobSpec;

    fn job(options: &str) -> Result<JobSpec, String> {
        let text = format!("sql = \"SELECT 1\"\n[config.options]\n{options}\n");
        JobSpec::parse(&text, "toml", "job.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn a_job_sets_the_dialect_and_time_zone_and_the_session_uses_them() {
        let spec = job("\"datafusion.sql_parser.dialect\" = \"DuckDB\"\n\"datafusion.sql_parser.parse_float_as_decimal\" = true\n\"datafusion.execution.time_zone\" = \"+05:00\"").unwrap();
        let config = session_config(3, 100, &spec.config.options);
        let options = config.options();
        assert_eq!(options.sql_parser.dialect.to_string(), "duckdb");
        assert!(options.sql_parser.parse_float_as_decimal);
        assert_eq!(options.execution.time_zone.as_deref(), Some("+05:00"));
        // Ignis's own settings still hold.
        assert_eq!(options.execution.target_partitions, 3);
        assert!(!options.optimizer.enable_dynamic_filter_pushdown);
        // The options travel to executors as text and come back equal.
        let json = serde_json::to_string(&spec.config.options).unwrap();
        assert_eq!(serde_json::from_str::<SessionOptions>(&json).unwrap(), spec.config.options);
    }

    #[test]
    fn options_a_job_may_not_set_are_refused_by_name() {
        let refused = job("\"datafusion.optimizer.enable_dynamic_filter_pushdown\" = true").unwrap_err();
        assert!(refused.contains("config.options"), "{refused}");
        assert!(
            refused.contains("'datafusion.optimizer.enable_dynamic_filter_pushdown' is not an option a job may set"),
            "{refused}"
        );
        let bound = job("\"datafusion.sql_parser.recursion_limit\" = 100000").unwrap_err();
        assert!(bound.contains("a bound of the driver"), "{bound}");
        let batch = job("\"datafusion.execution.batch_size\" = 10").unwrap_err();
        assert!(batch.contains("config.batch_size"), "{batch}");
        let dialect = job("\"datafusion.sql_parser.dialect\" = \"klingon\"").unwrap_err();
        assert!(dialect.contains("'datafusion.sql_parser.dialect' = 'klingon': Invalid or Unsupported Configuration: Invalid Dialect: klingon"), "{dialect}");
        let unknown = job("\"datafusion.sql_parser.no_such_thing\" = true").unwrap_err();
        assert!(unknown.contains("no_such_thing"), "{unknown}");
    }
}
