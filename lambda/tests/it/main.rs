//! The lambda backend end to end, as real processes on loopback: the Lambda
//! runtime API of `cargo lambda watch` (PyPI's cargo-lambda), `ignis-lambda`
//! instances polling it, `ignis serve` drivers invoking through it with the
//! AWS SDK, and an S3-compatible server (moto) for tables, shuffle and output.
//!
//! The emulator runs with `--only-lambda-apis` and the test starts the
//! instances itself: letting it build the function would compile DataFusion a
//! second time with another feature set, for the same binary.

#![allow(clippy::unwrap_used, reason = "test helpers fail the test on any error")]

use std::path::{Path, PathBuf};
use std::process::Command;

use ignis_core::job::{JobSpec, OutputSpec};
use ignis_tests::cluster::{
    Api, Processes, TestData, failed_attempts, free_port, local_rows, on_s3, s3_env, s3_store, sorted, start_s3,
    tpch_job, upload_test_data, wait_until,
};
use object_store::path::Path as ObjectPath;

const BUCKET: &str = "ignis-lambda-e2e";
const KEY: &str = "alice-key-0001";
/// Instances of the main function: tasks run on several at once.
const INSTANCES: usize = 3;

/// A binary built next to `ignis-lambda` (the driver's `ignis`).
fn sibling(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_ignis-lambda")).with_file_name(name);
    assert!(path.exists(), "{} is missing: run the tests with `cargo test --workspace`", path.display());
    path
}

struct Setup {
    procs: Processes,
    s3: String,
}

/// The function's name: the emulator serves the package's binaries.
const FUNCTION: &str = "ignis-lambda";

impl Setup {
    /// A Lambda emulator serving `instances` of `ignis-lambda`, their logs
    /// under `{name}-{i}`; returns its endpoint.
    async fn start_lambda(&mut self, name: &str, instances: usize, env: &[(&str, &str)]) -> String {
        // It reads the package's manifest, so it runs here.
        let port = free_port();
        let cargo_lambda = std::env::var("IGNIS_CARGO_LAMBDA").unwrap_or_else(|_| "cargo-lambda".into());
        let mut emulator = Command::new(&cargo_lambda);
        emulator
            .args(["lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1", "-P", &port.to_string()])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        self.procs.spawn(&format!("{name}-emulator"), emulator);
        let api = format!("http://127.0.0.1:{port}");
        wait_until("the Lambda emulator (scripts/test installs cargo-lambda)", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        for i in 0..instances {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_ignis-lambda"));
            cmd.env("AWS_LAMBDA_RUNTIME_API", format!("{api}/.rt/{FUNCTION}"))
                .env("AWS_LAMBDA_FUNCTION_NAME", FUNCTION)
                .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048")
                .env("IGNIS_LOG", "info");
            s3_env(&mut cmd, &self.s3);
            for (k, v) in env {
                cmd.env(k, v);
            }
            self.procs.spawn(&format!("{name}-{i}"), cmd);
        }
        api
    }

    /// An `ignis serve` driver invoking the function at `lambda_api`.
    async fn start_driver(&mut self, name: &str, lambda_api: &str, args: &[&str]) -> Api {
        let port = free_port();
        let mut cmd = Command::new(sibling("ignis"));
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--shuffle-root", &format!("s3://{BUCKET}/_shuffle")])
            .args(["--lambda-endpoint-url", lambda_api])
            .args(args)
            .env("IGNIS_API_KEYS", format!("alice:{KEY}"))
            .env("IGNIS_LOG", "info");
        s3_env(&mut cmd, &self.s3);
        self.procs.spawn(name, cmd);
        let api = Api::new(format!("http://127.0.0.1:{port}"));
        api.wait_healthy().await;
        api
    }

    /// The logs of an emulator's instances.
    fn function_logs(&self, name: &str, instances: usize) -> Vec<String> {
        (0..instances).map(|i| self.procs.log(&format!("{name}-{i}"))).collect()
    }

    /// Tasks each instance ran, from its log.
    fn tasks_run(&self, name: &str, instances: usize) -> Vec<usize> {
        self.function_logs(name, instances).iter().map(|log| log.matches(" task ").count()).collect()
    }
}

fn on_lambda(mut job: JobSpec) -> JobSpec {
    job.config.backend = Some("lambda".into());
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_on_lambda_functions_with_local_mode_results() {
    let mut procs = Processes::new();
    let s3 = start_s3(&mut procs, BUCKET).await;
    let store = s3_store(&s3, BUCKET);

    let mut setup = Setup { procs, s3 };
    // Attempt 0 of task 1/0 ends in a function error, in every job.
    let lambda = setup.start_lambda("fn", INSTANCES, &[("IGNIS_TEST_FAIL_TASK", "1/0")]).await;

    // Data: the orders example and TPC-H at a small scale, on S3.
    let TestData { orders_dir, tpch_local, tpch_s3, .. } = &upload_test_data(store.as_ref(), BUCKET).await;
    let orders_s3 = [("orders", format!("s3://{BUCKET}/orders/"))];

    // A driver offering local workers (its default) and the function.
    let concurrency = INSTANCES.to_string();
    let driver = setup
        .start_driver(
            "driver",
            &lambda,
            &[
                "--local-executors",
                "2",
                "--lambda-function",
                FUNCTION,
                "--lambda-concurrency",
                &concurrency,
                "--udf-root",
                &format!("s3://{BUCKET}/udfs"),
            ],
        )
        .await;

    // The orders example on Lambda: local mode's rows; the injected function
    // error cost one extra attempt and nothing else.
    let show = JobSpec::from_file(&orders_dir.join("show.toml")).unwrap();
    let id = driver.submit(KEY, &on_lambda(on_s3(&show, &orders_s3))).await;
    let status = driver.wait(KEY, &id).await;
    assert_eq!(status["state"], "succeeded", "{status}\n{}", setup.procs.log("driver"));
    assert_eq!(failed_attempts(&status), 1, "the function error was retried once: {status}");
    assert_eq!(sorted(&driver.rows(KEY, &id).await), sorted(&local_rows(&show).await));
    let logs = setup.function_logs("fn", INSTANCES).concat();
    assert!(logs.contains("injected failure of task 1/0"), "{logs}");

    // The orders job writes Parquet to S3 from the functions.
    let mut write = on_lambda(on_s3(&JobSpec::from_file(&orders_dir.join("job.toml")).unwrap(), &orders_s3));
    if let OutputSpec::Write(w) = &mut write.output {
        w.location = format!("s3://{BUCKET}/out/us_orders_by_product");
    }
    let id = driver.submit(KEY, &write).await;
    let status = driver.wait(KEY, &id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["output"]["rows"], 12, "{status}");
    // Its receipt: an invocation per attempt, billed at the function's 2048 MB,
    // and the S3 requests of the functions and the driver.
    let receipt = &status["metrics"]["receipt"];
    assert_eq!(receipt["lambda_invocations"], status["metrics"]["task_attempts"], "{status}");
    let gb_s = receipt["lambda_gb_seconds"].as_f64().unwrap();
    assert!(gb_s > 0.0 && receipt["host_slot_seconds"] == 0.0, "{receipt}");
    for kind in ["get", "put", "list", "delete"] {
        assert!(receipt["requests"][kind].as_u64().unwrap() > 0, "no {kind} requests: {receipt}");
    }
    assert!(receipt["estimated_cost_usd"].as_f64().unwrap() > 0.0, "{receipt}");
    let written = ignis_core::store::list_all(store.as_ref(), &ObjectPath::from("out/us_orders_by_product")).await;
    let names: Vec<String> = written.unwrap().iter().map(|m| m.location.filename().unwrap_or("").to_string()).collect();
    assert!(names.contains(&"_SUCCESS".to_string()), "{names:?}");

    // Two TPC-H queries, several stages each: local mode's answers.
    for query in ["q3", "q5"] {
        let local = tpch_job(tpch_local, query);
        let id = driver.submit(KEY, &on_lambda(on_s3(&local, tpch_s3))).await;
        let status = driver.wait(KEY, &id).await;
        assert_eq!(status["state"], "succeeded", "{query}: {status}");
        assert_eq!(sorted(&driver.rows(KEY, &id).await), sorted(&local_rows(&local).await), "{query}");
    }
    let per_instance = setup.tasks_run("fn", INSTANCES);
    assert!(per_instance.iter().filter(|n| **n > 0).count() >= 2, "tasks ran on one instance only: {per_instance:?}");

    // Wasm UDFs on Lambda: uploaded to the driver (its registry is on S3), fetched
    // by the functions from S3; the same rows as the driver's local workers.
    let wasm = std::fs::read(ignis_tests::guests::component("examples/udfs/orders-udfs")).unwrap();
    let upload = driver.http.post(format!("{}/v1/udfs?name=orders-udfs", driver.base)).bearer_auth(KEY).body(wasm);
    assert_eq!(upload.send().await.unwrap().status(), 201);
    let mut udf_job = on_s3(&show, &orders_s3);
    udf_job.udfs = vec!["orders-udfs".into()];
    udf_job.sql = Some(
        "SELECT normalize(product) AS p, round(sum(with_tax(price, 20.0)), 2) AS gross, \
         round(geo_mean(price), 6) AS g FROM orders GROUP BY 1"
            .into(),
    );
    let on_fn = driver.submit(KEY, &on_lambda(udf_job.clone())).await;
    let status = driver.wait(KEY, &on_fn).await;
    assert_eq!(status["state"], "succeeded", "{status}\n{}", setup.function_logs("fn", INSTANCES).concat());
    let locally = driver.submit(KEY, &udf_job).await;
    assert_eq!(driver.wait(KEY, &locally).await["state"], "succeeded");
    let rows = sorted(&driver.rows(KEY, &on_fn).await);
    assert!(rows.len() >= 10, "{rows:?}");
    assert_eq!(rows, sorted(&driver.rows(KEY, &locally).await));

    // Without config.backend a job runs on the driver's default, local workers.
    let before: usize = setup.tasks_run("fn", INSTANCES).iter().sum();
    let id = driver.submit(KEY, &on_s3(&show, &orders_s3)).await;
    assert_eq!(driver.wait(KEY, &id).await["state"], "succeeded");
    assert_eq!(setup.tasks_run("fn", INSTANCES).iter().sum::<usize>(), before, "a default job ran on Lambda");

    // A backend the driver does not offer is refused at submit, naming those it does.
    let mut hosts = on_s3(&show, &orders_s3);
    hosts.config.backend = Some("hosts".into());
    let (code, body) =
        driver.request(reqwest::Method::POST, "/v1/jobs", Some(KEY), Some(serde_json::to_value(&hosts).unwrap())).await;
    assert_eq!(code, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("'hosts'") && message.contains("local, lambda"), "{message}");

    // Requests over the inline limit travel through S3, and go with the shuffle.
    let by_ref = setup
        .start_driver("driver-refs", &lambda, &["--lambda-function", FUNCTION, "--lambda-inline-limit", "400"])
        .await;
    let local = tpch_job(tpch_local, "q3");
    let id = by_ref.submit(KEY, &on_s3(&local, tpch_s3)).await;
    let status = by_ref.wait(KEY, &id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(sorted(&by_ref.rows(KEY, &id).await), sorted(&local_rows(&local).await));
    let logs = setup.function_logs("fn", INSTANCES).concat();
    assert!(logs.contains("fetching the task request by reference"), "{logs}");
    // The plan went by reference too: fetched at most once per stage by each
    // function instance, not once per task.
    let stages = status["stages"].as_array().unwrap().len();
    let fetched =
        logs.lines().filter(|l| l.contains("fetching the stage plan by reference") && l.contains(&id)).count();
    assert!(fetched >= 1 && fetched <= stages * INSTANCES, "{fetched} plan fetches for {stages} stages: {logs}");
    let left = ignis_core::store::list_all(store.as_ref(), &ObjectPath::from("_shuffle")).await.unwrap();
    assert!(left.is_empty(), "shuffle objects or requests left behind: {left:?}");

    // A function that does not exist fails the job at once, naming it.
    let missing = setup.start_driver("driver-missing", &lambda, &["--lambda-function", "no-such-function"]).await;
    let id = missing.submit(KEY, &on_s3(&show, &orders_s3)).await;
    let status = missing.wait(KEY, &id).await;
    assert_eq!(status["state"], "failed", "{status}");
    assert!(status["error"]["message"].as_str().unwrap().contains("no-such-function"), "{status}");
    let tasks = status["stages"][0]["tasks"].as_u64().unwrap();
    assert!(status["metrics"]["task_attempts"].as_u64().unwrap() <= tasks, "a task was retried: {status}");

    // The driver's task timeout: a function slower than it fails the job, saying so.
    let slow_lambda = setup.start_lambda("slow", 1, &[("IGNIS_TEST_TASK_DELAY_MS", "5000")]).await;
    let slow = setup
        .start_driver("driver-slow", &slow_lambda, &["--lambda-function", FUNCTION, "--lambda-task-timeout", "1"])
        .await;
    let mut job = on_s3(&show, &orders_s3);
    job.config.max_task_attempts = Some(2);
    let id = slow.submit(KEY, &job).await;
    let status = slow.wait(KEY, &id).await;
    assert_eq!(status["state"], "failed", "{status}");
    let message = status["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("task timeout of 1s"), "{status}");
}
