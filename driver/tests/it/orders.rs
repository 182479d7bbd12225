//! The seed example, run as a user runs it: `ignis run` / `ignis explain`.

use crate::common::*;

#[test]
fn orders_job_counts_match_the_csv_and_write_one_file_per_partition() {
    let ws = orders_workspace();
    let out = ignis(&["run", "job.toml", "--executors", "2"], ws.path());
    assert!(out.status.success(), "ignis run failed: {}", stderr(&out));

    let expected = us_orders_by_product(&ws.path().join("data"));
    assert!(expected.len() >= 10, "the example data covers the products");
    let output_dir = ws.path().join("out/us_orders_by_product");
    assert_eq!(read_counts(&output_dir, "product", "orders"), expected);

    // shuffle_partitions = 4 in the job: one file per final partition.
    let files = data_files(&output_dir);
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(files.iter().all(|f| f.starts_with("part-0000") && f.ends_with(".parquet")), "{files:?}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output_dir.join("_SUCCESS")).expect("_SUCCESS manifest")).unwrap();
    let total: i64 = expected.values().sum();
    assert_eq!(manifest["files"].as_array().map(|a| a.len()), Some(4));
    assert_eq!(manifest["rows"].as_u64(), Some(expected.len() as u64), "one row per product; {total} orders");
    assert!(!output_dir.join("_temporary").exists(), "staging is cleaned up");
    assert!(
        std::fs::read_dir(ws.path().join("_shuffle")).map(|mut d| d.next().is_none()).unwrap_or(true),
        "shuffle objects are removed after the job"
    );
    assert!(stdout(&out).contains(&format!("wrote {} rows in 4 files", expected.len())), "{}", stdout(&out));
}

#[test]
fn explain_shows_two_stages_and_run_uses_the_same_stages_and_tasks() {
    let ws = orders_workspace();
    let explain = ignis(&["explain", "job.toml"], ws.path());
    assert!(explain.status.success(), "{}", stderr(&explain));
    let text = stdout(&explain);
    // Four CSV files -> four scan tasks; four shuffle partitions -> four final tasks.
    assert!(text.starts_with("2 stages, 8 tasks"), "{text}");
    let stage1 = text.split("Stage 2").next().unwrap_or_default();
    for op in ["ShuffleWriterExec", "AggregateExec: mode=Partial", "FilterExec", "DataSourceExec"] {
        assert!(stage1.contains(op), "stage 1 lacks {op}:\n{text}");
    }
    let stage2 = text.split("Stage 2").nth(1).expect("a second stage");
    assert!(stage2.contains("ShuffleReaderExec: stage=1"), "{text}");
    assert!(stage2.contains("AggregateExec: mode=FinalPartitioned"), "{text}");
    assert!(text.contains("shuffle hash(product"), "{text}");
    assert!(text.contains("output: write parquet (mode overwrite) to file://"), "{text}");

    let run = ignis(&["run", "job.toml"], ws.path());
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("2 stages, 8 tasks (8 attempts)"), "{}", stderr(&run));
}

#[test]
fn collect_variant_prints_the_top_rows_as_a_table() {
    let ws = orders_workspace();
    let out = ignis(&["run", "show.toml", "--show", "5"], ws.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let expected = us_orders_by_product(&ws.path().join("data"));
    let mut ranked: Vec<(&String, &i64)> = expected.iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let first_row = text.lines().nth(3).expect("a first data row");
    assert!(first_row.contains(ranked[0].0.as_str()) && first_row.contains(&ranked[0].1.to_string()), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("| ")).count(), 6, "header + 5 rows:\n{text}");
    assert!(text.contains(&format!("only showing top 5 of {} rows", expected.len())), "{text}");
}

#[test]
fn gen_orders_is_deterministic_and_matches_the_shipped_data() {
    let dir = tempfile::tempdir().unwrap();
    let out = ignis(&["gen-orders", "--out", "data", "--rows", "20000", "--files", "4"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let shipped = snapshot(&repo_root().join("examples/orders/data"));
    assert_eq!(snapshot(&dir.path().join("data")), shipped);
}
