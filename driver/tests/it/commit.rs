//! The output commit under failure: a commit whose N-th rename fails leaves
//! the old output exactly as it was, and a commit a stopped driver left
//! half-done is settled by the next job that writes there (forward when its
//! manifest was written, back when not). The store is the real local
//! filesystem, with renames that fail on cue.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use futures::stream::BoxStream;
use ignis_core::ids::{JobId, StageId};
use ignis_core::job::{Format, WriteMode, WriteSpec};
use ignis_core::protocol::{TaskMetrics, TaskResult, TaskResultOutput, WrittenFile};
use ignis_driver::commit::{self, COMMIT_RECORD, SUCCESS_MANIFEST};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions,
};

use crate::common::snapshot;

/// The local filesystem, except that rename number `fail_at` (from 1) fails.
#[derive(Debug)]
struct FailingRenames {
    inner: LocalFileSystem,
    renames: AtomicUsize,
    fail_at: usize,
}

impl fmt::Display for FailingRenames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailingRenames({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FailingRenames {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        if self.renames.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(object_store::Error::Generic {
                store: "FailingRenames",
                source: format!("injected failure renaming {from}").into(),
            });
        }
        self.inner.rename_opts(from, to, options).await
    }
}

/// A runtime whose `file://` store fails rename `fail_at` (0: never).
fn runtime(fail_at: usize) -> Arc<datafusion::execution::runtime_env::RuntimeEnv> {
    let env = ignis_core::store::runtime_env();
    let store = FailingRenames { inner: LocalFileSystem::new(), renames: AtomicUsize::new(0), fail_at };
    env.register_object_store(&url::Url::parse("file:///").unwrap(), Arc::new(store));
    env
}

fn spec(dir: &std::path::Path) -> WriteSpec {
    WriteSpec::to_files(
        Format::Csv,
        url::Url::from_directory_path(dir).unwrap().to_string(),
        WriteMode::Overwrite,
        Vec::new(),
    )
}

/// A job's staged result files, one per partition, as its tasks would leave them.
fn stage(dir: &std::path::Path, job: &JobId, partitions: u32) -> Vec<TaskResult> {
    (0..partitions)
        .map(|p| {
            let name = format!("part-{p:05}-{job}.csv");
            let staged = dir.join(format!("_temporary/{job}/p{p}-a0"));
            std::fs::create_dir_all(&staged).unwrap();
            std::fs::write(staged.join(&name), format!("n\n{p}\n")).unwrap();
            TaskResult {
                job_id: job.clone(),
                stage_id: StageId(1),
                partition: p,
                attempt: 0,
                output: TaskResultOutput::Files { files: vec![WrittenFile { relative_path: name, rows: 1, bytes: 4 }] },
                metrics: TaskMetrics::default(),
            }
        })
        .collect()
}

/// Write `partitions` files as job `id`, with renames failing at `fail_at`.
async fn write(dir: &std::path::Path, id: &str, partitions: u32, fail_at: usize) -> ignis_core::error::Result<()> {
    let env = runtime(fail_at);
    let job = JobId::from(id);
    let pending = commit::prepare(&env, &spec(dir), &job).await?.expect("overwrite always runs");
    let results = stage(dir, &job, partitions);
    let committed = pending.commit(&results).await;
    if committed.is_err() {
        pending.cleanup().await?;
    }
    committed.map(|_| ())
}

#[tokio::test]
async fn a_commit_failing_at_its_nth_rename_leaves_the_old_output() {
    let ws = tempfile::tempdir().unwrap();
    let dir = ws.path().join("out");
    write(&dir, "job-old", 4, 0).await.unwrap();
    let old = snapshot(&dir);
    assert_eq!(old.len(), 5, "four files and the manifest: {:?}", old.keys());
    for fail_at in [1, 3, 4] {
        let err = write(&dir, &format!("job-new{fail_at}"), 4, fail_at).await.unwrap_err().to_string();
        assert!(err.contains("injected failure"), "{err}");
        assert_eq!(snapshot(&dir), old, "rename {fail_at} failed and the location changed");
    }
    // Without failures the new output replaces the old one whole.
    write(&dir, "job-new", 3, 0).await.unwrap();
    let new = snapshot(&dir);
    assert_eq!(new.len(), 4, "{:?}", new.keys());
    assert!(new.keys().filter(|k| *k != SUCCESS_MANIFEST).all(|k| k.contains("job-new")), "{:?}", new.keys());
}

#[tokio::test]
async fn a_commit_a_stopped_driver_left_is_settled_by_the_next_writer() {
    let ws = tempfile::tempdir().unwrap();
    let dir = ws.path().join("out");
    write(&dir, "job-old", 2, 0).await.unwrap();
    let manifest = |job: &str, files: &[&str]| {
        serde_json::json!({"job_id": job, "format": "csv", "rows": files.len(), "files": files}).to_string()
    };

    // Stopped before its manifest: one file moved in, the old ones untouched. Undone.
    std::fs::write(dir.join("part-00000-job-b.csv"), "n\n9\n").unwrap();
    let record = serde_json::json!({
        "job_id": "job-b",
        "moves": [["_temporary/job-b/p0-a0/part-00000-job-b.csv", "part-00000-job-b.csv"],
                  ["_temporary/job-b/p1-a0/part-00001-job-b.csv", "part-00001-job-b.csv"]],
        "replaced": ["part-00000-job-old.csv", "part-00001-job-old.csv"],
        "manifest": serde_json::from_str::<serde_json::Value>(&manifest("job-b", &["part-00000-job-b.csv"])).unwrap(),
    });
    std::fs::write(dir.join(COMMIT_RECORD), record.to_string()).unwrap();
    write(&dir, "job-c", 1, 0).await.unwrap();
    let files: Vec<String> = snapshot(&dir).into_keys().collect();
    assert_eq!(
        files,
        ["_SUCCESS", "part-00000-job-c.csv"],
        "the stopped commit was undone, then job-c replaced job-old"
    );

    // Stopped after its manifest: the replaced files are still there. Finished.
    std::fs::write(dir.join("part-00000-job-d.csv"), "n\n7\n").unwrap();
    std::fs::write(dir.join(SUCCESS_MANIFEST), manifest("job-d", &["part-00000-job-d.csv"])).unwrap();
    let record = serde_json::json!({
        "job_id": "job-d",
        "moves": [["_temporary/job-d/p0-a0/part-00000-job-d.csv", "part-00000-job-d.csv"]],
        "replaced": ["part-00000-job-c.csv"],
        "manifest": serde_json::from_str::<serde_json::Value>(&manifest("job-d", &["part-00000-job-d.csv"])).unwrap(),
    });
    std::fs::write(dir.join(COMMIT_RECORD), record.to_string()).unwrap();
    let env = runtime(0);
    let append = WriteSpec { mode: WriteMode::Append, ..spec(&dir) };
    let pending = commit::prepare(&env, &append, &JobId::from("job-e")).await.unwrap().unwrap();
    pending.cleanup().await.unwrap();
    let files: Vec<String> = snapshot(&dir).into_keys().collect();
    assert_eq!(files, ["_SUCCESS", "part-00000-job-d.csv"], "the stopped commit was finished");
}
