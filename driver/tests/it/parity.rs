//! Distributed equals single node: queries whose plans have every kind of
//! exchange (hash shuffles on both join sides, broadcast, merges, windows),
//! run by Ignis across stages and by DataFusion in one process.

use std::path::Path;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::CsvReadOptions;
use ignis_core::job::{JobSpec, Step};
use ignis_driver::{Driver, DriverConfig, JobResult};

use crate::common::*;

const PRODUCTS: &str = "product,category,weight\n\
laptop,computing,2.1\nphone,mobile,0.2\ntablet,mobile,0.5\nmonitor,computing,4.0\n\
headphones,audio,0.3\nspeaker,audio,1.1\nwatch,mobile,0.1\n";

fn workspace() -> tempfile::TempDir {
    let ws = orders_workspace();
    std::fs::create_dir_all(ws.path().join("products")).unwrap();
    std::fs::write(ws.path().join("products/products.csv"), PRODUCTS).unwrap();
    ws
}

fn tables_toml() -> &'static str {
    "[tables.orders]\nformat = 'csv'\nlocation = 'data/'\n\
     options = { schema = 'order_id BIGINT, country STRING, product STRING, quantity INT, price DOUBLE, ts TIMESTAMP' }\n\
     [tables.products]\nformat = 'csv'\nlocation = 'products/'\n[config]\nshuffle_partitions = 3\n"
}

async fn ignis_rows(ws: &Path, job: &JobSpec) -> Vec<RecordBatch> {
    ignis_run(ws, job).await.0
}

/// The job's rows and the bytes it shuffled.
async fn ignis_run(ws: &Path, job: &JobSpec) -> (Vec<RecordBatch>, u64) {
    let config = DriverConfig {
        shuffle_root: url::Url::from_directory_path(ws.join("_shuffle")).unwrap().to_string(),
        ..DriverConfig::default()
    };
    let outcome = Driver::local(2, config).run(job, &|_| {}).await.unwrap();
    match outcome.result {
        JobResult::Rows { batches, .. } => (batches, outcome.shuffle_bytes),
        other => panic!("expected rows, got {other:?}"),
    }
}

/// A plain single-process DataFusion session over the same files.
async fn single_node_rows(ws: &Path, sql: &str) -> Vec<RecordBatch> {
    single_node_rows_after(ws, &[], sql).await
}

/// Rows of `sql` on single-node DataFusion after `SET key = value` of each option.
async fn single_node_rows_after(ws: &Path, options: &[(&str, &str)], sql: &str) -> Vec<RecordBatch> {
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let ctx = datafusion::prelude::SessionContext::new();
    for (key, value) in options {
        ctx.sql(&format!("SET {key} = '{value}'")).await.unwrap();
    }
    let schema = Schema::new(vec![
        Field::new("order_id", DataType::Int64, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("product", DataType::Utf8, true),
        Field::new("quantity", DataType::Int32, true),
        Field::new("price", DataType::Float64, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
    ]);
    let dir = |name: &str| ws.join(name).to_str().unwrap().to_string() + "/";
    ctx.register_csv("orders", &dir("data"), CsvReadOptions::new().schema(&schema)).await.unwrap();
    ctx.register_csv("products", &dir("products"), CsvReadOptions::new()).await.unwrap();
    if ws.join("extra").exists() {
        ctx.register_csv("extra", &dir("extra"), CsvReadOptions::new()).await.unwrap();
    }
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// Rows as text lines; sorted unless the query's order is part of its answer.
fn lines(batches: &[RecordBatch], ordered: bool) -> Vec<String> {
    let text = pretty_format_batches(batches).unwrap().to_string();
    let mut rows: Vec<String> = text.lines().filter(|l| l.starts_with("| ")).skip(1).map(String::from).collect();
    if !ordered {
        rows.sort();
    }
    rows
}

const QUERIES: &[(&str, bool)] = &[
    ("SELECT count(*) AS n, sum(quantity) AS q, count(DISTINCT product) AS p FROM orders", false),
    ("SELECT country, count(DISTINCT product) AS p, round(avg(price), 6) AS a FROM orders GROUP BY country", false),
    (
        "SELECT o.product, p.category, count(*) AS n FROM orders o JOIN products p ON o.product = p.product \
         GROUP BY o.product, p.category",
        false,
    ),
    (
        "SELECT o.country, p.category, count(*) AS n, sum(p.weight * o.quantity) IS NULL AS no_weight \
         FROM orders o LEFT JOIN products p ON o.product = p.product GROUP BY o.country, p.category",
        false,
    ),
    (
        "SELECT p.product, count(o.order_id) AS n FROM products p FULL OUTER JOIN \
         (SELECT * FROM orders WHERE quantity = 10) o ON o.product = p.product GROUP BY p.product",
        false,
    ),
    (
        "SELECT country, count(*) AS n FROM orders WHERE product IN (SELECT product FROM products \
         WHERE category = 'audio') GROUP BY country",
        false,
    ),
    (
        "SELECT DISTINCT product FROM orders o WHERE NOT EXISTS \
         (SELECT 1 FROM products p WHERE p.product = o.product)",
        false,
    ),
    ("SELECT order_id, price, country FROM orders ORDER BY price DESC, order_id LIMIT 7", true),
    (
        "SELECT country, product, n, rank() OVER (PARTITION BY country ORDER BY n DESC, product) AS r FROM \
         (SELECT country, product, count(*) AS n FROM orders GROUP BY country, product) t",
        false,
    ),
    (
        "SELECT country AS name FROM orders WHERE quantity > 8 UNION SELECT product FROM products \
         UNION ALL SELECT category FROM products ORDER BY name",
        true,
    ),
    ("SELECT date_trunc('month', ts) AS m, count(*) AS n FROM orders GROUP BY 1 ORDER BY 1", true),
    ("SELECT * FROM orders WHERE quantity > 100", false),
];

#[tokio::test]
async fn sql_results_match_single_node_datafusion() {
    let ws = workspace();
    for (sql, ordered) in QUERIES {
        let job = JobSpec::parse(&format!("sql = \"{sql}\"\n{}", tables_toml()), "toml", "parity").unwrap();
        let mut job = job;
        job.resolve_paths(ws.path()).unwrap();
        let ours = ignis_rows(ws.path(), &job).await;
        let theirs = single_node_rows(ws.path(), sql).await;
        assert_eq!(lines(&ours, *ordered), lines(&theirs, *ordered), "query: {sql}");
    }
}

#[tokio::test]
async fn every_shuffle_compression_gives_the_same_rows() {
    let ws = workspace();
    let (sql, ordered) = QUERIES[3];
    let theirs = single_node_rows(ws.path(), sql).await;
    // Unset: the default (lz4).
    for compression in
        ["", "shuffle_compression = 'lz4'", "shuffle_compression = 'zstd'", "shuffle_compression = 'none'"]
    {
        let mut job =
            JobSpec::parse(&format!("sql = \"{sql}\"\n{}{compression}\n", tables_toml()), "toml", "parity").unwrap();
        job.resolve_paths(ws.path()).unwrap();
        let ours = ignis_rows(ws.path(), &job).await;
        assert_eq!(lines(&ours, ordered), lines(&theirs, ordered), "{compression}");
    }
}

#[tokio::test]
async fn runtime_filters_narrow_a_join_side_and_can_be_turned_off() {
    let ws = workspace();
    // The HAVING side is small: its stage is gathered, and the stage that
    // aggregates all orders keeps only its products before the shuffle.
    let sql = "SELECT t.product, t.country, t.q FROM \
               (SELECT product, country, sum(quantity) AS q FROM orders GROUP BY product, country) t \
               WHERE t.product IN (SELECT product FROM orders WHERE country = 'US' AND product LIKE 'l%' \
               GROUP BY product HAVING count(*) > 2)";
    let theirs = single_node_rows(ws.path(), sql).await;
    assert!(!lines(&theirs, false).is_empty());
    let mut shuffled = vec![];
    for (setting, filtered) in [("", true), ("runtime_filters = false", false)] {
        let mut job =
            JobSpec::parse(&format!("sql = \"{sql}\"\n{}{setting}\n", tables_toml()), "toml", "parity").unwrap();
        job.resolve_paths(ws.path()).unwrap();
        let graph = Driver::local(2, DriverConfig::default()).explain(&job).await.unwrap();
        let text = graph.display("collect");
        assert_eq!(text.contains("RuntimeFilterExec: product@0 in product@0"), filtered, "{setting}:\n{text}");
        let (ours, bytes) = ignis_run(ws.path(), &job).await;
        assert_eq!(lines(&ours, false), lines(&theirs, false), "{setting}");
        shuffled.push(bytes);
    }
    // Only the laptop groups reach the shuffle.
    assert!(shuffled[0] < shuffled[1], "shuffled bytes with and without runtime filters: {shuffled:?}");
}

#[tokio::test]
async fn session_options_reach_the_planner_and_every_executor() {
    let ws = workspace();
    // `#` is PostgreSQL's bitwise xor (a syntax error in DataFusion's default
    // dialect); `1.5` is a decimal; `to_timestamp` runs in map tasks and
    // answers in the session's time zone, which the reduce side must agree on.
    let sql = "SELECT country, count(*) # 1 AS x, max(to_timestamp(order_id)) AS latest, \
               arrow_typeof(max(to_timestamp(order_id))) AS ty, arrow_typeof(1.5) AS dec \
               FROM orders GROUP BY country";
    let options = [
        ("datafusion.sql_parser.dialect", "PostgreSQL"),
        ("datafusion.sql_parser.parse_float_as_decimal", "true"),
        ("datafusion.execution.time_zone", "America/New_York"),
    ];
    let theirs = single_node_rows_after(ws.path(), &options, sql).await;
    let set: String = options.iter().map(|(k, v)| format!("\"{k}\" = \"{v}\"\n")).collect();
    let mut job =
        JobSpec::parse(&format!("sql = \"{sql}\"\n{}[config.options]\n{set}", tables_toml()), "toml", "options")
            .unwrap();
    job.resolve_paths(ws.path()).unwrap();
    let (ours, shuffled) = ignis_run(ws.path(), &job).await;
    assert!(shuffled > 0, "the aggregate is split by a shuffle");
    let ours = lines(&ours, false);
    assert_eq!(ours, lines(&theirs, false));
    assert!(
        ours.iter().all(|row| row.contains("Timestamp(ns, \"America/New_York\")") && row.contains("Decimal128(2, 1)")),
        "{ours:?}"
    );

    // Without the dialect, `#` does not parse.
    let plain = JobSpec::parse(&format!("sql = \"{sql}\"\n{}", tables_toml()), "toml", "options").unwrap();
    let err = Driver::local(2, DriverConfig::default()).run(&plain, &|_| {}).await.unwrap_err().to_string();
    assert!(err.contains("sql: SQL error: ParserError"), "{err}");
}

#[tokio::test]
async fn every_step_kind_matches_the_same_query_in_sql() {
    let ws = workspace();
    let steps = r#"
[[steps]]
op = "read"
table = "orders"
[[steps]]
op = "filter"
expr = "quantity >= 3"
[[steps]]
op = "with_column"
name = "total"
expr = "price * quantity"
[[steps]]
op = "join"
table = "products"
on = ["product"]
how = "left"
[[steps]]
op = "select"
exprs = ["country", "coalesce(category, 'other') AS category", "total"]
[[steps]]
op = "union"
table = "extra"
[[steps]]
op = "group_by"
keys = ["country", "category"]
aggs = ["count(*) AS n", "round(sum(total), 2) AS revenue"]
[[steps]]
op = "distinct"
[[steps]]
op = "order_by"
by = ["revenue DESC", "country", "category NULLS FIRST"]
[[steps]]
op = "limit"
n = 15
"#;
    let extra = "[tables.extra]\nformat = 'csv'\nlocation = 'extra/'\n";
    std::fs::create_dir_all(ws.path().join("extra")).unwrap();
    std::fs::write(ws.path().join("extra/extra.csv"), "country,category,total\nUS,audio,99.5\nZZ,mobile,1.25\n")
        .unwrap();
    let mut job = JobSpec::parse(&format!("{steps}\n{extra}{}", tables_toml()), "toml", "steps").unwrap();
    job.resolve_paths(ws.path()).unwrap();
    assert_eq!(job.steps.as_ref().map(Vec::len), Some(10));
    assert!(matches!(job.steps.as_ref().unwrap()[3], Step::Join { .. }));
    let ours = ignis_rows(ws.path(), &job).await;

    let sql = "SELECT DISTINCT country, category, count(*) AS n, round(sum(total), 2) AS revenue FROM ( \
        SELECT country, coalesce(category, 'other') AS category, price * quantity AS total \
        FROM orders LEFT JOIN products USING (product) WHERE quantity >= 3 \
        UNION ALL SELECT country, category, total FROM extra) t \
        GROUP BY country, category ORDER BY revenue DESC, country, category NULLS FIRST LIMIT 15";
    let theirs = single_node_rows(ws.path(), sql).await;
    assert_eq!(lines(&ours, true), lines(&theirs, true));
    assert_eq!(lines(&ours, true).len(), 15);
}
