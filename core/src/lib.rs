//! `ignis-core`: the contract between the Ignis driver and its executors, and the
//! data plane they share.
//!
//! What lives here: ids, the job specification, the versioned task protocol
//! (`TaskRequest` / `TaskResult`), the plan-fragment codec (datafusion-proto plus
//! an extension codec for Ignis's own operators), the shuffle operators
//! ([`shuffle::ShuffleWriterExec`], [`shuffle::ShuffleReaderExec`]) and object
//! store resolution.
//!
//! What does not: scheduling (driver), task execution and output writing
//! (executor), HTTP. Nothing here knows which backend runs a task.

/// The `ExecutionPlan` methods every Ignis leaf operator shares: a name, its
/// cached properties in `self.cache`, no children and no expressions.
#[macro_export]
#[doc(hidden)]
macro_rules! leaf_plan_methods {
    ($name:literal) => {
        fn name(&self) -> &str {
            $name
        }

        fn properties(&self) -> &std::sync::Arc<datafusion::physical_plan::PlanProperties> {
            &self.cache
        }

        fn children(&self) -> Vec<&std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            vec![]
        }

        fn apply_expressions(
            &self,
            _f: &mut dyn FnMut(
                &std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>,
            ) -> datafusion::error::Result<datafusion::common::tree_node::TreeNodeRecursion>,
        ) -> datafusion::error::Result<datafusion::common::tree_node::TreeNodeRecursion> {
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        }

        fn replace_children(
            self: std::sync::Arc<Self>,
            _children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
            _options: datafusion::physical_plan::execution_plan::ReplaceChildrenOptions,
        ) -> datafusion::error::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            Ok(self)
        }

        fn with_new_children(
            self: std::sync::Arc<Self>,
            _children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
        ) -> datafusion::error::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            Ok(self)
        }
    };
}

/// The `ExecutionPlan` methods every Ignis operator with one input shares: a
/// name, its cached properties in `self.cache`, the child in `self.input`, and
/// rebuilding over a new child with `$rebuild` (`$this` the old node, `$input`
/// the new child; it may use `?`).
#[macro_export]
#[doc(hidden)]
macro_rules! unary_plan_methods {
    ($name:literal, |$this:ident, $input:ident| $rebuild:expr) => {
        fn name(&self) -> &str {
            $name
        }

        fn properties(&self) -> &std::sync::Arc<datafusion::physical_plan::PlanProperties> {
            &self.cache
        }

        fn children(&self) -> Vec<&std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            vec![&self.input]
        }

        fn replace_children(
            self: std::sync::Arc<Self>,
            mut children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
            _options: datafusion::physical_plan::execution_plan::ReplaceChildrenOptions,
        ) -> datafusion::error::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            if children.len() != 1 {
                return Err(datafusion::error::DataFusionError::Internal(concat!($name, " takes one child").into()));
            }
            let $input = children.remove(0);
            let $this = self;
            Ok(std::sync::Arc::new($rebuild))
        }

        fn with_new_children(
            self: std::sync::Arc<Self>,
            children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
        ) -> datafusion::error::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            self.replace_children(
                children,
                datafusion::physical_plan::execution_plan::ReplaceChildrenOptions::new(
                    datafusion::physical_plan::execution_plan::ChildrenPropertiesMode::Recompute,
                ),
            )
        }
    };
}

pub mod codec;
pub mod csv;
pub mod error;
pub mod functions;
pub mod hedge;
pub mod ids;
pub mod job;
pub mod joins;
pub mod location;
pub mod map_batches;
pub mod memory;
pub mod plan_nodes;
pub mod protocol;
pub mod receipt;
pub mod runtime_filter;
pub mod scalar_subquery;
pub mod session;
pub mod shuffle;
pub mod statistics;
pub mod store;
pub mod stream;
pub mod window_flags;

pub use error::{ErrorKind, IgnisError, Result};
