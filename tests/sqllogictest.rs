//! The SQL suite, run as `cargo test -p ignis-tests --test sqllogictest`.
//!
//! - Every `slt/*.slt` file runs twice: on single-node DataFusion and on Ignis
//!   distributed (3 shuffle partitions, 3 files per table, so every exchange
//!   crosses object storage). Both must match the file.
//! - All 22 TPC-H queries (`tpch/queries/`) run on both engines at a small
//!   scale factor; the results must be identical.
//! - The stage DAG of a few TPC-H queries is compared with the approved text in
//!   `plans/`, so planner changes show up in review.
//!
//! `-- --complete` rewrites the `.slt` expected results from single-node
//! DataFusion and the plan snapshots from the current planner. Any other
//! argument filters files and queries by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ignis_core::job::TableSpec;
use ignis_tests::engines::{Distributed, SingleNode};
use sqllogictest::{
    DBOutput, DefaultColumnType, Runner, default_column_validator, default_normalizer, default_validator,
};

const SCALE: f64 = 0.01;
const FILES_PER_TABLE: i32 = 3;
const SHUFFLE_PARTITIONS: usize = 3;
/// TPC-H queries whose stage DAG is kept as an approved snapshot.
const PLAN_SNAPSHOTS: [&str; 6] = ["q1", "q3", "q5", "q7", "q16", "q18"];

struct Suite {
    root: PathBuf,
    data: PathBuf,
    tables: BTreeMap<String, TableSpec>,
    complete: bool,
    filter: Option<String>,
    passed: usize,
    failed: Vec<String>,
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--") || a == "--complete").collect();
    let complete = args.iter().any(|a| a == "--complete");
    let filter = args.into_iter().find(|a| a != "--complete");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(complete, filter)) {
        Ok(suite) => {
            for f in &suite.failed {
                eprintln!("FAILED: {f}");
            }
            println!("sqllogictest: {} passed, {} failed", suite.passed, suite.failed.len());
            if suite.failed.is_empty() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("sqllogictest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(complete: bool, filter: Option<String>) -> anyhow::Result<Suite> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let data = std::env::temp_dir().join(format!("ignis-tpch-sf{SCALE}-{FILES_PER_TABLE}"));
    let tables = ignis_tests::tpch::generate(&data, SCALE, FILES_PER_TABLE)?;
    let mut suite = Suite { root, data, tables, complete, filter, passed: 0, failed: vec![] };
    suite.slt_files().await?;
    suite.tpch_queries_match().await?;
    suite.plan_snapshots().await?;
    Ok(suite)
}

impl Suite {
    fn selected(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    fn record(&mut self, name: String, result: Result<(), String>) {
        match result {
            Ok(()) => {
                println!("ok      {name}");
                self.passed += 1;
            }
            Err(e) => {
                println!("FAILED  {name}\n{e}");
                self.failed.push(name);
            }
        }
    }

    fn shuffle_dir(&self) -> anyhow::Result<tempfile::TempDir> {
        Ok(tempfile::tempdir()?)
    }

    async fn slt_files(&mut self) -> anyhow::Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.root.join("slt"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "slt"))
            .collect();
        files.sort();
        for file in files {
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !self.selected(&name) {
                continue;
            }
            if self.complete {
                let tables = self.tables.clone();
                let mut runner = Runner::new(move || {
                    let tables = tables.clone();
                    async move {
                        SingleNode::new(&tables).await.map_err(|e| ignis_tests::engines::EngineError(e.to_string()))
                    }
                });
                runner
                    .update_test_file(&file, " ", default_validator, default_normalizer, default_column_validator)
                    .await
                    .map_err(|e| anyhow::anyhow!("completing {name}: {e}"))?;
            }
            let tables = self.tables.clone();
            let mut single = Runner::new(move || {
                let tables = tables.clone();
                async move { SingleNode::new(&tables).await.map_err(|e| ignis_tests::engines::EngineError(e.to_string())) }
            });
            let result = single.run_file_async(&file).await.map_err(|e| e.display(true).to_string());
            self.record(format!("{name} [single-node]"), result);

            let tables = self.tables.clone();
            let shuffle = self.shuffle_dir()?;
            let shuffle_path = shuffle.path().to_path_buf();
            let mut distributed = Runner::new(move || {
                let tables = tables.clone();
                let shuffle_path = shuffle_path.clone();
                async move {
                    Distributed::new(&tables, &shuffle_path, SHUFFLE_PARTITIONS)
                        .await
                        .map_err(|e| ignis_tests::engines::EngineError(e.to_string()))
                }
            });
            let result = distributed.run_file_async(&file).await.map_err(|e| e.display(true).to_string());
            self.record(format!("{name} [ignis]"), result);
        }
        Ok(())
    }

    fn tpch_queries(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut queries = vec![];
        for n in 1..=22 {
            let name = format!("q{n}");
            let sql = std::fs::read_to_string(self.root.join(format!("tpch/queries/{name}.sql")))?;
            queries.push((name, sql));
        }
        Ok(queries)
    }

    async fn tpch_queries_match(&mut self) -> anyhow::Result<()> {
        let shuffle = self.shuffle_dir()?;
        let mut single = SingleNode::new(&self.tables).await?;
        let mut distributed = Distributed::new(&self.tables, shuffle.path(), SHUFFLE_PARTITIONS).await?;
        for (name, sql) in self.tpch_queries()? {
            if !self.selected(&format!("tpch-{name}")) {
                continue;
            }
            use sqllogictest::AsyncDB;
            let expected = single.run(&sql).await;
            let actual = distributed.run(&sql).await;
            let result = match (expected, actual) {
                (Ok(e), Ok(a)) => compare(&e, &a),
                (Err(e), _) => Err(format!("single node failed: {e}")),
                (_, Err(e)) => Err(format!("ignis failed: {e}")),
            };
            self.record(format!("tpch {name} [ignis = single-node]"), result);
        }
        Ok(())
    }

    async fn plan_snapshots(&mut self) -> anyhow::Result<()> {
        let shuffle = self.shuffle_dir()?;
        let distributed = Distributed::new(&self.tables, shuffle.path(), SHUFFLE_PARTITIONS).await?;
        let queries: BTreeMap<String, String> = self.tpch_queries()?.into_iter().collect();
        for name in PLAN_SNAPSHOTS {
            if !self.selected(&format!("plan-{name}")) {
                continue;
            }
            let job = distributed.job(&queries[name]);
            let graph = distributed.driver().explain(&job).await?;
            let text = normalize_plan(&graph.display("collect to the driver"), &self.data);
            let path = self.root.join(format!("plans/{name}.txt"));
            if self.complete {
                std::fs::write(&path, &text)?;
            }
            let approved = std::fs::read_to_string(&path).unwrap_or_default();
            let result = if approved == text {
                Ok(())
            } else {
                Err(format!("stage plan changed; review and run with --complete to approve:\n{text}"))
            };
            self.record(format!("plan {name}"), result);
        }
        Ok(())
    }
}

/// Replace the machine-specific data directory in a plan.
fn normalize_plan(text: &str, data: &Path) -> String {
    let data = data.to_string_lossy();
    text.replace(data.trim_start_matches('/'), "<tpch>")
}

fn compare(expected: &DBOutput<DefaultColumnType>, actual: &DBOutput<DefaultColumnType>) -> Result<(), String> {
    match (expected, actual) {
        (DBOutput::Rows { rows: e, .. }, DBOutput::Rows { rows: a, .. }) if e == a => Ok(()),
        (DBOutput::Rows { rows: e, .. }, DBOutput::Rows { rows: a, .. }) => {
            let first_diff = e.iter().zip(a).position(|(x, y)| x != y);
            Err(format!(
                "results differ: single node {} rows, ignis {} rows; first difference at row {:?}:\n  expected {:?}\n  actual   {:?}",
                e.len(),
                a.len(),
                first_diff,
                first_diff.and_then(|i| e.get(i)),
                first_diff.and_then(|i| a.get(i)),
            ))
        }
        _ => Err("one engine returned rows and the other did not".into()),
    }
}
