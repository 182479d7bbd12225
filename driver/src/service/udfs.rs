//! `POST /v1/udfs` (upload a component), `GET /v1/udfs` (the tenant's
//! components) and `DELETE /v1/udfs/{name}` (remove a name).

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use bytes::Bytes;
use ignis_core::job::JobSpec;
use serde::{Deserialize, Serialize};

use super::auth::Tenant;
use super::error::{ApiError, ApiResult};
use super::{AppState, body_error};
use crate::udfs::RegisteredUdf;

/// Components are larger than job specs: a Rust one is a few MB, a Python one ~20 MB.
pub(super) const MAX_COMPONENT_BYTES: usize = 64 << 20;
/// Uploads waiting for the compiler (one compiles at a time); more get 429.
const COMPILE_QUEUE: usize = 4;

/// Compiling a component takes seconds of a core: one at a time per driver,
/// and a short queue, so uploads cannot starve the jobs of CPU.
#[derive(Debug)]
pub(super) struct CompileGate {
    compiler: tokio::sync::Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Default for CompileGate {
    fn default() -> Self {
        Self { compiler: tokio::sync::Semaphore::new(1), waiting: Default::default() }
    }
}

impl CompileGate {
    /// Wait for the compiler, or refuse when the queue is full.
    async fn enter(&self) -> ApiResult<tokio::sync::SemaphorePermit<'_>> {
        use std::sync::atomic::Ordering;
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= COMPILE_QUEUE {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "compile_queue_full",
                format!("{COMPILE_QUEUE} component uploads are already waiting to compile; upload again shortly"),
            )
            .with_retry_after(super::RETRY_AFTER_SECONDS));
        }
        let permit = self.compiler.acquire().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        permit.map_err(ApiError::internal)
    }
}

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/udfs", post(upload).get(list).layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES)))
        .route("/v1/udfs/{name}", delete(remove))
}

#[derive(Deserialize)]
struct UploadParams {
    name: Option<String>,
}

async fn upload(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Query(params): Query<UploadParams>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let Some(name) = params.name else {
        return Err(ApiError::bad_request("invalid_udf", "give the component's name: POST /v1/udfs?name=<name>"));
    };
    let body = body.map_err(body_error)?;
    if body.is_empty() {
        return Err(ApiError::bad_request("invalid_udf", "the body is empty; send the component's .wasm bytes"));
    }
    let _compiler = state.compile_gate.enter().await?;
    let registered = state.driver.udfs().upload(&tenant, &name, body).await.map_err(ApiError::from_job_error)?;
    tracing::info!(tenant = %tenant, name = %registered.name, digest = %registered.digest, "UDF component uploaded");
    Ok((StatusCode::CREATED, axum::Json(registered)).into_response())
}

#[derive(Serialize)]
struct UdfList {
    udfs: Vec<RegisteredUdf>,
}

async fn list(State(state): State<Arc<AppState>>, Tenant(tenant): Tenant) -> ApiResult<axum::Json<UdfList>> {
    let udfs = state.driver.udfs().list(&tenant).await.map_err(ApiError::from_job_error)?;
    Ok(axum::Json(UdfList { udfs }))
}

async fn remove(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<RegisteredUdf>> {
    match state.driver.udfs().remove(&tenant, &name).await.map_err(ApiError::from_job_error)? {
        Some(removed) => {
            tracing::info!(tenant = %tenant, name = %removed.name, "UDF component name removed");
            Ok(axum::Json(removed))
        }
        None => Err(ApiError::not_found(format!("no component named {name:?} was uploaded"))),
    }
}

/// Replace the job's component names (the tenant's) by their digests, so the
/// driver runs exactly what the tenant uploaded.
pub(super) async fn resolve_names(state: &AppState, tenant: &str, job: &mut JobSpec) -> ApiResult<()> {
    if job.udfs.is_empty() {
        return Ok(());
    }
    let refs = state.driver.udfs().resolve(tenant, &job.udfs).await.map_err(ApiError::from_job_error)?;
    job.udfs = refs.into_iter().map(|r| r.digest).collect();
    Ok(())
}
