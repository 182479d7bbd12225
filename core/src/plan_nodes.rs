//! The wire form of Ignis's own plan operators: protobuf messages (prost),
//! carried inside datafusion-proto's plan as extension nodes. Schemas and
//! partitionings are datafusion-proto's own messages.

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion_proto::protobuf;

use crate::csv::{CsvMode, CsvScanOptions};
use crate::window_flags::WindowFlags;

#[derive(Clone, PartialEq, prost::Message)]
pub struct IgnisNode {
    #[prost(oneof = "Node", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub node: Option<Node>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Node {
    #[prost(message, tag = "1")]
    ShuffleReader(ShuffleReader),
    #[prost(message, tag = "2")]
    ShuffleWriter(ShuffleWriter),
    #[prost(message, tag = "3")]
    CsvScan(CsvScan),
    #[prost(message, tag = "4")]
    MapBatches(MapBatches),
    #[prost(message, tag = "5")]
    Broadcast(Broadcast),
    #[prost(message, tag = "6")]
    RuntimeFilter(RuntimeFilter),
    #[prost(message, tag = "7")]
    WindowFlags(WindowFlagList),
    #[prost(message, tag = "8")]
    RecursiveQuery(RecursiveQuery),
    #[prost(message, tag = "9")]
    WorkTable(WorkTable),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ShuffleReader {
    #[prost(uint32, tag = "1")]
    pub stage_id: u32,
    #[prost(uint64, tag = "2")]
    pub partitions: u64,
    #[prost(message, optional, tag = "3")]
    pub schema: Option<protobuf::Schema>,
    /// The hash partitioning of a hash exchange's reader; None: unknown.
    #[prost(message, optional, tag = "4")]
    pub partitioning: Option<protobuf::Partitioning>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ShuffleWriter {
    /// None: every row to one output partition.
    #[prost(message, optional, tag = "1")]
    pub partitioning: Option<protobuf::Partitioning>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CsvScan {
    #[prost(string, repeated, tag = "1")]
    pub files: Vec<String>,
    #[prost(message, optional, tag = "2")]
    pub schema: Option<protobuf::Schema>,
    #[prost(message, optional, tag = "3")]
    pub options: Option<CsvOptions>,
    #[prost(message, optional, tag = "4")]
    pub projection: Option<Projection>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CsvOptions {
    #[prost(bool, tag = "1")]
    pub header: bool,
    #[prost(uint32, tag = "2")]
    pub delimiter: u32,
    #[prost(uint32, tag = "3")]
    pub quote: u32,
    #[prost(uint32, optional, tag = "4")]
    pub escape: Option<u32>,
    #[prost(string, optional, tag = "5")]
    pub null_value: Option<String>,
    /// 0 PERMISSIVE, 1 DROPMALFORMED, 2 FAILFAST.
    #[prost(uint32, tag = "6")]
    pub mode: u32,
    #[prost(string, optional, tag = "7")]
    pub corrupt_column: Option<String>,
}

/// Column indices; absent (rather than empty) means every column.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Projection {
    #[prost(uint64, repeated, tag = "1")]
    pub columns: Vec<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MapBatches {
    #[prost(string, tag = "1")]
    pub function: String,
    #[prost(message, optional, tag = "2")]
    pub schema: Option<protobuf::Schema>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Broadcast {
    #[prost(uint64, tag = "1")]
    pub partitions: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RuntimeFilter {
    #[prost(message, repeated, tag = "1")]
    pub on: Vec<KeyPair>,
}

/// A probe-side column and the key column it is filtered by.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyPair {
    #[prost(uint64, tag = "1")]
    pub probe: u64,
    #[prost(uint64, tag = "2")]
    pub key: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WindowFlagList {
    #[prost(message, repeated, tag = "1")]
    pub flags: Vec<WindowFlag>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WindowFlag {
    #[prost(bool, tag = "1")]
    pub reversed: bool,
    #[prost(bool, tag = "2")]
    pub ignore_nulls: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RecursiveQuery {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(bool, tag = "2")]
    pub is_distinct: bool,
    #[prost(message, optional, tag = "3")]
    pub schema: Option<protobuf::Schema>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkTable {
    #[prost(string, tag = "1")]
    pub name: String,
    /// The rows the recursive query feeds it, before its projection.
    #[prost(message, optional, tag = "2")]
    pub rows: Option<protobuf::Schema>,
    #[prost(message, optional, tag = "3")]
    pub projection: Option<Projection>,
}

pub fn schema_to_proto(schema: &Schema) -> DfResult<Option<protobuf::Schema>> {
    Ok(Some(protobuf::Schema::try_from(schema)?))
}

pub fn schema_from_proto(schema: Option<&protobuf::Schema>, node: &str) -> DfResult<SchemaRef> {
    let schema = schema.ok_or_else(|| DataFusionError::Internal(format!("{node} node without a schema")))?;
    Ok(std::sync::Arc::new(Schema::try_from(schema)?))
}

pub fn projection_to_proto(projection: Option<&Vec<usize>>) -> Option<Projection> {
    projection.map(|p| Projection { columns: p.iter().map(|&i| i as u64).collect() })
}

pub fn projection_from_proto(projection: Option<Projection>) -> Option<Vec<usize>> {
    projection.map(|p| p.columns.into_iter().map(|i| i as usize).collect())
}

impl From<&CsvScanOptions> for CsvOptions {
    fn from(o: &CsvScanOptions) -> Self {
        Self {
            header: o.header,
            delimiter: o.delimiter.into(),
            quote: o.quote.into(),
            escape: o.escape.map(u32::from),
            null_value: o.null_value.clone(),
            mode: match o.mode {
                CsvMode::Permissive => 0,
                CsvMode::DropMalformed => 1,
                CsvMode::FailFast => 2,
            },
            corrupt_column: o.corrupt_column.clone(),
        }
    }
}

impl TryFrom<CsvOptions> for CsvScanOptions {
    type Error = DataFusionError;

    fn try_from(o: CsvOptions) -> DfResult<Self> {
        let byte = |v: u32, what: &str| {
            u8::try_from(v).map_err(|_| DataFusionError::Internal(format!("CSV {what} {v} is not a byte")))
        };
        Ok(Self {
            header: o.header,
            delimiter: byte(o.delimiter, "delimiter")?,
            quote: byte(o.quote, "quote")?,
            escape: o.escape.map(|e| byte(e, "escape")).transpose()?,
            null_value: o.null_value,
            mode: match o.mode {
                0 => CsvMode::Permissive,
                1 => CsvMode::DropMalformed,
                2 => CsvMode::FailFast,
                other => return Err(DataFusionError::Internal(format!("unknown CSV mode {other}"))),
            },
            corrupt_column: o.corrupt_column,
        })
    }
}

impl From<&WindowFlags> for WindowFlag {
    fn from(f: &WindowFlags) -> Self {
        Self { reversed: f.reversed, ignore_nulls: f.ignore_nulls }
    }
}

impl From<WindowFlag> for WindowFlags {
    fn from(f: WindowFlag) -> Self {
        Self { reversed: f.reversed, ignore_nulls: f.ignore_nulls }
    }
}
