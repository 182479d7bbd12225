//! The task protocol: what the driver sends an executor and what comes back.
//! Serialised as JSON for executor hosts and Lambda; passed as values in local
//! mode, where the plan fragment is still carried as bytes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, IgnisError};
use crate::ids::{JobId, StageId};
use crate::job::{Format, ShuffleCompression};
use crate::session::SessionOptions;

/// Bumped on any incompatible change to these types or to the plan codec.
pub const PROTOCOL_VERSION: u32 = 6;

/// How many stage plans a driver assumes an executor host keeps: it stops
/// sending a stage's plan to a host that ran a task of the stage, and
/// forgets which past this many (then sends them again). Hosts keep more.
pub const PLANS_A_HOST_KEEPS: usize = 256;

/// How long the driver keeps an idle HTTP/1 keep-alive connection open (its
/// header read timeout starts when a connection waits for the next request).
pub const DRIVER_IDLE_CONNECTION: Duration = Duration::from_secs(10);

/// How long clients of the driver (the CLI, executor hosts) keep an idle pooled
/// connection: well under [`DRIVER_IDLE_CONNECTION`], so a request is never sent
/// on a connection the driver is closing at that moment.
pub const CLIENT_IDLE_CONNECTION: Duration = Duration::from_secs(4);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskRequest {
    pub protocol_version: u32,
    pub job_id: JobId,
    pub stage_id: StageId,
    /// The partition of the stage plan this task runs.
    pub partition: u32,
    /// 0 for the first attempt.
    pub attempt: u32,
    /// The stage plan as datafusion-proto bytes (see [`crate::codec`]).
    /// Empty when the plan travels another way: `plan_url`, or (executor
    /// hosts) the host finished a task of the same stage, whose plan it keeps
    /// by (job, stage). So a plan goes to an executor about once per stage,
    /// not once per task.
    #[serde(default, with = "base64_bytes", skip_serializing_if = "bytes::Bytes::is_empty")]
    pub plan: bytes::Bytes,
    /// Where the plan is stored when it is not inline (Lambda, large plans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_url: Option<String>,
    /// Shuffle pieces each upstream stage produced, for the plan's readers.
    pub inputs: Vec<StageInput>,
    pub output: TaskOutput,
    pub batch_size: usize,
    /// The job's DataFusion session options (time zone, SQL parsing).
    #[serde(default, skip_serializing_if = "SessionOptions::is_empty")]
    pub options: SessionOptions,
    /// Wasm components whose functions the plan calls (by name).
    #[serde(default)]
    pub udfs: Vec<UdfRef>,
}

/// A Wasm UDF component: its content address and where its bytes are.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UdfRef {
    /// `sha256:<hex>` of the bytes; an executor checks it before running them.
    pub digest: String,
    /// Object URL of the component, e.g. `s3://bucket/udfs/components/<hex>.wasm`.
    pub url: String,
    /// How errors name the component: its upload name, file name or short digest.
    #[serde(default)]
    pub label: String,
}

/// Where the shuffle readers of one upstream stage find their data:
/// `partitions[p]` lists the pieces reader partition `p` reads, in order, or
/// is `None` when the task does not read partition `p` (a task is sent only
/// the pieces its own partition of the plan reads).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StageInput {
    pub stage_id: StageId,
    #[serde(with = "sparse")]
    pub partitions: Vec<Option<Vec<PieceLocation>>>,
    /// The pieces of a stage of many map tasks, in a table stored once
    /// ([`crate::shuffle::pieces`]): the executor fills `partitions` from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoredPieces>,
}

/// Where a stored piece table holds the pieces of each reduce partition.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredPieces {
    /// The table object.
    pub url: String,
    /// Every map object's URL is this followed by `{map}.{attempt}.arrows`.
    pub objects: String,
    /// The byte range (offset, length) of each partition's pieces in the
    /// table; `None` for a partition the task does not read.
    #[serde(with = "sparse")]
    pub ranges: Vec<Option<[u64; 2]>>,
}

/// A byte range of a shuffle object holding one Arrow IPC stream.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PieceLocation {
    /// Object URL, e.g. `file:///tmp/ignis/shuffle/job-1/1/0.0.arrows`.
    pub url: String,
    pub offset: u64,
    pub length: u64,
    pub rows: u64,
    /// Further ranges of the piece ([`PieceMeta::more`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<[u64; 2]>,
}

/// What a task does with the rows its plan produces.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutput {
    /// The plan root is a `ShuffleWriterExec`: write one object under
    /// `{root}/{job}/{stage}/{partition}.{attempt}.arrows`.
    Shuffle { root: String, compression: ShuffleCompression },
    /// Write result files under `staging` (unique to this attempt), each named
    /// `{file_stem}.{ext}`, in hive-style subdirectories when `partition_by` is
    /// set; the driver commits the accepted attempt's files.
    Files { staging: String, file_stem: String, format: Format, partition_by: Vec<String> },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskResult {
    pub job_id: JobId,
    pub stage_id: StageId,
    pub partition: u32,
    pub attempt: u32,
    pub output: TaskResultOutput,
    pub metrics: TaskMetrics,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskResultOutput {
    /// One shuffle object; `pieces[r]` is reduce partition `r`.
    Shuffle {
        url: String,
        pieces: Vec<PieceMeta>,
    },
    Files {
        files: Vec<WrittenFile>,
    },
}

impl PieceLocation {
    /// The location of `piece` of the shuffle object at `url`.
    pub fn new(url: &str, piece: &PieceMeta) -> Self {
        Self {
            url: url.to_owned(),
            offset: piece.offset,
            length: piece.length,
            rows: piece.rows,
            more: piece.more.clone(),
        }
    }

    /// Every byte range (start..end) of the piece, in order.
    pub fn ranges(&self) -> Vec<std::ops::Range<u64>> {
        std::iter::once([self.offset, self.length])
            .chain(self.more.iter().copied())
            .map(|[offset, length]| offset..offset + length)
            .collect()
    }
}

/// Where one output partition of a map task is in its shuffle object.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PieceMeta {
    pub offset: u64,
    pub length: u64,
    pub rows: u64,
    /// Further ranges (offset, length) of the piece, in order, when the map
    /// task uploaded it in parts (its output outgrew the writer's buffer):
    /// the piece's IPC stream is the concatenation of every range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<[u64; 2]>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WrittenFile {
    /// Path relative to the staging directory, e.g. `country=US/part-00001-job-1.parquet`;
    /// the committed file has the same path relative to the output location.
    pub relative_path: String,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct TaskMetrics {
    pub output_rows: u64,
    pub output_bytes: u64,
    pub elapsed_ms: u64,
    /// CSV rows skipped by DROPMALFORMED scans.
    #[serde(default)]
    pub malformed_rows_dropped: u64,
    /// Bytes sorts, aggregations and joins wrote to local disk.
    #[serde(default)]
    pub spilled_bytes: u64,
    /// The most the task's memory pool held at once.
    #[serde(default)]
    pub peak_memory_bytes: u64,
    /// The task's object-store requests and bytes.
    #[serde(default)]
    pub store: crate::receipt::StoreCounts,
    /// The memory of the Lambda function that ran the task (MB); 0 elsewhere.
    #[serde(default)]
    pub function_memory_mb: u64,
    /// Shuffle GETs sent a second time for want of an answer, and how many
    /// of those answered first.
    #[serde(default)]
    pub hedged_reads: u64,
    #[serde(default)]
    pub hedge_wins: u64,
}

/// A failed task as it crosses the wire: classified, with a message for the user.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct TaskFailure {
    pub kind: ErrorKind,
    pub message: String,
}

impl From<IgnisError> for TaskFailure {
    fn from(e: IgnisError) -> Self {
        Self { kind: e.kind(), message: e.to_string() }
    }
}

impl From<TaskFailure> for IgnisError {
    fn from(f: TaskFailure) -> Self {
        IgnisError::Task { kind: f.kind, message: f.message }
    }
}

impl TaskRequest {
    pub fn check_version(&self) -> Result<(), IgnisError> {
        if self.protocol_version != PROTOCOL_VERSION {
            return Err(IgnisError::Protocol(format!(
                "task protocol version {} is not supported by this executor (it speaks {PROTOCOL_VERSION})",
                self.protocol_version
            )));
        }
        Ok(())
    }
}

impl TaskResult {
    /// Whether this result can be the outcome of `request`: the same task
    /// attempt, its shuffle object where that attempt writes it, its files
    /// inside the attempt's staging directory. An executor that reports
    /// anything else is refused (and the attempt fails).
    pub fn check_against(&self, request: &TaskRequest) -> Result<(), String> {
        let same = self.job_id == request.job_id
            && self.stage_id == request.stage_id
            && self.partition == request.partition
            && self.attempt == request.attempt;
        if !same {
            return Err(format!(
                "the result names job {} stage {} partition {} attempt {}, not the task it was given",
                self.job_id, self.stage_id, self.partition, self.attempt
            ));
        }
        match (&self.output, &request.output) {
            (TaskResultOutput::Shuffle { url, .. }, TaskOutput::Shuffle { root, .. }) => {
                let expected = crate::shuffle::shuffle_object_url(
                    root,
                    &request.job_id,
                    request.stage_id,
                    request.partition,
                    request.attempt,
                );
                if *url != expected {
                    return Err(format!("the shuffle object {url} is not where this attempt writes ({expected})"));
                }
            }
            (TaskResultOutput::Files { files }, TaskOutput::Files { .. }) => {
                for f in files {
                    let bad =
                        f.relative_path.split('/').any(|p| p.is_empty() || p == "." || p == ".." || p.contains('\\'));
                    if bad {
                        return Err(format!("the written file {:?} is not a plain relative path", f.relative_path));
                    }
                }
            }
            _ => return Err("the result's kind of output is not the one the task was given".into()),
        }
        Ok(())
    }
}

/// What an executor host sends when it joins a driver.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterHost {
    pub protocol_version: u32,
    /// A name for status output, e.g. the host name.
    pub name: String,
    /// Tasks the host runs at once.
    pub slots: u32,
}

/// The driver's answer to [`RegisterHost`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostRegistered {
    pub executor_id: String,
    /// What the host presents from now on (`Authorization: Bearer <token>`);
    /// the executor secret only registers.
    pub token: String,
    /// How often the driver expects a heartbeat.
    pub heartbeat_interval_ms: u64,
}

/// A host's periodic sign of life.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The host finishes its running tasks and takes no new ones.
    #[serde(default)]
    pub draining: bool,
}

/// The driver's answer to a heartbeat.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    /// Tasks (by `task_key`) the host runs that the driver no longer wants:
    /// another attempt finished first, the attempt ran past its deadline, or
    /// the job ended. The host stops them and reports them failed.
    #[serde(default)]
    pub cancel: Vec<u64>,
}

/// A task handed to an executor host; the result goes back under `task_key`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskAssignment {
    pub task_key: u64,
    pub request: TaskRequest,
}

/// How a task attempt ended, as an executor host reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    Succeeded(TaskResult),
    Failed(TaskFailure),
}

impl From<Result<TaskResult, TaskFailure>> for TaskOutcome {
    fn from(r: Result<TaskResult, TaskFailure>) -> Self {
        match r {
            Ok(result) => Self::Succeeded(result),
            Err(failure) => Self::Failed(failure),
        }
    }
}

impl From<TaskOutcome> for Result<TaskResult, TaskFailure> {
    fn from(o: TaskOutcome) -> Self {
        match o {
            TaskOutcome::Succeeded(result) => Ok(result),
            TaskOutcome::Failed(failure) => Err(failure),
        }
    }
}

/// The payload of one Lambda invocation: a task, inline or, when its JSON
/// would pass the invoke payload limit, as the URL of an object holding it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LambdaInvocation {
    Task(Box<TaskRequest>),
    TaskRef { url: String },
}

/// A list of which a task is sent a few entries (the partitions it reads),
/// on the wire as its length and the entries there are, so that a request
/// does not grow with the partitions it does not read.
mod sparse {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// More partitions than any stage has (job settings allow 10,000).
    const MAX_LEN: usize = 1 << 20;

    #[derive(Deserialize)]
    struct Sparse<T> {
        len: usize,
        at: BTreeMap<usize, T>,
    }

    pub fn serialize<T: Serialize, S: Serializer>(items: &[Option<T>], s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        /// The entries there are, by index, without copying them.
        struct At<'a, T>(&'a [Option<T>]);
        impl<T: Serialize> Serialize for At<'_, T> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().enumerate().filter_map(|(i, item)| item.as_ref().map(|item| (i, item))))
            }
        }
        let mut sparse = s.serialize_struct("Sparse", 2)?;
        sparse.serialize_field("len", &items.len())?;
        sparse.serialize_field("at", &At(items))?;
        sparse.end()
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Vec<Option<T>>, D::Error> {
        let sparse = Sparse::<T>::deserialize(d)?;
        if sparse.len > MAX_LEN {
            return Err(serde::de::Error::custom(format!("a list of {} partitions", sparse.len)));
        }
        if sparse.at.keys().next_back().is_some_and(|&last| last >= sparse.len) {
            return Err(serde::de::Error::custom("a sparse list entry past its length"));
        }
        let mut items: Vec<Option<T>> = std::iter::repeat_with(|| None).take(sparse.len).collect();
        for (i, item) in sparse.at {
            items[i] = Some(item);
        }
        Ok(items)
    }
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD.decode(s.as_bytes()).map(bytes::Bytes::from).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attempt 1 of partition 3 of stage 2 of job-1, shuffling under `root`.
    fn request(root: &str) -> TaskRequest {
        TaskRequest {
            protocol_version: PROTOCOL_VERSION,
            job_id: JobId::from("job-1"),
            stage_id: StageId(2),
            partition: 3,
            attempt: 1,
            plan: bytes::Bytes::from_static(&[0, 1, 2, 255]),
            plan_url: None,
            inputs: vec![],
            output: TaskOutput::Shuffle { root: root.into(), compression: ShuffleCompression::Lz4 },
            batch_size: 8192,
            options: SessionOptions::default(),
            udfs: Vec::new(),
        }
    }

    #[test]
    fn request_round_trips_through_json_and_checks_version() {
        let req = request("file:///tmp/s");
        let json = serde_json::to_string(&req).unwrap();
        let back: TaskRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.plan, req.plan);
        assert!(back.check_version().is_ok());
        let old = TaskRequest { protocol_version: 0, ..back };
        assert!(old.check_version().unwrap_err().to_string().contains("version 0"));
    }

    #[test]
    fn a_result_must_fit_its_task() {
        let req = request("s3://b/_shuffle/");
        let url = crate::shuffle::shuffle_object_url("s3://b/_shuffle/", &req.job_id, StageId(2), 3, 1);
        let result = TaskResult {
            job_id: req.job_id.clone(),
            stage_id: StageId(2),
            partition: 3,
            attempt: 1,
            output: TaskResultOutput::Shuffle { url, pieces: vec![] },
            metrics: TaskMetrics::default(),
        };
        assert_eq!(result.check_against(&req), Ok(()));
        let other_attempt = TaskResult { attempt: 0, ..result.clone() };
        assert!(other_attempt.check_against(&req).unwrap_err().contains("attempt 0"));
        let elsewhere = TaskResult {
            output: TaskResultOutput::Shuffle { url: "s3://b/tenants/bob/x.arrows".into(), pieces: vec![] },
            ..result.clone()
        };
        assert!(elsewhere.check_against(&req).unwrap_err().contains("not where this attempt writes"));
        let file = |p: &str| WrittenFile { relative_path: p.into(), rows: 0, bytes: 0 };
        let files = TaskResult { output: TaskResultOutput::Files { files: vec![file("../../bob/x.csv")] }, ..result };
        let to_files = TaskRequest {
            output: TaskOutput::Files {
                staging: "s3://b/out/_temporary/job-1/p3-a1/".into(),
                file_stem: "part".into(),
                format: crate::job::Format::Csv,
                partition_by: vec![],
            },
            ..req
        };
        assert!(files.check_against(&to_files).unwrap_err().contains("not a plain relative path"));
    }
}
