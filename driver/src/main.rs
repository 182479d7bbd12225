//! The `ignis` command line: run or explain a job in local mode; serve the
//! driver API, run an executor host, and submit, follow or cancel jobs on a
//! driver; generate the example data.

mod client;
mod progress;
mod udf_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use datafusion::arrow::util::pretty::pretty_format_batches;
use ignis_core::ids::JobId;
use ignis_core::job::{JobLimits, JobSpec};
use ignis_core::memory::{ByteSize, TaskMemory};
use ignis_driver::service::{ServerLimits, TenantLimits};
use ignis_driver::{Driver, DriverConfig, JobOutcome, JobResult, Journaling};

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
        #[arg(required_unless_present = "resume")]
        job: Option<PathBuf>,
        /// Resume job JOB_ID, interrupted (killed, machine stopped) while it
        /// ran with the same --shuffle-root: tasks it finished are not run
        /// again, a commit it began is finished.
        #[arg(long, value_name = "JOB_ID")]
        resume: Option<String>,
        #[command(flatten)]
        local: LocalArgs,
        /// Rows of a collected result to print.
        #[arg(long, default_value_t = 20)]
        show: usize,
    },
    /// Print a job's stage DAG without running it.
    Explain { job: PathBuf },
    /// Run the driver as a service: the job API over HTTP, tasks on executor hosts, Lambda or in-process workers.
    Serve(Box<ServeArgs>),
    /// Run an executor host: register with a driver and run its tasks until SIGTERM (then drain).
    Executor(ExecutorArgs),
    /// Submit a job file to a driver, follow its progress, print the result.
    Submit {
        job: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
        /// Rows of a collected result to print.
        #[arg(long, default_value_t = 20)]
        show: usize,
        /// Print the job id and return without waiting.
        #[arg(long)]
        detach: bool,
    },
    /// Show a job's status on a driver, or list your jobs.
    Status {
        job: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a running job on a driver.
    Cancel {
        job: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a stream on a driver after its running batch.
    Stop {
        job: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Wasm UDFs: create, build, upload and list components.
    #[command(subcommand)]
    Udf(udf_cmd::UdfCommand),
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
    /// The UDF registry jobs name components from (default: ~/.local/share/ignis/udfs).
    #[arg(long, env = "IGNIS_UDF_ROOT")]
    udf_root: Option<String>,
    /// Memory limit of each task, e.g. 4g; sorts and aggregations over it
    /// spill to disk (default: 70% of the machine's memory over the executors).
    #[arg(long, env = "IGNIS_TASK_MEMORY", value_name = "SIZE")]
    task_memory: Option<ByteSize>,
    /// Prices a job's receipt is estimated at (TOML: s3_put_per_1000, s3_get_per_1000, s3_list_per_1000,
    /// s3_delete_per_1000, lambda_gb_second, lambda_per_million_invocations, host_slot_hour; default: AWS
    /// us-east-1 list prices).
    #[arg(long, env = "IGNIS_PRICE_TABLE", value_name = "FILE")]
    price_table: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ClientArgs {
    /// The driver's URL.
    #[arg(long, env = "IGNIS_DRIVER", default_value = "http://127.0.0.1:7077")]
    driver: String,
    /// Your API key.
    #[arg(long, env = "IGNIS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "IGNIS_LISTEN", default_value = "127.0.0.1:7077")]
    listen: std::net::SocketAddr,
    /// Also serve Spark Connect (pyspark's `SparkSession.builder.remote("sc://HOST:PORT/;x-api-key=KEY")`)
    /// on this address; its actions run as jobs of the key's tenant.
    #[arg(long, env = "IGNIS_SPARK_CONNECT", value_name = "ADDR")]
    spark_connect: Option<std::net::SocketAddr>,
    /// Seconds after which an unused Spark Connect session is released.
    #[arg(long, default_value_t = 3600.0)]
    spark_connect_idle_timeout: f64,
    /// Where shuffle objects go: a directory or an object store URL (s3://bucket/prefix).
    #[arg(long, env = "IGNIS_SHUFFLE_ROOT")]
    shuffle_root: Option<String>,
    /// Where uploaded UDF components are kept: a directory or an object store URL
    /// that every executor can read (s3://bucket/udfs). Default: ~/.local/share/ignis/udfs.
    #[arg(long, env = "IGNIS_UDF_ROOT")]
    udf_root: Option<String>,
    /// A file of API keys: `tenant:key` per line (a key may be given as its
    /// hash, `tenant:sha256:<hex>`), or a `.toml` file of `[tenants.NAME]`
    /// tables with `keys = [...]` and storage grants `prefixes = [...]`.
    #[arg(long, env = "IGNIS_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,
    /// Each tenant's own storage prefix, a URL holding `{tenant}`
    /// (s3://bucket/tenants/{tenant}/); with it (or grants), a job may only
    /// read and write under its tenant's prefixes.
    #[arg(long, env = "IGNIS_TENANT_ROOT")]
    tenant_root: Option<String>,
    /// API keys as `tenant:key,tenant:key` (added to the file's).
    #[arg(long, env = "IGNIS_API_KEYS", hide_env_values = true)]
    api_keys: Option<String>,
    /// The secret executor hosts present.
    #[arg(long, env = "IGNIS_EXECUTOR_SECRET", hide_env_values = true)]
    executor_secret: Option<String>,
    /// Offer the `local` backend: N in-process workers.
    #[arg(long)]
    local_executors: Option<usize>,
    /// Memory limit of each local worker's task, e.g. 4g (default: 70% of the
    /// machine's memory over the local workers).
    #[arg(long, env = "IGNIS_TASK_MEMORY", value_name = "SIZE")]
    task_memory: Option<ByteSize>,
    /// Prices jobs' receipts are estimated at (TOML, see `ignis run --help`).
    #[arg(long, env = "IGNIS_PRICE_TABLE", value_name = "FILE")]
    price_table: Option<PathBuf>,
    /// Offer the `lambda` backend: invoke this ignis-lambda function (name or ARN) per task.
    #[arg(long, env = "IGNIS_LAMBDA_FUNCTION")]
    lambda_function: Option<String>,
    /// Version or alias of the Lambda function to invoke.
    #[arg(long, env = "IGNIS_LAMBDA_QUALIFIER")]
    lambda_qualifier: Option<String>,
    /// Lambda API endpoint, for an emulator or a VPC endpoint (default: the region's).
    #[arg(long, env = "IGNIS_LAMBDA_ENDPOINT_URL")]
    lambda_endpoint_url: Option<String>,
    /// Lambda invocations in flight at once, over all jobs.
    #[arg(long, default_value_t = 32)]
    lambda_concurrency: usize,
    /// Seconds after which a task attempt on Lambda fails (the driver enforces it).
    #[arg(long, default_value_t = 900.0)]
    lambda_task_timeout: f64,
    /// Task requests whose JSON is larger than this many bytes go to Lambda by
    /// object-store reference (at most the 6 MB payload limit).
    #[arg(long, default_value_t = ignis_driver::lambda::PAYLOAD_LIMIT - (64 << 10))]
    lambda_inline_limit: usize,
    /// The backend of jobs that do not choose one in `config.backend`
    /// (default: local, else hosts, else lambda, whichever is offered).
    #[arg(long, value_parser = ["local", "hosts", "lambda"])]
    default_backend: Option<String>,
    /// Seconds without a heartbeat after which a host is lost and its tasks re-run.
    #[arg(long, default_value_t = 30.0)]
    executor_timeout: f64,
    /// Seconds between host heartbeats.
    #[arg(long, default_value_t = 3.0)]
    heartbeat_interval: f64,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = ignis_driver::service::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Let jobs read and write files on the driver's disk under this
    /// directory (which may hold `{tenant}`: each tenant its own); without it
    /// `file://` locations and paths are refused, since tenants share the driver.
    #[arg(long, value_name = "DIR")]
    allow_local_files: Option<String>,
    /// The most bytes of rows a `collect` job may bring back to the driver.
    #[arg(long, default_value_t = ignis_driver::DEFAULT_MAX_RESULT_BYTES)]
    max_result_bytes: usize,
    /// Upper bound of a job's config.shuffle_partitions.
    #[arg(long, default_value_t = JobLimits::default().shuffle_partitions)]
    max_shuffle_partitions: usize,
    /// Upper bound of a job's config.batch_size.
    #[arg(long, default_value_t = JobLimits::default().batch_size)]
    max_batch_size: usize,
    /// Upper bound of a job's config.max_task_attempts.
    #[arg(long, default_value_t = JobLimits::default().max_task_attempts)]
    max_task_attempts: u32,
    /// Upper bound of a job's name, in characters.
    #[arg(long, default_value_t = JobLimits::default().name_chars)]
    max_job_name_chars: usize,
    /// Jobs of one tenant running at once (more wait in its queue).
    #[arg(long, default_value_t = TenantLimits::default().running)]
    max_running_jobs: usize,
    /// Jobs of one tenant waiting to run; past that a submission gets 429.
    #[arg(long, default_value_t = TenantLimits::default().queued)]
    max_queued_jobs: usize,
    /// Finished jobs kept per tenant for status and results.
    #[arg(long, default_value_t = TenantLimits::default().retained)]
    retained_jobs: usize,
    /// Bytes of collected rows kept per tenant (its newest results); older results are dropped.
    #[arg(long, default_value_t = TenantLimits::default().retained_result_bytes)]
    retained_result_bytes: usize,
    /// Journal jobs here (s3://bucket/prefix/ or a directory): a driver
    /// started again with the same journal resumes the jobs that were running.
    #[arg(long, env = "IGNIS_JOURNAL", value_name = "URL")]
    journal: Option<String>,
    /// Seconds a job may take to plan at submission.
    #[arg(long, default_value_t = 30.0)]
    planning_timeout: f64,
    /// Kafka brokers (`host:port`, comma-separated) that tenants' streams may
    /// read and write; without it, streams cannot use Kafka.
    #[arg(long, value_delimiter = ',')]
    allow_kafka_brokers: Vec<String>,
    /// HTTP connections open at once.
    #[arg(long, default_value_t = ServerLimits::default().max_connections)]
    max_connections: usize,
    /// Seconds a client may take to send a request's headers (and an idle connection stays open).
    #[arg(long, default_value_t = 10.0)]
    header_read_timeout: f64,
    /// Seconds one HTTP request may take.
    #[arg(long, default_value_t = 120.0)]
    request_timeout: f64,
}

#[derive(clap::Args)]
struct ExecutorArgs {
    /// The driver's URL.
    #[arg(long, env = "IGNIS_DRIVER", default_value = "http://127.0.0.1:7077")]
    driver: String,
    /// The executor secret the driver was given.
    #[arg(long, env = "IGNIS_EXECUTOR_SECRET", hide_env_values = true)]
    executor_secret: String,
    /// Tasks to run at once (default: the number of cores).
    #[arg(long)]
    slots: Option<u32>,
    /// Memory the host's tasks share, e.g. 16g: each of its slots gets 70%
    /// of it over the slots as its task's limit (default: the machine's memory).
    #[arg(long, env = "IGNIS_EXECUTOR_MEMORY", value_name = "SIZE")]
    executor_memory: Option<ByteSize>,
    /// Memory limit of each task, instead of a share of --executor-memory.
    #[arg(long, env = "IGNIS_TASK_MEMORY", value_name = "SIZE")]
    task_memory: Option<ByteSize>,
    /// A name for status output (default: host name and process id).
    #[arg(long)]
    name: Option<String>,
    /// Serve `GET /healthz` here for readiness probes: 200 while registered
    /// with the driver and taking tasks, 503 while joining or draining.
    #[arg(long, env = "IGNIS_HEALTH_LISTEN")]
    health_listen: Option<std::net::SocketAddr>,
    /// Fault injection for tests: wait this long before running each task.
    #[arg(long, env = "IGNIS_TEST_TASK_DELAY_MS", default_value_t = 0, hide = true)]
    task_delay_ms: u64,
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
        Command::Run { job, resume, local, show } => runtime.block_on(run(job, resume, local, show)),
        Command::Explain { job } => runtime.block_on(explain(job)),
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Executor(args) => runtime.block_on(executor(args)),
        Command::Submit { job, client, show, detach } => runtime.block_on(submit(job, client, show, detach)),
        Command::Status { job, client } => runtime.block_on(status(job, client)),
        Command::Stop { job, client } => runtime.block_on(async move {
            let status = client::Client::new(&client.driver, client.api_key)?.stop(&job).await?;
            println!("stream {} stopping after its running batch", status.id);
            Ok(())
        }),
        Command::Cancel { job, client } => runtime.block_on(async move {
            let status = client::Client::new(&client.driver, client.api_key)?.cancel(&job).await?;
            println!("job {} cancelling ({:?})", status.id, status.state);
            Ok(())
        }),
        Command::Udf(command) => runtime.block_on(udf_cmd::run(command)),
        Command::GenOrders { out, rows, files, seed } => {
            ignis_driver::datagen::write_orders(&out, rows, files, seed)
                .with_context(|| format!("writing orders to {}", out.display()))?;
            println!("wrote {rows} orders in {files} files to {}", out.display());
            Ok(())
        }
    }
}

/// A job file as local mode runs it: within the default bounds of job settings.
fn load(job: &std::path::Path) -> anyhow::Result<JobSpec> {
    let spec = JobSpec::from_file(job)?;
    JobLimits::default().check(&spec)?;
    Ok(spec)
}

async fn explain(job: PathBuf) -> anyhow::Result<()> {
    let spec = load(&job)?;
    let driver = Driver::local(1, DriverConfig::default());
    let graph = driver.explain(&spec).await?;
    print!("{}", graph.display(&Driver::describe_output(&spec)));
    Ok(())
}

fn driver_config(
    shuffle_root: Option<String>,
    udf_root: Option<String>,
    price_table: Option<PathBuf>,
) -> anyhow::Result<DriverConfig> {
    let mut config = DriverConfig::default();
    if let Some(file) = price_table {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        config.prices = toml::from_str(&text).with_context(|| format!("price table {}", file.display()))?;
    }
    let cwd = std::env::current_dir()?;
    if let Some(root) = shuffle_root {
        config.shuffle_root = ignis_core::job::resolve_location(&root, &cwd)?;
    }
    if let Some(root) = udf_root {
        config.udf_root = ignis_core::job::resolve_location(&root, &cwd)?;
    }
    Ok(config)
}

async fn run(job: Option<PathBuf>, resume: Option<String>, local: LocalArgs, show: usize) -> anyhow::Result<()> {
    use ignis_driver::journal::{Journal, Prior};
    let spec = job.as_deref().map(load).transpose()?;
    let config = driver_config(local.shuffle_root, local.udf_root, local.price_table)?;
    // Local jobs are journaled under the shuffle root, for `--resume`.
    let journal = Journal::open(&ignis_core::store::join(&config.shuffle_root, "_journal/"))?;
    let executors =
        local.executors.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let backend = ignis_driver::backend::LocalBackend::new(executors, local.task_memory);
    let driver = Driver::new(std::sync::Arc::new(backend), config);
    let (id, spec, journaling) = match (resume, spec) {
        (Some(id), given) => {
            let id = JobId::from(id.as_str());
            let found = journal.unfinished().await?.into_iter().find(|u| u.job_id == id).ok_or_else(|| {
                anyhow::anyhow!(
                    "no interrupted job {id} in the journal under {}: it ended (succeeded, failed or was \
                     cancelled), or it ran with another --shuffle-root",
                    journal.url()
                )
            })?;
            if let (Some(given), Some(file)) = (given, &job)
                && serde_json::to_value(&given)? != serde_json::to_value(&found.job)?
            {
                anyhow::bail!(
                    "{} is not the job {id} ran (was it edited since?): resume without the file, or run it afresh",
                    file.display()
                );
            }
            let prior = found.journal.resume().await?;
            let kept: usize = prior.results.values().map(|r| r.len()).sum();
            eprintln!("resuming job {id}: {kept} finished tasks of its earlier run are kept");
            (id, found.job, Journaling { journal: found.journal, prior })
        }
        (None, Some(spec)) => {
            if spec.stream.is_some() {
                let name = spec.name.clone().unwrap_or_else(|| "job".into());
                return run_stream(&driver, &spec, &name, show).await;
            }
            let id = JobId::generate();
            let at = ignis_driver::service::now_ms();
            let record = journal.begin(&id, "local", at, &spec).await?;
            // Printed first: what `--resume` takes if the run is interrupted.
            eprintln!("job {id}");
            (id, spec, Journaling { journal: record, prior: Prior::default() })
        }
        (None, None) => anyhow::bail!("give a job file, or --resume JOB_ID"),
    };
    let name = spec.name.clone().unwrap_or_else(|| "job".into());
    let progress = progress::Progress::new(&name);
    let (planned, udfs) = match driver.plan(&spec).await {
        Ok(planned) => planned,
        Err(e) => {
            journaling.journal.end(Err(&e)).await;
            return Err(e.into());
        }
    };
    let events = |e| progress.event(e);
    let outcome =
        driver.run_journaled(id, &spec, planned, udfs, Some(journaling), &events, std::future::pending()).await?;
    print_outcome(&outcome, show)
}

/// A streaming job in local mode: batches until its trigger is done, or until
/// Ctrl-C / SIGTERM (then after the running batch).
async fn run_stream(driver: &Driver, spec: &JobSpec, name: &str, show: usize) -> anyhow::Result<()> {
    use ignis_driver::stream::{self, StreamStatus};
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let status = std::sync::Mutex::new(StreamStatus::default());
    let printer = move |c: &stream::BatchCommit, rows: Option<&[datafusion::arrow::array::RecordBatch]>| {
        let late = if c.late_rows > 0 { format!(" ({} late, dropped)", c.late_rows) } else { String::new() };
        let watermark = c.watermark_us.map(|w| format!(", watermark {}", stream::rfc3339(w).unwrap_or_default()));
        eprintln!(
            "batch {}: {} rows in{late}, {} rows out{}, {:.2} s",
            c.batch,
            c.input_rows,
            c.output_rows,
            watermark.unwrap_or_default(),
            c.duration_ms as f64 / 1e3
        );
        if let Some(rows) = rows
            && let Err(e) = print_rows(rows, show, c.output_rows)
        {
            eprintln!("cannot print batch {}: {e}", c.batch);
        }
    };
    let signal = async {
        stop_signal().await;
        eprintln!("{name}: stopping after the running batch");
        let _ = stop.send(true);
        std::future::pending::<()>().await
    };
    eprintln!("{name}: streaming (Ctrl-C stops it after the running batch)");
    let result = tokio::select! {
        r = stream::run(driver, spec, &status, &printer, stopped) => r,
        () = signal => unreachable!(),
    };
    let s = status.lock().map(|s| s.clone()).unwrap_or_default();
    eprintln!(
        "{name}: {} batches, {} input rows ({} late, dropped), {} output rows, watermark {}, {} state rows",
        s.batches_done,
        s.input_rows,
        s.late_rows,
        s.output_rows,
        s.watermark.as_deref().unwrap_or("none"),
        s.state_rows
    );
    result.map_err(Into::into)
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C).
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use ignis_driver::hosts::{HostsBackend, HostsConfig};
    use ignis_driver::lambda::{LambdaBackend, LambdaConfig};
    use ignis_driver::service::{AuthConfig, ServiceConfig, StoragePolicy, Tenants};

    let mut tenants = Tenants::default();
    if let Some(file) = &args.api_keys_file {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let origin = file.display().to_string();
        let parsed = if file.extension().is_some_and(|e| e == "toml") {
            Tenants::parse_toml(&text, &origin)
        } else {
            Tenants::parse_lines(&text, &origin)
        };
        tenants.extend(parsed.map_err(anyhow::Error::msg)?);
    }
    if let Some(text) = &args.api_keys {
        tenants.extend(Tenants::parse_lines(text, "IGNIS_API_KEYS").map_err(anyhow::Error::msg)?);
    }
    let auth = AuthConfig::new(tenants.keys, args.executor_secret.as_deref()).map_err(anyhow::Error::msg)?;
    let seconds = |s: f64, flag: &str| {
        std::time::Duration::try_from_secs_f64(s).map_err(|_| anyhow::anyhow!("--{flag} must be a positive number"))
    };
    let mut config = driver_config(args.shuffle_root, args.udf_root, args.price_table)?;
    config.max_result_bytes = args.max_result_bytes;
    let mut policy =
        StoragePolicy::new(args.tenant_root, tenants.grants, args.allow_local_files).map_err(anyhow::Error::msg)?;
    let journal = match &args.journal {
        Some(url) => {
            let url = ignis_core::job::resolve_location(url, &std::env::current_dir()?)?;
            Some(ignis_driver::journal::Journal::open(&url).with_context(|| format!("--journal {url}"))?)
        }
        None => None,
    };
    let reserved = [("shuffle root", Some(&config.shuffle_root)), ("UDF registry", Some(&config.udf_root))];
    let journal_url = journal.as_ref().map(|j| j.url().to_string());
    for (what, root) in reserved.into_iter().chain([("journal", journal_url.as_ref())]) {
        if let Some(root) = root {
            policy.reserve(what, ignis_core::location::Location::parse(root, None, what)?);
        }
    }
    if !policy.isolates_tenants() {
        tracing::warn!(
            "no --tenant-root and no grants: every tenant may read and write every object-store location this \
             driver reaches (give --tenant-root s3://bucket/tenants/{{tenant}}/ to keep tenants apart)"
        );
    }
    let mut backends: Vec<std::sync::Arc<dyn ignis_driver::backend::TaskBackend>> = Vec::new();
    if let Some(n) = args.local_executors {
        backends.push(std::sync::Arc::new(ignis_driver::backend::LocalBackend::new(n, args.task_memory)));
    }
    let hosts = match &args.executor_secret {
        Some(_) => {
            let hosts = HostsBackend::new(HostsConfig {
                lost_after: seconds(args.executor_timeout, "executor-timeout")?,
                heartbeat_interval: seconds(args.heartbeat_interval, "heartbeat-interval")?,
            });
            backends.push(hosts.clone());
            Some(hosts)
        }
        None => None,
    };
    if let Some(function) = args.lambda_function {
        let limit = ignis_driver::lambda::PAYLOAD_LIMIT;
        if args.lambda_inline_limit > limit {
            anyhow::bail!("--lambda-inline-limit must be at most Lambda's payload limit of {limit} bytes");
        }
        if !config.shuffle_root.starts_with("s3://") {
            tracing::warn!(
                shuffle_root = %config.shuffle_root,
                "Lambda functions reach shuffle data only in object storage: give an s3:// --shuffle-root"
            );
        }
        let mut lambda = LambdaConfig::new(function, config.shuffle_root.clone());
        lambda.qualifier = args.lambda_qualifier;
        lambda.endpoint_url = args.lambda_endpoint_url;
        lambda.concurrency = args.lambda_concurrency.max(1);
        lambda.task_timeout = seconds(args.lambda_task_timeout, "lambda-task-timeout")?;
        lambda.inline_limit = args.lambda_inline_limit;
        backends.push(std::sync::Arc::new(LambdaBackend::new(lambda).await));
    }
    let mut backends = backends.into_iter();
    let Some(first) = backends.next() else {
        anyhow::bail!(
            "no backend to run tasks on: give --local-executors N, --executor-secret (executor hosts) \
             or --lambda-function"
        );
    };
    let mut driver = backends.fold(Driver::new(first, config), Driver::with_backend);
    if let Some(name) = &args.default_backend {
        let offered = driver.backend_names().join(", ");
        driver = driver.with_default_backend(name).map_err(|_| {
            anyhow::anyhow!("--default-backend {name}: that backend is not offered; this driver offers: {offered}")
        })?;
    }
    let mut service = ServiceConfig::new(auth, policy);
    service.max_body_bytes = args.max_body_bytes;
    service.job_limits = JobLimits {
        shuffle_partitions: args.max_shuffle_partitions,
        batch_size: args.max_batch_size,
        max_task_attempts: args.max_task_attempts,
        name_chars: args.max_job_name_chars,
    };
    service.tenant_limits = TenantLimits {
        running: args.max_running_jobs,
        queued: args.max_queued_jobs,
        retained: args.retained_jobs,
        retained_result_bytes: args.retained_result_bytes,
    };
    service.planning_timeout = seconds(args.planning_timeout, "planning-timeout")?;
    service.kafka_brokers = args.allow_kafka_brokers.iter().map(|b| b.trim().to_string()).collect();
    service.journal = journal;
    let server = ServerLimits {
        max_connections: args.max_connections,
        header_read_timeout: seconds(args.header_read_timeout, "header-read-timeout")?,
        request_timeout: seconds(args.request_timeout, "request-timeout")?,
    };
    let names = driver.backend_names().join(", ");
    let (router, state) = ignis_driver::service::router_and_state(std::sync::Arc::new(driver), hosts, service)
        .map_err(anyhow::Error::msg)?;
    let resumed = state.resume_journaled().await.context("reading the journal")?;
    if resumed > 0 {
        eprintln!("resumed {resumed} job(s) from the journal");
    }
    let connect = match args.spark_connect {
        Some(addr) => {
            let config = ignis_driver::connect::ConnectConfig {
                idle_timeout: seconds(args.spark_connect_idle_timeout, "spark-connect-idle-timeout")?,
                ..Default::default()
            };
            // Bind now, so a taken port is an error at start-up.
            let listener =
                std::net::TcpListener::bind(addr).with_context(|| format!("binding Spark Connect to {addr}"))?;
            drop(listener);
            eprintln!("ignis Spark Connect listening on sc://{addr}");
            Some(tokio::spawn(async move {
                if let Err(e) = ignis_driver::connect::serve(addr, state, config, stop_signal()).await {
                    tracing::error!(error = %e, "the Spark Connect server stopped");
                }
            }))
        }
        None => None,
    };
    eprintln!("ignis driver listening on http://{} (backends: {names})", args.listen);
    let served = ignis_driver::service::serve(router, args.listen, server, stop_signal())
        .await
        .with_context(|| format!("serving on {}", args.listen));
    if let Some(connect) = connect {
        connect.abort();
    }
    served
}

async fn executor(args: ExecutorArgs) -> anyhow::Result<()> {
    use ignis_executor::host::{HostConfig, HostState, run_host};

    let slots = args.slots.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(2));
    let name = args.name.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let host = if host.is_empty() { "executor".to_string() } else { host };
        format!("{host}-{}", std::process::id())
    });
    let config = HostConfig {
        driver: args.driver,
        secret: args.executor_secret,
        slots,
        memory: TaskMemory::host(slots as usize, args.executor_memory, args.task_memory),
        name,
        poll_wait: std::time::Duration::from_secs(10),
        task_delay: std::time::Duration::from_millis(args.task_delay_ms),
    };
    let (drain, drained) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop_signal().await;
        drain.send_replace(true);
    });
    eprintln!(
        "ignis executor host {} ({} slots, {} per task) joining {}",
        config.name, config.slots, config.memory.limit, config.driver
    );
    let (state, states) = tokio::sync::watch::channel(HostState::Joining);
    if let Some(addr) = args.health_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
        let probe = axum::Router::new().route(
            "/healthz",
            axum::routing::get(move || {
                let now = *states.borrow();
                async move {
                    match now {
                        HostState::Ready => (axum::http::StatusCode::OK, "ok"),
                        HostState::Joining => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "joining the driver"),
                        HostState::Draining => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "draining"),
                    }
                }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, probe).await {
                tracing::warn!(error = %e, "health endpoint stopped");
            }
        });
    }
    run_host(config, drained, state).await?;
    Ok(())
}

async fn submit(job: PathBuf, args: ClientArgs, show: usize, detach: bool) -> anyhow::Result<()> {
    let spec = load(&job)?;
    let client = client::Client::new(&args.driver, args.api_key)?;
    let id = client.submit(&spec).await?;
    if detach || spec.stream.is_some() {
        println!("{id}");
        if spec.stream.is_some() {
            eprintln!("a stream runs until stopped: `ignis status {id}` shows it, `ignis stop {id}` stops it");
        }
        return Ok(());
    }
    let name = spec.name.clone().unwrap_or_else(|| "job".into());
    let progress = progress::Progress::new(&name);
    let status = client.wait(&id, |s| progress.status(s)).await?;
    match status.state {
        ignis_driver::service::JobState::Succeeded => {}
        state => {
            let message = status.error.map(|e| e.message).unwrap_or_default();
            anyhow::bail!("job {id} {}: {message}", format!("{state:?}").to_lowercase());
        }
    }
    if status.output.is_some() {
        let w = client.written(&id).await?;
        if w.skipped {
            println!("output {} already holds data and mode = ignore: nothing to do", w.location);
        } else {
            println!("wrote {} rows in {} files to {}", w.rows, w.files, w.location);
        }
    } else {
        let batches = client.rows(&id).await?;
        print_rows(&batches, show, status.metrics.output_rows)?;
    }
    eprintln!("{}", progress::remote_summary(&status));
    Ok(())
}

async fn status(job: Option<String>, args: ClientArgs) -> anyhow::Result<()> {
    let client = client::Client::new(&args.driver, args.api_key)?;
    let statuses = match job {
        Some(id) => vec![client.status(&id).await?],
        None => client.list().await?,
    };
    for s in statuses {
        let state = format!("{:?}", s.state).to_lowercase();
        println!("{}  {:<10} {:<20} {:.1}s", s.id, state, s.name.as_deref().unwrap_or("-"), s.elapsed_ms as f64 / 1e3);
        for st in &s.stages {
            println!(
                "  stage {}: {}/{} done, {} running, {} pending, {} failed attempts",
                st.id, st.succeeded, st.tasks, st.running, st.pending, st.failed_attempts
            );
        }
        if let Some(st) = &s.stream {
            println!(
                "  stream: {} batches, {} input rows ({} late), {} output rows, {:.0} rows/s, last batch {} ms, \
                 watermark {}, {} state rows",
                st.batches_done,
                st.input_rows,
                st.late_rows,
                st.output_rows,
                st.processed_rows_per_s,
                st.last_batch_ms,
                st.watermark.as_deref().unwrap_or("none"),
                st.state_rows
            );
            if let Some(e) = &st.last_error {
                println!("  last batch error: {e}");
            }
        }
        if let Some(e) = &s.error {
            println!("  error ({}): {}", e.code, e.message);
        }
    }
    Ok(())
}

fn print_rows(batches: &[datafusion::arrow::record_batch::RecordBatch], show: usize, total: u64) -> anyhow::Result<()> {
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
    if total > show as u64 {
        println!("only showing top {show} of {total} rows");
    }
    Ok(())
}

fn print_outcome(outcome: &JobOutcome, show: usize) -> anyhow::Result<()> {
    match &outcome.result {
        JobResult::Rows { batches, .. } => print_rows(batches, show, outcome.output_rows)?,
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
