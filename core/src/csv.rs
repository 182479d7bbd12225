//! Spark-style CSV reading: `mode` = PERMISSIVE | DROPMALFORMED | FAILFAST,
//! `null_value`, and a corrupt-record column.
//!
//! Used for a table whose options set any of these; other CSV tables use
//! DataFusion's native reader. One partition per file. Each field is read as
//! text and cast to the column type; a field that does not cast, or a row with
//! the wrong number of fields, is malformed:
//! - PERMISSIVE: malformed fields become null; the raw line goes into the
//!   corrupt-record column when one is named.
//! - DROPMALFORMED: the row is skipped and counted (`malformed_rows_dropped`).
//! - FAILFAST: the task fails naming the file, line, column and value.

use std::cell::RefCell;
use std::fmt;
use std::io::Read;
use std::rc::Rc;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, StringArray, StringBuilder};
use datafusion::arrow::compute::{CastOptions, cast_with_options, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream,
};
use futures::{TryStreamExt, stream};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::error::{IgnisError, Result};
use crate::store;

/// The metric a DROPMALFORMED scan counts skipped rows in.
pub const MALFORMED_ROWS_DROPPED: &str = "malformed_rows_dropped";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CsvMode {
    #[default]
    #[serde(rename = "PERMISSIVE", alias = "permissive")]
    Permissive,
    #[serde(rename = "DROPMALFORMED", alias = "dropmalformed")]
    DropMalformed,
    #[serde(rename = "FAILFAST", alias = "failfast")]
    FailFast,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CsvScanOptions {
    pub header: bool,
    pub delimiter: u8,
    pub quote: u8,
    pub escape: Option<u8>,
    /// Fields equal to this are null (empty fields always are).
    pub null_value: Option<String>,
    pub mode: CsvMode,
    /// Name of the extra Utf8 column holding the raw text of malformed rows.
    pub corrupt_column: Option<String>,
}

/// The table as the planner sees it.
#[derive(Debug)]
pub struct CsvTable {
    files: Vec<String>,
    data_schema: SchemaRef,
    schema: SchemaRef,
    options: CsvScanOptions,
}

impl CsvTable {
    pub fn new(files: Vec<String>, data_schema: SchemaRef, options: CsvScanOptions) -> Self {
        let schema = table_schema(&data_schema, &options);
        Self { files, data_schema, schema, options }
    }
}

fn table_schema(data_schema: &SchemaRef, options: &CsvScanOptions) -> SchemaRef {
    match &options.corrupt_column {
        None => data_schema.clone(),
        Some(name) => {
            let mut fields: Vec<Field> = data_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(name, DataType::Utf8, true));
            Arc::new(Schema::new(fields))
        }
    }
}

#[async_trait]
impl TableProvider for CsvTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(CsvScanExec::try_new(
            self.files.clone(),
            self.data_schema.clone(),
            self.options.clone(),
            projection.cloned(),
        )?))
    }
}

#[derive(Debug)]
pub struct CsvScanExec {
    files: Vec<String>,
    data_schema: SchemaRef,
    options: CsvScanOptions,
    projection: Option<Vec<usize>>,
    metrics: ExecutionPlanMetricsSet,
    cache: Arc<PlanProperties>,
}

impl CsvScanExec {
    pub fn try_new(
        files: Vec<String>,
        data_schema: SchemaRef,
        options: CsvScanOptions,
        projection: Option<Vec<usize>>,
    ) -> DfResult<Self> {
        let full = table_schema(&data_schema, &options);
        let schema = match &projection {
            Some(p) => Arc::new(full.project(p)?),
            None => full,
        };
        let cache = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(files.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            files,
            data_schema,
            options,
            projection,
            metrics: ExecutionPlanMetricsSet::new(),
            cache: Arc::new(cache),
        })
    }

    pub fn files(&self) -> &[String] {
        &self.files
    }
    pub fn data_schema(&self) -> &SchemaRef {
        &self.data_schema
    }
    pub fn options(&self) -> &CsvScanOptions {
        &self.options
    }
    pub fn projection(&self) -> Option<&Vec<usize>> {
        self.projection.as_ref()
    }
}

impl DisplayAs for CsvScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CsvScanExec: files={}, mode={:?}", self.files.len(), self.options.mode)
    }
}

impl ExecutionPlan for CsvScanExec {
    crate::leaf_plan_methods!("CsvScanExec");

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let schema = self.cache.eq_properties.schema().clone();
        let Some(file) = self.files.get(partition).cloned() else {
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream::empty())));
        };
        let dropped = MetricBuilder::new(&self.metrics).counter(MALFORMED_ROWS_DROPPED, partition);
        let reader = FileReader {
            file,
            data_schema: self.data_schema.clone(),
            options: self.options.clone(),
            projection: self.projection.clone(),
            batch_size: context.session_config().batch_size(),
        };
        // The file is parsed as it arrives, in a blocking thread, a batch at
        // a time: memory holds a few batches, not the file.
        let batches = stream::once(async move {
            let env = context.runtime_env();
            let (store, path) = store::resolve(&env, &reader.file)?;
            let body = store.get(&path).await?.into_stream().map_err(std::io::Error::other);
            let body = SyncIoBridge::new(StreamReader::new(body));
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(2);
            tokio::task::spawn_blocking(move || {
                let sent = reader.parse(body, &mut |batch, n| {
                    dropped.add(n);
                    batch.num_rows() == 0 || tx.blocking_send(Ok(batch)).is_ok()
                });
                if let Err(e) = sent {
                    let _ = tx.blocking_send(Err(e));
                }
            });
            Ok::<_, IgnisError>(stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) }))
        });
        let batches = futures::TryStreamExt::try_flatten(batches);
        let batches = futures::TryStreamExt::map_err(batches, DataFusionError::from);
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

struct FileReader {
    file: String,
    data_schema: SchemaRef,
    options: CsvScanOptions,
    projection: Option<Vec<usize>>,
    batch_size: usize,
}

/// A reader that keeps a copy of every byte read through it.
struct Recorder<R> {
    inner: R,
    seen: Rc<RefCell<Vec<u8>>>,
}

impl<R: Read> Read for Recorder<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen.borrow_mut().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// Rows of one batch as text, before casting.
struct RawRows {
    columns: Vec<StringBuilder>,
    lines: Vec<u64>,
    raw: Vec<String>,
    /// Rows with the wrong number of fields: (row, fields found).
    bad_width: Vec<(usize, usize)>,
}

impl FileReader {
    /// Parse the file a batch at a time, handing each batch and the rows it
    /// dropped to `emit`, until the file ends or `emit` returns false.
    fn parse(&self, body: impl Read, emit: &mut dyn FnMut(RecordBatch, usize) -> bool) -> Result<()> {
        let o = &self.options;
        // The bytes the parser consumed since `base`: a row's raw text is cut
        // out of them (for the corrupt-record column and error messages).
        let seen = Rc::new(RefCell::new(Vec::new()));
        let mut base = 0usize;
        let mut reader = ::csv::ReaderBuilder::new()
            .has_headers(o.header)
            .delimiter(o.delimiter)
            .quote(o.quote)
            .escape(o.escape)
            .flexible(true)
            .from_reader(Recorder { inner: body, seen: seen.clone() });
        let width = self.data_schema.fields().len();
        let mut record = ::csv::ByteRecord::new();
        loop {
            let mut rows = RawRows {
                columns: (0..width).map(|_| StringBuilder::new()).collect(),
                lines: vec![],
                raw: vec![],
                bad_width: vec![],
            };
            while rows.lines.len() < self.batch_size {
                let start = reader.position().byte() as usize;
                let more = reader
                    .read_byte_record(&mut record)
                    .map_err(|e| IgnisError::Input(format!("{}: {e}", self.file)))?;
                if !more {
                    break;
                }
                let line = record.position().map(|p| p.line()).unwrap_or_default();
                let end = reader.position().byte() as usize;
                let raw = {
                    let seen = seen.borrow();
                    let end = end.saturating_sub(base).min(seen.len());
                    let start = start.saturating_sub(base).min(end);
                    String::from_utf8_lossy(&seen[start..end]).trim_end_matches(['\r', '\n']).to_string()
                };
                self.push_row(&mut rows, &record, line, raw);
            }
            // Forget what the rows of this batch were read from.
            let position = reader.position().byte() as usize;
            {
                let mut seen = seen.borrow_mut();
                let done = position.saturating_sub(base).min(seen.len());
                seen.drain(..done);
            }
            base = position;
            if rows.lines.is_empty() {
                return Ok(());
            }
            let (batch, n) = self.finish_batch(rows)?;
            if !emit(batch, n) {
                return Ok(());
            }
        }
    }

    fn push_row(&self, rows: &mut RawRows, record: &::csv::ByteRecord, line: u64, raw: String) {
        if record.len() != rows.columns.len() {
            rows.bad_width.push((rows.lines.len(), record.len()));
        }
        for (i, builder) in rows.columns.iter_mut().enumerate() {
            match record.get(i).map(String::from_utf8_lossy) {
                Some(v) if !v.is_empty() && self.options.null_value.as_deref() != Some(v.as_ref()) => {
                    builder.append_value(v)
                }
                _ => builder.append_null(),
            }
        }
        rows.lines.push(line);
        rows.raw.push(raw);
    }

    /// Cast the text columns; apply the mode to malformed rows.
    fn finish_batch(&self, mut rows: RawRows) -> Result<(RecordBatch, usize)> {
        let n = rows.lines.len();
        let mut malformed = vec![false; n];
        // The first malformed row, in file order, and why: FAILFAST reports it.
        let mut first: Option<(usize, String)> = None;
        let mut note = |row: usize, why: String| {
            if first.as_ref().is_none_or(|(r, _)| row < *r) {
                first = Some((row, why));
            }
        };
        let width = rows.columns.len();
        for (row, found) in &rows.bad_width {
            malformed[*row] = true;
            note(*row, format!("expected {width} fields, found {found}"));
        }
        let safe = CastOptions { safe: true, ..Default::default() };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(rows.columns.len());
        for (field, builder) in self.data_schema.fields().iter().zip(rows.columns.iter_mut()) {
            let text: StringArray = builder.finish();
            let cast = cast_with_options(&text, field.data_type(), &safe)?;
            for (row, bad) in malformed.iter_mut().enumerate() {
                if text.is_valid(row) && cast.is_null(row) {
                    if !*bad {
                        note(
                            row,
                            format!(
                                "cannot parse '{}' as {} for column '{}'",
                                text.value(row),
                                field.data_type(),
                                field.name()
                            ),
                        );
                    }
                    *bad = true;
                }
            }
            columns.push(cast);
        }
        if self.options.mode == CsvMode::FailFast
            && let Some((row, why)) = first
        {
            return Err(IgnisError::Input(format!("{}: line {}: {why} (mode FAILFAST)", self.file, rows.lines[row])));
        }
        if self.options.corrupt_column.is_some() {
            let corrupt: StringArray =
                rows.raw.iter().zip(&malformed).map(|(raw, bad)| bad.then_some(raw.as_str())).collect();
            columns.push(Arc::new(corrupt));
        }
        let full = table_schema(&self.data_schema, &self.options);
        let mut batch = RecordBatch::try_new(full, columns)?;
        let mut dropped = 0;
        if self.options.mode == CsvMode::DropMalformed {
            dropped = malformed.iter().filter(|m| **m).count();
            let keep: BooleanArray = malformed.iter().map(|m| Some(!m)).collect();
            batch = filter_record_batch(&batch, &keep)?;
        }
        if let Some(p) = &self.projection {
            batch = batch.project(p)?;
        }
        Ok((batch, dropped))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;

    use super::*;

    /// A body that hands out at most 5 bytes per read, as a slow network would.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(5).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// The file is parsed a batch at a time; the raw text of a malformed row
    /// is exact wherever the batch and read boundaries fall.
    #[test]
    fn streamed_parse_keeps_each_bad_rows_raw_text() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let mut text = String::from("id,name\n");
        for i in 0..20 {
            match i {
                7 => text.push_str("seven,\"quoted, with a\nnew line\"\n"),
                13 => text.push_str("13,a,too,wide\r\n"),
                _ => text.push_str(&format!("{i},name {i}\n")),
            }
        }
        let options = CsvScanOptions {
            header: true,
            delimiter: b',',
            quote: b'"',
            escape: None,
            null_value: None,
            mode: CsvMode::Permissive,
            corrupt_column: Some("_corrupt".into()),
        };
        let reader = FileReader { file: "t.csv".into(), data_schema: schema, options, projection: None, batch_size: 3 };
        let mut batches = vec![];
        reader
            .parse(Trickle(text.as_bytes()), &mut |b, _| {
                batches.push(b);
                true
            })
            .unwrap();
        assert_eq!(batches.len(), 7, "20 rows in batches of 3");
        let mut corrupt = vec![];
        let mut ids = vec![];
        for b in &batches {
            ids.extend(b.column(0).as_primitive::<Int64Type>().iter());
            corrupt.extend(b.column(2).as_string::<i32>().iter().flatten().map(String::from));
        }
        assert_eq!(corrupt, ["seven,\"quoted, with a\nnew line\"", "13,a,too,wide"]);
        assert_eq!(ids.len(), 20);
        assert_eq!(ids[7], None);
        assert_eq!(ids[19], Some(19));

        // A consumer that stops early stops the parse.
        let mut seen = 0;
        reader
            .parse(Trickle(text.as_bytes()), &mut |_, _| {
                seen += 1;
                false
            })
            .unwrap();
        assert_eq!(seen, 1);
    }
}
