//! Object store resolution: every location Ignis reads or writes (tables,
//! shuffle, output) is a URL; the session's object store registry maps it to a
//! store and a path within it.

use std::sync::Arc;

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::{IgnisError, Result};

/// The store that serves `url` and the object path within it.
pub fn resolve(env: &RuntimeEnv, url: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let parsed = url::Url::parse(url).map_err(|e| IgnisError::Input(format!("invalid location URL '{url}': {e}")))?;
    let listing = ListingTableUrl::try_new(parsed, None)?;
    let store = env.object_store(listing.object_store())?;
    Ok((store, listing.prefix().clone()))
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
