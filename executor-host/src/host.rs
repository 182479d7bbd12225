//! The executor host: a long-lived process that registers with a driver,
//! sends heartbeats, and pulls tasks over HTTP, `slots` at a time.
//!
//! Pulling (rather than the driver pushing) means a host needs no listening
//! port and the driver never waits on a host it cannot reach: a host that
//! stops polling and heartbeating is declared lost and its tasks run elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ignis_core::error::{IgnisError, Result};
use ignis_core::memory::TaskMemory;
use ignis_core::protocol::{
    Heartbeat, HeartbeatAnswer, HostRegistered, PROTOCOL_VERSION, RegisterHost, TaskAssignment, TaskFailure,
    TaskOutcome,
};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::Executor;

#[derive(Clone, Debug)]
pub struct HostConfig {
    /// The driver's base URL, e.g. `http://127.0.0.1:7077`.
    pub driver: String,
    /// The secret executors present to the driver.
    pub secret: String,
    pub slots: u32,
    /// Each task's memory limit.
    pub memory: TaskMemory,
    pub name: String,
    /// How long one poll for a task waits at the driver.
    pub poll_wait: Duration,
    /// Fault injection for tests: hold every task this long before running it.
    pub task_delay: Duration,
}

/// Where a host is in its life, for a readiness probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    /// Not (or no longer) registered with the driver.
    Joining,
    /// Registered, taking tasks.
    Ready,
    /// Finishing its running tasks, taking no new ones.
    Draining,
}

/// Run a host until `drain` fires: then finish the running tasks, take no new
/// ones, leave the driver, and return. `state` follows the host's life.
pub async fn run_host(
    config: HostConfig,
    mut drain: watch::Receiver<bool>,
    state: watch::Sender<HostState>,
) -> Result<()> {
    let client = DriverClient::new(&config)?;
    let executor = Executor::new(ignis_core::store::runtime_env(), config.memory.clone()).keeping_sent_plans();
    let draining = Arc::new(AtomicBool::new(false));
    loop {
        if !draining.load(Ordering::SeqCst) {
            state.send_replace(HostState::Joining);
        }
        let registered = client.register(&config, &mut drain).await?;
        let Some(registered) = registered else { return Ok(()) };
        let id = registered.executor_id.clone();
        let token = registered.token.clone();
        tracing::info!(executor = %id, driver = %config.driver, slots = config.slots, "registered with the driver");
        if !draining.load(Ordering::SeqCst) {
            state.send_replace(HostState::Ready);
        }
        let lost = Arc::new(AtomicBool::new(false));
        let running: Running = Arc::default();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..config.slots.max(1) {
            let worker = Worker {
                client: client.clone(),
                executor: executor.clone(),
                id: id.clone(),
                token: token.clone(),
                draining: draining.clone(),
                lost: lost.clone(),
                config: config.clone(),
                running: running.clone(),
            };
            workers.spawn(worker.run());
        }
        let interval = Duration::from_millis(registered.heartbeat_interval_ms.max(100));
        let mut ticker = tokio::time::interval(interval);
        while !workers.is_empty() {
            tokio::select! {
                _ = ticker.tick() => {
                    let beat = Heartbeat { draining: draining.load(Ordering::SeqCst) };
                    match client.heartbeat(&id, &token, &beat).await {
                        Ok(Some(answer)) => {
                            let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
                            for key in answer.cancel {
                                if let Some(stop) = running.remove(&key) {
                                    tracing::info!(executor = %id, task_key = key, "stopping a task the driver no longer wants");
                                    let _ = stop.send(());
                                }
                            }
                        }
                        Ok(None) => {
                            tracing::warn!(executor = %id, "the driver no longer knows this host; registering again");
                            lost.store(true, Ordering::SeqCst);
                            if !draining.load(Ordering::SeqCst) {
                                state.send_replace(HostState::Joining);
                            }
                        }
                        Err(e) => tracing::warn!(executor = %id, error = %e, "heartbeat failed"),
                    }
                }
                changed = drain.changed(), if !draining.load(Ordering::SeqCst) => {
                    if changed.is_err() || *drain.borrow() {
                        tracing::info!(executor = %id, "draining: finishing running tasks, taking no new ones");
                        draining.store(true, Ordering::SeqCst);
                        state.send_replace(HostState::Draining);
                        let _ = client.heartbeat(&id, &token, &Heartbeat { draining: true }).await;
                    }
                }
                Some(_) = workers.join_next() => {}
            }
        }
        if draining.load(Ordering::SeqCst) {
            client.leave(&id, &token).await;
            tracing::info!(executor = %id, "drained and left the driver");
            return Ok(());
        }
    }
}

struct Worker {
    client: DriverClient,
    executor: Executor,
    id: String,
    /// What this host presents to the driver since it registered.
    token: String,
    draining: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    config: HostConfig,
    running: Running,
}

/// The tasks the host's workers run, by task key: the switch that stops each.
type Running = Arc<std::sync::Mutex<std::collections::HashMap<u64, tokio::sync::oneshot::Sender<()>>>>;

impl Worker {
    async fn run(self) {
        while !self.draining.load(Ordering::SeqCst) && !self.lost.load(Ordering::SeqCst) {
            let assignment = match self.client.next_task(&self.id, &self.token, self.config.poll_wait).await {
                Ok(Some(a)) => a,
                Ok(None) => continue,
                Err(PollError::UnknownHost) => {
                    self.lost.store(true, Ordering::SeqCst);
                    return;
                }
                Err(PollError::Other(e)) => {
                    tracing::warn!(executor = %self.id, error = %e, "polling the driver failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let key = assignment.task_key;
            let (stop, stopped) = tokio::sync::oneshot::channel();
            self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(key, stop);
            let delay = self.config.task_delay;
            let task = async {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                self.executor.run_task(assignment.request).await
            };
            let outcome = tokio::select! {
                result = task => TaskOutcome::from(result),
                Ok(()) = stopped => TaskOutcome::from(Err(TaskFailure {
                    kind: ignis_core::error::ErrorKind::Transient,
                    message: "stopped: the driver no longer wants this attempt".into(),
                })),
            };
            self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
            self.client.report(&self.id, &self.token, key, &outcome).await;
        }
    }
}

enum PollError {
    /// The driver does not know this host (it was declared lost): register again.
    UnknownHost,
    Other(IgnisError),
}

#[derive(Clone)]
struct DriverClient {
    http: reqwest::Client,
    base: String,
    secret: String,
}

impl DriverClient {
    fn new(config: &HostConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(ignis_core::protocol::CLIENT_IDLE_CONNECTION)
            .build()
            .map_err(|e| IgnisError::Internal(format!("cannot build HTTP client: {e}")))?;
        Ok(Self { http, base: config.driver.trim_end_matches('/').to_string(), secret: config.secret.clone() })
    }

    /// A POST with the executor secret (registration) or the host's token (everything after).
    fn post(&self, path: &str, credential: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.base)).bearer_auth(credential)
    }

    /// Register, retrying while the driver is unreachable; `None` when asked to drain first.
    async fn register(&self, config: &HostConfig, drain: &mut watch::Receiver<bool>) -> Result<Option<HostRegistered>> {
        let body = RegisterHost { protocol_version: PROTOCOL_VERSION, name: config.name.clone(), slots: config.slots };
        let mut delay = Duration::from_millis(200);
        loop {
            if *drain.borrow() {
                return Ok(None);
            }
            match send_json::<_, HostRegistered>(self.post("/v1/executors", &self.secret), &body).await {
                Ok(Some(r)) => return Ok(Some(r)),
                Ok(None) => return Err(IgnisError::Protocol("the driver sent no registration".into())),
                Err(SendError::Refused(status, message)) => {
                    return Err(IgnisError::Protocol(format!("the driver refused registration ({status}): {message}")));
                }
                Err(SendError::Unreachable(e)) => {
                    tracing::warn!(driver = %self.base, error = %e, "driver not reachable; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = drain.changed() => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// The driver's answer, or `None` when it no longer knows this host.
    async fn heartbeat(&self, id: &str, token: &str, beat: &Heartbeat) -> Result<Option<HeartbeatAnswer>> {
        let request = self.post(&format!("/v1/executors/{id}/heartbeat"), token);
        match send_json::<_, HeartbeatAnswer>(request, beat).await {
            Ok(answer) => Ok(Some(answer.unwrap_or_default())),
            Err(SendError::Refused(status, _)) if forgotten(status) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn next_task(
        &self,
        id: &str,
        token: &str,
        wait: Duration,
    ) -> std::result::Result<Option<TaskAssignment>, PollError> {
        let path = format!("/v1/executors/{id}/tasks/next?wait_ms={}", wait.as_millis());
        let request = self.post(&path, token).timeout(wait + Duration::from_secs(10));
        match send_json::<_, TaskAssignment>(request, &serde_json::json!({})).await {
            Ok(a) => Ok(a),
            Err(SendError::Refused(status, _)) if forgotten(status) => Err(PollError::UnknownHost),
            Err(e) => Err(PollError::Other(e.into())),
        }
    }

    /// Report a task's outcome; retried while the driver is unreachable, since
    /// the work is done and the driver would otherwise run it again.
    async fn report(&self, id: &str, token: &str, task_key: u64, outcome: &TaskOutcome) {
        let path = format!("/v1/executors/{id}/tasks/{task_key}/result");
        for attempt in 0..5u32 {
            match send_json::<_, serde_json::Value>(self.post(&path, token), outcome).await {
                Ok(_) => return,
                Err(SendError::Refused(status, message)) => {
                    tracing::warn!(task_key, %status, %message, "the driver did not take the task result");
                    return;
                }
                Err(SendError::Unreachable(e)) => {
                    tracing::warn!(task_key, error = %e, "reporting the task result failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }

    async fn leave(&self, id: &str, token: &str) {
        let request = self.http.delete(format!("{}/v1/executors/{id}", self.base)).bearer_auth(token);
        if let Err(e) = request.send().await {
            tracing::warn!(executor = %id, error = %e, "could not tell the driver this host is leaving");
        }
    }
}

/// The driver no longer knows this host (declared lost, or restarted): its
/// id answers 404 and its token 401. The host registers again.
fn forgotten(status: StatusCode) -> bool {
    status == StatusCode::NOT_FOUND || status == StatusCode::UNAUTHORIZED
}

enum SendError {
    Unreachable(reqwest::Error),
    Refused(StatusCode, String),
}

impl From<SendError> for IgnisError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Unreachable(e) => IgnisError::Protocol(format!("driver unreachable: {e}")),
            SendError::Refused(status, message) => IgnisError::Protocol(format!("driver answered {status}: {message}")),
        }
    }
}

/// POST `body` as JSON; `None` for 204 No Content.
async fn send_json<B: Serialize, T: DeserializeOwned>(
    request: reqwest::RequestBuilder,
    body: &B,
) -> std::result::Result<Option<T>, SendError> {
    let bytes = serde_json::to_vec(body).map_err(|e| SendError::Refused(StatusCode::BAD_REQUEST, e.to_string()))?;
    let response = request
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(bytes)
        .send()
        .await
        .map_err(SendError::Unreachable)?;
    let status = response.status();
    let text = response.bytes().await.map_err(SendError::Unreachable)?;
    if status == StatusCode::NO_CONTENT {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(SendError::Refused(status, String::from_utf8_lossy(&text).into_owned()));
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| SendError::Refused(status, format!("unreadable answer from the driver: {e}")))
}
