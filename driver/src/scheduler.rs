//! Runs a stage graph: submits a stage's tasks once every stage it reads has
//! finished, retries failed attempts that may succeed, and stops the job at
//! the first failure that will not.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use futures::future::{AbortHandle, AbortRegistration, Abortable, BoxFuture};
use futures::stream::FuturesUnordered;
use ignis_core::codec::encode_plan;
use ignis_core::error::{IgnisError, Result};
use ignis_core::ids::{JobId, StageId};
use ignis_core::job::{Format, ShuffleCompression};
use ignis_core::protocol::{
    PROTOCOL_VERSION, PieceLocation, StageInput, StoredPieces, TaskFailure, TaskMetrics, TaskOutput, TaskRequest,
    TaskResult, TaskResultOutput, UdfRef,
};
use ignis_core::session::SessionOptions;
use ignis_core::shuffle::pieces::{self, MapOutput, STORE_ABOVE_MAPS};
use ignis_core::shuffle::stage_objects_prefix;
use ignis_core::store;

use crate::backend::TaskBackend;
use crate::planner::stages::{Exchange, Stage, StageGraph};

/// What happens while a job runs, for progress display and status.
#[derive(Clone, Debug)]
pub enum JobEvent {
    /// The job was cut into these stages (id, tasks), before any runs.
    Planned {
        stages: Vec<(StageId, usize)>,
    },
    StageSubmitted {
        stage: StageId,
        tasks: usize,
    },
    TaskStarted {
        stage: StageId,
        partition: u32,
        attempt: u32,
        /// A second attempt of a slow task (speculation), not one from the queue.
        speculative: bool,
    },
    TaskSucceeded {
        stage: StageId,
        partition: u32,
        attempt: u32,
        metrics: TaskMetrics,
        /// The speculative attempt answered first.
        speculative: bool,
    },
    /// An attempt that ended after another attempt of its task had
    /// succeeded (or while one was still running, if it failed): ignored.
    AttemptDiscarded {
        stage: StageId,
        partition: u32,
        attempt: u32,
    },
    TaskFailed {
        stage: StageId,
        partition: u32,
        attempt: u32,
        message: String,
        will_retry: bool,
    },
    StageCompleted {
        stage: StageId,
    },
    /// A task an earlier run of the job (before its driver restarted)
    /// finished: its output is used, it does not run again.
    TaskRestored {
        stage: StageId,
        partition: u32,
    },
}

/// Where the result stage's tasks put their rows.
#[derive(Clone, Debug)]
pub enum ResultTarget {
    /// A one-piece shuffle object per task, read back by the driver.
    Collect,
    /// Files under `staging/p{partition}-a{attempt}/`, committed by the driver.
    Files { staging: String, format: Format, partition_by: Vec<String> },
}

pub struct RunSettings {
    pub job_id: JobId,
    /// The job's runtime: object stores for the piece tables it writes.
    pub env: Arc<RuntimeEnv>,
    pub shuffle_root: String,
    pub compression: ShuffleCompression,
    pub batch_size: usize,
    pub options: SessionOptions,
    pub max_task_attempts: u32,
    pub target: ResultTarget,
    /// Wasm components the plans call.
    pub udfs: Vec<UdfRef>,
    /// `config.task_deadline_s`.
    pub task_deadline: Option<std::time::Duration>,
    /// `config.speculation`.
    pub speculation: bool,
    /// Results an earlier run of this job accepted (a resumed job), by stage and partition.
    pub prior: HashMap<StageId, HashMap<u32, TaskResult>>,
    /// The first attempt number of this run's tasks (see [`crate::journal::ATTEMPTS_PER_RUN`]).
    pub first_attempt: u32,
    /// Where accepted results are recorded, for a restarted driver.
    pub journal: Option<crate::journal::JobJournal>,
}

/// Accepted task results: `results[stage][partition]`, plus attempt counts.
pub struct StageResults {
    pub results: HashMap<StageId, Vec<TaskResult>>,
    pub attempts: usize,
    /// Speculative attempts started, and those whose result was the one accepted.
    pub speculative_attempts: usize,
    pub speculative_wins: usize,
}

/// Speculation (Spark's defaults): once this share of a stage's tasks
/// finished, a task running longer than [`SPECULATION_MULTIPLIER`] x the
/// stage's median task time gets a second attempt; the first to finish wins.
const SPECULATION_QUANTILE: f64 = 0.75;
const SPECULATION_MULTIPLIER: f64 = 1.5;
/// How often running tasks are looked at for speculation and deadlines.
const RUNNING_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// The default deadline of an attempt on executor hosts and Lambda: this
/// many times its stage's median task time...
const DEADLINE_MEDIANS: u32 = 10;
/// ...and never under this. (None before a task of the stage finished.)
const MIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// How often queued tasks look again for free capacity while none finishes.
const CAPACITY_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

type TaskFuture<'a> = BoxFuture<'a, (StageId, u32, u32, std::result::Result<TaskResult, TaskFailure>)>;

pub async fn run_graph(
    graph: &StageGraph,
    backend: Arc<dyn TaskBackend>,
    settings: &RunSettings,
    events: &(dyn Fn(JobEvent) + Send + Sync),
) -> Result<StageResults> {
    let mut partial: HashMap<StageId, Vec<Option<TaskResult>>> = HashMap::new();
    let mut done: HashMap<StageId, Vec<TaskResult>> = HashMap::new();
    let mut requests: HashMap<StageId, TaskRequest> = HashMap::new();
    let mut running: FuturesUnordered<TaskFuture<'_>> = FuturesUnordered::new();
    // Tasks wait here until the backend has a free slot, so "running" means running.
    let mut queue: VecDeque<TaskRequest> = VecDeque::new();
    let mut attempts = 0usize;
    // Attempts running now, by task, with when they started; the next
    // attempt number of each task; finished tasks' times by stage.
    let mut started: HashMap<(StageId, u32), Vec<(u32, Instant)>> = HashMap::new();
    let mut next_attempt: HashMap<(StageId, u32), u32> = HashMap::new();
    let mut took: HashMap<StageId, Vec<std::time::Duration>> = HashMap::new();
    // The speculative attempt of each task that got one.
    let mut speculative: HashMap<(StageId, u32), u32> = HashMap::new();
    let mut speculative_wins = 0usize;
    // Looked at on its own clock: completions must not put the check off.
    let mut check = tokio::time::interval(RUNNING_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Attempts stopped at their deadline, with it.
    let mut overdue: HashMap<(StageId, u32, u32), std::time::Duration> = HashMap::new();
    let default_deadlines = backend.remote();
    let deadline_of = |stage: StageId, took: &HashMap<StageId, Vec<std::time::Duration>>| {
        settings.task_deadline.or_else(|| {
            if !default_deadlines {
                return None;
            }
            Some((median(took.get(&stage)?)? * DEADLINE_MEDIANS).max(MIN_DEADLINE))
        })
    };

    // Attempts can be stopped: once one attempt of a task is accepted, the
    // others are dropped (which stops them on hosts; Lambda's are ignored).
    let mut stoppers: HashMap<(StageId, u32, u32), AbortHandle> = HashMap::new();
    let launch = |req: TaskRequest, stop: AbortRegistration| -> TaskFuture<'_> {
        let backend = backend.clone();
        Box::pin(async move {
            let (stage, partition, attempt) = (req.stage_id, req.partition, req.attempt);
            let outcome = Abortable::new(backend.run(req), stop).await.unwrap_or_else(|_| {
                Err(TaskFailure {
                    kind: ignis_core::error::ErrorKind::Transient,
                    message: "stopped: another attempt of the task finished first".into(),
                })
            });
            (stage, partition, attempt, outcome)
        })
    };

    loop {
        for stage in &graph.stages {
            let ready = !partial.contains_key(&stage.id) && stage.inputs.iter().all(|i| done.contains_key(i));
            if !ready {
                continue;
            }
            let mut slots = vec![None; stage.tasks];
            for (p, result) in settings.prior.get(&stage.id).into_iter().flatten() {
                if let Some(slot) = slots.get_mut(*p as usize) {
                    *slot = Some(result.clone());
                }
            }
            let restored = |slots: &[Option<TaskResult>]| {
                for partition in (0..stage.tasks as u32).filter(|p| slots[*p as usize].is_some()) {
                    events(JobEvent::TaskRestored { stage: stage.id, partition });
                }
            };
            if slots.iter().all(Option::is_some) {
                events(JobEvent::StageSubmitted { stage: stage.id, tasks: stage.tasks });
                restored(&slots);
                partial.insert(stage.id, Vec::new());
                done.insert(stage.id, slots.into_iter().flatten().collect());
                events(JobEvent::StageCompleted { stage: stage.id });
                continue;
            }
            let template = stage_request(stage, graph, &done, settings).await?;
            events(JobEvent::StageSubmitted { stage: stage.id, tasks: stage.tasks });
            restored(&slots);
            for p in (0..stage.tasks as u32).filter(|p| slots[*p as usize].is_none()) {
                queue.push_back(task_request(&template, &stage.plan, p, settings.first_attempt, settings));
            }
            partial.insert(stage.id, slots);
            requests.insert(stage.id, template);
        }
        // Every stage done: attempts still running lost to another attempt
        // of their task; dropping them cancels them (local, hosts) or
        // ignores them (Lambda).
        if done.len() == graph.stages.len() {
            break;
        }
        // Capacity changes as executor hosts come and go.
        let capacity = backend.capacity().max(1);
        while running.len() < capacity
            && let Some(req) = queue.pop_front()
        {
            let task = (req.stage_id, req.partition);
            let is_speculative = speculative.get(&task) == Some(&req.attempt);
            events(JobEvent::TaskStarted {
                stage: req.stage_id,
                partition: req.partition,
                attempt: req.attempt,
                speculative: is_speculative,
            });
            attempts += 1;
            started.entry(task).or_default().push((req.attempt, Instant::now()));
            let next = next_attempt.entry(task).or_default();
            *next = (*next).max(req.attempt + 1);
            let (stopper, stop) = AbortHandle::new_pair();
            stoppers.insert((req.stage_id, req.partition, req.attempt), stopper);
            running.push(launch(req, stop));
        }

        let next = tokio::select! {
            next = running.next() => next,
            () = tokio::time::sleep(CAPACITY_RECHECK), if !queue.is_empty() => continue,
            _ = check.tick() => {
                // Attempts past their deadline are stopped (on hosts too) and, below, retried.
                // Each stage's deadline once a check: a median per started task made a
                // check cost tasks x stage tasks (10,000 x 1,000 never finished).
                let mut deadlines: HashMap<StageId, Option<std::time::Duration>> = HashMap::new();
                for (&(stage_id, partition), runs) in &started {
                    let deadline = *deadlines.entry(stage_id).or_insert_with(|| deadline_of(stage_id, &took));
                    let Some(deadline) = deadline else { continue };
                    for &(attempt, began) in runs {
                        let key = (stage_id, partition, attempt);
                        if began.elapsed() > deadline
                            && !overdue.contains_key(&key)
                            && let Some(stopper) = stoppers.get(&key)
                        {
                            stopper.abort();
                            overdue.insert(key, deadline);
                        }
                    }
                }
                if !settings.speculation {
                    continue;
                }
                for (stage_id, partition, attempt) in slow_tasks(graph, &partial, &done, &started, &took) {
                    let task = (stage_id, partition);
                    if speculative.contains_key(&task) {
                        continue;
                    }
                    let template =
                        requests.get(&stage_id).ok_or_else(|| IgnisError::internal("speculation of unknown stage"))?;
                    let plan = &graph.stage(stage_id).ok_or_else(|| IgnisError::internal("unknown stage"))?.plan;
                    let attempt = next_attempt.get(&task).copied().unwrap_or(attempt + 1);
                    next_attempt.insert(task, attempt + 1);
                    speculative.insert(task, attempt);
                    queue.push_front(task_request(template, plan, partition, attempt, settings));
                }
                continue;
            }
        };
        let Some((stage_id, partition, attempt, mut outcome)) = next else {
            break;
        };
        stoppers.remove(&(stage_id, partition, attempt));
        if let Some(deadline) = overdue.remove(&(stage_id, partition, attempt)) {
            let message = format!(
                "task {stage_id}/{partition} attempt {attempt} ran past its deadline of {:.1}s",
                deadline.as_secs_f64()
            );
            tracing::warn!(job = %settings.job_id, %message, "task attempt abandoned");
            outcome = Err(TaskFailure { kind: ignis_core::error::ErrorKind::Transient, message });
        }
        // This attempt no longer runs; another of its task may, or may have won.
        let task = (stage_id, partition);
        let began = started.get_mut(&task).and_then(|runs| {
            let at = runs.iter().position(|(a, _)| *a == attempt)?;
            Some(runs.swap_remove(at).1)
        });
        let others_running = started.get(&task).is_some_and(|runs| !runs.is_empty());
        let already_won = done.contains_key(&stage_id)
            || partial.get(&stage_id).is_some_and(|slots| slots[partition as usize].is_some());
        if already_won || (outcome.is_err() && others_running) {
            events(JobEvent::AttemptDiscarded { stage: stage_id, partition, attempt });
            continue;
        }
        match outcome {
            Ok(result) => {
                let is_speculative = speculative.get(&task) == Some(&attempt);
                speculative_wins += usize::from(is_speculative);
                if let Some(began) = began {
                    took.entry(stage_id).or_default().push(began.elapsed());
                }
                events(JobEvent::TaskSucceeded {
                    stage: stage_id,
                    partition,
                    attempt,
                    metrics: result.metrics,
                    speculative: is_speculative,
                });
                if let Some(journal) = &settings.journal {
                    journal.accepted(result.clone());
                }
                // The task's other attempts (speculative or the original) stop.
                for (other, _) in started.get(&task).into_iter().flatten() {
                    if let Some(stopper) = stoppers.remove(&(stage_id, partition, *other)) {
                        stopper.abort();
                    }
                }
                let slots =
                    partial.get_mut(&stage_id).ok_or_else(|| IgnisError::internal("result for unknown stage"))?;
                slots[partition as usize] = Some(result);
                if slots.iter().all(Option::is_some) {
                    let results = slots.iter_mut().filter_map(Option::take).collect();
                    done.insert(stage_id, results);
                    events(JobEvent::StageCompleted { stage: stage_id });
                }
            }
            Err(failure) => {
                // Attempts of this run: a resumed job's tasks get their full count again.
                let tries = attempt.saturating_sub(settings.first_attempt) + 1;
                let will_retry = failure.kind.is_retryable() && tries < settings.max_task_attempts;
                events(JobEvent::TaskFailed {
                    stage: stage_id,
                    partition,
                    attempt,
                    message: failure.message.clone(),
                    will_retry,
                });
                if !will_retry {
                    let tries =
                        if failure.kind.is_retryable() { format!(" after {tries} attempts") } else { String::new() };
                    return Err(IgnisError::Task {
                        kind: failure.kind,
                        message: format!("stage {stage_id} task {partition} failed{tries}: {}", failure.message),
                    });
                }
                let template = requests.get(&stage_id).ok_or_else(|| IgnisError::internal("retry of unknown stage"))?;
                // A retry goes to the front: it holds up its stage.
                let plan = &graph.stage(stage_id).ok_or_else(|| IgnisError::internal("retry of unknown stage"))?.plan;
                let retry = next_attempt.get(&task).copied().unwrap_or(attempt + 1);
                queue.push_front(task_request(template, plan, partition, retry, settings));
            }
        }
    }

    if done.len() != graph.stages.len() {
        return Err(IgnisError::internal("scheduler stopped with stages left to run"));
    }
    Ok(StageResults { results: done, attempts, speculative_attempts: speculative.len(), speculative_wins })
}

/// The median of task times (the upper one of an even count).
pub(crate) fn median(times: &[std::time::Duration]) -> Option<std::time::Duration> {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

/// Tasks to speculate on: in stages with at least [`SPECULATION_QUANTILE`]
/// of their tasks finished, a task with one attempt running, for longer than
/// [`SPECULATION_MULTIPLIER`] x the stage's median task time.
fn slow_tasks(
    graph: &StageGraph,
    partial: &HashMap<StageId, Vec<Option<TaskResult>>>,
    done: &HashMap<StageId, Vec<TaskResult>>,
    started: &HashMap<(StageId, u32), Vec<(u32, Instant)>>,
    took: &HashMap<StageId, Vec<std::time::Duration>>,
) -> Vec<(StageId, u32, u32)> {
    let mut slow = Vec::new();
    for stage in &graph.stages {
        let (Some(slots), Some(times)) = (partial.get(&stage.id), took.get(&stage.id)) else { continue };
        if done.contains_key(&stage.id) || stage.tasks < 2 {
            continue;
        }
        // As Spark counts it: at least floor(quantile x tasks), and one.
        let finished = slots.iter().filter(|s| s.is_some()).count();
        if finished < ((SPECULATION_QUANTILE * stage.tasks as f64).floor() as usize).max(1) {
            continue;
        }
        let Some(median) = median(times) else { continue };
        let threshold = median.mul_f64(SPECULATION_MULTIPLIER);
        for p in 0..stage.tasks as u32 {
            if let Some([(attempt, began)]) = started.get(&(stage.id, p)).map(Vec::as_slice)
                && slots[p as usize].is_none()
                && began.elapsed() > threshold
            {
                slow.push((stage.id, p, *attempt));
            }
        }
    }
    slow
}

/// The request every task of `stage` shares; `task_request` fills in the task.
async fn stage_request(
    stage: &Stage,
    graph: &StageGraph,
    done: &HashMap<StageId, Vec<TaskResult>>,
    settings: &RunSettings,
) -> Result<TaskRequest> {
    let mut inputs = Vec::with_capacity(stage.inputs.len());
    for id in &stage.inputs {
        let upstream = graph.stage(*id).ok_or_else(|| IgnisError::internal(format!("no stage {id}")))?;
        let stored = match stored_input(upstream, &done[id], settings).await? {
            Some(stored) => stored,
            None => stage_input(upstream, &done[id])?,
        };
        inputs.push(stored);
    }
    let output = match (&stage.exchange, &settings.target) {
        (Exchange::Result, ResultTarget::Files { staging, format, partition_by }) => TaskOutput::Files {
            staging: staging.clone(),
            file_stem: String::new(),
            format: *format,
            partition_by: partition_by.clone(),
        },
        _ => TaskOutput::Shuffle { root: settings.shuffle_root.clone(), compression: settings.compression },
    };
    Ok(TaskRequest {
        protocol_version: PROTOCOL_VERSION,
        job_id: settings.job_id.clone(),
        stage_id: stage.id,
        partition: 0,
        attempt: 0,
        plan: encode_plan(crate::planner::runtime_filters::drop_oversized(
            result_plan(stage, &settings.target)?,
            &|id| done.get(&id).map(|results| results.iter().map(|r| r.metrics.output_rows).sum()),
        )?)?
        .into(),
        plan_url: None,
        inputs,
        output,
        batch_size: settings.batch_size,
        options: settings.options.clone(),
        udfs: settings.udfs.clone(),
    })
}

/// The result stage of a collect job writes its rows as a one-piece shuffle.
fn result_plan(stage: &Stage, target: &ResultTarget) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    match (&stage.exchange, target) {
        (Exchange::Result, ResultTarget::Collect) => {
            Ok(Arc::new(ignis_core::shuffle::ShuffleWriterExec::try_new(stage.plan.clone(), None)?))
        }
        _ => Ok(stage.plan.clone()),
    }
}

/// Task `partition` of the stage whose shared request is `template`: only
/// the input pieces its partition of `plan` reads.
fn task_request(
    template: &TaskRequest,
    plan: &Arc<dyn ExecutionPlan>,
    partition: u32,
    attempt: u32,
    settings: &RunSettings,
) -> TaskRequest {
    let reads = crate::planner::stages::partitions_read(plan, partition as usize);
    let inputs = template
        .inputs
        .iter()
        .map(|input| {
            let wanted = reads.get(&input.stage_id);
            let reads = |p: &usize| wanted.is_some_and(|w| w.contains(p));
            let partitions = input
                .partitions
                .iter()
                .enumerate()
                .map(|(p, pieces)| if reads(&p) { pieces.clone() } else { None })
                .collect();
            let stored = input.stored.as_ref().map(|stored| StoredPieces {
                url: stored.url.clone(),
                objects: stored.objects.clone(),
                ranges: stored.ranges.iter().enumerate().map(|(p, r)| if reads(&p) { *r } else { None }).collect(),
            });
            StageInput { stage_id: input.stage_id, partitions, stored }
        })
        .collect();
    // Field by field: the shared request's inputs hold every partition's pieces.
    let mut req = TaskRequest {
        protocol_version: template.protocol_version,
        job_id: template.job_id.clone(),
        stage_id: template.stage_id,
        partition,
        attempt,
        plan: template.plan.clone(),
        plan_url: template.plan_url.clone(),
        inputs,
        output: template.output.clone(),
        batch_size: template.batch_size,
        options: template.options.clone(),
        udfs: template.udfs.clone(),
    };
    if let TaskOutput::Files { staging, file_stem, .. } = &mut req.output {
        *staging = store::join(staging, &format!("p{partition}-a{attempt}"));
        *file_stem = format!("part-{partition:05}-{}", settings.job_id);
    }
    req
}

/// Where a reader of `upstream`'s output finds each of its partitions.
fn stage_input(upstream: &Stage, results: &[TaskResult]) -> Result<StageInput> {
    let shuffles = results
        .iter()
        .map(|r| match &r.output {
            TaskResultOutput::Shuffle { url, pieces } => Ok((url, pieces)),
            TaskResultOutput::Files { .. } => Err(IgnisError::internal("stage input is not a shuffle")),
        })
        .collect::<Result<Vec<_>>>()?;
    let partitions = match &upstream.exchange {
        Exchange::Split { partitions, .. } => (0..*partitions)
            .map(|r| {
                shuffles
                    .iter()
                    .map(|(url, pieces)| {
                        pieces.get(r).map(|p| PieceLocation::new(url, p)).ok_or_else(|| {
                            IgnisError::internal(format!("stage {} output has no piece {r}", upstream.id))
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?,
        Exchange::Gather | Exchange::Result => {
            shuffles.iter().map(|(url, pieces)| pieces.iter().map(|p| PieceLocation::new(url, p)).collect()).collect()
        }
    };
    Ok(StageInput { stage_id: upstream.id, partitions: partitions.into_iter().map(Some).collect(), stored: None })
}

/// A hash-split stage of many map tasks: its pieces in a table stored once
/// next to its shuffle objects, so each reduce task's request carries the
/// byte range of its own partition instead of a piece of every map task.
/// `None` for other stages (their pieces go inline).
async fn stored_input(upstream: &Stage, results: &[TaskResult], settings: &RunSettings) -> Result<Option<StageInput>> {
    let Exchange::Split { partitions, .. } = &upstream.exchange else { return Ok(None) };
    if results.len() <= STORE_ABOVE_MAPS {
        return Ok(None);
    }
    let mut maps = Vec::with_capacity(results.len());
    for r in results {
        let TaskResultOutput::Shuffle { url, pieces } = &r.output else { return Ok(None) };
        maps.push(MapOutput { map: r.partition, attempt: r.attempt, url, pieces });
    }
    let objects = stage_objects_prefix(&settings.shuffle_root, &settings.job_id, upstream.id);
    let url = store::join(&objects, "pieces.table");
    let stored = pieces::write_table(&settings.env, &url, &objects, &maps, *partitions).await?;
    Ok(stored.map(|stored| StageInput {
        stage_id: upstream.id,
        partitions: vec![None; *partitions],
        stored: Some(stored),
    }))
}

/// The shuffle pieces of the result stage, in partition order, for collect.
pub fn result_pieces(results: &[TaskResult]) -> Vec<PieceLocation> {
    results
        .iter()
        .flat_map(|r| match &r.output {
            TaskResultOutput::Shuffle { url, pieces } => pieces.iter().map(|p| PieceLocation::new(url, p)).collect(),
            TaskResultOutput::Files { .. } => vec![],
        })
        .collect()
}
