//! Spark Connect sessions: one per (tenant, client session id), holding the
//! session's config, temp views, cached DataFrames and running operations.
//! A session ends on ReleaseSession or after an idle timeout.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ignis_core::error::{IgnisError, Result};

use super::execute::Operation;
use super::proto::spark::Relation;

/// Spark settings a pyspark client reads, with the values Ignis runs with.
const DEFAULTS: &[(&str, &str)] = &[
    ("spark.sql.shuffle.partitions", "4"),
    ("spark.sql.session.timeZone", super::types::SESSION_TIME_ZONE),
    ("spark.sql.ansi.enabled", "true"),
    ("spark.sql.caseSensitive", "false"),
    ("spark.sql.sources.default", "parquet"),
    ("spark.sql.execution.arrow.pyspark.enabled", "true"),
    ("spark.sql.execution.arrow.maxRecordsPerBatch", "10000"),
    ("spark.sql.execution.pandas.convertToArrowArraySafely", "false"),
    ("spark.sql.pyspark.inferNestedDictAsStruct.enabled", "false"),
    ("spark.sql.pyspark.legacy.inferArrayTypeFromFirstElement.enabled", "false"),
    ("spark.sql.pyspark.legacy.inferMapTypeFromFirstPair.enabled", "false"),
    ("spark.sql.timestampType", "TIMESTAMP_LTZ"),
    ("spark.sql.execution.pythonUDF.arrow.enabled", "false"),
    ("spark.sql.execution.pythonUDTF.arrow.enabled", "false"),
    ("spark.sql.repl.eagerEval.enabled", "false"),
    ("spark.sql.repl.eagerEval.maxNumRows", "20"),
    ("spark.sql.repl.eagerEval.truncate", "20"),
    ("spark.sql.session.localRelationCacheThreshold", "67108864"),
    ("spark.sql.session.localRelationChunkSizeRows", "10000"),
    ("spark.sql.session.localRelationChunkSizeBytes", "16777216"),
    ("spark.sql.session.localRelationBatchOfChunksSizeBytes", "134217728"),
    ("spark.sql.session.localRelationSizeLimit", "134217728"),
    ("spark.sql.execution.pandas.structHandlingMode", "legacy"),
    ("spark.sql.execution.pandas.inferPandasDictAsMap", "false"),
    ("spark.sql.execution.arrow.pyspark.selfDestruct.enabled", "false"),
    ("spark.sql.execution.arrow.pyspark.fallback.enabled", "false"),
    ("spark.sql.execution.arrow.useLargeVarTypes", "false"),
    ("spark.sql.execution.pyspark.binaryAsBytes", "true"),
    ("spark.sql.pyspark.jvmStacktrace.enabled", "false"),
    ("spark.sql.connect.serverStacktrace.enabled", "false"),
    ("spark.sql.artifact.isolation.enabled", "false"),
    ("spark.sql.artifact.isolation.alwaysApplyClassloader", "false"),
    ("spark.connect.session.planCompression.threshold", "-1"),
    ("spark.connect.session.planCompression.defaultAlgorithm", "NONE"),
];

/// Sessions one tenant may have open at once.
pub const MAX_SESSIONS_PER_TENANT: usize = 64;

/// Settings a session may not change (they belong to the driver).
const FIXED: &[&str] = &["spark.sql.session.timeZone", "spark.sql.ansi.enabled", "spark.sql.caseSensitive"];

pub struct Session {
    pub tenant: String,
    pub id: String,
    /// The id of this server-side incarnation, so a client notices a restart.
    pub server_id: String,
    state: Mutex<SessionState>,
}

#[derive(Default)]
struct SessionState {
    config: BTreeMap<String, String>,
    views: HashMap<String, Relation>,
    caches: Vec<Cached>,
    operations: HashMap<String, Arc<Operation>>,
    last_used: Option<Instant>,
}

/// A DataFrame the client asked to cache, and where its rows are once the
/// first action that needs them has written them.
#[derive(Clone)]
pub struct Cached {
    /// The relation's encoded bytes: the same DataFrame sends the same bytes.
    pub key: Vec<u8>,
    pub location: Option<String>,
}

impl Session {
    fn new(tenant: &str, id: &str) -> Self {
        Self {
            tenant: tenant.to_string(),
            id: id.to_string(),
            server_id: ignis_core::ids::JobId::generate().to_string(),
            state: Mutex::new(SessionState { last_used: Some(Instant::now()), ..Default::default() }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A setting: set in this session, else Ignis's value, else `None`.
    pub fn config(&self, key: &str) -> Option<String> {
        self.lock().config.get(key).cloned().or_else(|| default(key))
    }

    pub fn set_config(&self, key: &str, value: &str) -> Result<()> {
        if !is_modifiable(key) && default(key).as_deref() != Some(value) {
            return Err(IgnisError::Plan(format!(
                "[CANNOT_MODIFY_CONFIG] Ignis runs with {key} = {}; it cannot be changed",
                default(key).unwrap_or_default()
            )));
        }
        if key == "spark.sql.shuffle.partitions" {
            match value.trim().parse::<usize>() {
                Ok(n) if n > 0 => {}
                _ => {
                    return Err(IgnisError::Plan(format!(
                        "spark.sql.shuffle.partitions must be a positive integer, not {value:?}"
                    )));
                }
            }
        }
        self.lock().config.insert(key.to_string(), value.to_string());
        Ok(())
    }

    pub fn unset_config(&self, key: &str) {
        self.lock().config.remove(key);
    }

    /// Every setting (set or default) whose key starts with `prefix`.
    pub fn all_config(&self, prefix: &str) -> Vec<(String, String)> {
        let state = self.lock();
        let mut all: BTreeMap<String, String> = DEFAULTS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        all.extend(state.config.clone());
        all.into_iter().filter(|(k, _)| k.starts_with(prefix)).collect()
    }

    pub fn shuffle_partitions(&self) -> Option<usize> {
        self.config("spark.sql.shuffle.partitions").and_then(|v| v.parse().ok())
    }

    /// A temp view by name (Spark's names are case-insensitive).
    pub fn view(&self, name: &str) -> Option<Relation> {
        self.lock().views.get(&name.to_ascii_lowercase()).cloned()
    }

    pub fn has_view(&self, name: &str) -> bool {
        self.lock().views.contains_key(&name.to_ascii_lowercase())
    }

    pub fn set_view(&self, name: &str, relation: Relation) {
        self.lock().views.insert(name.to_ascii_lowercase(), relation);
    }

    pub fn caches(&self) -> Vec<Cached> {
        self.lock().caches.clone()
    }

    pub fn persist(&self, key: Vec<u8>) {
        let mut state = self.lock();
        if !state.caches.iter().any(|c| c.key == key) {
            state.caches.push(Cached { key, location: None });
        }
    }

    /// Forget a cached DataFrame; returns where its rows were, to delete them.
    pub fn unpersist(&self, key: &[u8]) -> Option<Option<String>> {
        let mut state = self.lock();
        let at = state.caches.iter().position(|c| c.key == key)?;
        Some(state.caches.remove(at).location)
    }

    pub fn is_persisted(&self, key: &[u8]) -> bool {
        self.lock().caches.iter().any(|c| c.key == key)
    }

    pub fn set_cache_location(&self, key: &[u8], location: String) {
        if let Some(c) = self.lock().caches.iter_mut().find(|c| c.key == key) {
            c.location = Some(location);
        }
    }

    pub fn add_operation(&self, op: Arc<Operation>) {
        self.lock().operations.insert(op.id.clone(), op);
    }

    pub fn operation(&self, id: &str) -> Option<Arc<Operation>> {
        self.lock().operations.get(id).cloned()
    }

    pub fn remove_operation(&self, id: &str) {
        self.lock().operations.remove(id);
    }

    pub fn operations(&self) -> Vec<Arc<Operation>> {
        self.lock().operations.values().cloned().collect()
    }

    fn touch(&self) {
        self.lock().last_used = Some(Instant::now());
    }

    fn idle_for(&self) -> Duration {
        let state = self.lock();
        if state.operations.values().any(|o| !o.is_finished()) {
            return Duration::ZERO;
        }
        state.last_used.map(|t| t.elapsed()).unwrap_or_default()
    }
}

/// Whether a session may change `key` (`spark.conf.isModifiable`).
pub fn is_modifiable(key: &str) -> bool {
    !FIXED.contains(&key)
}

fn default(key: &str) -> Option<String> {
    DEFAULTS.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
}

/// Every live session, by tenant and client session id.
#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<(String, String), Arc<Session>>>,
    /// Global temp views (`global_temp.name`), one namespace per tenant.
    global_views: Mutex<HashMap<(String, String), Relation>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session `id` of `tenant`, made on first use. Another tenant's
    /// session of the same id is another session.
    pub fn get_or_create(&self, tenant: &str, id: &str) -> Result<Arc<Session>> {
        if id.is_empty() || id.len() > 128 {
            return Err(IgnisError::Plan("a Spark Connect session id must be 1-128 characters".into()));
        }
        let mut sessions = self.lock();
        let key = (tenant.to_string(), id.to_string());
        if !sessions.contains_key(&key)
            && sessions.keys().filter(|(t, _)| t == tenant).count() >= MAX_SESSIONS_PER_TENANT
        {
            return Err(IgnisError::Job(format!(
                "[RESOURCE_EXHAUSTED] tenant '{tenant}' has {MAX_SESSIONS_PER_TENANT} Spark Connect sessions open, the \
                 most this driver keeps; stop one (spark.stop()) or wait for idle ones to be released"
            )));
        }
        let session = sessions.entry(key).or_insert_with(|| Arc::new(Session::new(tenant, id))).clone();
        drop(sessions);
        session.touch();
        Ok(session)
    }

    pub fn remove(&self, tenant: &str, id: &str) -> Option<Arc<Session>> {
        self.lock().remove(&(tenant.to_string(), id.to_string()))
    }

    /// Sessions idle for longer than `timeout`, taken out.
    pub fn take_idle(&self, timeout: Duration) -> Vec<Arc<Session>> {
        let mut sessions = self.lock();
        let idle: Vec<_> = sessions.iter().filter(|(_, s)| s.idle_for() > timeout).map(|(k, _)| k.clone()).collect();
        idle.into_iter().filter_map(|k| sessions.remove(&k)).collect()
    }

    pub fn global_view(&self, tenant: &str, name: &str) -> Option<Relation> {
        let views = self.global_views.lock().unwrap_or_else(|p| p.into_inner());
        views.get(&(tenant.to_string(), name.to_ascii_lowercase())).cloned()
    }

    pub fn set_global_view(&self, tenant: &str, name: &str, relation: Relation, replace: bool) -> Result<()> {
        let mut views = self.global_views.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.to_string(), name.to_ascii_lowercase());
        if !replace && views.contains_key(&key) {
            return Err(already_exists(&format!("global_temp.{name}")));
        }
        views.insert(key, relation);
        Ok(())
    }
}

pub fn already_exists(name: &str) -> IgnisError {
    IgnisError::Plan(format!(
        "[TEMP_TABLE_OR_VIEW_ALREADY_EXISTS] Cannot create the temporary view `{name}` because it already exists"
    ))
}
