use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::clock::{Deadlined, GuestClock, add_capped_waits};
use super::stderr::TailPipe;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::logical_expr::Volatility;
use ignis_core::error::{IgnisError, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ProfilingStrategy, ResourceLimiter, Store,
    Trap,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "ignis:udf/udf",
    });
}

use bindings::ignis::udf::types as wit;

/// The WIT package (and version) this host speaks.
pub const WIT_PACKAGE: &str = "ignis:udf@0.1.0";
const WIT_NAMESPACE: &str = "ignis:udf/";
const WIT_VERSION: &str = "0.1.0";

/// How often the epoch advances; call deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The sandbox every call runs in.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// Wall time one call (one batch) may take.
    pub call_timeout: Duration,
    /// The last bytes of guest stderr kept for an error message (earlier ones are dropped).
    pub stderr_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { memory_bytes: 256 << 20, call_timeout: Duration::from_secs(10), stderr_bytes: 4 << 10 }
    }
}

/// `sha256:<hex>` of a component's bytes: how Ignis names a component.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One function a component offers, as its `describe` told.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionInfo {
    pub name: String,
    pub kind: FunctionKind,
    pub volatility: Volatility,
    pub description: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FunctionKind {
    Scalar { arguments: Vec<DataType>, returns: DataType },
    Aggregate { arguments: Vec<DataType>, returns: DataType },
    Transform,
}

/// What a store carries: the (empty) WASI context, captured stderr, and the
/// memory limiter that remembers whether the limit was hit.
struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    clock: GuestClock,
    /// When the running call must end (its epoch deadline, as an instant).
    deadline: Instant,
}

impl Deadlined for Sandbox {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    fn clock(&self) -> GuestClock {
        self.clock
    }

    fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

struct MemoryLimiter {
    memory_bytes: usize,
    hit: bool,
    /// The largest linear memory granted so far.
    grown_to: usize,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit = true;
            return Ok(false);
        }
        self.grown_to = self.grown_to.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The process's Wasm engine, linker and component caches.
pub struct UdfHost {
    engine: Engine,
    linker: Linker<Sandbox>,
    cache_dir: PathBuf,
    limits: Limits,
    loaded: Mutex<HashMap<String, Arc<Component>>>,
}

impl std::fmt::Debug for UdfHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdfHost").field("cache_dir", &self.cache_dir).field("limits", &self.limits).finish()
    }
}

impl UdfHost {
    /// The host of this process: one engine (and one epoch thread) for every
    /// task. Precompiled components go under `$IGNIS_UDF_CACHE`, by default
    /// `<temp dir>/ignis-udf-cache` (`/tmp` on Lambda).
    pub fn global() -> Result<Arc<UdfHost>> {
        static HOST: OnceLock<std::result::Result<Arc<UdfHost>, String>> = OnceLock::new();
        HOST.get_or_init(|| {
            let cache_dir = std::env::var_os("IGNIS_UDF_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("ignis-udf-cache"));
            UdfHost::new(cache_dir, Limits::default()).map(Arc::new).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(IgnisError::Udf)
    }

    pub fn new(cache_dir: PathBuf, limits: Limits) -> Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(256)
            .total_core_instances(512)
            .total_memories(256)
            .total_tables(512)
            .max_memory_size(limits.memory_bytes);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(1 << 20)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // `IGNIS_UDF_PROFILE=perfmap` writes /tmp/perf-<pid>.map, so `perf`
        // names the guest's functions (build the guest without stripping).
        if std::env::var("IGNIS_UDF_PROFILE").is_ok_and(|p| p == "perfmap") {
            config.profiler(ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| IgnisError::Udf(format!("cannot start the Wasm engine: {e}")))?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("ignis-udf-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(IgnisError::Io)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .and_then(|()| add_capped_waits(&mut linker))
            .map_err(|e| IgnisError::Udf(format!("cannot link WASI: {e}")))?;
        private_dir(&cache_dir)?;
        Ok(Self { engine, linker, cache_dir, limits, loaded: Mutex::default() })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// An already loaded component.
    pub fn get(&self, digest: &str) -> Option<Arc<Component>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(digest).cloned()
    }

    /// Load a component from its bytes (checked against `digest` when given):
    /// compile it (or take the precompiled artefact from the disk cache),
    /// check it implements this host's world and version, and ask it to
    /// describe its functions. `label` names it in errors.
    pub fn load(self: &Arc<Self>, bytes: &[u8], digest: Option<&str>, label: &str) -> Result<Arc<Component>> {
        let actual = digest_of(bytes);
        if let Some(expected) = digest
            && expected != actual
        {
            return Err(IgnisError::Udf(format!(
                "component {label}: its bytes hash to {actual}, not {expected}; refusing to run it"
            )));
        }
        if let Some(loaded) = self.get(&actual) {
            return Ok(loaded);
        }
        let component = self.compile(bytes, &actual, label)?;
        check_world(&self.engine, &component, label)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            IgnisError::Udf(format!(
                "component {label} needs imports Ignis does not provide (a UDF gets no files, network or \
                 environment): {e}"
            ))
        })?;
        let pre = bindings::UdfPre::new(pre)
            .map_err(|e| IgnisError::Udf(format!("component {label} does not implement {WIT_PACKAGE}: {e}")))?;
        let mut loaded = Component {
            digest: actual.clone(),
            label: label.to_owned(),
            host: self.clone(),
            pre,
            functions: Vec::new(),
        };
        loaded.functions = loaded.describe()?;
        let loaded = Arc::new(loaded);
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).insert(actual, loaded.clone());
        Ok(loaded)
    }

    fn compile(&self, bytes: &[u8], digest: &str, label: &str) -> Result<wasmtime::component::Component> {
        let mut hasher = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        let file =
            self.cache_dir.join(format!("{}-{:016x}.cwasm", digest.trim_start_matches("sha256:"), hasher.finish()));
        if std::fs::symlink_metadata(&file).is_ok() {
            match own_regular_file(&file).and_then(|()| self.deserialize(&file)) {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "precompiled component unusable; recompiling")
                }
            }
        }
        let compiled = self.engine.precompile_component(bytes).map_err(|e| {
            IgnisError::Udf(format!(
                "{label} is not a usable WebAssembly component (build it with `ignis udf build`, \
                 i.e. cargo build --target wasm32-wasip2): {}",
                root_cause(&e)
            ))
        })?;
        // A new file (never an existing one, nor through a symlink), renamed into place whole.
        let tmp = file.with_extension(format!("tmp-{}-{:016x}", std::process::id(), rand_suffix()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&compiled).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, &file));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        self.deserialize(&file)
    }

    #[allow(unsafe_code)]
    fn deserialize(&self, file: &Path) -> Result<wasmtime::component::Component> {
        // SAFETY: the file is one this host wrote with `precompile_component`
        // of the same engine configuration (its name carries the engine's
        // compatibility hash) into its own cache directory, renamed into place
        // only once complete; wasmtime checks the header and version on load.
        unsafe { wasmtime::component::Component::deserialize_file(&self.engine, file) }
            .map_err(|e| IgnisError::Udf(format!("cannot load precompiled {}: {e}", file.display())))
    }
}

/// Random bits for a temporary file's name.
fn rand_suffix() -> u64 {
    let mut hasher = DefaultHasher::new();
    std::time::SystemTime::now().hash(&mut hasher);
    std::thread::current().id().hash(&mut hasher);
    hasher.finish()
}

/// The user this process runs as: the owner of its own `/proc` entry.
fn own_uid() -> Result<u32> {
    Ok(std::fs::metadata("/proc/self")?.uid())
}

/// Make `dir` the cache's private directory: created 0700 if absent; a
/// directory (not a symlink) owned by this user, closed to others.
fn private_dir(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let uid = own_uid()?;
    if !meta.is_dir() || meta.uid() != uid {
        return Err(IgnisError::Udf(format!(
            "the UDF cache {} is not a directory of this user (uid {uid}); remove it or set IGNIS_UDF_CACHE",
            dir.display()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A cached artefact is used only if it is a regular file this user owns.
fn own_regular_file(file: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(file)?;
    if meta.is_file() && meta.uid() == own_uid()? {
        Ok(())
    } else {
        Err(IgnisError::Udf(format!("{} is not a file of this user", file.display())))
    }
}

/// The innermost cause of a wasmtime error, which is the readable one.
fn root_cause(e: &wasmtime::Error) -> String {
    e.chain().last().map(|c| c.to_string()).unwrap_or_else(|| e.to_string())
}

/// Refuse a component that was not built against this host's `ignis:udf` version.
fn check_world(engine: &Engine, component: &wasmtime::component::Component, label: &str) -> Result<()> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_owned()).collect();
    let ours: Vec<&String> = exports.iter().filter(|name| name.starts_with(WIT_NAMESPACE)).collect();
    if ours.is_empty() || !exports.iter().any(|name| name == "describe") {
        return Err(IgnisError::Udf(format!(
            "component {label} does not implement the {WIT_PACKAGE} world (it exports: {}); \
             build it with the ignis-udf SDK",
            if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") }
        )));
    }
    for name in ours {
        let version = name.rsplit_once('@').map(|(_, v)| v).unwrap_or("(none)");
        if version != WIT_VERSION {
            return Err(IgnisError::Udf(format!(
                "component {label} was built against ignis:udf@{version}, but this Ignis speaks {WIT_PACKAGE}; \
                 rebuild it with a matching ignis-udf SDK"
            )));
        }
    }
    Ok(())
}

/// A loaded component: ready to instantiate, with its functions described.
pub struct Component {
    digest: String,
    label: String,
    host: Arc<UdfHost>,
    pre: bindings::UdfPre<Sandbox>,
    functions: Vec<FunctionInfo>,
}

/// Instances of one component whose last call went well, kept for the next
/// scalar or transform call (a new instance costs 0.1-0.2 ms, as much as a
/// small batch's work). One per task and function, never shared between
/// tasks: a guest's state must not carry one job's data into another's.
#[derive(Default)]
pub struct Instances(Mutex<Vec<Call>>);

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Instances")
    }
}

/// Idle instances kept per [`Instances`] (a task runs a few batches at once at most).
const MAX_IDLE: usize = 4;

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component").field("digest", &self.digest).field("label", &self.label).finish()
    }
}

/// A live instance: for calls of scalars and transforms (kept for the next
/// call while they succeed), or for the accumulators of one task (aggregates).
/// Dropped after any trap, limit or error.
struct Call {
    label: String,
    limits: Limits,
    store: Store<Sandbox>,
    stderr: TailPipe,
    instance: bindings::Udf,
}

impl Component {
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn functions(&self) -> &[FunctionInfo] {
        &self.functions
    }

    pub fn function(&self, name: &str) -> Option<&FunctionInfo> {
        self.functions.iter().find(|f| f.name == name)
    }

    fn instantiate(&self, function: &str) -> Result<Call> {
        let limits = &self.host.limits;
        let stderr = TailPipe::new(limits.stderr_bytes);
        // Nothing granted: no preopened directories, no environment variables,
        // no arguments, no sockets, no name lookups. stdout goes nowhere.
        let clock = GuestClock { start: Instant::now() };
        let wasi = WasiCtxBuilder::new()
            .monotonic_clock(clock)
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let sandbox = Sandbox {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter { memory_bytes: limits.memory_bytes, hit: false, grown_to: 0 },
            clock,
            deadline: Instant::now() + limits.call_timeout,
        };
        let mut store = Store::new(&self.host.engine, sandbox);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        set_deadline(&mut store, limits);
        let instance = self.pre.instantiate(&mut store).map_err(|e| {
            IgnisError::Udf(format!("UDF {function} ({}): cannot start an instance: {}", self.label, root_cause(&e)))
        })?;
        Ok(Call { label: self.label.clone(), limits: limits.clone(), store, stderr, instance })
    }

    /// Ask the component what it offers, and check the answer makes sense.
    fn describe(&self) -> Result<Vec<FunctionInfo>> {
        let mut call = self.instantiate("describe")?;
        let described = call.instance.call_describe(&mut call.store);
        let described = described.map_err(|e| call.failure("describe", e))?;
        let mut functions: Vec<FunctionInfo> = Vec::with_capacity(described.len());
        for f in described {
            if !valid_name(&f.name) {
                return Err(IgnisError::Udf(format!(
                    "component {}: function name '{}' is not a valid SQL identifier (letters, digits, _)",
                    self.label, f.name
                )));
            }
            if functions.iter().any(|g| g.name == f.name) {
                return Err(IgnisError::Udf(format!(
                    "component {} describes two functions named '{}'",
                    self.label, f.name
                )));
            }
            functions.push(FunctionInfo {
                name: f.name,
                kind: match f.kind {
                    wit::FunctionKind::Scalar(s) => FunctionKind::Scalar {
                        arguments: s.arguments.iter().map(arrow_type).collect(),
                        returns: arrow_type(&s.returns),
                    },
                    wit::FunctionKind::Aggregate(s) => FunctionKind::Aggregate {
                        arguments: s.arguments.iter().map(arrow_type).collect(),
                        returns: arrow_type(&s.returns),
                    },
                    wit::FunctionKind::Transform => FunctionKind::Transform,
                },
                volatility: match f.volatility {
                    wit::Volatility::Immutable => Volatility::Immutable,
                    wit::Volatility::Stable => Volatility::Stable,
                    wit::Volatility::Volatile => Volatility::Volatile,
                },
                description: f.description,
            });
        }
        if functions.is_empty() {
            return Err(IgnisError::Udf(format!("component {} offers no functions", self.label)));
        }
        Ok(functions)
    }

    /// An instance for one call, with a fresh deadline: an idle one, or a new one.
    fn checkout(&self, instances: &Instances, function: &str) -> Result<Call> {
        let idle = instances.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(mut call) => {
                set_deadline(&mut call.store, &call.limits);
                Ok(call)
            }
            None => self.instantiate(function),
        }
    }

    /// Keep an instance whose call succeeded, unless it has grown past half
    /// its memory limit (a guest that leaks gets a clean one) or wrote to
    /// stderr (an error must show only its own call's output).
    fn checkin(&self, instances: &Instances, call: Call) {
        if call.store.data().limiter.grown_to > call.limits.memory_bytes / 2 || !call.stderr.is_empty() {
            return;
        }
        let mut idle = instances.0.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(call);
        }
    }

    /// Call scalar function `name` on a batch of argument columns; returns the
    /// result batch (one column, as many rows).
    pub fn call_scalar(&self, instances: &Instances, name: &str, args: &RecordBatch) -> Result<RecordBatch> {
        self.call_batch(instances, name, args, |c, bytes| {
            c.instance.ignis_udf_scalar().call_call(&mut c.store, name, bytes)
        })
    }

    /// One call that takes a batch and returns one, in an instance of `instances`.
    fn call_batch(
        &self,
        instances: &Instances,
        name: &str,
        batch: &RecordBatch,
        f: impl FnOnce(&mut Call, &[u8]) -> wasmtime::Result<std::result::Result<Vec<u8>, wit::UdfError>>,
    ) -> Result<RecordBatch> {
        let out = self.call_ipc(instances, name, batch, f)?;
        read_ipc(&out)
            .map_err(|e| IgnisError::Udf(format!("UDF {name} ({}) returned unreadable data: {e}", self.label)))
    }

    /// `batch` as IPC bytes into guest call `f`, in an instance of
    /// `instances`; the bytes it returns. A trap or a guest error drops the
    /// instance and names the function.
    fn call_ipc(
        &self,
        instances: &Instances,
        name: &str,
        batch: &RecordBatch,
        f: impl FnOnce(&mut Call, &[u8]) -> wasmtime::Result<std::result::Result<Vec<u8>, wit::UdfError>>,
    ) -> Result<Vec<u8>> {
        let bytes = write_ipc(batch)?;
        let mut call = self.checkout(instances, name)?;
        let returned = f(&mut call, &bytes).map_err(|e| call.failure(name, e))?;
        let out = returned.map_err(|e| call.udf_error(name, e))?;
        self.checkin(instances, call);
        Ok(out)
    }

    /// The columns transform `name` produces from input with these columns.
    pub fn transform_output_schema(&self, name: &str, input: &SchemaRef) -> Result<SchemaRef> {
        // Planning-time call: an instance of its own, dropped afterwards.
        let out = self.call_ipc(&Instances::default(), name, &RecordBatch::new_empty(input.clone()), |c, bytes| {
            c.instance.ignis_udf_transform().call_output_schema(&mut c.store, name, bytes)
        })?;
        let schema = read_ipc(&out)
            .map_err(|e| IgnisError::Udf(format!("UDF {name} ({}) returned an unreadable schema: {e}", self.label)))?
            .schema();
        if schema.fields().is_empty() {
            return Err(IgnisError::Udf(format!("UDF {name} ({}) announced a result with no columns", self.label)));
        }
        Ok(schema)
    }

    /// Run transform `name` on one batch.
    pub fn call_transform(&self, instances: &Instances, name: &str, batch: &RecordBatch) -> Result<RecordBatch> {
        self.call_batch(instances, name, batch, |c, bytes| {
            c.instance.ignis_udf_transform().call_call(&mut c.store, name, bytes)
        })
    }
}

/// The next call may run for `call_timeout` from now.
fn set_deadline(store: &mut Store<Sandbox>, limits: &Limits) {
    let ticks = (limits.call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
    store.set_epoch_deadline(ticks);
    store.data_mut().deadline = Instant::now() + limits.call_timeout;
}

impl Call {
    /// A trap, a limit or a host error, as the user should read it.
    fn failure(&self, function: &str, e: wasmtime::Error) -> IgnisError {
        let component = &self.label;
        let limits = &self.limits;
        let what = if self.store.data().limiter.hit {
            format!("ran out of memory (limit {} MiB per call)", limits.memory_bytes >> 20)
        } else {
            match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => {
                    format!("was stopped after its time limit of {:.1} s per call", limits.call_timeout.as_secs_f64())
                }
                Some(Trap::StackOverflow) => "exhausted its call stack (too deep recursion?)".to_owned(),
                Some(trap) => format!("trapped: {trap}"),
                None => format!("failed: {}", root_cause(&e)),
            }
        };
        IgnisError::Udf(format!("UDF {function} ({component}) {what}{}", self.stderr_tail()))
    }

    /// An error the guest reported through the WIT `udf-error` variant.
    fn udf_error(&self, function: &str, e: wit::UdfError) -> IgnisError {
        let component = &self.label;
        let what = match e {
            wit::UdfError::UnknownFunction(m) => format!("is not in the component: {m}"),
            wit::UdfError::InvalidArguments(m) => format!("got invalid arguments: {m}"),
            wit::UdfError::InvalidData(m) => format!("could not read its input: {m}"),
            wit::UdfError::Failed(m) => format!("failed: {m}"),
        };
        IgnisError::Udf(format!("UDF {function} ({component}) {what}{}", self.stderr_tail()))
    }

    fn stderr_tail(&self) -> String {
        let text = self.stderr.text();
        if text.is_empty() { String::new() } else { format!("; its stderr: {text}") }
    }
}

/// One instance holding the accumulators (one resource per group) of an
/// aggregate for one task. After a trap or a limit it refuses further calls.
pub struct AggregateInstance {
    name: String,
    call: Call,
    broken: Option<String>,
}

impl std::fmt::Debug for AggregateInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateInstance").field("name", &self.name).field("component", &self.call.label).finish()
    }
}

/// An accumulator inside an [`AggregateInstance`].
pub type AccumulatorHandle = wasmtime::component::ResourceAny;

impl Component {
    /// A fresh instance for aggregate `name`'s accumulators.
    pub fn aggregate_instance(&self, name: &str) -> Result<AggregateInstance> {
        Ok(AggregateInstance { name: name.to_owned(), call: self.instantiate(name)?, broken: None })
    }
}

impl AggregateInstance {
    /// Run one guest call with a fresh deadline; a trap breaks the instance.
    fn guard<T>(
        &mut self,
        f: impl FnOnce(&mut Call) -> wasmtime::Result<std::result::Result<T, wit::UdfError>>,
    ) -> Result<T> {
        if let Some(e) = &self.broken {
            return Err(IgnisError::Udf(e.clone()));
        }
        set_deadline(&mut self.call.store, &self.call.limits);
        match f(&mut self.call) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.call.udf_error(&self.name, e)),
            Err(trap) => {
                let e = self.call.failure(&self.name, trap);
                self.broken = Some(e.to_string());
                Err(e)
            }
        }
    }

    pub fn create(&mut self) -> Result<AccumulatorHandle> {
        let name = self.name.clone();
        self.guard(|c| c.instance.ignis_udf_aggregate().accumulator().call_create(&mut c.store, &name))
    }

    pub fn update(&mut self, acc: AccumulatorHandle, args: &RecordBatch) -> Result<()> {
        let bytes = write_ipc(args)?;
        self.guard(|c| c.instance.ignis_udf_aggregate().accumulator().call_update(&mut c.store, acc, &bytes))
    }

    pub fn state(&mut self, acc: AccumulatorHandle) -> Result<Vec<u8>> {
        self.guard(|c| c.instance.ignis_udf_aggregate().accumulator().call_state(&mut c.store, acc))
    }

    pub fn merge(&mut self, acc: AccumulatorHandle, states: &[Vec<u8>]) -> Result<()> {
        self.guard(|c| c.instance.ignis_udf_aggregate().accumulator().call_merge(&mut c.store, acc, states))
    }

    /// The final value: a one-row, one-column batch.
    pub fn evaluate(&mut self, acc: AccumulatorHandle) -> Result<RecordBatch> {
        let bytes = self.guard(|c| c.instance.ignis_udf_aggregate().accumulator().call_evaluate(&mut c.store, acc))?;
        read_ipc(&bytes).map_err(|e| {
            IgnisError::Udf(format!("UDF {} ({}) returned unreadable data: {e}", self.name, self.call.label))
        })
    }

    /// Free an accumulator in the guest.
    pub fn drop_accumulator(&mut self, acc: AccumulatorHandle) {
        if self.broken.is_none() {
            set_deadline(&mut self.call.store, &self.call.limits);
            let _ = acc.resource_drop(&mut self.call.store);
        }
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

fn arrow_type(t: &wit::DataType) -> DataType {
    match t {
        wit::DataType::Boolean => DataType::Boolean,
        wit::DataType::Int8 => DataType::Int8,
        wit::DataType::Int16 => DataType::Int16,
        wit::DataType::Int32 => DataType::Int32,
        wit::DataType::Int64 => DataType::Int64,
        wit::DataType::Uint8 => DataType::UInt8,
        wit::DataType::Uint16 => DataType::UInt16,
        wit::DataType::Uint32 => DataType::UInt32,
        wit::DataType::Uint64 => DataType::UInt64,
        wit::DataType::Float32 => DataType::Float32,
        wit::DataType::Float64 => DataType::Float64,
        wit::DataType::Utf8 => DataType::Utf8,
        wit::DataType::Binary => DataType::Binary,
        wit::DataType::Date32 => DataType::Date32,
        wit::DataType::Timestamp(t) => DataType::Timestamp(
            match t.unit {
                wit::TimeUnit::Second => TimeUnit::Second,
                wit::TimeUnit::Millisecond => TimeUnit::Millisecond,
                wit::TimeUnit::Microsecond => TimeUnit::Microsecond,
                wit::TimeUnit::Nanosecond => TimeUnit::Nanosecond,
            },
            t.timezone.as_deref().map(Arc::from),
        ),
        wit::DataType::Decimal128(d) => DataType::Decimal128(d.precision, d.scale),
    }
}

fn write_ipc(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

fn read_ipc(bytes: &[u8]) -> Result<RecordBatch> {
    let mut reader = StreamReader::try_new(bytes, None)?;
    match reader.next() {
        Some(batch) => Ok(batch?),
        None => Ok(RecordBatch::new_empty(reader.schema())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_directory_is_private_and_symlinks_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        private_dir(&open).unwrap();
        assert_eq!(std::fs::metadata(&open).unwrap().mode() & 0o777, 0o700);
        let fresh = base.path().join("a/b/cache");
        private_dir(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);

        let link = base.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let err = private_dir(&link).unwrap_err().to_string();
        assert!(err.contains("not a directory of this user"), "{err}");
        let file_link = open.join("x.cwasm");
        std::os::unix::fs::symlink("/etc/passwd", &file_link).unwrap();
        assert!(own_regular_file(&file_link).is_err());
    }
}
