//! Which SQL statements a job may hold: queries, and what defines names for
//! them. A job's data comes in through `tables` and leaves through `output`,
//! where the driver checks every location against the tenant's storage
//! policy; DDL that names a location (`CREATE EXTERNAL TABLE`), writes
//! (`COPY`, `INSERT`), runs a query while planning (`CREATE TABLE ... AS
//! SELECT`) or changes the session (`SET`) would go around those checks, so
//! it is refused before anything is planned. The same rule holds in local
//! mode: one rule, no surprises.

use std::collections::VecDeque;
use std::ops::ControlFlow;

use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{self, Expr, SetExpr};
use ignis_core::error::{IgnisError, Result};

/// Rows a `CREATE TABLE name AS VALUES` may hold.
pub const MAX_VALUES_ROWS: usize = 10_000;

/// Refuse any statement other than a query, `CREATE [TEMP] VIEW`, or `CREATE
/// TABLE name AS VALUES (...)` of at most [`MAX_VALUES_ROWS`] rows without
/// subqueries. The error names the statement (by position and keyword).
pub fn check(statements: &VecDeque<Statement>) -> Result<()> {
    for (i, statement) in statements.iter().enumerate() {
        let refused = |why: String| {
            IgnisError::Plan(format!("sql statement {} ({}): {why}", i + 1, keywords(&statement.to_string())))
        };
        let ast = match statement {
            Statement::Statement(ast) => ast.as_ref(),
            Statement::Explain(_) => {
                return Err(refused("EXPLAIN is not run as a job; use `ignis explain` or POST /v1/explain".into()));
            }
            _ => return Err(refused(NOT_A_QUERY.into())),
        };
        match ast {
            ast::Statement::Query(_) => {}
            ast::Statement::CreateView(view) if !view.materialized => {}
            ast::Statement::CreateTable(table) => check_create_table(table).map_err(refused)?,
            ast::Statement::Explain { .. } | ast::Statement::ExplainTable { .. } => {
                return Err(refused("EXPLAIN is not run as a job; use `ignis explain` or POST /v1/explain".into()));
            }
            ast::Statement::Set(_) => return Err(refused(SET_IS_CONFIG.into())),
            _ => return Err(refused(NOT_A_QUERY.into())),
        }
    }
    Ok(())
}

const SET_IS_CONFIG: &str = "a job's SQL does not change its session; set the SQL dialect, parser options and time \
                             zone under `config.options` (e.g. \"datafusion.sql_parser.dialect\" = \"postgresql\"), \
                             rows per batch with `config.batch_size`, partitions with `config.shuffle_partitions`; \
                             other inputs are declared under `tables`";
const NOT_A_QUERY: &str = "a job's SQL may hold queries, WITH, CREATE [TEMP] VIEW and CREATE TABLE name AS VALUES \
                           (...) only; declare inputs under `tables` and write results with `output` (\
                           [output.write])";

/// `CREATE TABLE name [(columns)] AS VALUES (...)`, literal rows only.
fn check_create_table(table: &ast::CreateTable) -> std::result::Result<(), String> {
    let values = table.query.as_ref().and_then(|q| match q.body.as_ref() {
        SetExpr::Values(values) => Some(values),
        _ => None,
    });
    let Some(values) = values else {
        return Err("only CREATE TABLE name AS VALUES (...) is allowed; for a query, use CREATE VIEW name AS \
                    SELECT ...; declare inputs under `tables` and write results with `output`"
            .into());
    };
    if values.rows.len() > MAX_VALUES_ROWS {
        return Err(format!(
            "{} rows in VALUES; at most {MAX_VALUES_ROWS} are allowed (put larger data in a table under `tables`)",
            values.rows.len()
        ));
    }
    let subquery = ast::visit_expressions(&values.rows, |e: &Expr| match e {
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    if subquery.is_break() {
        return Err("VALUES rows must be literals; a subquery would run while the job is planned".into());
    }
    Ok(())
}

/// The leading keywords of a statement's SQL (`CREATE EXTERNAL TABLE`, `COPY`, `SET`).
fn keywords(sql: &str) -> String {
    let words: Vec<&str> =
        sql.split_whitespace().take_while(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == '_')).take(3).collect();
    if words.is_empty() { "statement".into() } else { words.join(" ") }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::DFParser;

    use super::*;

    fn verdict(sql: &str) -> std::result::Result<(), String> {
        check(&DFParser::parse_sql(sql).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn queries_views_and_literal_tables_pass() {
        for sql in [
            "SELECT 1",
            "WITH a AS (SELECT 1 AS x) SELECT * FROM a",
            "CREATE VIEW v AS SELECT 1; SELECT * FROM v",
            "CREATE TEMP VIEW v AS SELECT 1; SELECT * FROM v",
            "CREATE TABLE t(a INT, s VARCHAR) AS VALUES (1, 'x'), (NULL, 'y'); SELECT * FROM t",
            "CREATE TABLE t(ts TIMESTAMP) AS VALUES ('2026-01-01T10:00:00'::TIMESTAMP); SELECT * FROM t",
        ] {
            assert_eq!(verdict(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn everything_else_is_refused_by_name() {
        for (sql, named) in [
            (
                "CREATE EXTERNAL TABLE f (l VARCHAR) STORED AS CSV LOCATION '/etc/passwd'; SELECT * FROM f",
                "CREATE EXTERNAL TABLE",
            ),
            ("CREATE TABLE t AS SELECT * FROM orders; SELECT 1", "CREATE TABLE"),
            ("CREATE TABLE t(a INT); SELECT 1", "CREATE TABLE"),
            ("CREATE TABLE t(a INT) AS VALUES ((SELECT max(x) FROM o)); SELECT 1", "CREATE TABLE"),
            ("COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
            ("INSERT INTO t VALUES (1)", "INSERT INTO"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
            ("DROP TABLE t", "DROP TABLE"),
            ("EXPLAIN ANALYZE SELECT 1", "EXPLAIN"),
        ] {
            let err = verdict(sql).expect_err(sql);
            assert!(err.contains(named), "{sql}: {err}");
        }
        let err = verdict("SELECT 1; COPY (SELECT 1) TO '/tmp/x.csv'").unwrap_err();
        assert!(err.contains("statement 2") && err.contains("output"), "{err}");
        let err = verdict("SET datafusion.sql_parser.dialect = 'postgresql'; SELECT 1").unwrap_err();
        assert!(err.contains("`config.options`"), "points to the job setting: {err}");
    }
}
