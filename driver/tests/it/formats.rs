//! JSON lines and Parquet tables whose files have different columns: the
//! schemas merge, and a column a file lacks reads as null.

use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;

use crate::common::*;

fn write_parquet(path: &std::path::Path, batch: RecordBatch) {
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn parquet_and_json_schemas_merge_across_files() {
    let ws = tempfile::tempdir().unwrap();
    let p = ws.path().join("p");
    std::fs::create_dir_all(&p).unwrap();
    let s1 =
        Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false), Field::new("b", DataType::Utf8, false)]));
    let b1 = RecordBatch::try_new(
        s1,
        vec![Arc::new(Int64Array::from(vec![1, 2])), Arc::new(StringArray::from(vec!["x", "y"]))],
    )
    .unwrap();
    let s2 =
        Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false), Field::new("c", DataType::Float64, false)]));
    let b2 =
        RecordBatch::try_new(s2, vec![Arc::new(Int64Array::from(vec![3])), Arc::new(Float64Array::from(vec![1.5]))])
            .unwrap();
    write_parquet(&p.join("one.parquet"), b1);
    write_parquet(&p.join("two.parquet"), b2);
    std::fs::create_dir_all(ws.path().join("j")).unwrap();
    std::fs::write(ws.path().join("j/1.json"), "{\"a\":1,\"b\":\"x\"}\n{\"a\":2,\"b\":\"y\"}\n").unwrap();
    std::fs::write(ws.path().join("j/2.json"), "{\"a\":3,\"c\":1.5}\n").unwrap();

    for table in ["p", "j"] {
        let job = format!(
            "sql = \"SELECT a, b, c FROM {table} ORDER BY a\"\n\
             [tables.p]\nformat = 'parquet'\nlocation = 'p/'\n[tables.j]\nformat = 'json'\nlocation = 'j/'\n"
        );
        std::fs::write(ws.path().join("merge.toml"), job).unwrap();
        let out = ignis(&["run", "merge.toml"], ws.path());
        assert!(out.status.success(), "{table}: {}", stderr(&out));
        let rows: Vec<String> = stdout(&out)
            .lines()
            .filter(|l| l.starts_with("| "))
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(rows, vec!["| 1 | x | |", "| 2 | y | |", "| 3 | | 1.5 |"], "{table}");
    }
}
