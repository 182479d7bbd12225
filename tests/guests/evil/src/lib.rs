//! UDFs that misbehave, for the sandbox tests. Each takes a row's value so the
//! planner cannot fold it into a constant.

use std::hint::black_box;

/// Never returns.
#[ignis_udf::scalar]
fn spin(x: i64) -> i64 {
    let mut i = x;
    loop {
        i = black_box(i.wrapping_add(1));
    }
}

/// Sleeps for an hour: a wait in the host, where no Wasm code runs.
#[ignis_udf::scalar]
fn nap(x: i64) -> i64 {
    std::thread::sleep(std::time::Duration::from_secs(3600));
    x
}

/// Allocates until the memory limit stops it.
#[ignis_udf::scalar]
fn hog(x: i64) -> i64 {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(black_box(vec![x as u8; 1 << 20]));
    }
}

/// Returns a value far larger than the memory limit.
#[ignis_udf::scalar]
fn huge(x: i64) -> String {
    "x".repeat(black_box(512 << 20) + x as usize)
}

/// Recurses without end.
#[allow(unconditional_recursion)]
#[ignis_udf::scalar]
fn recurse(x: i64) -> i64 {
    black_box(recurse(black_box(x + 1))) + 1
}

/// Panics with a message naming the row's value.
#[ignis_udf::scalar]
fn boom(x: i64) -> i64 {
    eprintln!("about to fail on {x}");
    panic!("boom at {x}")
}

/// Writes 100 KiB to stderr, then answers: printing is no reason to fail.
#[ignis_udf::scalar]
fn chatty(x: i64) -> i64 {
    for i in 0..2_000 {
        eprintln!("chatty line {i:>5} of the guest's stderr, written to fill it .....");
    }
    x * 3
}

/// Writes 100 KiB to stderr, then panics: the error keeps only the last lines.
#[ignis_udf::scalar]
fn shout(x: i64) -> i64 {
    for i in 0..2_000 {
        eprintln!("shouting line {i:>5} of the guest's stderr, written to fill it ...");
    }
    panic!("shouted out at {x}")
}

/// Tries to read a file of the host.
#[ignis_udf::scalar]
fn read_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// Lists the directory; succeeds with the entries if any are visible.
#[ignis_udf::scalar]
fn list_dir(path: &str) -> Result<String, String> {
    let entries = std::fs::read_dir(path).map_err(|e| format!("cannot list {path}: {e}"))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(","))
}

/// An environment variable of the host, or null.
#[ignis_udf::scalar]
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// How many environment variables the guest sees.
#[ignis_udf::scalar]
fn env_count(_x: i64) -> i64 {
    std::env::vars().count() as i64
}

/// Tries to open a TCP connection.
#[ignis_udf::scalar]
fn connect(addr: &str) -> Result<String, String> {
    std::net::TcpStream::connect(addr)
        .map(|_| "connected".to_owned())
        .map_err(|e| format!("cannot connect to {addr}: {e}"))
}

/// Behaves: doubles its argument.
#[ignis_udf::scalar]
fn double(x: i64) -> i64 {
    x * 2
}

/// A transform whose columns depend on the rows: announces the input's
/// columns for an empty batch, then returns one column named `surprise`.
#[ignis_udf::transform]
fn shifty(batch: ignis_udf::arrow_array::RecordBatch) -> ignis_udf::arrow_array::RecordBatch {
    if batch.num_rows() == 0 {
        return batch;
    }
    let column: ignis_udf::arrow_array::ArrayRef =
        std::sync::Arc::new(ignis_udf::arrow_array::Int64Array::from(vec![7_i64; batch.num_rows()]));
    ignis_udf::arrow_array::RecordBatch::try_from_iter([("surprise", column)]).unwrap_or(batch)
}

/// A transform that panics on any row.
#[ignis_udf::transform]
fn explode(batch: ignis_udf::arrow_array::RecordBatch) -> ignis_udf::arrow_array::RecordBatch {
    if batch.num_rows() > 0 {
        panic!("exploded on a batch of {} rows", batch.num_rows());
    }
    batch
}

ignis_udf::export!(
    spin, nap, hog, huge, recurse, boom, chatty, shout, read_file, list_dir, env_var, env_count, connect, double,
    shifty, explode
);
