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
use object_store::PutPayload;

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
        let schema = self.input.schema();
        let batch_size = ctx.session_config().batch_size();
        let options = ipc_options(compression)?;
        let mut pieces: Vec<PieceBuffer> = (0..self.output_partitions())
            .map(|_| PieceBuffer::new(schema.clone(), batch_size, options.clone()))
            .collect();
        let mut partitioner = self.partitioner(partition)?;
        let mut stream = self.input.execute(partition, ctx.clone())?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(IgnisError::from_datafusion)?;
            match partitioner.as_mut() {
                Some(p) => p.partition(batch, |i, b| pieces[i].push(b).map_err(DataFusionError::from))?,
                None => pieces[0].push(batch)?,
            }
        }

        let mut metas = Vec::with_capacity(pieces.len());
        let mut chunks = Vec::with_capacity(pieces.len());
        let mut offset = 0u64;
        for piece in pieces {
            let (bytes, rows) = piece.finish()?;
            let length = bytes.len() as u64;
            metas.push(PieceMeta { offset, length, rows });
            offset += length;
            if length > 0 {
                chunks.push(bytes);
            }
        }
        store::write(ctx.runtime_env().as_ref(), url, PutPayload::from_iter(chunks)).await?;
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
struct PieceBuffer {
    coalescer: BatchCoalescer,
    writer: Option<StreamWriter<Vec<u8>>>,
    schema: SchemaRef,
    options: IpcWriteOptions,
    rows: u64,
}

impl PieceBuffer {
    fn new(schema: SchemaRef, batch_size: usize, options: IpcWriteOptions) -> Self {
        Self { coalescer: BatchCoalescer::new(schema.clone(), batch_size), writer: None, schema, options, rows: 0 }
    }

    fn push(&mut self, batch: RecordBatch) -> datafusion::arrow::error::Result<()> {
        self.coalescer.push_batch(batch)?;
        self.drain()
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

    /// The encoded stream (empty when the partition got no rows) and its row count.
    fn finish(mut self) -> datafusion::arrow::error::Result<(Bytes, u64)> {
        self.coalescer.finish_buffered_batch()?;
        self.drain()?;
        match self.writer {
            None => Ok((Bytes::new(), 0)),
            Some(mut w) => {
                w.finish()?;
                Ok((Bytes::from(w.into_inner()?), self.rows))
            }
        }
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
