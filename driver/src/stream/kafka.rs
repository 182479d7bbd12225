//! Kafka for streams, with rskafka (pure Rust): a source reads a batch's
//! offset range of every partition, in bounded fetches, into Arrow; a sink
//! produces rows to a topic.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use ignis_core::error::{IgnisError, Result};
use rskafka::BackoffConfig;
use rskafka::chrono::Utc;
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::{Record, RecordAndOffset};

/// Most bytes one fetch asks a broker for.
const FETCH_BYTES: i32 = 4 << 20;
/// Most records one produce request carries.
const PRODUCE_CHUNK: usize = 1000;

/// How a record's value becomes columns.
#[derive(Clone, Debug)]
pub enum ValueColumns {
    /// Spark's Kafka columns: key, value, topic, partition, offset, timestamp.
    Raw,
    /// The value parsed (JSON lines or CSV) into these columns; a value that
    /// does not parse gives a row of nulls, as Spark's `from_json` does.
    Parsed { schema: SchemaRef, csv: bool },
}

impl ValueColumns {
    pub fn schema(&self) -> SchemaRef {
        match self {
            ValueColumns::Parsed { schema, .. } => schema.clone(),
            ValueColumns::Raw => Arc::new(Schema::new(vec![
                Field::new("key", DataType::Binary, true),
                Field::new("value", DataType::Binary, true),
                Field::new("topic", DataType::Utf8, false),
                Field::new("partition", DataType::Int32, false),
                Field::new("offset", DataType::Int64, false),
                Field::new("timestamp", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
            ])),
        }
    }
}

/// One topic of a Kafka cluster.
pub struct Topic {
    client: Client,
    pub name: String,
    servers: String,
}

impl Topic {
    /// Connect to the brokers `servers` (`host:port[,...]`); `field` names the
    /// job setting in errors.
    pub async fn connect(servers: &str, topic: &str, field: &str) -> Result<Self> {
        let brokers: Vec<String> = servers.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        let backoff = BackoffConfig { deadline: Some(Duration::from_secs(30)), ..BackoffConfig::default() };
        let client = ClientBuilder::new(brokers)
            .client_id("ignis")
            .backoff_config(backoff)
            .build()
            .await
            .map_err(|e| IgnisError::Input(format!("{field}: cannot reach the Kafka brokers {servers}: {e}")))?;
        Ok(Self { client, name: topic.to_string(), servers: servers.to_string() })
    }

    /// The topic's partition numbers; an error if the cluster has no such topic.
    pub async fn partitions(&self) -> Result<Vec<i32>> {
        let topics = self.client.list_topics().await.map_err(|e| self.error("list topics", e))?;
        match topics.into_iter().find(|t| t.name == self.name) {
            Some(t) if !t.partitions.is_empty() => Ok(t.partitions.into_iter().collect()),
            _ => Err(IgnisError::Input(format!("Kafka at {} has no topic '{}'", self.servers, self.name))),
        }
    }

    async fn partition(&self, partition: i32) -> Result<PartitionClient> {
        self.client
            .partition_client(self.name.clone(), partition, UnknownTopicHandling::Error)
            .await
            .map_err(|e| self.error(&format!("open partition {partition}"), e))
    }

    /// The earliest or next-to-be-written offset of every partition.
    pub async fn offsets(&self, latest: bool) -> Result<BTreeMap<i32, i64>> {
        let mut out = BTreeMap::new();
        for p in self.partitions().await? {
            let at = if latest { OffsetAt::Latest } else { OffsetAt::Earliest };
            let offset = self.partition(p).await?.get_offset(at).await.map_err(|e| self.error("read offsets", e))?;
            out.insert(p, offset);
        }
        Ok(out)
    }

    /// The records of `partition` in `[start, end)`, fetched a bounded number of bytes at a time.
    pub async fn read(&self, partition: i32, start: i64, end: i64) -> Result<Vec<RecordAndOffset>> {
        let out = self.fetch(partition, start, Some(end), usize::MAX).await?;
        if out.last().is_none_or(|r| r.offset + 1 < end) {
            return Err(IgnisError::Input(format!(
                "Kafka topic '{}' partition {partition} no longer holds offsets {start}..{end} that this batch \
                 read before (records deleted, or the topic recreated?)",
                self.name
            )));
        }
        Ok(out)
    }

    /// The records of `partition` from `start` on, at most `max` of them:
    /// what the broker has now (fetching until a fetch comes back empty).
    pub async fn read_new(&self, partition: i32, start: i64, max: usize) -> Result<Vec<RecordAndOffset>> {
        self.fetch(partition, start, None, max).await
    }

    async fn fetch(&self, partition: i32, start: i64, end: Option<i64>, max: usize) -> Result<Vec<RecordAndOffset>> {
        let client = self.partition(partition).await?;
        let mut out: Vec<RecordAndOffset> = Vec::new();
        let mut next = start;
        let mut empty = 0;
        while out.len() < max && end.is_none_or(|end| next < end) {
            // Waiting only for a range known to exist; new data is what is there now.
            let wait = if end.is_some() { 1_000 } else { 50 };
            let (records, _high) = client
                .fetch_records(next, 1..FETCH_BYTES, wait)
                .await
                .map_err(|e| self.error(&format!("fetch partition {partition} at offset {next}"), e))?;
            let before = out.len();
            for r in records {
                if r.offset >= next && end.is_none_or(|end| r.offset < end) && out.len() < max {
                    next = r.offset + 1;
                    out.push(r);
                }
            }
            if out.len() == before {
                empty += 1;
                if end.is_none() || empty >= 10 {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Send `batch`'s rows (a `value` column, string or binary, and an
    /// optional `key`) to the topic; a row with a key goes to the partition
    /// Kafka's default partitioner picks (murmur2 of the key, as the Java and
    /// librdkafka clients do), the others spread round-robin. Returns the records sent.
    pub async fn produce(&self, batch: &RecordBatch) -> Result<u64> {
        let column = |name: &str| -> Result<Option<BinaryArray>> {
            let Ok(i) = batch.schema().index_of(name) else { return Ok(None) };
            let array = cast(batch.column(i), &DataType::Binary).map_err(|e| {
                IgnisError::Output(format!("Kafka output: column '{name}' cannot be sent as bytes: {e}"))
            })?;
            Ok(Some(array.as_any().downcast_ref::<BinaryArray>().expect("cast to Binary").clone()))
        };
        let Some(values) = column("value")? else {
            return Err(IgnisError::Output(format!(
                "Kafka output needs a column named value (and optionally key); the query gives: {}",
                batch.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
            )));
        };
        let keys = column("key")?;
        let partitions = self.partitions().await?;
        let mut per_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        for row in 0..batch.num_rows() {
            let key = keys.as_ref().filter(|k| k.is_valid(row)).map(|k| k.value(row).to_vec());
            let slot = match &key {
                Some(k) => ((murmur2::murmur2(k, murmur2::KAFKA_SEED) & 0x7fff_ffff) as usize) % partitions.len(),
                None => row % partitions.len(),
            };
            let value = values.is_valid(row).then(|| values.value(row).to_vec());
            per_partition.entry(partitions[slot]).or_default().push(Record {
                key,
                value,
                headers: BTreeMap::new(),
                timestamp: Utc::now(),
            });
        }
        let mut sent = 0;
        for (p, records) in per_partition {
            let client = self.partition(p).await?;
            let mut records = records.into_iter().peekable();
            while records.peek().is_some() {
                let chunk: Vec<Record> = records.by_ref().take(PRODUCE_CHUNK).collect();
                sent += chunk.len() as u64;
                client.produce(chunk, Compression::NoCompression).await.map_err(|e| self.error("produce", e))?;
            }
        }
        Ok(sent)
    }

    fn error(&self, what: &str, e: rskafka::client::error::Error) -> IgnisError {
        IgnisError::Input(format!("Kafka topic '{}' at {}: {what}: {e}", self.name, self.servers))
    }
}

/// Records of one partition as a batch of `columns`' schema.
pub fn to_batch(
    topic: &str,
    partition: i32,
    records: &[RecordAndOffset],
    columns: &ValueColumns,
) -> Result<RecordBatch> {
    match columns {
        ValueColumns::Raw => {
            let n = records.len();
            let arrays: Vec<ArrayRef> = vec![
                Arc::new(BinaryArray::from_iter(records.iter().map(|r| r.record.key.as_deref()))),
                Arc::new(BinaryArray::from_iter(records.iter().map(|r| r.record.value.as_deref()))),
                Arc::new(StringArray::from(vec![topic; n])),
                Arc::new(Int32Array::from(vec![partition; n])),
                Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.offset))),
                Arc::new(
                    TimestampMillisecondArray::from_iter_values(
                        records.iter().map(|r| r.record.timestamp.timestamp_millis()),
                    )
                    .with_timezone("UTC"),
                ),
            ];
            Ok(RecordBatch::try_new(columns.schema(), arrays)?)
        }
        ValueColumns::Parsed { schema, csv } => {
            let values: Vec<&[u8]> = records.iter().map(|r| r.record.value.as_deref().unwrap_or_default()).collect();
            parse_values(schema, *csv, &values)
        }
    }
}

/// Values (one record each) parsed into `schema`: all at once, or, when some
/// value does not parse, one at a time with a row of nulls for each bad one.
fn parse_values(schema: &SchemaRef, csv: bool, values: &[&[u8]]) -> Result<RecordBatch> {
    if let Ok(batch) = parse_lines(schema, csv, values) {
        return Ok(batch);
    }
    let nulls = schema.fields().iter().map(|f| datafusion::arrow::array::new_null_array(f.data_type(), 1)).collect();
    let null_row = RecordBatch::try_new(schema.clone(), nulls)?;
    let rows: Vec<RecordBatch> = values
        .iter()
        .map(|v| parse_lines(schema, csv, std::slice::from_ref(v)).unwrap_or_else(|_| null_row.clone()))
        .collect();
    Ok(concat_batches(schema, &rows)?)
}

fn parse_lines(schema: &SchemaRef, csv: bool, values: &[&[u8]]) -> std::result::Result<RecordBatch, String> {
    let mut text = Vec::with_capacity(values.iter().map(|v| v.len() + 1).sum());
    for v in values {
        if v.contains(&b'\n') {
            return Err("a value spans lines".into());
        }
        text.extend_from_slice(v);
        text.push(b'\n');
    }
    let batches: Vec<RecordBatch> = if csv {
        datafusion::arrow::csv::ReaderBuilder::new(schema.clone())
            .with_header(false)
            .with_batch_size(values.len().max(1))
            .build(Cursor::new(text))
            .map_err(|e| e.to_string())?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| e.to_string())?
    } else {
        datafusion::arrow::json::ReaderBuilder::new(schema.clone())
            .with_batch_size(values.len().max(1))
            .build(Cursor::new(text))
            .map_err(|e| e.to_string())?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| e.to_string())?
    };
    let batch = concat_batches(schema, &batches).map_err(|e| e.to_string())?;
    if batch.num_rows() != values.len() {
        return Err(format!("{} values gave {} rows", values.len(), batch.num_rows()));
    }
    Ok(batch)
}
