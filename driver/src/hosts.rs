//! The `hosts` backend: executor host processes register with the driver,
//! heartbeat, and pull tasks. A host that misses heartbeats for longer than
//! `lost_after` is declared lost; the tasks it was running fail as transient
//! and the scheduler runs them again on the hosts that remain.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ignis_core::error::ErrorKind;
use ignis_core::ids::{JobId, StageId};
use ignis_core::protocol::{
    PLANS_A_HOST_KEEPS, PROTOCOL_VERSION, RegisterHost, TaskAssignment, TaskFailure, TaskRequest, TaskResult,
};
use serde::Serialize;
use tokio::sync::{Notify, oneshot};

use crate::backend::TaskBackend;
use crate::service::{KeyHash, hash_key};

type Reply = oneshot::Sender<Result<TaskResult, TaskFailure>>;

#[derive(Clone, Debug)]
pub struct HostsConfig {
    /// A host silent for this long is lost.
    pub lost_after: Duration,
    /// How often hosts are asked to heartbeat.
    pub heartbeat_interval: Duration,
}

impl Default for HostsConfig {
    fn default() -> Self {
        Self { lost_after: Duration::from_secs(30), heartbeat_interval: Duration::from_secs(3) }
    }
}

pub struct HostsBackend {
    state: Mutex<State>,
    /// Woken when a task is queued or a host's state changes.
    wake: Notify,
    config: HostsConfig,
}

#[derive(Default)]
struct State {
    hosts: HashMap<String, Host>,
    queue: VecDeque<u64>,
    tasks: HashMap<u64, Pending>,
    /// Attempts of each host stopped, by job; past [`MISSES_TO_EXCLUDE`] the
    /// host is excluded from the job (Spark's excludeOnFailure).
    missed: HashMap<(JobId, String), u32>,
    excluded: HashMap<JobId, HashSet<String>>,
    /// Hosts by the hash of the token each was given at registration.
    tokens: HashMap<KeyHash, String>,
    next_task: u64,
    next_host: u64,
}

struct Host {
    name: String,
    token: KeyHash,
    slots: u32,
    running: Vec<u64>,
    draining: bool,
    last_seen: Instant,
    tasks_done: u64,
    /// Stages whose plan this host keeps: it finished a task that carried
    /// the plan (until then, each task of the stage carries it, so a task
    /// that overtakes the first on another slot is not left without).
    /// Their later tasks go without it.
    plans_kept: HashSet<(JobId, StageId)>,
    plans_sent_total: u64,
    /// Tasks it runs that no one waits for any more: sent with its next heartbeat answer, to stop.
    cancel: Vec<u64>,
}

struct Pending {
    request: TaskRequest,
    reply: Option<Reply>,
}

/// Attempts a host may have stopped in a job (past their deadline, or
/// beaten by another host's attempt) before the job excludes it.
const MISSES_TO_EXCLUDE: u32 = 2;

/// One host as `GET /v1/executors` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct HostInfo {
    pub id: String,
    pub name: String,
    pub slots: u32,
    pub running_tasks: usize,
    pub tasks_done: u64,
    /// Stage plans sent to it: once per stage (its later tasks go without).
    pub stage_plans_sent: u64,
    pub draining: bool,
    pub last_seen_ms_ago: u64,
}

/// Why a host request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum HostError {
    UnknownHost,
    ProtocolMismatch(u32),
    /// The host reported a result that does not fit the task it was given.
    BadResult(String),
}

/// A registered host: its id and the token it presents from now on.
pub struct Registration {
    pub id: String,
    pub token: String,
}

impl HostsBackend {
    pub fn new(config: HostsConfig) -> Arc<Self> {
        let backend = Arc::new(Self { state: Mutex::default(), wake: Notify::new(), config });
        let weak = Arc::downgrade(&backend);
        tokio::spawn(async move {
            loop {
                let Some(backend) = weak.upgrade() else { return };
                let period = (backend.config.lost_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
                backend.reap_lost_hosts();
                drop(backend);
                tokio::time::sleep(period).await;
            }
        });
        backend
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.config.heartbeat_interval
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn register(&self, req: &RegisterHost) -> Result<Registration, HostError> {
        if req.protocol_version != PROTOCOL_VERSION {
            return Err(HostError::ProtocolMismatch(req.protocol_version));
        }
        let mut state = self.lock();
        state.next_host += 1;
        let id = format!("exec-{}", state.next_host);
        let token = format!("{:032x}", rand::random::<u128>());
        let token_hash = hash_key(&token);
        state.tokens.insert(token_hash, id.clone());
        let host = Host {
            name: req.name.clone(),
            token: token_hash,
            slots: req.slots.max(1),
            running: vec![],
            draining: false,
            last_seen: Instant::now(),
            tasks_done: 0,
            plans_kept: HashSet::new(),
            plans_sent_total: 0,
            cancel: Vec::new(),
        };
        state.hosts.insert(id.clone(), host);
        drop(state);
        tracing::info!(executor = %id, name = %req.name, slots = req.slots, "executor host registered");
        self.wake.notify_waiters();
        Ok(Registration { id, token })
    }

    /// The host that was given the token with this hash.
    pub fn host_for_token(&self, hash: &KeyHash) -> Option<String> {
        self.lock().tokens.get(hash).cloned()
    }

    /// A host's heartbeat; answers the tasks it should stop.
    pub fn heartbeat(&self, id: &str, draining: bool) -> Result<Vec<u64>, HostError> {
        let mut state = self.lock();
        let host = state.hosts.get_mut(id).ok_or(HostError::UnknownHost)?;
        host.last_seen = Instant::now();
        let started_draining = draining && !host.draining;
        host.draining |= draining;
        let cancel = std::mem::take(&mut host.cancel);
        drop(state);
        if started_draining {
            tracing::info!(executor = %id, "executor host is draining");
            self.wake.notify_waiters();
        }
        Ok(cancel)
    }

    /// A host leaves: whatever it still runs is re-run elsewhere.
    pub fn leave(&self, id: &str) -> Result<(), HostError> {
        let host = {
            let mut state = self.lock();
            let host = state.hosts.remove(id).ok_or(HostError::UnknownHost)?;
            state.tokens.remove(&host.token);
            host
        };
        self.fail_tasks(&host, &format!("executor host {} ({id}) left", host.name));
        tracing::info!(executor = %id, "executor host left");
        Ok(())
    }

    /// The next task for host `id`, waiting up to `wait` for one.
    pub async fn next_task(&self, id: &str, wait: Duration) -> Result<Option<TaskAssignment>, HostError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(assignment) = self.try_assign(id)? {
                return Ok(Some(assignment));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    fn try_assign(&self, id: &str) -> Result<Option<TaskAssignment>, HostError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let host = state.hosts.get_mut(id).ok_or(HostError::UnknownHost)?;
        host.last_seen = Instant::now();
        if host.draining || host.running.len() >= host.slots as usize {
            return Ok(None);
        }
        // A task whose job was cancelled is gone from `tasks`.
        while state.queue.front().is_some_and(|key| !state.tasks.contains_key(key)) {
            state.queue.pop_front();
        }
        // The first task whose job has not excluded this host.
        let eligible = state.queue.iter().position(|key| {
            state.tasks.get(key).is_some_and(|p| !state.excluded.get(&p.request.job_id).is_some_and(|e| e.contains(id)))
        });
        let Some(key) = eligible.and_then(|at| state.queue.remove(at)) else { return Ok(None) };
        let Some(pending) = state.tasks.get(&key) else { return Ok(None) };
        host.running.push(key);
        let mut request = pending.request.clone();
        if host.plans_kept.contains(&(request.job_id.clone(), request.stage_id)) {
            request.plan = bytes::Bytes::new();
        } else {
            host.plans_sent_total += 1;
        }
        Ok(Some(TaskAssignment { task_key: key, request }))
    }

    /// A host reports a task's outcome. Returns whether it was accepted: a
    /// result for a task the host was not given (another host's, or one it no
    /// longer owns since it was declared lost) is dropped and logged. A
    /// result that does not fit its task (another attempt, a shuffle object or
    /// files outside the attempt's place) fails the attempt and is refused.
    pub fn complete(&self, id: &str, key: u64, outcome: Result<TaskResult, TaskFailure>) -> Result<bool, HostError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let host = state.hosts.get_mut(id).ok_or(HostError::UnknownHost)?;
        host.last_seen = Instant::now();
        let Some(pos) = host.running.iter().position(|k| *k == key) else {
            tracing::warn!(executor = %id, task_key = key, "refused a result for a task this host was not given");
            return Ok(false);
        };
        host.running.swap_remove(pos);
        host.tasks_done += 1;
        let Some(mut pending) = state.tasks.remove(&key) else { return Ok(false) };
        let stage = (pending.request.job_id.clone(), pending.request.stage_id);
        if outcome.is_ok() {
            if host.plans_kept.len() >= PLANS_A_HOST_KEEPS {
                host.plans_kept.clear();
            }
            host.plans_kept.insert(stage);
        } else {
            // It may have failed for want of the plan: the retry carries it.
            host.plans_kept.remove(&stage);
        }
        drop(guard);
        self.wake.notify_waiters();
        let misfit = match &outcome {
            Ok(result) => result.check_against(&pending.request).err(),
            Err(_) => None,
        };
        let Some(reply) = pending.reply.take() else { return Ok(false) };
        if let Some(why) = misfit {
            tracing::warn!(executor = %id, task_key = key, %why, "refused a task result that does not fit its task");
            let message = format!("executor host {id} reported a result that does not fit the task: {why}");
            let _ = reply.send(Err(TaskFailure { kind: ErrorKind::Internal, message }));
            return Err(HostError::BadResult(why));
        }
        Ok(reply.send(outcome).is_ok())
    }

    pub fn hosts(&self) -> Vec<HostInfo> {
        let state = self.lock();
        let mut hosts: Vec<HostInfo> = state
            .hosts
            .iter()
            .map(|(id, h)| HostInfo {
                id: id.clone(),
                name: h.name.clone(),
                slots: h.slots,
                running_tasks: h.running.len(),
                tasks_done: h.tasks_done,
                stage_plans_sent: h.plans_sent_total,
                draining: h.draining,
                last_seen_ms_ago: h.last_seen.elapsed().as_millis() as u64,
            })
            .collect();
        hosts.sort_by(|a, b| a.id.cmp(&b.id));
        hosts
    }

    fn reap_lost_hosts(&self) {
        let lost: Vec<(String, Host)> = {
            let mut state = self.lock();
            let ids: Vec<String> = state
                .hosts
                .iter()
                .filter(|(_, h)| h.last_seen.elapsed() > self.config.lost_after)
                .map(|(id, _)| id.clone())
                .collect();
            let lost: Vec<(String, Host)> =
                ids.into_iter().filter_map(|id| state.hosts.remove(&id).map(|h| (id, h))).collect();
            for (_, host) in &lost {
                state.tokens.remove(&host.token);
            }
            lost
        };
        for (id, host) in lost {
            tracing::warn!(executor = %id, name = %host.name, tasks = host.running.len(), "executor host lost");
            let silent = self.config.lost_after.as_secs_f64();
            self.fail_tasks(&host, &format!("executor host {} ({id}) was lost (silent for over {silent}s)", host.name));
        }
    }

    fn fail_tasks(&self, host: &Host, message: &str) {
        let replies: Vec<Reply> = {
            let mut state = self.lock();
            host.running.iter().filter_map(|k| state.tasks.remove(k).and_then(|mut p| p.reply.take())).collect()
        };
        for reply in replies {
            let _ = reply.send(Err(TaskFailure { kind: ErrorKind::Transient, message: message.to_string() }));
        }
        self.wake.notify_waiters();
    }
}

/// Forgets a queued or running task when the scheduler stops waiting for it
/// (job failed or cancelled).
struct Forget<'a> {
    backend: &'a HostsBackend,
    key: u64,
}

impl Drop for Forget<'_> {
    /// A task still running on a host (a losing speculative attempt, a job
    /// that failed or was cancelled) is stopped there at its next heartbeat.
    /// Stopping it counts as a miss of its host, as a passed deadline does:
    /// a host that keeps losing races to other hosts' attempts is too slow
    /// for the job.
    fn drop(&mut self) {
        let mut guard = self.backend.lock();
        let state = &mut *guard;
        let Some(pending) = state.tasks.remove(&self.key) else { return };
        let mut ran_on = Vec::new();
        for (id, host) in state.hosts.iter_mut().filter(|(_, h)| h.running.contains(&self.key)) {
            host.cancel.push(self.key);
            ran_on.push(id.clone());
        }
        for id in ran_on {
            missed(state, &pending.request.job_id, &id);
        }
    }
}

/// An attempt of `job` on host `id` was stopped: past its deadline, or
/// beaten by another attempt. After [`MISSES_TO_EXCLUDE`] the job stops
/// giving the host tasks, as long as another host remains.
fn missed(state: &mut State, job: &JobId, id: &str) {
    let misses = state.missed.entry((job.clone(), id.to_string())).or_default();
    *misses += 1;
    let others = state.hosts.keys().filter(|h| *h != id).count();
    let excluded = state.excluded.entry(job.clone()).or_default();
    if *misses >= MISSES_TO_EXCLUDE && others > excluded.len() && excluded.insert(id.to_string()) {
        let name = state.hosts.get(id).map(|h| h.name.clone()).unwrap_or_default();
        tracing::warn!(job = %job, executor = %id, %name,
            "executor host excluded from the job: {MISSES_TO_EXCLUDE} of its attempts were stopped (past their \
             deadline, or beaten by another host's)");
    }
}

#[async_trait]
impl TaskBackend for HostsBackend {
    async fn run(&self, request: TaskRequest) -> Result<TaskResult, TaskFailure> {
        let (tx, rx) = oneshot::channel();
        let key = {
            let mut state = self.lock();
            state.next_task += 1;
            let key = state.next_task;
            state.tasks.insert(key, Pending { request, reply: Some(tx) });
            state.queue.push_back(key);
            key
        };
        let _forget = Forget { backend: self, key };
        self.wake.notify_waiters();
        rx.await.unwrap_or_else(|_| {
            Err(TaskFailure { kind: ErrorKind::Internal, message: "the task was dropped by the hosts backend".into() })
        })
    }

    /// Free slots across live hosts that take work; at least 1 so a job can
    /// queue a task while waiting for the first host.
    fn capacity(&self) -> usize {
        let state = self.lock();
        let slots: usize = state.hosts.values().filter(|h| !h.draining).map(|h| h.slots as usize).sum();
        slots.max(1)
    }

    fn name(&self) -> &str {
        "hosts"
    }

    fn job_finished(&self, job: &JobId) {
        let mut state = self.lock();
        state.missed.retain(|(j, _), _| j != job);
        state.excluded.remove(job);
    }
}
