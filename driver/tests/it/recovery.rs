//! Driver recovery from its journal, with real processes: a driver killed
//! with SIGKILL mid-job and started again with the same `--journal` resumes
//! the job under the same id (finished tasks are not run again, the executor
//! hosts join the new driver on their own); a local job killed mid-commit is
//! finished by `ignis run --resume`.

use std::process::{Command, Stdio};
use std::time::Duration;

use ignis_tests::cluster::{
    Api, Processes, TestData, free_port, local_rows, on_s3, s3_env, s3_store, sorted, start_s3, tpch_job,
    upload_test_data, wait_until,
};
use object_store::path::Path as ObjectPath;
use serde_json::Value;

use crate::common::{ignis, snapshot};

const BUCKET: &str = "ignis-recovery";
const ALICE: &str = "alice-key-0001";
const SECRET: &str = "executor-secret-0003";

fn spawn(procs: &mut Processes, s3: &str, name: &str, args: &[&str], env: &[(&str, &str)]) -> u32 {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ignis"));
    cmd.args(args).env("IGNIS_EXECUTOR_SECRET", SECRET).env("IGNIS_LOG", "info");
    s3_env(&mut cmd, s3);
    for (k, v) in env {
        cmd.env(k, v);
    }
    procs.spawn(name, cmd)
}

async fn executors(api: &Api) -> Vec<Value> {
    let (_, body) = api.request(reqwest::Method::GET, "/v1/executors", Some(ALICE), None).await;
    body["executors"].as_array().cloned().unwrap_or_default()
}

async fn status(api: &Api, id: &str) -> Value {
    api.request(reqwest::Method::GET, &format!("/v1/jobs/{id}"), Some(ALICE), None).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_killed_mid_job_resumes_it_from_its_journal() {
    let mut procs = Processes::new();
    let s3 = start_s3(&mut procs, BUCKET).await;
    let store = s3_store(&s3, BUCKET);
    let TestData { tpch_local, tpch_s3, .. } = &upload_test_data(store.as_ref(), BUCKET).await;

    let port = free_port();
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    let listen = format!("127.0.0.1:{port}");
    let keys = format!("alice:{ALICE}");
    let (shuffle, journal) = (format!("s3://{BUCKET}/_shuffle"), format!("s3://{BUCKET}/_journal/"));
    let serve = [
        "serve",
        "--listen",
        &listen,
        "--shuffle-root",
        &shuffle,
        "--journal",
        &journal,
        "--executor-timeout",
        "2",
        "--heartbeat-interval",
        "0.3",
    ];
    let first = spawn(&mut procs, &s3, "driver-1", &serve, &[("IGNIS_API_KEYS", &keys)]);
    api.wait_healthy().await;
    let driver = api.base.clone();
    for host in ["host-a", "host-b"] {
        let args = ["executor", "--driver", &driver, "--slots", "1", "--name", host];
        spawn(&mut procs, &s3, host, &args, &[("IGNIS_TEST_TASK_DELAY_MS", "400")]);
    }
    wait_until("two executor hosts", || async { executors(&api).await.len() == 2 }).await;

    // A job cancelled before the crash stays cancelled: it is not resumed.
    let mut query = tpch_job(tpch_local, "q3");
    // Attempts are counted below: no second attempts of slow tasks.
    query.config.speculation = Some(false);
    let cancelled = api.submit(ALICE, &on_s3(&query, tpch_s3)).await;
    let (code, body) =
        api.request(reqwest::Method::POST, &format!("/v1/jobs/{cancelled}/cancel"), Some(ALICE), None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.wait(ALICE, &cancelled).await["state"], "cancelled");

    // The job: killed once its first stages are done and others still run.
    let id = api.submit(ALICE, &on_s3(&query, tpch_s3)).await;
    wait_until("a finished stage", || async {
        let s = status(&api, &id).await;
        let stages = s["stages"].as_array().cloned().unwrap_or_default();
        stages.iter().any(|st| st["tasks"].as_u64() > Some(0) && st["succeeded"] == st["tasks"])
            && stages.iter().any(|st| st["succeeded"] != st["tasks"])
    })
    .await;
    let before = status(&api, &id).await;
    let done_before: u64 = before["stages"].as_array().unwrap().iter().map(|s| s["succeeded"].as_u64().unwrap()).sum();
    Command::new("kill").args(["-9", &first.to_string()]).status().unwrap();

    // The same journal, a new process: the job goes on under its id.
    spawn(&mut procs, &s3, "driver-2", &serve, &[("IGNIS_API_KEYS", &keys)]);
    api.wait_healthy().await;
    let after = api.wait(ALICE, &id).await;
    assert_eq!(after["state"], "succeeded", "{after}");
    assert_eq!(sorted(&api.rows(ALICE, &id).await), sorted(&local_rows(&query).await));
    let log = procs.log("driver-2");
    assert!(log.contains("resuming a job its earlier driver was running"), "{log}");
    // Every task is accounted for, and those finished before the crash did not run again.
    let stages = after["stages"].as_array().unwrap();
    assert!(stages.iter().all(|s| s["succeeded"] == s["tasks"]), "{after}");
    let tasks: u64 = stages.iter().map(|s| s["tasks"].as_u64().unwrap()).sum();
    let attempts = after["metrics"]["task_attempts"].as_u64().unwrap();
    assert!(done_before > 0 && attempts <= tasks - done_before, "{attempts} attempts for {tasks} tasks: {after}");
    // The hosts joined the new driver by themselves.
    assert_eq!(executors(&api).await.len(), 2);
    for host in ["host-a", "host-b"] {
        assert!(procs.child(host).try_wait().unwrap().is_none(), "{host} exited");
    }
    assert!(procs.log("host-a").contains("registering again") || procs.log("host-b").contains("registering again"));
    // The cancelled job stayed cancelled: the new driver never heard of it.
    assert_eq!(api.request(reqwest::Method::GET, &format!("/v1/jobs/{cancelled}"), Some(ALICE), None).await.0, 404);
    // Nothing left behind: no shuffle objects, no journal.
    for prefix in [format!("_shuffle/{id}"), "_journal".to_string()] {
        let left = ignis_core::store::list_all(store.as_ref(), &ObjectPath::from(prefix.as_str())).await.unwrap();
        assert!(left.is_empty(), "{prefix}: {:?}", left.iter().map(|m| m.location.to_string()).collect::<Vec<_>>());
    }
    // Tenants cannot reach the journal.
    let mut snoop = on_s3(&query, tpch_s3);
    snoop.tables.get_mut("nation").unwrap().location = journal.clone();
    let (code, body) =
        api.request(reqwest::Method::POST, "/v1/jobs", Some(ALICE), Some(serde_json::to_value(&snoop).unwrap())).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.to_string().contains("journal"), "{body}");
}

#[test]
fn ignis_run_resume_finishes_a_commit_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let orders = ignis_tests::cluster::repo_root().join("examples/orders");
    let job_file = root.join("job.toml");
    let text = std::fs::read_to_string(orders.join("job.toml")).unwrap();
    let data = orders.join("data");
    std::fs::write(&job_file, text.replace("\"data/", &format!("\"{}/", data.display()))).unwrap();
    let shuffle = root.join("shuffle");
    let shuffle = shuffle.to_str().unwrap();
    let out = root.join("out/us_orders_by_product");

    // Killed between the commit's moves and its manifest.
    let mut run = Command::new(env!("CARGO_BIN_EXE_ignis"))
        .args(["run", job_file.to_str().unwrap(), "--shuffle-root", shuffle])
        .current_dir(root)
        .env("IGNIS_TEST_COMMIT_PAUSE_MS", "60000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let record = out.join(ignis_driver::commit::COMMIT_RECORD);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !record.exists() {
        assert!(std::time::Instant::now() < deadline, "the commit did not begin");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    run.kill().unwrap();
    let killed = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&killed.stderr);
    let id = stderr.lines().find_map(|l| l.strip_prefix("job ")).unwrap_or_else(|| panic!("{stderr}")).trim();
    assert!(!out.join("_SUCCESS").exists(), "the commit finished before the kill");

    // Resumed: the commit is finished; no task runs again.
    let resumed = ignis(&["run", "--resume", id, "--shuffle-root", shuffle], root);
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("wrote 12 rows in 4 files"), "{stdout}\n{stderr}");
    assert!(stderr.contains("finished tasks of its earlier run are kept"), "{stderr}");
    let files = snapshot(&out);
    let names: Vec<&String> = files.keys().collect();
    assert_eq!(names.iter().filter(|n| n.ends_with(".parquet")).count(), 4, "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with('_') || *n == "_SUCCESS"), "left behind: {names:?}");

    // The same files as a run that was never interrupted (the job id aside).
    let clean_file = root.join("clean.toml");
    let clean_text = std::fs::read_to_string(&job_file).unwrap().replace("out/us_orders_by_product", "clean/out");
    std::fs::write(&clean_file, clean_text).unwrap();
    let fresh = ignis(&["run", clean_file.to_str().unwrap(), "--shuffle-root", shuffle], root);
    let fresh_err = String::from_utf8_lossy(&fresh.stderr);
    assert!(fresh.status.success(), "{fresh_err}");
    let fresh_id = fresh_err.lines().find_map(|l| l.strip_prefix("job ")).unwrap().trim();
    let normal = |files: std::collections::BTreeMap<String, Vec<u8>>, id: &str| -> Vec<(String, Vec<u8>)> {
        files
            .into_iter()
            .map(|(name, bytes)| {
                let bytes = if name == "_SUCCESS" {
                    String::from_utf8(bytes).unwrap().replace(id, "JOB").into_bytes()
                } else {
                    bytes
                };
                (name.replace(id, "JOB"), bytes)
            })
            .collect()
    };
    assert!(normal(files, id) == normal(snapshot(&root.join("clean/out")), fresh_id), "outputs differ");

    // Nothing to resume any more, said plainly.
    let again = ignis(&["run", "--resume", id, "--shuffle-root", shuffle], root);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains(&format!("no interrupted job {id}")), "{stderr}");
}
