//! Output commit. Result tasks write under
//! `{location}/_temporary/{job}/p{partition}-a{attempt}/`; only when every task
//! has succeeded does the driver record the commit, move the accepted
//! attempts' files into place, write the `_SUCCESS` manifest, and (for
//! overwrite) remove the old files. A job that fails before the manifest is
//! written leaves the location exactly as it was.
//!
//! One job writes a location at a time: `prepare` creates the lock object
//! `{location}/_ignis_write.lock` with a conditional put (create only if
//! absent), and the job removes it when it has committed or cleaned up. A
//! second job that finds it fails at once, naming the job that holds it.

use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnv;
use ignis_core::error::{IgnisError, Result};
use ignis_core::ids::JobId;
use ignis_core::job::{WriteMode, WriteSpec};
use ignis_core::protocol::{TaskResult, TaskResultOutput};
use ignis_core::store;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

pub const SUCCESS_MANIFEST: &str = "_SUCCESS";
/// The object that marks a location as being written by a job.
pub const WRITE_LOCK: &str = "_ignis_write.lock";

/// A write about to start: the mode has been checked against what is there.
pub struct PendingWrite {
    pub spec: WriteSpec,
    pub job_id: JobId,
    store: Arc<dyn ObjectStore>,
    root: Path,
    location_existed: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub job_id: String,
    pub format: String,
    pub rows: u64,
    pub files: Vec<String>,
}

/// Files committed by a job.
#[derive(Debug, Clone)]
pub struct Committed {
    pub location: String,
    pub files: Vec<String>,
    pub rows: u64,
}

/// `None` when mode = ignore and data is there: the job should not run.
/// Takes the location's write lock first; it is released again unless a
/// [`PendingWrite`] is returned (which releases it in `commit` or `cleanup`).
pub async fn prepare(env: &RuntimeEnv, spec: &WriteSpec, job_id: &JobId) -> Result<Option<PendingWrite>> {
    let (store, root) = store::resolve(env, &spec.location)?;
    let location_existed = location_exists(&spec.location);
    let lock = child_path(&root, WRITE_LOCK);
    lock_location(store.as_ref(), &lock, &spec.location, job_id).await?;
    let pending = PendingWrite { spec: spec.clone(), job_id: job_id.clone(), store, root, location_existed };
    let settled = recover(pending.store.as_ref(), &pending.root, &spec.location).await;
    let listed = match settled {
        Ok(()) => visible_files(pending.store.as_ref(), &pending.root).await,
        Err(e) => Err(e),
    };
    let go_ahead = match listed {
        Ok(existing) if existing.is_empty() => Ok(true),
        Ok(existing) => match spec.mode {
            WriteMode::Error => Err(IgnisError::Output(format!(
                "output location {} already holds {} file(s); set output.write.mode to \"overwrite\", \"append\" or \"ignore\"",
                spec.location,
                existing.len()
            ))),
            WriteMode::Ignore => Ok(false),
            WriteMode::Overwrite | WriteMode::Append => Ok(true),
        },
        Err(e) => Err(e),
    };
    match go_ahead {
        Ok(true) => Ok(Some(pending)),
        other => {
            pending.cleanup().await?;
            other.map(|_| None)
        }
    }
}

/// Create the lock object, only if there is none: two jobs never write one location at once.
async fn lock_location(store: &dyn ObjectStore, lock: &Path, location: &str, job_id: &JobId) -> Result<()> {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let body = serde_json::json!({"job_id": job_id.to_string(), "since_unix_s": since}).to_string();
    let create = PutOptions::from(PutMode::Create);
    match store.put_opts(lock, PutPayload::from(body), create).await {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => {
            let holder = match store.get(lock).await {
                Ok(got) => got.bytes().await.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default(),
                Err(_) => String::new(),
            };
            // The same job again (a stream's batch re-run after its driver
            // stopped): the lock is its own.
            let same_job = serde_json::from_str::<serde_json::Value>(&holder)
                .is_ok_and(|v| v["job_id"].as_str() == Some(job_id.as_str()));
            if same_job {
                return Ok(());
            }
            Err(IgnisError::Output(format!(
                "output location {location} is being written by another job ({holder}); try again when it has \
                 finished (if no job is writing there, a driver stopped mid-job: remove {location}/{WRITE_LOCK})"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

impl PendingWrite {
    /// The staging directory URL that result tasks write under.
    pub fn staging_url(&self) -> String {
        store::join(&self.spec.location, &format!("_temporary/{}", self.job_id))
    }

    /// Move the accepted attempts' files into place and write the manifest.
    ///
    /// The commit is recorded first (`_ignis_commit.json`: the moves, the
    /// files an overwrite replaces, the manifest); writing `_SUCCESS` is the
    /// commit point. A failure before it undoes the moves, so the location
    /// holds the old output; a failure after it is finished by the next job
    /// that writes there ([`recover`]), so the location holds the new one.
    pub async fn commit(&self, results: &[TaskResult]) -> Result<Committed> {
        let old = visible_files(self.store.as_ref(), &self.root).await?;
        let mut moves = Vec::new();
        let mut rows = 0;
        for result in results {
            let TaskResultOutput::Files { files: written } = &result.output else {
                return Err(IgnisError::internal("result task did not write files"));
            };
            let attempt_dir = format!("_temporary/{}/p{}-a{}", self.job_id, result.partition, result.attempt);
            for f in written {
                moves.push((format!("{attempt_dir}/{}", f.relative_path), f.relative_path.clone()));
                rows += f.rows;
            }
        }
        let mut files: Vec<String> = moves.iter().map(|(_, to)| to.clone()).collect();
        files.sort();
        // An append replaces what an earlier run of the same job committed
        // (file names carry the job id): a re-run never adds rows twice.
        let earlier_run = |p: &String| is_file_of_job(p, &self.job_id);
        let replaced: Vec<String> = match self.spec.mode {
            WriteMode::Overwrite => old.iter().filter(|p| !files.contains(p)).cloned().collect(),
            WriteMode::Append => old.iter().filter(|p| earlier_run(p) && !files.contains(p)).cloned().collect(),
            _ => Vec::new(),
        };
        let mut listed = match self.spec.mode {
            WriteMode::Append => {
                old.into_iter().filter(|p| !files.contains(p) && !earlier_run(p)).chain(files.iter().cloned()).collect()
            }
            _ => files.clone(),
        };
        listed.sort();
        let manifest = Manifest {
            job_id: self.job_id.to_string(),
            format: self.spec.format.extension().to_string(),
            rows,
            files: listed,
        };
        let record = CommitRecord { job_id: self.job_id.to_string(), moves, replaced, manifest };
        let store = self.store.as_ref();
        put_json(store, &child_path(&self.root, COMMIT_RECORD), &record).await?;
        if let Err(e) = record.apply(store, &self.root).await {
            if let Err(undo) = record.settle(store, &self.root).await {
                tracing::warn!(location = %self.spec.location, error = %undo, "could not settle an interrupted commit");
            }
            return Err(e);
        }
        self.cleanup().await?;
        if self.spec.mode == WriteMode::Overwrite {
            remove_empty_local_dirs(&self.spec.location);
        }
        Ok(Committed { location: self.spec.location.clone(), files, rows })
    }

    /// Remove every staged file: what losing or failed attempts left, or, when
    /// the job failed, all of it. The location is then as it was before.
    pub async fn cleanup(&self) -> Result<()> {
        let staging = self.staging_url();
        let staging_path = child_path(&self.root, &format!("_temporary/{}", self.job_id));
        store::delete_prefix(self.store.as_ref(), &staging, &staging_path).await?;
        delete_if_present(self.store.as_ref(), &child_path(&self.root, WRITE_LOCK)).await?;
        let temporary = store::join(&self.spec.location, "_temporary");
        remove_local_dir_if_empty(&temporary);
        if !self.location_existed {
            remove_local_dir_if_empty(&self.spec.location);
        }
        Ok(())
    }
}

/// A result file a run of `job_id` wrote: `part-00001-{job_id}.parquet`.
fn is_file_of_job(path: &str, job_id: &JobId) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = name.split_once('.').map_or(name, |(stem, _)| stem);
    stem.strip_suffix(job_id.as_str()).is_some_and(|rest| rest.ends_with('-'))
}

/// Fault injection for tests: `IGNIS_TEST_COMMIT_PAUSE_MS` holds a commit
/// between its moves and its manifest, for a test to stop the driver there.
fn test_commit_pause() -> Option<std::time::Duration> {
    let ms: u64 = std::env::var("IGNIS_TEST_COMMIT_PAUSE_MS").ok()?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// The object recording a commit in progress.
pub const COMMIT_RECORD: &str = "_ignis_commit.json";

/// What a commit does, written before it starts so that it can be finished
/// or undone after an interruption.
#[derive(Debug, Serialize, Deserialize)]
struct CommitRecord {
    job_id: String,
    /// (staged path, final path), relative to the location.
    moves: Vec<(String, String)>,
    /// Old files an overwrite removes, once the manifest names the new ones.
    replaced: Vec<String>,
    manifest: Manifest,
}

impl CommitRecord {
    /// Moves, then the manifest (the commit point), then the removals.
    /// Idempotent: a move already made (its file gone from staging and in
    /// place) is skipped, so a commit cut short is finished by applying it again.
    async fn apply(&self, store: &dyn ObjectStore, root: &Path) -> Result<()> {
        for (from, to) in &self.moves {
            let (from, to) = (child_path(root, from), child_path(root, to));
            match store.rename(&from, &to).await {
                Ok(()) => {}
                Err(object_store::Error::NotFound { .. }) if store.head(&to).await.is_ok() => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(pause) = test_commit_pause() {
            tokio::time::sleep(pause).await;
        }
        put_json(store, &child_path(root, SUCCESS_MANIFEST), &self.manifest).await?;
        self.finish(store, root).await
    }

    /// After the commit point: remove the replaced files and the record.
    async fn finish(&self, store: &dyn ObjectStore, root: &Path) -> Result<()> {
        for path in &self.replaced {
            delete_if_present(store, &child_path(root, path)).await?;
        }
        delete_if_present(store, &child_path(root, COMMIT_RECORD)).await
    }

    /// Bring an interrupted commit to one side: forward if its manifest was
    /// written, else back (its moved files removed; the old ones were never touched).
    async fn settle(&self, store: &dyn ObjectStore, root: &Path) -> Result<()> {
        if read_manifest(store, root).await?.is_some_and(|m| m.job_id == self.job_id) {
            return self.finish(store, root).await;
        }
        for (_, to) in &self.moves {
            delete_if_present(store, &child_path(root, to)).await?;
        }
        delete_if_present(store, &child_path(root, COMMIT_RECORD)).await
    }
}

/// Finish the commit of a resumed job whose driver stopped mid-commit.
/// `Some` when the location holds the job's committed output (finished now,
/// or before the driver stopped); `None` when its commit had not begun, so
/// the job still has to run. The job's staging and write lock are removed.
pub async fn complete(env: &RuntimeEnv, spec: &WriteSpec, job_id: &JobId) -> Result<Option<Committed>> {
    let (store, root) = store::resolve(env, &spec.location)?;
    let record = match store.get(&child_path(&root, COMMIT_RECORD)).await {
        Ok(got) => serde_json::from_slice::<CommitRecord>(&got.bytes().await?).ok(),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(record) = record.filter(|r| r.job_id == job_id.as_str()) {
        tracing::info!(location = %spec.location, job = %job_id, "finishing the commit the job's earlier run began");
        record.apply(store.as_ref(), &root).await?;
    }
    let manifest = read_manifest(store.as_ref(), &root).await?;
    let Some(manifest) = manifest.filter(|m| m.job_id == job_id.as_str()) else { return Ok(None) };
    let pending = PendingWrite { spec: spec.clone(), job_id: job_id.clone(), store, root, location_existed: true };
    pending.cleanup().await?;
    let files = manifest.files.into_iter().filter(|f| is_file_of_job(f, job_id)).collect();
    Ok(Some(Committed { location: spec.location.clone(), files, rows: manifest.rows }))
}

/// The files (relative to `location`) of the output an Ignis job committed
/// there, from its `_SUCCESS` manifest; `None` when there is no manifest.
pub async fn committed_files(env: &RuntimeEnv, location: &str) -> Result<Option<Vec<String>>> {
    if location.contains(['*', '?', '[']) {
        return Ok(None);
    }
    let Ok((store, root)) = store::resolve(env, location) else { return Ok(None) };
    match store.get(&child_path(&root, SUCCESS_MANIFEST)).await {
        Ok(got) => {
            let bytes = got.bytes().await?;
            // A `_SUCCESS` of another writer (Spark's is empty) is no manifest of ours.
            Ok(serde_json::from_slice::<Manifest>(&bytes).ok().map(|m| m.files))
        }
        // Not found, or (a file location) a path under a file: listing decides.
        Err(_) => Ok(None),
    }
}

/// The `_SUCCESS` manifest at `root`, if there is one of ours (Spark's is
/// empty, and no manifest).
async fn read_manifest(store: &dyn ObjectStore, root: &Path) -> Result<Option<Manifest>> {
    match store.get(&child_path(root, SUCCESS_MANIFEST)).await {
        Ok(got) => Ok(serde_json::from_slice::<Manifest>(&got.bytes().await?).ok()),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Settle a commit a stopped job left at this location (see [`CommitRecord::settle`]).
async fn recover(store: &dyn ObjectStore, root: &Path, location: &str) -> Result<()> {
    let record = match store.get(&child_path(root, COMMIT_RECORD)).await {
        Ok(got) => got.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let record: CommitRecord = serde_json::from_slice(&record).map_err(|e| {
        IgnisError::Output(format!("{location}/{COMMIT_RECORD} is not a commit record ({e}); remove it"))
    })?;
    tracing::warn!(location, job = %record.job_id, "settling a commit an earlier job left unfinished");
    record.settle(store, root).await
}

async fn put_json(store: &dyn ObjectStore, path: &Path, value: &impl Serialize) -> Result<()> {
    let body = serde_json::to_vec_pretty(value).map_err(|e| IgnisError::internal(e.to_string()))?;
    store.put(path, PutPayload::from(body)).await?;
    Ok(())
}

async fn delete_if_present(store: &dyn ObjectStore, path: &Path) -> Result<()> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn child_path(root: &Path, relative: &str) -> Path {
    relative.split('/').filter(|s| !s.is_empty()).fold(root.clone(), |p, part| p.join(part))
}

/// Data files under `root`, relative to it: everything but `_`- and
/// `.`-prefixed names (manifest, staging), as Spark and Hive readers skip them.
async fn visible_files(store: &dyn ObjectStore, root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for meta in store::list_all(store, root).await? {
        let Some(parts) = meta.location.prefix_match(root) else { continue };
        let parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
        if parts.iter().any(|p| p.starts_with('_') || p.starts_with('.')) {
            continue;
        }
        out.push(parts.join("/"));
    }
    out.sort();
    Ok(out)
}

fn local_path(url: &str) -> Option<std::path::PathBuf> {
    let parsed = url::Url::parse(url).ok()?;
    if parsed.scheme() != "file" {
        return None;
    }
    parsed.to_file_path().ok()
}

fn location_exists(url: &str) -> bool {
    local_path(url).map(|p| p.exists()).unwrap_or(true)
}

fn remove_local_dir_if_empty(url: &str) {
    if let Some(p) = local_path(url) {
        let _ = std::fs::remove_dir(p);
    }
}

/// After an overwrite, partition directories that lost all their files.
fn remove_empty_local_dirs(url: &str) {
    fn walk(dir: &std::path::Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path());
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }
    if let Some(p) = local_path(url) {
        walk(&p);
    }
}
