//! Arrow IPC stream bytes <-> record batches, the boundary's data format.

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;

use crate::Error;

/// The one batch of an IPC stream (an empty batch of the stream's schema if it has none).
pub(crate) fn read_batch(bytes: &[u8]) -> Result<RecordBatch, Error> {
    let mut reader = StreamReader::try_new(bytes, None)?;
    match reader.next() {
        Some(batch) => Ok(batch?),
        None => Ok(RecordBatch::new_empty(reader.schema())),
    }
}

pub(crate) fn write_batch(batch: &RecordBatch) -> Result<Vec<u8>, Error> {
    let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}
