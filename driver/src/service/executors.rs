//! Routes for executor hosts (register, heartbeat, take a task, report it,
//! leave) and the hosts listing for users.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use ignis_core::protocol::{Heartbeat, HeartbeatAnswer, HostRegistered, PROTOCOL_VERSION, RegisterHost, TaskOutcome};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::auth::{HostCaller, Registering, Tenant};
use super::error::{ApiError, ApiResult};
use super::{AppState, body_error};
use crate::hosts::{HostError, HostInfo, HostsBackend};

/// The longest a poll for a task may wait.
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/executors", post(register).get(list))
        .route("/v1/executors/{id}", delete(leave))
        .route("/v1/executors/{id}/heartbeat", post(heartbeat))
        .route("/v1/executors/{id}/tasks/next", post(next_task))
        .route("/v1/executors/{id}/tasks/{key}/result", post(report))
}

fn hosts(state: &AppState) -> ApiResult<&Arc<HostsBackend>> {
    state
        .hosts
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this driver runs tasks locally and takes no executor hosts"))
}

fn host_error(id: &str, e: HostError) -> ApiError {
    match e {
        HostError::UnknownHost => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_executor", format!("no executor {id}; register again"))
        }
        HostError::ProtocolMismatch(v) => ApiError::conflict(
            "protocol_mismatch",
            format!("the executor speaks task protocol version {v}; this driver speaks version {PROTOCOL_VERSION}"),
        ),
        HostError::BadResult(why) => ApiError::bad_request("bad_result", format!("result refused: {why}")),
    }
}

fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let body = body.map_err(body_error)?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request("invalid_json", format!("{path}: {}", e.inner()))
    })
}

async fn register(
    State(state): State<Arc<AppState>>,
    _executor: Registering,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let hosts = hosts(&state)?;
    let req: RegisterHost = json_body(body)?;
    let registration = hosts.register(&req).map_err(|e| host_error(&req.name, e))?;
    let registered = HostRegistered {
        executor_id: registration.id,
        token: registration.token,
        heartbeat_interval_ms: hosts.heartbeat_interval().as_millis() as u64,
    };
    Ok((StatusCode::CREATED, Json(registered)).into_response())
}

async fn heartbeat(
    State(state): State<Arc<AppState>>,
    caller: HostCaller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.owns(&id)?;
    let beat: Heartbeat = json_body(body)?;
    let cancel = hosts(&state)?.heartbeat(&id, beat.draining).map_err(|e| host_error(&id, e))?;
    Ok(Json(serde_json::to_value(HeartbeatAnswer { cancel }).map_err(ApiError::internal)?))
}

async fn leave(
    State(state): State<Arc<AppState>>,
    caller: HostCaller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.owns(&id)?;
    hosts(&state)?.leave(&id).map_err(|e| host_error(&id, e))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct PollParams {
    wait_ms: Option<u64>,
}

async fn next_task(
    State(state): State<Arc<AppState>>,
    caller: HostCaller,
    Path(id): Path<String>,
    params: Result<Query<PollParams>, QueryRejection>,
) -> ApiResult<Response> {
    caller.owns(&id)?;
    let Query(params) = params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let wait = Duration::from_millis(params.wait_ms.unwrap_or(10_000)).min(MAX_POLL_WAIT);
    match hosts(&state)?.next_task(&id, wait).await.map_err(|e| host_error(&id, e))? {
        Some(assignment) => Ok(Json(assignment).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn report(
    State(state): State<Arc<AppState>>,
    caller: HostCaller,
    Path((id, key)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.owns(&id)?;
    let key: u64 =
        key.parse().map_err(|_| ApiError::bad_request("invalid_path", format!("task key {key:?} is not a number")))?;
    let outcome: TaskOutcome = json_body(body)?;
    let accepted = hosts(&state)?.complete(&id, key, outcome.into()).map_err(|e| host_error(&id, e))?;
    Ok(Json(serde_json::json!({"accepted": accepted})))
}

#[derive(serde::Serialize)]
struct HostList {
    executors: Vec<HostInfo>,
}

async fn list(State(state): State<Arc<AppState>>, _tenant: Tenant) -> Json<HostList> {
    Json(HostList { executors: state.hosts.as_ref().map(|h| h.hosts()).unwrap_or_default() })
}
