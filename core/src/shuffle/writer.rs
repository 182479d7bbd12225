//! `ShuffleWriterExec`: the root of every stage that feeds another stage (and of
//! the final stage of a `collect` job). Runs its input on one partition and
//! writes the rows, split by the output partitioning, as one shuffle object.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::compute::BatchCoalescer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::CompressionType;
use datafusion::arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::BatchPartitioner;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use object_store::buffered::BufWriter;
use tokio::io::AsyncWriteExt;

use crate::error::{IgnisError, Result};
use crate::job::ShuffleCompression;
use crate::protocol::PieceMeta;
use crate::store;

#[derive(Debug)]
pub struct ShuffleWriterExec {
    input: Arc<dyn ExecutionPlan>,
    /// How rows are split into reduce partitions; `None` writes one piece with
    /// every row (the input of a merge or of the driver's collect).
    partitioning: Option<Partitioning>,
    cache: Arc<PlanProperties>,
}

impl ShuffleWriterExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, partitioning: Option<Partitioning>) -> Result<Self> {
        match &partitioning {
            None | Some(Partitioning::Hash(..)) | Some(Partitioning::RoundRobinBatch(_)) => {}
            Some(other) => {
                return Err(IgnisError::internal(format!("cannot shuffle with partitioning {other}")));
            }
        }
        let cache = PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self { input, partitioning, cache: Arc::new(cache) })
    }

    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    pub fn partitioning(&self) -> Option<&Partitioning> {
        self.partitioning.as_ref()
    }

    /// The number of pieces (reduce partitions) each map task writes.
    pub fn output_partitions(&self) -> usize {
        self.partitioning.as_ref().map(|p| p.partition_count()).unwrap_or(1)
    }

    /// Run the input on `partition` and write the shuffle object at `url`.
    /// Returns one [`PieceMeta`] per reduce partition.
    pub async fn write(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
        url: &str,
        compression: ShuffleCompression,
    ) -> Result<Vec<PieceMeta>> {
        let (store, path) = store::resolve(ctx.runtime_env().as_ref(), url)?;
        let mut upload = Upload { writer: BufWriter::with_capacity(store, path, PART_BYTES), offset: 0 };
        match self.write_pieces(partition, ctx, compression, &mut upload, BUFFERED_PIECE_BYTES).await {
            Ok(metas) => {
                upload.finish().await?;
                Ok(metas)
            }
            Err(e) => {
                // No parts of a failed attempt stay behind in the store.
                if let Err(abort) = upload.writer.abort().await {
                    tracing::warn!(%url, error = %abort, "could not abort the shuffle upload");
                }
                Err(e)
            }
        }
    }

    /// Encode the input into one IPC stream per output partition; whenever
    /// the encoded bytes held exceed `held_limit`, the largest
    /// pieces are uploaded, so a map task's memory does not grow with its
    /// output. A piece uploaded in parts has several byte ranges.
    async fn write_pieces(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
        compression: ShuffleCompression,
        upload: &mut Upload,
        held_limit: usize,
    ) -> Result<Vec<PieceMeta>> {
        let schema = self.input.schema();
        let batch_size = ctx.session_config().batch_size();
        let options = ipc_options(compression)?;
        let mut pieces: Vec<PieceBuffer> = (0..self.output_partitions())
            .map(|_| PieceBuffer::new(schema.clone(), batch_size, options.clone()))
            .collect();
        let mut partitioner = self.partitioner(partition)?;
        let mut stream = self.input.execute(partition, ctx)?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(IgnisError::from_datafusion)?;
            match partitioner.as_mut() {
                Some(p) => p.partition(batch, |i, b| pieces[i].push(b).map_err(DataFusionError::from))?,
                None => pieces[0].push(batch)?,
            }
            let mut held: usize = pieces.iter().map(PieceBuffer::held).sum();
            if held > held_limit {
                let mut largest: Vec<usize> = (0..pieces.len()).collect();
                largest.sort_by_key(|&i| std::cmp::Reverse(pieces[i].held()));
                for i in largest {
                    if held <= held_limit / 2 {
                        break;
                    }
                    held -= pieces[i].held();
                    pieces[i].upload(upload).await?;
                }
            }
        }
        let mut metas = Vec::with_capacity(pieces.len());
        for mut piece in pieces {
            piece.finish()?;
            piece.upload(upload).await?;
            metas.push(piece.meta());
        }
        Ok(metas)
    }

    fn partitioner(&self, partition: usize) -> Result<Option<BatchPartitioner>> {
        Ok(match &self.partitioning {
            None => None,
            Some(Partitioning::Hash(exprs, n)) => {
                Some(BatchPartitioner::new_hash_partitioner(exprs.clone(), *n, Time::new())?)
            }
            Some(Partitioning::RoundRobinBatch(n)) => Some(BatchPartitioner::new_round_robin_partitioner(
                *n,
                Time::new(),
                partition,
                self.input.output_partitioning().partition_count(),
            )),
            Some(other) => return Err(IgnisError::internal(format!("cannot shuffle with {other}"))),
        })
    }
}

fn ipc_options(compression: ShuffleCompression) -> Result<IpcWriteOptions> {
    let codec = match compression {
        ShuffleCompression::Lz4 => Some(CompressionType::LZ4_FRAME),
        ShuffleCompression::Zstd => Some(CompressionType::ZSTD),
        ShuffleCompression::None => None,
    };
    IpcWriteOptions::default()
        .try_with_compression(codec)
        .map_err(|e| IgnisError::internal(format!("shuffle compression {compression:?}: {e}")))
}

/// One reduce partition's rows, coalesced to full batches and encoded as one
/// Arrow IPC stream.
/// Encoded piece bytes a map task holds before it uploads the largest pieces.
const BUFFERED_PIECE_BYTES: usize = 16 << 20;

/// Size of a part of the shuffle object's multipart upload (S3's minimum is
/// 5 MiB); an object smaller than this is written with one PUT.
const PART_BYTES: usize = 8 << 20;

/// The map attempt's shuffle object as it is uploaded: a multipart upload
/// once it outgrows one part, a single PUT otherwise.
struct Upload {
    writer: BufWriter,
    /// Bytes appended so far: the offset of the next range.
    offset: u64,
}

impl Upload {
    /// Append `bytes`; returns the range they occupy in the object.
    async fn append(&mut self, bytes: Vec<u8>) -> Result<[u64; 2]> {
        let range = [self.offset, bytes.len() as u64];
        self.offset += bytes.len() as u64;
        if !bytes.is_empty() {
            self.writer.put(Bytes::from(bytes)).await?;
        }
        Ok(range)
    }

    async fn finish(mut self) -> Result<()> {
        self.writer.shutdown().await?;
        Ok(())
    }
}

/// One output partition's rows: coalesced to full batches, encoded as an
/// Arrow IPC stream whose bytes are uploaded in one or more ranges.
struct PieceBuffer {
    coalescer: BatchCoalescer,
    writer: Option<StreamWriter<Vec<u8>>>,
    schema: SchemaRef,
    options: IpcWriteOptions,
    rows: u64,
    /// Ranges (offset, length) of the object already holding this piece's bytes.
    ranges: Vec<[u64; 2]>,
}

impl PieceBuffer {
    fn new(schema: SchemaRef, batch_size: usize, options: IpcWriteOptions) -> Self {
        Self {
            coalescer: BatchCoalescer::new(schema.clone(), batch_size),
            writer: None,
            schema,
            options,
            rows: 0,
            ranges: Vec::new(),
        }
    }

    fn push(&mut self, batch: RecordBatch) -> datafusion::arrow::error::Result<()> {
        self.coalescer.push_batch(batch)?;
        self.drain()
    }

    /// Encoded bytes not uploaded yet.
    fn held(&self) -> usize {
        self.writer.as_ref().map(|w| w.get_ref().len()).unwrap_or(0)
    }

    fn drain(&mut self) -> datafusion::arrow::error::Result<()> {
        while let Some(batch) = self.coalescer.next_completed_batch() {
            if batch.num_rows() == 0 {
                continue;
            }
            let writer = match &mut self.writer {
                Some(w) => w,
                None => self.writer.insert(StreamWriter::try_new_with_options(
                    Vec::new(),
                    &self.schema,
                    self.options.clone(),
                )?),
            };
            self.rows += batch.num_rows() as u64;
            writer.write(&batch)?;
        }
        Ok(())
    }

    /// Upload the bytes held as the piece's next range.
    async fn upload(&mut self, upload: &mut Upload) -> Result<()> {
        let Some(writer) = self.writer.as_mut() else { return Ok(()) };
        let bytes = std::mem::take(writer.get_mut());
        if !bytes.is_empty() {
            self.ranges.push(upload.append(bytes).await?);
        }
        Ok(())
    }

    /// Encode the last rows and the end of the stream.
    fn finish(&mut self) -> datafusion::arrow::error::Result<()> {
        self.coalescer.finish_buffered_batch()?;
        self.drain()?;
        if let Some(w) = self.writer.as_mut() {
            w.finish()?;
        }
        Ok(())
    }

    fn meta(&self) -> PieceMeta {
        let [offset, length] = self.ranges.first().copied().unwrap_or([0, 0]);
        PieceMeta { offset, length, rows: self.rows, more: self.ranges.iter().skip(1).copied().collect() }
    }
}

impl DisplayAs for ShuffleWriterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.partitioning {
            Some(p) => write!(f, "ShuffleWriterExec: partitioning={p}"),
            None => write!(f, "ShuffleWriterExec: partitioning=single"),
        }
    }
}

impl ExecutionPlan for ShuffleWriterExec {
    crate::unary_plan_methods!("ShuffleWriterExec", |this, input| ShuffleWriterExec::try_new(
        input,
        this.partitioning.clone()
    )?);

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        if let Some(Partitioning::Hash(exprs, _)) = &self.partitioning {
            for e in exprs {
                if f(e)? == TreeNodeRecursion::Stop {
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    /// A shuffle writer is run through [`ShuffleWriterExec::write`] by a task,
    /// which knows where its output goes; executing it as a stream is a bug.
    fn execute(&self, _partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        Err(DataFusionError::Internal("ShuffleWriterExec is run by an Ignis task, not executed as a stream".into()))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_expr::expressions::col;

    use super::*;
    use crate::protocol::PieceLocation;

    /// A map task whose output outgrows the writer's buffer uploads its
    /// pieces in parts; reading every range of each piece gives back exactly
    /// the rows written, partitioned as asked.
    #[tokio::test]
    async fn pieces_uploaded_in_parts_read_back_whole() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Utf8, false),
        ]));
        let batches: Vec<RecordBatch> = (0..25)
            .map(|b| {
                let keys: Vec<i64> = (b * 2_000..(b + 1) * 2_000).collect();
                let values: Vec<String> = keys.iter().map(|k| format!("value number {k}")).collect();
                RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(Int64Array::from(keys)), Arc::new(StringArray::from(values))],
                )
                .unwrap()
            })
            .collect();
        let input = MemorySourceConfig::try_new_exec(&[batches], schema.clone(), None).unwrap();
        let hash = Partitioning::Hash(vec![col("k", &schema).unwrap()], 3);
        let writer = ShuffleWriterExec::try_new(input, Some(hash)).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_file_path(dir.path().join("0.0.arrows")).unwrap().to_string();
        let env = store::runtime_env();
        let ctx = Arc::new(TaskContext::default().with_runtime(env.clone()));
        let (object_store, path) = store::resolve(&env, &url).unwrap();
        let mut upload = Upload { writer: BufWriter::with_capacity(object_store, path, PART_BYTES), offset: 0 };
        let metas = writer.write_pieces(0, ctx, ShuffleCompression::Lz4, &mut upload, 64 << 10).await.unwrap();
        upload.finish().await.unwrap();

        assert_eq!(metas.len(), 3);
        assert!(metas.iter().all(|m| !m.more.is_empty()), "every piece should be in parts: {metas:?}");
        let mut keys = vec![];
        for (partition, meta) in metas.iter().enumerate() {
            let batches = super::super::reader::read_piece(env.clone(), PieceLocation::new(&url, meta)).await.unwrap();
            let mut piece_keys: Vec<i64> = vec![];
            for b in &batches {
                piece_keys.extend(b.column(0).as_primitive::<Int64Type>().values());
                for (k, v) in
                    b.column(0).as_primitive::<Int64Type>().values().iter().zip(b.column(1).as_string::<i32>())
                {
                    assert_eq!(v, Some(format!("value number {k}").as_str()));
                }
            }
            assert!(!piece_keys.is_empty(), "partition {partition} is empty");
            keys.extend(piece_keys);
        }
        keys.sort_unstable();
        assert_eq!(keys, (0..50_000).collect::<Vec<i64>>());
    }
}
