//! Wasm components for tests: the example UDF crates and the test guests in
//! `tests/guests/`, built for wasm32-wasip2 on first use (once per process)
//! into `{target}/wasm-guests`.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers fail the test on any error")]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Float64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::SessionContext;

use crate::cluster::repo_root;

/// The component built from the crate at `crate_dir` (relative to the repository root).
pub fn component(crate_dir: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(crate_dir) {
        return path.clone();
    }
    let dir = repo_root().join(crate_dir);
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("wasm-guests");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "building the Wasm guest {crate_dir} failed (is `rustup target add wasm32-wasip2` done?)"
    );
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let name = manifest
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap()
        .replace('-', "_");
    let path = target.join("wasm32-wasip2/release").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    built.insert(crate_dir.to_owned(), path.clone());
    path
}

/// The Python example `examples/udfs/python-udfs`, built with componentize-py
/// (`$IGNIS_COMPONENTIZE_PY`, which scripts/test installs; pip from the same
/// environment fetches its flatbuffers dependency) once per process.
pub fn python_component() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = built.as_ref() {
        return path.clone();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("wasm-guests");
    let componentize =
        PathBuf::from(std::env::var_os("IGNIS_COMPONENTIZE_PY").unwrap_or_else(|| "componentize-py".into()));
    let pip = componentize.with_file_name("pip");
    let out = target.join("python_udfs.wasm");
    let mut build = Command::new(repo_root().join("examples/udfs/python-udfs/build.sh"));
    build.arg(&out).env("COMPONENTIZE_PY", &componentize).env("PYTHON_UDF_DEPS", target.join("python-deps"));
    if pip.exists() {
        build.env("PIP", &pip);
    }
    let status = build.status().unwrap();
    assert!(
        status.success(),
        "building the Python UDF example failed (scripts/test installs componentize-py; or set IGNIS_COMPONENTIZE_PY)"
    );
    *built = Some(out.clone());
    out
}

/// `normalize` of `examples/udfs/orders-udfs`, as native Rust.
pub fn native_normalize(name: &str) -> String {
    let mut out = String::new();
    let mut pending_dash = false;
    for c in name.trim().chars() {
        if c == ' ' || c == '-' || c == '_' {
            pending_dash = !out.is_empty();
        } else {
            if pending_dash {
                out.push('-');
                pending_dash = false;
            }
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// `with_tax` of the example, as native Rust.
pub fn native_with_tax(price: f64, rate_percent: Option<f64>) -> f64 {
    (price * (1.0 + rate_percent.unwrap_or(0.0) / 100.0) * 100.0).round() / 100.0
}

/// The example's scalar UDFs as native DataFusion UDFs with the same logic:
/// the oracle of the Wasm UDF tests and the baseline of the UDF benchmark.
pub fn register_native_example_udfs(ctx: &SessionContext) {
    let normalize = create_udf(
        "normalize",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let input = datafusion::arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
            let input = input.as_any().downcast_ref::<StringArray>().unwrap();
            let out: StringArray = input.iter().map(|v| v.map(native_normalize)).collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    );
    let with_tax = create_udf(
        "with_tax",
        vec![DataType::Float64, DataType::Float64],
        DataType::Float64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let price = arrays[0].as_any().downcast_ref::<Float64Array>().unwrap();
            let rate = arrays[1].as_any().downcast_ref::<Float64Array>().unwrap();
            let out: Float64Array =
                price.iter().zip(rate.iter()).map(|(p, r)| p.map(|p| native_with_tax(p, r))).collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    );
    ctx.register_udf(normalize);
    ctx.register_udf(with_tax);
}
