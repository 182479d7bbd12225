//! Output modes, hive-style partitioning, and the commit protocol: a failed
//! job leaves the previous output exactly as it was.

use std::path::Path;

use crate::common::*;

fn job_with(ws: &Path, name: &str, mode: &str, extra: &str) -> String {
    let text = std::fs::read_to_string(ws.join("job.toml"))
        .unwrap()
        .replace("mode = \"overwrite\"", &format!("mode = \"{mode}\"{extra}"));
    let file = format!("{name}.toml");
    std::fs::write(ws.join(&file), text).unwrap();
    file
}

fn run_ok(ws: &Path, file: &str) -> String {
    let out = ignis(&["run", file], ws);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn error_mode_refuses_existing_data_and_leaves_it() {
    let ws = orders_workspace();
    run_ok(ws.path(), &job_with(ws.path(), "first", "error", ""));
    let dir = ws.path().join("out/us_orders_by_product");
    let before = snapshot(&dir);
    let out = ignis(&["run", &job_with(ws.path(), "second", "error", "")], ws.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("already holds 4 file(s)") && err.contains("overwrite"), "{err}");
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn overwrite_replaces_append_adds_ignore_skips() {
    let ws = orders_workspace();
    let dir = ws.path().join("out/us_orders_by_product");
    run_ok(ws.path(), &job_with(ws.path(), "a", "overwrite", ""));
    let first = data_files(&dir);
    run_ok(ws.path(), &job_with(ws.path(), "b", "overwrite", ""));
    let second = data_files(&dir);
    assert_eq!(second.len(), 4);
    assert!(first.iter().all(|f| !second.contains(f)), "overwrite removed the old files");
    assert_eq!(read_counts(&dir, "product", "orders"), us_orders_by_product(&ws.path().join("data")));

    run_ok(ws.path(), &job_with(ws.path(), "c", "append", ""));
    let appended = data_files(&dir);
    assert_eq!(appended.len(), 8);
    assert!(second.iter().all(|f| appended.contains(f)), "append kept the old files");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("_SUCCESS")).unwrap()).unwrap();
    assert_eq!(manifest["files"].as_array().map(|a| a.len()), Some(8));

    let before = snapshot(&dir);
    let out = run_ok(ws.path(), &job_with(ws.path(), "d", "ignore", ""));
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn partition_by_writes_hive_directories_without_the_partition_column() {
    let ws = orders_workspace();
    let text = std::fs::read_to_string(ws.path().join("job.toml"))
        .unwrap()
        .replace("expr = \"country = 'US'\"", "expr = \"country IN ('US', 'DE')\"")
        .replace("keys = [\"product\"]", "keys = [\"country\", \"product\"]")
        .replace("mode = \"overwrite\"", "mode = \"overwrite\"\npartition_by = [\"country\"]");
    std::fs::write(ws.path().join("parts.toml"), text).unwrap();
    run_ok(ws.path(), "parts.toml");
    let dir = ws.path().join("out/us_orders_by_product");
    let files = data_files(&dir);
    assert!(files.iter().all(|f| f.starts_with("country=US/") || f.starts_with("country=DE/")), "{files:?}");
    assert!(files.iter().any(|f| f.starts_with("country=DE/")));
    let us = read_counts(&dir.join("country=US"), "product", "orders");
    assert_eq!(us, us_orders_by_product(&ws.path().join("data")));
    for f in &files {
        for batch in read_parquet(&dir.join(f)) {
            assert!(batch.schema().column_with_name("country").is_none(), "partition column is in the path only");
        }
    }
}

#[test]
fn a_job_failing_mid_run_leaves_the_previous_output_exactly() {
    let ws = orders_workspace();
    run_ok(ws.path(), &job_with(ws.path(), "good", "overwrite", ""));
    let dir = ws.path().join("out/us_orders_by_product");
    let before = snapshot(&dir);

    // A bad value in one file: its scan task fails after others have written.
    let data = ws.path().join("data/orders-3.csv");
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("99999999,US,laptop,lots,1.00,2026-01-01T00:00:00\n");
    std::fs::write(&data, text).unwrap();
    let out = ignis(&["run", &job_with(ws.path(), "bad", "overwrite", "")], ws.path());
    assert!(!out.status.success());
    assert_eq!(snapshot(&dir), before, "old output untouched, no staged files visible");
}

#[test]
fn csv_and_json_output_hold_the_rows() {
    let ws = orders_workspace();
    let mut expected_us = 0;
    for (product, n) in us_orders_by_product(&ws.path().join("data")) {
        assert!(!product.is_empty());
        expected_us += n;
    }
    for format in ["csv", "json"] {
        let job = format!(
            "sql = \"SELECT country, count(*) AS n FROM orders GROUP BY country\"\n\
             [tables.orders]\nformat = 'csv'\nlocation = 'data/'\n\
             [output.write]\nformat = '{format}'\nlocation = 'out/{format}'\npartition_by = ['country']\n"
        );
        std::fs::write(ws.path().join("fmt.toml"), job).unwrap();
        run_ok(ws.path(), "fmt.toml");
        let dir = ws.path().join(format!("out/{format}/country=US"));
        let files = data_files(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].ends_with(&format!(".{format}")));
        let text = std::fs::read_to_string(dir.join(&files[0])).unwrap();
        let expected =
            if format == "csv" { format!("n\n{expected_us}\n") } else { format!("{{\"n\":{expected_us}}}\n") };
        assert_eq!(text, expected);
    }
}

#[test]
fn a_location_being_written_by_another_job_is_refused_and_left_alone() {
    let ws = orders_workspace();
    run_ok(ws.path(), &job_with(ws.path(), "first", "overwrite", ""));
    let dir = ws.path().join("out/us_orders_by_product");
    // Another job holds the location's write lock (as one running now would).
    let lock = dir.join(ignis_driver::commit::WRITE_LOCK);
    std::fs::write(&lock, r#"{"job_id":"job-other","since_unix_s":0}"#).unwrap();
    let before = snapshot(&dir);
    let out = ignis(&["run", &job_with(ws.path(), "second", "overwrite", "")], ws.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("being written by another job") && err.contains("job-other"), "{err}");
    assert_eq!(snapshot(&dir), before, "the refused job changed the location");
    // Once that job is done, the location is free; a job leaves no lock behind.
    std::fs::remove_file(&lock).unwrap();
    run_ok(ws.path(), &job_with(ws.path(), "third", "overwrite", ""));
    assert!(!lock.exists(), "the lock outlived its job");
    assert_eq!(read_counts(&dir, "product", "orders"), us_orders_by_product(&ws.path().join("data")));
}
