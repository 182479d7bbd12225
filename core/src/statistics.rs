//! File statistics a plan may trust.
//!
//! Parquet's min/max of a float column leave NaN out (the format says so), so
//! they bound the column's other values only. DataFusion 55 takes an exact
//! `min == max` as "this column is constant in the file" and replaces the
//! column with that value when it opens the file, and answers `max(c)` from
//! an exact max: a NaN in the file is then read as the other value, and
//! `max` misses it. [`NanSafeStatistics`] runs first among the physical
//! optimiser rules and marks float min/max of every file scan as inexact
//! (bounds for pruning, never answers).

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Result, Statistics};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;

#[derive(Debug, Default)]
pub struct NanSafeStatistics;

impl PhysicalOptimizerRule for NanSafeStatistics {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|plan| {
            let Some(config) =
                plan.downcast_ref::<DataSourceExec>().and_then(|d| d.data_source().downcast_ref::<FileScanConfig>())
            else {
                return Ok(Transformed::no(plan));
            };
            let schema = config.file_source.table_schema().table_schema();
            let floats: Vec<usize> = schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| f.data_type().is_floating())
                .map(|(i, _)| i)
                .collect();
            if floats.is_empty() {
                return Ok(Transformed::no(plan));
            }
            let loosen = |stats: &Statistics| {
                let mut stats = stats.clone();
                for &i in &floats {
                    if let Some(column) = stats.column_statistics.get_mut(i) {
                        column.min_value = column.min_value.clone().to_inexact();
                        column.max_value = column.max_value.clone().to_inexact();
                    }
                }
                stats
            };
            let groups = config
                .file_groups
                .iter()
                .map(|group| {
                    let files = group
                        .iter()
                        .cloned()
                        .map(|mut file| {
                            file.statistics = file.statistics.as_deref().map(|s| Arc::new(loosen(s)));
                            file
                        })
                        .collect();
                    let fresh = FileGroup::new(files);
                    // `None`: the group's own statistics.
                    match group.file_statistics(None) {
                        Some(s) => fresh.with_statistics(Arc::new(loosen(s))),
                        None => fresh,
                    }
                })
                .collect();
            let config = FileScanConfigBuilder::from(config.clone())
                .with_statistics(loosen(&config.statistics()))
                .with_file_groups(groups)
                .build();
            Ok(Transformed::yes(DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        "ignis_nan_safe_statistics"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
