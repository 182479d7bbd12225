//! `ignis-executor`: runs one task. A task is a stage's plan fragment (bytes in
//! a [`TaskRequest`]) executed on one partition; its rows go either to a
//! shuffle object (the plan root is a `ShuffleWriterExec`) or to result files
//! staged for the driver to commit.
//!
//! Used in-process by the driver (local mode), by executor hosts ([`host`]:
//! pull tasks from a driver over HTTP) and by the Lambda handler. Wasm UDFs
//! run in [`udf`]. Scheduling, retries and commit belong to the driver.

pub mod host;
mod output;
pub mod udf;

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{FairSpillPool, PeakRecordingPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::prelude::SessionContext;
use ignis_core::codec::decode_plan;
use ignis_core::csv::MALFORMED_ROWS_DROPPED;
use ignis_core::error::{IgnisError, Result};
use ignis_core::ids::{JobId, StageId};
use ignis_core::map_batches::BatchFunctions;
use ignis_core::memory::TaskMemory;
use ignis_core::protocol::{
    PLANS_A_HOST_KEEPS, TaskFailure, TaskMetrics, TaskOutput, TaskRequest, TaskResult, TaskResultOutput, UdfRef,
};
use ignis_core::receipt::StoreCounters;
use ignis_core::session::{SessionOptions, session_config};
use ignis_core::shuffle::{ShuffleWriterExec, shuffle_object_url};
use udf::UdfHost;

/// Runs tasks. Cheap to share; holds the runtime (object stores, caches, the
/// spill directory) that every task on this executor uses, and the memory
/// limit of each task: a task gets its own memory pool of that size.
#[derive(Debug, Clone)]
pub struct Executor {
    runtime: Arc<RuntimeEnv>,
    memory: TaskMemory,
    /// Task contexts by batch size and session options: building one
    /// registers every built-in function, so it is done once, not per task.
    contexts: Arc<Mutex<HashMap<ContextKey, Arc<TaskContext>>>>,
    /// Stage plans this executor was sent, so later tasks of a stage need not
    /// carry theirs.
    plans: Arc<Mutex<PlanCache>>,
    /// Whether plans sent inline are kept (executor hosts, whose driver then
    /// leaves them out); plans fetched by reference always are.
    keep_sent_plans: bool,
}

/// Stage plans by (job, stage), the oldest forgotten first past [`PlanCache::CAPACITY`].
#[derive(Debug, Default)]
struct PlanCache {
    plans: HashMap<(JobId, StageId), Bytes>,
    order: VecDeque<(JobId, StageId)>,
}

impl PlanCache {
    /// More than a driver assumes a host keeps ([`PLANS_A_HOST_KEEPS`]).
    const CAPACITY: usize = 2 * PLANS_A_HOST_KEEPS;

    fn insert(&mut self, key: (JobId, StageId), plan: Bytes) {
        if self.plans.insert(key.clone(), plan).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.plans.remove(&old);
            }
        }
    }
}

/// Rows per batch and the job's session options.
type ContextKey = (usize, SessionOptions);

impl Executor {
    /// An executor whose tasks each run under `memory`, spilling to the
    /// operating system's temporary directory.
    pub fn new(runtime: Arc<RuntimeEnv>, memory: TaskMemory) -> Self {
        Self { runtime, memory, contexts: Arc::default(), plans: Arc::default(), keep_sent_plans: false }
    }

    /// Keep the plans tasks bring, for the stage's later tasks that come
    /// without (an executor host).
    pub fn keeping_sent_plans(mut self) -> Self {
        self.keep_sent_plans = true;
        self
    }

    /// The runtime of one task: the executor's stores, caches and disk
    /// manager, and a memory pool of its own. Spillable operators share the
    /// pool fairly; the error of a task over it names the largest consumers.
    /// Its object-store requests are counted for the job's receipt.
    fn task_runtime(&self) -> (Arc<RuntimeEnv>, Arc<PeakRecordingPool>, Arc<StoreCounters>) {
        let fair = FairSpillPool::new(self.memory.limit.0 as usize);
        let tracked = TrackConsumersPool::new(fair, NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN));
        let pool = Arc::new(PeakRecordingPool::new(Arc::new(tracked)));
        let (counted, requests) = ignis_core::receipt::counted(&self.runtime);
        let mut runtime = Arc::unwrap_or_clone(counted);
        runtime.memory_pool = pool.clone();
        (Arc::new(runtime), pool, requests)
    }

    fn task_context(&self, batch_size: usize, options: &SessionOptions) -> Arc<TaskContext> {
        let mut contexts = self.contexts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        contexts
            .entry((batch_size, options.clone()))
            .or_insert_with(|| {
                let config = session_config(1, batch_size, options);
                let ctx = SessionContext::new_with_config_rt(config, self.runtime.clone());
                ignis_core::functions::register(&ctx);
                ctx.task_ctx()
            })
            .clone()
    }

    /// One task's context: the cached base context on the task's own runtime,
    /// plus every function of the given components, fetched (and checked
    /// against their digests) on first use, then cached.
    async fn for_task(
        &self,
        base: &TaskContext,
        runtime: Arc<RuntimeEnv>,
        udfs: &[UdfRef],
    ) -> Result<Arc<TaskContext>> {
        let mut scalars = base.scalar_functions().clone();
        let mut aggregates = base.aggregate_functions().clone();
        let mut transforms = BatchFunctions::default();
        for udf in udfs {
            let host = UdfHost::global()?;
            let component = match host.get(&udf.digest) {
                Some(c) => c,
                None => {
                    let bytes = ignis_core::store::read(&self.runtime, &udf.url).await?;
                    let host = host.clone();
                    let udf = udf.clone();
                    tokio::task::spawn_blocking(move || host.load(&bytes, Some(&udf.digest), &udf.label))
                        .await
                        .map_err(|e| IgnisError::internal(format!("component load panicked: {e}")))??
                }
            };
            let functions = udf::functions(&component)?;
            for f in functions.scalars {
                scalars.insert(f.name().to_owned(), Arc::new(f));
            }
            for f in functions.aggregates {
                aggregates.insert(f.name().to_owned(), Arc::new(f));
            }
            for f in functions.transforms {
                transforms.insert(f);
            }
        }
        let mut config = base.session_config().clone();
        if !transforms.is_empty() {
            config = config.with_extension(Arc::new(transforms));
        }
        Ok(Arc::new(TaskContext::new(
            base.task_id(),
            base.session_id(),
            config,
            scalars,
            base.higher_order_functions().clone(),
            aggregates,
            base.window_functions().clone(),
            runtime,
        )))
    }

    /// The task's stage plan: sent with it (and kept for the stage's later
    /// tasks), kept from an earlier task of the stage, or fetched from
    /// `plan_url` once per stage.
    async fn plan_bytes(&self, req: &TaskRequest) -> Result<Bytes> {
        let key = (req.job_id.clone(), req.stage_id);
        let cached = |plans: &Mutex<PlanCache>| {
            plans.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).plans.get(&key).cloned()
        };
        let plan = if !req.plan.is_empty() {
            if !self.keep_sent_plans {
                return Ok(req.plan.clone());
            }
            req.plan.clone()
        } else if let Some(plan) = cached(&self.plans) {
            return Ok(plan);
        } else if let Some(url) = &req.plan_url {
            tracing::info!(%url, "fetching the stage plan by reference");
            ignis_core::store::read(&self.runtime, url).await?
        } else {
            return Err(IgnisError::Protocol(format!(
                "task {}/{} came without its stage's plan, and this executor has not kept it",
                req.stage_id, req.partition
            )));
        };
        self.plans.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(key, plan.clone());
        Ok(plan)
    }

    /// Run one task attempt; a failure is classified for the driver's retry logic.
    pub async fn run_task(&self, request: TaskRequest) -> std::result::Result<TaskResult, TaskFailure> {
        let task = format!("task {}/{}.{}", request.stage_id, request.partition, request.attempt);
        tracing::debug!(job = %request.job_id, %task, "task started");
        let result = self.run(request).await.map_err(|e| self.memory.explain(e));
        if let Err(e) = &result {
            tracing::debug!(%task, error = %e, "task failed");
        }
        result.map_err(TaskFailure::from)
    }

    async fn run(&self, mut req: TaskRequest) -> Result<TaskResult> {
        req.check_version()?;
        let start = Instant::now();
        let base = self.task_context(req.batch_size, &req.options);
        let (runtime, pool, requests) = self.task_runtime();
        let task_ctx = self.for_task(&base, runtime, &req.udfs).await?;
        for input in &mut req.inputs {
            ignis_core::shuffle::pieces::resolve(&task_ctx.runtime_env(), input).await?;
        }
        let plan = decode_plan(&self.plan_bytes(&req).await?, &task_ctx, &req.inputs)?;
        let partition = req.partition as usize;
        let partitions = plan.properties().output_partitioning().partition_count();
        if partition >= partitions {
            return Err(IgnisError::Protocol(format!(
                "task for partition {partition} of a stage with {partitions} partitions"
            )));
        }

        let (output, output_rows, output_bytes) = match &req.output {
            TaskOutput::Shuffle { root, compression } => {
                let writer = plan.downcast_ref::<ShuffleWriterExec>().ok_or_else(|| {
                    IgnisError::Protocol("a shuffle task's plan must have a ShuffleWriterExec root".into())
                })?;
                let url = shuffle_object_url(root, &req.job_id, req.stage_id, req.partition, req.attempt);
                let pieces = writer.write(partition, task_ctx, &url, *compression).await?;
                let rows = pieces.iter().map(|p| p.rows).sum();
                let bytes = pieces.iter().map(|p| p.length).sum();
                (TaskResultOutput::Shuffle { url, pieces }, rows, bytes)
            }
            TaskOutput::Files { staging, file_stem, format, partition_by } => {
                let files =
                    output::write_files(plan.clone(), partition, task_ctx, staging, file_stem, *format, partition_by)
                        .await?;
                let rows = files.iter().map(|f| f.rows).sum();
                let bytes = files.iter().map(|f| f.bytes).sum();
                (TaskResultOutput::Files { files }, rows, bytes)
            }
        };
        Ok(TaskResult {
            job_id: req.job_id,
            stage_id: req.stage_id,
            partition: req.partition,
            attempt: req.attempt,
            output,
            metrics: TaskMetrics {
                output_rows,
                output_bytes,
                elapsed_ms: start.elapsed().as_millis() as u64,
                malformed_rows_dropped: named_metric(&plan, MALFORMED_ROWS_DROPPED),
                spilled_bytes: sum_metric(&plan, &MetricsSet::spilled_bytes),
                peak_memory_bytes: pool.peak_reserved() as u64,
                store: requests.snapshot(),
                function_memory_mb: 0,
                hedged_reads: requests.hedges.snapshot().0,
                hedge_wins: requests.hedges.snapshot().1,
            },
        })
    }
}

/// A named counter summed over every operator of a plan.
fn named_metric(plan: &Arc<dyn ExecutionPlan>, name: &str) -> u64 {
    sum_metric(plan, &|m| m.sum_by_name(name).map(|v| v.as_usize()))
}

/// A counter summed over every operator of a plan.
fn sum_metric(plan: &Arc<dyn ExecutionPlan>, metric: &dyn Fn(&MetricsSet) -> Option<usize>) -> u64 {
    let own = plan.metrics().and_then(|m| metric(&m)).unwrap_or(0) as u64;
    own + plan.children().into_iter().map(|c| sum_metric(c, metric)).sum::<u64>()
}
