//! Object store resolution: every location Ignis reads or writes (tables,
//! shuffle, output) is a URL; the session's object store registry maps it to a
//! store and a path within it.

use std::sync::{Arc, OnceLock};

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::cache::cache_manager::{CacheManager, CacheManagerConfig};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;

use crate::error::{IgnisError, Result};

/// The runtime every Ignis job and task uses: local files plus `s3://`
/// buckets, each S3 store built on first use from the standard AWS
/// environment.
///
/// Every runtime of a process shares one cache of Parquet footers and one of
/// file statistics ([`shared_caches`]), so a long-lived driver or executor
/// reads a table's metadata once, not once per job and task. Entries are
/// checked against the object's size and modification time on every use, so
/// rewritten files are read afresh. Directory listings are not cached: a job
/// must see the files an earlier job just wrote.
pub fn runtime_env() -> Arc<RuntimeEnv> {
    let registry = Arc::new(StoreRegistry::default());
    let mut caches = CacheManagerConfig::default().with_list_files_cache_limit(0);
    if let Some(shared) = shared_caches() {
        caches = caches
            .with_file_metadata_cache(Some(shared.get_file_metadata_cache()))
            .with_file_statistics_cache(shared.get_file_statistic_cache());
    }
    let built = RuntimeEnvBuilder::new().with_object_store_registry(registry).with_cache_manager(caches).build_arc();
    // Building a runtime with only a registry cannot fail; fall back to the default if it ever does.
    built.unwrap_or_else(|_| Arc::new(RuntimeEnv::default()))
}

/// The process's metadata caches (DataFusion's default sizes: 50 MiB of
/// footers, 20 MiB of statistics, least recently used out first); `None`
/// only if DataFusion could not build them, and then nothing is shared.
fn shared_caches() -> Option<&'static CacheManager> {
    static CACHES: OnceLock<Option<Arc<CacheManager>>> = OnceLock::new();
    CACHES
        .get_or_init(|| CacheManager::try_new(&CacheManagerConfig::default().with_list_files_cache_limit(0)).ok())
        .as_deref()
}

/// Object stores by URL: the local filesystem, and S3 buckets configured the
/// AWS way (`AWS_ENDPOINT_URL`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, or the
/// container and instance credential providers).
#[derive(Debug, Default)]
pub struct StoreRegistry {
    known: DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for StoreRegistry {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.known.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.known.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.known.get_store(url) {
            return Ok(store);
        }
        match url.scheme() {
            "s3" | "s3a" => {
                let store = s3_store(url).map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
                self.known.register_store(url, store.clone());
                Ok(store)
            }
            scheme => Err(datafusion::error::DataFusionError::External(Box::new(IgnisError::Input(format!(
                "unsupported storage scheme '{scheme}' in {url}: use file:// or s3://"
            ))))),
        }
    }
}

/// The one retry policy of every object-store request Ignis makes: table
/// reads, shuffle writes and reads, output files, the commit and the
/// driver's journal. A request that fails transiently (connection refused,
/// reset or dropped, HTTP 5xx and 429 / SlowDown, a read that timed out) is
/// sent again up to 10 times,
/// after a backoff that starts at 100 ms and doubles up to 15 s with random
/// jitter, for at most 3 minutes in all. Other errors (403, 404, a bad
/// request) fail at once. (object_store's `RetryConfig`, stated here rather
/// than left to the crate's defaults.)
pub fn retry_policy() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 10,
        retry_timeout: std::time::Duration::from_secs(180),
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(15),
            base: 2.0,
        },
    }
}

fn s3_store(url: &Url) -> Result<Arc<dyn ObjectStore>> {
    let bucket = url
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| IgnisError::Input(format!("S3 location {url} names no bucket")))?;
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    // `from_env` reads AWS_DEFAULT_REGION; the AWS SDKs also honour AWS_REGION.
    if let Ok(region) = std::env::var("AWS_REGION") {
        builder = builder.with_region(region);
    }
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3").or_else(|_| std::env::var("AWS_ENDPOINT_URL")).ok();
    if let Some(endpoint) = endpoint {
        // An explicit endpoint is an S3-compatible server: path-style
        // addressing, and plain HTTP when the URL says so.
        builder = builder
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false)
            .with_endpoint(endpoint);
    }
    let store = builder
        .with_retry(retry_policy())
        .build()
        .map_err(|e| IgnisError::Input(format!("cannot use S3 bucket '{bucket}': {e}")))?;
    Ok(Arc::new(store))
}

/// The store that serves `url` and the object path within it.
pub fn resolve(env: &RuntimeEnv, url: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let parsed = url::Url::parse(url).map_err(|e| IgnisError::Input(format!("invalid location URL '{url}': {e}")))?;
    let listing = ListingTableUrl::try_new(parsed, None)?;
    let store = env.object_store(listing.object_store())?;
    Ok((store, listing.prefix().clone()))
}

/// The whole object at `url`.
pub async fn read(env: &RuntimeEnv, url: &str) -> Result<bytes::Bytes> {
    let (store, path) = resolve(env, url)?;
    Ok(store.get(&path).await?.bytes().await?)
}

/// Write the object at `url`, replacing any that is there.
pub async fn write(env: &RuntimeEnv, url: &str, payload: object_store::PutPayload) -> Result<()> {
    let (store, path) = resolve(env, url)?;
    store.put(&path, payload).await?;
    Ok(())
}

/// `base` joined with a relative `/`-separated path.
pub fn join(base: &str, relative: &str) -> String {
    let base = base.trim_end_matches('/');
    let relative = relative.trim_start_matches('/');
    if relative.is_empty() { base.to_string() } else { format!("{base}/{relative}") }
}

/// Every object below `prefix` (recursively).
pub async fn list_all(store: &dyn ObjectStore, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>> {
    let list = store.list(Some(prefix)).try_collect::<Vec<_>>().await;
    match list {
        Ok(v) => Ok(v),
        Err(object_store::Error::NotFound { .. }) => Ok(vec![]),
        Err(e) => Err(e.into()),
    }
}

/// Delete every object below `prefix`; for local directories also remove the
/// directories left empty, so nothing of a failed or finished job stays behind.
pub async fn delete_prefix(store: &dyn ObjectStore, url: &str, prefix: &Path) -> Result<()> {
    for meta in list_all(store, prefix).await? {
        match store.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Ok(parsed) = url::Url::parse(url)
        && parsed.scheme() == "file"
        && let Ok(dir) = parsed.to_file_path()
    {
        remove_empty_dirs(&dir);
    }
    Ok(())
}

fn remove_empty_dirs(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    // Fails harmlessly when the directory is not empty or does not exist.
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_handles_slashes() {
        assert_eq!(join("file:///a/", "/b/c"), "file:///a/b/c");
        assert_eq!(join("s3://bucket/x", "y"), "s3://bucket/x/y");
    }
}
