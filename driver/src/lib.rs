//! `ignis-driver`: takes a job, plans it with DataFusion, cuts the plan into
//! stages, runs their tasks on an executor backend, and commits the output.
//!
//! ```text
//!  job (SQL or steps, tables, output)
//!     |  planner::plan_job         DataFusion: logical -> optimised -> physical plan
//!     v
//!  physical plan
//!     |  planner::distribute       cut at every exchange (hash repartition,
//!     v                            coalesce, sort-preserving merge)
//!  Stage 1: scan -> filter -> partial agg -> ShuffleWriterExec ----+
//!                                                                  | shuffle objects in
//!  Stage 2: ShuffleReaderExec -> final agg -> (write files | collect)  object storage
//!     |  scheduler::run_graph      one task per partition; a stage starts when
//!     v                            its inputs are done; failed attempts retried
//!  backend::TaskBackend            local workers | executor hosts | Lambda
//!     |  TaskRequest (plan bytes, shuffle inputs, output) -> TaskResult
//!     v
//!  commit                          move the accepted attempts' files into place,
//!                                  write _SUCCESS; or read the collected rows
//! ```
//!
//! What does not belong here: running a plan fragment (`ignis-executor`), the
//! protocol and shuffle format (`ignis-core`).

pub mod backend;
pub mod commit;
pub mod connect;
pub mod datagen;
pub mod hosts;
pub mod journal;
pub mod lambda;
pub mod planner;
pub mod scheduler;
pub mod service;
pub mod stream;
pub mod udfs;

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use ignis_core::error::{IgnisError, Result};
use ignis_core::ids::{JobId, StageId};
use ignis_core::job::{JobSpec, OutputSpec};
use ignis_core::protocol::UdfRef;
use ignis_core::receipt::{Prices, Receipt, StoreCounters, StoreCounts};
use ignis_core::shuffle::{ShuffleReaderExec, job_shuffle_prefix};
use ignis_core::store;
use ignis_executor::udf::Component;

use crate::backend::{LocalBackend, TaskBackend};
use crate::commit::{Committed, PendingWrite};
use crate::journal::{JobJournal, Prior};
use crate::planner::stages::{Exchange, StageGraph};
use crate::scheduler::{JobEvent, ResultTarget, RunSettings, StageResults};
use crate::udfs::UdfRegistry;
pub use planner::PlannedJob;

/// Driver-wide settings (per-job settings live in the job's `config`).
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// URL under which shuffle objects are written, e.g. `file:///tmp/ignis-shuffle`.
    pub shuffle_root: String,
    /// URL of the UDF registry (see [`udfs`]), e.g. `s3://bucket/ignis/udfs/`.
    pub udf_root: String,
    /// The most bytes (in memory) of rows a `collect` job may bring back to
    /// the driver, like Spark's spark.driver.maxResultSize.
    pub max_result_bytes: usize,
    /// What a job's receipt prices its requests and executor time at.
    pub prices: Prices,
}

/// Default of [`DriverConfig::max_result_bytes`]: 256 MiB.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 256 << 20;

impl Default for DriverConfig {
    fn default() -> Self {
        let dir = std::env::temp_dir().join("ignis-shuffle");
        let shuffle_root = url::Url::from_directory_path(&dir)
            .map(|u| u.to_string())
            .unwrap_or_else(|()| "file:///tmp/ignis-shuffle/".to_string());
        Self {
            shuffle_root,
            udf_root: default_udf_root(),
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            prices: Prices::default(),
        }
    }
}

/// Where local mode keeps uploaded UDFs: `$IGNIS_UDF_ROOT`, else
/// `$XDG_DATA_HOME/ignis/udfs`, else `~/.local/share/ignis/udfs`.
pub fn default_udf_root() -> String {
    if let Some(root) = std::env::var_os("IGNIS_UDF_ROOT") {
        return root.to_string_lossy().into_owned();
    }
    let dir = std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir)
        .join("ignis/udfs");
    url::Url::from_directory_path(&dir).map(|u| u.to_string()).unwrap_or_else(|()| dir.to_string_lossy().into_owned())
}

pub struct Driver {
    /// The backends jobs can choose with `config.backend`; the first is the default.
    backends: Vec<Arc<dyn TaskBackend>>,
    config: DriverConfig,
    udfs: UdfRegistry,
}

/// Jobs of more tasks than this speculate unless they say not to (on hosts
/// and Lambda). Measured 2026-11-30 with the fault suite's three hosts: with
/// one host 20x slower, q9 took 0.73x the time with no slow host instead of
/// 6.1x; on healthy hosts, 12 runs of q5, q9, q18 and q21 started no
/// speculative attempt and took the same time (18.1 s against 18.8 s).
const SPECULATION_DEFAULT_ABOVE_TASKS: usize = 8;

/// A job run under the journal: its record, and what earlier runs of it
/// left ([`Prior::default`] for a first run).
pub struct Journaling {
    pub journal: JobJournal,
    pub prior: Prior,
}

/// What a finished job produced.
#[derive(Debug)]
pub enum JobResult {
    /// `collect`: every row, in the order the plan produced them.
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    Written(Committed),
    /// `mode = ignore` and the location already held data: nothing ran.
    Skipped {
        location: String,
    },
}

#[derive(Debug)]
pub struct JobOutcome {
    pub job_id: JobId,
    pub stages: usize,
    pub tasks: usize,
    /// Task attempts started, retries included.
    pub task_attempts: usize,
    pub output_rows: u64,
    pub shuffle_bytes: u64,
    /// CSV rows skipped by DROPMALFORMED tables.
    pub malformed_rows_dropped: u64,
    /// Bytes tasks spilled to local disk.
    pub spilled_bytes: u64,
    /// The most memory one task's pool held.
    pub peak_task_memory: u64,
    /// What the job used and what that costs.
    pub receipt: Receipt,
    /// Shuffle GETs sent again for want of an answer, and those that answered first.
    pub hedged_reads: u64,
    pub hedge_wins: u64,
    /// Speculative attempts started, and those that finished first.
    pub speculative_attempts: usize,
    pub speculative_wins: usize,
    pub elapsed: Duration,
    pub result: JobResult,
}

impl JobOutcome {
    /// An outcome without stages or tasks: the output location was kept as
    /// it was (`mode = ignore`), or a stream whose figures are in its status.
    pub fn without_tasks(job_id: JobId, elapsed: Duration, result: JobResult) -> Self {
        Self {
            job_id,
            stages: 0,
            tasks: 0,
            task_attempts: 0,
            output_rows: 0,
            shuffle_bytes: 0,
            malformed_rows_dropped: 0,
            spilled_bytes: 0,
            peak_task_memory: 0,
            receipt: Receipt::default(),
            hedged_reads: 0,
            hedge_wins: 0,
            speculative_attempts: 0,
            speculative_wins: 0,
            elapsed,
            result,
        }
    }
}

impl Driver {
    /// Local mode: `executors` in-process workers.
    pub fn local(executors: usize, config: DriverConfig) -> Self {
        Self::new(Arc::new(LocalBackend::new(executors, None)), config)
    }

    /// A driver whose jobs run on `backend` unless they ask for another.
    pub fn new(backend: Arc<dyn TaskBackend>, config: DriverConfig) -> Self {
        let udfs = UdfRegistry::new(config.udf_root.clone(), ignis_core::store::runtime_env());
        Self { backends: vec![backend], config, udfs }
    }

    /// Offer another backend to jobs that ask for it by name; a backend of
    /// the same name replaces the earlier one.
    pub fn with_backend(mut self, backend: Arc<dyn TaskBackend>) -> Self {
        match self.backends.iter_mut().find(|b| b.name() == backend.name()) {
            Some(slot) => *slot = backend,
            None => self.backends.push(backend),
        }
        self
    }

    /// Make the backend called `name` the default.
    pub fn with_default_backend(mut self, name: &str) -> Result<Self> {
        let at = self.backends.iter().position(|b| b.name() == name).ok_or_else(|| self.unknown_backend(name))?;
        let chosen = self.backends.remove(at);
        self.backends.insert(0, chosen);
        Ok(self)
    }

    /// The backend a job's tasks run on; an error names the backends there are.
    pub fn backend_for(&self, job: &JobSpec) -> Result<&Arc<dyn TaskBackend>> {
        match job.config.backend.as_deref() {
            None => Ok(&self.backends[0]),
            Some(name) => self.backends.iter().find(|b| b.name() == name).ok_or_else(|| self.unknown_backend(name)),
        }
    }

    /// Names of the backends, the default first.
    pub fn backend_names(&self) -> Vec<&str> {
        self.backends.iter().map(|b| b.name()).collect()
    }

    fn unknown_backend(&self, name: &str) -> IgnisError {
        IgnisError::Job(format!(
            "config.backend: this driver has no backend '{name}'; it runs tasks on: {}",
            self.backend_names().join(", ")
        ))
    }

    /// Where a job's result goes, in words, for explain output.
    pub fn describe_output(job: &JobSpec) -> String {
        match &job.output {
            OutputSpec::Collect => "collect to the driver".to_string(),
            OutputSpec::Write(w) => {
                let mode = format!("{:?}", w.mode).to_lowercase();
                let mut text = format!("write {} (mode {mode}) to {}", w.format.extension(), w.location);
                if !w.partition_by.is_empty() {
                    text.push_str(&format!(", partitioned by {}", w.partition_by.join(", ")));
                }
                text
            }
        }
    }

    /// Driver-wide settings.
    pub fn config(&self) -> &DriverConfig {
        &self.config
    }

    /// The UDF registry jobs take their components from.
    pub fn udfs(&self) -> &UdfRegistry {
        &self.udfs
    }

    /// The job's UDF components, resolved (names as the local tenant's) and loaded.
    pub(crate) async fn job_udfs(&self, job: &JobSpec) -> Result<(Vec<UdfRef>, Vec<Arc<Component>>)> {
        if job.udfs.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let refs = self.udfs.resolve(udfs::LOCAL_TENANT, &job.udfs).await?;
        let components = self.udfs.load(&refs).await?;
        Ok((refs, components))
    }

    /// Plan and cut a job without running it.
    pub async fn explain(&self, job: &JobSpec) -> Result<StageGraph> {
        if job.stream.is_some() {
            return Err(IgnisError::Job(
                "stream: a stream's batches are planned as they run, each over its new data; run it (`ignis run`) \
                 to see each batch"
                    .into(),
            ));
        }
        let (planned, _) = self.plan(job).await?;
        planner::distribute(planned.physical, job.config.runtime_filters())
    }

    /// Plan a job (its DataFusion physical plan, before it is cut into
    /// stages), with the UDF components the plan calls: what
    /// [`Driver::run_planned`] runs.
    pub async fn plan(&self, job: &JobSpec) -> Result<(PlannedJob, Vec<UdfRef>)> {
        let (udf_refs, components) = self.job_udfs(job).await?;
        Ok((planner::plan_job(job, &components).await?, udf_refs))
    }

    /// Run a job to completion. `events` sees every stage and task transition.
    pub async fn run(&self, job: &JobSpec, events: &(dyn Fn(JobEvent) + Send + Sync)) -> Result<JobOutcome> {
        self.run_job(JobId::generate(), job, events, std::future::pending()).await
    }

    /// Run a job under a given id until it finishes or `cancel` completes; a
    /// cancelled job cleans up like a failed one and returns
    /// [`IgnisError::Cancelled`].
    pub async fn run_job(
        &self,
        job_id: JobId,
        job: &JobSpec,
        events: &(dyn Fn(JobEvent) + Send + Sync),
        cancel: impl std::future::Future<Output = ()> + Send,
    ) -> Result<JobOutcome> {
        let (planned, udf_refs) = self.plan(job).await?;
        self.run_planned(job_id, job, planned, udf_refs, events, cancel).await
    }

    /// Run a job already planned by one of the front ends (Spark Connect):
    /// `job` gives its output, config and name; `udfs` are the components
    /// its plan calls.
    pub async fn run_planned(
        &self,
        job_id: JobId,
        job: &JobSpec,
        planned: PlannedJob,
        udf_refs: Vec<UdfRef>,
        events: &(dyn Fn(JobEvent) + Send + Sync),
        cancel: impl std::future::Future<Output = ()> + Send,
    ) -> Result<JobOutcome> {
        self.run_journaled(job_id, job, planned, udf_refs, None, events, cancel).await
    }

    /// Run a planned job under the journal (`journal` is `None` for jobs a
    /// restarted driver does not resume): its accepted task results and its
    /// commit are recorded as they happen, and the results an earlier run
    /// accepted (`journal.prior`) are used instead of running their tasks
    /// again, when the job plans to the same stages as it did then.
    #[allow(clippy::too_many_arguments)]
    pub async fn run_journaled(
        &self,
        job_id: JobId,
        job: &JobSpec,
        planned: PlannedJob,
        udf_refs: Vec<UdfRef>,
        journal: Option<Journaling>,
        events: &(dyn Fn(JobEvent) + Send + Sync),
        cancel: impl std::future::Future<Output = ()> + Send,
    ) -> Result<JobOutcome> {
        let record = journal.as_ref().map(|j| j.journal.clone());
        let outcome = self.run_with_journal(job_id, job, planned, udf_refs, journal, events, cancel).await;
        // The job's end is recorded before its shuffle objects go (see
        // below); this is for a job that stopped before it got that far.
        if let Some(journal) = record {
            journal.end(outcome.as_ref().map(|_| ())).await;
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_with_journal(
        &self,
        job_id: JobId,
        job: &JobSpec,
        planned: PlannedJob,
        udf_refs: Vec<UdfRef>,
        journal: Option<Journaling>,
        events: &(dyn Fn(JobEvent) + Send + Sync),
        cancel: impl std::future::Future<Output = ()> + Send,
    ) -> Result<JobOutcome> {
        let start = Instant::now();
        let backend = self.backend_for(job)?.clone();
        let graph = planner::distribute(planned.physical, job.config.runtime_filters())?;
        let env = planned.ctx.runtime_env();
        let (journal, prior) = match journal {
            Some(Journaling { journal, prior }) => {
                let prior = journal.restore(prior, &graph).await;
                (Some(journal), prior)
            }
            None => (None, Prior::default()),
        };
        // A resumed write whose commit had begun: finish the commit, run nothing.
        if let (Some(journal), OutputSpec::Write(spec)) = (&journal, &job.output)
            && prior.run > 0
            && let Some(committed) = commit::complete(&env, spec, &job_id).await?
        {
            journal.end(Ok(())).await;
            if let Err(e) = delete_shuffle(&env, &self.config.shuffle_root, &job_id).await {
                tracing::warn!(job = %job_id, error = %e, "could not remove shuffle objects");
            }
            return Ok(JobOutcome::without_tasks(job_id, start.elapsed(), JobResult::Written(committed)));
        }
        events(JobEvent::Planned { stages: graph.stages.iter().map(|s| (s.id, s.tasks)).collect() });

        let pending = match &job.output {
            OutputSpec::Collect => None,
            OutputSpec::Write(spec) => match commit::prepare(&env, spec, &job_id).await? {
                Some(p) => Some(p),
                None => {
                    return Ok(JobOutcome::without_tasks(
                        job_id,
                        start.elapsed(),
                        JobResult::Skipped { location: spec.location.clone() },
                    ));
                }
            },
        };
        let target = match &pending {
            None => ResultTarget::Collect,
            Some(p) => ResultTarget::Files {
                staging: p.staging_url(),
                format: p.spec.format,
                partition_by: p.spec.partition_by.clone(),
            },
        };
        let settings = RunSettings {
            job_id: job_id.clone(),
            env: env.clone(),
            shuffle_root: self.config.shuffle_root.clone(),
            compression: job.config.shuffle_compression.unwrap_or_default(),
            batch_size: job.config.batch_size(),
            options: job.config.options.clone(),
            max_task_attempts: job.config.max_task_attempts(),
            target,
            udfs: udf_refs,
            task_deadline: job.config.task_deadline_s.and_then(|s| std::time::Duration::try_from_secs_f64(s).ok()),
            speculation: job
                .config
                .speculation
                .unwrap_or(backend.remote() && graph.total_tasks() > SPECULATION_DEFAULT_ABOVE_TASKS),
            first_attempt: prior.first_attempt(),
            prior: prior.results,
            journal: journal.clone(),
        };

        let run = tokio::select! {
            run = scheduler::run_graph(&graph, backend.clone(), &settings, events) => run,
            () = cancel => Err(IgnisError::Cancelled),
        };
        let finished = match run {
            Ok(results) => {
                if let (Some(journal), Some(_)) = (&journal, &pending) {
                    journal.committing().await;
                }
                finish(&planned.ctx, &graph, &results, pending.as_ref(), self.config.max_result_bytes)
                    .await
                    .map(|r| (r, results))
            }
            Err(e) => Err(e),
        };
        if finished.is_err()
            && let Some(p) = &pending
            && let Err(e) = p.cleanup().await
        {
            tracing::warn!(job = %job_id, error = %e, "could not remove staged output");
        }
        // Recorded before the shuffle objects go: a driver stopped in
        // between would resume a job whose accepted outputs are gone.
        if let Some(journal) = &journal {
            journal.end(finished.as_ref().map(|_| ())).await;
        }
        if let Err(e) = delete_shuffle(&env, &self.config.shuffle_root, &job_id).await {
            tracing::warn!(job = %job_id, error = %e, "could not remove shuffle objects");
        }
        backend.job_finished(&job_id);
        let (result, results) = finished?;
        let driver_requests = planned.ctx.state().config().get_extension::<StoreCounters>().map(|c| c.snapshot());
        let mut driver_requests = driver_requests.unwrap_or_default();
        if let Some(journal) = &journal {
            driver_requests.add(&journal.requests());
        }
        let receipt = receipt(backend.name(), driver_requests, &results, &self.config.prices);

        let result_stage = graph.result_stage().id;
        let shuffle_bytes = stage_metric(&results, |s| s != result_stage, |m| m.output_bytes);
        let output_rows = stage_metric(&results, |s| s == result_stage, |m| m.output_rows);
        Ok(JobOutcome {
            job_id,
            stages: graph.stages.len(),
            tasks: graph.total_tasks(),
            task_attempts: results.attempts,
            output_rows,
            shuffle_bytes,
            malformed_rows_dropped: stage_metric(&results, |_| true, |m| m.malformed_rows_dropped),
            spilled_bytes: stage_metric(&results, |_| true, |m| m.spilled_bytes),
            peak_task_memory: results
                .results
                .values()
                .flat_map(|rs| rs.iter().map(|r| r.metrics.peak_memory_bytes))
                .max()
                .unwrap_or(0),
            receipt,
            hedged_reads: stage_metric(&results, |_| true, |m| m.hedged_reads),
            hedge_wins: stage_metric(&results, |_| true, |m| m.hedge_wins),
            speculative_attempts: results.speculative_attempts,
            speculative_wins: results.speculative_wins,
            elapsed: start.elapsed(),
            result,
        })
    }
}

async fn finish(
    ctx: &SessionContext,
    graph: &StageGraph,
    results: &StageResults,
    pending: Option<&PendingWrite>,
    max_result_bytes: usize,
) -> Result<JobResult> {
    let stage = graph.result_stage();
    let stage_results = results.results.get(&stage.id).map(Vec::as_slice).unwrap_or_default();
    match pending {
        Some(p) => Ok(JobResult::Written(p.commit(stage_results).await?)),
        None => {
            debug_assert_eq!(stage.exchange, Exchange::Result);
            let schema = stage.plan.schema();
            let reader = ShuffleReaderExec::new(stage.id, schema.clone(), 1)
                .with_pieces(vec![Some(scheduler::result_pieces(stage_results))])?;
            let too_large = || {
                IgnisError::Output(format!(
                    "the collected result is larger than this driver's limit of {} MiB (--max-result-bytes, like \
                     Spark's spark.driver.maxResultSize); write it out with [output.write] instead, or add a LIMIT",
                    max_result_bytes >> 20
                ))
            };
            // The encoded size is known before reading: refuse at once what cannot fit.
            let encoded: u64 = stage_results.iter().map(|r| r.metrics.output_bytes).sum();
            if encoded > max_result_bytes as u64 {
                return Err(too_large());
            }
            let mut stream = datafusion::physical_plan::execute_stream(Arc::new(reader), ctx.task_ctx())
                .map_err(IgnisError::from_datafusion)?;
            let (mut batches, mut bytes) = (Vec::new(), 0usize);
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(IgnisError::from_datafusion)?;
                bytes += batch.get_array_memory_size();
                if bytes > max_result_bytes {
                    return Err(too_large());
                }
                batches.push(batch);
            }
            Ok(JobResult::Rows { schema, batches })
        }
    }
}

fn stage_metric(
    results: &StageResults,
    include: impl Fn(StageId) -> bool,
    metric: impl Fn(&ignis_core::protocol::TaskMetrics) -> u64,
) -> u64 {
    results
        .results
        .iter()
        .filter(|(id, _)| include(**id))
        .flat_map(|(_, rs)| rs.iter().map(|r| metric(&r.metrics)))
        .sum()
}

/// The job's receipt: the driver's object-store requests and its tasks',
/// and the tasks' time on the backend that ran them. Failed attempts report
/// no metrics, so their requests and time are not on it (their Lambda
/// invocations are: `results.attempts` counts every attempt).
fn receipt(backend: &str, driver: StoreCounts, results: &StageResults, prices: &Prices) -> Receipt {
    let mut receipt = Receipt { requests: driver, ..Receipt::default() };
    let tasks = results.results.values().flatten().map(|r| &r.metrics);
    for m in tasks {
        receipt.requests.add(&m.store);
        let seconds = m.elapsed_ms as f64 / 1000.0;
        match backend {
            "lambda" => receipt.lambda_gb_seconds += seconds * m.function_memory_mb as f64 / 1024.0,
            "hosts" => receipt.host_slot_seconds += seconds,
            _ => receipt.local_slot_seconds += seconds,
        }
    }
    if backend == "lambda" {
        receipt.lambda_invocations = results.attempts as u64;
    }
    receipt.priced(prices)
}

async fn delete_shuffle(env: &RuntimeEnv, root: &str, job_id: &JobId) -> Result<()> {
    let prefix = job_shuffle_prefix(root, job_id);
    let (store, path) = store::resolve(env, &prefix)?;
    store::delete_prefix(store.as_ref(), &prefix, &path).await
}
