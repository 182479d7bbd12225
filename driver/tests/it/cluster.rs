//! Cluster mode end to end, as real processes on loopback: an S3-compatible
//! server (moto), an `ignis serve` driver, `ignis executor` hosts. Jobs go in
//! over HTTP with tables, shuffle and output on S3; results must equal local
//! mode; a host killed mid-stage must not change the answer; tenants must not
//! see each other's jobs.

use std::process::Command;

use ignis_core::job::{JobSpec, OutputSpec};
use ignis_tests::cluster::{
    Api, Processes, TestData, failed_attempts, free_port, local_rows, on_s3, s3_env, s3_store, sorted, start_s3,
    tpch_job, upload_test_data, wait_until,
};
use object_store::path::Path as ObjectPath;
use serde_json::{Value, json};

const BUCKET: &str = "ignis-e2e";
const ALICE: &str = "alice-key-0001";
const BOB: &str = "bob-key-0002";
const SECRET: &str = "executor-secret-0003";

struct Cluster {
    procs: Processes,
    s3_endpoint: String,
    api: Api,
}

impl Cluster {
    fn spawn(&mut self, name: &str, args: &[&str], extra_env: &[(&str, &str)]) -> u32 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ignis"));
        cmd.args(args).env("IGNIS_EXECUTOR_SECRET", SECRET).env("IGNIS_LOG", "info");
        s3_env(&mut cmd, &self.s3_endpoint);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        self.procs.spawn(name, cmd)
    }

    fn start_executor(&mut self, name: &str, slots: &str, delay_ms: &str) -> u32 {
        let driver = self.api.base.clone();
        self.spawn(
            name,
            &["executor", "--driver", &driver, "--slots", slots, "--name", name],
            &[("IGNIS_TEST_TASK_DELAY_MS", delay_ms)],
        )
    }

    fn log(&self, name: &str) -> String {
        self.procs.log(name)
    }

    async fn submit(&self, job: &JobSpec) -> String {
        self.api.submit(ALICE, job).await
    }

    async fn wait(&self, id: &str) -> Value {
        self.api.wait(ALICE, id).await
    }

    async fn rows(&self, id: &str) -> Vec<datafusion::arrow::record_batch::RecordBatch> {
        self.api.rows(ALICE, id).await
    }

    async fn executors(&self) -> Vec<Value> {
        let (_, body) = self.api.request(reqwest::Method::GET, "/v1/executors", Some(ALICE), None).await;
        body["executors"].as_array().cloned().unwrap_or_default()
    }
}

async fn start_cluster() -> Cluster {
    let mut procs = Processes::new();
    let s3_endpoint = start_s3(&mut procs, BUCKET).await;
    let driver_port = free_port();
    let mut cluster = Cluster { procs, s3_endpoint, api: Api::new(format!("http://127.0.0.1:{driver_port}")) };
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
    cluster.api.wait_healthy().await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_over_http_on_s3_survive_a_lost_host_and_keep_tenants_apart() {
    let mut cluster = start_cluster().await;
    let store = s3_store(&cluster.s3_endpoint, BUCKET);

    // Data: the orders example and TPC-H at a small scale, uploaded to S3.
    let TestData { orders_dir, tpch_local, tpch_s3, .. } = &upload_test_data(store.as_ref(), BUCKET).await;

    let health = format!("127.0.0.1:{}", free_port());
    let driver = cluster.api.base.clone();
    let host_a = ["executor", "--driver", &driver, "--slots", "2", "--name", "host-a", "--health-listen", &health];
    cluster.spawn("host-a", &host_a, &[]);
    cluster.start_executor("host-b", "2", "0");
    wait_until("two executor hosts", || async { cluster.executors().await.len() == 2 }).await;
    // host-a's readiness probe says ready once it has joined.
    wait_until("host-a's readiness", || async {
        let probe = cluster.api.http.get(format!("http://{health}/healthz")).send().await;
        probe.is_ok_and(|r| r.status() == 200)
    })
    .await;

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
    // Its receipt: the hosts' slot time and the S3 requests of hosts and driver.
    let receipt = &status["metrics"]["receipt"];
    assert!(receipt["host_slot_seconds"].as_f64().unwrap() > 0.0, "{receipt}");
    assert_eq!(receipt["lambda_invocations"], 0, "{receipt}");
    for kind in ["get", "put", "list", "delete"] {
        assert!(receipt["requests"][kind].as_u64().unwrap() > 0, "no {kind} requests: {receipt}");
    }
    let (_, metrics) = cluster.api.request(reqwest::Method::GET, "/metrics", Some(ALICE), None).await;
    let put =
        metrics.as_str().unwrap().lines().find(|l| l.starts_with("ignis_object_store_requests_total{kind=\"put\"}"));
    assert!(put.is_some_and(|l| !l.ends_with(" 0")), "{metrics}");

    // Two TPC-H queries: same answers as local mode on local files. A host
    // is sent a stage's plan until it has run a task of the stage, not with
    // every task.
    let plans_before: u64 = cluster.executors().await.iter().map(|e| e["stage_plans_sent"].as_u64().unwrap()).sum();
    let mut stages = 0;
    for query in ["q1", "q3"] {
        let local = tpch_job(tpch_local, query);
        let id = cluster.submit(&on_s3(&local, tpch_s3)).await;
        let status = cluster.wait(&id).await;
        assert_eq!(status["state"], "succeeded", "{query}: {status}");
        assert_eq!(sorted(&cluster.rows(&id).await), sorted(&local_rows(&local).await), "{query}");
        stages += status["stages"].as_array().unwrap().len() as u64;
    }
    let hosts = cluster.executors().await;
    let plans: u64 = hosts.iter().map(|e| e["stage_plans_sent"].as_u64().unwrap()).sum::<u64>() - plans_before;
    // At most one per slot of each host (a task on another slot may start
    // before the first one of its stage there has finished).
    let slots: u64 = hosts.iter().map(|e| e["slots"].as_u64().unwrap()).sum();
    let tasks: u64 = hosts.iter().map(|e| e["tasks_done"].as_u64().unwrap()).sum();
    assert!(plans >= stages && plans <= stages * slots, "{plans} plans for {stages} stages: {hosts:?}");
    assert!(plans < tasks, "every task carried its plan: {plans} plans, {tasks} tasks");

    // A slow host is killed while it runs tasks; the job completes with the same rows.
    let slow = cluster.start_executor("host-slow", "2", "3000");
    wait_until("the slow host", || async { cluster.executors().await.len() == 3 }).await;
    let local = tpch_job(tpch_local, "q3");
    // Without speculation, which would rescue the slow host's tasks before it dies.
    let mut job = on_s3(&local, tpch_s3);
    job.config.speculation = Some(false);
    let id = cluster.submit(&job).await;
    wait_until("the slow host to run a task", || async {
        cluster.executors().await.iter().any(|e| e["name"] == "host-slow" && e["running_tasks"].as_u64() > Some(0))
    })
    .await;
    Command::new("kill").args(["-9", &slow.to_string()]).status().unwrap();
    let status = cluster.wait(&id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    let failed = failed_attempts(&status);
    assert!(failed >= 1, "the lost host's tasks were not re-run: {status}");
    assert_eq!(sorted(&cluster.rows(&id).await), sorted(&local_rows(&local).await));
    assert!(cluster.log("driver").contains("executor host lost"), "{}", cluster.log("driver"));
    wait_until("the lost host to leave the list", || async { cluster.executors().await.len() == 2 }).await;

    // A host that takes tasks and never answers (it keeps heartbeating): each
    // attempt is abandoned at the job's deadline and run on another host, the
    // host is excluded from the job after two misses, and the job succeeds.
    let stuck = cluster.start_executor("host-stuck", "2", "600000");
    wait_until("the stuck host", || async { cluster.executors().await.len() == 3 }).await;
    let mut job = on_s3(&local, tpch_s3);
    job.config.task_deadline_s = Some(2.0);
    job.config.speculation = Some(false);
    // Stages of more tasks than the other hosts' four slots: the stuck host
    // takes two at once (with three, the others could drain a stage first).
    job.config.shuffle_partitions = Some(8);
    let id = cluster.submit(&job).await;
    let status = cluster.wait(&id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(sorted(&cluster.rows(&id).await), sorted(&local_rows(&local).await));
    assert!(failed_attempts(&status) >= 1, "no attempt was abandoned: {status}");
    let driver_log = cluster.log("driver");
    assert!(driver_log.contains("ran past its deadline of 2.0s"), "{driver_log}");
    assert!(driver_log.contains("excluded from the job"), "{driver_log}");
    Command::new("kill").args(["-9", &stuck.to_string()]).status().unwrap();
    wait_until("the stuck host to leave the list", || async { cluster.executors().await.len() == 2 }).await;

    // Speculation: a host 4 s slower per task than the others; its tasks get
    // second attempts on the fast hosts, which finish first; same rows.
    let slow = cluster.start_executor("host-slow", "1", "4000");
    wait_until("the slow host", || async { cluster.executors().await.len() == 3 }).await;
    let mut job = on_s3(&local, tpch_s3);
    job.config.speculation = Some(true);
    // Enough tasks that the slow host surely takes some (see above).
    job.config.shuffle_partitions = Some(8);
    let id = cluster.submit(&job).await;
    let status = cluster.wait(&id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(sorted(&cluster.rows(&id).await), sorted(&local_rows(&local).await));
    let metrics = &status["metrics"];
    assert!(metrics["speculative_attempts"].as_u64() >= Some(1), "{status}");
    assert!(metrics["speculative_wins"].as_u64() >= Some(1), "{status}");
    // The losing attempt on the slow host was stopped there, not left to run.
    wait_until("the slow host to stop the losing attempt", || async {
        cluster.log("host-slow").contains("stopping a task the driver no longer wants")
    })
    .await;
    Command::new("kill").args(["-9", &slow.to_string()]).status().unwrap();
    wait_until("the slow host to leave the list", || async { cluster.executors().await.len() == 2 }).await;

    check_auth_and_isolation(&cluster, &id).await;
    check_bad_requests(&cluster).await;

    // The CLI: `ignis submit` follows the job and prints the table.
    let job_file = tempfile::NamedTempFile::with_suffix(".json").unwrap();
    std::fs::write(job_file.path(), serde_json::to_string(&show_s3).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ignis"))
        .args(["submit", job_file.path().to_str().unwrap(), "--driver", &cluster.api.base])
        .env("IGNIS_API_KEY", ALICE)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| router     | 527    | 3003  |"), "{stdout}");

    // Draining: SIGTERM makes a host finish, leave the driver, and exit cleanly.
    let host_b = cluster.procs.child("host-b");
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
    assert_eq!(cluster.api.request(Method::GET, &job_path, None, None).await.0, 401);
    assert_eq!(cluster.api.request(Method::GET, &job_path, Some("not-a-key-at-all"), None).await.0, 401);
    assert_eq!(cluster.api.request(Method::GET, &job_path, Some(SECRET), None).await.0, 403);
    // Bob cannot see, read, or cancel Alice's job, and his list is empty.
    let (status, body) = cluster.api.request(Method::GET, &job_path, Some(BOB), None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(cluster.api.request(Method::GET, &format!("{job_path}/result"), Some(BOB), None).await.0, 404);
    assert_eq!(cluster.api.request(Method::POST, &format!("{job_path}/cancel"), Some(BOB), None).await.0, 404);
    let (_, list) = cluster.api.request(Method::GET, "/v1/jobs", Some(BOB), None).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0, "{list}");
    let (_, list) = cluster.api.request(Method::GET, "/v1/jobs", Some(ALICE), None).await;
    assert!(list["jobs"].as_array().unwrap().iter().any(|j| j["id"] == alice_job));
    // A tenant key cannot register as an executor; an old protocol is refused.
    let register = json!({"protocol_version": ignis_core::protocol::PROTOCOL_VERSION, "name": "x", "slots": 1});
    assert_eq!(cluster.api.request(Method::POST, "/v1/executors", Some(ALICE), Some(register)).await.0, 403);
    let old = json!({"protocol_version": 0, "name": "old", "slots": 1});
    let (status, body) = cluster.api.request(Method::POST, "/v1/executors", Some(SECRET), Some(old)).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("version 0"), "{body}");
}

async fn check_bad_requests(cluster: &Cluster) {
    use reqwest::Method;
    // A misspelt field is named.
    let bad = json!({"sql": "SELECT 1", "outptu": "collect"});
    let (status, body) = cluster.api.request(Method::POST, "/v1/jobs", Some(ALICE), Some(bad)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("outptu"), "{body}");
    // Bad SQL is refused at submit, with its position.
    let bad = json!({"sql": "SELEC 1"});
    let (status, body) = cluster.api.request(Method::POST, "/v1/jobs", Some(ALICE), Some(bad)).await;
    assert_eq!(status, 400, "{body}");
    // The driver's own disk is off limits unless it was started to allow it.
    let local = json!({"tables": {"t": {"format": "csv", "location": "/etc/"}}, "sql": "SELECT * FROM t"});
    let (status, body) = cluster.api.request(Method::POST, "/v1/jobs", Some(ALICE), Some(local)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--allow-local-files"), "{body}");
    // A relative path cannot be resolved on the driver.
    let rel = json!({"tables": {"t": {"format": "csv", "location": "data/t.csv"}}, "sql": "SELECT * FROM t"});
    let (status, body) = cluster.api.request(Method::POST, "/v1/jobs", Some(ALICE), Some(rel)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("tables.t.location"), "{body}");
    // Too large a body: 413, as JSON.
    let huge = json!({"sql": format!("SELECT '{}'", "x".repeat(100_000))});
    let (status, body) = cluster.api.request(Method::POST, "/v1/jobs", Some(ALICE), Some(huge)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    // Unknown job, unknown route.
    assert_eq!(cluster.api.request(Method::GET, "/v1/jobs/job-nope", Some(ALICE), None).await.0, 404);
    let (status, body) = cluster.api.request(Method::GET, "/v1/nothing", Some(ALICE), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    // Metrics are Prometheus text, for callers with a key.
    assert_eq!(cluster.api.request(Method::GET, "/metrics", None, None).await.0, 401);
    let (status, body) = cluster.api.request(Method::GET, "/metrics", Some(ALICE), None).await;
    assert_eq!(status, 200);
    assert!(body.as_str().unwrap().contains("ignis_jobs_finished_total{state=\"succeeded\"}"), "{body}");
}
