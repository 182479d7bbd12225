//! Cost receipts: what a job asked of object storage and of its executors,
//! and what that costs at a price table's prices.
//!
//! Every task and every job's driver-side work (planning's listings and
//! footers, the commit, the shuffle clean-up) reads and writes through a
//! [`CountingRegistry`], which counts object-store (not local file) requests
//! the way S3 bills them: GET
//! (GET, HEAD), PUT (PUT, COPY, POST: multipart create, part, complete), LIST
//! (a page of up to 1,000 keys), DELETE (a DeleteObjects batch of up to 1,000
//! keys, an aborted upload).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};
use serde::{Deserialize, Serialize};
use url::Url;

/// Object-store requests by kind, and bytes moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCounts {
    pub get: u64,
    pub put: u64,
    pub list: u64,
    pub delete: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl StoreCounts {
    pub fn add(&mut self, other: &StoreCounts) {
        self.get += other.get;
        self.put += other.put;
        self.list += other.list;
        self.delete += other.delete;
        self.bytes_read += other.bytes_read;
        self.bytes_written += other.bytes_written;
    }
}

/// [`StoreCounts`] as they are counted, shared by the stores of one job or task.
#[derive(Debug, Default)]
pub struct StoreCounters {
    get: AtomicU64,
    put: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    /// Ranged GETs sent a second time, and those that answered first ([`crate::hedge`]).
    pub hedges: Arc<crate::hedge::HedgeCounts>,
}

impl StoreCounters {
    pub fn snapshot(&self) -> StoreCounts {
        StoreCounts {
            get: self.get.load(Ordering::Relaxed),
            put: self.put.load(Ordering::Relaxed),
            list: self.list.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }

    fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// `env` with every store it hands out counted in the returned counters
/// (the stores themselves, their clients and caches, are shared).
pub fn counted(env: &RuntimeEnv) -> (Arc<RuntimeEnv>, Arc<StoreCounters>) {
    let counters = Arc::new(StoreCounters::default());
    let mut env = env.clone();
    env.object_store_registry =
        Arc::new(CountingRegistry { inner: env.object_store_registry.clone(), counters: counters.clone() });
    (Arc::new(env), counters)
}

/// A registry whose stores count their requests.
#[derive(Debug)]
pub struct CountingRegistry {
    inner: Arc<dyn ObjectStoreRegistry>,
    counters: Arc<StoreCounters>,
}

impl ObjectStoreRegistry for CountingRegistry {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    /// Object stores are counted, and their ranged reads hedged (each
    /// request, hedges too, counted); local files are neither billed by the
    /// request nor slow to answer, and are left alone.
    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        let inner = self.inner.get_store(url)?;
        if url.scheme() == "file" {
            return Ok(inner);
        }
        let counting = Arc::new(CountingStore { inner, counters: self.counters.clone() });
        Ok(Arc::new(crate::hedge::HedgingStore::new(counting, self.counters.hedges.clone())))
    }
}

/// A store that counts the requests made through it.
#[derive(Debug)]
struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<StoreCounters>,
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

/// S3 returns at most this many keys per list page and deletes at most this
/// many per DeleteObjects request.
const KEYS_PER_REQUEST: u64 = 1000;

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let c = &self.counters;
        StoreCounters::count(&c.put, 1);
        StoreCounters::count(&c.bytes_written, payload.content_length() as u64);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        StoreCounters::count(&self.counters.put, 1);
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountingUpload { inner, counters: self.counters.clone() }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        StoreCounters::count(&self.counters.get, 1);
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        if !head {
            StoreCounters::count(&self.counters.bytes_read, result.range.end - result.range.start);
        }
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        // The ranges as S3 serves them: near ones merged into one GET.
        let merged = object_store::coalesce_ranges(
            ranges,
            |range| async move {
                StoreCounters::count(&self.counters.get, 1);
                StoreCounters::count(&self.counters.bytes_read, range.end - range.start);
                self.inner.get_range(location, range).await
            },
            object_store::OBJECT_STORE_COALESCE_DEFAULT,
        );
        merged.await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let counters = self.counters.clone();
        let mut seen = 0u64;
        let counted = locations.inspect(move |_| {
            if seen.is_multiple_of(KEYS_PER_REQUEST) {
                StoreCounters::count(&counters.delete, 1);
            }
            seen += 1;
        });
        self.inner.delete_stream(counted.boxed())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        list_pages(self.inner.list(prefix), self.counters.clone())
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        list_pages(self.inner.list_with_offset(prefix, offset), self.counters.clone())
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let result = self.inner.list_with_delimiter(prefix).await?;
        let keys = (result.objects.len() + result.common_prefixes.len()) as u64;
        StoreCounters::count(&self.counters.list, 1 + keys.saturating_sub(1) / KEYS_PER_REQUEST);
        Ok(result)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        StoreCounters::count(&self.counters.put, 1);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        // On S3 a rename is a copy and a delete.
        StoreCounters::count(&self.counters.put, 1);
        StoreCounters::count(&self.counters.delete, 1);
        self.inner.rename_opts(from, to, options).await
    }
}

/// A listing counted as the pages S3 would return: one for the first key
/// (or an empty listing), one more per 1,000 keys.
fn list_pages(
    listing: BoxStream<'static, object_store::Result<ObjectMeta>>,
    counters: Arc<StoreCounters>,
) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
    StoreCounters::count(&counters.list, 1);
    let mut seen = 0u64;
    listing
        .inspect(move |_| {
            seen += 1;
            if seen > 1 && (seen - 1).is_multiple_of(KEYS_PER_REQUEST) {
                StoreCounters::count(&counters.list, 1);
            }
        })
        .boxed()
}

#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    counters: Arc<StoreCounters>,
}

#[async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        StoreCounters::count(&self.counters.put, 1);
        StoreCounters::count(&self.counters.bytes_written, data.content_length() as u64);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        StoreCounters::count(&self.counters.put, 1);
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        StoreCounters::count(&self.counters.delete, 1);
        self.inner.abort().await
    }
}

/// Prices of what a job uses, in US dollars. The defaults are AWS's public
/// list prices for us-east-1 as of 2026-11 (S3 Standard requests: PUT, COPY,
/// POST and LIST $0.005 per 1,000, GET $0.0004 per 1,000, DELETE free;
/// Lambda on arm64: $0.0000133334 per GB-second and $0.20 per million
/// requests); an executor-host slot is priced as one vCPU of an on-demand
/// c7g.large ($0.0725 an hour for 2 vCPUs). Data transfer inside a region is
/// free and storage by the month is not a job's; neither is counted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prices {
    pub s3_put_per_1000: f64,
    pub s3_get_per_1000: f64,
    pub s3_list_per_1000: f64,
    pub s3_delete_per_1000: f64,
    pub lambda_gb_second: f64,
    pub lambda_per_million_invocations: f64,
    pub host_slot_hour: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Self {
            s3_put_per_1000: 0.005,
            s3_get_per_1000: 0.0004,
            s3_list_per_1000: 0.005,
            s3_delete_per_1000: 0.0,
            lambda_gb_second: 0.000_013_333_4,
            lambda_per_million_invocations: 0.20,
            host_slot_hour: 0.036_25,
        }
    }
}

/// What a job used: object-store requests (its tasks' and the driver's),
/// Lambda invocations and GB-seconds, executor-host and local slot-seconds,
/// and the cost of it at [`Prices`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub requests: StoreCounts,
    pub lambda_invocations: u64,
    pub lambda_gb_seconds: f64,
    pub host_slot_seconds: f64,
    /// Time tasks ran on the driver's own workers (not priced).
    pub local_slot_seconds: f64,
    pub estimated_cost_usd: f64,
}

impl Receipt {
    /// Add another receipt's figures (and cost) to this one's.
    pub fn add(&mut self, other: &Receipt) {
        self.requests.add(&other.requests);
        self.lambda_invocations += other.lambda_invocations;
        self.lambda_gb_seconds += other.lambda_gb_seconds;
        self.host_slot_seconds += other.host_slot_seconds;
        self.local_slot_seconds += other.local_slot_seconds;
        self.estimated_cost_usd += other.estimated_cost_usd;
    }

    /// Price the receipt's figures.
    pub fn priced(mut self, prices: &Prices) -> Self {
        let r = &self.requests;
        let per_1000 = |n: u64, price: f64| n as f64 / 1000.0 * price;
        self.estimated_cost_usd = per_1000(r.put, prices.s3_put_per_1000)
            + per_1000(r.get, prices.s3_get_per_1000)
            + per_1000(r.list, prices.s3_list_per_1000)
            + per_1000(r.delete, prices.s3_delete_per_1000)
            + self.lambda_gb_seconds * prices.lambda_gb_second
            + self.lambda_invocations as f64 / 1e6 * prices.lambda_per_million_invocations
            + self.host_slot_seconds / 3600.0 * prices.host_slot_hour;
        self
    }
}

#[cfg(test)]
mod tests {
    use object_store::PutPayload;
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn requests_are_counted_as_s3_bills_them() {
        let counters = Arc::new(StoreCounters::default());
        let store = CountingStore { inner: Arc::new(InMemory::new()), counters: counters.clone() };
        for i in 0..1001 {
            store.put(&Path::from(format!("d/{i}")), PutPayload::from_static(b"abcd")).await.unwrap();
        }
        assert_eq!(store.get(&Path::from("d/7")).await.unwrap().bytes().await.unwrap().len(), 4);
        store.head(&Path::from("d/7")).await.unwrap();
        let listed: Vec<_> = store.list(Some(&Path::from("d"))).collect().await;
        assert_eq!(listed.len(), 1001);
        let paths = futures::stream::iter(listed.into_iter().map(|m| m.map(|m| m.location))).boxed();
        let deleted: Vec<_> = store.delete_stream(paths).collect().await;
        assert_eq!(deleted.len(), 1001);
        let counts = counters.snapshot();
        assert_eq!(counts, StoreCounts { get: 2, put: 1001, list: 2, delete: 2, bytes_read: 4, bytes_written: 4004 },);
        let receipt =
            Receipt { requests: counts, host_slot_seconds: 3600.0, ..Receipt::default() }.priced(&Prices::default());
        let expected = 1.001 * 0.005 + 0.002 * 0.0004 + 0.002 * 0.005 + 0.036_25;
        assert!((receipt.estimated_cost_usd - expected).abs() < 1e-12, "{receipt:?}");
    }
}
