//! Task retries: a failed attempt is re-run and the output is the same as a
//! clean run; an error that retrying cannot fix fails the job once.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ignis_core::error::ErrorKind;
use ignis_core::ids::StageId;
use ignis_core::job::JobSpec;
use ignis_core::protocol::{TaskFailure, TaskRequest, TaskResult};
use ignis_driver::backend::{LocalBackend, TaskBackend};
use ignis_driver::scheduler::JobEvent;
use ignis_driver::{Driver, DriverConfig, JobResult};

use crate::common::*;

/// Runs every task for real, then reports chosen attempts as failed, so the
/// failed attempt's files exist and must be ignored.
struct FailingBackend {
    inner: LocalBackend,
    /// (stage, partition) whose attempts below `fail_below` fail.
    targets: HashSet<(u32, u32)>,
    fail_below: u32,
    kind: ErrorKind,
}

#[async_trait]
impl TaskBackend for FailingBackend {
    async fn run(&self, request: TaskRequest) -> Result<TaskResult, TaskFailure> {
        let hit = self.targets.contains(&(request.stage_id.0, request.partition)) && request.attempt < self.fail_below;
        let result = self.inner.run(request).await;
        if hit {
            return Err(TaskFailure { kind: self.kind, message: "injected failure after the task ran".into() });
        }
        result
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
    fn name(&self) -> &str {
        "failing"
    }
}

fn config(ws: &Path) -> DriverConfig {
    DriverConfig {
        shuffle_root: url::Url::from_directory_path(ws.join("_shuffle")).unwrap().to_string(),
        ..DriverConfig::default()
    }
}

fn job(ws: &Path, out: &str) -> JobSpec {
    let text = std::fs::read_to_string(ws.join("job.toml")).unwrap().replace("out/us_orders_by_product", out);
    std::fs::write(ws.join("retry.toml"), text).unwrap();
    JobSpec::from_file(&ws.join("retry.toml")).unwrap()
}

fn failing(targets: &[(u32, u32)], fail_below: u32, kind: ErrorKind) -> Arc<FailingBackend> {
    Arc::new(FailingBackend {
        inner: LocalBackend::new(2, None),
        targets: targets.iter().copied().collect(),
        fail_below,
        kind,
    })
}

#[tokio::test]
async fn retried_tasks_give_identical_output() {
    let ws = orders_workspace();
    let clean = Driver::local(2, config(ws.path())).run(&job(ws.path(), "out/clean"), &|_| {}).await.unwrap();
    assert_eq!(clean.task_attempts, 8);

    // Fail the first attempt of a map task and of a result task.
    let driver = Driver::new(failing(&[(1, 0), (2, 1)], 1, ErrorKind::Transient), config(ws.path()));
    let retries = AtomicUsize::new(0);
    let events = |e: JobEvent| {
        if let JobEvent::TaskFailed { will_retry: true, .. } = e {
            retries.fetch_add(1, Ordering::SeqCst);
        }
    };
    let flaky = driver.run(&job(ws.path(), "out/flaky"), &events).await.unwrap();
    assert_eq!(retries.load(Ordering::SeqCst), 2);
    assert_eq!(flaky.task_attempts, 10);

    let clean_dir = ws.path().join("out/clean");
    let flaky_dir = ws.path().join("out/flaky");
    assert_eq!(read_counts(&flaky_dir, "product", "orders"), read_counts(&clean_dir, "product", "orders"));
    assert_eq!(read_counts(&flaky_dir, "product", "orders"), us_orders_by_product(&ws.path().join("data")));
    // Same files per partition; the failed attempts' files are gone.
    let names = |d: &Path| -> Vec<String> { data_files(d).iter().map(|f| f[..10].to_string()).collect() };
    assert_eq!(names(&flaky_dir), names(&clean_dir));
    assert!(!flaky_dir.join("_temporary").exists());
    let JobResult::Written(c) = flaky.result else { panic!("expected written output") };
    assert_eq!(c.files.len(), 4);
}

#[tokio::test]
async fn a_task_failing_every_attempt_fails_the_job_after_max_attempts() {
    let ws = orders_workspace();
    let driver = Driver::new(failing(&[(1, 2)], u32::MAX, ErrorKind::Transient), config(ws.path()));
    let started: Mutex<Vec<u32>> = Mutex::new(vec![]);
    let events = |e: JobEvent| {
        if let JobEvent::TaskStarted { stage: StageId(1), partition: 2, attempt, .. } = e {
            started.lock().unwrap().push(attempt);
        }
    };
    let err = driver.run(&job(ws.path(), "out/never"), &events).await.unwrap_err().to_string();
    assert!(err.contains("stage 1 task 2 failed after 4 attempts"), "{err}");
    assert!(err.contains("injected failure"), "{err}");
    assert_eq!(*started.lock().unwrap(), vec![0, 1, 2, 3]);
    assert!(!ws.path().join("out/never").exists(), "a failed job leaves nothing behind");
}

#[tokio::test]
async fn a_user_error_is_not_retried() {
    let ws = orders_workspace();
    let driver = Driver::new(failing(&[(1, 0)], u32::MAX, ErrorKind::User), config(ws.path()));
    let started = AtomicUsize::new(0);
    let events = |e: JobEvent| {
        if let JobEvent::TaskStarted { stage: StageId(1), partition: 0, .. } = e {
            started.fetch_add(1, Ordering::SeqCst);
        }
    };
    let err = driver.run(&job(ws.path(), "out/never"), &events).await.unwrap_err().to_string();
    assert!(err.contains("stage 1 task 0 failed: injected failure"), "{err}");
    assert_eq!(started.load(Ordering::SeqCst), 1);
}
