//! `ShuffleReaderExec`: the leaf that replaces an exchange in the stage that
//! consumes it. Partition `p` streams the pieces listed for `p`, fetched with
//! ranged GETs and decoded from Arrow IPC.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamDecoder;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt, stream};
use object_store::ObjectStoreExt;

use crate::error::{IgnisError, Result};
use crate::ids::StageId;
use crate::protocol::PieceLocation;
use crate::store;

/// Pieces fetched concurrently by one reader partition.
const PREFETCH_PIECES: usize = 4;

#[derive(Debug, Clone)]
pub struct ShuffleReaderExec {
    stage_id: StageId,
    schema: SchemaRef,
    partition_count: usize,
    /// `pieces[p]`: what partition `p` reads; `None` for a partition the
    /// task was not sent. Empty until a task fills it in.
    pieces: Vec<Option<Vec<PieceLocation>>>,
    cache: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl ShuffleReaderExec {
    pub fn new(stage_id: StageId, schema: SchemaRef, partition_count: usize) -> Self {
        let cache = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partition_count),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            stage_id,
            schema,
            partition_count,
            pieces: vec![],
            cache: Arc::new(cache),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The same reader, declaring how its partitions split the rows: those of
    /// a hash exchange hold the rows whose keys hash to them, as the
    /// exchange's did (a union of two such inputs interleaves them, pairing
    /// partitions, only when both say so).
    pub fn with_partitioning(mut self, partitioning: Partitioning) -> Result<Self> {
        if partitioning.partition_count() != self.partition_count {
            return Err(IgnisError::internal(format!(
                "shuffle reader of stage {} has {} partitions, not the {} of {partitioning}",
                self.stage_id,
                self.partition_count,
                partitioning.partition_count()
            )));
        }
        self.cache = Arc::new(self.cache.as_ref().clone().with_partitioning(partitioning));
        Ok(self)
    }

    /// How the reader's partitions split the rows.
    pub fn partitioning(&self) -> &Partitioning {
        &self.cache.partitioning
    }

    /// The same reader with the locations of its input pieces.
    pub fn with_pieces(mut self, pieces: Vec<Option<Vec<PieceLocation>>>) -> Result<Self> {
        if pieces.len() != self.partition_count {
            return Err(IgnisError::Protocol(format!(
                "shuffle reader of stage {} has {} partitions but was given locations for {}",
                self.stage_id,
                self.partition_count,
                pieces.len()
            )));
        }
        self.pieces = pieces;
        Ok(self)
    }

    pub fn stage_id(&self) -> StageId {
        self.stage_id
    }

    pub fn partition_count(&self) -> usize {
        self.partition_count
    }
}

/// One piece's batches. Its GETs are hedged by the task's object store
/// ([`crate::hedge::HedgingStore`]), as every range read of a task is.
pub(crate) async fn read_piece(env: Arc<RuntimeEnv>, piece: PieceLocation) -> Result<Vec<RecordBatch>> {
    let (store, path) = store::resolve(&env, &piece.url)?;
    let bytes = if piece.more.is_empty() {
        store.get_range(&path, piece.offset..piece.offset + piece.length).await?
    } else {
        // A piece uploaded in parts: its stream is the ranges end to end.
        let parts = store.get_ranges(&path, &piece.ranges()).await?;
        let mut joined = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            joined.extend_from_slice(&part);
        }
        bytes::Bytes::from(joined)
    };
    // Decoded in place: uncompressed columns point into the fetched bytes
    // instead of being copied out of them.
    let mut buffer = Buffer::from(bytes);
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::new();
    while !buffer.is_empty() {
        if let Some(batch) = decoder.decode(&mut buffer)? {
            batches.push(batch);
        }
    }
    decoder.finish()?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows as u64 != piece.rows {
        return Err(IgnisError::Input(format!(
            "shuffle piece {} at offset {} holds {rows} rows, expected {}",
            piece.url, piece.offset, piece.rows
        )));
    }
    Ok(batches)
}

impl DisplayAs for ShuffleReaderExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ShuffleReaderExec: stage={}, partitions={}", self.stage_id, self.partition_count)
    }
}

impl ExecutionPlan for ShuffleReaderExec {
    crate::leaf_plan_methods!("ShuffleReaderExec");

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let Some(pieces) = self.pieces.get(partition).and_then(Option::as_ref) else {
            return Err(DataFusionError::Internal(format!(
                "shuffle reader of stage {} has no locations for partition {partition} (a task is sent the \
                 pieces of the partitions its plan reads only)",
                self.stage_id
            )));
        };
        let env = context.runtime_env();
        let pieces: Vec<PieceLocation> = pieces.iter().filter(|p| p.rows > 0).cloned().collect();
        let batches = stream::iter(pieces)
            .map(move |piece| read_piece(env.clone(), piece))
            // Fetch a few pieces ahead (ranged GETs overlap), keeping their order.
            .buffered(PREFETCH_PIECES)
            .map_ok(|batches| stream::iter(batches.into_iter().map(Ok::<_, IgnisError>)))
            .try_flatten()
            .map_err(DataFusionError::from);
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches)))
    }
}
