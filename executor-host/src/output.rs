//! Result files: a final-stage task writes its partition as one file (one per
//! hive-style directory with `partition_by`) under its attempt's staging
//! directory. The driver commits the accepted attempt.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::csv;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use ignis_core::error::{IgnisError, Result};
use ignis_core::job::Format;
use ignis_core::protocol::WrittenFile;
use ignis_core::store;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tokio::io::AsyncWriteExt;

/// Hive's name for a null partition value, which Spark uses too.
const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

pub(crate) async fn write_files(
    plan: Arc<dyn ExecutionPlan>,
    partition: usize,
    ctx: Arc<TaskContext>,
    staging: &str,
    file_stem: &str,
    format: Format,
    partition_by: &[String],
) -> Result<Vec<WrittenFile>> {
    let schema = plan.schema();
    let (store, staging_path) = store::resolve(ctx.runtime_env().as_ref(), staging)?;
    let split = PartitionSplit::try_new(&schema, partition_by)?;
    let file_name = format!("{file_stem}.{}", format.extension());

    let mut sinks: HashMap<String, FileSink> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    if partition_by.is_empty() {
        // One file per partition, even when it holds no rows.
        sinks.insert(String::new(), FileSink::try_new(format, &store, &staging_path, &file_name, &split.data_schema)?);
        order.push(String::new());
    }
    let written = async {
        let mut stream = plan.execute(partition, ctx)?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(IgnisError::from_datafusion)?;
            for (dir, part) in split.split(&batch)? {
                if !sinks.contains_key(&dir) {
                    let rel = store::join(&dir, &file_name);
                    let sink = FileSink::try_new(format, &store, &staging_path, &rel, &split.data_schema)?;
                    sinks.insert(dir.clone(), sink);
                    order.push(dir.clone());
                }
                if let Some(sink) = sinks.get_mut(&dir) {
                    sink.write(part).await?;
                }
            }
        }
        Ok::<_, IgnisError>(())
    }
    .await;
    if let Err(e) = written {
        for (_, sink) in sinks.drain() {
            sink.abort().await;
        }
        return Err(e);
    }
    let mut files = Vec::with_capacity(order.len());
    for dir in order {
        if let Some(sink) = sinks.remove(&dir) {
            let (rows, bytes) = match sink.finish().await {
                Ok(done) => done,
                Err(e) => {
                    for (_, sink) in sinks.drain() {
                        sink.abort().await;
                    }
                    return Err(e);
                }
            };
            let relative_path = if dir.is_empty() { file_name.clone() } else { format!("{dir}/{file_name}") };
            files.push(WrittenFile { relative_path, rows, bytes });
        }
    }
    Ok(files)
}

/// Splits batches by the values of the `partition_by` columns and drops those
/// columns from the data, as Spark's `partitionBy` does.
struct PartitionSplit {
    key_columns: Vec<(usize, String)>,
    data_columns: Vec<usize>,
    data_schema: SchemaRef,
}

impl PartitionSplit {
    fn try_new(schema: &Schema, partition_by: &[String]) -> Result<Self> {
        let mut key_columns = Vec::with_capacity(partition_by.len());
        for name in partition_by {
            let idx = schema.index_of(name).map_err(|_| {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                IgnisError::Plan(format!(
                    "output.write.partition_by: no column '{name}' in the result (columns: {})",
                    names.join(", ")
                ))
            })?;
            key_columns.push((idx, name.clone()));
        }
        let data_columns: Vec<usize> =
            (0..schema.fields().len()).filter(|i| !key_columns.iter().any(|(k, _)| k == i)).collect();
        if data_columns.is_empty() && !partition_by.is_empty() {
            return Err(IgnisError::Plan(
                "output.write.partition_by: every column is a partition column; no data would be written".into(),
            ));
        }
        let data_schema = Arc::new(schema.project(&data_columns)?);
        Ok(Self { key_columns, data_columns, data_schema })
    }

    /// `(directory, rows)` pairs; the directory is empty without `partition_by`.
    fn split(&self, batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
        let data = batch.project(&self.data_columns)?;
        if self.key_columns.is_empty() {
            return Ok(vec![(String::new(), data)]);
        }
        let options = FormatOptions::default();
        let formatters = self
            .key_columns
            .iter()
            .map(|(i, _)| ArrayFormatter::try_new(batch.column(*i).as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for row in 0..batch.num_rows() {
            let mut dir = String::new();
            for (k, ((col, name), fmt)) in self.key_columns.iter().zip(&formatters).enumerate() {
                if k > 0 {
                    dir.push('/');
                }
                let value = if batch.column(*col).is_null(row) {
                    NULL_PARTITION.to_string()
                } else {
                    escape_path_value(&fmt.value(row).to_string())
                };
                dir.push_str(&format!("{}={value}", escape_path_value(name)));
            }
            let g = *index.entry(dir.clone()).or_insert_with(|| {
                groups.push((dir, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(row as u32);
        }
        groups.into_iter().map(|(dir, rows)| Ok((dir, take_record_batch(&data, &UInt32Array::from(rows))?))).collect()
    }
}

/// Percent-escape the characters Hive and Spark escape in partition paths.
fn escape_path_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if c.is_control() || "\"#%'*/:=?\\\u{7f}{[]^".contains(c) {
            for b in c.to_string().bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    if out.is_empty() { NULL_PARTITION.to_string() } else { out }
}

/// One result file being written: Parquet through its async writer, CSV and
/// JSON encoded a batch at a time; either way the bytes go out through a
/// buffered upload (a multipart upload once they outgrow one part), so a
/// task's memory does not grow with its file.
struct FileSink {
    encoder: Encoder,
    rows: u64,
    /// Bytes encoded (CSV, JSON; a Parquet file's size is asked of the store).
    bytes: u64,
    store: Arc<dyn ObjectStore>,
    path: Path,
}

enum Encoder {
    Parquet(Box<AsyncArrowWriter<BufWriter>>),
    /// `header`: the header line is still to be written (with the first batch).
    Csv {
        out: BufWriter,
        header: bool,
    },
    Json {
        out: BufWriter,
    },
}

impl FileSink {
    fn try_new(
        format: Format,
        store: &Arc<dyn ObjectStore>,
        dir: &Path,
        relative: &str,
        schema: &SchemaRef,
    ) -> Result<Self> {
        let path = relative.split('/').fold(dir.clone(), |p, part| p.join(part));
        let store = store.clone();
        let out = BufWriter::new(store.clone(), path.clone());
        let encoder = match format {
            Format::Parquet => {
                let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
                Encoder::Parquet(Box::new(AsyncArrowWriter::try_new(out, schema.clone(), Some(props))?))
            }
            Format::Csv => Encoder::Csv { out, header: true },
            Format::Json => Encoder::Json { out },
            Format::Kafka => {
                return Err(IgnisError::internal("a task was asked to write Kafka records as files"));
            }
        };
        Ok(Self { encoder, rows: 0, bytes: 0, store, path })
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        match &mut self.encoder {
            Encoder::Parquet(writer) => writer.write(&batch).await?,
            Encoder::Csv { out, header } => {
                let mut writer = csv::WriterBuilder::new().with_header(*header).build(Vec::new());
                writer.write(&batch)?;
                *header = false;
                let encoded = writer.into_inner();
                self.bytes += encoded.len() as u64;
                out.put(encoded.into()).await?;
            }
            Encoder::Json { out } => {
                let mut writer = LineDelimitedWriter::new(Vec::new());
                writer.write(&batch)?;
                writer.finish()?;
                let encoded = writer.into_inner();
                self.bytes += encoded.len() as u64;
                out.put(encoded.into()).await?;
            }
        }
        Ok(())
    }

    /// Complete the upload; returns (rows, bytes).
    async fn finish(self) -> Result<(u64, u64)> {
        match self.encoder {
            Encoder::Parquet(writer) => {
                writer.close().await?;
                Ok((self.rows, self.store.head(&self.path).await?.size))
            }
            Encoder::Csv { mut out, .. } | Encoder::Json { mut out } => {
                out.shutdown().await?;
                Ok((self.rows, self.bytes))
            }
        }
    }

    /// Drop the file's upload after a failure: no parts stay behind.
    async fn abort(self) {
        let out = match self.encoder {
            Encoder::Parquet(writer) => writer.into_inner(),
            Encoder::Csv { out, .. } | Encoder::Json { out } => out,
        };
        let mut out = out;
        if let Err(e) = out.abort().await {
            tracing::warn!(path = %self.path, error = %e, "could not abort a result file's upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_values_are_escaped_like_hive() {
        assert_eq!(escape_path_value("US"), "US");
        assert_eq!(escape_path_value("a/b=c"), "a%2Fb%3Dc");
        assert_eq!(escape_path_value(""), NULL_PARTITION);
    }
}
