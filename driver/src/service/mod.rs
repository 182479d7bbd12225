//! The driver as a service (`ignis serve`): the job API over HTTP (axum),
//! executor host registration and task hand-out, metrics, and the OpenAPI
//! document. Routes and shapes follow `openapi.yaml` next to this file.

mod auth;
mod error;
mod executors;
mod jobs;
mod policy;
mod server;
mod udfs;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use datafusion::arrow::ipc::writer::StreamWriter;
use ignis_core::job::{JobLimits, JobSpec};
use serde::Serialize;

pub use auth::{AuthConfig, KeyHash, Tenants, hash_key};
pub use error::{ApiError, ApiResult, ErrorBody, ErrorEnvelope};
pub use jobs::{
    JobEntry, JobMetrics, JobState, JobStatus, StageStatus, Submission, TenantLimits, WrittenOutput, now_ms,
};
pub use policy::StoragePolicy;
pub use server::{ServerLimits, serve};

use crate::hosts::HostsBackend;
use crate::{Driver, JobResult, PlannedJob};
use auth::Tenant;
use ignis_core::protocol::UdfRef;
use jobs::JobRegistry;

/// The OpenAPI document of this API.
pub const OPENAPI_YAML: &str = include_str!("openapi.yaml");

/// Default of [`ServiceConfig::max_body_bytes`].
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 << 20;

/// Seconds a client is asked to wait after a 429.
const RETRY_AFTER_SECONDS: u64 = 5;

/// Media type of Arrow IPC stream results.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

pub struct ServiceConfig {
    pub auth: AuthConfig,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// What each tenant's jobs may read and write.
    pub policy: StoragePolicy,
    /// Upper bounds of job settings.
    pub job_limits: JobLimits,
    /// Jobs running, queued and kept per tenant.
    pub tenant_limits: TenantLimits,
    /// The longest a job may take to plan at submission.
    pub planning_timeout: Duration,
    /// Kafka brokers (`host:port`) that tenants' streams may read and write;
    /// none: streams cannot use Kafka.
    pub kafka_brokers: Vec<String>,
    /// Where batch jobs are journaled, so that a restarted driver resumes them.
    pub journal: Option<crate::journal::Journal>,
}

impl ServiceConfig {
    pub fn new(auth: AuthConfig, policy: StoragePolicy) -> Self {
        Self {
            auth,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            policy,
            job_limits: JobLimits::default(),
            tenant_limits: TenantLimits::default(),
            planning_timeout: Duration::from_secs(30),
            kafka_brokers: Vec::new(),
            journal: None,
        }
    }
}

pub struct AppState {
    driver: Arc<Driver>,
    hosts: Option<Arc<HostsBackend>>,
    jobs: JobRegistry,
    auth: AuthConfig,
    policy: StoragePolicy,
    job_limits: JobLimits,
    planning_timeout: Duration,
    kafka_brokers: Vec<String>,
    journal: Option<crate::journal::Journal>,
    metrics: Metrics,
    compile_gate: udfs::CompileGate,
    openapi: serde_json::Value,
}

#[derive(Default)]
struct Metrics {
    jobs_submitted: AtomicU64,
    jobs_succeeded: AtomicU64,
    jobs_failed: AtomicU64,
    jobs_cancelled: AtomicU64,
    task_attempts: AtomicU64,
    shuffle_bytes: AtomicU64,
    /// The receipts of finished jobs, summed.
    receipts: std::sync::Mutex<ignis_core::receipt::Receipt>,
}

/// The router of the driver service. `hosts` is the executor-host backend
/// when the driver runs tasks on hosts (the executor routes answer 404 otherwise).
pub fn router(driver: Arc<Driver>, hosts: Option<Arc<HostsBackend>>, config: ServiceConfig) -> Result<Router, String> {
    router_and_state(driver, hosts, config).map(|(router, _)| router)
}

/// The router, and the state other ways in (Spark Connect) share with it:
/// the same driver, tenants, storage policy, limits and job registry.
pub fn router_and_state(
    driver: Arc<Driver>,
    hosts: Option<Arc<HostsBackend>>,
    config: ServiceConfig,
) -> Result<(Router, Arc<AppState>), String> {
    let openapi = serde_yaml::from_str(OPENAPI_YAML).map_err(|e| format!("bad built-in OpenAPI document: {e}"))?;
    let state = Arc::new(AppState {
        driver,
        hosts,
        jobs: JobRegistry::new(config.tenant_limits),
        auth: config.auth,
        policy: config.policy,
        job_limits: config.job_limits,
        planning_timeout: config.planning_timeout,
        kafka_brokers: config.kafka_brokers,
        journal: config.journal,
        metrics: Metrics::default(),
        compile_gate: udfs::CompileGate::default(),
        openapi,
    });
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi_doc))
        .route("/metrics", get(metrics))
        .route("/v1/jobs", post(submit_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(job_status))
        .route("/v1/jobs/{id}/result", get(job_result))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/stop", post(stop_stream))
        .route("/v1/explain", post(explain))
        .merge(executors::routes())
        .merge(udfs::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
        })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            refuse_declared_oversize(req, next, config.max_body_bytes)
        }))
        .with_state(state.clone());
    Ok((router, state))
}

/// A body whose Content-Length is past the route's limit is refused before
/// any of it is read (the body limit alone would read up to the limit first,
/// and wait for a client that sends nothing).
async fn refuse_declared_oversize(req: axum::extract::Request, next: axum::middleware::Next, limit: usize) -> Response {
    let limit = if req.uri().path() == "/v1/udfs" { udfs::MAX_COMPONENT_BYTES } else { limit };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return payload_too_large(&format!(" (at most {limit} bytes)")).into_response();
    }
    next.run(req).await
}

async fn healthz() -> &'static str {
    "ok"
}

async fn openapi_doc(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(state.openapi.clone()).into_response()
}

/// A request body as a job of `tenant`, resolved once: settings within
/// bounds, every location parsed and allowed by the storage policy, UDF names
/// turned into the tenant's own components, the backend offered. Errors name
/// the field.
async fn resolve_job(state: &AppState, tenant: &str, body: Result<Bytes, BytesRejection>) -> ApiResult<JobSpec> {
    let body = body.map_err(body_error)?;
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("invalid_json", "body is not UTF-8"))?;
    let mut job = JobSpec::parse(text, "json", "job").map_err(ApiError::from_job_error)?;
    state.job_limits.check(&job).map_err(ApiError::from_job_error)?;
    if job.stream.is_some() {
        state.check_stream(&job)?;
    }
    job.check_submitted_udfs().map_err(ApiError::from_job_error)?;
    let locations = job.resolve_locations(None).map_err(ApiError::from_job_error)?;
    state.policy.check(tenant, &locations)?;
    state.driver.backend_for(&job).map_err(ApiError::from_job_error)?;
    udfs::resolve_names(state, tenant, &mut job).await?;
    Ok(job)
}

/// Plan a job away from the request's task, under the planning time limit:
/// planning reads metadata (listings, footers, schemas), never rows.
async fn plan_in_background(state: &AppState, job: &JobSpec) -> ApiResult<(PlannedJob, Vec<UdfRef>)> {
    let driver = state.driver.clone();
    let owned = job.clone();
    let planning = tokio::spawn(async move { driver.plan(&owned).await });
    match tokio::time::timeout(state.planning_timeout, planning).await {
        Ok(Ok(planned)) => planned.map_err(ApiError::from_job_error),
        Ok(Err(join)) => Err(ApiError::internal(join)),
        Err(_) => Err(ApiError::bad_request(
            "planning_timeout",
            format!(
                "planning the job took longer than {} s (listing and reading the tables' metadata); point tables \
                 at fewer files",
                state.planning_timeout.as_secs()
            ),
        )),
    }
}

fn too_many_jobs(busy: jobs::Busy) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_jobs",
        format!(
            "this tenant already has {} jobs running and {} queued, the most this driver takes; submit again when \
             one has finished",
            busy.running, busy.queued
        ),
    )
    .with_retry_after(RETRY_AFTER_SECONDS)
}

fn payload_too_large(detail: &str) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("request body is too large{detail}"))
}

pub(crate) fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        payload_too_large("")
    } else {
        ApiError::bad_request("bad_body", rejection.body_text())
    }
}

#[derive(Serialize)]
struct Submitted {
    id: String,
    state: JobState,
}

async fn submit_job(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let job = resolve_job(&state, &tenant, body).await?;
    // Plan now so a bad query is answered at once, like Spark's analysis
    // errors; the plan made here is the one that runs. A stream's tables
    // have no rows to plan over before its first batch.
    let submission = match job.stream {
        None => {
            let planned = plan_in_background(&state, &job).await?;
            let mut submission = Submission::new(job);
            submission.planned = Some(planned);
            // Journaled before the answer: once accepted, a job outlives its driver.
            if let Some(journal) = &state.journal {
                let (id, at) = (ignis_core::ids::JobId::generate(), jobs::now_ms());
                let record = journal.begin(&id, &tenant, at, &submission.job).await.map_err(|e| {
                    tracing::error!(error = %e, journal = journal.url(), "could not journal a submitted job");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "journal_unavailable",
                        "the driver cannot record the job in its journal; try again",
                    )
                })?;
                submission.id = Some((id, at));
                submission.journal =
                    Some(crate::Journaling { journal: record, prior: crate::journal::Prior::default() });
            }
            submission
        }
        Some(_) => Submission::new(job),
    };
    let record = submission.journal.as_ref().map(|j| j.journal.clone());
    let (entry, _ended) = match state.submit(&tenant, submission) {
        Ok(submitted) => submitted,
        Err(refused) => {
            if let Some(record) = record {
                record.end(Err(&ignis_core::error::IgnisError::Cancelled)).await;
            }
            return Err(refused);
        }
    };
    let location = format!("/v1/jobs/{}", entry.id);
    let body = axum::Json(Submitted { id: entry.id.to_string(), state: entry.state() });
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], body).into_response())
}

impl AppState {
    /// The tenant whose API key `key` is.
    pub fn tenant_for_key(&self, key: &str) -> Option<String> {
        self.auth.tenant_of(key)
    }

    pub fn driver(&self) -> &Arc<Driver> {
        &self.driver
    }

    pub fn job_limits(&self) -> &JobLimits {
        &self.job_limits
    }

    /// What a stream may do beyond a batch job's rules: reach only the Kafka
    /// brokers this driver allows, and write its rows somewhere (a stream
    /// over the API has no console).
    pub fn check_stream(&self, job: &JobSpec) -> ApiResult<()> {
        if matches!(job.output, ignis_core::job::OutputSpec::Collect) {
            return Err(ApiError::bad_request(
                "invalid_job",
                "output: a stream submitted to a driver writes its rows ([output.write] files or Kafka); \
                 collect is for `ignis run`",
            ));
        }
        for (field, servers) in job.kafka_brokers() {
            for broker in servers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
                if !self.kafka_brokers.iter().any(|allowed| allowed == broker) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "kafka_broker_denied",
                        format!(
                            "{field}: broker {broker} is not one this driver lets jobs reach ({}; \
                             ignis serve --allow-kafka-brokers)",
                            if self.kafka_brokers.is_empty() {
                                "none".to_string()
                            } else {
                                self.kafka_brokers.join(", ")
                            }
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The storage policy's answer for `tenant`'s locations.
    pub fn check_locations(&self, tenant: &str, locations: &[ignis_core::job::JobLocation]) -> ApiResult<()> {
        self.policy.check(tenant, locations)
    }

    /// Run a job for `tenant` as POST /v1/jobs does (its running and queued
    /// limits, its place in GET /v1/jobs); the receiver hears when it ends.
    pub fn submit(
        self: &Arc<Self>,
        tenant: &str,
        submission: Submission,
    ) -> ApiResult<(Arc<JobEntry>, tokio::sync::oneshot::Receiver<()>)> {
        let (ended, ended_rx) = tokio::sync::oneshot::channel();
        let finished = self.clone();
        let entry = self
            .jobs
            .submit(self.driver.clone(), tenant.to_string(), submission, move |job| {
                finished.record_finished(job);
                let _ = ended.send(());
            })
            .map_err(too_many_jobs)?;
        self.metrics.jobs_submitted.fetch_add(1, Ordering::Relaxed);
        tracing::info!(job = %entry.id, tenant = %entry.tenant, "job submitted");
        Ok((entry, ended_rx))
    }

    fn record_finished(&self, job: &JobEntry) {
        self.jobs.trim_results(&job.tenant);
        let status = job.status();
        let counter = match status.state {
            JobState::Succeeded => &self.metrics.jobs_succeeded,
            JobState::Cancelled => &self.metrics.jobs_cancelled,
            _ => &self.metrics.jobs_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.metrics.task_attempts.fetch_add(status.metrics.task_attempts as u64, Ordering::Relaxed);
        self.metrics.shuffle_bytes.fetch_add(status.metrics.shuffle_bytes, Ordering::Relaxed);
        if let Some(receipt) = &status.metrics.receipt {
            self.metrics.receipts.lock().unwrap_or_else(|p| p.into_inner()).add(receipt);
        }
        tracing::info!(job = %job.id, state = ?status.state, elapsed_ms = status.elapsed_ms, "job finished");
    }

    /// Resume the jobs the journal holds as running (their driver stopped):
    /// each under its own id and tenant, its locations checked again against
    /// today's storage policy. Returns how many were resumed.
    pub async fn resume_journaled(self: &Arc<Self>) -> ignis_core::error::Result<usize> {
        let Some(journal) = &self.journal else { return Ok(0) };
        let mut resumed = 0;
        for mut found in journal.unfinished().await? {
            let id = found.job_id.clone();
            let allowed = found
                .job
                .resolve_locations(None)
                .map_err(|e| e.to_string())
                .and_then(|locations| self.policy.check(&found.tenant, &locations).map_err(|e| e.body.message));
            if let Err(why) = allowed {
                tracing::error!(job = %id, tenant = %found.tenant, why, "not resuming a journaled job");
                found.journal.end(Err(&ignis_core::error::IgnisError::Job(why))).await;
                continue;
            }
            let prior = found.journal.resume().await?;
            tracing::warn!(
                job = %id,
                tenant = %found.tenant,
                run = prior.run,
                restored_tasks = prior.results.values().map(|r| r.len()).sum::<usize>(),
                "resuming a job its earlier driver was running"
            );
            let mut submission = Submission::new(found.job);
            submission.id = Some((id, found.submitted_at_ms));
            let record = found.journal.clone();
            submission.journal = Some(crate::Journaling { journal: found.journal, prior });
            if let Err(e) = self.submit(&found.tenant, submission) {
                tracing::error!(job = %record.job_id(), error = %e.body.message, "could not resume a journaled job");
                record.end(Err(&ignis_core::error::IgnisError::Job(e.body.message))).await;
                continue;
            }
            resumed += 1;
        }
        Ok(resumed)
    }

    pub fn job(&self, tenant: &str, id: &str) -> ApiResult<Arc<JobEntry>> {
        self.jobs.get(tenant, id).ok_or_else(|| ApiError::not_found(format!("no job {id}")))
    }
}

#[derive(Serialize)]
struct JobList {
    jobs: Vec<JobStatus>,
}

async fn list_jobs(State(state): State<Arc<AppState>>, Tenant(tenant): Tenant) -> axum::Json<JobList> {
    axum::Json(JobList { jobs: state.jobs.list(&tenant).iter().map(|j| j.status()).collect() })
}

async fn job_status(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<JobStatus>> {
    Ok(axum::Json(state.job(&tenant, &id)?.status()))
}

async fn cancel_job(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<JobStatus>> {
    let job = state.job(&tenant, &id)?;
    if !job.cancel() {
        return Err(ApiError::conflict("job_finished", format!("job {id} has already finished")));
    }
    Ok(axum::Json(job.status()))
}

/// Stop a stream after its running batch (a batch job: 400, use cancel).
async fn stop_stream(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<JobStatus>> {
    let job = state.job(&tenant, &id)?;
    if !job.is_stream() {
        return Err(ApiError::bad_request("not_a_stream", format!("job {id} is not a stream; cancel it instead")));
    }
    if !job.stop() {
        return Err(ApiError::conflict("job_finished", format!("job {id} has already finished")));
    }
    Ok(axum::Json(job.status()))
}

/// Collected rows as JSON, or as an Arrow IPC stream when asked for.
async fn job_result(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let job = state.job(&tenant, &id)?;
    let Some(result) = job.result() else {
        if job.result_evicted() {
            return Err(ApiError::new(
                StatusCode::GONE,
                "result_evicted",
                format!(
                    "the result of job {id} was dropped: the driver keeps a bounded amount of collected rows per \
                     tenant, newest first; run it again, or write large results with [output.write]"
                ),
            ));
        }
        let why = match job.state() {
            JobState::Running => "is still running",
            JobState::Queued => "is still queued",
            JobState::Cancelled => "was cancelled",
            _ => "failed; its status says why",
        };
        return Err(ApiError::conflict("no_result", format!("job {id} {why}")));
    };
    match result.as_ref() {
        JobResult::Rows { schema, batches } => {
            let wants_arrow =
                headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains(ARROW_STREAM));
            if wants_arrow {
                let mut buf = Vec::new();
                let mut writer = StreamWriter::try_new(&mut buf, schema).map_err(ApiError::internal)?;
                for b in batches {
                    writer.write(b).map_err(ApiError::internal)?;
                }
                writer.finish().map_err(ApiError::internal)?;
                drop(writer);
                return Ok(([(header::CONTENT_TYPE, ARROW_STREAM)], buf).into_response());
            }
            Ok(axum::Json(rows_json(schema, batches)?).into_response())
        }
        JobResult::Written(_) | JobResult::Skipped { .. } => Ok(axum::Json(job.status().output).into_response()),
    }
}

fn rows_json(
    schema: &datafusion::arrow::datatypes::SchemaRef,
    batches: &[datafusion::arrow::record_batch::RecordBatch],
) -> ApiResult<serde_json::Value> {
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    for b in batches {
        writer.write(b).map_err(ApiError::internal)?;
    }
    writer.finish().map_err(ApiError::internal)?;
    let bytes = writer.into_inner();
    let rows: serde_json::Value = if bytes.is_empty() {
        serde_json::json!([])
    } else {
        serde_json::from_slice(&bytes).map_err(ApiError::internal)?
    };
    let columns: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    Ok(serde_json::json!({"columns": columns, "rows": rows}))
}

#[derive(Serialize)]
struct Explained {
    stages: Vec<ExplainedStage>,
    text: String,
}

#[derive(Serialize)]
struct ExplainedStage {
    id: u32,
    tasks: usize,
    inputs: Vec<u32>,
}

async fn explain(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<axum::Json<Explained>> {
    let job = resolve_job(&state, &tenant, body).await?;
    let (planned, _) = plan_in_background(&state, &job).await?;
    let graph =
        crate::planner::distribute(planned.physical, job.config.runtime_filters()).map_err(ApiError::from_job_error)?;
    let stages = graph
        .stages
        .iter()
        .map(|s| ExplainedStage { id: s.id.0, tasks: s.tasks, inputs: s.inputs.iter().map(|i| i.0).collect() })
        .collect();
    Ok(axum::Json(Explained { stages, text: graph.display(&Driver::describe_output(&job)) }))
}

/// Prometheus text format; any tenant's key reads it (the numbers are the driver's, not a tenant's).
async fn metrics(State(state): State<Arc<AppState>>, _tenant: Tenant) -> Response {
    let m = &state.metrics;
    let hosts = state.hosts.as_ref().map(|h| h.hosts()).unwrap_or_default();
    let mut out = String::new();
    let mut line = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    line("ignis_jobs_submitted_total", "counter", "Jobs accepted.", &[("", m.jobs_submitted.load(Ordering::Relaxed))]);
    line(
        "ignis_jobs_finished_total",
        "counter",
        "Jobs finished, by final state.",
        &[
            ("{state=\"succeeded\"}", m.jobs_succeeded.load(Ordering::Relaxed)),
            ("{state=\"failed\"}", m.jobs_failed.load(Ordering::Relaxed)),
            ("{state=\"cancelled\"}", m.jobs_cancelled.load(Ordering::Relaxed)),
        ],
    );
    line("ignis_jobs_running", "gauge", "Jobs running now.", &[("", state.jobs.running() as u64)]);
    line(
        "ignis_task_attempts_total",
        "counter",
        "Task attempts of finished jobs, retries included.",
        &[("", m.task_attempts.load(Ordering::Relaxed))],
    );
    line(
        "ignis_shuffle_bytes_total",
        "counter",
        "Shuffle bytes written by finished jobs.",
        &[("", m.shuffle_bytes.load(Ordering::Relaxed))],
    );
    line("ignis_executor_hosts", "gauge", "Registered executor hosts.", &[("", hosts.len() as u64)]);
    line(
        "ignis_executor_running_tasks",
        "gauge",
        "Tasks running on executor hosts.",
        &[("", hosts.iter().map(|h| h.running_tasks as u64).sum())],
    );
    let receipts = m.receipts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let r = &receipts.requests;
    line(
        "ignis_object_store_requests_total",
        "counter",
        "Object-store requests of finished jobs (tasks and driver), by kind as S3 bills them.",
        &[
            ("{kind=\"get\"}", r.get),
            ("{kind=\"put\"}", r.put),
            ("{kind=\"list\"}", r.list),
            ("{kind=\"delete\"}", r.delete),
        ],
    );
    line(
        "ignis_object_store_bytes_total",
        "counter",
        "Object-store bytes of finished jobs.",
        &[("{direction=\"read\"}", r.bytes_read), ("{direction=\"written\"}", r.bytes_written)],
    );
    line(
        "ignis_lambda_invocations_total",
        "counter",
        "Lambda invocations of finished jobs.",
        &[("", receipts.lambda_invocations)],
    );
    for (name, help, value) in [
        ("ignis_lambda_gb_seconds_total", "Lambda GB-seconds of finished jobs.", receipts.lambda_gb_seconds),
        ("ignis_host_slot_seconds_total", "Executor-host slot-seconds of finished jobs.", receipts.host_slot_seconds),
        (
            "ignis_estimated_cost_usd_total",
            "Estimated cost of finished jobs at the driver's price table (US dollars).",
            receipts.estimated_cost_usd,
        ),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
