//! Jobs submitted over HTTP: each runs in the background on the driver, and
//! its status (stages, task counts by state, attempts, metrics, error) is
//! kept for `GET /v1/jobs/{id}`. Every job belongs to the tenant that
//! submitted it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ignis_core::error::{ErrorKind, IgnisError};
use ignis_core::ids::JobId;
use ignis_core::job::JobSpec;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};

use super::error::{ErrorBody, user_error_code};
use crate::scheduler::JobEvent;
use crate::stream::StreamStatus;
use crate::{Driver, JobOutcome, JobResult};

/// How many jobs a tenant may have, and keep.
#[derive(Clone, Debug)]
pub struct TenantLimits {
    /// Jobs of one tenant running at once; more wait in a queue.
    pub running: usize,
    /// Jobs of one tenant waiting to run; past that, a submission is refused (429).
    pub queued: usize,
    /// Finished jobs kept per tenant for status and results; its oldest go first.
    pub retained: usize,
    /// Bytes of collected rows kept per tenant; past that its oldest results
    /// are dropped (their status stays).
    pub retained_result_bytes: usize,
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self { running: 4, queued: 16, retained: 100, retained_result_bytes: 1 << 30 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for one of its tenant's running slots.
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_finished(self) -> bool {
        !matches!(self, JobState::Running | JobState::Queued)
    }
}

/// What `GET /v1/jobs/{id}` answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: String,
    pub name: Option<String>,
    pub state: JobState,
    /// Milliseconds since the Unix epoch.
    pub submitted_at_ms: u64,
    pub elapsed_ms: u64,
    pub stages: Vec<StageStatus>,
    pub metrics: JobMetrics,
    pub error: Option<ErrorBody>,
    /// Where a finished `write` job put its files.
    pub output: Option<WrittenOutput>,
    /// The locations its tables read.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Cached DataFrames (Spark Connect `cache()`) it read instead of recomputing them.
    #[serde(default)]
    pub cache_reads: Vec<String>,
    /// A stream's progress: batches, rows, watermark, state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StageStatus {
    pub id: u32,
    pub tasks: usize,
    pub pending: usize,
    pub running: usize,
    pub succeeded: usize,
    /// Attempts that failed (retried or not).
    pub failed_attempts: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobMetrics {
    pub tasks: usize,
    pub task_attempts: usize,
    pub output_rows: u64,
    pub shuffle_bytes: u64,
    pub malformed_rows_dropped: u64,
    /// Bytes the job's tasks spilled to local disk (sorts, aggregations, joins over their memory limit).
    #[serde(default)]
    pub spilled_bytes: u64,
    /// The most memory one of the job's tasks held in its memory pool.
    #[serde(default)]
    pub peak_task_memory: u64,
    /// What the job used and its estimated cost, once it succeeded.
    #[serde(default)]
    pub receipt: Option<ignis_core::receipt::Receipt>,
    /// Shuffle GETs sent again for want of an answer (hedged), and those that answered first.
    #[serde(default)]
    pub hedged_reads: u64,
    #[serde(default)]
    pub hedge_wins: u64,
    /// Speculative attempts (second attempts of slow tasks) and those that finished first.
    #[serde(default)]
    pub speculative_attempts: usize,
    #[serde(default)]
    pub speculative_wins: usize,
}

impl From<&JobOutcome> for JobMetrics {
    fn from(o: &JobOutcome) -> Self {
        Self {
            tasks: o.tasks,
            task_attempts: o.task_attempts,
            output_rows: o.output_rows,
            shuffle_bytes: o.shuffle_bytes,
            malformed_rows_dropped: o.malformed_rows_dropped,
            spilled_bytes: o.spilled_bytes,
            peak_task_memory: o.peak_task_memory,
            receipt: Some(o.receipt.clone()),
            hedged_reads: o.hedged_reads,
            hedge_wins: o.hedge_wins,
            speculative_attempts: o.speculative_attempts,
            speculative_wins: o.speculative_wins,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WrittenOutput {
    pub location: String,
    pub files: usize,
    pub rows: u64,
    /// `mode = ignore` found data at the location and wrote nothing.
    pub skipped: bool,
}

pub struct JobEntry {
    pub id: JobId,
    pub tenant: String,
    name: Option<String>,
    inputs: Vec<String>,
    cache_reads: Vec<String>,
    submitted_at_ms: u64,
    started: Instant,
    cancel: watch::Sender<bool>,
    progress: Mutex<Progress>,
    /// A stream's progress, and the switch that stops it after its running batch.
    stream: Option<(Arc<Mutex<StreamStatus>>, watch::Sender<bool>)>,
}

#[derive(Default)]
struct Progress {
    /// None until the job finishes, except `Queued` while it waits.
    state: Option<JobState>,
    elapsed_ms: Option<u64>,
    stages: BTreeMap<u32, StageStatus>,
    metrics: JobMetrics,
    error: Option<ErrorBody>,
    output: Option<WrittenOutput>,
    result: Option<Arc<JobResult>>,
    /// Bytes of `result`'s rows in memory.
    result_bytes: usize,
    /// The result was dropped to keep the tenant within its budget.
    result_evicted: bool,
}

impl JobEntry {
    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn state(&self) -> JobState {
        self.progress().state.unwrap_or(JobState::Running)
    }

    /// The rows or files of a succeeded job.
    pub fn result(&self) -> Option<Arc<JobResult>> {
        self.progress().result.clone()
    }

    /// Whether the result was dropped to keep its tenant within budget.
    pub fn result_evicted(&self) -> bool {
        self.progress().result_evicted
    }

    /// Ask the job to stop; returns false when it had already finished.
    pub fn cancel(&self) -> bool {
        if self.state().is_finished() {
            return false;
        }
        self.cancel.send_replace(true);
        true
    }

    pub fn is_stream(&self) -> bool {
        self.stream.is_some()
    }

    /// Stop a stream after its running batch; false when it has finished.
    pub fn stop(&self) -> bool {
        match &self.stream {
            Some((_, stop)) if !self.state().is_finished() => {
                stop.send_replace(true);
                true
            }
            _ => false,
        }
    }

    pub fn status(&self) -> JobStatus {
        let stream = self.stream.as_ref().map(|(s, _)| s.lock().map(|s| s.clone()).unwrap_or_default());
        let p = self.progress();
        JobStatus {
            id: self.id.to_string(),
            name: self.name.clone(),
            state: p.state.unwrap_or(JobState::Running),
            submitted_at_ms: self.submitted_at_ms,
            elapsed_ms: p.elapsed_ms.unwrap_or_else(|| self.started.elapsed().as_millis() as u64),
            stages: p.stages.values().cloned().collect(),
            metrics: p.metrics.clone(),
            error: p.error.clone(),
            output: p.output.clone(),
            inputs: self.inputs.clone(),
            cache_reads: self.cache_reads.clone(),
            stream,
        }
    }

    fn apply(&self, event: JobEvent) {
        let mut p = self.progress();
        match event {
            JobEvent::Planned { stages } => {
                for (id, tasks) in stages {
                    p.stages.insert(id.0, StageStatus { id: id.0, tasks, pending: tasks, ..Default::default() });
                }
            }
            JobEvent::StageSubmitted { .. } | JobEvent::StageCompleted { .. } => {}
            JobEvent::TaskStarted { stage, speculative, .. } => {
                p.metrics.task_attempts += 1;
                p.metrics.speculative_attempts += usize::from(speculative);
                if let Some(s) = p.stages.get_mut(&stage.0) {
                    if !speculative {
                        s.pending = s.pending.saturating_sub(1);
                    }
                    s.running += 1;
                }
            }
            JobEvent::AttemptDiscarded { stage, .. } => {
                if let Some(s) = p.stages.get_mut(&stage.0) {
                    s.running = s.running.saturating_sub(1);
                }
            }
            JobEvent::TaskRestored { stage, .. } => {
                if let Some(s) = p.stages.get_mut(&stage.0) {
                    s.pending = s.pending.saturating_sub(1);
                    s.succeeded += 1;
                }
            }
            JobEvent::TaskSucceeded { stage, speculative, .. } => {
                p.metrics.speculative_wins += usize::from(speculative);
                if let Some(s) = p.stages.get_mut(&stage.0) {
                    s.running = s.running.saturating_sub(1);
                    s.succeeded += 1;
                }
            }
            JobEvent::TaskFailed { stage, will_retry, .. } => {
                if let Some(s) = p.stages.get_mut(&stage.0) {
                    s.running = s.running.saturating_sub(1);
                    s.failed_attempts += 1;
                    if will_retry {
                        s.pending += 1;
                    }
                }
            }
        }
    }

    fn finish(&self, outcome: ignis_core::error::Result<JobOutcome>) {
        let mut p = self.progress();
        p.elapsed_ms = Some(self.started.elapsed().as_millis() as u64);
        match outcome {
            Ok(o) => {
                p.state = Some(JobState::Succeeded);
                p.metrics = JobMetrics::from(&o);
                p.output = match &o.result {
                    JobResult::Rows { .. } => None,
                    JobResult::Written(c) => Some(WrittenOutput {
                        location: c.location.clone(),
                        files: c.files.len(),
                        rows: c.rows,
                        skipped: false,
                    }),
                    JobResult::Skipped { location } => {
                        Some(WrittenOutput { location: location.clone(), files: 0, rows: 0, skipped: true })
                    }
                };
                p.result_bytes = match &o.result {
                    JobResult::Rows { batches, .. } => batches.iter().map(|b| b.get_array_memory_size()).sum(),
                    _ => 0,
                };
                p.result = Some(Arc::new(o.result));
            }
            Err(IgnisError::Cancelled) => {
                p.state = Some(JobState::Cancelled);
                p.error = Some(ErrorBody { code: "cancelled".into(), message: "the job was cancelled".into() });
            }
            Err(e) => {
                p.state = Some(JobState::Failed);
                p.error = Some(job_error(&e));
            }
        }
    }
}

/// A stream that stopped (asked to, or its trigger done): its figures are in its stream status.
fn stream_outcome(id: &JobId) -> JobOutcome {
    let nothing =
        JobResult::Rows { schema: Arc::new(datafusion::arrow::datatypes::Schema::empty()), batches: Vec::new() };
    JobOutcome::without_tasks(id.clone(), std::time::Duration::ZERO, nothing)
}

/// A failed job's error as its owner sees it: user errors in full, our own
/// failures without internals.
fn job_error(e: &IgnisError) -> ErrorBody {
    match e.kind() {
        ErrorKind::User => ErrorBody { code: user_error_code(e).into(), message: e.to_string() },
        ErrorKind::Transient => ErrorBody { code: "task_failed".into(), message: e.to_string() },
        ErrorKind::Internal => {
            tracing::error!(error = %e, "job failed with an internal error");
            ErrorBody {
                code: "internal".into(),
                message: "the job failed with an internal error; see the driver log".into(),
            }
        }
    }
}

/// A job to run: as submitted (planned when it starts), or planned already
/// by a front end (Spark Connect), which then describes it with `job`.
pub struct Submission {
    pub job: JobSpec,
    /// The plan and the UDF components it calls.
    pub planned: Option<(crate::PlannedJob, Vec<ignis_core::protocol::UdfRef>)>,
    pub cache_reads: Vec<String>,
    /// The job's id and when it was submitted, when decided before (a
    /// journaled job, a job resumed from the journal); else new ones.
    pub id: Option<(JobId, u64)>,
    /// The job's record in the driver's journal.
    pub journal: Option<crate::Journaling>,
}

impl Submission {
    pub fn new(job: JobSpec) -> Self {
        Self { job, planned: None, cache_reads: Vec::new(), id: None, journal: None }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

#[derive(Default)]
pub struct JobRegistry {
    jobs: Mutex<Jobs>,
    limits: TenantLimits,
    /// Running slots per tenant.
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// The tenant has as many jobs running and queued as it may.
#[derive(Debug)]
pub struct Busy {
    pub running: usize,
    pub queued: usize,
}

/// Jobs by id, and their ids in submission order.
type Jobs = (BTreeMap<JobId, Arc<JobEntry>>, VecDeque<JobId>);

impl JobRegistry {
    pub fn new(limits: TenantLimits) -> Self {
        Self { limits, ..Default::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn slots(&self, tenant: &str) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.entry(tenant.to_string()).or_insert_with(|| Arc::new(Semaphore::new(self.limits.running.max(1)))).clone()
    }

    /// Start `job` in the background for `tenant` (queued behind the tenant's
    /// running jobs if it has its fill); `done` runs when it ends.
    pub fn submit(
        &self,
        driver: Arc<Driver>,
        tenant: String,
        submission: Submission,
        done: impl FnOnce(&JobEntry) + Send + 'static,
    ) -> Result<Arc<JobEntry>, Busy> {
        let Submission { job, planned, cache_reads, id, journal } = submission;
        let record = journal.as_ref().map(|j| j.journal.clone());
        let slots = self.slots(&tenant);
        // A free slot is taken now, so the answer says `running`; else the job queues.
        let slot = slots.clone().try_acquire_owned().ok();
        let initial = if slot.is_some() { None } else { Some(JobState::Queued) };
        let (cancel, mut cancelled) = watch::channel(false);
        let (stop, stopped) = watch::channel(false);
        let stream = job.stream.is_some().then(|| (Arc::new(Mutex::new(StreamStatus::default())), stop));
        let (id, submitted_at_ms) = id.unwrap_or_else(|| (JobId::generate(), now_ms()));
        let entry = Arc::new(JobEntry {
            id,
            tenant,
            name: job.name.clone(),
            inputs: job.tables.values().map(|t| t.location.clone()).collect(),
            cache_reads,
            submitted_at_ms,
            started: Instant::now(),
            cancel,
            progress: Mutex::new(Progress { state: initial, ..Default::default() }),
            stream,
        });
        self.insert(entry.clone())?;
        let running = entry.clone();
        tokio::spawn(async move {
            let events = |e: JobEvent| running.apply(e);
            let cancel = async move {
                // An error means the sender is gone, which never happens while the job runs.
                let _ = cancelled.wait_for(|c| *c).await;
            };
            tokio::pin!(cancel);
            let slot = match slot {
                Some(slot) => Some(slot),
                None => tokio::select! {
                    // The semaphore is never closed.
                    permit = slots.acquire_owned() => permit.ok(),
                    () = &mut cancel => None,
                },
            };
            let outcome = match slot {
                Some(_slot) => {
                    running.progress().state = None;
                    match (&running.stream, planned) {
                        (Some((status, _)), _) => {
                            let run = crate::stream::run(&driver, &job, status, &|_, _| {}, stopped);
                            tokio::select! {
                                r = run => r.map(|()| stream_outcome(&running.id)),
                                () = cancel => Err(IgnisError::Cancelled),
                            }
                        }
                        (None, planned) => {
                            let planned = match planned {
                                Some(planned) => Ok(planned),
                                None => driver.plan(&job).await,
                            };
                            match planned {
                                Ok((planned, udfs)) => {
                                    let id = running.id.clone();
                                    driver.run_journaled(id, &job, planned, udfs, journal, &events, cancel).await
                                }
                                Err(e) => Err(e),
                            }
                        }
                    }
                }
                None => Err(IgnisError::Cancelled),
            };
            // A job that never reached the driver (cancelled in its queue, not planned).
            if let Some(record) = record {
                record.end(outcome.as_ref().map(|_| ())).await;
            }
            running.finish(outcome);
            done(&running);
        });
        Ok(entry)
    }

    /// Keep `entry`, unless its tenant has its fill of running and queued
    /// jobs; drop the tenant's oldest finished jobs past its share, never
    /// another tenant's.
    fn insert(&self, entry: Arc<JobEntry>) -> Result<(), Busy> {
        let mut guard = self.lock();
        let (jobs, order) = &mut *guard;
        let tenant = entry.tenant.clone();
        let unfinished = jobs.values().filter(|j| j.tenant == tenant && !j.state().is_finished()).count();
        if unfinished >= self.limits.running + self.limits.queued {
            return Err(Busy { running: self.limits.running, queued: self.limits.queued });
        }
        order.push_back(entry.id.clone());
        jobs.insert(entry.id.clone(), entry);
        let finished: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|(_, id)| jobs.get(*id).is_some_and(|j| j.tenant == tenant && j.state().is_finished()))
            .map(|(pos, _)| pos)
            .collect();
        let excess = finished.len().saturating_sub(self.limits.retained);
        for pos in finished.into_iter().take(excess).rev() {
            if let Some(id) = order.remove(pos) {
                jobs.remove(&id);
            }
        }
        Ok(())
    }

    /// The job `id` if `tenant` owns it: another tenant's job looks absent.
    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<JobEntry>> {
        self.lock().0.get(&JobId::from(id)).filter(|j| j.tenant == tenant).cloned()
    }

    /// Drop `tenant`'s oldest collected results past its byte budget; the
    /// newest result is kept whatever its size (it fit the driver's
    /// per-job limit).
    pub fn trim_results(&self, tenant: &str) {
        let (mut kept, mut newest) = (0usize, true);
        for job in self.list(tenant) {
            let mut p = job.progress();
            if p.result.is_none() {
                continue;
            }
            kept += p.result_bytes;
            if !std::mem::take(&mut newest) && kept > self.limits.retained_result_bytes {
                p.result = None;
                p.result_evicted = true;
                tracing::info!(job = %job.id, tenant, "dropped a finished job's result to keep the tenant's budget");
            }
        }
    }

    /// `tenant`'s jobs, newest first.
    pub fn list(&self, tenant: &str) -> Vec<Arc<JobEntry>> {
        let guard = self.lock();
        guard.1.iter().rev().filter_map(|id| guard.0.get(id)).filter(|j| j.tenant == tenant).cloned().collect()
    }

    pub fn running(&self) -> usize {
        self.lock().0.values().filter(|j| !j.state().is_finished()).count()
    }
}
