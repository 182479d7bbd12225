//! ExecutePlan operations: each runs in the background and keeps its
//! responses until the client releases them, so a client that lost its
//! stream reattaches (ReattachExecute) and reads on from its last response.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::Stream;
use tokio::sync::watch;
use tonic::Status;

use super::proto::spark::{ExecutePlanResponse, execute_plan_response as epr};
use crate::service::JobEntry;

pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<ExecutePlanResponse, Status>> + Send>>;

pub struct Operation {
    pub id: String,
    pub tags: Vec<String>,
    session_id: String,
    server_id: String,
    state: Mutex<OpState>,
    /// Bumped on every new response and at the end.
    version: watch::Sender<u64>,
    cancelled: AtomicBool,
}

#[derive(Default)]
struct OpState {
    responses: Vec<ExecutePlanResponse>,
    outcome: Option<Result<(), Status>>,
    /// The Ignis job running for it now, to cancel on Interrupt.
    job: Option<Arc<JobEntry>>,
    task: Option<tokio::task::AbortHandle>,
}

impl Operation {
    pub fn new(id: String, tags: Vec<String>, session_id: String, server_id: String) -> Arc<Self> {
        Arc::new(Self {
            id,
            tags,
            session_id,
            server_id,
            state: Mutex::default(),
            version: watch::channel(0).0,
            cancelled: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, OpState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_finished(&self) -> bool {
        self.lock().outcome.is_some()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub fn set_task(&self, task: tokio::task::AbortHandle) {
        self.lock().task = Some(task);
    }

    pub fn set_job(&self, job: Option<Arc<JobEntry>>) {
        self.lock().job = job;
    }

    /// A response of this operation, with its ids.
    pub fn push(&self, response_type: epr::ResponseType) {
        self.push_response(ExecutePlanResponse { response_type: Some(response_type), ..Default::default() });
    }

    /// The schema of the rows that follow, as Spark sends it first.
    pub fn push_schema(&self, schema: super::proto::spark::DataType) {
        self.push_response(ExecutePlanResponse { schema: Some(schema), ..Default::default() });
    }

    fn push_response(&self, mut response: ExecutePlanResponse) {
        response.session_id = self.session_id.clone();
        response.server_side_session_id = self.server_id.clone();
        response.operation_id = self.id.clone();
        response.response_id = ignis_core::ids::JobId::generate().to_string();
        self.lock().responses.push(response);
        self.version.send_modify(|v| *v += 1);
    }

    pub fn finish(&self, outcome: Result<(), Status>) {
        let mut state = self.lock();
        if state.outcome.is_some() {
            return;
        }
        if outcome.is_ok() {
            drop(state);
            self.push(epr::ResponseType::ResultComplete(epr::ResultComplete {}));
            state = self.lock();
        }
        state.outcome = Some(outcome);
        state.job = None;
        drop(state);
        self.version.send_modify(|v| *v += 1);
    }

    /// Stop the operation: cancel its Ignis job, end its task. True when it was still running.
    pub fn interrupt(&self) -> bool {
        self.cancelled.store(true, Ordering::Relaxed);
        let (job, task) = {
            let state = self.lock();
            if state.outcome.is_some() {
                return false;
            }
            (state.job.clone(), state.task.clone())
        };
        if let Some(job) = job {
            job.cancel();
        }
        if let Some(task) = task {
            task.abort();
        }
        self.finish(Err(super::error::cancelled()));
        true
    }

    /// The responses after `last` (all of them when `None`), then the
    /// outcome, waiting for those still to come.
    pub fn stream(self: Arc<Self>, last: Option<String>) -> Result<ResponseStream, Status> {
        let start = match &last {
            None => 0,
            Some(id) => {
                let state = self.lock();
                let at = state.responses.iter().position(|r| &r.response_id == id).ok_or_else(|| {
                    super::error::invalid(format!(
                        "[INVALID_CURSOR.POSITION_NOT_FOUND] response {id} of operation {} is not known",
                        self.id
                    ))
                })?;
                at + 1
            }
        };
        let changes = self.version.subscribe();
        let stream =
            futures::stream::unfold((self, start, changes, false), |(op, next, mut changes, ended)| async move {
                if ended {
                    return None;
                }
                loop {
                    let (item, outcome) = {
                        let state = op.lock();
                        (state.responses.get(next).cloned(), state.outcome.clone())
                    };
                    if let Some(item) = item {
                        return Some((Ok(item), (op, next + 1, changes, false)));
                    }
                    match outcome {
                        Some(Ok(())) => return None,
                        Some(Err(status)) => return Some((Err(status), (op, next, changes, true))),
                        None => {
                            if changes.changed().await.is_err() {
                                return None;
                            }
                        }
                    }
                }
            });
        Ok(Box::pin(stream))
    }
}

/// Rows as the Arrow batches pyspark reads: each an IPC stream of its own.
pub fn arrow_batches(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<epr::ArrowBatch>, datafusion::arrow::error::ArrowError> {
    let mut out = Vec::new();
    let mut offset = 0i64;
    let non_empty: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    if non_empty.is_empty() {
        // The schema still has to reach the client.
        out.push(epr::ArrowBatch { row_count: 0, data: ipc(schema, &[])?, start_offset: Some(0) });
        return Ok(out);
    }
    for batch in non_empty {
        let rows = batch.num_rows() as i64;
        out.push(epr::ArrowBatch { row_count: rows, data: ipc(schema, &[batch])?, start_offset: Some(offset) });
        offset += rows;
    }
    Ok(out)
}

fn ipc(schema: &SchemaRef, batches: &[&RecordBatch]) -> Result<Vec<u8>, datafusion::arrow::error::ArrowError> {
    let mut buffer = Vec::new();
    let mut writer = StreamWriter::try_new(&mut buffer, schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(buffer)
}

/// `df.show()`: the table as Spark draws it, as one string cell.
pub fn show_string(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    num_rows: usize,
    truncate: usize,
    vertical: bool,
) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut more = false;
    'outer: for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            if rows.len() == num_rows {
                more = true;
                break 'outer;
            }
            rows.push(formatters.iter().map(|f| cell(&f.value(row).to_string(), truncate)).collect());
        }
    }
    let names: Vec<String> = schema.fields().iter().map(|f| cell(f.name(), truncate)).collect();
    let text = if vertical { draw_vertical(&names, &rows) } else { draw(&names, &rows, truncate > 0) };
    let footer = if more {
        format!("only showing top {num_rows} row{}\n", if num_rows == 1 { "" } else { "s" })
    } else {
        String::new()
    };
    let out = Arc::new(Schema::new(vec![Field::new("show_string", DataType::Utf8, false)]));
    let column: ArrayRef = Arc::new(StringArray::from(vec![text + &footer]));
    RecordBatch::try_new(out, vec![column])
}

fn cell(value: &str, truncate: usize) -> String {
    let chars: Vec<char> = value.chars().collect();
    if truncate > 0 && chars.len() > truncate {
        if truncate < 4 {
            chars[..truncate].iter().collect()
        } else {
            chars[..truncate - 3].iter().collect::<String>() + "..."
        }
    } else {
        value.to_string()
    }
}

fn draw(names: &[String], rows: &[Vec<String>], right_align: bool) -> String {
    let width = |s: &str| s.chars().count();
    let widths: Vec<usize> = (0..names.len())
        .map(|i| rows.iter().map(|r| width(&r[i])).chain([width(&names[i]), 3]).max().unwrap_or(3))
        .collect();
    let line: String = widths.iter().map(|w| format!("+{}", "-".repeat(*w))).collect::<String>() + "+\n";
    let pad = |s: &str, w: usize| {
        let fill = " ".repeat(w.saturating_sub(width(s)));
        if right_align { format!("{fill}{s}") } else { format!("{s}{fill}") }
    };
    let render = |cells: &[String]| -> String {
        cells.iter().zip(&widths).map(|(c, w)| format!("|{}", pad(c, *w))).collect::<String>() + "|\n"
    };
    let mut out = line.clone();
    out.push_str(&render(names));
    out.push_str(&line);
    for row in rows {
        out.push_str(&render(row));
    }
    out.push_str(&line);
    out
}

fn draw_vertical(names: &[String], rows: &[Vec<String>]) -> String {
    let name_width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        out.push_str(&format!("-RECORD {i}{}\n", "-".repeat(name_width.saturating_sub(2))));
        for (name, value) in names.iter().zip(row) {
            out.push_str(&format!(" {name:<name_width$} | {value}\n"));
        }
    }
    if rows.is_empty() {
        out.push_str("(0 rows)\n");
    }
    out
}

/// Columns pyspark cannot read (view and large strings, unsigned integers,
/// nanosecond timestamps) cast to ones it can.
pub fn spark_friendly(t: &DataType) -> Option<DataType> {
    use datafusion::arrow::datatypes::TimeUnit;
    Some(match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        DataType::UInt64 => DataType::Decimal128(20, 0),
        DataType::Float16 => DataType::Float32,
        DataType::Date64 => DataType::Date32,
        DataType::Timestamp(TimeUnit::Nanosecond | TimeUnit::Millisecond | TimeUnit::Second, tz) => {
            DataType::Timestamp(TimeUnit::Microsecond, tz.clone())
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_draws_like_spark() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("product", DataType::Utf8, true),
            Field::new("count", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("kettle"), None])),
                Arc::new(datafusion::arrow::array::Int64Array::from(vec![3, 12])),
            ],
        )
        .ok();
        let shown = batch.and_then(|b| show_string(&schema, &[b], 20, 20, false).ok());
        let text = shown.map(|b| b.column(0).as_any().downcast_ref::<StringArray>().map(|a| a.value(0).to_string()));
        let expected =
            "+-------+-----+\n|product|count|\n+-------+-----+\n| kettle|    3|\n|   NULL|   12|\n+-------+-----+\n";
        assert_eq!(text.flatten().as_deref(), Some(expected));
    }
}
