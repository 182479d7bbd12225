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
use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use ignis_executor::udf::{Component, Instances, UdfHost, functions};
use ignis_tests::guests::{component, native_normalize, native_with_tax, register_native_example_udfs};
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Wasm UDFs vs native DataFusion UDFs: rows/s at batch 8192")]
struct Args {
    #[arg(long, default_value_t = 2_000_000)]
    rows: usize,
    #[arg(long, default_value_t = 8192)]
    batch_size: usize,
    /// Runs per query and engine; the median is reported.
    #[arg(long, default_value_t = 11)]
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

/// Where one Wasm call's time goes, for one batch: the data behind the choice
/// of Arrow IPC bytes as the boundary's representation.
#[derive(Serialize)]
struct Boundary {
    udf: String,
    rows: usize,
    /// `Component::call_scalar` on the batch as a task makes it (an instance
    /// kept from the call before): IPC both ways and the guest's work.
    wasm_call_us: f64,
    /// A call on an empty batch in a new instance: what starting an instance costs.
    new_instance_us: f64,
    /// Host-side IPC: encode the arguments, decode them, encode the result,
    /// decode it (what host and guest do between them on every call).
    ipc_round_trip_us: f64,
    /// Bytes of the argument stream and the result stream.
    ipc_bytes: usize,
    /// The same function natively over the batch.
    native_us: f64,
}

fn encode(batch: &RecordBatch) -> anyhow::Result<Vec<u8>> {
    let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

fn decode(bytes: &[u8]) -> anyhow::Result<RecordBatch> {
    let mut reader = StreamReader::try_new(bytes, None)?;
    reader.next().context("no batch")?.map_err(Into::into)
}

/// Median microseconds of `f` over `n` runs.
fn micros(n: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(times))
}

fn boundary(
    component: &Component,
    name: &str,
    args: RecordBatch,
    native: impl Fn(&RecordBatch) -> ArrayRef,
) -> anyhow::Result<Boundary> {
    let task = Instances::default();
    let result = component.call_scalar(&task, name, &args)?;
    let expected = native(&args);
    anyhow::ensure!(result.column(0).as_ref() == expected.as_ref(), "{name}: Wasm and native disagree on one batch");
    let runs = 200;
    let wasm_call_us = micros(runs, || component.call_scalar(&task, name, &args).map(drop).map_err(Into::into))?;
    let empty = args.slice(0, 0);
    let new_instance_us =
        micros(runs, || component.call_scalar(&Instances::default(), name, &empty).map(drop).map_err(Into::into))?;
    let ipc_bytes = encode(&args)?.len() + encode(&result)?.len();
    let ipc_round_trip_us = micros(runs, || {
        decode(&encode(&args)?)?;
        decode(&encode(&result)?)?;
        Ok(())
    })?;
    let native_us = micros(runs, || {
        native(&args);
        Ok(())
    })?;
    Ok(Boundary {
        udf: name.to_owned(),
        rows: args.num_rows(),
        wasm_call_us,
        new_instance_us,
        ipc_round_trip_us,
        ipc_bytes,
        native_us,
    })
}

/// The benchmark's rows (`product`, `price`; some products null) in batches.
fn batches(rows: usize, batch_size: usize) -> anyhow::Result<Vec<RecordBatch>> {
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
    Ok(batches)
}

fn table(rows: usize, batch_size: usize) -> anyhow::Result<MemTable> {
    let batches = batches(rows, batch_size)?;
    let schema = batches.first().context("no rows")?.schema();
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

    let first = batches(args.batch_size, args.batch_size)?.remove(0);
    let rates: ArrayRef = Arc::new(Float64Array::from(vec![20.0; first.num_rows()]));
    let boundaries = vec![
        boundary(&loaded, "normalize", RecordBatch::try_from_iter([("a", first.column(0).clone())])?, |b| {
            let names = b.column(0).as_any().downcast_ref::<StringArray>().expect("strings");
            Arc::new(names.iter().map(|s| s.map(native_normalize)).collect::<StringArray>())
        })?,
        boundary(
            &loaded,
            "with_tax",
            RecordBatch::try_from_iter([("a", first.column(1).clone()), ("b", rates)])?,
            |b| {
                let prices = b.column(0).as_any().downcast_ref::<Float64Array>().expect("floats");
                Arc::new(prices.iter().map(|p| p.map(|p| native_with_tax(p, Some(20.0)))).collect::<Float64Array>())
            },
        )?,
    ];

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
    md.push_str(
        "\n## One call, taken apart (median µs per batch)\n\n\
         | UDF | rows | Wasm call | new instance (empty call) | IPC round trip (host side) | IPC bytes | native |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for b in &boundaries {
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {} | {:.0} |\n",
            b.udf, b.rows, b.wasm_call_us, b.new_instance_us, b.ipc_round_trip_us, b.ipc_bytes, b.native_us
        ));
    }
    print!("{md}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("udf-results.md"), &md)?;
    let json = serde_json::json!({ "queries": rows, "boundary": boundaries });
    std::fs::write(args.out.join("udf-results.json"), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}
