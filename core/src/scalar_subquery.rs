//! A scalar subquery that returns more than one row is an error.
//!
//! Ignis plans uncorrelated scalar subqueries as joins (see
//! [`crate::session`]): DataFusion's `ScalarSubqueryExec` hands its result
//! to expressions through in-process state that cannot reach another stage.
//! The join alone would repeat the outer rows once per subquery row, where
//! SQL (and single-node DataFusion) fails with "Scalar subquery returned more
//! than one row". [`SingleRowSubqueries`] puts the check into the subquery
//! itself: unless its plan gives at most one row by construction, it becomes
//! `SELECT scalar_subquery_row(count(*), first_value(v)) FROM (subquery)`,
//! one row that fails to evaluate when the subquery had more.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result, exec_err};
use datafusion::functions_aggregate::expr_fn::{count, first_value};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Subquery, Volatility, lit,
};
use datafusion::optimizer::AnalyzerRule;

/// The function that fails when a scalar subquery gave more than one row.
pub const ROW_CHECK: &str = "scalar_subquery_row";

#[derive(Debug, Default)]
pub struct SingleRowSubqueries;

impl AnalyzerRule for SingleRowSubqueries {
    fn name(&self) -> &str {
        "ignis_single_row_subqueries"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            node.map_expressions(|expr| {
                expr.transform_up(|e| match e {
                    Expr::ScalarSubquery(subquery)
                        if subquery.outer_ref_columns.is_empty() && !at_most_one_row(&subquery.subquery) =>
                    {
                        let checked = checked(subquery.subquery.as_ref().clone())?;
                        Ok(Transformed::yes(Expr::ScalarSubquery(Subquery { subquery: Arc::new(checked), ..subquery })))
                    }
                    other => Ok(Transformed::no(other)),
                })
            })
        })
        .map(|t| t.data)
    }
}

/// Whether a plan gives at most one row whatever its input: an aggregate
/// without groups, `LIMIT 1` (or 0), one row of values, or such a plan under
/// projections, filters, sorts and aliases.
fn at_most_one_row(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Aggregate(a) => a.group_expr.is_empty(),
        LogicalPlan::Limit(limit) => {
            matches!(limit.get_fetch_type(), Ok(datafusion::logical_expr::logical_plan::FetchType::Literal(Some(n))) if n <= 1)
                || at_most_one_row(&limit.input)
        }
        LogicalPlan::Values(values) => values.values.len() <= 1,
        LogicalPlan::EmptyRelation(_) => true,
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::Sort(_) | LogicalPlan::SubqueryAlias(_) => {
            plan.inputs().first().is_some_and(|input| at_most_one_row(input))
        }
        _ => false,
    }
}

/// The subquery as one row: its only value, checked to be the only one.
fn checked(plan: LogicalPlan) -> Result<LogicalPlan> {
    let (qualifier, field) = plan.schema().qualified_field(0);
    let name = field.name().clone();
    let value = Expr::Column(Column::new(qualifier.cloned(), &name));
    let check = Arc::new(ScalarUDF::new_from_impl(ScalarSubqueryRow::default()));
    LogicalPlanBuilder::from(plan)
        .aggregate(Vec::<Expr>::new(), vec![count(lit(1)).alias("rows"), first_value(value, vec![]).alias("value")])?
        .project(vec![
            check
                .call(vec![Expr::Column(Column::from_name("rows")), Expr::Column(Column::from_name("value"))])
                .alias(name),
        ])?
        .build()
}

/// `scalar_subquery_row(rows, value)`: `value`, or an error when `rows` > 1.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ScalarSubqueryRow {
    signature: Signature,
}

impl Default for ScalarSubqueryRow {
    fn default() -> Self {
        Self { signature: Signature::any(2, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for ScalarSubqueryRow {
    fn name(&self) -> &str {
        ROW_CHECK
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[1].clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [rows, value] = args.args.as_slice() else {
            return exec_err!("{ROW_CHECK} takes a row count and a value");
        };
        let many = match rows {
            ColumnarValue::Scalar(s) => matches!(s, datafusion::common::ScalarValue::Int64(Some(n)) if *n > 1),
            ColumnarValue::Array(a) => match a.as_primitive_opt::<Int64Type>() {
                Some(counts) => counts.iter().any(|n| n.is_some_and(|n| n > 1)),
                None => return exec_err!("{ROW_CHECK}: the row count is not an Int64 but {}", a.data_type()),
            },
        };
        if many {
            return exec_err!("Scalar subquery returned more than one row");
        }
        Ok(value.clone())
    }
}
