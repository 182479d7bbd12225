//! Helpers: an example workspace in a temp dir, the CLI, reading results.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("driver crate has a parent").to_path_buf()
}

/// A temp dir holding a copy of `examples/orders` (job files and data).
pub fn orders_workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&repo_root().join("examples/orders"), dir.path());
    // Outputs of earlier local runs are not part of the example.
    let _ = std::fs::remove_dir_all(dir.path().join("out"));
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read example dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Run the real `ignis` binary.
pub fn ignis(args: &[&str], cwd: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ignis"))
        .args(args)
        .current_dir(cwd)
        .env("IGNIS_SHUFFLE_ROOT", cwd.join("_shuffle"))
        .output()
        .expect("run ignis")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Per-product count of US orders, computed from the CSV files by hand.
pub fn us_orders_by_product(data_dir: &Path) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for entry in std::fs::read_dir(data_dir).expect("data dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read csv");
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split(',').collect();
            if fields[1] == "US" {
                *counts.entry(fields[2].to_string()).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// Data files under an output directory (relative paths, sorted), skipping
/// `_`-prefixed names.
pub fn data_files(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read output dir") {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('_') || name.starts_with('.') {
                continue;
            }
            if e.file_type().expect("type").is_dir() {
                walk(base, &e.path(), out);
            } else {
                out.push(e.path().strip_prefix(base).expect("prefix").to_string_lossy().into_owned());
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).expect("open parquet");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader");
    reader.collect::<Result<Vec<_>, _>>().expect("read parquet")
}

/// (string key column, int64 value column) pairs from every data file under `dir`.
pub fn read_counts(dir: &Path, key: &str, value: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for f in data_files(dir) {
        for batch in read_parquet(&dir.join(&f)) {
            let k = batch.column_by_name(key).expect("key column");
            let k = datafusion::arrow::compute::cast(k, &datafusion::arrow::datatypes::DataType::Utf8).expect("cast");
            let k = k.as_string::<i32>();
            let v = batch.column_by_name(value).expect("value column").as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                assert!(!k.is_null(i));
                let prev = out.insert(k.value(i).to_string(), v.value(i));
                assert!(prev.is_none(), "key {} appears twice in the output", k.value(i));
            }
        }
    }
    out
}

/// Every file under `dir` with its bytes, for before/after comparisons.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(base, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(base).expect("prefix").to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(e.path()).expect("read"));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}
