//! Wasm UDFs against the same functions as native DataFusion UDFs: rows per
//! second of the example's string scalar (`normalize`) and numeric scalar
//! (`with_tax`) at batch size 8192, in one process, interleaved.
//!
//!     cargo run --release -p ignis-bench --bin udf-bench -- --rows 2000000
//!
//! Both sides run the same query on the same in-memory table on one
//! partition; the difference is the boundary (Arrow IPC into a fresh
//! instance per batch) and the guest's code generation.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use ignis_executor::udf::{UdfHost, functions};
use ignis_tests::guests::{component, register_native_example_udfs};
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Wasm UDFs vs native DataFusion UDFs: rows/s at batch 8192")]
struct Args {
    #[arg(long, default_value_t = 2_000_000)]
    rows: usize,
    #[arg(long, default_value_t = 8192)]
    batch_size: usize,
    /// Runs per query and engine; the median is reported.
    #[arg(long, default_value_t = 5)]
    iterations: usize,
    /// Where udf-results.md and udf-results.json go.
    #[arg(long, default_value = "bench/results")]
    out: std::path::PathBuf,
}

#[derive(Serialize)]
struct Row {
    udf: String,
    native_rows_per_s: f64,
    wasm_rows_per_s: f64,
    /// Wasm time / native time: the target is at most 2.
    ratio: f64,
}

fn table(rows: usize, batch_size: usize) -> anyhow::Result<MemTable> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("product", DataType::Utf8, true),
        Field::new("price", DataType::Float64, true),
    ]));
    let names = [" Big  Widget_", "small-gadget ", "  Mega__Phone", "camera", "Tablet - Pro "];
    let mut batches = Vec::new();
    let mut start = 0;
    while start < rows {
        let n = batch_size.min(rows - start);
        let product: StringArray = (start..start + n)
            .map(|i| (i % 97 != 0).then(|| format!("{}{}", names[i % names.len()], i % 1000)))
            .collect();
        let price: Float64Array = (start..start + n).map(|i| Some((i % 10_000) as f64 * 0.37 + 1.0)).collect();
        batches.push(RecordBatch::try_new(schema.clone(), vec![Arc::new(product), Arc::new(price)])?);
        start += n;
    }
    Ok(MemTable::try_new(schema, vec![batches])?)
}

async fn time(ctx: &SessionContext, sql: &str) -> anyhow::Result<f64> {
    let start = Instant::now();
    ctx.sql(sql).await?.collect().await?;
    Ok(start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = SessionConfig::new().with_target_partitions(1).with_batch_size(args.batch_size);
    let native = SessionContext::new_with_config(config.clone());
    let wasm = SessionContext::new_with_config(config);
    register_native_example_udfs(&native);
    let bytes = std::fs::read(component("examples/udfs/orders-udfs")).context("building the example UDFs")?;
    let loaded = UdfHost::global()?.load(&bytes, None, "orders-udfs")?;
    functions(&loaded)?.scalars.into_iter().for_each(|f| wasm.register_udf(f));
    for ctx in [&native, &wasm] {
        ctx.register_table("t", Arc::new(table(args.rows, args.batch_size)?))?;
    }

    let queries = [
        ("normalize (string)", "SELECT max(normalize(product)) FROM t"),
        ("with_tax (numeric)", "SELECT sum(with_tax(price, 20.0)) FROM t"),
    ];
    let mut rows = Vec::new();
    for (name, sql) in queries {
        // Warm-up, and the same answer on both sides.
        let (a, b) = (native.sql(sql).await?.collect().await?, wasm.sql(sql).await?.collect().await?);
        anyhow::ensure!(a == b, "{name}: native and Wasm disagree");
        let (mut n, mut w) = (Vec::new(), Vec::new());
        for _ in 0..args.iterations {
            n.push(time(&native, sql).await?);
            w.push(time(&wasm, sql).await?);
        }
        let (n, w) = (median(n), median(w));
        rows.push(Row {
            udf: name.to_owned(),
            native_rows_per_s: args.rows as f64 / n,
            wasm_rows_per_s: args.rows as f64 / w,
            ratio: w / n,
        });
    }

    let mut md = format!(
        "# Wasm UDFs vs native DataFusion UDFs\n\n{} rows, batch {}, one partition, median of {} runs.\n\n\
         | UDF | native rows/s | Wasm rows/s | Wasm/native time |\n|---|---:|---:|---:|\n",
        args.rows, args.batch_size, args.iterations
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2}x |\n",
            r.udf, r.native_rows_per_s, r.wasm_rows_per_s, r.ratio
        ));
    }
    print!("{md}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("udf-results.md"), &md)?;
    std::fs::write(args.out.join("udf-results.json"), serde_json::to_string_pretty(&rows)?)?;
    Ok(())
}
