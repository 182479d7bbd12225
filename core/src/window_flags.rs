//! What datafusion-proto 55 drops from window functions, carried beside them.
//!
//! A window function (`lag`, `lead`, `first_value`, `last_value`,
//! `nth_value`, ...) has two flags its wire form leaves out: `IGNORE NULLS`,
//! and "reversed": the optimiser evaluates `lag(a) OVER (ORDER BY id)` over
//! rows sorted `id DESC` (when another window needs that order) as a
//! reversed `lead`, and a decoded copy without the flag computes `lead` in
//! the wrong direction. So before a stage plan is encoded, every window
//! operator with such a function is wrapped in a [`WindowFlagsExec`] that
//! holds the flags of each of its functions; the wrapper is encoded as an
//! Ignis node, and decoding it rebuilds the window operator with the flags
//! set. The wrapper only exists on the wire.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::WindowFunctionDefinition;
use datafusion::logical_expr::{ReversedUDWF, WindowUDF};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::window::StandardWindowExpr;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec, WindowUDFExpr, create_window_expr};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, WindowExpr};
use serde::{Deserialize, Serialize};

/// The flags of one window function, in the order of its operator's functions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowFlags {
    pub reversed: bool,
    pub ignore_nulls: bool,
}

/// A window operator and the flags of its functions, for encoding only.
#[derive(Debug)]
pub struct WindowFlagsExec {
    input: Arc<dyn ExecutionPlan>,
    flags: Vec<WindowFlags>,
    cache: Arc<PlanProperties>,
}

impl WindowFlagsExec {
    fn new(input: Arc<dyn ExecutionPlan>, flags: Vec<WindowFlags>) -> Self {
        let cache = input.properties().clone();
        Self { input, flags, cache }
    }

    pub fn flags(&self) -> &[WindowFlags] {
        &self.flags
    }
}

impl DisplayAs for WindowFlagsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WindowFlagsExec: {:?}", self.flags)
    }
}

impl ExecutionPlan for WindowFlagsExec {
    crate::unary_plan_methods!("WindowFlagsExec", |this, input| WindowFlagsExec::new(input, this.flags.clone()));

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(&self, _partition: usize, _context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        Err(DataFusionError::Internal("WindowFlagsExec only carries flags to an executor; it does not run".into()))
    }
}

/// The window functions of a window operator, if `node` is one.
pub(crate) fn window_exprs(node: &Arc<dyn ExecutionPlan>) -> Option<&[Arc<dyn WindowExpr>]> {
    match (node.downcast_ref::<BoundedWindowAggExec>(), node.downcast_ref::<WindowAggExec>()) {
        (Some(w), _) => Some(w.window_expr()),
        (None, Some(w)) => Some(w.window_expr()),
        (None, None) => None,
    }
}

/// The flags of a window function: only user-defined window functions (every
/// built-in one but aggregates) have them.
fn flags_of(expr: &Arc<dyn WindowExpr>) -> WindowFlags {
    let Some(standard) = expr.as_any().downcast_ref::<StandardWindowExpr>() else {
        return WindowFlags::default();
    };
    let function = standard.get_standard_func_expr();
    if function.as_any().downcast_ref::<WindowUDFExpr>().is_none() {
        return WindowFlags::default();
    }
    // The flags have no getters; the function's derived Debug shows them.
    let shown = format!("{function:?}");
    WindowFlags { reversed: shown.contains("is_reversed: true"), ignore_nulls: shown.contains("ignore_nulls: true") }
}

/// Wrap every window operator that has a flagged function.
pub fn wrap(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let flags: Vec<WindowFlags> = match window_exprs(&node) {
            Some(exprs) => exprs.iter().map(flags_of).collect(),
            None => return Ok(Transformed::no(node)),
        };
        if flags.iter().all(|f| *f == WindowFlags::default()) {
            return Ok(Transformed::no(node));
        }
        Ok(Transformed::yes(Arc::new(WindowFlagsExec::new(node, flags)) as Arc<dyn ExecutionPlan>))
    })
    .map(|t| t.data)
}

/// The decoded window operator `node` with `flags` set on its functions.
pub fn unwrap(node: &Arc<dyn ExecutionPlan>, flags: &[WindowFlags]) -> Result<Arc<dyn ExecutionPlan>> {
    let rebuild = |exprs: &[Arc<dyn WindowExpr>], schema: &SchemaRef| -> Result<Vec<Arc<dyn WindowExpr>>> {
        if exprs.len() != flags.len() {
            return Err(DataFusionError::Internal(format!(
                "window flags for {} functions on an operator with {}",
                flags.len(),
                exprs.len()
            )));
        }
        exprs.iter().zip(flags).map(|(expr, flags)| with_flags(expr, *flags, schema)).collect()
    };
    if let Some(w) = node.downcast_ref::<BoundedWindowAggExec>() {
        let exprs = rebuild(w.window_expr(), &w.input().schema())?;
        let can_repartition = !w.partition_keys().is_empty();
        Ok(Arc::new(BoundedWindowAggExec::try_new(
            exprs,
            w.input().clone(),
            w.input_order_mode.clone(),
            can_repartition,
        )?))
    } else if let Some(w) = node.downcast_ref::<WindowAggExec>() {
        let exprs = rebuild(w.window_expr(), &w.input().schema())?;
        Ok(Arc::new(WindowAggExec::try_new(exprs, w.input().clone(), !w.partition_keys().is_empty())?))
    } else {
        Err(DataFusionError::Internal(format!("window flags on a {} operator", node.name())))
    }
}

/// A decoded window function (flags unset) with `flags` set.
fn with_flags(expr: &Arc<dyn WindowExpr>, flags: WindowFlags, schema: &SchemaRef) -> Result<Arc<dyn WindowExpr>> {
    if flags == WindowFlags::default() {
        return Ok(expr.clone());
    }
    let function = expr
        .as_any()
        .downcast_ref::<StandardWindowExpr>()
        .and_then(|e| e.get_standard_func_expr().as_any().downcast_ref::<WindowUDFExpr>().cloned())
        .ok_or_else(|| DataFusionError::Internal(format!("window flags on {}", expr.name())))?;
    let build = |fun: Arc<WindowUDF>, order_by: &[_], frame| {
        create_window_expr(
            &WindowFunctionDefinition::WindowUDF(fun),
            expr.name().to_string(),
            function.args(),
            expr.partition_by(),
            order_by,
            frame,
            schema.clone(),
            flags.ignore_nulls,
            false,
            None,
        )
    };
    if !flags.reversed {
        return build(function.fun().clone(), expr.order_by(), expr.get_window_frame().clone());
    }
    // Reversing is how DataFusion sets the flag: build the function it was
    // reversed from (the other direction's function, order and frame), then
    // reverse that.
    let forward = match function.fun().reverse_expr() {
        ReversedUDWF::Reversed(fun) => fun,
        ReversedUDWF::Identical => function.fun().clone(),
        ReversedUDWF::NotSupported => {
            return Err(DataFusionError::Internal(format!("{} is reversed but cannot be", expr.name())));
        }
    };
    let order_by: Vec<_> = expr.order_by().iter().map(|e| e.reverse()).collect();
    let original = build(forward, &order_by, Arc::new(expr.get_window_frame().reverse()))?;
    original
        .get_reverse_expr()
        .ok_or_else(|| DataFusionError::Internal(format!("{} cannot be reversed again", expr.name())))
}
