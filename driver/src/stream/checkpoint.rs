//! A stream's checkpoint in object storage (or local files):
//!
//! ```text
//! {checkpoint}/metadata            {"id": "..."}: the stream's id, kept across restarts
//! {checkpoint}/offsets/{N}         batch N's source ranges and starting watermark, written before it runs
//! {checkpoint}/commits/{N}         written when batch N's output is committed
//! {checkpoint}/sources/{N}/{table} batch N's Kafka records as Parquet, read by its tasks
//! {checkpoint}/state/{N}/          the aggregation state after batch N (Parquet, one file per partition)
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnv;
use ignis_core::error::{IgnisError, Result};
use ignis_core::store;
use object_store::{ObjectStoreExt, PutPayload};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What a batch reads, recorded before it runs so that a re-run reads the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchOffsets {
    pub batch: u64,
    /// The watermark (microseconds since the epoch) the batch starts from.
    pub watermark_us: Option<i64>,
    /// The batch whose state this one reads.
    pub state_from: Option<u64>,
    /// The batch whose deduplication keys this one reads.
    #[serde(default)]
    pub seen_from: Option<u64>,
    pub sources: BTreeMap<String, SourceRange>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceRange {
    /// Per partition: `[start, end)` offsets.
    Kafka { topic: String, partitions: Vec<PartitionRange> },
    /// New files, as URLs.
    Files { files: Vec<String> },
}

impl SourceRange {
    pub fn is_empty(&self) -> bool {
        match self {
            SourceRange::Kafka { partitions, .. } => partitions.iter().all(|p| p.end <= p.start),
            SourceRange::Files { files } => files.is_empty(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRange {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// What a committed batch did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BatchCommit {
    pub batch: u64,
    /// The watermark after the batch.
    pub watermark_us: Option<i64>,
    /// Rows kept in the state after the batch (0: no state to read).
    pub state_rows: u64,
    /// Deduplication keys remembered after the batch (0: none to read).
    #[serde(default)]
    pub seen_rows: u64,
    pub input_rows: u64,
    pub late_rows: u64,
    pub output_rows: u64,
    pub duration_ms: u64,
}

pub struct Checkpoint {
    env: Arc<RuntimeEnv>,
    pub url: String,
}

impl Checkpoint {
    pub fn new(env: Arc<RuntimeEnv>, url: &str) -> Self {
        Self { env, url: url.trim_end_matches('/').to_string() }
    }

    pub fn url_of(&self, relative: &str) -> String {
        store::join(&format!("{}/", self.url), relative)
    }

    pub async fn get<T: DeserializeOwned>(&self, relative: &str) -> Result<Option<T>> {
        let url = self.url_of(relative);
        let (store, path) = store::resolve(&self.env, &url)?;
        match store.get(&path).await {
            Ok(got) => {
                let bytes = got.bytes().await?;
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| IgnisError::Input(format!("checkpoint file {url} is damaged: {e}")))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn put<T: Serialize>(&self, relative: &str, value: &T) -> Result<()> {
        let body = serde_json::to_vec_pretty(value).map_err(|e| IgnisError::internal(e.to_string()))?;
        store::write(&self.env, &self.url_of(relative), PutPayload::from(body)).await
    }

    /// Batch numbers with a file under `dir` (`offsets` or `commits`), ascending.
    pub async fn batches(&self, dir: &str) -> Result<Vec<u64>> {
        let url = self.url_of(&format!("{dir}/"));
        let (store, prefix) = store::resolve(&self.env, &url)?;
        let mut out: Vec<u64> = store::list_all(store.as_ref(), &prefix)
            .await?
            .iter()
            .filter_map(|meta| meta.location.filename().and_then(|name| name.parse().ok()))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Delete one object (absent is fine).
    pub async fn delete(&self, relative: &str) -> Result<()> {
        let (store, path) = store::resolve(&self.env, &self.url_of(relative))?;
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete everything under the directory `relative`.
    pub async fn remove(&self, relative: &str) -> Result<()> {
        let url = self.url_of(relative);
        let (store, prefix) = store::resolve(&self.env, &url)?;
        store::delete_prefix(store.as_ref(), &url, &prefix).await
    }
}
