//! The two sides a corpus file runs on, sharing one per-file catalog.
//!
//! - [`Reference`]: single-node DataFusion set up as the corpus's own runner
//!   sets it up (4 target partitions, default features). It runs every record,
//!   and its session is the file's catalog: `CREATE TABLE`, `INSERT`, CTAS,
//!   `CREATE EXTERNAL TABLE`, views and `SET` change it.
//! - [`OnIgnis`]: each query is an Ignis job in local mode (shuffles through
//!   files, `SHUFFLE_PARTITIONS` reduce partitions) over the catalog's tables
//!   as the [`Catalog`] materialised them: Parquet, split over two files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::datasource::TableType;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_plan::{collect, execution_plan::ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use ignis_core::job::{Format, JobConfig, JobSpec, OutputSpec, TableOptions, TableSpec};
use ignis_core::session::SessionOptions;
use ignis_driver::{Driver, JobResult};
use parquet::arrow::ArrowWriter;
use sqllogictest::{AsyncDB, DBOutput};

use super::render::{self, Kind};
use crate::engines::EngineError;

/// Reduce partitions of every Ignis job (each shuffle crosses files).
pub const SHUFFLE_PARTITIONS: usize = 3;
/// Files each materialised table is split into.
pub const FILES_PER_TABLE: usize = 2;
/// A query that has not answered by then is a failure, not a hung suite.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The session the corpus's own runner gives a file.
pub fn reference_session() -> SessionContext {
    let config = SessionConfig::new().with_target_partitions(4);
    let state = SessionStateBuilder::new().with_config(config).with_default_features().build();
    SessionContext::new_with_state(state)
}

/// An error as the corpus's runner prints DataFusion's.
fn datafusion_error(text: &str) -> EngineError {
    EngineError(format!("DataFusion error: {text}"))
}

pub struct Reference {
    pub ctx: SessionContext,
}

#[async_trait]
impl AsyncDB for Reference {
    type Error = EngineError;
    type ColumnType = Kind;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Kind>, EngineError> {
        let run = async {
            let df = self.ctx.sql(sql).await?;
            let task = Arc::new(df.task_ctx());
            let plan: Arc<dyn ExecutionPlan> = df.create_physical_plan().await?;
            let schema = plan.schema();
            let batches = collect(plan, task).await?;
            Ok::<_, datafusion::error::DataFusionError>((schema, batches))
        };
        let (schema, batches) = match tokio::time::timeout(QUERY_TIMEOUT, run).await {
            Ok(r) => r.map_err(|e| datafusion_error(&e.strip_backtrace()))?,
            Err(_) => return Err(EngineError(format!("timed out after {QUERY_TIMEOUT:?}"))),
        };
        render::output(&schema, &batches).map_err(EngineError)
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "single-node"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// The file's tables as files Ignis jobs read.
#[derive(Clone)]
pub struct Catalog {
    dir: PathBuf,
    tables: Arc<Mutex<BTreeMap<String, TableSpec>>>,
    /// Why a table could not be materialised, for the failures it causes.
    unmaterialised: Arc<Mutex<BTreeMap<String, String>>>,
    generation: Arc<AtomicUsize>,
    /// The file's `SET`s that an Ignis job carries: rows per batch and the
    /// session options a job may set.
    settings: Arc<Mutex<(Option<usize>, SessionOptions)>>,
}

impl Catalog {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            tables: Arc::default(),
            unmaterialised: Arc::default(),
            generation: Arc::default(),
            settings: Arc::default(),
        }
    }

    /// Carry the options the file changed from the defaults into later jobs,
    /// where a job setting exists.
    pub fn follow(&self, changed: &[(String, String)]) {
        let (batch_size, options, _) = carried(changed);
        if let Ok(mut settings) = self.settings.lock() {
            *settings = (batch_size, options);
        }
    }

    fn job_config(&self) -> JobConfig {
        let (batch_size, mut options) = self.settings.lock().map(|s| s.clone()).unwrap_or_default();
        // The tables are Parquet files written from the file's own tables: read
        // their columns with the types they were written with (the Arrow schema
        // in the file), not as views of strings, unless the file set otherwise.
        if !options.iter().any(|(k, _)| k == FORCE_VIEW_TYPES) {
            options = SessionOptions::new(
                options
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .chain([(FORCE_VIEW_TYPES.into(), "false".into())]),
            )
            .unwrap_or(options);
        }
        JobConfig { shuffle_partitions: Some(SHUFFLE_PARTITIONS), batch_size, options, ..JobConfig::default() }
    }

    pub fn tables(&self) -> BTreeMap<String, TableSpec> {
        self.tables.lock().map(|t| t.clone()).unwrap_or_default()
    }

    pub fn unmaterialised(&self) -> BTreeMap<String, String> {
        self.unmaterialised.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Bring the files up to date after `sql` changed the catalog: tables it
    /// names or that are new are written again, dropped ones forgotten, views
    /// re-evaluated when any table changed.
    pub async fn sync(&self, ctx: &SessionContext, sql: &str) {
        let Some(schema) = ctx.catalog("datafusion").and_then(|c| c.schema("public")) else {
            return;
        };
        let names = schema.table_names();
        let known = self.tables();
        let words: Vec<String> = sql
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        let mut changed = Vec::new();
        let mut views = Vec::new();
        for name in &names {
            let Ok(Some(table)) = schema.table(name).await else { continue };
            if table.table_type() == TableType::View {
                views.push((name.clone(), table));
            } else if !known.contains_key(name) || words.contains(&name.to_lowercase()) {
                changed.push((name.clone(), table));
            }
        }
        // COPY may write files under an external table's location, and a SET
        // may change how a table's files are listed or read: read them all again.
        if words.first().is_some_and(|w| ["copy", "set", "reset"].contains(&w.as_str())) {
            for name in &names {
                if let Ok(Some(table)) = schema.table(name).await
                    && table.table_type() != TableType::View
                    && !changed.iter().any(|(n, _)| n == name)
                {
                    changed.push((name.clone(), table));
                }
            }
        }
        let any_change = !changed.is_empty() || names.len() != known.len();
        if any_change {
            changed.extend(views);
        }
        if let Ok(mut tables) = self.tables.lock() {
            tables.retain(|name, _| names.contains(name));
        }
        for (name, table) in changed {
            self.materialise(ctx, &name, table).await;
        }
    }

    async fn materialise(&self, ctx: &SessionContext, name: &str, table: Arc<dyn TableProvider>) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let dir = self.dir.join(format!("{generation:05}-{}", sanitise(name)));
        let result = async {
            let df = ctx.read_table(table)?;
            let schema = Arc::new(df.schema().as_arrow().clone());
            let batches = df.collect().await?;
            let all = arrow::compute::concat_batches(&schema, &batches)?;
            write_split(&dir, &all)?;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        match result {
            Ok(()) => {
                let location = url::Url::from_directory_path(&dir).map(|u| u.to_string()).unwrap_or_default();
                let spec = TableSpec::files_at(Format::Parquet, location, TableOptions::default());
                if let Ok(mut t) = self.tables.lock() {
                    t.insert(name.to_string(), spec);
                }
                if let Ok(mut u) = self.unmaterialised.lock() {
                    u.remove(name);
                }
            }
            Err(e) => {
                if let Ok(mut t) = self.tables.lock() {
                    t.remove(name);
                }
                if let Ok(mut u) = self.unmaterialised.lock() {
                    u.insert(name.to_string(), format!("{e:#}"));
                }
            }
        }
    }
}

/// Of the options a file changed, those a job carries (rows per batch, session
/// options), and the others as `key = value`.
pub fn carried(changed: &[(String, String)]) -> (Option<usize>, SessionOptions, Vec<String>) {
    let mut batch_size = None;
    let mut options = Vec::new();
    let mut left = Vec::new();
    for (key, value) in changed {
        if key == "datafusion.execution.batch_size"
            && let Ok(n) = value.parse()
        {
            batch_size = Some(n);
        } else if SessionOptions::new([(key.clone(), value.clone())]).is_ok() {
            options.push((key.clone(), value.clone()));
        } else {
            left.push(format!("{key} = {value}"));
        }
    }
    // Each option was accepted alone, and none depends on another.
    (batch_size, SessionOptions::new(options).unwrap_or_default(), left)
}

fn sanitise(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// Rows in order, over [`FILES_PER_TABLE`] Parquet files (the later ones
/// possibly empty), so a scan reads them back in the same order.
fn write_split(dir: &Path, all: &RecordBatch) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let per_file = all.num_rows().div_ceil(FILES_PER_TABLE);
    for i in 0..FILES_PER_TABLE {
        let start = (i * per_file).min(all.num_rows());
        let len = per_file.min(all.num_rows() - start);
        let file = std::fs::File::create(dir.join(format!("part-{i}.parquet")))?;
        let mut writer = ArrowWriter::try_new(file, all.schema(), None)?;
        writer.write(&all.slice(start, len))?;
        writer.close()?;
    }
    Ok(())
}

const FORCE_VIEW_TYPES: &str = "datafusion.execution.parquet.schema_force_view_types";

pub struct OnIgnis {
    pub driver: Arc<Driver>,
    pub catalog: Catalog,
}

impl OnIgnis {
    fn job(&self, sql: &str) -> JobSpec {
        JobSpec {
            udfs: Vec::new(),
            name: None,
            tables: self.catalog.tables(),
            sql: Some(sql.to_string()),
            steps: None,
            output: OutputSpec::Collect,
            config: self.catalog.job_config(),
            stream: None,
        }
    }
}

#[async_trait]
impl AsyncDB for OnIgnis {
    type Error = EngineError;
    type ColumnType = Kind;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Kind>, EngineError> {
        let job = self.job(sql);
        let id = ignis_core::ids::JobId::generate();
        let outcome = self.driver.run_job(id, &job, &|_| {}, tokio::time::sleep(QUERY_TIMEOUT)).await;
        match outcome {
            Ok(outcome) => match outcome.result {
                JobResult::Rows { schema, batches } => render::output(&schema, &batches).map_err(EngineError),
                other => Err(EngineError(format!("expected rows, got {other:?}"))),
            },
            Err(ignis_core::error::IgnisError::Cancelled) => {
                Err(EngineError(format!("timed out after {QUERY_TIMEOUT:?}")))
            }
            Err(e) => Err(datafusion_error(&engine_text(&e.to_string()))),
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "ignis"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// DataFusion's message inside an Ignis error. Ignis says where first, then
/// gives DataFusion's own text: `sql: `, `sql statement 2: `,
/// `stage 1 task 0 failed: `, `stage 1 task 0 failed after 3 attempts: `.
pub fn engine_text(message: &str) -> String {
    let rest = |prefix: &str| message.strip_prefix(prefix);
    let after_place = rest("sql: ").or_else(|| {
        let (place, tail) = message.split_once(": ")?;
        let words: Vec<&str> = place.split(' ').collect();
        let numbered = |i: usize| words.get(i).is_some_and(|w| w.parse::<u64>().is_ok());
        let statement = words.len() == 3 && words[..2] == ["sql", "statement"] && numbered(2);
        let task = words.len() >= 5 && words[0] == "stage" && numbered(1) && words[2] == "task" && numbered(3);
        (statement || (task && words[4] == "failed")).then_some(tail)
    });
    after_place.unwrap_or(message).to_string()
}
