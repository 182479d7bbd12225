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
