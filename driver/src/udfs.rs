//! The UDF registry: Wasm components tenants upload, stored content-addressed
//! under the driver's `udf_root` (a directory or an object store URL):
//!
//! ```text
//! {udf_root}/components/<sha256 hex>.wasm      the bytes, written once
//! {udf_root}/names/<tenant>/<name>.json        a tenant's name -> digest + functions
//! ```
//!
//! Jobs name components (`udfs = ["my-udfs"]`) or give their digest; the
//! driver loads them to plan with their functions and sends executors each
//! component's digest and URL, which they fetch and cache by digest.

use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::Volatility;
use ignis_core::error::{IgnisError, Result};
use ignis_core::job::is_wasm_path;
use ignis_core::protocol::UdfRef;
use ignis_core::store;
use ignis_executor::udf::{Component, FunctionKind, UdfHost, digest_of};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

/// The tenant of local mode (`ignis run`, `ignis udf upload` without a driver).
pub const LOCAL_TENANT: &str = "local";

/// An uploaded component as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RegisteredUdf {
    pub name: String,
    pub digest: String,
    pub bytes: u64,
    pub functions: Vec<FunctionView>,
}

/// One function of a component: its SQL name and signature in Arrow types.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FunctionView {
    pub name: String,
    /// `scalar`, `aggregate` or `transform`.
    pub kind: String,
    pub arguments: Vec<String>,
    pub returns: Option<String>,
    pub volatility: String,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct UdfRegistry {
    root: String,
    env: Arc<RuntimeEnv>,
}

impl UdfRegistry {
    pub fn new(root: String, env: Arc<RuntimeEnv>) -> Self {
        Self { root, env }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    fn component_url(&self, digest: &str) -> String {
        store::join(&self.root, &format!("components/{}.wasm", digest.trim_start_matches("sha256:")))
    }

    fn name_url(&self, tenant: &str, name: &str) -> String {
        store::join(&self.root, &format!("names/{tenant}/{name}.json"))
    }

    /// Validate a component (a component, of this host's world and version,
    /// whose `describe` works), check its function names are not taken by
    /// another of the tenant's components, and store it under `name`. Uploading
    /// new bytes under an existing name replaces that name's component.
    pub async fn upload(&self, tenant: &str, name: &str, bytes: bytes::Bytes) -> Result<RegisteredUdf> {
        check_component_name(name)?;
        let component = load_blocking(bytes.clone(), None, name.to_owned()).await?;
        let registered = RegisteredUdf {
            name: name.to_owned(),
            digest: component.digest().to_owned(),
            bytes: bytes.len() as u64,
            functions: function_views(&component),
        };
        for other in self.list(tenant).await? {
            if other.name == name {
                continue;
            }
            for f in &registered.functions {
                if other.functions.iter().any(|g| g.name == f.name) {
                    return Err(IgnisError::Udf(format!(
                        "function '{}' is already defined by component '{}' of this tenant; function names \
                         must be unique per tenant (rename it, or upload under the name '{}' to replace it)",
                        f.name, other.name, other.name
                    )));
                }
            }
        }
        self.put_component(&registered.digest, bytes).await?;
        let json = serde_json::to_vec_pretty(&registered).map_err(|e| IgnisError::internal(e.to_string()))?;
        store::write(&self.env, &self.name_url(tenant, name), json.into()).await?;
        Ok(registered)
    }

    async fn put_component(&self, digest: &str, bytes: bytes::Bytes) -> Result<String> {
        let url = self.component_url(digest);
        let (object_store, path) = store::resolve(&self.env, &url)?;
        if object_store.head(&path).await.is_err() {
            store::write(&self.env, &url, bytes.into()).await?;
        }
        Ok(url)
    }

    /// Remove the tenant's name `name` (its functions can then be defined by
    /// another component); `None` when there is no such name. The bytes stay
    /// stored by digest: jobs that name the digest still run.
    pub async fn remove(&self, tenant: &str, name: &str) -> Result<Option<RegisteredUdf>> {
        check_component_name(name)?;
        let Some(registered) = self.entry(tenant, name).await? else {
            return Ok(None);
        };
        let (object_store, path) = store::resolve(&self.env, &self.name_url(tenant, name))?;
        object_store.delete(&path).await?;
        Ok(Some(registered))
    }

    /// The tenant's entry for `name`; `None` when there is none to read.
    async fn entry(&self, tenant: &str, name: &str) -> Result<Option<RegisteredUdf>> {
        let url = self.name_url(tenant, name);
        let Ok(bytes) = store::read(&self.env, &url).await else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| IgnisError::internal(format!("registry entry {url} is unreadable: {e}")))
    }

    /// The tenant's components, by name.
    pub async fn list(&self, tenant: &str) -> Result<Vec<RegisteredUdf>> {
        let prefix_url = store::join(&self.root, &format!("names/{tenant}/"));
        let (object_store, prefix) = store::resolve(&self.env, &prefix_url)?;
        let mut out = Vec::new();
        for meta in store::list_all(object_store.as_ref(), &prefix).await? {
            if !meta.location.as_ref().ends_with(".json") {
                continue;
            }
            let bytes = object_store.get(&meta.location).await?.bytes().await?;
            match serde_json::from_slice::<RegisteredUdf>(&bytes) {
                Ok(udf) => out.push(udf),
                Err(e) => tracing::warn!(object = %meta.location, error = %e, "unreadable UDF registry entry"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Turn a job's `udfs` entries into component references: a name is looked
    /// up among the tenant's components, a digest must be stored, and a
    /// `.wasm` path (local mode) is stored by its digest first.
    pub async fn resolve(&self, tenant: &str, entries: &[String]) -> Result<Vec<UdfRef>> {
        let mut refs: Vec<UdfRef> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let mut label = entry.clone();
            let digest = if is_wasm_path(entry) {
                label = std::path::Path::new(entry)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| entry.clone());
                let bytes = std::fs::read(entry)
                    .map_err(|e| IgnisError::Job(format!("udfs[{i}]: cannot read component {entry}: {e}")))?;
                let digest = digest_of(&bytes);
                self.put_component(&digest, bytes.into()).await?;
                digest
            } else if let Some(hex) = entry.strip_prefix("sha256:") {
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(IgnisError::Job(format!("udfs[{i}]: {entry:?} is not a sha256 digest")));
                }
                let digest = entry.to_ascii_lowercase();
                let (object_store, path) = store::resolve(&self.env, &self.component_url(&digest))?;
                // A tenant runs only what it uploaded itself; local mode has one user.
                let owned = tenant == LOCAL_TENANT || self.list(tenant).await?.iter().any(|u| u.digest == digest);
                if !owned || object_store.head(&path).await.is_err() {
                    return Err(IgnisError::Job(format!("udfs[{i}]: no component with digest {entry} was uploaded")));
                }
                label = digest.chars().take(19).collect();
                digest
            } else {
                let found = match check_component_name(entry) {
                    Ok(()) => self.entry(tenant, entry).await?,
                    Err(_) => None,
                };
                let Some(registered) = found else {
                    return Err(IgnisError::Job(format!(
                        "udfs[{i}]: no component named {entry:?} was uploaded (see `ignis udf list`, GET /v1/udfs)"
                    )));
                };
                registered.digest
            };
            if !refs.iter().any(|r| r.digest == digest) {
                refs.push(UdfRef { url: self.component_url(&digest), digest, label });
            }
        }
        Ok(refs)
    }

    /// Load the components of a job, checking no function name is defined twice.
    pub async fn load(&self, refs: &[UdfRef]) -> Result<Vec<Arc<Component>>> {
        let host = UdfHost::global()?;
        let mut components: Vec<Arc<Component>> = Vec::with_capacity(refs.len());
        for r in refs {
            let component = match host.get(&r.digest) {
                Some(c) => c,
                None => {
                    let bytes = store::read(&self.env, &r.url).await?;
                    load_blocking(bytes, Some(r.digest.clone()), r.label.clone()).await?
                }
            };
            for f in component.functions() {
                if let Some(other) = components.iter().find(|c| c.function(&f.name).is_some()) {
                    return Err(IgnisError::Job(format!(
                        "udfs: function '{}' is defined by two of the job's components ({} and {})",
                        f.name,
                        other.digest(),
                        component.digest()
                    )));
                }
            }
            components.push(component);
        }
        Ok(components)
    }
}

async fn load_blocking(bytes: bytes::Bytes, digest: Option<String>, label: String) -> Result<Arc<Component>> {
    let host = UdfHost::global()?;
    tokio::task::spawn_blocking(move || host.load(&bytes, digest.as_deref(), &label))
        .await
        .map_err(|e| IgnisError::internal(format!("loading a component panicked: {e}")))?
}

fn check_component_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(IgnisError::Job(format!(
            "component name {name:?} must be 1-64 letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

fn function_views(component: &Component) -> Vec<FunctionView> {
    component
        .functions()
        .iter()
        .map(|f| {
            let (kind, arguments, returns) = match &f.kind {
                FunctionKind::Scalar { arguments, returns } => ("scalar", arguments.clone(), Some(returns)),
                FunctionKind::Aggregate { arguments, returns } => ("aggregate", arguments.clone(), Some(returns)),
                FunctionKind::Transform => ("transform", Vec::new(), None),
            };
            FunctionView {
                name: f.name.clone(),
                kind: kind.to_owned(),
                arguments: arguments.iter().map(|t| t.to_string()).collect(),
                returns: returns.map(|t| t.to_string()),
                volatility: match f.volatility {
                    Volatility::Immutable => "immutable",
                    Volatility::Stable => "stable",
                    Volatility::Volatile => "volatile",
                }
                .to_owned(),
                description: f.description.clone(),
            }
        })
        .collect()
}
