//! `ignis-lambda`: the Ignis executor as an AWS Lambda function. Each
//! invocation runs one task and answers with its outcome:
//!
//! ```text
//!  driver (lambda backend)                 ignis-lambda
//!    Invoke {"task": TaskRequest}  ----->  decode plan, run one partition,
//!    or {"task_ref": {"url": …}}           write shuffle object / staged files
//!    (request too big for the              to S3 through object_store
//!    payload limit: fetched from S3)
//!                                  <-----  {"succeeded": TaskResult}
//!                                          or {"failed": TaskFailure}
//! ```
//!
//! A task that fails answers normally with `failed` and its classified error,
//! so the driver knows whether another attempt can help. Only an invocation
//! that cannot run a task at all (an unreadable payload, an unreadable request
//! object) is a Lambda function error, which the driver treats as transient.
//!
//! The object stores and task contexts live for the life of the process, so
//! warm invocations reuse them.

use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnv;
use ignis_core::ids::StageId;
use ignis_core::memory::TaskMemory;
use ignis_core::protocol::{LambdaInvocation, TaskOutcome, TaskRequest};
use ignis_core::store;
use ignis_executor::Executor;
use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("IGNIS_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .init();
    let function = Arc::new(Function::from_env());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let function = function.clone();
        async move { function.invoke(event.payload).await }
    }))
    .await
}

struct Function {
    executor: Executor,
    env: Arc<RuntimeEnv>,
    /// Fault injection for tests (`IGNIS_TEST_FAIL_TASK=stage/partition`):
    /// the first attempt of that task ends in a function error.
    fail_task: Option<(StageId, u32)>,
    /// Fault injection for tests (`IGNIS_TEST_TASK_DELAY_MS`): wait before each task.
    task_delay: std::time::Duration,
}

impl Function {
    fn from_env() -> Self {
        let env = store::runtime_env();
        let fail_task = std::env::var("IGNIS_TEST_FAIL_TASK").ok().and_then(|spec| {
            let (stage, partition) = spec.split_once('/')?;
            Some((StageId(stage.trim().parse().ok()?), partition.trim().parse().ok()?))
        });
        let delay_ms = std::env::var("IGNIS_TEST_TASK_DELAY_MS").ok().and_then(|ms| ms.parse().ok()).unwrap_or(0);
        let task_delay = std::time::Duration::from_millis(delay_ms);
        Self { executor: Executor::new(env.clone(), TaskMemory::lambda()), env, fail_task, task_delay }
    }

    async fn invoke(&self, payload: serde_json::Value) -> Result<TaskOutcome, Diagnostic> {
        let invocation: LambdaInvocation = serde_json::from_value(payload)
            .map_err(|e| invocation_error(format!("the invocation payload is not an Ignis task: {e}")))?;
        let request = match invocation {
            LambdaInvocation::Task(request) => *request,
            LambdaInvocation::TaskRef { url } => {
                tracing::info!(%url, "fetching the task request by reference");
                self.fetch_request(&url).await?
            }
        };
        if self.fail_task == Some((request.stage_id, request.partition)) && request.attempt == 0 {
            return Err(invocation_error(format!(
                "injected failure of task {}/{} attempt 0 (IGNIS_TEST_FAIL_TASK)",
                request.stage_id, request.partition
            )));
        }
        tokio::time::sleep(self.task_delay).await;
        tracing::info!(job = %request.job_id, stage = %request.stage_id, partition = request.partition, attempt = request.attempt, "task");
        let mut result = self.executor.run_task(request).await;
        if let Ok(done) = &mut result {
            // What the invocation is billed by, for the job's receipt.
            done.metrics.function_memory_mb = ignis_core::memory::lambda_function_memory_mb().unwrap_or(0);
        }
        Ok(TaskOutcome::from(result))
    }

    /// A request the driver stored because it passed the payload limit.
    async fn fetch_request(&self, url: &str) -> Result<TaskRequest, Diagnostic> {
        let bytes = store::read(&self.env, url)
            .await
            .map_err(|e| invocation_error(format!("reading the task request at {url}: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| invocation_error(format!("the task request at {url} is not valid: {e}")))
    }
}

/// A function error: the invocation could not run a task at all.
fn invocation_error(message: String) -> Diagnostic {
    Diagnostic { error_type: "IgnisInvocationError".into(), error_message: message }
}
