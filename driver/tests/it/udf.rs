//! Wasm UDFs end to end: the sandbox against misbehaving guests, the example
//! UDFs in SQL (distributed, checked against the same logic as native
//! DataFusion UDFs), the CLI (`ignis udf upload`, `ignis run`), and upload
//! over HTTP with a job on an executor host.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::prelude::{CsvReadOptions, SessionContext};
use ignis_core::job::JobSpec;
use ignis_driver::{Driver, DriverConfig, JobResult};
use ignis_executor::udf::{Instances, Limits, UdfHost};
use ignis_tests::cluster::{Api, Processes, free_port, sorted, wait_until};
use ignis_tests::guests::{component, python_component, register_native_example_udfs};
use serde_json::json;

use crate::common::*;

const ORDERS_UDFS: &str = "examples/udfs/orders-udfs";
const EVIL_UDFS: &str = "tests/guests/evil";

/// A host with tight limits, so the evil guests hit them quickly.
fn strict_host() -> (Arc<UdfHost>, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let limits = Limits { memory_bytes: 64 << 20, call_timeout: Duration::from_millis(500), stderr_bytes: 4096 };
    (Arc::new(UdfHost::new(cache.path().to_path_buf(), limits).unwrap()), cache)
}

fn one_column(values: ArrayRef) -> RecordBatch {
    let schema = Schema::new(vec![Field::new("arg0", values.data_type().clone(), true)]);
    RecordBatch::try_new(Arc::new(schema), vec![values]).unwrap()
}

fn ints(values: &[i64]) -> RecordBatch {
    one_column(Arc::new(Int64Array::from(values.to_vec())))
}

fn strings(values: &[&str]) -> RecordBatch {
    one_column(Arc::new(StringArray::from(values.to_vec())))
}

#[test]
fn evil_guests_are_contained_each_with_the_right_error() {
    let (host, _cache) = strict_host();
    let bytes = std::fs::read(component(EVIL_UDFS)).unwrap();
    let evil = host.load(&bytes, None, "evil").unwrap();
    // One set of instances, as a task has: after each failure the next call gets a new instance.
    let calls = Instances::default();
    let error = |name: &str, args: &RecordBatch| evil.call_scalar(&calls, name, args).unwrap_err().to_string();

    let e = error("spin", &ints(&[1]));
    assert!(e.contains("UDF spin (evil) was stopped after its time limit of 0.5 s"), "{e}");
    // A wait in the host (an hour's sleep) ends at the same limit.
    let e = error("nap", &ints(&[1]));
    assert!(e.contains("UDF nap (evil) was stopped after its time limit of 0.5 s"), "{e}");
    let e = error("hog", &ints(&[1]));
    assert!(e.contains("UDF hog (evil) ran out of memory (limit 64 MiB per call)"), "{e}");
    let e = error("huge", &ints(&[1]));
    assert!(e.contains("UDF huge (evil) ran out of memory"), "{e}");
    let e = error("recurse", &ints(&[1]));
    assert!(e.contains("UDF recurse (evil)") && (e.contains("call stack") || e.contains("trapped")), "{e}");
    let e = error("boom", &ints(&[7]));
    assert!(e.contains("UDF boom (evil) trapped"), "{e}");
    assert!(e.contains("boom at 7") && e.contains("about to fail on 7"), "guest stderr is in the error: {e}");

    // Much stderr: kept to its last 4 KiB, never a trap; the error carries only that tail.
    let out = evil.call_scalar(&calls, "chatty", &ints(&[5])).unwrap();
    assert_eq!(out.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values(), &[15]);
    let e = error("shout", &ints(&[9]));
    assert!(e.contains("UDF shout (evil) trapped") && e.contains("shouted out at 9"), "{e}");
    assert!(e.contains("earlier bytes dropped") && !e.contains("shouting line     0 "), "{e}");
    assert!(e.len() < 6 << 10, "the error carries {} bytes", e.len());

    // No files: not even a directory listing of the root.
    let e = error("read_file", &strings(&["/etc/passwd"]));
    assert!(e.contains("UDF read_file (evil) failed") && e.contains("cannot read /etc/passwd"), "{e}");
    assert!(!e.contains("root:"), "file contents leaked: {e}");
    let e = error("list_dir", &strings(&["/"]));
    assert!(e.contains("cannot list /"), "{e}");
    // No network.
    let e = error("connect", &strings(&["127.0.0.1:22"]));
    assert!(e.contains("cannot connect to 127.0.0.1:22"), "{e}");
    // No environment: HOME is set here, the guest sees nothing.
    assert!(std::env::var_os("HOME").is_some());
    let out = evil.call_scalar(&calls, "env_var", &strings(&["HOME"])).unwrap();
    assert_eq!(out.column(0).null_count(), 1, "the guest saw HOME");
    let out = evil.call_scalar(&calls, "env_count", &ints(&[0])).unwrap();
    assert_eq!(out.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0), 0);

    // After all that, the same component still answers.
    let out = evil.call_scalar(&calls, "double", &ints(&[21, -4])).unwrap();
    assert_eq!(out.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values(), &[42, -8]);
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

/// Set in the process that runs [`a_thousand_evil_calls_leave_the_host_alive_with_flat_memory`] alone.
const ALONE: &str = "IGNIS_TEST_ALONE";

#[test]
fn a_thousand_evil_calls_leave_the_host_alive_with_flat_memory() {
    // Resident memory is the whole process's: the calls run in a test process
    // of their own, where no other test allocates alongside (in the shared
    // one, a cluster test's buffers made both halves grow by 16-43 MiB now
    // and then).
    if std::env::var_os(ALONE).is_none() {
        let name = "udf::a_thousand_evil_calls_leave_the_host_alive_with_flat_memory";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1"])
            .env(ALONE, "1")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("test result: ok. 1 passed"), "{text}");
        return;
    }
    let (host, _cache) = strict_host();
    let bytes = std::fs::read(component(EVIL_UDFS)).unwrap();
    let evil = host.load(&bytes, None, "evil").unwrap();
    let calls = Instances::default();
    let one = ints(&[1]);
    let path = strings(&["/etc/passwd"]);
    // Resident memory after calls 100, 550 and 1000. A leak grows it in both
    // halves alike; the smaller half's growth is the measure: 4 MiB per 450
    // calls is ~9 KB a call (alone, the halves grow by 128 KiB and 0).
    let mut marks = Vec::new();
    for i in 0..1000 {
        let result = match i % 4 {
            0 => evil.call_scalar(&calls, "boom", &one),
            1 => evil.call_scalar(&calls, "recurse", &one),
            2 => evil.call_scalar(&calls, "huge", &one),
            _ => evil.call_scalar(&calls, "read_file", &path),
        };
        assert!(result.is_err(), "call {i} succeeded");
        if i == 99 || i == 549 {
            marks.push(resident_bytes());
        }
    }
    marks.push(resident_bytes());
    let halves = [marks[1].saturating_sub(marks[0]), marks[2].saturating_sub(marks[1])];
    let grown = halves[0].min(halves[1]);
    assert!(
        grown < 4 << 20,
        "resident memory grew by {} and {} MiB in two runs of 450 evil calls",
        halves[0] >> 20,
        halves[1] >> 20
    );
    let out = evil.call_scalar(&calls, "double", &ints(&[5])).unwrap();
    assert_eq!(out.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0), 10);
}

#[test]
fn a_component_of_another_wit_version_or_no_component_is_refused() {
    let (host, _cache) = strict_host();
    let future = std::fs::read(component("tests/guests/future-version")).unwrap();
    let e = host.load(&future, None, "future").unwrap_err().to_string();
    assert!(e.contains("was built against ignis:udf@0.2.0, but this Ignis speaks ignis:udf@0.1.0"), "{e}");
    let e = host.load(b"\0asm\x01\0\0\0", None, "core-module").unwrap_err().to_string();
    assert!(e.contains("core-module is not a usable WebAssembly component"), "{e}");
    let e = host.load(b"hello", None, "text").unwrap_err().to_string();
    assert!(e.contains("text is not a usable WebAssembly component"), "{e}");
    let bytes = std::fs::read(component(EVIL_UDFS)).unwrap();
    let e = host.load(&bytes, Some("sha256:00"), "tampered").unwrap_err().to_string();
    assert!(e.contains("refusing to run it"), "{e}");
}

/// The example UDFs in one query: grouped by a string scalar, summing a
/// numeric scalar (with nulls), the aggregate per group; `GEO_MEAN` is
/// replaced by the aggregate or by its native equivalent.
const UDF_SQL: &str = "SELECT normalize(country || '  ' || product) AS market, count(*) AS orders, \
     round(sum(with_tax(price * quantity, 20.0)), 2) AS gross, \
     round(sum(with_tax(price, CASE WHEN quantity > 5 THEN NULL ELSE 7.5 END)), 4) AS mixed, \
     round(GEO_MEAN, 6) AS geo_mean_price \
     FROM orders GROUP BY 1";
const GEO_MEAN_WASM: &str = "geo_mean(price)";
const GEO_MEAN_NATIVE: &str = "exp(avg(CASE WHEN price > 0 THEN ln(price) END))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_udfs_in_sql_run_distributed_and_match_the_same_logic_native() {
    let ws = orders_workspace();
    let wasm = component(ORDERS_UDFS);
    let sql = UDF_SQL.replace("GEO_MEAN", GEO_MEAN_WASM);
    let job: JobSpec = toml_job(&format!(
        "udfs = [{wasm:?}]\nsql = {sql:?}\n[tables.orders]\nformat = \"csv\"\nlocation = \"data/\"\n\
         options = {{ header = true }}\n[config]\nshuffle_partitions = 3\n"
    ));
    let mut job = job;
    job.resolve_paths(ws.path()).unwrap();
    let config = DriverConfig {
        shuffle_root: url::Url::from_directory_path(ws.path().join("_shuffle")).unwrap().to_string(),
        udf_root: url::Url::from_directory_path(ws.path().join("_udfs")).unwrap().to_string(),
        ..DriverConfig::default()
    };
    let driver = Driver::local(2, config);
    let outcome = driver.run(&job, &|_| {}).await.unwrap();
    assert!(outcome.stages >= 2 && outcome.tasks >= 5, "partial aggregates cross a shuffle: {outcome:?}");
    let JobResult::Rows { batches, .. } = outcome.result else { panic!("collect job") };

    let ctx = SessionContext::new();
    register_native_example_udfs(&ctx);
    ctx.register_csv("orders", ws.path().join("data").to_str().unwrap(), CsvReadOptions::new()).await.unwrap();
    let native = ctx.sql(&UDF_SQL.replace("GEO_MEAN", GEO_MEAN_NATIVE)).await.unwrap().collect().await.unwrap();
    let (ours, theirs) = (sorted(&batches), sorted(&native));
    assert!(ours.len() > 20, "{ours:?}");
    assert_eq!(ours, theirs);

    // The aggregate without groups: partial states from every scan task merged in one.
    let whole =
        |geo: &str| format!("SELECT round({}, 6) AS g, count(*) AS n FROM orders", geo.replace("price", "quantity"));
    let mut job = job.clone();
    job.sql = Some(whole(GEO_MEAN_WASM));
    let JobResult::Rows { batches, .. } = driver.run(&job, &|_| {}).await.unwrap().result else { panic!() };
    let native = ctx.sql(&whole(GEO_MEAN_NATIVE)).await.unwrap().collect().await.unwrap();
    assert_eq!(sorted(&batches), sorted(&native));
}

/// `order_bands` of the example crate, as SQL over the same table.
const ORDER_BANDS_NATIVE: &str = "(SELECT *, price * quantity AS revenue, \
     CASE WHEN price * quantity < 100 THEN 'small' WHEN price * quantity < 1000 THEN 'medium' ELSE 'large' END AS band \
     FROM orders WHERE quantity > 0)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_batches_runs_the_example_transform_distributed_like_the_same_logic_in_sql() {
    let ws = orders_workspace();
    // Rows the transform must drop (zero, negative and missing quantity) and one large order.
    std::fs::write(
        ws.path().join("data/orders-extra.csv"),
        "order_id,country,product,quantity,price,ts\n90001,US,camera,0,10.0,2026-01-01T00:00:00\n\
         90002,FR,phone,-2,5.5,2026-01-02T00:00:00\n90003,DE,tv,,99.0,2026-01-03T00:00:00\n\
         90004,US,car,3,2500.0,2026-01-04T00:00:00\n",
    )
    .unwrap();
    let wasm = component(ORDERS_UDFS);
    let steps_job = |steps: &str| {
        let mut job = toml_job(&format!(
            "udfs = [{wasm:?}]\nsteps = [{steps}]\n[tables.orders]\nformat = \"csv\"\nlocation = \"data/\"\n\
             options = {{ header = true }}\n[config]\nshuffle_partitions = 3\n"
        ));
        job.resolve_paths(ws.path()).unwrap();
        job
    };
    let config = DriverConfig {
        shuffle_root: url::Url::from_directory_path(ws.path().join("_shuffle")).unwrap().to_string(),
        udf_root: url::Url::from_directory_path(ws.path().join("_udfs")).unwrap().to_string(),
        ..DriverConfig::default()
    };
    let driver = Driver::local(2, config);
    let ctx = SessionContext::new();
    ctx.register_csv("orders", ws.path().join("data").to_str().unwrap(), CsvReadOptions::new()).await.unwrap();

    // Transform, then a grouped aggregate across a shuffle.
    let job = steps_job(
        "{ op = \"read\", table = \"orders\" }, { op = \"map_batches\", function = \"order_bands\" }, \
         { op = \"group_by\", keys = [\"band\"], aggs = [\"count(*) AS orders\", \"round(sum(revenue), 2) AS revenue\", \
         \"min(order_id) AS first\", \"max(quantity) AS most\"] }",
    );
    let outcome = driver.run(&job, &|_| {}).await.unwrap();
    assert!(outcome.stages >= 2, "the transform runs in the scan stage, the aggregate after a shuffle: {outcome:?}");
    let JobResult::Rows { batches, .. } = outcome.result else { panic!("collect job") };
    let native = |sql: String| {
        let ctx = &ctx;
        async move { sorted(&ctx.sql(&sql).await.unwrap().collect().await.unwrap()) }
    };
    let theirs = native(format!(
        "SELECT band, count(*) AS orders, round(sum(revenue), 2) AS revenue, min(order_id) AS first, \
         max(quantity) AS most FROM {ORDER_BANDS_NATIVE} GROUP BY band"
    ))
    .await;
    let ours = sorted(&batches);
    for band in ["| large ", "| medium ", "| small "] {
        assert!(ours.iter().any(|row| row.starts_with(band)), "{ours:?}");
    }
    assert_eq!(ours, theirs);

    // Row by row, with steps after the transform using its new columns.
    let job = steps_job(
        "{ op = \"read\", table = \"orders\" }, { op = \"map_batches\", function = \"order_bands\" }, \
         { op = \"filter\", expr = \"band <> 'small'\" }, { op = \"select\", exprs = [\"order_id\", \"revenue\", \"band\"] }",
    );
    let JobResult::Rows { batches, .. } = driver.run(&job, &|_| {}).await.unwrap().result else { panic!() };
    let theirs =
        native(format!("SELECT order_id, revenue, band FROM {ORDER_BANDS_NATIVE} WHERE band <> 'small'")).await;
    let ours = sorted(&batches);
    assert!(ours.len() > 100 && ours.iter().any(|r| r.starts_with("| 90004 ")), "{} rows", ours.len());
    for dropped in ["| 90001 ", "| 90002 ", "| 90003 "] {
        assert!(!ours.iter().any(|r| r.starts_with(dropped)), "{dropped} came back");
    }
    assert_eq!(ours, theirs);

    // What goes wrong is named.
    let err = |steps: &str| {
        let job = steps_job(steps);
        let driver = &driver;
        async move { driver.run(&job, &|_| {}).await.unwrap_err().to_string() }
    };
    let read = "{ op = \"read\", table = \"orders\" }, ";
    let e = err(&format!("{read}{{ op = \"map_batches\", function = \"normalize\" }}")).await;
    assert!(
        e.contains("steps[1] (map_batches): Error during planning: no transform named 'normalize'")
            && e.contains("offered: order_bands"),
        "{e}"
    );
    let evil = component(EVIL_UDFS);
    let mut job = steps_job(&format!("{read}{{ op = \"map_batches\", function = \"explode\" }}"));
    job.udfs = vec![evil.to_str().unwrap().to_owned()];
    let e = driver.run(&job, &|_| {}).await.unwrap_err().to_string();
    assert!(e.contains("UDF explode (evil_udfs.wasm) trapped") && e.contains("exploded on a batch of"), "{e}");
    job.steps.as_mut().unwrap()[1] = ignis_core::job::Step::MapBatches { function: "shifty".into() };
    let e = driver.run(&job, &|_| {}).await.unwrap_err().to_string();
    assert!(
        e.contains("map_batches shifty: returned columns (surprise Int64) other than the ones it announced"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_udf_built_with_componentize_py_runs_distributed_like_the_same_logic_native() {
    let ws = orders_workspace();
    let python = python_component();
    // Nulls and mixed case go through the Python side's Arrow IPC codec both ways.
    let sql = "SELECT NORMALIZE(CASE WHEN order_id % 7 = 0 THEN NULL ELSE country || ' _ ' || upper(product) END) \
               AS market, count(*) AS n FROM orders GROUP BY 1";
    let mut job = toml_job(&format!(
        "udfs = [{python:?}]\nsql = {:?}\n[tables.orders]\nformat = \"csv\"\nlocation = \"data/\"\n\
         options = {{ header = true }}\n[config]\nshuffle_partitions = 3\n",
        sql.replace("NORMALIZE", "py_normalize")
    ));
    job.resolve_paths(ws.path()).unwrap();
    let config = DriverConfig {
        shuffle_root: url::Url::from_directory_path(ws.path().join("_shuffle")).unwrap().to_string(),
        udf_root: url::Url::from_directory_path(ws.path().join("_udfs")).unwrap().to_string(),
        ..DriverConfig::default()
    };
    let outcome = Driver::local(2, config).run(&job, &|_| {}).await.unwrap();
    assert!(outcome.stages >= 2, "{outcome:?}");
    let JobResult::Rows { batches, .. } = outcome.result else { panic!("collect job") };
    let ctx = SessionContext::new();
    register_native_example_udfs(&ctx);
    ctx.register_csv("orders", ws.path().join("data").to_str().unwrap(), CsvReadOptions::new()).await.unwrap();
    let native = ctx.sql(&sql.replace("NORMALIZE", "normalize")).await.unwrap().collect().await.unwrap();
    let (ours, theirs) = (sorted(&batches), sorted(&native));
    assert!(ours.iter().any(|r| r.starts_with("| us-camera ")), "{ours:?}");
    assert!(ours.iter().any(|r| r.starts_with("|  ")), "a null market: {ours:?}");
    assert_eq!(ours, theirs);
}

fn toml_job(text: &str) -> JobSpec {
    JobSpec::parse(text, "toml", "test job").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_udf_fails_the_job_with_its_name_and_is_not_retried() {
    let ws = orders_workspace();
    let wasm = component(EVIL_UDFS);
    let mut job = toml_job(&format!(
        "udfs = [{wasm:?}]\nsql = \"SELECT sum(boom(quantity)) FROM orders\"\n[tables.orders]\nformat = \"csv\"\n\
         location = \"data/\"\noptions = {{ header = true }}\n"
    ));
    job.resolve_paths(ws.path()).unwrap();
    let config = DriverConfig {
        shuffle_root: url::Url::from_directory_path(ws.path().join("_shuffle")).unwrap().to_string(),
        udf_root: url::Url::from_directory_path(ws.path().join("_udfs")).unwrap().to_string(),
        ..DriverConfig::default()
    };
    let driver = Driver::local(2, config);
    let attempts = std::sync::atomic::AtomicUsize::new(0);
    let events = |e: ignis_driver::scheduler::JobEvent| {
        if matches!(e, ignis_driver::scheduler::JobEvent::TaskStarted { .. }) {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let e = driver.run(&job, &events).await.unwrap_err().to_string();
    assert!(e.contains("UDF boom (evil_udfs.wasm) trapped") && e.contains("trapped") && e.contains("boom at"), "{e}");
    assert!(attempts.into_inner() <= 4, "a user error in a UDF is not retried");

    // A component name nobody uploaded.
    let mut job = toml_job("udfs = [\"no-such-udfs\"]\nsql = \"SELECT 1\"\n");
    job.resolve_paths(ws.path()).unwrap();
    let e = driver.run(&job, &|_| {}).await.unwrap_err().to_string();
    assert!(e.contains("udfs[0]: no component named \"no-such-udfs\" was uploaded"), "{e}");
}

#[test]
fn cli_uploads_the_example_crate_locally_and_runs_the_example_job() {
    let ws = tempfile::tempdir().unwrap();
    let root = repo_root();
    let ignis = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ignis"))
            .args(args)
            .current_dir(&root)
            .env("IGNIS_UDF_ROOT", ws.path().join("udfs"))
            .env("IGNIS_SHUFFLE_ROOT", ws.path().join("shuffle"))
            .env("CARGO_TARGET_DIR", component(ORDERS_UDFS).ancestors().nth(3).unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "ignis {args:?}: {}\n{}", stdout(&out), stderr(&out));
        stdout(&out)
    };
    let uploaded = ignis(&["udf", "upload", ORDERS_UDFS]);
    assert!(uploaded.contains("uploaded orders-udfs (sha256:"), "{uploaded}");
    assert!(uploaded.contains("scalar normalize(Utf8) -> Utf8"), "{uploaded}");
    assert!(uploaded.contains("scalar with_tax(Float64, Float64) -> Float64"), "{uploaded}");
    assert!(uploaded.contains("transform order_bands()"), "{uploaded}");
    let listed = ignis(&["udf", "list"]);
    assert!(listed.contains("orders-udfs (sha256:"), "{listed}");
    let run = ignis(&["run", "examples/udfs/orders-udfs.toml"]);
    // The CSV's first order: US, camera.
    assert!(run.contains("| us-camera"), "{run}");
    assert!(run.contains("market") && run.contains("gross_with_vat"), "{run}");
    let run = ignis(&["run", "examples/udfs/order-bands.toml"]);
    for band in ["| large ", "| medium ", "| small "] {
        assert!(run.contains(band), "{run}");
    }
    // Removed, the name frees its functions: the same crate uploads under another name.
    let removed = ignis(&["udf", "remove", "orders-udfs"]);
    assert!(removed.contains("removed orders-udfs (sha256:"), "{removed}");
    assert!(ignis(&["udf", "list"]).contains("no UDF components uploaded"));
    let again = ignis(&["udf", "upload", ORDERS_UDFS, "--name", "orders-udfs-2"]);
    assert!(again.contains("uploaded orders-udfs-2"), "{again}");
}

const ALICE: &str = "alice-key-0001";
const BOB: &str = "bob-key-0002";
const SECRET: &str = "executor-secret-0003";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_over_http_validates_and_jobs_use_udfs_on_an_executor_host() {
    let ws = orders_workspace();
    let mut procs = Processes::new();
    let port = free_port();
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    let udf_root = ws.path().join("udfs");
    let mut driver = Command::new(env!("CARGO_BIN_EXE_ignis"));
    driver
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--local-executors", "1"])
        .arg("--allow-local-files")
        .arg(ws.path())
        .args(["--executor-secret", SECRET, "--shuffle-root"])
        .arg(ws.path().join("shuffle"))
        .arg("--udf-root")
        .arg(&udf_root)
        .env("IGNIS_API_KEYS", format!("alice:{ALICE},bob:{BOB}"));
    procs.spawn("driver", driver);
    api.wait_healthy().await;
    let mut host = Command::new(env!("CARGO_BIN_EXE_ignis"));
    host.args(["executor", "--driver", &api.base, "--slots", "2", "--name", "host-a"])
        .env("IGNIS_EXECUTOR_SECRET", SECRET)
        .env("IGNIS_UDF_CACHE", ws.path().join("host-cache"));
    procs.spawn("host-a", host);
    wait_until("the executor host", || async {
        let (_, body) = api.request(reqwest::Method::GET, "/v1/executors", Some(ALICE), None).await;
        body["executors"].as_array().is_some_and(|e| e.len() == 1)
    })
    .await;

    let upload = |name: &str, key: &str, bytes: Vec<u8>| {
        let request = api.http.post(format!("{}/v1/udfs?name={name}", api.base)).bearer_auth(key).body(bytes);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, serde_json::from_slice::<serde_json::Value>(&response.bytes().await.unwrap()).unwrap())
        }
    };
    let orders = std::fs::read(component(ORDERS_UDFS)).unwrap();
    let (status, body) = upload("orders-udfs", ALICE, orders.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert!(body["digest"].as_str().unwrap().starts_with("sha256:"), "{body}");
    let names: Vec<&str> = body["functions"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["normalize", "with_tax", "geo_mean", "order_bands"]);
    // Not a component; another version of the world; a function name the tenant already has.
    let (status, body) = upload("junk", ALICE, b"not wasm at all".to_vec()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_udf")), "{body}");
    let future = std::fs::read(component("tests/guests/future-version")).unwrap();
    let (status, body) = upload("future", ALICE, future).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("ignis:udf@0.2.0"), "{body}");
    let (status, body) = upload("orders-copy", ALICE, orders.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("function 'normalize' is already defined"), "{body}");
    // Bob's names are his own: the same component uploads fine for him.
    let (status, body) = upload("orders-copy", BOB, orders).await;
    assert_eq!(status, 201, "{body}");
    // Names are removed per tenant too: Alice cannot remove Bob's; Bob can, once.
    let (status, body) = api.request(reqwest::Method::DELETE, "/v1/udfs/orders-copy", Some(ALICE), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = api.request(reqwest::Method::DELETE, "/v1/udfs/orders-copy", Some(BOB), None).await;
    assert_eq!((status, body["name"].as_str()), (200, Some("orders-copy")), "{body}");
    let (_, bob_list) = api.request(reqwest::Method::GET, "/v1/udfs", Some(BOB), None).await;
    assert_eq!(bob_list["udfs"].as_array().unwrap().len(), 0, "{bob_list}");
    let (status, _) = api.request(reqwest::Method::DELETE, "/v1/udfs/orders-copy", Some(BOB), None).await;
    assert_eq!(status, 404);
    let (_, alice_list) = api.request(reqwest::Method::GET, "/v1/udfs", Some(ALICE), None).await;
    assert_eq!(alice_list["udfs"].as_array().unwrap().len(), 1, "{alice_list}");
    assert!(udf_root.join("components").read_dir().unwrap().count() == 1, "content-addressed: stored once");

    // A job on the executor host calls the UDFs by the component's name.
    let sql = "SELECT normalize(product) AS product, round(sum(with_tax(price, 20.0)), 2) AS gross \
               FROM orders GROUP BY 1";
    let data = ws.path().join("data");
    let job = json!({
        "udfs": ["orders-udfs"],
        "sql": sql,
        "tables": {"orders": {"format": "csv", "location": format!("{}/", data.display()), "options": {"header": true}}},
        "config": {"backend": "hosts", "shuffle_partitions": 3}
    });
    let job: JobSpec = serde_json::from_value(job).unwrap();
    let id = api.submit(ALICE, &job).await;
    let status = api.wait(ALICE, &id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    let rows = sorted(&api.rows(ALICE, &id).await);
    let ctx = SessionContext::new();
    register_native_example_udfs(&ctx);
    ctx.register_csv("orders", data.to_str().unwrap(), CsvReadOptions::new()).await.unwrap();
    assert_eq!(rows, sorted(&ctx.sql(sql).await.unwrap().collect().await.unwrap()));
    assert!(ws.path().join("host-cache").read_dir().unwrap().count() >= 1, "the host cached the compiled component");

    // A map_batches step on the host: the plan carries the transform by name.
    let mut steps = job.clone();
    steps.sql = None;
    steps.steps = Some(
        serde_json::from_value(json!([
            {"op": "read", "table": "orders"},
            {"op": "map_batches", "function": "order_bands"},
            {"op": "group_by", "keys": ["band"], "aggs": ["count(*) AS n", "round(sum(revenue), 2) AS revenue"]}
        ]))
        .unwrap(),
    );
    let id = api.submit(ALICE, &steps).await;
    assert_eq!(api.wait(ALICE, &id).await["state"], "succeeded");
    let native = format!(
        "SELECT band, count(*) AS n, round(sum(revenue), 2) AS revenue FROM {ORDER_BANDS_NATIVE} GROUP BY band"
    );
    assert_eq!(sorted(&api.rows(ALICE, &id).await), sorted(&ctx.sql(&native).await.unwrap().collect().await.unwrap()));

    // The same job naming the component by its digest, in capitals.
    let digest = alice_list["udfs"][0]["digest"].as_str().unwrap().to_owned();
    let mut by_digest = job.clone();
    by_digest.udfs = vec![digest.to_uppercase().replace("SHA256:", "sha256:")];
    let id = api.submit(ALICE, &by_digest).await;
    assert_eq!(api.wait(ALICE, &id).await["state"], "succeeded");
    assert_eq!(sorted(&api.rows(ALICE, &id).await), rows);

    // Bob has no component of that name (his is "orders-copy").
    let (status, body) =
        api.request(reqwest::Method::POST, "/v1/jobs", Some(BOB), Some(serde_json::to_value(&job).unwrap())).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("no component named \"orders-udfs\""), "{body}");
}
