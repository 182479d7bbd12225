//! Helpers for end-to-end tests against real processes on loopback: child
//! processes that die with the test, an S3-compatible server (moto), the
//! driver's HTTP API, and the local-mode answers results are checked against.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers fail the test on any error")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use ignis_core::job::{JobConfig, JobSpec, TableSpec};
use ignis_driver::{Driver, DriverConfig, JobResult};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::Value;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Child processes, killed when the test ends however it ends; each one's
/// stderr goes to `{logs}/{name}.log`.
pub struct Processes {
    pub children: Vec<(String, Child)>,
    pub logs: tempfile::TempDir,
}

impl Processes {
    pub fn new() -> Self {
        Self { children: vec![], logs: tempfile::tempdir().unwrap() }
    }

    /// Start `cmd` under `name`, its stderr in the name's log.
    pub fn spawn(&mut self, name: &str, mut cmd: Command) -> u32 {
        let log = std::fs::File::create(self.logs.path().join(format!("{name}.log"))).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        let pid = child.id();
        self.children.push((name.to_string(), child));
        pid
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn child(&mut self, name: &str) -> &mut Child {
        &mut self.children.iter_mut().find(|(n, _)| n == name).unwrap().1
    }
}

impl Default for Processes {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Start the S3-compatible server (`IGNIS_MOTO_SERVER`, installed by
/// scripts/test) with `bucket` created; returns its endpoint.
pub async fn start_s3(procs: &mut Processes, bucket: &str) -> String {
    let moto = std::env::var("IGNIS_MOTO_SERVER").unwrap_or_else(|_| "moto_server".to_string());
    let port = free_port();
    let mut cmd = Command::new(&moto);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    procs.spawn("s3", cmd);
    let endpoint = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_until("the S3 server", || async {
        http.put(format!("{endpoint}/{bucket}")).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    endpoint
}

/// The environment every process needs to reach the S3 server.
pub fn s3_env(cmd: &mut Command, endpoint: &str) {
    cmd.env("AWS_ENDPOINT_URL_S3", endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test");
}

/// The test's own client of a bucket, for uploading inputs and listing outputs.
pub fn s3_store(endpoint: &str, bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_bucket_name(bucket)
            .build()
            .unwrap(),
    )
}

/// Copy every file under `dir` to `{prefix}/…` in the store.
pub async fn upload(store: &dyn ObjectStore, dir: &Path, prefix: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().unwrap().is_dir() {
            Box::pin(upload(store, &entry.path(), &format!("{prefix}/{name}"))).await;
        } else {
            let bytes = std::fs::read(entry.path()).unwrap();
            store.put(&ObjectPath::from(format!("{prefix}/{name}")), PutPayload::from(bytes)).await.unwrap();
        }
    }
}

/// The test data on S3: the orders example under `orders/`, TPC-H at SF 0.01
/// (two files per table) under `tpch/`.
pub struct TestData {
    pub orders_dir: PathBuf,
    /// The TPC-H tables as local files, for the local-mode answers.
    pub tpch_local: BTreeMap<String, TableSpec>,
    /// The TPC-H tables' S3 locations, for [`on_s3`].
    pub tpch_s3: Vec<(&'static str, String)>,
    _tpch_dir: tempfile::TempDir,
}

pub async fn upload_test_data(store: &dyn ObjectStore, bucket: &str) -> TestData {
    let orders_dir = repo_root().join("examples/orders");
    upload(store, &orders_dir.join("data"), "orders").await;
    let tpch_dir = tempfile::tempdir().unwrap();
    let tpch_local = crate::tpch::generate(tpch_dir.path(), 0.01, 2).unwrap();
    upload(store, tpch_dir.path(), "tpch").await;
    let tpch_s3 = crate::tpch::TABLES.iter().map(|t| (*t, format!("s3://{bucket}/tpch/{t}/"))).collect();
    TestData { orders_dir, tpch_local, tpch_s3, _tpch_dir: tpch_dir }
}

/// The same job with the named tables read from other locations.
pub fn on_s3(job: &JobSpec, locations: &[(&str, String)]) -> JobSpec {
    let mut job = job.clone();
    for (name, location) in locations {
        job.tables.get_mut(*name).unwrap().location = location.clone();
    }
    job
}

/// The rows a job collects in local mode on this machine.
pub async fn local_rows(job: &JobSpec) -> Vec<RecordBatch> {
    let outcome = Driver::local(2, DriverConfig::default()).run(job, &|_| {}).await.unwrap();
    match outcome.result {
        JobResult::Rows { batches, .. } => batches,
        other => panic!("expected rows, got {other:?}"),
    }
}

/// Rows as sorted text lines, so row order across partitions does not matter.
pub fn sorted(batches: &[RecordBatch]) -> Vec<String> {
    let text = pretty_format_batches(batches).unwrap().to_string();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// TPC-H query `query` (`q1` …) over `tables`, with 3 shuffle partitions.
pub fn tpch_job(tables: &BTreeMap<String, TableSpec>, query: &str) -> JobSpec {
    let sql = std::fs::read_to_string(repo_root().join(format!("tests/tpch/queries/{query}.sql"))).unwrap();
    JobSpec {
        udfs: Vec::new(),
        name: Some(query.into()),
        tables: tables.clone(),
        sql: Some(sql),
        config: JobConfig { shuffle_partitions: Some(3), ..Default::default() },
        ..Default::default()
    }
}

/// A client of a driver's HTTP API.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(ignis_core::protocol::CLIENT_IDLE_CONNECTION)
            .build()
            .expect("an HTTP client");
        Self { base: base.into(), http }
    }

    pub async fn wait_healthy(&self) {
        wait_until("the driver", || async {
            self.http.get(format!("{}/healthz", self.base)).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    /// Status and body (JSON, or the text as a JSON string).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Submit a job; returns its id.
    pub async fn submit(&self, key: &str, job: &JobSpec) -> String {
        let (status, body) =
            self.request(reqwest::Method::POST, "/v1/jobs", Some(key), Some(serde_json::to_value(job).unwrap())).await;
        assert_eq!(status, 202, "submit answered {body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// Poll until the job leaves `running`; returns its status.
    pub async fn wait(&self, key: &str, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let (status, body) = self.request(reqwest::Method::GET, &format!("/v1/jobs/{id}"), Some(key), None).await;
            assert_eq!(status, 200, "{body}");
            if body["state"] != "running" && body["state"] != "queued" {
                return body;
            }
            assert!(Instant::now() < deadline, "job {id} did not finish: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A finished job's rows, as an Arrow stream.
    pub async fn rows(&self, key: &str, id: &str) -> Vec<RecordBatch> {
        let resp = self
            .http
            .get(format!("{}/v1/jobs/{id}/result", self.base))
            .bearer_auth(key)
            .header("accept", ignis_driver::service::ARROW_STREAM)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let bytes = resp.bytes().await.unwrap();
        StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap().collect::<Result<_, _>>().unwrap()
    }
}

/// Failed task attempts over all stages of a job status.
pub fn failed_attempts(status: &Value) -> u64 {
    status["stages"].as_array().unwrap().iter().map(|s| s["failed_attempts"].as_u64().unwrap()).sum()
}
