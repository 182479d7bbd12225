//! The hostile-tenant suite: a real `ignis serve` (two tenants, each under its
//! own prefix of an S3 bucket served by moto) and one executor host, attacked
//! the ways a tenant would: SQL that reads the driver's files, locations
//! dressed up to leave the tenant's prefix, the driver's own roots as tables
//! and outputs, settings past their bounds, results past the limit, floods
//! of jobs and of slow connections, forged executor traffic, another tenant's
//! UDF. Each gets its documented 4xx or a failed job that says why; afterwards
//! the driver still answers, the other tenant's objects are byte-identical,
//! and the driver's memory is near where it started.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use ignis_tests::cluster::{
    Api, Processes, failed_attempts, free_port, repo_root, s3_env, s3_store, start_s3, upload, wait_until,
};
use ignis_tests::guests::component;
use object_store::{ObjectStore, ObjectStoreExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BUCKET: &str = "ignis-tenants";
const ALICE: &str = "alice-key-0001";
const BOB: &str = "bob-key-0002";
const SECRET: &str = "executor-secret-0003";
/// What the driver is started with, small enough to reach in a test.
const MAX_RESULT_BYTES: &str = "65536";

fn orders_table(tenant: &str) -> Value {
    json!({"format": "csv", "location": format!("s3://{BUCKET}/tenants/{tenant}/orders/"), "options": {"header": true}})
}

fn count_job(tenant: &str) -> Value {
    json!({"tables": {"orders": orders_table(tenant)}, "sql": "SELECT count(*) AS n FROM orders",
           "config": {"backend": "hosts"}})
}

/// Every object under `prefix` with its bytes.
async fn snapshot(store: &dyn ObjectStore, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for meta in ignis_core::store::list_all(store, &object_store::path::Path::from(prefix)).await.unwrap() {
        let bytes = store.get(&meta.location).await.unwrap().bytes().await.unwrap();
        out.insert(meta.location.to_string(), bytes.to_vec());
    }
    out
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Send `body` as alice; the status and error message.
async fn as_alice(api: &Api, body: Value) -> (u16, String) {
    let (status, body) = api.request(Method::POST, "/v1/jobs", Some(ALICE), Some(body)).await;
    (status, body["error"]["message"].as_str().unwrap_or_default().to_string())
}

/// The Spark Connect port, spoken as pyspark speaks it (gRPC over HTTP/2):
/// no key, a foreign key, another tenant's prefix, the driver's shuffle root,
/// and another tenant's session id each get their refusal or nothing of alice.
async fn spark_connect_refusals(port: u16) {
    use ignis_driver::connect::proto::spark as sc;
    let grpc = Grpc::new(port);
    let config = |session: &str, op: sc::config_request::operation::OpType| sc::ConfigRequest {
        session_id: session.into(),
        operation: Some(sc::config_request::Operation { op_type: Some(op) }),
        ..Default::default()
    };
    let get = |session: &str| {
        config(
            session,
            sc::config_request::operation::OpType::Get(sc::config_request::Get {
                keys: vec!["spark.sql.shuffle.partitions".into()],
            }),
        )
    };
    let session = "6f1c4a8e-0000-4000-8000-000000000001";
    wait_until("the Spark Connect port", || async {
        grpc.call::<_, sc::ConfigResponse>("Config", Some(ALICE), &get(session)).await.is_ok()
    })
    .await;

    let (code, message) = grpc.call::<_, sc::ConfigResponse>("Config", None, &get(session)).await.unwrap_err();
    assert_eq!(code, "16", "no key: UNAUTHENTICATED ({message})");
    let (code, _) = grpc.call::<_, sc::ConfigResponse>("Config", Some(SECRET), &get(session)).await.unwrap_err();
    assert_eq!(code, "16", "the executor secret is no tenant key");

    // Alice sets a value in her session; bob, with the same session id, has a session of his own.
    let set = config(
        session,
        sc::config_request::operation::OpType::Set(sc::config_request::Set {
            pairs: vec![sc::KeyValue { key: "spark.sql.shuffle.partitions".into(), value: Some("7".into()) }],
            silent: None,
        }),
    );
    grpc.call::<_, sc::ConfigResponse>("Config", Some(ALICE), &set).await.unwrap();
    let value = |r: sc::ConfigResponse| r.pairs.first().and_then(|p| p.value.clone());
    assert_eq!(value(grpc.call("Config", Some(ALICE), &get(session)).await.unwrap()).as_deref(), Some("7"));
    assert_eq!(value(grpc.call("Config", Some(BOB), &get(session)).await.unwrap()).as_deref(), Some("4"));

    // Reads of bob's prefix and of the driver's shuffle root are refused before anything is listed.
    for path in [
        format!("s3://{BUCKET}/tenants/bob/orders/"),
        format!("s3://{BUCKET}/_shuffle/"),
        format!("s3://{BUCKET}/tenants/alice/../bob/orders/"),
    ] {
        let read = sc::Relation {
            common: None,
            rel_type: Some(sc::relation::RelType::Read(sc::Read {
                read_type: Some(sc::read::ReadType::DataSource(sc::read::DataSource {
                    format: Some("csv".into()),
                    paths: vec![path.clone()],
                    ..Default::default()
                })),
                is_streaming: false,
            })),
        };
        let analyze = sc::AnalyzePlanRequest {
            session_id: session.into(),
            analyze: Some(sc::analyze_plan_request::Analyze::Schema(sc::analyze_plan_request::Schema {
                plan: Some(sc::Plan { op_type: Some(sc::plan::OpType::Root(read)) }),
            })),
            ..Default::default()
        };
        let (code, message) =
            grpc.call::<_, sc::AnalyzePlanResponse>("AnalyzePlan", Some(ALICE), &analyze).await.unwrap_err();
        assert!(code == "7" || code == "3", "{path}: {code} {message}");
        assert!(
            message.contains("may not") || message.contains("overlaps") || message.contains(".."),
            "{path}: {message}"
        );
    }
}

/// A minimal gRPC client over reqwest's HTTP/2: unary calls to the Spark Connect service.
struct Grpc {
    http: reqwest::Client,
    base: String,
}

impl Grpc {
    fn new(port: u16) -> Self {
        let http = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
        Self { http, base: format!("http://127.0.0.1:{port}/spark.connect.SparkConnectService") }
    }

    /// The answer, or the grpc-status code and message of a refusal.
    async fn call<M: prost::Message, R: prost::Message + Default>(
        &self,
        method: &str,
        key: Option<&str>,
        message: &M,
    ) -> Result<R, (String, String)> {
        let payload = message.encode_to_vec();
        let mut body = vec![0u8];
        body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        body.extend_from_slice(&payload);
        let mut request = self
            .http
            .post(format!("{}/{method}", self.base))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let response = request.body(body).send().await.map_err(|e| ("transport".to_string(), e.to_string()))?;
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        if let Some(code) = header("grpc-status").filter(|c| c != "0") {
            let message = header("grpc-message").unwrap_or_default();
            let message = percent_encoding::percent_decode_str(&message).decode_utf8_lossy().into_owned();
            return Err((code, message));
        }
        let bytes = response.bytes().await.map_err(|e| ("body".to_string(), e.to_string()))?;
        if bytes.len() < 5 {
            return Err(("empty".into(), format!("{} bytes", bytes.len())));
        }
        R::decode(&bytes[5..]).map_err(|e| ("decode".to_string(), e.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_gets_clear_refusals_and_touches_nothing_of_another() {
    let mut procs = Processes::new();
    let endpoint = start_s3(&mut procs, BUCKET).await;
    let store = s3_store(&endpoint, BUCKET);
    let data = repo_root().join("examples/orders/data");
    upload(store.as_ref(), &data, "tenants/alice/orders").await;
    upload(store.as_ref(), &data, "tenants/bob/orders").await;
    let bob_udf = std::fs::read(component("examples/udfs/orders-udfs")).unwrap();

    let port = free_port();
    let grpc_port = free_port();
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    let mut driver = Command::new(env!("CARGO_BIN_EXE_ignis"));
    driver
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--spark-connect", &format!("127.0.0.1:{grpc_port}")])
        .args(["--tenant-root", &format!("s3://{BUCKET}/tenants/{{tenant}}/")])
        .args(["--shuffle-root", &format!("s3://{BUCKET}/_shuffle/")])
        .args(["--udf-root", &format!("s3://{BUCKET}/_udfs/")])
        .args(["--journal", &format!("s3://{BUCKET}/_journal/")])
        .args(["--max-result-bytes", MAX_RESULT_BYTES, "--max-running-jobs", "1", "--max-queued-jobs", "1"])
        .args(["--max-connections", "64", "--header-read-timeout", "2", "--retained-result-bytes", "1"])
        .env("IGNIS_API_KEYS", format!("alice:{ALICE},bob:{BOB}"))
        .env("IGNIS_EXECUTOR_SECRET", SECRET)
        .env("IGNIS_LOG", "info");
    s3_env(&mut driver, &endpoint);
    let driver_pid = procs.spawn("driver", driver);
    api.wait_healthy().await;

    spark_connect_refusals(grpc_port).await;

    // Bob's UDF, and then his objects as they must stay.
    let upload_udf = api.http.post(format!("{}/v1/udfs?name=bob-udfs", api.base)).bearer_auth(BOB).body(bob_udf);
    let uploaded: Value = serde_json::from_slice(&upload_udf.send().await.unwrap().bytes().await.unwrap()).unwrap();
    let bob_digest = uploaded["digest"].as_str().expect("bob's upload has a digest").to_string();
    // A burst of uploads (distinct bytes: a custom section appended): one
    // compiles at a time, four wait, the rest are refused with Retry-After.
    let base = std::fs::read(component("tests/guests/evil")).unwrap();
    let uploads = (0..6u8).map(|i| {
        let mut bytes = base.clone();
        bytes.extend_from_slice(&[0x00, 0x05, 0x04, b'p', b'a', b'd', i]);
        let request = api.http.post(format!("{}/v1/udfs?name=burst-{i}", api.base)).bearer_auth(ALICE).body(bytes);
        async move { request.send().await.unwrap() }
    });
    let answers = futures::future::join_all(uploads).await;
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert!(statuses.iter().all(|s| [201, 400, 429].contains(s)), "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "one of the same functions is kept: {statuses:?}");
    let refused: Vec<_> = answers.iter().filter(|r| r.status() == 429).collect();
    assert!(!refused.is_empty(), "no upload was refused: {statuses:?}");
    assert!(refused.iter().all(|r| r.headers().contains_key("retry-after")));
    let bob_objects = snapshot(store.as_ref(), "tenants/bob").await;
    let udf_objects = snapshot(store.as_ref(), "_udfs").await;
    assert!(!bob_objects.is_empty() && !udf_objects.is_empty());

    // A flood of jobs: with no executor host yet, the first runs (waiting for
    // one), the second queues, the third is refused with Retry-After.
    let (status, body) = api.request(Method::POST, "/v1/jobs", Some(ALICE), Some(count_job("alice"))).await;
    assert_eq!((status, body["state"].as_str()), (202, Some("running")), "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let hex = id.rsplit('-').next().unwrap();
    assert_eq!(hex.len(), 32, "a job id carries 128 random bits: {id}");
    let (status, body) = api.request(Method::POST, "/v1/jobs", Some(ALICE), Some(count_job("alice"))).await;
    assert_eq!((status, body["state"].as_str()), (202, Some("queued")), "{body}");
    let third = api.http.post(format!("{}/v1/jobs", api.base)).bearer_auth(ALICE);
    let third = third.header("content-type", "application/json").body(count_job("alice").to_string());
    let third = third.send().await.unwrap();
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["retry-after"], "5");
    // Bob's share is his own.
    let (status, body) = api.request(Method::POST, "/v1/jobs", Some(BOB), Some(count_job("bob"))).await;
    assert_eq!(status, 202, "{body}");
    let bob_job = body["id"].as_str().unwrap().to_string();

    // A second "host" (whoever holds the executor secret can register one)
    // takes the waiting task and reports a result whose shuffle object lies
    // elsewhere: refused and logged, the attempt fails and runs again.
    let register = json!({"protocol_version": ignis_core::protocol::PROTOCOL_VERSION, "name": "rogue", "slots": 1});
    let (status, rogue) = api.request(Method::POST, "/v1/executors", Some(SECRET), Some(register)).await;
    assert_eq!(status, 201, "{rogue}");
    let (rogue_id, rogue_token) = (rogue["executor_id"].as_str().unwrap(), rogue["token"].as_str().unwrap());
    let poll = format!("/v1/executors/{rogue_id}/tasks/next?wait_ms=10000");
    let (status, task) = api.request(Method::POST, &poll, Some(rogue_token), Some(json!({}))).await;
    assert_eq!(status, 200, "the rogue host got no task: {task}");
    let request = &task["request"];
    let forged = json!({"succeeded": {"job_id": request["job_id"], "stage_id": request["stage_id"],
        "partition": request["partition"], "attempt": request["attempt"],
        "output": {"shuffle": {"url": format!("s3://{BUCKET}/tenants/bob/orders/planted.arrows"), "pieces": []}},
        "metrics": {"output_rows": 0, "output_bytes": 0, "elapsed_ms": 0}}});
    let own = format!("/v1/executors/{rogue_id}/tasks/{}/result", task["task_key"]);
    let (status, body) = api.request(Method::POST, &own, Some(rogue_token), Some(forged.clone())).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_result")), "{body}");

    let mut host = Command::new(env!("CARGO_BIN_EXE_ignis"));
    host.args(["executor", "--driver", &api.base, "--slots", "2", "--name", "host-a"])
        .env("IGNIS_EXECUTOR_SECRET", SECRET)
        .env("IGNIS_LOG", "info");
    s3_env(&mut host, &endpoint);
    procs.spawn("host-a", host);
    let status = api.wait(ALICE, &id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert!(failed_attempts(&status) >= 1, "the refused result failed its attempt: {status}");
    assert!(procs.log("driver").contains("refused a task result that does not fit its task"));
    let rss_before = rss_kib(driver_pid);

    // SQL is queries only: DDL that would read the driver's files, writes,
    // session changes and CREATE TABLE AS SELECT are refused by name.
    for (sql, named) in [
        (
            "CREATE EXTERNAL TABLE f (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd' OPTIONS \
             ('format.has_header' 'false', 'format.delimiter' '|'); SELECT * FROM f",
            "CREATE EXTERNAL TABLE",
        ),
        ("CREATE TABLE t AS SELECT * FROM orders; SELECT * FROM t", "CREATE TABLE"),
        ("COPY (SELECT 1) TO '/tmp/ignis-escape.csv'", "COPY"),
        ("SET datafusion.execution.batch_size = 100000000000", "SET"),
        ("INSERT INTO orders VALUES (1)", "INSERT"),
    ] {
        let (status, message) = as_alice(&api, json!({"tables": {"orders": orders_table("alice")}, "sql": sql})).await;
        assert_eq!(status, 400, "{sql}: {message}");
        assert!(message.contains(named) && message.contains("tables"), "{sql}: {message}");
    }

    // Locations: the driver's disk in every spelling, climbs out of the
    // tenant's prefix, bob's prefix, the driver's own roots, the bucket root.
    let job_on =
        |location: &str| json!({"tables": {"t": {"format": "csv", "location": location}}, "sql": "SELECT * FROM t"});
    for location in [
        "/etc/passwd".to_string(),
        "FILE:///etc/passwd".into(),
        "file:/etc/passwd".into(),
        "file://localhost/etc/passwd".into(),
        format!("s3://{BUCKET}/tenants/alice/%2e%2e/bob/orders/"),
        format!("s3://{BUCKET}/tenants/alice/../bob/orders/"),
        format!("S3://{BUCKET}/tenants/bob/orders/"),
        format!("s3://{BUCKET}/tenants/*/orders/"),
        format!("s3://{BUCKET}/_shuffle/"),
        format!("s3://{BUCKET}/_udfs/components/"),
        format!("s3://{BUCKET}/_journal/"),
        format!("s3://{BUCKET}/_journal/job-1/job.json"),
        format!("s3://{BUCKET}/"),
    ] {
        let (status, message) = as_alice(&api, job_on(&location)).await;
        assert_eq!(status, 403, "{location}: {message}");
        assert!(message.contains("tables.t.location"), "{location}: {message}");
    }
    let (status, message) = as_alice(&api, job_on(&format!("s3://{BUCKET}/tenants/alice/../../../x/"))).await;
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("climbs above"), "{message}");
    // Bob's prefix, and the driver's disk, as overwrite targets of an empty result.
    for target in [format!("s3://{BUCKET}/tenants/bob/orders/"), "FILE:///tmp/".into(), format!("s3://{BUCKET}/")] {
        let job = json!({"tables": {"orders": orders_table("alice")},
                         "sql": "SELECT * FROM orders WHERE 1 = 0",
                         "output": {"write": {"format": "csv", "location": target, "mode": "overwrite",
                                              "partition_by": ["country"]}}});
        let (status, message) = as_alice(&api, job).await;
        assert_eq!(status, 403, "{target}: {message}");
        assert!(message.contains("output.write.location"), "{message}");
    }
    // Streams: only brokers the driver allows (none here); the checkpoint is a
    // write location like any other; the rows go somewhere, not to a console.
    let output = json!({"write": {"format": "parquet", "location": format!("s3://{BUCKET}/tenants/alice/s/")}});
    let stream = json!({"tables": {"events": {"format": "kafka",
                                   "options": {"bootstrap_servers": "127.0.0.1:9", "topic": "t"}}},
                        "stream": {"checkpoint": format!("s3://{BUCKET}/tenants/alice/ck/")},
                        "sql": "SELECT * FROM events", "output": output});
    let (status, message) = as_alice(&api, stream).await;
    assert_eq!(status, 403, "{message}");
    assert!(message.contains("tables.events.options.bootstrap_servers: broker 127.0.0.1:9"), "{message}");
    let files_stream = |checkpoint: String, output: Value| {
        json!({"tables": {"events": {"format": "csv", "location": format!("s3://{BUCKET}/tenants/alice/orders/"),
                                     "stream": true}},
               "stream": {"checkpoint": checkpoint}, "sql": "SELECT * FROM events", "output": output})
    };
    let (status, message) =
        as_alice(&api, files_stream(format!("s3://{BUCKET}/tenants/bob/ck/"), output.clone())).await;
    assert_eq!(status, 403, "{message}");
    assert!(message.contains("stream.checkpoint"), "{message}");
    let (status, message) =
        as_alice(&api, files_stream(format!("s3://{BUCKET}/tenants/alice/ck/"), json!("collect"))).await;
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("collect is for `ignis run`"), "{message}");
    let (status, message) = as_alice(&api, count_job("bob")).await;
    assert_eq!(status, 403, "{message}");
    assert!(message.contains(&format!("s3://{BUCKET}/tenants/alice/")), "names the allowed prefix: {message}");

    // Every bound of the job settings, named with its limit.
    for (config, field) in [
        (json!({"shuffle_partitions": 10_001}), "config.shuffle_partitions"),
        (json!({"batch_size": 100_000_000_000u64}), "config.batch_size"),
        (json!({"max_task_attempts": 17}), "config.max_task_attempts"),
    ] {
        let mut job = count_job("alice");
        job["config"] = config;
        let (status, message) = as_alice(&api, job).await;
        assert_eq!(status, 400, "{field}: {message}");
        assert!(message.contains(field) && message.contains("limit"), "{message}");
    }
    // Session options: what SQL means is the tenant's; the driver's bounds and
    // how Ignis distributes a job are not.
    for (key, value, why) in [
        ("datafusion.sql_parser.recursion_limit", json!(1_000_000), "is a bound of the driver"),
        ("datafusion.optimizer.enable_dynamic_filter_pushdown", json!(true), "is not an option a job may set"),
        ("datafusion.runtime.memory_limit", json!("1T"), "is not an option a job may set"),
        ("datafusion.catalog.information_schema", json!(true), "is not an option a job may set"),
        ("datafusion.execution.target_partitions", json!(100_000), "config.shuffle_partitions"),
    ] {
        let mut job = count_job("alice");
        job["config"] = json!({"options": {key: value}});
        let (status, message) = as_alice(&api, job).await;
        assert_eq!(status, 400, "{key}: {message}");
        assert!(message.contains("config.options") && message.contains(key) && message.contains(why), "{message}");
    }
    let mut long = count_job("alice");
    long["name"] = json!("n".repeat(300));
    let (status, message) = as_alice(&api, long).await;
    assert_eq!((status, message.contains("name")), (400, true), "{message}");
    // A 10 MiB job name: refused from its Content-Length alone, before any of the body is sent.
    let mut huge = count_job("alice");
    huge["name"] = json!("n".repeat(10 << 20));
    let body = huge.to_string();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A collect past --max-result-bytes fails the job and says what to do.
    let all = json!({"tables": {"orders": orders_table("alice")}, "sql": "SELECT * FROM orders",
                     "config": {"backend": "hosts"}});
    let (status, body) = api.request(Method::POST, "/v1/jobs", Some(ALICE), Some(all)).await;
    assert_eq!(status, 202, "{body}");
    let failed = api.wait(ALICE, body["id"].as_str().unwrap()).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("--max-result-bytes") && message.contains("output.write"), "{message}");

    // Another tenant's UDF, by digest or by name, is not there for alice.
    for udf in [bob_digest.as_str(), "bob-udfs"] {
        let mut job = count_job("alice");
        job["udfs"] = json!([udf]);
        let (status, message) = as_alice(&api, job).await;
        assert_eq!(status, 400, "{udf}: {message}");
        assert!(message.contains("was uploaded"), "{message}");
    }

    // Executor credentials: the secret only registers; a host's token acts
    // only as that host; a result for a task it was not given is dropped.
    let (_, listed) = api.request(Method::GET, "/v1/executors", Some(ALICE), None).await;
    let honest = listed["executors"].as_array().unwrap().iter().find(|h| h["name"] == "host-a").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/executors/{honest}/tasks/1/result");
    let (status, _) = api.request(Method::POST, &path, Some(rogue_token), Some(forged.clone())).await;
    assert_eq!(status, 403, "a host's token does not act as another host");
    let (status, _) = api.request(Method::POST, &path, Some(SECRET), Some(forged.clone())).await;
    assert_eq!(status, 403, "the executor secret does not report results");
    let (status, body) = api.request(Method::POST, &own, Some(rogue_token), Some(forged)).await;
    assert_eq!((status, &body["accepted"]), (200, &json!(false)), "a task it no longer holds: {body}");
    let (status, _) = api.request(Method::POST, "/v1/jobs", Some(rogue_token), Some(count_job("alice"))).await;
    assert_eq!(status, 403, "executor tokens cannot use the job API");
    for path in ["/v1/executors", "/metrics"] {
        assert_eq!(api.request(Method::GET, path, None, None).await.0, 401, "{path} needs a key");
    }

    // 200 slow connections that never finish their headers: the driver
    // closes them and keeps answering.
    let mut slow = Vec::new();
    for _ in 0..200 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
            slow.push(stream);
        }
    }
    wait_until("the driver answering beside slow clients", || async {
        api.http.get(format!("{}/healthz", api.base)).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    for mut stream in slow {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "a slow connection was left open");
    }

    // Alice's own work still runs, and writes only under her prefix.
    let own = json!({"tables": {"orders": orders_table("alice")},
                     "sql": "SELECT country, count(*) AS n FROM orders GROUP BY country",
                     "output": {"write": {"format": "parquet",
                                          "location": format!("s3://{BUCKET}/tenants/alice/out/"), "mode": "overwrite"}},
                     "config": {"backend": "hosts"}});
    let (status, body) = api.request(Method::POST, "/v1/jobs", Some(ALICE), Some(own.clone())).await;
    assert_eq!(status, 202, "{body}");
    let done = api.wait(ALICE, body["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");

    // A location another job is writing (it holds the write lock) is refused cleanly, untouched.
    let lock = object_store::path::Path::from(format!("tenants/alice/out/{}", ignis_driver::commit::WRITE_LOCK));
    store.put(&lock, r#"{"job_id":"job-other"}"#.into()).await.unwrap();
    let before = snapshot(store.as_ref(), "tenants/alice/out").await;
    let (status, body) = api.request(Method::POST, "/v1/jobs", Some(ALICE), Some(own.clone())).await;
    assert_eq!(status, 202, "{body}");
    let refused = api.wait(ALICE, body["id"].as_str().unwrap()).await;
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("being written by another job"), "{refused}");
    assert!(snapshot(store.as_ref(), "tenants/alice/out").await == before, "a refused write changed its location");
    store.delete(&lock).await.unwrap();

    // Kept results are bounded per tenant (here: only the newest): alice's
    // first result is gone, bob's only one is not touched by alice's jobs.
    let (status, body) = api.request(Method::GET, &format!("/v1/jobs/{id}/result"), Some(ALICE), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (410, Some("result_evicted")), "{body}");
    let bob_done = api.wait(BOB, &bob_job).await;
    assert_eq!(bob_done["state"], "succeeded", "{bob_done}");
    let (status, body) = api.request(Method::GET, &format!("/v1/jobs/{bob_job}/result"), Some(BOB), None).await;
    assert_eq!((status, &body["rows"][0]["n"]), (200, &json!(20_000)), "{body}");

    // Afterwards: the driver answers, bob's objects and the UDF registry are
    // byte-identical, and memory is near where it started.
    assert_eq!(api.http.get(format!("{}/healthz", api.base)).send().await.unwrap().status(), 200);
    assert!(snapshot(store.as_ref(), "tenants/bob").await == bob_objects, "bob's objects changed");
    assert!(snapshot(store.as_ref(), "_udfs").await == udf_objects, "the UDF registry changed");
    let rss_after = rss_kib(driver_pid);
    assert!(rss_after < rss_before + (128 << 10), "driver memory grew from {rss_before} KiB to {rss_after} KiB");
    assert!(std::fs::metadata("/tmp/ignis-escape.csv").is_err(), "COPY wrote on the driver's disk");
}
