//! The `lambda` backend: every task attempt is one synchronous invocation of
//! an `ignis-lambda` function.
//!
//! - At most `concurrency` invocations are in flight (the function's reserved
//!   concurrency is the usual choice).
//! - A request whose JSON passes the invoke payload limit is stored next to
//!   the job's shuffle objects and sent by reference; it goes when they go.
//! - Throttling and service errors are retried here, with exponential backoff
//!   and full jitter; the SDK's own retries are off, since a retried invoke
//!   can run a task twice behind our back.
//! - A function error (the function crashed, timed out or refused the
//!   payload) is a transient task failure: the scheduler runs another attempt.
//!   Real Lambda reports it as HTTP 200 with `X-Amz-Function-Error`; the
//!   `cargo lambda watch` emulator as HTTP 500 with the error document.
//! - The task timeout is the driver's: an invocation still running when it
//!   passes is abandoned and the attempt fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_lambda::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::operation::invoke::{InvokeError, InvokeOutput};
use aws_sdk_lambda::primitives::Blob;
use datafusion::execution::runtime_env::RuntimeEnv;
use ignis_core::error::ErrorKind;
use ignis_core::ids::{JobId, StageId};
use ignis_core::protocol::{LambdaInvocation, TaskFailure, TaskOutcome, TaskRequest, TaskResult};
use ignis_core::shuffle::job_shuffle_prefix;
use ignis_core::store;
use object_store::PutPayload;
use rand::Rng;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::backend::TaskBackend;

/// Lambda's synchronous invoke payload limit.
pub const PAYLOAD_LIMIT: usize = 6 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct LambdaConfig {
    /// Function name or ARN.
    pub function: String,
    /// Version or alias to invoke.
    pub qualifier: Option<String>,
    /// Lambda API endpoint (an emulator, a VPC endpoint); default: the region's.
    pub endpoint_url: Option<String>,
    /// Invocations in flight at once.
    pub concurrency: usize,
    /// An attempt still running after this long fails.
    pub task_timeout: Duration,
    /// Requests whose JSON is larger travel by object-store reference.
    pub inline_limit: usize,
    /// Invocations tried per attempt when Lambda throttles or fails.
    pub max_invoke_tries: u32,
    /// Shuffle root of the driver: by-reference requests go under the job's prefix.
    pub shuffle_root: String,
}

impl LambdaConfig {
    pub fn new(function: impl Into<String>, shuffle_root: impl Into<String>) -> Self {
        Self {
            function: function.into(),
            qualifier: None,
            endpoint_url: None,
            concurrency: 32,
            task_timeout: Duration::from_secs(900),
            // Headroom under the limit for the envelope and JSON escaping.
            inline_limit: PAYLOAD_LIMIT - 64 * 1024,
            max_invoke_tries: 8,
            shuffle_root: shuffle_root.into(),
        }
    }
}

pub struct LambdaBackend {
    client: aws_sdk_lambda::Client,
    config: LambdaConfig,
    slots: Semaphore,
    env: Arc<RuntimeEnv>,
    /// Stage plans stored for the functions, by (job, stage): each written once.
    stored_plans: std::sync::Mutex<HashMap<(JobId, StageId), StoredPlan>>,
}

/// The URL of a stage's stored plan, once it is written.
type StoredPlan = Arc<tokio::sync::OnceCell<String>>;

/// A plan larger than this goes to the functions by reference: stored once
/// per stage next to the job's shuffle, fetched once per stage by each warm
/// function instance (which keeps it), instead of inside every invocation.
pub const PLAN_INLINE_LIMIT: usize = 16 * 1024;

impl LambdaBackend {
    /// A backend with credentials and region from the standard AWS
    /// environment (variables, profile, container or instance role).
    pub async fn new(config: LambdaConfig) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http_client())
            .retry_config(aws_config::retry::RetryConfig::disabled());
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        Self::with_client(config, aws_sdk_lambda::Client::new(&sdk))
    }

    /// A backend invoking through `client` (its retries should be off).
    pub fn with_client(config: LambdaConfig, client: aws_sdk_lambda::Client) -> Self {
        Self {
            client,
            slots: Semaphore::new(config.concurrency.max(1)),
            config,
            env: store::runtime_env(),
            stored_plans: std::sync::Mutex::default(),
        }
    }

    /// The stage plan's URL, stored on the first call for its stage.
    async fn stored_plan(&self, request: &TaskRequest) -> Result<String, TaskFailure> {
        let cell = {
            let mut stored = self.stored_plans.lock().unwrap_or_else(|p| p.into_inner());
            if stored.len() >= 1024 {
                // Plans of finished jobs (deleted with their shuffle); one
                // still running is stored again if asked for.
                stored.clear();
            }
            stored.entry((request.job_id.clone(), request.stage_id)).or_default().clone()
        };
        let url = cell
            .get_or_try_init(|| async {
                let url = store::join(
                    &job_shuffle_prefix(&self.config.shuffle_root, &request.job_id),
                    &format!("plans/{}.plan", request.stage_id),
                );
                store::write(&self.env, &url, PutPayload::from(request.plan.clone())).await.map_err(|e| {
                    TaskFailure { kind: ErrorKind::Transient, message: format!("storing the stage plan at {url}: {e}") }
                })?;
                Ok::<_, TaskFailure>(url)
            })
            .await?;
        Ok(url.clone())
    }

    /// The invoke payload: the request itself, or a reference to a stored
    /// copy; a large plan by reference to its stage's stored copy.
    async fn payload(&self, mut request: TaskRequest) -> Result<Vec<u8>, TaskFailure> {
        // Small invoke limits (tests) send smaller plans by reference too.
        if request.plan.len() > PLAN_INLINE_LIMIT.min(self.config.inline_limit / 4) {
            request.plan_url = Some(self.stored_plan(&request).await?);
            request.plan = bytes::Bytes::new();
        }
        let invocation = LambdaInvocation::Task(Box::new(request));
        let inline = serde_json::to_vec(&invocation).map_err(internal)?;
        let LambdaInvocation::Task(request) = invocation else { return Err(internal("not a task invocation")) };
        if inline.len() <= self.config.inline_limit {
            return Ok(inline);
        }
        let url = store::join(
            &job_shuffle_prefix(&self.config.shuffle_root, &request.job_id),
            &format!("requests/{}-{}-{}.json", request.stage_id, request.partition, request.attempt),
        );
        let body = serde_json::to_vec(&request).map_err(internal)?;
        store::write(&self.env, &url, PutPayload::from(body)).await.map_err(|e| TaskFailure {
            kind: ErrorKind::Transient,
            message: format!("storing the task request at {url}: {e}"),
        })?;
        serde_json::to_vec(&LambdaInvocation::TaskRef { url }).map_err(internal)
    }

    async fn invoke(&self, payload: Vec<u8>) -> Result<TaskResult, TaskFailure> {
        let mut tries = 0;
        loop {
            tries += 1;
            let sent = self
                .client
                .invoke()
                .function_name(&self.config.function)
                .set_qualifier(self.config.qualifier.clone())
                .payload(Blob::new(payload.clone()))
                .send()
                .await;
            let failure = match sent {
                Ok(output) => return self.answer(output),
                Err(e) => match self.classify(e) {
                    Invoke::FunctionError(message) => return Err(function_error(&message)),
                    Invoke::Fatal(failure) => return Err(failure),
                    Invoke::Retry(failure) => failure,
                },
            };
            if tries >= self.config.max_invoke_tries {
                return Err(TaskFailure {
                    kind: ErrorKind::Transient,
                    message: format!("{} (gave up after {tries} invocations)", failure.message),
                });
            }
            tracing::debug!(function = %self.config.function, tries, error = %failure.message, "invoke retry");
            tokio::time::sleep(backoff(tries)).await;
        }
    }

    /// What a completed invoke call means for the task.
    fn answer(&self, output: InvokeOutput) -> Result<TaskResult, TaskFailure> {
        let body = output.payload.as_ref().map(Blob::as_ref).unwrap_or_default();
        if output.function_error.is_some() {
            return Err(function_error(&error_document(body)));
        }
        let outcome: TaskOutcome = serde_json::from_slice(body).map_err(|e| TaskFailure {
            kind: ErrorKind::Internal,
            message: format!(
                "function {} answered something that is not a task outcome ({e}); is it ignis-lambda?",
                self.config.function
            ),
        })?;
        outcome.into()
    }

    fn classify(&self, error: SdkError<InvokeError>) -> Invoke {
        let function = &self.config.function;
        if let SdkError::ServiceError(service) = &error {
            let raw = service.raw();
            let status = raw.status().as_u16();
            let code = service.err().code().unwrap_or_default();
            // The emulator's function error: a 500 carrying the error document
            // itself rather than an AWS error.
            if code.is_empty()
                && status == 500
                && let Some(body) = raw.body().bytes()
                && let Ok(doc) = serde_json::from_slice::<ErrorDocument>(body)
            {
                return Invoke::FunctionError(doc.to_string());
            }
            let said = match service.err().message() {
                Some(m) => m.to_string(),
                None => raw
                    .body()
                    .bytes()
                    .map(|b| String::from_utf8_lossy(b).chars().take(500).collect())
                    .unwrap_or_default(),
            };
            let message = format!(
                "Lambda refused to invoke {function}: {said} ({})",
                if code.is_empty() { format!("HTTP {status}") } else { code.to_string() }
            );
            let retryable = matches!(
                code,
                "TooManyRequestsException"
                    | "ServiceException"
                    | "EC2ThrottledException"
                    | "ResourceNotReadyException"
                    | "SnapStartNotReadyException"
            ) || status == 429
                || status >= 500;
            return if retryable {
                Invoke::Retry(TaskFailure { kind: ErrorKind::Transient, message })
            } else {
                // A missing function, a denied role, a bad request: no attempt can pass.
                Invoke::Fatal(TaskFailure { kind: ErrorKind::User, message })
            };
        }
        let message = match &error {
            SdkError::DispatchFailure(_) => format!("could not reach Lambda to invoke {function}: {}", chain(&error)),
            SdkError::TimeoutError(_) => format!("invoking {function} timed out: {}", chain(&error)),
            SdkError::ResponseError(_) => format!("unreadable answer from Lambda for {function}: {}", chain(&error)),
            _ => return Invoke::Fatal(TaskFailure { kind: ErrorKind::Internal, message: chain(&error) }),
        };
        Invoke::Retry(TaskFailure { kind: ErrorKind::Transient, message })
    }
}

/// hyper 1 with rustls on ring: the HTTP stack the rest of Ignis already builds.
fn http_client() -> aws_sdk_lambda::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

enum Invoke {
    FunctionError(String),
    Retry(TaskFailure),
    Fatal(TaskFailure),
}

#[async_trait]
impl TaskBackend for LambdaBackend {
    async fn run(&self, request: TaskRequest) -> Result<TaskResult, TaskFailure> {
        let _slot = self.slots.acquire().await.map_err(internal)?;
        let timeout = self.config.task_timeout;
        let task = format!("task {}/{} attempt {}", request.stage_id, request.partition, request.attempt);
        let attempt = async {
            let payload = self.payload(request).await?;
            self.invoke(payload).await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(TaskFailure {
                kind: ErrorKind::Transient,
                message: format!("{task} on {} passed the task timeout of {:?}", self.config.function, timeout),
            }),
        }
    }

    fn capacity(&self) -> usize {
        self.config.concurrency.max(1)
    }

    fn name(&self) -> &str {
        "lambda"
    }
}

/// The document Lambda returns for a function error.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorDocument {
    error_message: String,
    #[serde(default)]
    error_type: Option<String>,
}

impl std::fmt::Display for ErrorDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error_type {
            Some(t) if !t.is_empty() => write!(f, "{t}: {}", self.error_message),
            _ => f.write_str(&self.error_message),
        }
    }
}

fn error_document(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorDocument>(body) {
        Ok(doc) => doc.to_string(),
        Err(_) => String::from_utf8_lossy(body).chars().take(2000).collect(),
    }
}

fn function_error(message: &str) -> TaskFailure {
    TaskFailure { kind: ErrorKind::Transient, message: format!("function error: {message}") }
}

fn internal(e: impl std::fmt::Display) -> TaskFailure {
    TaskFailure { kind: ErrorKind::Internal, message: e.to_string() }
}

/// The error and its sources, joined: the SDK's top-level messages alone
/// ("dispatch failure") say little.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Full jitter: a uniform wait up to an exponentially growing cap.
fn backoff(tries: u32) -> Duration {
    let cap_ms = (100u64 << tries.min(7)).min(10_000);
    Duration::from_millis(rand::rng().random_range(0..=cap_ms))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_sdk_lambda::config::{BehaviorVersion, Credentials, Region};
    use axum::http::{HeaderMap, StatusCode};
    use ignis_core::ids::{JobId, StageId};
    use ignis_core::job::ShuffleCompression;
    use ignis_core::protocol::{PROTOCOL_VERSION, TaskOutput};

    use super::*;

    /// A stand-in for the Lambda API on loopback, answering invokes the way
    /// real Lambda does (the emulator test covers the emulator's ways):
    /// `throttles` times 429, then each answer in `then`, the last repeated.
    async fn lambda_api(throttles: usize, then: Vec<(HeaderMap, String)>) -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let app = axum::Router::new().route(
            "/2015-03-31/functions/{name}/invocations",
            axum::routing::post(move || {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let then = then.clone();
                async move {
                    if n < throttles {
                        let mut headers = HeaderMap::new();
                        headers.insert("x-amzn-errortype", "TooManyRequestsException".parse().unwrap());
                        let body = r#"{"Type":"User","message":"Rate Exceeded.","Reason":"ReservedFunctionConcurrentInvocationLimitExceeded"}"#;
                        return (StatusCode::TOO_MANY_REQUESTS, headers, body.to_string());
                    }
                    let (headers, body) = then[(n - throttles).min(then.len() - 1)].clone();
                    (StatusCode::OK, headers, body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, calls)
    }

    fn backend(url: &str) -> LambdaBackend {
        let sdk = aws_sdk_lambda::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(url)
            .http_client(http_client())
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        LambdaBackend::with_client(
            LambdaConfig::new("ignis-lambda", "file:///tmp/unused"),
            aws_sdk_lambda::Client::from_conf(sdk),
        )
    }

    fn request() -> TaskRequest {
        TaskRequest {
            protocol_version: PROTOCOL_VERSION,
            job_id: JobId::from("job-1"),
            stage_id: StageId(1),
            partition: 0,
            attempt: 0,
            plan: bytes::Bytes::from_static(&[1, 2, 3]),
            plan_url: None,
            inputs: vec![],
            output: TaskOutput::Shuffle { root: "file:///tmp/unused".into(), compression: ShuffleCompression::Lz4 },
            batch_size: 8192,
            options: Default::default(),
            udfs: Vec::new(),
        }
    }

    #[tokio::test]
    async fn throttles_are_retried_and_a_function_error_fails_the_attempt() {
        let mut headers = HeaderMap::new();
        headers.insert("x-amz-function-error", "Unhandled".parse().unwrap());
        let body = r#"{"errorType":"Runtime.ExitError","errorMessage":"signal: killed"}"#.to_string();
        let (url, calls) = lambda_api(2, vec![(headers, body)]).await;
        let failure = backend(&url).run(request()).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "two throttles, then the invoke that ran");
        assert_eq!(failure.kind, ErrorKind::Transient);
        assert_eq!(failure.message, "function error: Runtime.ExitError: signal: killed");
    }

    #[tokio::test]
    async fn an_outcome_that_is_not_ignis_says_so() {
        let (url, _) = lambda_api(0, vec![(HeaderMap::new(), r#"{"statusCode":200}"#.into())]).await;
        let failure = backend(&url).run(request()).await.unwrap_err();
        assert_eq!(failure.kind, ErrorKind::Internal);
        assert!(failure.message.contains("is it ignis-lambda?"), "{}", failure.message);
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        for _ in 0..100 {
            assert!(backoff(1) <= Duration::from_millis(200));
            assert!(backoff(30) <= Duration::from_secs(10));
        }
        let waits: Vec<_> = (0..100).map(|_| backoff(6)).collect();
        assert!(waits.iter().any(|w| *w > Duration::from_millis(3200)), "waits grow with tries");
    }

    #[test]
    fn error_documents_read_as_type_and_message() {
        let body = br#"{"errorType":"IgnisInvocationError","errorMessage":"bad payload"}"#;
        assert_eq!(error_document(body), "IgnisInvocationError: bad payload");
        assert_eq!(error_document(b"Task timed out after 3.00 seconds"), "Task timed out after 3.00 seconds");
    }
}
