//! Cluster mode end to end, as real processes on loopback: an S3-compatible
//! server (moto), an `ignis serve` driver, `ignis executor` hosts. Jobs go in
//! over HTTP with tables, shuffle and output on S3; results must equal local
//! mode; a host killed mid-stage must not change the answer; tenants must not
//! see each other's jobs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use ignis_core::job::{JobSpec, OutputSpec, TableSpec};
use ignis_driver::{Driver, DriverConfig, JobResult};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::{Value, json};

use crate::common::repo_root;

const BUCKET: &str = "ignis-e2e";
const ALICE: &str = "alice-key-0001";
const BOB: &str = "bob-key-0002";
const SECRET: &str = "executor-secret-0003";

/// Child processes, killed when the test ends however it ends.
struct Processes(Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn moto_binary() -> String {
    std::env::var("IGNIS_MOTO_SERVER").unwrap_or_else(|_| "moto_server".to_string())
}

struct Cluster {
    procs: Processes,
    s3_endpoint: String,
    driver: String,
    http: reqwest::Client,
    logs: tempfile::TempDir,
}

impl Cluster {
    fn env(&self, cmd: &mut Command) {
        cmd.env("AWS_ENDPOINT_URL", &self.s3_endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("IGNIS_EXECUTOR_SECRET", SECRET)
            .env("IGNIS_LOG", "info");
    }

    fn spawn(&mut self, name: &str, args: &[&str], extra_env: &[(&str, &str)]) -> u32 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ignis"));
        cmd.args(args);
        self.env(&mut cmd);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let log = std::fs::File::create(self.logs.path().join(format!("{name}.log"))).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let pid = child.id();
        self.procs.0.push((name.to_string(), child));
        pid
    }

    fn start_executor(&mut self, name: &str, slots: &str, delay_ms: &str) -> u32 {
        let driver = self.driver.clone();
        self.spawn(
            name,
            &["executor", "--driver", &driver, "--slots", slots, "--name", name],
            &[("IGNIS_TEST_TASK_DELAY_MS", delay_ms)],
        )
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.driver));
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

    async fn submit(&self, job: &JobSpec) -> String {
        let (status, body) = self
            .request(reqwest::Method::POST, "/v1/jobs", Some(ALICE), Some(serde_json::to_value(job).unwrap()))
            .await;
        assert_eq!(status, 202, "submit answered {body}");
        body["id"].as_str().unwrap().to_string()
    }

    async fn wait(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, body) = self.request(reqwest::Method::GET, &format!("/v1/jobs/{id}"), Some(ALICE), None).await;
            assert_eq!(status, 200, "{body}");
            if body["state"] != "running" {
                return body;
            }
            assert!(Instant::now() < deadline, "job {id} did not finish: {body}\n{}", self.log("driver"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn rows(&self, id: &str) -> Vec<RecordBatch> {
        let resp = self
            .http
            .get(format!("{}/v1/jobs/{id}/result", self.driver))
            .bearer_auth(ALICE)
            .header("accept", ignis_driver::service::ARROW_STREAM)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let bytes = resp.bytes().await.unwrap();
        StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap().collect::<Result<_, _>>().unwrap()
    }

    async fn executors(&self) -> Vec<Value> {
        let (_, body) = self.request(reqwest::Method::GET, "/v1/executors", Some(ALICE), None).await;
        body["executors"].as_array().cloned().unwrap_or_default()
    }
}

async fn start_cluster() -> Cluster {
    let logs = tempfile::tempdir().unwrap();
    let s3_port = free_port();
    let driver_port = free_port();
    let mut cluster = Cluster {
        procs: Processes(vec![]),
        s3_endpoint: format!("http://127.0.0.1:{s3_port}"),
        driver: format!("http://127.0.0.1:{driver_port}"),
        http: reqwest::Client::new(),
        logs,
    };
    let moto = Command::new(moto_binary())
        .args(["-H", "127.0.0.1", "-p", &s3_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start the S3 server {} ({e}); scripts/test installs it (moto[server])", moto_binary())
        });
    cluster.procs.0.push(("moto".into(), moto));
    wait_until("the S3 server", || async {
        cluster
            .http
            .put(format!("{}/{BUCKET}", cluster.s3_endpoint))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    let listen = format!("127.0.0.1:{driver_port}");
    let shuffle = format!("s3://{BUCKET}/_shuffle");
    let keys = format!("alice:{ALICE},bob:{BOB}");
    let args = [
        "serve",
        "--listen",
        &listen,
        "--shuffle-root",
        &shuffle,
        "--executor-timeout",
        "2",
        "--heartbeat-interval",
        "0.3",
        "--max-body-bytes",
        "65536",
    ];
    cluster.spawn("driver", &args, &[("IGNIS_API_KEYS", &keys)]);
    wait_until("the driver", || async {
        cluster.http.get(format!("{}/healthz", cluster.driver)).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    cluster
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The test's own client of the bucket, for uploading inputs and listing outputs.
fn s3(endpoint: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_bucket_name(BUCKET)
            .build()
            .unwrap(),
    )
}

/// Copy every file under `dir` to `s3://BUCKET/{prefix}/…`.
async fn upload(store: &dyn ObjectStore, dir: &Path, prefix: &str) {
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

/// The same job with every table read from S3 instead of local files.
fn on_s3(job: &JobSpec, locations: &[(&str, String)]) -> JobSpec {
    let mut job = job.clone();
    for (name, location) in locations {
        job.tables.get_mut(*name).unwrap().location = location.clone();
    }
    job
}

async fn local_rows(job: &JobSpec) -> Vec<RecordBatch> {
    let outcome = Driver::local(2, DriverConfig::default()).run(job, &|_| {}).await.unwrap();
    match outcome.result {
        JobResult::Rows { batches, .. } => batches,
        other => panic!("expected rows, got {other:?}"),
    }
}

/// Rows as sorted text lines, so row order across partitions does not matter.
fn sorted(batches: &[RecordBatch]) -> Vec<String> {
    let text = pretty_format_batches(batches).unwrap().to_string();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

fn tpch_job(tables: &std::collections::BTreeMap<String, TableSpec>, query: &str) -> JobSpec {
    let sql = std::fs::read_to_string(repo_root().join(format!("tests/tpch/queries/{query}.sql"))).unwrap();
    JobSpec {
        name: Some(query.into()),
        tables: tables.clone(),
        sql: Some(sql),
        config: ignis_core::job::JobConfig { shuffle_partitions: Some(3), ..Default::default() },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_over_http_on_s3_survive_a_lost_host_and_keep_tenants_apart() {
    let mut cluster = start_cluster().await;
    let store = s3(&cluster.s3_endpoint);

    // Data: the orders example and TPC-H at a small scale, uploaded to S3.
    let orders_dir = repo_root().join("examples/orders");
    upload(store.as_ref(), &orders_dir.join("data"), "orders").await;
    let tpch_dir = tempfile::tempdir().unwrap();
    let tpch_local = ignis_tests::tpch::generate(tpch_dir.path(), 0.01, 2).unwrap();
    upload(store.as_ref(), tpch_dir.path(), "tpch").await;
    let tpch_s3: Vec<(&str, String)> =
        ignis_tests::tpch::TABLES.iter().map(|t| (*t, format!("s3://{BUCKET}/tpch/{t}/"))).collect();

    cluster.start_executor("host-a", "2", "0");
    cluster.start_executor("host-b", "2", "0");
    wait_until("two executor hosts", || async { cluster.executors().await.len() == 2 }).await;

    // The orders example, collect variant: same rows as local mode.
    let show = JobSpec::from_file(&orders_dir.join("show.toml")).unwrap();
    let show_s3 = on_s3(&show, &[("orders", format!("s3://{BUCKET}/orders/"))]);
    let id = cluster.submit(&show_s3).await;
    let status = cluster.wait(&id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(sorted(&cluster.rows(&id).await), sorted(&local_rows(&show).await));

    // The orders job writes Parquet to S3: one file per partition plus _SUCCESS.
    let mut write = JobSpec::from_file(&orders_dir.join("job.toml")).unwrap();
    write = on_s3(&write, &[("orders", format!("s3://{BUCKET}/orders/"))]);
    if let OutputSpec::Write(w) = &mut write.output {
        w.location = format!("s3://{BUCKET}/out/us_orders_by_product");
    }
    let id = cluster.submit(&write).await;
    let status = cluster.wait(&id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    let listed =
        ignis_core::store::list_all(store.as_ref(), &ObjectPath::from("out/us_orders_by_product")).await.unwrap();
    let names: Vec<String> = listed.iter().map(|m| m.location.filename().unwrap_or("").to_string()).collect();
    assert!(names.contains(&"_SUCCESS".to_string()), "{names:?}");
    assert_eq!(names.iter().filter(|n| n.ends_with(".parquet")).count(), 4, "{names:?}");
    assert_eq!(status["output"]["rows"], 12);

    // Two TPC-H queries: same answers as local mode on local files.
    for query in ["q1", "q3"] {
        let local = tpch_job(&tpch_local, query);
        let id = cluster.submit(&on_s3(&local, &tpch_s3)).await;
        let status = cluster.wait(&id).await;
        assert_eq!(status["state"], "succeeded", "{query}: {status}");
        assert_eq!(sorted(&cluster.rows(&id).await), sorted(&local_rows(&local).await), "{query}");
    }

    // A slow host is killed while it runs tasks; the job completes with the same rows.
    let slow = cluster.start_executor("host-slow", "2", "3000");
    wait_until("the slow host", || async { cluster.executors().await.len() == 3 }).await;
    let local = tpch_job(&tpch_local, "q3");
    let id = cluster.submit(&on_s3(&local, &tpch_s3)).await;
    wait_until("the slow host to run a task", || async {
        cluster.executors().await.iter().any(|e| e["name"] == "host-slow" && e["running_tasks"].as_u64() > Some(0))
    })
    .await;
    Command::new("kill").args(["-9", &slow.to_string()]).status().unwrap();
    let status = cluster.wait(&id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    let failed: u64 = status["stages"].as_array().unwrap().iter().map(|s| s["failed_attempts"].as_u64().unwrap()).sum();
    assert!(failed >= 1, "the lost host's tasks were not re-run: {status}");
    assert_eq!(sorted(&cluster.rows(&id).await), sorted(&local_rows(&local).await));
    assert!(cluster.log("driver").contains("executor host lost"), "{}", cluster.log("driver"));
    wait_until("the lost host to leave the list", || async { cluster.executors().await.len() == 2 }).await;

    check_auth_and_isolation(&cluster, &id).await;
    check_bad_requests(&cluster).await;

    // The CLI: `ignis submit` follows the job and prints the table.
    let job_file = tempfile::NamedTempFile::with_suffix(".json").unwrap();
    std::fs::write(job_file.path(), serde_json::to_string(&show_s3).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ignis"))
        .args(["submit", job_file.path().to_str().unwrap(), "--driver", &cluster.driver])
        .env("IGNIS_API_KEY", ALICE)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| router     | 527    | 3003  |"), "{stdout}");

    // Draining: SIGTERM makes a host finish, leave the driver, and exit cleanly.
    let (_, host_b) = cluster.procs.0.iter_mut().find(|(n, _)| n == "host-b").unwrap();
    Command::new("kill").args(["-TERM", &host_b.id().to_string()]).status().unwrap();
    let exit = host_b.wait().unwrap();
    assert!(exit.success(), "drained host exited with {exit}");
    let left = cluster.executors().await;
    assert!(left.iter().all(|e| e["name"] != "host-b"), "{left:?}");
}

async fn check_auth_and_isolation(cluster: &Cluster, alice_job: &str) {
    use reqwest::Method;
    let job_path = format!("/v1/jobs/{alice_job}");
    // No key, a wrong key, the executor secret on the job API.
    assert_eq!(cluster.request(Method::GET, &job_path, None, None).await.0, 401);
    assert_eq!(cluster.request(Method::GET, &job_path, Some("not-a-key-at-all"), None).await.0, 401);
    assert_eq!(cluster.request(Method::GET, &job_path, Some(SECRET), None).await.0, 403);
    // Bob cannot see, read, or cancel Alice's job, and his list is empty.
    let (status, body) = cluster.request(Method::GET, &job_path, Some(BOB), None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(cluster.request(Method::GET, &format!("{job_path}/result"), Some(BOB), None).await.0, 404);
    assert_eq!(cluster.request(Method::POST, &format!("{job_path}/cancel"), Some(BOB), None).await.0, 404);
    let (_, list) = cluster.request(Method::GET, "/v1/jobs", Some(BOB), None).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0, "{list}");
    let (_, list) = cluster.request(Method::GET, "/v1/jobs", Some(ALICE), None).await;
    assert!(list["jobs"].as_array().unwrap().iter().any(|j| j["id"] == alice_job));
    // A tenant key cannot register as an executor; an old protocol is refused.
    let register = json!({"protocol_version": ignis_core::protocol::PROTOCOL_VERSION, "name": "x", "slots": 1});
    assert_eq!(cluster.request(Method::POST, "/v1/executors", Some(ALICE), Some(register)).await.0, 403);
    let old = json!({"protocol_version": 0, "name": "old", "slots": 1});
    let (status, body) = cluster.request(Method::POST, "/v1/executors", Some(SECRET), Some(old)).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("version 0"), "{body}");
}

async fn check_bad_requests(cluster: &Cluster) {
    use reqwest::Method;
    // A misspelt field is named.
    let bad = json!({"sql": "SELECT 1", "outptu": "collect"});
    let (status, body) = cluster.request(Method::POST, "/v1/jobs", Some(ALICE), Some(bad)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("outptu"), "{body}");
    // Bad SQL is refused at submit, with its position.
    let bad = json!({"sql": "SELEC 1"});
    let (status, body) = cluster.request(Method::POST, "/v1/jobs", Some(ALICE), Some(bad)).await;
    assert_eq!(status, 400, "{body}");
    // The driver's own disk is off limits unless it was started to allow it.
    let local = json!({"tables": {"t": {"format": "csv", "location": "/etc/"}}, "sql": "SELECT * FROM t"});
    let (status, body) = cluster.request(Method::POST, "/v1/jobs", Some(ALICE), Some(local)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--allow-local-files"), "{body}");
    // A relative path cannot be resolved on the driver.
    let rel = json!({"tables": {"t": {"format": "csv", "location": "data/t.csv"}}, "sql": "SELECT * FROM t"});
    let (status, body) = cluster.request(Method::POST, "/v1/jobs", Some(ALICE), Some(rel)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("tables.t.location"), "{body}");
    // Too large a body: 413, as JSON.
    let huge = json!({"sql": format!("SELECT '{}'", "x".repeat(100_000))});
    let (status, body) = cluster.request(Method::POST, "/v1/jobs", Some(ALICE), Some(huge)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    // Unknown job, unknown route.
    assert_eq!(cluster.request(Method::GET, "/v1/jobs/job-nope", Some(ALICE), None).await.0, 404);
    let (status, body) = cluster.request(Method::GET, "/v1/nothing", Some(ALICE), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    // Metrics are Prometheus text.
    let (status, body) = cluster.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, 200);
    assert!(body.as_str().unwrap().contains("ignis_jobs_finished_total{state=\"succeeded\"}"), "{body}");
}
