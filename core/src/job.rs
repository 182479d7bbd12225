//! The job specification: what a user submits (JSON over HTTP; JSON, TOML or
//! YAML files from the CLI).
//!
//! ```toml
//! [tables.orders]
//! format = "csv"
//! location = "data/"
//!
//! [[steps]]
//! op = "read"
//! table = "orders"
//!
//! [[steps]]
//! op = "filter"
//! expr = "country = 'US'"
//!
//! [output.write]
//! format = "parquet"
//! location = "out/orders_by_product"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{IgnisError, Result};
use crate::location::Location;
use crate::session::SessionOptions;
use crate::stream::StreamSpec;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A name shown in progress and status; defaults to the file name.
    #[serde(default)]
    pub name: Option<String>,
    /// Tables the query reads, by the name the query uses.
    #[serde(default)]
    pub tables: BTreeMap<String, TableSpec>,
    /// One query, or several statements of which all but the last define views.
    #[serde(default)]
    pub sql: Option<String>,
    /// A DataFrame-style chain of steps, the alternative to `sql`.
    #[serde(default)]
    pub steps: Option<Vec<Step>>,
    /// Wasm UDF components whose functions the query may call: a name given
    /// at upload, a digest (`sha256:<hex>`), or (local mode) a path to a
    /// `.wasm` file, relative to the job file.
    #[serde(default)]
    pub udfs: Vec<String>,
    #[serde(default)]
    pub output: OutputSpec,
    #[serde(default)]
    pub config: JobConfig,
    /// A streaming job: its query runs in micro-batches over the new data of
    /// its streaming tables (`format = "kafka"`, or files with `stream = true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Parquet,
    Json,
    /// A Kafka topic: a streaming table, or a streaming job's output.
    Kafka,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
            Format::Json => "json",
            Format::Kafka => "kafka",
        }
    }

    pub fn is_files(self) -> bool {
        self != Format::Kafka
    }

    /// The format a name stands for, in any case (`"csv"`, `"PARQUET"`):
    /// Spark's `format(...)` strings.
    pub fn from_name(name: &str) -> Option<Self> {
        [Format::Csv, Format::Parquet, Format::Json, Format::Kafka]
            .into_iter()
            .find(|f| name.eq_ignore_ascii_case(f.extension()))
    }

    /// [`Format::from_name`] for a file format (not Kafka).
    pub fn files_from_name(name: &str) -> Option<Self> {
        Self::from_name(name).filter(|f| f.is_files())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    pub format: Format,
    /// A path (relative to the job file), a `file://` or other object store
    /// URL; a directory or a glob such as `data/*.csv`. Not for Kafka tables.
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub options: TableOptions,
    /// Files: a streaming table whose rows are the files that appear under
    /// `location` (each read once, in the batch after it appeared).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Read exactly these files (URLs) instead of listing `location`; a stream
    /// gives each batch its new files this way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

impl TableSpec {
    /// A table of files at `location`.
    pub fn files_at(format: Format, location: String, options: TableOptions) -> Self {
        Self { format, location, options, stream: false, files: Vec::new() }
    }

    /// A table whose new rows feed a streaming job.
    pub fn is_streaming(&self) -> bool {
        self.stream || self.format == Format::Kafka
    }
}

/// Reader options; the CSV ones follow Spark's names.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableOptions {
    /// CSV: the first line holds column names (default true).
    #[serde(default)]
    pub header: Option<bool>,
    /// CSV: one ASCII character (default `,`).
    #[serde(default)]
    pub delimiter: Option<String>,
    /// CSV: one ASCII character (default `"`).
    #[serde(default)]
    pub quote: Option<String>,
    /// CSV: one ASCII character (default none).
    #[serde(default)]
    pub escape: Option<String>,
    /// An explicit schema as DDL, `order_id BIGINT, country STRING, ...`;
    /// without it the schema is inferred.
    #[serde(default)]
    pub schema: Option<String>,
    /// File extension to pick up in a directory (default: the format's).
    #[serde(default)]
    pub file_extension: Option<String>,
    /// CSV: what to do with malformed rows, as in Spark: PERMISSIVE,
    /// DROPMALFORMED or FAILFAST. Unset: DataFusion's native reader, which
    /// fails on a malformed row.
    #[serde(default)]
    pub mode: Option<crate::csv::CsvMode>,
    /// CSV: a field with this text is null.
    #[serde(default)]
    pub null_value: Option<String>,
    /// CSV, PERMISSIVE: an extra string column holding the raw malformed line.
    #[serde(default)]
    pub column_name_of_corrupt_record: Option<String>,
    /// Kafka: `host:port[,host:port...]` of the brokers.
    #[serde(default)]
    pub bootstrap_servers: Option<String>,
    /// Kafka: the topic.
    #[serde(default)]
    pub topic: Option<String>,
    /// Kafka: where a new stream starts, `earliest` or `latest` (default).
    #[serde(default)]
    pub starting_offsets: Option<String>,
    /// Kafka: at most this many records per batch, over all partitions.
    #[serde(default)]
    pub max_offsets_per_trigger: Option<u64>,
    /// Files: at most this many new files per batch.
    #[serde(default)]
    pub max_files_per_trigger: Option<usize>,
    /// Kafka: how `value` becomes the columns of `schema`: `json` (default
    /// when a schema is given; Spark's `from_json`) or `csv`. Without a schema
    /// the table has Spark's columns key, value, topic, partition, offset, timestamp.
    #[serde(default)]
    pub value_format: Option<String>,
}

impl TableOptions {
    /// Spark-style CSV handling was asked for.
    pub fn wants_spark_csv(&self) -> bool {
        self.mode.is_some() || self.null_value.is_some() || self.column_name_of_corrupt_record.is_some()
    }
}

/// One step of a DataFrame-style job. Expressions are SQL expression strings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Start from a table (must be the first step).
    Read {
        table: String,
    },
    /// Keep rows where `expr` is true.
    Filter {
        expr: String,
    },
    /// Replace the columns by these expressions (`"price * quantity AS total"`).
    Select {
        exprs: Vec<String>,
    },
    /// Add or replace one column.
    WithColumn {
        name: String,
        expr: String,
    },
    /// Group by `keys` and compute `aggs` (`"count(*) AS orders"`).
    GroupBy {
        #[serde(default)]
        keys: Vec<String>,
        aggs: Vec<String>,
    },
    /// Join with another table, on equal column names (`on`) or a condition.
    Join {
        table: String,
        #[serde(default)]
        on: Vec<String>,
        #[serde(default)]
        condition: Option<String>,
        #[serde(default)]
        how: JoinHow,
    },
    /// Sort by expressions, each optionally followed by ASC/DESC and NULLS FIRST/LAST.
    OrderBy {
        by: Vec<String>,
    },
    Limit {
        n: usize,
    },
    Distinct {},
    /// Append the rows of another table with the same columns (UNION ALL, by position).
    Union {
        table: String,
    },
    /// Run every batch through a transform of the job's UDF components (a
    /// `#[transform]` function: a record batch in, a record batch out), like
    /// Spark's `mapPartitions`/`mapInArrow`. Runs where the data is; no shuffle.
    MapBatches {
        function: String,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinHow {
    #[default]
    Inner,
    Left,
    Right,
    Full,
    Semi,
    Anti,
}

/// A job's location, parsed, with the field that named it and how the job uses it.
#[derive(Clone, Debug)]
pub struct JobLocation {
    pub field: String,
    pub location: Location,
    pub access: Access,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Upper bounds of a job's settings, checked when a job arrives; a driver
/// may set its own (`ignis serve --max-*`).
#[derive(Clone, Debug)]
pub struct JobLimits {
    pub shuffle_partitions: usize,
    pub batch_size: usize,
    pub max_task_attempts: u32,
    /// Characters of `name`.
    pub name_chars: usize,
}

impl Default for JobLimits {
    fn default() -> Self {
        Self { shuffle_partitions: 10_000, batch_size: 1 << 20, max_task_attempts: 16, name_chars: 256 }
    }
}

impl JobLimits {
    /// The first setting past its bound, as an error naming the field and the bound.
    pub fn check(&self, job: &JobSpec) -> Result<()> {
        let over = |field: &str, value: u64, bound: u64, unit: &str| {
            (value > bound)
                .then(|| IgnisError::Job(format!("{field}: {value} is over this driver's limit of {bound}{unit}")))
        };
        let c = &job.config;
        let name_chars = job.name.as_ref().map(|n| n.chars().count()).unwrap_or(0);
        let checks = [
            over(
                "config.shuffle_partitions",
                c.shuffle_partitions.unwrap_or(0) as u64,
                self.shuffle_partitions as u64,
                "",
            ),
            over("config.batch_size", c.batch_size.unwrap_or(0) as u64, self.batch_size as u64, ""),
            over(
                "config.max_task_attempts",
                c.max_task_attempts.unwrap_or(0).into(),
                self.max_task_attempts.into(),
                "",
            ),
            over("name", name_chars as u64, self.name_chars as u64, " characters"),
            c.task_deadline_s.filter(|s| !(s.is_finite() && (0.1..=86_400.0).contains(s))).map(|s| {
                IgnisError::Job(format!("config.task_deadline_s: {s} is not a number of seconds from 0.1 to 86400"))
            }),
        ];
        match checks.into_iter().flatten().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Where the result goes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputSpec {
    /// Rows come back to the client (like `df.show()` / `collect()`).
    #[default]
    Collect,
    Write(WriteSpec),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteSpec {
    pub format: Format,
    /// A directory: a path (relative to the job file) or an object store URL.
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub mode: WriteMode,
    /// Columns that become hive-style directories (`country=US/`).
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Kafka output: the topic rows go to (columns `value`, and `key` if there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Kafka output: the brokers, `host:port[,...]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_servers: Option<String>,
}

impl WriteSpec {
    /// Files of `format` written to the directory `location`.
    pub fn to_files(format: Format, location: String, mode: WriteMode, partition_by: Vec<String>) -> Self {
        Self { format, location, mode, partition_by, topic: None, bootstrap_servers: None }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Fail if the location already holds data (Spark's default).
    #[default]
    Error,
    Overwrite,
    Append,
    /// Do nothing if the location already holds data.
    Ignore,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Partitions after each shuffle (Spark's spark.sql.shuffle.partitions).
    #[serde(default)]
    pub shuffle_partitions: Option<usize>,
    /// Attempts per task before the job fails (default 4).
    #[serde(default)]
    pub max_task_attempts: Option<u32>,
    /// Rows per batch (default 8192).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Compression of shuffle data: lz4 (default), zstd or none.
    #[serde(default)]
    pub shuffle_compression: Option<ShuffleCompression>,
    /// Where the tasks run: `local`, `hosts` or `lambda`, among the backends
    /// the driver was started with (default: the driver's default backend).
    #[serde(default)]
    pub backend: Option<String>,
    /// Narrow one side of a join to the keys of the other side's filtered
    /// stage before it is shuffled (default true). The narrowed stage waits for
    /// that stage; with many idle executors, running both at once may finish
    /// sooner.
    #[serde(default)]
    pub runtime_filters: Option<bool>,
    /// DataFusion session options by their `SET` names, for the SQL dialect,
    /// its parsing options and the session time zone (see
    /// [`SessionOptions`](crate::session::SessionOptions) for which).
    #[serde(default, skip_serializing_if = "SessionOptions::is_empty")]
    pub options: SessionOptions,
    /// Seconds a task attempt on executor hosts may run before it is
    /// abandoned and run again on another host (default: once a task of its
    /// stage has finished, 10 x the stage's median task time, at least 60 s).
    #[serde(default)]
    pub task_deadline_s: Option<f64>,
    /// Speculative execution: once 75% of a stage's tasks finished, a task
    /// running longer than 1.5 x the stage's median gets a second attempt,
    /// and the first to finish is the one accepted. Default: on for jobs of
    /// more than 8 tasks on executor hosts or Lambda, off on local workers
    /// (there a slow task is not a slow machine).
    #[serde(default)]
    pub speculation: Option<bool>,
}

// Measured on TPC-H SF1 (bench --shuffle-compression): none and lz4 give the
// same times on local disk (LZ4's CPU against 3.5x the bytes), so lz4 stays the
// default everywhere; on object storage the bytes cost requests and transfer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShuffleCompression {
    #[default]
    Lz4,
    Zstd,
    None,
}

pub const DEFAULT_SHUFFLE_PARTITIONS: usize = 4;
pub const DEFAULT_MAX_TASK_ATTEMPTS: u32 = 4;
pub const DEFAULT_BATCH_SIZE: usize = 8192;

impl JobConfig {
    pub fn shuffle_partitions(&self) -> usize {
        self.shuffle_partitions.unwrap_or(DEFAULT_SHUFFLE_PARTITIONS).max(1)
    }
    pub fn runtime_filters(&self) -> bool {
        self.runtime_filters.unwrap_or(true)
    }
    pub fn max_task_attempts(&self) -> u32 {
        self.max_task_attempts.unwrap_or(DEFAULT_MAX_TASK_ATTEMPTS).max(1)
    }
    pub fn batch_size(&self) -> usize {
        self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE).max(1)
    }
}

impl JobSpec {
    /// Parse a job from text in the given format ("json", "toml", "yaml"); errors
    /// name the field that was wrong.
    pub fn parse(text: &str, format: &str, origin: &str) -> Result<Self> {
        let spec: JobSpec = match format {
            "json" => {
                let de = &mut serde_json::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de)
                    .map_err(|e| IgnisError::Job(format!("{origin}: {}: {}", field_path(e.path()), e.inner())))?
            }
            "toml" => {
                let de = toml::Deserializer::parse(text).map_err(|e| IgnisError::Job(format!("{origin}: {e}")))?;
                serde_path_to_error::deserialize(de).map_err(|e| {
                    IgnisError::Job(format!("{origin}: {}: {}", field_path(e.path()), e.inner().message()))
                })?
            }
            "yaml" | "yml" => {
                let de = serde_yaml::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de)
                    .map_err(|e| IgnisError::Job(format!("{origin}: {}: {}", field_path(e.path()), e.inner())))?
            }
            other => {
                return Err(IgnisError::Job(format!(
                    "{origin}: unknown job file format '{other}' (use .toml, .json, .yaml or .yml)"
                )));
            }
        };
        let mut spec = spec;
        spec.normalize().map_err(|e| IgnisError::Job(format!("{origin}: {e}")))?;
        spec.validate().map_err(|e| IgnisError::Job(format!("{origin}: {e}")))?;
        Ok(spec)
    }

    /// One place for each thing: a stream's `sql` becomes the job's.
    pub fn normalize(&mut self) -> std::result::Result<(), String> {
        if let Some(sql) = self.stream.as_mut().and_then(|s| s.sql.take()) {
            if self.sql.is_some() {
                return Err("give the query once: either `sql` or `stream.sql`".into());
            }
            self.sql = Some(sql);
        }
        Ok(())
    }

    /// Read a job file; the format follows the file extension.
    pub fn from_file(path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| IgnisError::Job(format!("cannot read job file {origin}: {e}")))?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let mut spec = Self::parse(&text, &ext, &origin)?;
        if spec.name.is_none() {
            spec.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        let base = path.parent().unwrap_or(Path::new("."));
        spec.resolve_paths(base)?;
        Ok(spec)
    }

    /// Make relative table and output locations absolute `file://` URLs,
    /// relative to `base` (the job file's directory), and every location canonical.
    pub fn resolve_paths(&mut self, base: &Path) -> Result<()> {
        self.resolve_locations(Some(base))?;
        for udf in &mut self.udfs {
            if is_wasm_path(udf) && !Path::new(udf.as_str()).is_absolute() {
                *udf = base.join(udf.as_str()).to_string_lossy().into_owned();
            }
        }
        Ok(())
    }

    /// Parse every table and output location once: relative paths against
    /// `base` (none for a submitted job: then they are errors), each location
    /// replaced by its canonical URL. Returns them typed, for access checks.
    pub fn resolve_locations(&mut self, base: Option<&Path>) -> Result<Vec<JobLocation>> {
        let mut out = Vec::new();
        for (name, table) in &mut self.tables {
            if table.format.is_files() {
                let field = format!("tables.{name}.location");
                let location = Location::parse(&table.location, base, &field)?;
                table.location = location.url();
                out.push(JobLocation { field, location, access: Access::Read });
            }
            for (i, file) in table.files.iter_mut().enumerate() {
                let field = format!("tables.{name}.files[{i}]");
                let location = Location::parse(file, base, &field)?;
                *file = location.url();
                out.push(JobLocation { field, location, access: Access::Read });
            }
        }
        if let OutputSpec::Write(w) = &mut self.output
            && w.format.is_files()
        {
            let field = "output.write.location".to_string();
            let location = Location::parse(&w.location, base, &field)?;
            w.location = location.url();
            out.push(JobLocation { field, location, access: Access::Write });
        }
        if let Some(stream) = &mut self.stream {
            let field = "stream.checkpoint".to_string();
            let location = Location::parse(&stream.checkpoint, base, &field)?;
            stream.checkpoint = location.url();
            out.push(JobLocation { field, location, access: Access::Write });
        }
        Ok(out)
    }

    /// The Kafka brokers the job reaches, with the field naming each list.
    pub fn kafka_brokers(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, table) in &self.tables {
            if let Some(servers) = &table.options.bootstrap_servers {
                out.push((format!("tables.{name}.options.bootstrap_servers"), servers.clone()));
            }
        }
        if let OutputSpec::Write(w) = &self.output
            && let Some(servers) = &w.bootstrap_servers
        {
            out.push(("output.write.bootstrap_servers".to_string(), servers.clone()));
        }
        out
    }

    /// A submitted job names uploaded UDF components, never files on the driver.
    pub fn check_submitted_udfs(&self) -> Result<()> {
        for (i, udf) in self.udfs.iter().enumerate() {
            if is_wasm_path(udf) {
                return Err(IgnisError::Job(format!(
                    "udfs[{i}]: {udf:?} is a file path; upload the component first (`ignis udf upload`, \
                     POST /v1/udfs) and name it here by its name or digest"
                )));
            }
        }
        Ok(())
    }

    /// Checks serde cannot express; messages name the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        match (&self.sql, &self.steps) {
            (Some(_), Some(_)) => return Err("give either `sql` or `steps`, not both".into()),
            (None, None) => return Err("missing `sql` or `steps`: the job has nothing to run".into()),
            (Some(sql), None) if sql.trim().is_empty() => return Err("`sql` is empty".into()),
            (None, Some(steps)) => validate_steps(steps, &self.tables, &self.udfs)?,
            _ => {}
        }
        for (name, t) in &self.tables {
            if t.format == Format::Kafka {
                for (field, v) in [("bootstrap_servers", &t.options.bootstrap_servers), ("topic", &t.options.topic)] {
                    if v.as_deref().is_none_or(|v| v.trim().is_empty()) {
                        return Err(format!("tables.{name}.options.{field}: a Kafka table needs it"));
                    }
                }
                if !t.location.is_empty() {
                    return Err(format!(
                        "tables.{name}.location: a Kafka table has no location; name the brokers and topic in options"
                    ));
                }
                if let Some(s) = &t.options.starting_offsets
                    && s != "earliest"
                    && s != "latest"
                {
                    return Err(format!(
                        "tables.{name}.options.starting_offsets: {s:?}: use \"earliest\" or \"latest\""
                    ));
                }
                if let Some(v) = &t.options.value_format
                    && v != "json"
                    && v != "csv"
                {
                    return Err(format!("tables.{name}.options.value_format: {v:?}: use \"json\" or \"csv\""));
                }
            } else if t.location.trim().is_empty() && t.files.is_empty() {
                return Err(format!("tables.{name}.location: is empty"));
            }
            if t.is_streaming() && self.stream.is_none() {
                return Err(format!(
                    "tables.{name}: a streaming table (Kafka, or stream = true) needs a [stream] section with a checkpoint"
                ));
            }
            for (field, v) in
                [("delimiter", &t.options.delimiter), ("quote", &t.options.quote), ("escape", &t.options.escape)]
            {
                if let Some(v) = v
                    && (v.len() != 1 || !v.is_ascii())
                {
                    return Err(format!("tables.{name}.options.{field}: must be one ASCII character, got {v:?}"));
                }
            }
        }
        if let OutputSpec::Write(w) = &self.output {
            if w.format == Format::Kafka {
                for (field, v) in [("bootstrap_servers", &w.bootstrap_servers), ("topic", &w.topic)] {
                    if v.as_deref().is_none_or(|v| v.trim().is_empty()) {
                        return Err(format!("output.write.{field}: Kafka output needs it"));
                    }
                }
                if self.stream.is_none() {
                    return Err(
                        "output.write.format: Kafka output is for streaming jobs (add a [stream] section)".into()
                    );
                }
            } else if w.location.trim().is_empty() {
                return Err("output.write.location: is empty".into());
            }
        }
        if let Some(stream) = &self.stream {
            stream.validate()?;
            if !self.tables.values().any(TableSpec::is_streaming) {
                return Err("stream: no streaming table: give one table format = \"kafka\" or stream = true".into());
            }
            if self.steps.is_some() {
                return Err("stream: a streaming job's query is `sql`; steps are not supported for streams yet".into());
            }
        }
        if self.config.shuffle_partitions == Some(0) {
            return Err("config.shuffle_partitions: must be at least 1".into());
        }
        Ok(())
    }
}

fn validate_steps(
    steps: &[Step],
    tables: &BTreeMap<String, TableSpec>,
    udfs: &[String],
) -> std::result::Result<(), String> {
    let Some(Step::Read { .. }) = steps.first() else {
        return Err("steps[0]: the first step must be `read`".into());
    };
    for (i, step) in steps.iter().enumerate() {
        let table = match step {
            Step::Read { table } if i == 0 => Some(table),
            Step::Read { .. } => return Err(format!("steps[{i}]: `read` is only allowed as the first step")),
            Step::Join { table, on, condition, .. } => {
                if on.is_empty() == condition.is_none() {
                    return Err(format!("steps[{i}]: join needs exactly one of `on` (columns) or `condition`"));
                }
                Some(table)
            }
            Step::Union { table } => Some(table),
            Step::GroupBy { aggs, keys } if aggs.is_empty() && keys.is_empty() => {
                return Err(format!("steps[{i}]: group_by needs `keys` or `aggs`"));
            }
            Step::MapBatches { function } if udfs.is_empty() => {
                return Err(format!(
                    "steps[{i}]: map_batches '{function}' needs the UDF component that offers it in `udfs`"
                ));
            }
            _ => None,
        };
        if let Some(t) = table
            && !tables.contains_key(t)
        {
            return Err(format!("steps[{i}]: unknown table '{t}' (declare it under [tables.{t}])"));
        }
    }
    Ok(())
}

fn field_path(p: &serde_path_to_error::Path) -> String {
    let s = p.to_string();
    if s == "." { "(top level)".into() } else { s }
}

/// A location as a canonical URL: a path becomes an absolute `file://` URL
/// (relative to `base`); see [`Location::parse`].
pub fn resolve_location(location: &str, base: &Path) -> Result<String> {
    Ok(Location::parse(location, Some(base), "location")?.url())
}

/// A `udfs` entry that names a component file rather than an uploaded component.
pub fn is_wasm_path(entry: &str) -> bool {
    entry.ends_with(".wasm")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_error_names_the_field() {
        let text = r#"
sql = "select 1"
[tables.orders]
format = "xls"
location = "a.csv"
"#;
        let err = JobSpec::parse(text, "toml", "job.toml").unwrap_err().to_string();
        assert!(err.contains("tables.orders.format"), "{err}");
        assert!(err.contains("xls"), "{err}");
    }

    #[test]
    fn json_unknown_step_field_is_named() {
        let text = r#"{"tables": {"t": {"format": "csv", "location": "x"}},
                       "steps": [{"op": "read", "table": "t"}, {"op": "filter", "exp": "a > 1"}]}"#;
        let err = JobSpec::parse(text, "json", "job.json").unwrap_err().to_string();
        assert!(err.contains("steps[1]"), "{err}");
        assert!(err.contains("exp"), "{err}");
    }

    #[test]
    fn yaml_jobs_parse_and_errors_name_the_field() {
        let text =
            "sql: SELECT 1\ntables:\n  t:\n    format: parquet\n    location: x/\nconfig:\n  shuffle_partitions: 8\n";
        let spec = JobSpec::parse(text, "yaml", "job.yaml").expect("valid yaml job");
        assert_eq!(spec.config.shuffle_partitions(), 8);
        assert_eq!(spec.tables["t"].format, Format::Parquet);
        let err = JobSpec::parse("sql: SELECT 1\nconfig:\n  shuffle_partitions: many\n", "yaml", "job.yaml")
            .expect_err("a string is not a partition count")
            .to_string();
        assert!(err.contains("config.shuffle_partitions"), "{err}");
    }

    #[test]
    fn output_forms() {
        let spec = JobSpec::parse("sql = 'select 1'\noutput = 'collect'", "toml", "j").unwrap();
        assert!(matches!(spec.output, OutputSpec::Collect));
        let spec = JobSpec::parse(
            "sql = 'select 1'\n[output.write]\nformat = 'parquet'\nlocation = 'out'\nmode = 'overwrite'",
            "toml",
            "j",
        )
        .unwrap();
        let OutputSpec::Write(w) = spec.output else { panic!("expected write") };
        assert_eq!(w.mode, WriteMode::Overwrite);
    }

    #[test]
    fn relative_locations_resolve_against_the_job_dir() {
        let url = resolve_location("data/", Path::new("/jobs/orders")).unwrap();
        assert_eq!(url, "file:///jobs/orders/data/");
        assert_eq!(resolve_location("../x.csv", Path::new("/jobs/orders")).unwrap(), "file:///jobs/x.csv");
        assert_eq!(resolve_location("s3://b/k", Path::new("/x")).unwrap(), "s3://b/k");
    }

    #[test]
    fn steps_must_start_with_read_and_name_known_tables() {
        let text = r#"{"tables": {}, "steps": [{"op": "read", "table": "nope"}]}"#;
        let err = JobSpec::parse(text, "json", "j").unwrap_err().to_string();
        assert!(err.contains("unknown table 'nope'"), "{err}");
    }
}
