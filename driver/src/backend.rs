//! Executor backends: where tasks run. One trait; local mode runs tasks on
//! in-process workers, and executor hosts and Lambda implement the same trait.

use std::sync::Arc;

use async_trait::async_trait;
use ignis_core::error::ErrorKind;
use ignis_core::memory::{ByteSize, TaskMemory};
use ignis_core::protocol::{TaskFailure, TaskRequest, TaskResult};
use ignis_executor::Executor;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

#[async_trait]
pub trait TaskBackend: Send + Sync {
    /// Run one task attempt to completion.
    async fn run(&self, request: TaskRequest) -> Result<TaskResult, TaskFailure>;
    /// How many tasks can run at once.
    fn capacity(&self) -> usize;
    /// A short name for status output ("local", "hosts", "lambda").
    fn name(&self) -> &str;
    /// Whether tasks run on machines apart from the driver, where one can be
    /// slow or gone while the others are not: tasks then get deadlines and
    /// speculative attempts by default. Local workers are the driver's own
    /// process: a slow task there is not a slow host.
    fn remote(&self) -> bool {
        true
    }

    /// The job ended: forget what was kept for it.
    fn job_finished(&self, _job: &ignis_core::ids::JobId) {}
}

/// Local mode: `workers` tasks at a time, each on the driver's tokio runtime,
/// through the same [`TaskRequest`] path (plan bytes and all) as remote executors.
pub struct LocalBackend {
    executor: Executor,
    slots: Arc<Semaphore>,
    workers: usize,
}

impl LocalBackend {
    /// `workers` tasks at a time, each under `task_memory` (default: a share
    /// of the machine, [`TaskMemory::local`]).
    pub fn new(workers: usize, task_memory: Option<ByteSize>) -> Self {
        let workers = workers.max(1);
        let executor = Executor::new(ignis_core::store::runtime_env(), TaskMemory::local(workers, task_memory));
        Self { executor, slots: Arc::new(Semaphore::new(workers)), workers }
    }
}

/// Aborts the spawned task when the scheduler stops waiting for it (job
/// failed or cancelled), so no task keeps writing after the job ended.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait]
impl TaskBackend for LocalBackend {
    async fn run(&self, request: TaskRequest) -> Result<TaskResult, TaskFailure> {
        let _permit = self.slots.acquire().await.map_err(|_| TaskFailure {
            kind: ErrorKind::Internal,
            message: "local executor pool is shut down".into(),
        })?;
        let executor = self.executor.clone();
        let mut handle = AbortOnDrop(tokio::spawn(async move { executor.run_task(request).await }));
        match (&mut handle.0).await {
            Ok(result) => result,
            Err(e) => Err(TaskFailure { kind: ErrorKind::Internal, message: format!("task panicked: {e}") }),
        }
    }

    fn capacity(&self) -> usize {
        self.workers
    }

    fn name(&self) -> &str {
        "local"
    }

    fn remote(&self) -> bool {
        false
    }
}
