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
//! - DataFusion's own corpus (`datafusion-sqllogictest`, see `src/corpus/`):
//!   every file not in `corpus/skip.toml` runs on single-node DataFusion and,
//!   query by query, as Ignis jobs; a file whose right answers on Ignis fall
//!   below the count recorded in `corpus/RESULTS.md` fails.
//!
//! `-- --complete` rewrites the `.slt` expected results from single-node
//! DataFusion and the plan snapshots from the current planner;
//! `-- --record` rewrites `corpus/RESULTS.md` (`scripts/conformance`). Any
//! other argument filters files and queries by name (corpus files as
//! `corpus/<file>`).

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
    let ours = |a: &String| !a.starts_with("--") || a == "--complete" || a == "--record";
    let args: Vec<String> = std::env::args().skip(1).filter(ours).collect();
    let complete = args.iter().any(|a| a == "--complete");
    let record = args.iter().any(|a| a == "--record");
    let filter = args.into_iter().find(|a| !a.starts_with("--"));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(complete, record, filter)) {
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

async fn run(complete: bool, record: bool, filter: Option<String>) -> anyhow::Result<Suite> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let data = std::env::temp_dir().join(format!("ignis-tpch-sf{SCALE}-{FILES_PER_TABLE}"));
    let tables = ignis_tests::tpch::generate(&data, SCALE, FILES_PER_TABLE)?;
    let mut suite = Suite { root, data, tables, complete, filter, passed: 0, failed: vec![] };
    suite.slt_files().await?;
    suite.tpch_queries_match().await?;
    suite.plan_snapshots().await?;
    suite.corpus(record).await?;
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

impl Suite {
    /// DataFusion's corpus, file by file; with `record`, the results file is
    /// written instead of checked.
    async fn corpus(&mut self, record: bool) -> anyhow::Result<()> {
        use ignis_tests::corpus;
        if record && self.filter.as_deref().is_some_and(|f| f != "corpus/") {
            anyhow::bail!(
                "--record rewrites the results of the whole corpus: run it without a filter (or with corpus/)"
            );
        }
        let corpus_dir = corpus::locate(&self.root)?;
        let skip = corpus::SkipList::load(&self.root.join("corpus/skip.toml"))?;
        let results_path = self.root.join("corpus/RESULTS.md");
        let recorded = corpus::recorded_passes(&std::fs::read_to_string(&results_path).unwrap_or_default());
        // The corpus's paths are relative to its package directory (`data/...`,
        // `test_files/scratch/...`): run in a scratch copy of that layout.
        let work = tempfile::tempdir()?;
        std::os::unix::fs::symlink(corpus_dir.join("data"), work.path().join("data"))?;
        std::fs::create_dir_all(work.path().join("test_files/scratch"))?;
        std::env::set_current_dir(work.path())?;
        let shuffle = self.shuffle_dir()?;
        let driver = corpus::local_driver(shuffle.path())?;
        let mut reports = Vec::new();
        for file in corpus::files(&corpus_dir)? {
            let name = format!("corpus/{file}");
            if !self.selected(&name) {
                continue;
            }
            if let Some(reason) = skip.reason(&file) {
                reports.push(corpus::FileReport {
                    file,
                    file_skipped: Some(reason.to_string()),
                    ..corpus::FileReport::default()
                });
                continue;
            }
            // A panic in either engine fails this file, not the suite.
            let task = tokio::spawn({
                let (corpus_dir, file, scratch, driver) =
                    (corpus_dir.clone(), file.clone(), work.path().to_path_buf(), driver.clone());
                async move { corpus::run_file(&corpus_dir, &file, &scratch, driver).await }
            });
            let report = match task.await {
                Ok(Ok(report)) => report,
                Ok(Err(e)) => {
                    self.record(name, Err(format!("{e:#}")));
                    continue;
                }
                Err(e) => {
                    self.record(name, Err(format!("panicked: {e}")));
                    continue;
                }
            };
            let was = recorded.get(&file).copied().unwrap_or(0);
            let right = report.right_answers();
            let result = if record || right >= was {
                Ok(())
            } else {
                let failed: Vec<String> = report
                    .ignis_failed
                    .iter()
                    .map(|(line, d, m)| format!("  {file}:{line} {}: {m}", d.label()))
                    .collect();
                Err(format!(
                    "Ignis answers {right} queries right, {was} recorded in corpus/RESULTS.md:\n{}",
                    failed.join("\n")
                ))
            };
            self.record(
                format!(
                    "{name} [ignis {}/{} queries, {right} right answers, recorded {was}]",
                    report.ignis_passed, report.ignis_run
                ),
                result,
            );
            reports.push(report);
        }
        std::env::set_current_dir(&self.root)?;
        if record {
            std::fs::write(&results_path, corpus::results_markdown(&reports, &skip))?;
            println!("wrote {}", results_path.display());
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
