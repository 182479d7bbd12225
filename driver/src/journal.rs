//! The driver's journal: what a restarted driver needs to resume the jobs
//! that were running when it stopped (`ignis serve --journal URL`,
//! `ignis run --resume JOB_ID`).
//!
//! Under `{journal}/{job_id}/`:
//! - `job.json`: the tenant and the job as it was resolved when it arrived
//!   (locations checked, UDF names resolved);
//! - `graph.json`: a fingerprint of the job's stage graph, written when it is
//!   planned. A resumed job is planned again; only if the graph is the same
//!   (same tables, same files, same cut) are the earlier outputs used;
//! - `runs/{n}`: one object per start of the job. Run `n` numbers its task
//!   attempts from `n x ATTEMPTS_PER_RUN`, so no attempt of a resumed run
//!   writes over an object that an attempt of an earlier run (perhaps still
//!   running on a host) writes;
//! - `tasks/s{stage}-p{partition}.json`: each accepted task result: the
//!   shuffle objects or staged files that stay where the attempt put them;
//! - `commit.json`: the job's write began its commit (the commit record at
//!   the output location lists the steps; a resumed job finishes it);
//! - `end.json`: how the job ended, written before the folder is removed.
//!
//! A folder without `end.json` is a job that was running when its driver
//! stopped. Every write here is one object (a PUT): a lost write costs at
//! most a re-run of that task, never a wrong answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ignis_core::error::{IgnisError, Result};
use ignis_core::ids::{JobId, StageId};
use ignis_core::job::JobSpec;
use ignis_core::protocol::TaskResult;
use ignis_core::store;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::planner::stages::StageGraph;

/// Attempt numbers each run of a job has to itself.
pub const ATTEMPTS_PER_RUN: u32 = 1000;

/// The journal of a driver: one folder per job it runs.
#[derive(Clone)]
pub struct Journal {
    url: String,
    env: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    store: Arc<dyn ObjectStore>,
    root: Path,
}

/// What `job.json` holds.
#[derive(Serialize, Deserialize)]
struct JournaledJob {
    job_id: JobId,
    tenant: String,
    submitted_at_ms: u64,
    job: JobSpec,
}

#[derive(Serialize, Deserialize)]
struct JournaledGraph {
    fingerprint: String,
}

#[derive(Serialize, Deserialize)]
struct JournaledEnd {
    state: String,
    error: Option<String>,
}

/// A job found running in the journal, to be resumed.
pub struct Unfinished {
    pub job_id: JobId,
    pub tenant: String,
    pub submitted_at_ms: u64,
    pub job: JobSpec,
    pub journal: JobJournal,
}

/// What earlier runs of a job left: the graph they ran and the task results
/// they accepted.
#[derive(Default)]
pub struct Prior {
    /// This run's number (0 for a first run).
    pub run: u32,
    pub fingerprint: Option<String>,
    pub results: HashMap<StageId, HashMap<u32, TaskResult>>,
}

impl Prior {
    /// The first attempt number of this run's tasks.
    pub fn first_attempt(&self) -> u32 {
        self.run.saturating_mul(ATTEMPTS_PER_RUN)
    }
}

impl Journal {
    /// The journal at `url` (`s3://bucket/prefix/`, `file:///dir/`).
    pub fn open(url: &str) -> Result<Self> {
        let env = store::runtime_env();
        let (store, root) = store::resolve(&env, url)?;
        Ok(Self { url: url.to_string(), env, store, root })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The journal of job `id`, whether or not it holds anything yet. Its
    /// requests are counted for the job's receipt.
    pub fn job(&self, id: &JobId) -> JobJournal {
        let (env, counters) = ignis_core::receipt::counted(&self.env);
        let url = store::join(&self.url, id.as_str());
        let store = store::resolve(&env, &self.url).map(|(store, _)| store).unwrap_or_else(|_| self.store.clone());
        JobJournal {
            store,
            root: self.root.clone().join(id.as_str()),
            url,
            journal_url: self.url.clone(),
            counters,
            id: id.clone(),
            ended: Arc::new(AtomicBool::new(false)),
            writes: Arc::new(tokio::sync::RwLock::new(())),
        }
    }

    /// Record a job as it starts: from here on a restarted driver resumes it.
    pub async fn begin(&self, id: &JobId, tenant: &str, submitted_at_ms: u64, job: &JobSpec) -> Result<JobJournal> {
        let journal = self.job(id);
        let record = JournaledJob { job_id: id.clone(), tenant: tenant.to_string(), submitted_at_ms, job: job.clone() };
        journal.put("job.json", &record).await?;
        journal.put("runs/0", &serde_json::json!({})).await?;
        Ok(journal)
    }

    /// Jobs that were running when the driver stopped. Folders of jobs that
    /// had ended (their removal was cut short) are removed now.
    pub async fn unfinished(&self) -> Result<Vec<Unfinished>> {
        let mut folders: HashMap<String, Vec<String>> = HashMap::new();
        for meta in store::list_all(self.store.as_ref(), &self.root).await? {
            let Some(parts) = meta.location.prefix_match(&self.root) else { continue };
            let parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
            if let [folder, rest @ ..] = parts.as_slice() {
                folders.entry(folder.clone()).or_default().push(rest.join("/"));
            }
        }
        let mut out = Vec::new();
        for (folder, files) in folders {
            let journal = self.job(&JobId::from(folder.as_str()));
            let has = |name: &str| files.iter().any(|f| f == name);
            if has("end.json") || !has("job.json") {
                journal.remove().await?;
                continue;
            }
            let record: JournaledJob = journal.get("job.json").await?;
            if record.job_id.as_str() != folder {
                return Err(IgnisError::Job(format!(
                    "journal {}: folder {folder} holds job {} (a journal written by hand?)",
                    self.url, record.job_id
                )));
            }
            out.push(Unfinished {
                job_id: record.job_id,
                tenant: record.tenant,
                submitted_at_ms: record.submitted_at_ms,
                job: record.job,
                journal,
            });
        }
        out.sort_by_key(|u| u.submitted_at_ms);
        Ok(out)
    }
}

/// The journal of one job.
#[derive(Clone)]
pub struct JobJournal {
    store: Arc<dyn ObjectStore>,
    root: Path,
    /// The job's folder, and the journal's.
    url: String,
    journal_url: String,
    counters: Arc<ignis_core::receipt::StoreCounters>,
    id: JobId,
    /// Its end is recorded (once is enough).
    ended: Arc<AtomicBool>,
    /// Held (shared) by each task result being written; its end waits for them.
    writes: Arc<tokio::sync::RwLock<()>>,
}

impl JobJournal {
    pub fn job_id(&self) -> &JobId {
        &self.id
    }

    /// Start another run of a job found unfinished: what earlier runs accepted.
    pub async fn resume(&self) -> Result<Prior> {
        let mut prior = Prior::default();
        for meta in store::list_all(self.store.as_ref(), &self.root).await? {
            let Some(parts) = meta.location.prefix_match(&self.root) else { continue };
            let parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
            match parts.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                ["runs", n] => prior.run = prior.run.max(n.parse::<u32>().map_or(0, |n| n + 1)),
                ["graph.json"] => prior.fingerprint = Some(self.get::<JournaledGraph>("graph.json").await?.fingerprint),
                ["tasks", name] => {
                    let result: TaskResult = self.get(&format!("tasks/{name}")).await?;
                    prior.results.entry(result.stage_id).or_default().insert(result.partition, result);
                }
                _ => {}
            }
        }
        self.put(&format!("runs/{}", prior.run), &serde_json::json!({})).await?;
        Ok(prior)
    }

    /// This run planned `graph`: earlier results are kept if the earlier run
    /// planned the same graph, dropped (every task runs again) if not.
    pub async fn restore(&self, mut prior: Prior, graph: &StageGraph) -> Prior {
        let planned = fingerprint(graph);
        if prior.fingerprint.as_deref().is_some_and(|earlier| earlier != planned) {
            tracing::warn!(
                job = %self.id,
                "the resumed job plans to other stages than before (its tables changed?): it runs from the start"
            );
            prior.results.clear();
            if let Err(e) = self.forget_tasks().await {
                tracing::warn!(job = %self.id, error = %e, "could not clear the journal's task results");
            }
        }
        if let Err(e) = self.put("graph.json", &JournaledGraph { fingerprint: planned }).await {
            tracing::warn!(job = %self.id, error = %e, "could not journal the job's stage graph");
        }
        prior
    }

    /// A task's result was accepted: its outputs are kept. Written in the
    /// background (the scheduler does not wait for the store); one that is
    /// lost only means a restarted driver runs the task again.
    pub fn accepted(&self, result: TaskResult) {
        let journal = self.clone();
        tokio::spawn(async move {
            let _writing = journal.writes.clone().read_owned().await;
            if journal.ended.load(Ordering::SeqCst) {
                return;
            }
            let name = format!("tasks/s{}-p{}.json", result.stage_id, result.partition);
            if let Err(e) = journal.put(&name, &result).await {
                tracing::warn!(job = %journal.id, error = %e, "could not journal a task result");
            }
        });
    }

    async fn forget_tasks(&self) -> Result<()> {
        let tasks = self.root.clone().join("tasks");
        store::delete_prefix(self.store.as_ref(), &store::join(&self.url, "tasks"), &tasks).await?;
        delete_if_present(self.store.as_ref(), &self.root.clone().join("commit.json")).await
    }

    /// The job's write begins its commit. (Informational: a resumed write
    /// always looks for its own commit record at the output location.)
    pub async fn committing(&self) {
        if let Err(e) = self.put("commit.json", &serde_json::json!({})).await {
            tracing::warn!(job = %self.id, error = %e, "could not journal the start of the commit");
        }
    }

    /// The job ended (`Ok`: it succeeded): recorded, then its folder removed.
    /// A failure to record is logged: a restarted driver then resumes the
    /// job, finds its commit done or runs what is missing again.
    pub async fn end(&self, outcome: std::result::Result<(), &IgnisError>) {
        if self.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        // Task results still being written land before the folder goes.
        let _no_writes = self.writes.write().await;
        let (state, error) = match outcome {
            Ok(()) => ("succeeded", None),
            Err(IgnisError::Cancelled) => ("cancelled", None),
            Err(e) => ("failed", Some(e.to_string())),
        };
        let recorded = match self.put("end.json", &JournaledEnd { state: state.to_string(), error }).await {
            Ok(()) => self.remove().await,
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            tracing::warn!(job = %self.id, error = %e, "could not record the job's end in the journal");
        }
    }

    /// The object-store requests made for this job's journal so far.
    pub fn requests(&self) -> ignis_core::receipt::StoreCounts {
        self.counters.snapshot()
    }

    async fn remove(&self) -> Result<()> {
        store::delete_prefix(self.store.as_ref(), &self.url, &self.root).await?;
        // A local journal left empty goes too (a shuffle root holds nothing after its jobs).
        if let Ok(url) = url::Url::parse(&self.journal_url)
            && url.scheme() == "file"
            && let Ok(dir) = url.to_file_path()
        {
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }

    async fn put(&self, name: &str, value: &impl Serialize) -> Result<()> {
        let body = serde_json::to_vec(value).map_err(|e| IgnisError::internal(e.to_string()))?;
        let path = name.split('/').fold(self.root.clone(), |p, part| p.join(part));
        self.store.put(&path, PutPayload::from(body)).await?;
        Ok(())
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T> {
        let path = name.split('/').fold(self.root.clone(), |p, part| p.join(part));
        let bytes = self.store.get(&path).await?.bytes().await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| IgnisError::Job(format!("journal entry {path} of job {} is unreadable: {e}", self.id)))
    }
}

async fn delete_if_present(store: &dyn ObjectStore, path: &Path) -> Result<()> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What identifies a stage graph: its stages, their tasks, exchanges and
/// operators (files included). Two plannings of one job over unchanged
/// tables give the same fingerprint.
pub fn fingerprint(graph: &StageGraph) -> String {
    hex::encode(sha2::Sha256::digest(graph.display("").as_bytes()))
}
