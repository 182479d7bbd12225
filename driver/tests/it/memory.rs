//! Task memory: every task runs under its memory limit (`--task-memory`);
//! sorts and aggregations over it spill to disk and answer as without a
//! limit, an operator that cannot spill fails the job with a message naming
//! it and the limit.

use std::path::Path;

use crate::common::*;

const TABLE: &str = "[tables.orders]\nformat = 'csv'\nlocation = 'big/'\n\
    options = { header = true, schema = 'order_id BIGINT, country STRING, product STRING, quantity INT, price DOUBLE, ts TIMESTAMP' }\n\
    [config]\nshuffle_partitions = 2\n";

fn job(ws: &Path, name: &str, sql: &str, output: &str) -> String {
    let file = format!("{name}.toml");
    std::fs::write(ws.join(&file), format!("name = '{name}'\nsql = \"{sql}\"\n{output}\n{TABLE}")).unwrap();
    file
}

fn run(ws: &Path, job: &str, memory: Option<&str>) -> std::process::Output {
    let mut args = vec!["run", job, "--executors", "2"];
    if let Some(m) = memory {
        args.extend(["--task-memory", m]);
    }
    ignis(&args, ws)
}

#[test]
fn sorts_and_aggregations_spill_under_a_small_limit_and_answer_the_same() {
    let ws = orders_workspace();
    let made = ignis(&["gen-orders", "--out", "big", "--rows", "300000", "--files", "2"], ws.path());
    assert!(made.status.success(), "{}", stderr(&made));

    // A sort written as CSV: the file is the same with and without the limit.
    let sort = |out: &str| format!("[output.write]\nformat = 'csv'\nlocation = '{out}'\nmode = 'overwrite'");
    let sql = "SELECT order_id, product, quantity, price FROM orders ORDER BY price DESC, order_id";
    let unlimited = run(ws.path(), &job(ws.path(), "sort_free", sql, &sort("out/free")), None);
    assert!(unlimited.status.success(), "{}", stderr(&unlimited));
    assert!(!stderr(&unlimited).contains("spilled"), "{}", stderr(&unlimited));
    let limited = run(ws.path(), &job(ws.path(), "sort_small", sql, &sort("out/small")), Some("12m"));
    assert!(limited.status.success(), "{}", stderr(&limited));
    assert!(stderr(&limited).contains("spilled to disk"), "the sort should spill: {}", stderr(&limited));
    let read = |dir: &str| -> Vec<String> {
        data_files(&ws.path().join(dir))
            .iter()
            .map(|f| std::fs::read_to_string(ws.path().join(dir).join(f)).unwrap())
            .collect()
    };
    let (free, small) = (read("out/free"), read("out/small"));
    assert_eq!(free.iter().map(|f| f.lines().count()).sum::<usize>(), 300_000 + free.len());
    assert!(free == small, "the spilled sort wrote other rows");

    // An aggregation with a group per order: spills, and counts every row once.
    let sql = "SELECT count(*) AS groups, sum(c) AS total FROM (SELECT order_id, product, count(*) AS c FROM orders GROUP BY order_id, product)";
    let agg = run(ws.path(), &job(ws.path(), "agg", sql, ""), Some("4m"));
    assert!(agg.status.success(), "{}", stderr(&agg));
    assert!(stderr(&agg).contains("spilled to disk"), "the aggregation should spill: {}", stderr(&agg));
    let table: Vec<String> = stdout(&agg).split_whitespace().map(String::from).collect();
    assert!(table.windows(4).any(|w| w == ["|", "300000", "|", "300000"]), "{}", stdout(&agg));
}

#[test]
fn a_hash_join_over_the_limit_names_the_operator_and_the_limit() {
    let ws = orders_workspace();
    let made = ignis(&["gen-orders", "--out", "big", "--rows", "300000", "--files", "2"], ws.path());
    assert!(made.status.success(), "{}", stderr(&made));
    let sql = "SELECT count(*) AS n FROM orders a JOIN orders b ON a.order_id = b.order_id AND a.product = b.product";
    let out = run(ws.path(), &job(ws.path(), "join", sql, ""), Some("2m"));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("HashJoinInput"), "{err}");
    assert!(err.contains("memory limit of 2.0 MiB (set by --task-memory)"), "{err}");
    // Running out of memory is not retried: the same task would run out again.
    assert!(!err.contains("retrying"), "{err}");
    // The same join with room answers.
    let ok = run(ws.path(), &job(ws.path(), "join", sql, ""), Some("256m"));
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("300000"), "{}", stdout(&ok));
}
