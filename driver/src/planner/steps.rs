//! DataFrame-style steps (read -> filter -> group_by -> ...) as a DataFusion
//! DataFrame. Each step's expressions are SQL expression strings; an error
//! names the step.

use datafusion::common::{Column, JoinType};
use datafusion::dataframe::DataFrame;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, SortExpr};
use datafusion::prelude::SessionContext;
use ignis_core::error::{IgnisError, Result};
use ignis_core::job::{JoinHow, Step};

use super::errors::plan_error;
use super::map_batches::Transforms;

pub async fn build(ctx: &SessionContext, steps: &[Step], transforms: &Transforms) -> Result<DataFrame> {
    let Some(Step::Read { table }) = steps.first() else {
        return Err(IgnisError::Job("steps[0]: the first step must be `read`".into()));
    };
    let mut df = ctx.table(table.as_str()).await.map_err(|e| plan_error("steps[0] (read)", e))?;
    for (i, step) in steps.iter().enumerate().skip(1) {
        let place = format!("steps[{i}] ({})", op_name(step));
        df = apply(ctx, df, step, transforms).await.map_err(|e| plan_error(&place, e))?;
        // Type errors surface when the plan is analysed; check each step so the
        // error names the step that caused it.
        df.clone().into_optimized_plan().map_err(|e| plan_error(&place, e))?;
    }
    Ok(df)
}

fn op_name(step: &Step) -> &'static str {
    match step {
        Step::Read { .. } => "read",
        Step::Filter { .. } => "filter",
        Step::Select { .. } => "select",
        Step::WithColumn { .. } => "with_column",
        Step::GroupBy { .. } => "group_by",
        Step::Join { .. } => "join",
        Step::OrderBy { .. } => "order_by",
        Step::Limit { .. } => "limit",
        Step::Distinct {} => "distinct",
        Step::Union { .. } => "union",
        Step::MapBatches { .. } => "map_batches",
    }
}

async fn apply(ctx: &SessionContext, df: DataFrame, step: &Step, transforms: &Transforms) -> DfResult<DataFrame> {
    let parse_all = |df: &DataFrame, exprs: &[String]| -> DfResult<Vec<Expr>> {
        exprs.iter().map(|e| df.parse_sql_expr(e)).collect()
    };
    match step {
        Step::Read { .. } => datafusion::common::plan_err!("`read` is only allowed as the first step"),
        Step::Filter { expr } => {
            let e = df.parse_sql_expr(expr)?;
            df.filter(e)
        }
        Step::Select { exprs } => {
            let e = parse_all(&df, exprs)?;
            df.select(e)
        }
        Step::WithColumn { name, expr } => {
            let e = df.parse_sql_expr(expr)?;
            df.with_column(name, e)
        }
        Step::GroupBy { keys, aggs } => {
            let k = parse_all(&df, keys)?;
            let a = parse_all(&df, aggs)?;
            df.aggregate(k, a)
        }
        Step::Join { table, on, condition, how } => {
            let right = ctx.table(table.as_str()).await?;
            let join_type = join_type(*how);
            match condition {
                Some(cond) => {
                    let joined = df.schema().join(right.schema())?;
                    let e = ctx.parse_sql_expr(cond, &joined)?;
                    df.join_on(right, join_type, [e])
                }
                None => {
                    let (state, left) = df.into_parts();
                    let plan = LogicalPlanBuilder::from(left)
                        .join_using(
                            right.into_unoptimized_plan(),
                            join_type,
                            on.iter().map(Column::from_name).collect(),
                        )?
                        .build()?;
                    Ok(DataFrame::new(state, plan))
                }
            }
        }
        Step::OrderBy { by } => {
            let sorts = by.iter().map(|s| parse_sort(&df, s)).collect::<DfResult<Vec<SortExpr>>>()?;
            df.sort(sorts)
        }
        Step::Limit { n } => df.limit(0, Some(*n)),
        Step::Distinct {} => df.distinct(),
        Step::Union { table } => {
            let other = ctx.table(table.as_str()).await?;
            df.union(other)
        }
        Step::MapBatches { function } => transforms.apply(df, function).await,
    }
}

fn join_type(how: JoinHow) -> JoinType {
    match how {
        JoinHow::Inner => JoinType::Inner,
        JoinHow::Left => JoinType::Left,
        JoinHow::Right => JoinType::Right,
        JoinHow::Full => JoinType::Full,
        JoinHow::Semi => JoinType::LeftSemi,
        JoinHow::Anti => JoinType::LeftAnti,
    }
}

/// `expr [ASC|DESC] [NULLS FIRST|LAST]`, with SQL's defaults (ascending; nulls
/// last when ascending, first when descending).
fn parse_sort(df: &DataFrame, text: &str) -> DfResult<SortExpr> {
    let mut rest = text.trim();
    let mut nulls_first = None;
    let upper = rest.to_ascii_uppercase();
    for (suffix, first) in [(" NULLS FIRST", true), (" NULLS LAST", false)] {
        if upper.ends_with(suffix) {
            nulls_first = Some(first);
            rest = rest[..rest.len() - suffix.len()].trim_end();
            break;
        }
    }
    let upper = rest.to_ascii_uppercase();
    let mut asc = true;
    for (suffix, is_asc) in [(" DESC", false), (" ASC", true)] {
        if upper.ends_with(suffix) {
            asc = is_asc;
            rest = rest[..rest.len() - suffix.len()].trim_end();
            break;
        }
    }
    let expr = df.parse_sql_expr(rest)?;
    Ok(expr.sort(asc, nulls_first.unwrap_or(!asc)))
}
