//! Spark Connect expressions as DataFusion expressions: columns, literals,
//! operators, functions by their Spark names, casts, `when`, `expr("...")`,
//! window functions; and the column names Spark gives unaliased expressions.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::expr::{ScalarFunction, WindowFunction};
use datafusion::logical_expr::{
    Expr, ExprFunctionExt, ExprSchemable, Operator, SortExpr, WindowFrame, WindowFrameBound, WindowFrameUnits,
    WindowFunctionDefinition, binary_expr, cast, lit,
};
use datafusion::prelude::SessionContext;
use ignis_core::error::{IgnisError, Result};

use super::proto::spark::Expression;
use super::proto::spark::expression::{self as ex, ExprType};
use super::types;
use crate::planner::plan_error;

/// Turns expressions of one relation's input into DataFusion's.
pub struct ExprPlanner<'a> {
    pub ctx: &'a SessionContext,
    pub input: &'a DataFrame,
}

impl ExprPlanner<'_> {
    fn schema(&self) -> &DFSchema {
        self.input.schema()
    }

    /// An expression, named as Spark names it when it is not a plain column.
    pub fn named(&self, e: &Expression) -> Result<Expr> {
        let planned = self.expr(e)?;
        Ok(match (&e.expr_type, &planned) {
            (Some(ExprType::Alias(_)), _) | (_, Expr::Column(_)) => planned,
            _ => planned.alias(spark_name(e)),
        })
    }

    /// Expressions of a select list, `*` expanded.
    pub fn select_list(&self, exprs: &[Expression]) -> Result<Vec<Expr>> {
        let mut out = Vec::new();
        for e in exprs {
            match &e.expr_type {
                Some(ExprType::UnresolvedStar(star)) => out.extend(self.star(star.unparsed_target.as_deref())?),
                _ => out.push(self.named(e)?),
            }
        }
        Ok(out)
    }

    fn star(&self, target: Option<&str>) -> Result<Vec<Expr>> {
        let qualifier = target.map(|t| t.trim_end_matches(".*").trim_end_matches('*').trim_end_matches('.'));
        let cols: Vec<Expr> = self
            .schema()
            .iter()
            .filter(|(q, _)| qualifier.is_none_or(|want| q.is_some_and(|q| q.table() == want)))
            .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
            .collect();
        if cols.is_empty() && qualifier.is_some() {
            return Err(analysis(format!(
                "cannot resolve '{}.*': no such relation alias",
                qualifier.unwrap_or_default()
            )));
        }
        Ok(cols)
    }

    pub fn expr(&self, e: &Expression) -> Result<Expr> {
        let Some(kind) = &e.expr_type else {
            return Err(unsupported("this kind of expression (named arguments, subqueries, update_fields ...)"));
        };
        match kind {
            ExprType::Literal(l) => Ok(lit(types::literal(l)?)),
            ExprType::UnresolvedAttribute(a) => self.column(&a.unparsed_identifier, a.plan_id),
            ExprType::UnresolvedFunction(f) => self.function(&f.function_name, &f.arguments, f.is_distinct),
            ExprType::CallFunction(f) => self.function(&f.function_name, &f.arguments, false),
            ExprType::ExpressionString(s) => self
                .input
                .parse_sql_expr(&s.expression)
                .map_err(|err| plan_error(&format!("expr(\"{}\")", s.expression), err)),
            ExprType::UnresolvedStar(_) => Err(unsupported("'*' outside a select list")),
            ExprType::Alias(a) => {
                let inner = a.expr.as_deref().ok_or_else(|| unsupported("an alias without expression"))?;
                let name = a.name.first().ok_or_else(|| unsupported("an alias without name"))?;
                Ok(self.expr(inner)?.alias(name))
            }
            ExprType::Cast(c) => {
                let inner = c.expr.as_deref().ok_or_else(|| unsupported("a cast without expression"))?;
                let to = match &c.cast_to_type {
                    Some(ex::cast::CastToType::Type(t)) => types::from_spark(t)?,
                    Some(ex::cast::CastToType::TypeStr(s)) => types::parse_type_name(s)?,
                    None => return Err(unsupported("a cast without type")),
                };
                Ok(cast(self.expr(inner)?, to))
            }
            ExprType::UnresolvedRegex(r) => self.column(r.col_name.trim_matches('`'), r.plan_id),
            ExprType::SortOrder(_) => Err(unsupported("a sort order outside orderBy/sort/Window.orderBy")),
            ExprType::Window(w) => self.window(w),
            ExprType::UnresolvedExtractValue(x) => {
                let child = x.child.as_deref().ok_or_else(|| unsupported("getItem without a column"))?;
                let key = x.extraction.as_deref().ok_or_else(|| unsupported("getItem without a key"))?;
                let (child, key) = (self.expr(child)?, self.expr(key)?);
                let func = match child.get_type(self.schema()).map_err(|e| plan_error("getItem", e))? {
                    DataType::Struct(_) => "get_field",
                    DataType::Map(_, _) => "map_extract",
                    _ => "array_element",
                };
                // Spark's array index is 0-based; DataFusion's 1-based.
                let key = if func == "array_element" { key + lit(1i64) } else { key };
                let call = self.scalar(func, vec![child, key])?;
                Ok(if func == "map_extract" { self.scalar("array_element", vec![call, lit(1i64)])? } else { call })
            }
            ExprType::LambdaFunction(_) => Err(unsupported("lambda functions (higher-order functions)")),
            ExprType::CommonInlineUserDefinedFunction(f) => Err(IgnisError::Plan(format!(
                "the Python UDF '{}' cannot run on Ignis: Python functions do not travel to executors; write it as \
                 a WebAssembly UDF (udf-sdk), upload it, and call it with F.call_function(name, ...)",
                f.function_name
            ))),
        }
    }

    /// A column by its (possibly qualified, possibly back-quoted) name; a
    /// `df["c"]` reference carries the id of the DataFrame it came from.
    fn column(&self, identifier: &str, plan_id: Option<i64>) -> Result<Expr> {
        let parts = split_identifier(identifier);
        let Some((name, qualifier)) = parts.split_last() else { return Err(analysis("an empty column name".into())) };
        if let Some(id) = plan_id
            && qualifier.is_empty()
        {
            let alias = plan_alias(id);
            if self.schema().iter().any(|(q, f)| q.is_some_and(|q| q.table() == alias) && f.name() == name) {
                return Ok(Expr::Column(Column::new(Some(alias), name)));
            }
        }
        let qualifier = (!qualifier.is_empty()).then(|| qualifier.join("."));
        // Spark resolves names case-insensitively; an exact match wins.
        let candidates = |exact: bool| -> Vec<Column> {
            self.schema()
                .iter()
                .filter(|(_, f)| if exact { f.name() == name } else { f.name().eq_ignore_ascii_case(name) })
                .filter(|(q, _)| match &qualifier {
                    None => true,
                    Some(want) => q.is_some_and(|q| {
                        q.to_string().eq_ignore_ascii_case(want) || q.table().eq_ignore_ascii_case(want)
                    }),
                })
                .map(|(q, f)| Column::new(q.cloned(), f.name()))
                .collect()
        };
        let mut matches = candidates(true);
        if matches.is_empty() {
            matches = candidates(false);
        }
        match matches.len() {
            1 => Ok(Expr::Column(matches.remove(0))),
            0 => Err(unresolved_column(identifier, self.schema())),
            n => Err(analysis(format!(
                "[AMBIGUOUS_REFERENCE] Reference `{identifier}` is ambiguous: {n} columns have that name; give the \
                 DataFrames aliases (df.alias(\"a\")) and name it \"a.{name}\""
            ))),
        }
    }

    fn args(&self, args: &[Expression]) -> Result<Vec<Expr>> {
        args.iter()
            .map(|a| match &a.expr_type {
                // count(*) and friends
                Some(ExprType::UnresolvedStar(_)) => Ok(lit(1i64)),
                _ => self.expr(a),
            })
            .collect()
    }

    fn function(&self, name: &str, args: &[Expression], distinct: bool) -> Result<Expr> {
        let mut a = self.args(args)?;
        let arity = |n: usize| -> Result<()> {
            if a.len() == n {
                Ok(())
            } else {
                Err(analysis(format!("function {name} takes {n} arguments, not {}", a.len())))
            }
        };
        let binary = |op: Operator, a: &mut Vec<Expr>| -> Result<Expr> {
            if a.len() != 2 {
                return Err(analysis(format!("operator {name} takes 2 operands, not {}", a.len())));
            }
            let r = a.pop().unwrap_or_else(|| lit(ScalarValue::Null));
            let l = a.pop().unwrap_or_else(|| lit(ScalarValue::Null));
            Ok(binary_expr(l, op, r))
        };
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "==" | "=" => binary(Operator::Eq, &mut a),
            "!=" | "<>" => binary(Operator::NotEq, &mut a),
            "<" => binary(Operator::Lt, &mut a),
            "<=" => binary(Operator::LtEq, &mut a),
            ">" => binary(Operator::Gt, &mut a),
            ">=" => binary(Operator::GtEq, &mut a),
            "<=>" => binary(Operator::IsNotDistinctFrom, &mut a),
            "+" => binary(Operator::Plus, &mut a),
            "-" => binary(Operator::Minus, &mut a),
            "*" => binary(Operator::Multiply, &mut a),
            "%" | "mod" => binary(Operator::Modulo, &mut a),
            "and" => binary(Operator::And, &mut a),
            "or" => binary(Operator::Or, &mut a),
            "&" | "bitwiseand" => binary(Operator::BitwiseAnd, &mut a),
            "|" | "bitwiseor" => binary(Operator::BitwiseOr, &mut a),
            "^" | "bitwisexor" => binary(Operator::BitwiseXor, &mut a),
            // Spark's `/` is always fractional.
            "/" => {
                arity(2)?;
                let r = cast(a.pop().unwrap_or_default(), DataType::Float64);
                let l = cast(a.pop().unwrap_or_default(), DataType::Float64);
                Ok(binary_expr(l, Operator::Divide, r))
            }
            "div" => {
                arity(2)?;
                let r = cast(a.pop().unwrap_or_default(), DataType::Int64);
                let l = cast(a.pop().unwrap_or_default(), DataType::Int64);
                Ok(binary_expr(l, Operator::Divide, r))
            }
            "not" | "!" => {
                arity(1)?;
                Ok(!a.remove(0))
            }
            "negative" | "-u" => {
                arity(1)?;
                Ok(-a.remove(0))
            }
            "positive" => {
                arity(1)?;
                Ok(a.remove(0))
            }
            "isnull" => {
                arity(1)?;
                Ok(a.remove(0).is_null())
            }
            "isnotnull" => {
                arity(1)?;
                Ok(a.remove(0).is_not_null())
            }
            "in" => {
                if a.is_empty() {
                    return Err(analysis("isin needs a column".into()));
                }
                let first = a.remove(0);
                Ok(first.in_list(a, false))
            }
            "like" | "ilike" | "rlike" | "regexp" | "regexp_like" => {
                arity(2)?;
                let pattern = a.pop().unwrap_or_default();
                let value = a.pop().unwrap_or_default();
                Ok(match lower.as_str() {
                    "like" => value.like(pattern),
                    "ilike" => value.ilike(pattern),
                    _ => binary_expr(value, Operator::RegexMatch, pattern),
                })
            }
            "startswith" => self.scalar("starts_with", a),
            "endswith" => self.scalar("ends_with", a),
            "contains" => self.scalar("strpos", a).map(|e| e.gt(lit(0i64))),
            "when" => self.case_when(a),
            "between" => {
                arity(3)?;
                let hi = a.pop().unwrap_or_default();
                let lo = a.pop().unwrap_or_default();
                let v = a.pop().unwrap_or_default();
                Ok(v.between(lo, hi))
            }
            "count" if distinct => self.aggregate("count", a, true),
            "countdistinct" | "count_distinct" => self.aggregate("count", a, true),
            "sumdistinct" | "sum_distinct" => self.aggregate("sum", a, true),
            "collect_set" => self.aggregate("array_agg", a, true),
            "log" if a.len() == 1 => self.scalar("ln", a),
            "log" => self.scalar("log", a),
            "regexp_replace" if a.len() == 3 => {
                // Spark replaces every match.
                a.push(lit("g"));
                self.scalar("regexp_replace", a)
            }
            "isnan" => {
                arity(1)?;
                self.scalar("isnan", a)
            }
            "nvl" | "ifnull" => self.scalar("coalesce", a),
            "size" | "array_size" => self.scalar("cardinality", a).map(|e| cast(e, DataType::Int32)),
            "ceil" | "ceiling" | "floor" if a.len() == 1 => {
                let f = if lower == "floor" { "floor" } else { "ceil" };
                self.scalar(f, a).map(|e| cast(e, DataType::Int64))
            }
            "year" | "month" | "dayofmonth" | "day" | "hour" | "minute" | "second" | "quarter" | "dayofweek"
            | "dayofyear" | "weekofyear" => {
                arity(1)?;
                let part = match lower.as_str() {
                    "dayofmonth" => "day",
                    "dayofweek" => "dow",
                    "dayofyear" => "doy",
                    "weekofyear" => "week",
                    other => other,
                };
                let value = self.scalar("date_part", vec![lit(part), a.remove(0)])?;
                // Spark's day of week counts from Sunday = 1.
                let value = if lower == "dayofweek" { value + lit(1.0) } else { value };
                Ok(cast(value, DataType::Int32))
            }
            "datediff" | "date_diff" => {
                arity(2)?;
                let start = days(a.pop().unwrap_or_default());
                let end = days(a.pop().unwrap_or_default());
                Ok(end - start)
            }
            "date_add" | "date_sub" | "dateadd" => {
                arity(2)?;
                let n = cast(a.pop().unwrap_or_default(), DataType::Int32);
                let d = days(a.pop().unwrap_or_default());
                let shifted = if lower == "date_sub" { d - n } else { d + n };
                Ok(cast(shifted, DataType::Date32))
            }
            "pmod" => {
                arity(2)?;
                let b = a.pop().unwrap_or_default();
                let x = a.pop().unwrap_or_default();
                Ok(((x % b.clone()) + b.clone()) % b)
            }
            "log1p" => {
                arity(1)?;
                self.scalar("ln", vec![lit(1.0) + a.remove(0)])
            }
            "expm1" => {
                arity(1)?;
                self.scalar("exp", a).map(|e| e - lit(1.0))
            }
            "weekday" => {
                arity(1)?;
                // Spark: Monday = 0; DataFusion's dow: Sunday = 0.
                let dow = self.scalar("date_part", vec![lit("dow"), a.remove(0)])?;
                Ok(cast((dow + lit(6.0)) % lit(7.0), DataType::Int32))
            }
            _ => self.by_name(&lower, name, a, distinct),
        }
    }

    fn case_when(&self, mut a: Vec<Expr>) -> Result<Expr> {
        if a.len() < 2 {
            return Err(analysis("when() takes a condition and a value".into()));
        }
        let otherwise = if a.len() % 2 == 1 { a.pop() } else { None };
        let mut pairs = a.chunks(2);
        let first = pairs.next().unwrap_or_default();
        let mut builder = datafusion::logical_expr::when(first[0].clone(), first[1].clone());
        for pair in pairs {
            builder = builder.when(pair[0].clone(), pair[1].clone());
        }
        let built = match otherwise {
            Some(e) => builder.otherwise(e),
            None => builder.end(),
        };
        built.map_err(|e| plan_error("when", e))
    }

    /// A function of the session by name: Spark's name, or DataFusion's
    /// where Spark's differs.
    fn by_name(&self, lower: &str, original: &str, args: Vec<Expr>, distinct: bool) -> Result<Expr> {
        let name = spark_alias(lower);
        let state = self.ctx.state();
        if let Some(f) = state.aggregate_functions().get(name) {
            let call = f.call(args);
            return if distinct { call.distinct().build().map_err(|e| plan_error(original, e)) } else { Ok(call) };
        }
        if let Some(f) = state.scalar_functions().get(name) {
            return Ok(Expr::ScalarFunction(ScalarFunction::new_udf(f.clone(), args)));
        }
        if let Some(f) = state.window_functions().get(name) {
            return Ok(Expr::from(WindowFunction::new(WindowFunctionDefinition::WindowUDF(f.clone()), args)));
        }
        Err(IgnisError::Plan(format!(
            "[UNRESOLVED_ROUTINE] Cannot resolve routine `{original}`: Ignis has no function of that name (the README \
             lists the pyspark.sql.functions it supports; uploaded Wasm UDFs are called by their names)"
        )))
    }

    fn scalar(&self, name: &str, args: Vec<Expr>) -> Result<Expr> {
        self.by_name(name, name, args, false)
    }

    fn aggregate(&self, name: &str, args: Vec<Expr>, distinct: bool) -> Result<Expr> {
        self.by_name(name, name, args, distinct)
    }

    fn window(&self, w: &ex::Window) -> Result<Expr> {
        let function = w.window_function.as_deref().ok_or_else(|| unsupported("a window without function"))?;
        let planned = self.expr(function)?;
        let (def, args, distinct) = match planned {
            Expr::AggregateFunction(agg) => {
                (WindowFunctionDefinition::AggregateUDF(agg.func.clone()), agg.params.args, agg.params.distinct)
            }
            Expr::WindowFunction(wf) => (wf.fun.clone(), wf.params.args, false),
            other => return Err(analysis(format!("{other} is not a window or aggregate function"))),
        };
        if distinct {
            return Err(unsupported("DISTINCT aggregates over a window"));
        }
        let partition = w.partition_spec.iter().map(|e| self.expr(e)).collect::<Result<Vec<_>>>()?;
        let order = w.order_spec.iter().map(|o| self.sort(o)).collect::<Result<Vec<_>>>()?;
        let mut builder = Expr::from(WindowFunction::new(def, args)).partition_by(partition);
        if !order.is_empty() {
            // Without ORDER BY the frame is the whole partition, as in Spark.
            builder = builder.order_by(order);
        }
        if let Some(frame) = &w.frame_spec {
            builder = builder.window_frame(self.frame(frame)?);
        }
        builder.build().map_err(|e| plan_error("window", e))
    }

    fn frame(&self, f: &ex::window::WindowFrame) -> Result<WindowFrame> {
        use ex::window::window_frame::{FrameType, frame_boundary::Boundary};
        let units = match f.frame_type() {
            FrameType::Row => WindowFrameUnits::Rows,
            FrameType::Range => WindowFrameUnits::Range,
            FrameType::Undefined => return Err(unsupported("a window frame without type")),
        };
        let bound = |b: &Option<Box<ex::window::window_frame::FrameBoundary>>,
                     lower: bool|
         -> Result<WindowFrameBound> {
            let unbounded = if lower {
                WindowFrameBound::Preceding(ScalarValue::Null)
            } else {
                WindowFrameBound::Following(ScalarValue::Null)
            };
            Ok(match b.as_ref().and_then(|b| b.boundary.as_ref()) {
                None | Some(Boundary::Unbounded(_)) => unbounded,
                Some(Boundary::CurrentRow(_)) => WindowFrameBound::CurrentRow,
                Some(Boundary::Value(v)) => {
                    let value = match self.expr(v)? {
                        Expr::Literal(v, _) => v,
                        other => return Err(unsupported(&format!("a window frame bound {other}"))),
                    };
                    let offset = value.cast_to(&DataType::Int64).ok().and_then(|v| match v {
                        ScalarValue::Int64(Some(n)) => Some(n),
                        _ => None,
                    });
                    match offset {
                        Some(0) => WindowFrameBound::CurrentRow,
                        Some(n) if n < 0 => WindowFrameBound::Preceding(ScalarValue::UInt64(Some(n.unsigned_abs()))),
                        Some(n) => WindowFrameBound::Following(ScalarValue::UInt64(Some(n as u64))),
                        None => return Err(unsupported("a non-integer window frame bound")),
                    }
                }
            })
        };
        Ok(WindowFrame::new_bounds(units, bound(&f.lower, true)?, bound(&f.upper, false)?))
    }

    /// A sort order (`col.desc()`, `asc_nulls_last()`): Spark puts nulls first
    /// when ascending and last when descending, unless told.
    pub fn sort(&self, o: &ex::SortOrder) -> Result<SortExpr> {
        use ex::sort_order::{NullOrdering, SortDirection};
        let child = o.child.as_deref().ok_or_else(|| unsupported("a sort order without column"))?;
        let asc = o.direction() != SortDirection::Descending;
        let nulls_first = match o.null_ordering() {
            NullOrdering::SortNullsFirst => true,
            NullOrdering::SortNullsLast => false,
            NullOrdering::SortNullsUnspecified => asc,
        };
        Ok(SortExpr::new(self.expr(child)?, asc, nulls_first))
    }
}

/// A date (or timestamp, or date string) as days since the epoch.
fn days(e: Expr) -> Expr {
    cast(cast(e, DataType::Date32), DataType::Int32)
}

/// Spark's name of a function where DataFusion's differs.
fn spark_alias(lower: &str) -> &str {
    match lower {
        "mean" => "avg",
        "stddev" | "std" => "stddev",
        "variance" => "var_samp",
        "collect_list" => "array_agg",
        "first" => "first_value",
        "last" => "last_value",
        "length" | "char_length" => "character_length",
        "substring" | "substr" => "substr",
        "pow" => "power",
        "sign" | "signum" => "signum",
        "lcase" => "lower",
        "ucase" => "upper",
        "date_format" => "to_char",
        "current_timestamp" | "now" => "now",
        "approx_count_distinct" => "approx_distinct",
        "percentile_approx" | "approx_percentile" => "approx_percentile_cont",
        "array_contains" => "array_has",
        "explode" => "unnest",
        "instr" => "strpos",
        other => other,
    }
}

/// `a.b`, `` `odd name`.c ``: the parts of a column reference.
fn split_identifier(identifier: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = identifier.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' if quoted && chars.peek() == Some(&'`') => {
                current.push('`');
                chars.next();
            }
            '`' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

/// The relation alias Ignis gives a join input whose columns `df["c"]` names.
pub fn plan_alias(plan_id: i64) -> String {
    format!("__ignis_df_{plan_id}")
}

fn unresolved_column(identifier: &str, schema: &DFSchema) -> IgnisError {
    let names: Vec<String> = schema.fields().iter().map(|f| format!("`{}`", f.name())).collect();
    analysis(format!(
        "[UNRESOLVED_COLUMN.WITH_SUGGESTION] A column or function parameter with name `{identifier}` cannot be \
         resolved. Did you mean one of the following? [{}]",
        names.join(", ")
    ))
}

pub fn analysis(message: String) -> IgnisError {
    IgnisError::Plan(message)
}

fn unsupported(what: &str) -> IgnisError {
    IgnisError::Plan(format!("[UNSUPPORTED_FEATURE] Ignis does not support {what} yet"))
}

/// The name Spark gives an expression's column: `(a + 1)`, `count(1)`, `upper(name)`.
pub fn spark_name(e: &Expression) -> String {
    let Some(kind) = &e.expr_type else { return String::new() };
    match kind {
        ExprType::Literal(l) => match types::literal(l) {
            Ok(ScalarValue::Utf8(Some(s))) => s,
            Ok(ScalarValue::Boolean(Some(b))) => b.to_string().to_uppercase(),
            Ok(v) if v.is_null() => "NULL".into(),
            Ok(v) => v.to_string(),
            Err(_) => "?".into(),
        },
        ExprType::UnresolvedAttribute(a) => split_identifier(&a.unparsed_identifier).pop().unwrap_or_default(),
        ExprType::UnresolvedFunction(f) => function_name(&f.function_name, &f.arguments, f.is_distinct),
        ExprType::CallFunction(f) => function_name(&f.function_name, &f.arguments, false),
        ExprType::ExpressionString(s) => s.expression.clone(),
        ExprType::UnresolvedStar(_) => "*".into(),
        ExprType::Alias(a) => a.name.first().cloned().unwrap_or_default(),
        ExprType::Cast(c) => {
            let inner = c.expr.as_deref().map(spark_name).unwrap_or_default();
            let to = match &c.cast_to_type {
                Some(ex::cast::CastToType::TypeStr(s)) => s.to_uppercase(),
                Some(ex::cast::CastToType::Type(t)) => {
                    types::from_spark(t).map(|t| types::sql_name(&t)).unwrap_or_default()
                }
                None => String::new(),
            };
            format!("CAST({inner} AS {to})")
        }
        ExprType::UnresolvedRegex(r) => r.col_name.clone(),
        ExprType::SortOrder(o) => o.child.as_deref().map(spark_name).unwrap_or_default(),
        ExprType::Window(w) => {
            let f = w.window_function.as_deref().map(spark_name).unwrap_or_default();
            format!("{f} OVER (...)")
        }
        ExprType::UnresolvedExtractValue(x) => {
            let child = x.child.as_deref().map(spark_name).unwrap_or_default();
            let key = x.extraction.as_deref().map(spark_name).unwrap_or_default();
            format!("{child}[{key}]")
        }
        ExprType::LambdaFunction(_) => "lambda".into(),
        ExprType::CommonInlineUserDefinedFunction(f) => f.function_name.clone(),
    }
}

fn function_name(name: &str, args: &[Expression], distinct: bool) -> String {
    let parts: Vec<String> = args.iter().map(spark_name).collect();
    let infix = ["==", "!=", "<", "<=", ">", ">=", "<=>", "+", "-", "*", "/", "%", "and", "or", "&", "|", "^"];
    let lower = name.to_ascii_lowercase();
    if infix.contains(&lower.as_str()) && parts.len() == 2 {
        let op = match lower.as_str() {
            "==" => "=",
            "and" => "AND",
            "or" => "OR",
            other => other,
        };
        return format!("({} {op} {})", parts[0], parts[1]);
    }
    match lower.as_str() {
        "not" if parts.len() == 1 => format!("(NOT {})", parts[0]),
        "negative" if parts.len() == 1 => format!("(- {})", parts[0]),
        "isnull" if parts.len() == 1 => format!("({} IS NULL)", parts[0]),
        "isnotnull" if parts.len() == 1 => format!("({} IS NOT NULL)", parts[0]),
        "in" if !parts.is_empty() => format!("({} IN ({}))", parts[0], parts[1..].join(", ")),
        "when" => {
            let mut text = "CASE".to_string();
            for pair in parts.chunks(2) {
                match pair {
                    [c, v] => text.push_str(&format!(" WHEN {c} THEN {v}")),
                    [o] => text.push_str(&format!(" ELSE {o}")),
                    _ => {}
                }
            }
            text + " END"
        }
        _ => {
            let distinct = if distinct { "DISTINCT " } else { "" };
            let name = if lower == "count" && parts.first().is_some_and(|p| p == "*") { "count" } else { name };
            let args = if lower == "count" && parts.first().is_some_and(|p| p == "*") {
                "1".to_string()
            } else {
                parts.join(", ")
            };
            format!("{name}({distinct}{args})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_split_on_unquoted_dots() {
        assert_eq!(split_identifier("a.b"), vec!["a", "b"]);
        assert_eq!(split_identifier("`x.y`.z"), vec!["x.y", "z"]);
        assert_eq!(split_identifier("`a``b`"), vec!["a`b"]);
    }
}
