//! Bad input: a clear message naming what and where, a non-zero exit, no
//! panic, and no output written.

use std::path::Path;

use crate::common::*;

const TABLE: &str = r#"
[tables.orders]
format = "csv"
location = "data/"
"#;

const WRITE: &str = r#"
[output.write]
format = "parquet"
location = "out/result"
"#;

/// Run a job file with this text and return stderr, asserting the failure is clean.
fn fails(ws: &Path, job: &str) -> String {
    std::fs::write(ws.join("bad.toml"), job).unwrap();
    let out = ignis(&["run", "bad.toml"], ws);
    let err = stderr(&out);
    assert!(!out.status.success(), "expected failure, got success: {}", stdout(&out));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("error: "), "{err}");
    assert!(!ws.join("out/result").exists(), "no output after a failed job");
    err
}

#[test]
fn missing_input_names_the_table_and_path() {
    let ws = orders_workspace();
    let job = format!("sql = 'SELECT * FROM orders'\n{}{WRITE}", TABLE.replace("data/", "no_such_dir/"));
    let err = fails(ws.path(), &job);
    assert!(err.contains("table 'orders'") && err.contains("no_such_dir"), "{err}");
}

#[test]
fn only_the_tables_the_sql_reads_are_opened() {
    let ws = orders_workspace();
    let missing = "\n[tables.Archive]\nformat = \"parquet\"\nlocation = \"no_such_dir/\"\n";
    // A declared table the SQL never reads is never listed, so its missing files do not matter.
    std::fs::write(ws.path().join("ok.toml"), format!("sql = 'SELECT count(*) AS n FROM orders'\n{TABLE}{missing}"))
        .unwrap();
    let out = ignis(&["run", "ok.toml"], ws.path());
    assert!(out.status.success(), "{}", stderr(&out));
    // Read under any spelling SQL folds to its name, or through a view, it is opened and its absence reported.
    for sql in ["SELECT * FROM ARCHIVE", "CREATE VIEW recent AS SELECT * FROM archive; SELECT * FROM recent"] {
        let err = fails(ws.path(), &format!("sql = '{sql}'\n{TABLE}{missing}{WRITE}"));
        assert!(err.contains("table 'Archive'") && err.contains("no_such_dir"), "{sql}: {err}");
    }
}

#[test]
fn bad_sql_reports_the_position() {
    let ws = orders_workspace();
    let err = fails(ws.path(), &format!("sql = \"SELECT product FROM orders WHER country = 'US'\"\n{TABLE}{WRITE}"));
    assert!(err.contains("sql: SQL error: ParserError"), "{err}");
    assert!(err.contains("found: country at Line: 1, Column: 33"), "{err}");

    let err = fails(ws.path(), &format!("sql = 'SELECT product FROM orders WHERE'\n{TABLE}{WRITE}"));
    assert!(err.contains("at the end of the SQL text (Line: 1, Column: 33)"), "{err}");
}

#[test]
fn unknown_column_names_the_column_and_the_valid_ones() {
    let ws = orders_workspace();
    let err = fails(ws.path(), &format!("sql = 'SELECT prodct FROM orders'\n{TABLE}{WRITE}"));
    assert!(err.contains("prodct"), "{err}");
    assert!(err.contains("product"), "the message lists the valid columns: {err}");
}

#[test]
fn wrong_type_in_sql_names_the_types() {
    let ws = orders_workspace();
    let err = fails(ws.path(), &format!("sql = 'SELECT product FROM orders WHERE country + 1 > 2'\n{TABLE}{WRITE}"));
    // DataFusion's own text follows Ignis's place.
    assert!(err.contains("sql: type_coercion"), "{err}");
    assert!(err.contains("Error during planning: Cannot coerce arithmetic expression Utf8 + Int64"), "{err}");
}

#[test]
fn wrong_type_in_a_step_names_the_step() {
    let ws = orders_workspace();
    let job = format!(
        r#"
[[steps]]
op = "read"
table = "orders"

[[steps]]
op = "group_by"
keys = ["product"]
aggs = ["avg(country) AS x"]
{TABLE}{WRITE}"#
    );
    let err = fails(ws.path(), &job);
    assert!(err.contains("steps[1] (group_by)"), "{err}");
    assert!(err.contains("avg") && err.contains("Utf8"), "{err}");
}

#[test]
fn malformed_job_file_names_the_field() {
    let ws = orders_workspace();
    let err = fails(ws.path(), &format!("sql = 'SELECT 1'\n{}", TABLE.replace("\"csv\"", "\"xlsx\"")));
    assert!(err.contains("tables.orders.format"), "{err}");
    assert!(err.contains("xlsx"), "{err}");

    let err = fails(ws.path(), "sql = 'SELECT 1'\n[output.write]\nformat = 'parquet'\n");
    assert!(err.contains("output.write") && err.contains("location"), "{err}");

    let err = fails(ws.path(), "sql = 'SELECT 1\n");
    assert!(err.contains("bad.toml") && err.contains("line 1"), "{err}");

    let err = fails(ws.path(), TABLE);
    assert!(err.contains("missing `sql` or `steps`"), "{err}");

    let err = fails(ws.path(), "sql = 'SELECT 1'\n[config]\ntask_deadline_s = -3\n");
    assert!(err.contains("config.task_deadline_s: -3"), "{err}");
}

#[test]
fn bad_value_in_the_data_fails_once_without_retries() {
    let ws = orders_workspace();
    let data = ws.path().join("data/orders-1.csv");
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("99999999,US,laptop,lots,1.00,2026-01-01T00:00:00\n");
    std::fs::write(&data, text).unwrap();
    let job =
        std::fs::read_to_string(ws.path().join("job.toml")).unwrap().replace("out/us_orders_by_product", "out/result");
    let err = fails(ws.path(), &job);
    assert!(err.contains("lots"), "the message shows the bad value: {err}");
    assert!(!err.contains("retrying"), "a data error is not retried: {err}");
}
