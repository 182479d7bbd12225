//! `ignis-bench`: TPC-H (22 queries) and the orders job, Ignis local mode
//! (object-store shuffle on local disk) against single-node DataFusion on the
//! same files, interleaved in one run, and DuckDB (the Python `duckdb` package,
//! a process per workload) on the same files. Prints median times, peak RSS,
//! spilled and shuffled bytes and the ratios per workload and in total; writes
//! Markdown and JSON.
//!
//!     cargo run --release -p ignis-bench -- --scale 1
//!     cargo run --release -p ignis-bench -- --scale 10 --orders-rows 100000000 --task-memory 4GiB --iterations 1
//!
//! Data (TPC-H via tpchgen, a 10M-row orders CSV) is generated on first use
//! under `--data` and reused afterwards.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext};
use ignis_core::job::{
    Format, JobConfig, JobSpec, OutputSpec, ShuffleCompression, TableOptions, TableSpec, WriteMode, WriteSpec,
};
use ignis_core::memory::ByteSize;
use ignis_driver::scheduler::JobEvent;
use ignis_driver::{Driver, DriverConfig, JobResult};
use ignis_tests::cluster::sorted;
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Ignis vs single-node DataFusion: TPC-H and the orders job")]
struct Args {
    /// Where generated data is kept between runs.
    #[arg(long, default_value = "bench/data")]
    data: PathBuf,
    /// TPC-H scale factor.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Rows of the orders CSV.
    #[arg(long, default_value_t = 10_000_000)]
    orders_rows: u64,
    /// Runs per workload and engine; the median is reported.
    #[arg(long, default_value_t = 3)]
    iterations: usize,
    /// Workers for Ignis and target partitions for DataFusion (default: cores).
    #[arg(long)]
    parallelism: Option<usize>,
    /// Only workloads whose name contains one of these (comma-separated), e.g. "q1,q18,orders".
    #[arg(long)]
    only: Option<String>,
    /// Shuffle compression for Ignis: lz4, zstd or none (default: the job default, lz4).
    #[arg(long, value_parser = parse_compression)]
    shuffle_compression: Option<ShuffleCompression>,
    /// Where results.md and results.json go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Print when each stage of Ignis's last run of each workload started and
    /// ended, and how long its tasks took (ms from the job's start).
    #[arg(long)]
    timeline: bool,
    /// Memory limit of each Ignis task (one per worker), e.g. 4GiB. DataFusion
    /// and DuckDB get the same total (the limit times the parallelism).
    /// Default: Ignis's share of the machine; the peers unlimited.
    #[arg(long)]
    task_memory: Option<ByteSize>,
    /// Python with the `duckdb` package (scripts/test installs one at
    /// ~/.cache/ignis/venv/bin/python, the default).
    #[arg(long)]
    duckdb_python: Option<PathBuf>,
    /// Leave DuckDB out.
    #[arg(long)]
    no_duckdb: bool,
    /// Only make the data under --data (TPC-H at --scale, the orders CSV); run nothing.
    #[arg(long)]
    generate_only: bool,
}

#[derive(Serialize)]
struct Row {
    workload: String,
    datafusion_ms: f64,
    ignis_ms: f64,
    ratio: f64,
    stages: usize,
    tasks: usize,
    shuffle_bytes: u64,
    /// (Ignis - DataFusion) / tasks: what each task costs beyond the work itself.
    overhead_per_task_ms: f64,
    /// From the job's start until it was planned and cut into stages (part of `ignis_ms`).
    plan_ms: f64,
    /// Bytes Ignis's tasks spilled to local disk.
    spilled_bytes: u64,
    /// The most memory one Ignis task's pool held.
    peak_task_memory: u64,
    /// Peak resident memory of the process while each engine ran the workload
    /// (Ignis and DataFusion share the bench process: its peak is reset before each run).
    ignis_peak_rss: u64,
    datafusion_peak_rss: u64,
    duckdb: Option<DuckDbRun>,
}

#[derive(Serialize)]
struct DuckDbRun {
    ms: f64,
    ratio: f64,
    peak_rss: u64,
}

struct Workload {
    name: String,
    sql: String,
    /// The orders job writes Parquet; TPC-H queries collect.
    write: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let parallelism =
        args.parallelism.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    std::fs::create_dir_all(&args.data)?;
    let data = std::fs::canonicalize(&args.data)?;
    eprintln!("generating data under {} (skipped when present)", data.display());
    let mut tables = ignis_tests::tpch::generate(&data.join(format!("tpch-sf{}", args.scale)), args.scale, 4)?;
    let orders_dir = data.join(format!("orders-{}", args.orders_rows));
    if !orders_dir.join("orders-7.csv").exists() {
        ignis_driver::datagen::write_orders(&orders_dir, args.orders_rows, 8, 42)?;
    }
    if args.generate_only {
        return Ok(());
    }
    tables
        .insert("orders_csv".into(), TableSpec::files_at(Format::Csv, dir_url(&orders_dir)?, TableOptions::default()));

    let workloads = workloads(args.only.as_deref())?;
    let shuffle_root = dir_url(&data.join("_shuffle"))?;
    let backend = ignis_driver::backend::LocalBackend::new(parallelism, args.task_memory);
    let driver = Driver::new(std::sync::Arc::new(backend), DriverConfig { shuffle_root, ..DriverConfig::default() });
    let peers_memory = args.task_memory.map(|m| m.0 * parallelism as u64);
    let df = datafusion_context(&tables, parallelism, peers_memory).await?;
    let duckdb = if args.no_duckdb { None } else { Some(DuckDb::find(args.duckdb_python.clone(), &data, &args)?) };
    let out_dir = data.join("_out");

    let mut rows = vec![];
    for w in &workloads {
        let mut ignis_times = vec![];
        let mut df_times = vec![];
        let mut last = None;
        let mut df_rows = None;
        let mut plan_times = vec![];
        let (mut ignis_rss, mut df_rss) = (0, 0);
        for i in 0..args.iterations {
            // Alternate which engine goes first so caches favour neither.
            for engine in if i % 2 == 0 { ["ignis", "datafusion"] } else { ["datafusion", "ignis"] } {
                if engine == "ignis" {
                    let job = ignis_job(w, &tables, parallelism, args.shuffle_compression, &out_dir.join("ignis"))?;
                    let timeline = Timeline::default();
                    reset_peak_rss();
                    let start = Instant::now();
                    let outcome = driver
                        .run(&job, &|e| timeline.record(start, e))
                        .await
                        .with_context(|| format!("ignis {}", w.name))?;
                    ignis_times.push(start.elapsed().as_secs_f64() * 1000.0);
                    ignis_rss = ignis_rss.max(peak_rss());
                    plan_times.push(timeline.planned_at().context("the job reported no plan")?);
                    if args.timeline && i + 1 == args.iterations {
                        eprint!("{}", timeline.text());
                    }
                    last = Some(outcome);
                } else {
                    reset_peak_rss();
                    let start = Instant::now();
                    let rows = run_datafusion(&df, w, &out_dir.join("datafusion"))
                        .await
                        .with_context(|| format!("datafusion {}", w.name))?;
                    df_times.push(start.elapsed().as_secs_f64() * 1000.0);
                    df_rss = df_rss.max(peak_rss());
                    df_rows = rows;
                }
            }
        }
        let (ignis_ms, datafusion_ms) = (median(&mut ignis_times), median(&mut df_times));
        let outcome = last.context("no iterations")?;
        // The same answer, or the times mean nothing.
        if let (JobResult::Rows { batches, .. }, Some(theirs)) = (&outcome.result, &df_rows) {
            anyhow::ensure!(
                sorted(batches) == sorted(theirs),
                "{}: Ignis and DataFusion returned different rows",
                w.name
            );
        }
        let duckdb_run = match &duckdb {
            Some(duck) => {
                let run = duck.run(w, parallelism, peers_memory, &out_dir.join("duckdb.parquet"), &args)?;
                if let (JobResult::Rows { batches, .. }, Some(rows)) = (&outcome.result, run.rows) {
                    let ours: usize = batches.iter().map(RecordBatch::num_rows).sum();
                    anyhow::ensure!(ours == rows, "{}: Ignis returned {ours} rows, DuckDB {rows}", w.name);
                }
                Some(DuckDbRun { ms: run.ms, ratio: ignis_ms / run.ms, peak_rss: run.peak_rss })
            }
            None => None,
        };
        let row = Row {
            workload: w.name.clone(),
            datafusion_ms,
            ignis_ms,
            ratio: ignis_ms / datafusion_ms,
            stages: outcome.stages,
            tasks: outcome.tasks,
            shuffle_bytes: outcome.shuffle_bytes,
            overhead_per_task_ms: (ignis_ms - datafusion_ms) / outcome.tasks.max(1) as f64,
            plan_ms: median(&mut plan_times),
            spilled_bytes: outcome.spilled_bytes,
            peak_task_memory: outcome.peak_task_memory,
            ignis_peak_rss: ignis_rss,
            datafusion_peak_rss: df_rss,
            duckdb: duckdb_run,
        };
        eprintln!(
            "{:<8} datafusion {:>9.1} ms  ignis {:>9.1} ms  ratio {:.2}  duckdb {}  (planning {:.1} ms, spilled {:.0} MiB, \
             peak RSS {:.0} MiB)",
            row.workload,
            datafusion_ms,
            ignis_ms,
            row.ratio,
            row.duckdb.as_ref().map(|d| format!("{:.1} ms", d.ms)).unwrap_or_else(|| "-".into()),
            row.plan_ms,
            mib(row.spilled_bytes),
            mib(row.ignis_peak_rss)
        );
        rows.push(row);
    }
    report(&rows, &args, parallelism)
}

/// Stage and task transitions of one run, for `--timeline`.
#[derive(Default)]
struct Timeline(std::sync::Mutex<Vec<(f64, String)>>);

impl Timeline {
    fn record(&self, start: Instant, event: JobEvent) {
        let at = start.elapsed().as_secs_f64() * 1000.0;
        let line = match event {
            JobEvent::Planned { stages } => format!("planned {} stages", stages.len()),
            JobEvent::StageSubmitted { stage, tasks } => format!("stage {stage} submitted ({tasks} tasks)"),
            JobEvent::TaskSucceeded { stage, partition, metrics, .. } => format!(
                "  task {stage}/{partition} done in {} ms ({} rows, {} bytes out)",
                metrics.elapsed_ms, metrics.output_rows, metrics.output_bytes
            ),
            JobEvent::StageCompleted { stage } => format!("stage {stage} completed"),
            _ => return,
        };
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push((at, line));
    }

    /// When the job was planned and cut into stages (ms from its start).
    fn planned_at(&self) -> Option<f64> {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().find(|(_, line)| line.starts_with("planned")).map(|(at, _)| *at)
    }

    fn text(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().map(|(at, line)| format!("{at:>8.1} ms  {line}\n")).collect()
    }
}

fn parse_compression(s: &str) -> Result<ShuffleCompression, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("{s}: expected lz4, zstd or none"))
}

fn dir_url(dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    url::Url::from_directory_path(dir)
        .map(|u| u.to_string())
        .map_err(|()| anyhow::anyhow!("not absolute: {}", dir.display()))
}

fn workloads(only: Option<&str>) -> anyhow::Result<Vec<Workload>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tpch/queries");
    let mut all = vec![Workload {
        name: "orders".into(),
        sql: "SELECT product, count(*) AS orders, sum(quantity) AS units, round(sum(price * quantity), 2) AS revenue \
              FROM orders_csv WHERE country = 'US' GROUP BY product"
            .into(),
        write: true,
    }];
    for n in 1..=22 {
        let sql = std::fs::read_to_string(root.join(format!("q{n}.sql")))?;
        all.push(Workload { name: format!("q{n}"), sql, write: false });
    }
    let filters: Vec<&str> = only.map(|o| o.split(',').map(str::trim).collect()).unwrap_or_default();
    Ok(all.into_iter().filter(|w| filters.is_empty() || filters.iter().any(|f| w.name == *f)).collect())
}

fn ignis_job(
    w: &Workload,
    tables: &std::collections::BTreeMap<String, TableSpec>,
    parallelism: usize,
    shuffle_compression: Option<ShuffleCompression>,
    out: &Path,
) -> anyhow::Result<JobSpec> {
    let output = if w.write {
        OutputSpec::Write(WriteSpec::to_files(Format::Parquet, dir_url(out)?, WriteMode::Overwrite, vec![]))
    } else {
        OutputSpec::Collect
    };
    Ok(JobSpec {
        udfs: Vec::new(),
        name: Some(w.name.clone()),
        tables: tables.clone(),
        sql: Some(w.sql.clone()),
        steps: None,
        output,
        config: JobConfig { shuffle_partitions: Some(parallelism), shuffle_compression, ..JobConfig::default() },
        stream: None,
    })
}

async fn datafusion_context(
    tables: &std::collections::BTreeMap<String, TableSpec>,
    parallelism: usize,
    memory: Option<u64>,
) -> anyhow::Result<SessionContext> {
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(bytes) = memory {
        runtime = runtime.with_memory_limit(usize::try_from(bytes)?, 1.0);
    }
    let config = SessionConfig::new().with_target_partitions(parallelism);
    let ctx = SessionContext::new_with_config_rt(config, runtime.build_arc()?);
    for (name, t) in tables {
        match t.format {
            Format::Csv => ctx.register_csv(name, &t.location, CsvReadOptions::new()).await?,
            _ => ctx.register_parquet(name, &t.location, ParquetReadOptions::default()).await?,
        }
    }
    Ok(ctx)
}

/// Runs the workload; the rows when it collects.
async fn run_datafusion(ctx: &SessionContext, w: &Workload, out: &Path) -> anyhow::Result<Option<Vec<RecordBatch>>> {
    let df = ctx.sql(&w.sql).await?;
    if w.write {
        if out.exists() {
            std::fs::remove_dir_all(out)?;
        }
        df.write_parquet(&format!("{}/", out.display()), DataFrameWriteOptions::new(), None).await?;
        Ok(None)
    } else {
        Ok(Some(df.collect().await?))
    }
}

/// DuckDB in a Python process of its own per workload.
struct DuckDb {
    python: PathBuf,
    script: PathBuf,
    tables: PathBuf,
    orders_csv: PathBuf,
}

struct DuckDbResult {
    ms: f64,
    /// Rows returned (None when the workload writes).
    rows: Option<usize>,
    peak_rss: u64,
}

impl DuckDb {
    fn find(python: Option<PathBuf>, data: &Path, args: &Args) -> anyhow::Result<Self> {
        let python = match python {
            Some(p) => p,
            None => {
                PathBuf::from(std::env::var("HOME").context("HOME is not set")?).join(".cache/ignis/venv/bin/python")
            }
        };
        let check = std::process::Command::new(&python).args(["-c", "import duckdb"]).output();
        anyhow::ensure!(
            check.as_ref().is_ok_and(|o| o.status.success()),
            "{} cannot import duckdb: run scripts/test once (it installs the venv), pass --duckdb-python, \
             or --no-duckdb",
            python.display()
        );
        Ok(Self {
            python,
            script: Path::new(env!("CARGO_MANIFEST_DIR")).join("duckdb_run.py"),
            tables: data.join(format!("tpch-sf{}", args.scale)),
            orders_csv: data.join(format!("orders-{}", args.orders_rows)),
        })
    }

    fn run(
        &self,
        w: &Workload,
        threads: usize,
        memory: Option<u64>,
        out: &Path,
        args: &Args,
    ) -> anyhow::Result<DuckDbResult> {
        let sql = tempfile::NamedTempFile::new()?;
        std::fs::write(sql.path(), &w.sql)?;
        let mut cmd = std::process::Command::new(&self.python);
        cmd.arg(&self.script)
            .arg("--tables")
            .arg(&self.tables)
            .arg("--orders-csv")
            .arg(&self.orders_csv)
            .arg("--sql")
            .arg(sql.path())
            .args(["--iterations", &args.iterations.to_string(), "--threads", &threads.to_string()]);
        if let Some(bytes) = memory {
            cmd.args(["--memory-limit", &format!("{}MiB", bytes >> 20)]);
        }
        if w.write {
            std::fs::create_dir_all(out.parent().context("output has no parent")?)?;
            cmd.arg("--write").arg(out);
        }
        let output = cmd.output().with_context(|| format!("starting {}", self.python.display()))?;
        anyhow::ensure!(
            output.status.success(),
            "duckdb {}: {}",
            w.name,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        #[derive(serde::Deserialize)]
        struct Printed {
            times_ms: Vec<f64>,
            rows: usize,
            peak_rss_bytes: u64,
        }
        let mut printed: Printed = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("duckdb {}: {}", w.name, String::from_utf8_lossy(&output.stdout)))?;
        Ok(DuckDbResult {
            ms: median(&mut printed.times_ms),
            rows: (!w.write).then_some(printed.rows),
            peak_rss: printed.peak_rss_bytes,
        })
    }
}

/// Resets the process's peak resident memory (Linux: `5` to /proc/self/clear_refs),
/// so the peak read after a run is that run's.
fn reset_peak_rss() {
    // Not on Linux, or not allowed: the peak then covers the process so far.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory (VmHWM), in bytes; 0 where unknown.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(rows: &[Row], args: &Args, parallelism: usize) -> anyhow::Result<()> {
    let tpch: Vec<&Row> = rows.iter().filter(|r| r.workload.starts_with('q')).collect();
    let total_df: f64 = tpch.iter().map(|r| r.datafusion_ms).sum();
    let total_ignis: f64 = tpch.iter().map(|r| r.ignis_ms).sum();
    let total_duck: Option<f64> = tpch.iter().map(|r| r.duckdb.as_ref().map(|d| d.ms)).sum();
    let memory = match args.task_memory {
        Some(m) => format!(
            "Ignis tasks capped at {m} each, DataFusion and DuckDB at {} in all",
            ByteSize(m.0 * parallelism as u64)
        ),
        None => "no memory caps set".into(),
    };
    let mut md = format!(
        "# Ignis vs single-node DataFusion and DuckDB\n\nTPC-H SF{}, orders CSV {} rows; parallelism {parallelism}; \
         shuffle compression {}; {memory}; median of {} runs. Peak RSS: the process while that engine ran the \
         workload (DuckDB: its own process).\n\n\
         | workload | DataFusion ms | Ignis ms | ratio | DuckDB ms | vs DuckDB | stages | tasks | shuffled MiB | \
         spilled MiB | peak task MiB | peak RSS MiB Ignis / DataFusion / DuckDB | planning ms |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        args.scale,
        args.orders_rows,
        args.shuffle_compression.map(|c| format!("{c:?}").to_lowercase()).unwrap_or_else(|| "default".into()),
        args.iterations
    );
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2} | {} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {:.0} / {:.0} / {} | {:.1} |\n",
            r.workload,
            r.datafusion_ms,
            r.ignis_ms,
            r.ratio,
            or_dash(r.duckdb.as_ref().map(|d| format!("{:.1}", d.ms))),
            or_dash(r.duckdb.as_ref().map(|d| format!("{:.2}", d.ratio))),
            r.stages,
            r.tasks,
            mib(r.shuffle_bytes),
            mib(r.spilled_bytes),
            mib(r.peak_task_memory),
            mib(r.ignis_peak_rss),
            mib(r.datafusion_peak_rss),
            or_dash(r.duckdb.as_ref().map(|d| format!("{:.0}", mib(d.peak_rss)))),
            r.plan_ms
        ));
    }
    if !tpch.is_empty() {
        md.push_str(&format!(
            "| **TPC-H total** | {total_df:.1} | {total_ignis:.1} | {:.2} | {} | {} | | | | | | | |\n",
            total_ignis / total_df,
            or_dash(total_duck.map(|d| format!("{d:.1}"))),
            or_dash(total_duck.map(|d| format!("{:.2}", total_ignis / d))),
        ));
    }
    println!("{md}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("results.md"), &md)?;
    std::fs::write(args.out.join("results.json"), serde_json::to_string_pretty(rows)?)?;
    eprintln!("wrote {}/results.md and results.json", args.out.display());
    Ok(())
}
