//! The `ignis` command line: run or explain a job in local mode, and generate
//! the example data.

mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use datafusion::arrow::util::pretty::pretty_format_batches;
use ignis_core::job::JobSpec;
use ignis_driver::{Driver, DriverConfig, JobOutcome, JobResult};

#[derive(Parser)]
#[command(name = "ignis", version, about = "Ignis: a Spark-style distributed data engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job file (TOML, JSON or YAML) in local mode.
    Run {
        /// The job file.
        job: PathBuf,
        #[command(flatten)]
        local: LocalArgs,
        /// Rows of a collected result to print.
        #[arg(long, default_value_t = 20)]
        show: usize,
    },
    /// Print a job's stage DAG without running it.
    Explain { job: PathBuf },
    /// Write the deterministic example orders data as CSV files.
    GenOrders {
        /// Directory to write `orders-{i}.csv` into.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        rows: u64,
        #[arg(long, default_value_t = 4)]
        files: u32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

#[derive(clap::Args)]
struct LocalArgs {
    /// In-process executor workers (default: the number of cores).
    #[arg(long, env = "IGNIS_EXECUTORS")]
    executors: Option<usize>,
    /// Where shuffle objects go: a directory or an object store URL.
    #[arg(long, env = "IGNIS_SHUFFLE_ROOT")]
    shuffle_root: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("IGNIS_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting runtime")?;
    match cli.command {
        Command::Run { job, local, show } => runtime.block_on(run(job, local, show)),
        Command::Explain { job } => runtime.block_on(explain(job)),
        Command::GenOrders { out, rows, files, seed } => {
            ignis_driver::datagen::write_orders(&out, rows, files, seed)
                .with_context(|| format!("writing orders to {}", out.display()))?;
            println!("wrote {rows} orders in {files} files to {}", out.display());
            Ok(())
        }
    }
}

fn load(job: &std::path::Path) -> anyhow::Result<JobSpec> {
    Ok(JobSpec::from_file(job)?)
}

async fn explain(job: PathBuf) -> anyhow::Result<()> {
    let spec = load(&job)?;
    let driver = Driver::local(1, DriverConfig::default());
    let graph = driver.explain(&spec).await?;
    print!("{}", graph.display(&Driver::describe_output(&spec)));
    Ok(())
}

async fn run(job: PathBuf, local: LocalArgs, show: usize) -> anyhow::Result<()> {
    let spec = load(&job)?;
    let mut config = DriverConfig::default();
    if let Some(root) = local.shuffle_root {
        let cwd = std::env::current_dir()?;
        config.shuffle_root = ignis_core::job::resolve_location(&root, &cwd)?;
    }
    let executors =
        local.executors.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let driver = Driver::local(executors, config);
    let name = spec.name.clone().unwrap_or_else(|| "job".into());
    let progress = progress::Progress::new(&name);
    let outcome = driver.run(&spec, &|e| progress.event(e)).await;
    let outcome = outcome?;
    print_outcome(&outcome, show)
}

fn print_outcome(outcome: &JobOutcome, show: usize) -> anyhow::Result<()> {
    match &outcome.result {
        JobResult::Rows { batches, .. } => {
            let mut shown = Vec::new();
            let mut left = show;
            for b in batches {
                if left == 0 {
                    break;
                }
                let take = left.min(b.num_rows());
                shown.push(b.slice(0, take));
                left -= take;
            }
            if shown.is_empty()
                && let Some(b) = batches.first()
            {
                shown.push(b.slice(0, 0));
            }
            println!("{}", pretty_format_batches(&shown)?);
            if outcome.output_rows > show as u64 {
                println!("only showing top {show} of {} rows", outcome.output_rows);
            }
        }
        JobResult::Written(c) => {
            println!("wrote {} rows in {} files to {}", c.rows, c.files.len(), c.location);
        }
        JobResult::Skipped { location } => {
            println!("output {location} already holds data and mode = ignore: nothing to do");
        }
    }
    eprintln!("{}", progress::summary(outcome));
    Ok(())
}
