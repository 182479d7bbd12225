//! Cost receipts: the object-store requests a job's receipt states are the
//! requests the S3 server saw, kind by kind (moto's request log).

use std::process::Command;

use ignis_tests::cluster::{Processes, s3_env, s3_store, start_s3, upload};

use crate::common::*;

const BUCKET: &str = "receipts";

/// The requests in moto's log lines, by the kind S3 bills them as:
/// (get, put, list, delete).
fn logged_requests(log: &str) -> (u64, u64, u64, u64) {
    let mut counts = (0, 0, 0, 0);
    for line in log.lines() {
        let Some(request) = line.split('"').nth(1) else { continue };
        // Strip the colour codes werkzeug puts around the request line.
        let request: String = request
            .split('\u{1b}')
            .map(|part| if part.starts_with('[') { part.split_once('m').map_or(part, |(_, r)| r) } else { part })
            .collect();
        let mut words = request.split_whitespace();
        let (Some(method), Some(target)) = (words.next(), words.next()) else { continue };
        if !target.starts_with(&format!("/{BUCKET}")) {
            continue;
        }
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        match method {
            "GET" if query.contains("list-type=2") => counts.2 += 1,
            "GET" | "HEAD" => counts.0 += 1,
            "PUT" => counts.1 += 1,
            "POST" if query.starts_with("delete") => counts.3 += 1,
            "POST" => counts.1 += 1,
            "DELETE" => counts.3 += 1,
            other => panic!("unexpected request {other} {target}"),
        }
    }
    counts
}

/// `(get, put, list, delete)` from the summary's receipt line.
fn receipt_requests(stderr: &str) -> (u64, u64, u64, u64) {
    let line = stderr.lines().find(|l| l.starts_with("receipt:")).unwrap_or_else(|| panic!("no receipt: {stderr}"));
    let count = |kind: &str| -> u64 {
        let words: Vec<&str> = line.split([' ', ',', ';']).filter(|w| !w.is_empty()).collect();
        let at = words.iter().position(|w| *w == kind).unwrap_or_else(|| panic!("no {kind} in {line}"));
        words[at - 1].parse().unwrap()
    };
    (count("GET"), count("PUT"), count("LIST"), count("DELETE"))
}

#[tokio::test]
async fn a_jobs_receipt_counts_the_requests_the_store_saw() {
    let ws = orders_workspace();
    let mut procs = Processes::new();
    let endpoint = start_s3(&mut procs, BUCKET).await;
    upload(s3_store(&endpoint, BUCKET).as_ref(), &ws.path().join("data"), "data").await;
    let job = std::fs::read_to_string(ws.path().join("job.toml"))
        .unwrap()
        .replace("location = \"data/\"", &format!("location = \"s3://{BUCKET}/data/\""))
        .replace("location = \"out/us_orders_by_product\"", &format!("location = \"s3://{BUCKET}/out/\""));
    assert!(job.contains("s3://receipts/data/") && job.contains("s3://receipts/out/"), "{job}");
    std::fs::write(ws.path().join("s3.toml"), job).unwrap();

    let before = procs.log("s3").lines().count();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ignis"));
    cmd.args(["run", "s3.toml", "--shuffle-root", &format!("s3://{BUCKET}/shuffle/")]).current_dir(ws.path());
    s3_env(&mut cmd, &endpoint);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log: Vec<String> = procs.log("s3").lines().skip(before).map(String::from).collect();
    let seen = logged_requests(&log.join("\n"));
    let stated = receipt_requests(&stderr(&out));
    assert_eq!(stated, seen, "receipt {stated:?} vs the server's log {seen:?}:\n{}", log.join("\n"));
    // Reads of the tables and shuffle, the shuffle's and output's writes, the
    // listing of the inputs and the clean-up all happened.
    assert!(seen.0 >= 8 && seen.1 >= 8 && seen.2 >= 2 && seen.3 >= 1, "{seen:?}");
    // Priced at the default table: S3 requests cost, local workers do not.
    let err = stderr(&out);
    let estimate: f64 = err.rsplit("estimated $").next().and_then(|e| e.trim().parse().ok()).unwrap();
    let expected = (seen.1 + seen.2) as f64 * 0.005 / 1000.0 + seen.0 as f64 * 0.0004 / 1000.0;
    assert!((estimate - expected).abs() < 1e-6, "estimated {estimate}, expected {expected}: {err}");
}
