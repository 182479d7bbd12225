//! Streaming jobs as a loop of batch jobs (Spark's micro-batches).
//!
//! Batch N: plan the new range of the stream's source (Kafka offsets per
//! partition, or new files), write `offsets/N`, run the batch as ordinary
//! Ignis jobs (any backend), commit the output, write `commits/N`. A restart
//! from the same checkpoint re-runs a batch that has offsets but no commit,
//! over the same range. File output is exactly-once: a batch's files carry its
//! job id, and a re-run replaces what an earlier run of it committed.
//!
//! Aggregations keep their state as rows: every row of a window the watermark
//! has not passed yet, written after each batch under `state/N` and read by
//! the next batch's tasks. Append mode emits a window when the watermark
//! passes its end; update mode emits the windows the batch's rows fell in;
//! complete mode emits everything (and keeps every row).

pub mod checkpoint;
pub mod kafka;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::parquet::arrow::ArrowWriter;
use ignis_core::error::{IgnisError, Result};
use ignis_core::ids::JobId;
use ignis_core::job::{Format, JobSpec, OutputSpec, TableOptions, TableSpec, WriteMode, WriteSpec};
use ignis_core::store;
use ignis_core::stream::{OutputMode, StreamSpec, Trigger};
use object_store::PutPayload;
use serde::Serialize;
use tokio::sync::watch;

pub use self::checkpoint::BatchCommit;
use self::checkpoint::{BatchOffsets, Checkpoint, PartitionRange, SourceRange};
use self::kafka::{Topic, ValueColumns};
use crate::{Driver, JobResult};

/// Records read while planning a new batch, by partition: staged without a second fetch.
type Prefetched = BTreeMap<i32, Vec<rskafka::record::RecordAndOffset>>;

/// Records per batch when a Kafka table sets no `max_offsets_per_trigger`:
/// a batch's records pass through the driver's memory.
pub const DEFAULT_MAX_OFFSETS_PER_BATCH: u64 = 1_000_000;

/// What a running stream has done, for `ignis status` and the job API.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct StreamStatus {
    pub batches_done: u64,
    pub last_batch: Option<u64>,
    pub input_rows: u64,
    pub late_rows: u64,
    pub output_rows: u64,
    /// Rows the last batch read and wrote.
    #[serde(default)]
    pub last_input_rows: u64,
    #[serde(default)]
    pub last_output_rows: u64,
    /// Input rows per second of the last batch's duration.
    pub processed_rows_per_s: f64,
    pub last_batch_ms: u64,
    /// The watermark, RFC 3339.
    pub watermark: Option<String>,
    pub state_rows: u64,
    pub last_error: Option<String>,
}

/// Hears of every committed batch, with its rows when the stream's output is
/// `collect` (the console).
pub type Printer = dyn Fn(&BatchCommit, Option<&[RecordBatch]>) + Send + Sync;

/// What the stream's query needs between batches.
#[derive(Clone, Debug)]
enum Shape {
    /// Filters and projections: each batch on its own new rows.
    Stateless,
    /// An aggregation; `window` is the event-time window on the watermark
    /// column, when there is one.
    Aggregate { window: Option<EventWindow> },
}

/// A `window(ts, size[, slide])` the query groups by, in microseconds, and
/// the output column that holds it (a struct of start and end), if any.
#[derive(Clone, Debug)]
struct EventWindow {
    size: i64,
    slide: i64,
    column: Option<String>,
}

/// Run a streaming job until its trigger says it is done (`once`,
/// `available_now`) or `stop` turns true (after the running batch).
pub async fn run(
    driver: &Driver,
    job: &JobSpec,
    status: &Mutex<StreamStatus>,
    printer: &Printer,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let spec = job.stream.clone().ok_or_else(|| IgnisError::internal("not a streaming job"))?;
    let trigger = spec.trigger().map_err(IgnisError::Job)?;
    let stream = Stream::open(driver, job, &spec).await?;
    let mut failures = 0;
    let mut first = true;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let started = Instant::now();
        let outcome = stream.step(first).await;
        first = false;
        let ran = match outcome {
            Ok(Some(commit)) => {
                failures = 0;
                stream.report(status, &commit);
                printer(&commit.0, commit.1.as_deref());
                true
            }
            Ok(None) => false,
            Err(e) => {
                failures += 1;
                lock(status).last_error = Some(e.to_string());
                // A mistake in the job fails the same way every time. Task
                // attempts are retried inside each job; a batch that still
                // fails is tried again, as many times as a task would be.
                if matches!(e, IgnisError::Job(_) | IgnisError::Plan(_)) || failures >= job.config.max_task_attempts() {
                    return Err(e);
                }
                tracing::warn!(error = %e, attempt = failures, "stream batch failed; trying it again");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(failures))).await;
                continue;
            }
        };
        let wait = match trigger {
            Trigger::Once => return Ok(()),
            Trigger::AvailableNow if !ran => return Ok(()),
            Trigger::AvailableNow => Duration::ZERO,
            Trigger::Every(interval) => {
                let idle = if ran { Duration::ZERO } else { Duration::from_millis(500) };
                interval.saturating_sub(started.elapsed()).max(idle)
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

fn lock(status: &Mutex<StreamStatus>) -> std::sync::MutexGuard<'_, StreamStatus> {
    status.lock().unwrap_or_else(|p| p.into_inner())
}

struct Stream<'a> {
    driver: &'a Driver,
    job: JobSpec,
    spec: StreamSpec,
    id: String,
    checkpoint: Checkpoint,
    /// The stream's table (its name in the query).
    table: String,
    source: Source,
    delay_us: Option<i64>,
    shape: tokio::sync::OnceCell<Shape>,
    /// Files a file source has read, once loaded from the checkpoint.
    seen: tokio::sync::Mutex<Option<HashSet<String>>>,
}

/// Batches of offsets and commits kept in the checkpoint by default (Spark's
/// `minBatchesToRetain`, `stream.retained_batches`); every this many batches, the files a file source
/// has read are written as one list (`compact/N`) and older logs removed.
pub const RETAINED_BATCHES: u64 = 100;

/// The files a file source had read by `compact/N`.
#[derive(Serialize, serde::Deserialize)]
struct Compact {
    files: Vec<String>,
}

enum Source {
    Kafka { topic: Topic, columns: ValueColumns, earliest: bool, max_per_batch: Option<u64> },
    Files { table: Box<TableSpec>, extension: String, max_per_batch: Option<usize> },
}

#[derive(Serialize, serde::Deserialize)]
struct Metadata {
    id: String,
}

impl<'a> Stream<'a> {
    async fn open(driver: &'a Driver, job: &JobSpec, spec: &StreamSpec) -> Result<Self> {
        let mut streaming = job.tables.iter().filter(|(_, t)| t.is_streaming());
        let (Some((name, table)), None) = (streaming.next(), streaming.next()) else {
            return Err(IgnisError::Job(
                "tables: a stream reads exactly one streaming table (Kafka, or stream = true) for now".into(),
            ));
        };
        let env = ignis_core::store::runtime_env();
        let checkpoint = Checkpoint::new(env.clone(), &spec.checkpoint);
        let id = match checkpoint.get::<Metadata>("metadata").await? {
            Some(m) => m.id,
            None => {
                let id = format!("stream-{}", JobId::generate().as_str().trim_start_matches("job-"));
                checkpoint.put("metadata", &Metadata { id: id.clone() }).await?;
                id
            }
        };
        let source = match table.format {
            Format::Kafka => {
                let opts = &table.options;
                let field = format!("tables.{name}.options.bootstrap_servers");
                let servers = opts.bootstrap_servers.as_deref().unwrap_or_default();
                let topic = Topic::connect(servers, opts.topic.as_deref().unwrap_or_default(), &field).await?;
                let columns = match &opts.schema {
                    Some(ddl) => {
                        let ctx = ignis_core::session::session_context(1, 8192, &Default::default());
                        let schema = crate::planner::parse_schema(&ctx, ddl)
                            .await
                            .map_err(|e| IgnisError::Job(format!("tables.{name}.options.schema: {e}")))?;
                        ValueColumns::Parsed {
                            schema: Arc::new(schema),
                            csv: opts.value_format.as_deref() == Some("csv"),
                        }
                    }
                    None => ValueColumns::Raw,
                };
                Source::Kafka {
                    topic,
                    columns,
                    earliest: opts.starting_offsets.as_deref() == Some("earliest"),
                    max_per_batch: opts.max_offsets_per_trigger,
                }
            }
            format => Source::Files {
                extension: table.options.file_extension.clone().unwrap_or_else(|| format!(".{}", format.extension())),
                max_per_batch: table.options.max_files_per_trigger,
                table: Box::new(table.clone()),
            },
        };
        let delay_us =
            spec.watermark_delay().map_err(IgnisError::Job)?.map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        Ok(Self {
            driver,
            job: job.clone(),
            spec: spec.clone(),
            id,
            checkpoint,
            table: name.clone(),
            source,
            delay_us,
            shape: tokio::sync::OnceCell::new(),
            seen: tokio::sync::Mutex::new(None),
        })
    }

    /// Run the next batch: one left uncommitted by an earlier run, else a new
    /// one if the source has new data. `None`: nothing to do.
    async fn step(&self, first: bool) -> Result<Option<(BatchCommit, Option<Vec<RecordBatch>>)>> {
        let offsets = self.checkpoint.batches("offsets").await?;
        let commits = self.checkpoint.batches("commits").await?;
        let last_commit: Option<BatchCommit> = match commits.last() {
            Some(n) => self.checkpoint.get(&format!("commits/{n}")).await?,
            None => None,
        };
        if let Some(&n) = offsets.last()
            && commits.last() != Some(&n)
        {
            let planned: BatchOffsets = self
                .checkpoint
                .get(&format!("offsets/{n}"))
                .await?
                .ok_or_else(|| IgnisError::internal(format!("offsets/{n} vanished")))?;
            if first {
                tracing::info!(stream = %self.id, batch = n, "re-running a batch an earlier run left uncommitted");
            }
            return self.run_batch(&planned, Prefetched::new()).await.map(Some);
        }
        let previous: Option<BatchOffsets> = match offsets.last() {
            Some(n) => self.checkpoint.get(&format!("offsets/{n}")).await?,
            None => None,
        };
        let Some((range, prefetched)) = self.next_range(previous.as_ref(), &offsets).await? else {
            return Ok(None);
        };
        let batch = offsets.last().map_or(0, |n| n + 1);
        let planned = BatchOffsets {
            batch,
            watermark_us: last_commit.as_ref().and_then(|c| c.watermark_us),
            state_from: last_commit.as_ref().filter(|c| c.state_rows > 0).map(|c| c.batch),
            seen_from: last_commit.as_ref().filter(|c| c.seen_rows > 0).map(|c| c.batch),
            sources: BTreeMap::from([(self.table.clone(), range)]),
        };
        crash_point("before-offsets", batch);
        // The write-ahead log: the range is recorded before anything runs.
        self.checkpoint.put(&format!("offsets/{batch}"), &planned).await?;
        crash_point("after-offsets", batch);
        self.run_batch(&planned, prefetched).await.map(Some)
    }

    /// The source's data after `previous`, or `None` when there is none.
    async fn next_range(
        &self,
        previous: Option<&BatchOffsets>,
        batches: &[u64],
    ) -> Result<Option<(SourceRange, Prefetched)>> {
        let mut prefetched = Prefetched::new();
        let range = match &self.source {
            Source::Kafka { topic, earliest, max_per_batch, .. } => {
                let done: BTreeMap<i32, i64> = match previous.and_then(|p| p.sources.get(&self.table)) {
                    Some(SourceRange::Kafka { partitions, .. }) => {
                        partitions.iter().map(|r| (r.partition, r.end)).collect()
                    }
                    _ => BTreeMap::new(),
                };
                // Where a partition new to the stream starts: where the stream
                // started for the first batch, the earliest offset after that.
                let from_latest = previous.is_none() && !earliest;
                let starts = topic.offsets(from_latest).await?;
                let mut budget = max_per_batch.unwrap_or(DEFAULT_MAX_OFFSETS_PER_BATCH);
                let count = starts.len();
                let mut partitions = Vec::new();
                for (i, (p, first)) in starts.iter().enumerate() {
                    let start = done.get(p).copied().unwrap_or(*first);
                    let share = budget / (count - i).max(1) as u64;
                    let records = topic.read_new(*p, start, usize::try_from(share).unwrap_or(usize::MAX)).await?;
                    budget -= records.len() as u64;
                    let end = records.last().map_or(start, |r| r.offset + 1);
                    partitions.push(PartitionRange { partition: *p, start, end });
                    prefetched.insert(*p, records);
                }
                SourceRange::Kafka { topic: topic.name.clone(), partitions }
            }
            Source::Files { table, extension, max_per_batch } => {
                let seen = self.seen_files(batches).await?;
                let env = ignis_core::store::runtime_env();
                let (store, root) = store::resolve(&env, &table.location)?;
                let mut new: Vec<String> = store::list_all(store.as_ref(), &root)
                    .await?
                    .iter()
                    .filter_map(|meta| {
                        let relative: Vec<String> =
                            meta.location.prefix_match(&root)?.map(|p| p.as_ref().to_string()).collect();
                        let hidden = relative.iter().any(|p| p.starts_with('_') || p.starts_with('.'));
                        let name = relative.join("/");
                        (!hidden && name.ends_with(extension.as_str())).then(|| store::join(&table.location, &name))
                    })
                    .filter(|url| !seen.contains(url))
                    .collect();
                new.sort();
                if let Some(max) = max_per_batch {
                    new.truncate((*max).max(1));
                }
                SourceRange::Files { files: new }
            }
        };
        Ok((!range.is_empty()).then_some((range, prefetched)))
    }

    /// The files a file source has read: the last compacted list and the
    /// ranges logged after it (loaded once), plus every batch planned since.
    async fn seen_files(&self, batches: &[u64]) -> Result<HashSet<String>> {
        let mut guard = self.seen.lock().await;
        if guard.is_none() {
            let mut seen = HashSet::new();
            let compacted = self.checkpoint.batches("compact").await?;
            let after = match compacted.last() {
                Some(&m) => {
                    if let Some(c) = self.checkpoint.get::<Compact>(&format!("compact/{m}")).await? {
                        seen.extend(c.files);
                    }
                    Some(m)
                }
                None => None,
            };
            for n in batches.iter().filter(|n| after.is_none_or(|m| **n > m)) {
                if let Some(offsets) = self.checkpoint.get::<BatchOffsets>(&format!("offsets/{n}")).await?
                    && let Some(SourceRange::Files { files }) = offsets.sources.get(&self.table)
                {
                    seen.extend(files.iter().cloned());
                }
            }
            *guard = Some(seen);
        }
        let seen = guard.as_mut().expect("loaded above");
        // Ranges planned since loading (this run's batches).
        if let Some(&n) = batches.last()
            && let Some(offsets) = self.checkpoint.get::<BatchOffsets>(&format!("offsets/{n}")).await?
            && let Some(SourceRange::Files { files }) = offsets.sources.get(&self.table)
        {
            seen.extend(files.iter().cloned());
        }
        Ok(seen.clone())
    }

    /// Every [`RETAINED_BATCHES`] batches: the read files as one list, and
    /// the logs of batches older than the retained ones removed.
    async fn compact(&self, n: u64) -> Result<()> {
        let retained = self.spec.retained_batches.unwrap_or(RETAINED_BATCHES).max(2);
        if !(n + 1).is_multiple_of(retained) {
            return Ok(());
        }
        if matches!(self.source, Source::Files { .. }) {
            let files = self.seen_files(&[n]).await?;
            let mut files: Vec<String> = files.into_iter().collect();
            files.sort();
            self.checkpoint.put(&format!("compact/{n}"), &Compact { files }).await?;
        }
        let keep_from = (n + 1).saturating_sub(retained);
        for dir in ["offsets", "commits", "compact"] {
            for old in self.checkpoint.batches(dir).await? {
                let older = if dir == "compact" { old < n } else { old < keep_from };
                if older {
                    self.checkpoint.delete(&format!("{dir}/{old}")).await?;
                }
            }
        }
        Ok(())
    }

    async fn run_batch(
        &self,
        planned: &BatchOffsets,
        prefetched: Prefetched,
    ) -> Result<(BatchCommit, Option<Vec<RecordBatch>>)> {
        let started = Instant::now();
        let n = planned.batch;
        let range = planned
            .sources
            .get(&self.table)
            .ok_or_else(|| IgnisError::internal(format!("offsets/{n} has no range for table {}", self.table)))?;
        let new_table = self.stage(n, range, prefetched).await?;
        crash_point("after-staging", n);
        let shape = self
            .shape
            .get_or_try_init(|| async {
                let mut probe = self.job.clone();
                probe.tables.insert(self.table.clone(), new_table.clone());
                probe.stream = None;
                probe.output = OutputSpec::Collect;
                self.shape_of(&probe).await
            })
            .await?
            .clone();
        let mut commit = BatchCommit { batch: n, watermark_us: planned.watermark_us, ..BatchCommit::default() };
        let t = &self.table;
        let new_name = format!("__ignis_new_{t}");
        let mut tables = self.job.tables.clone();
        tables.remove(t);
        tables.insert(new_name.clone(), new_table);
        let column = self.spec.watermark.as_ref().map(|w| quote_ident(&w.column));
        let after = |wm: Option<i64>| match (&column, wm) {
            (Some(c), Some(wm)) => format!("{c} > to_timestamp_micros({wm})"),
            _ => "true".to_string(),
        };
        let late_filter = after(planned.watermark_us);

        // Rows, rows on time, latest event time of the new data.
        let max_ts = match &column {
            Some(c) => format!("max({c})"),
            None => "CAST(NULL AS TIMESTAMP)".to_string(),
        };
        let stats_sql = format!(
            "SELECT count(*) AS n, count(*) FILTER (WHERE {late_filter}) AS kept, {max_ts} AS max_ts FROM {}",
            quote_ident(&new_name)
        );
        let stats = self.collect(&format!("{}-{n}-stats", self.id), tables.clone(), stats_sql).await?;
        let (rows, kept, max_us) = read_stats(&stats)?;
        crash_point("after-stats", n);
        commit.input_rows = rows;
        let watermark = match (self.delay_us, max_us) {
            (Some(delay), Some(max)) => Some(planned.watermark_us.map_or(max - delay, |w| w.max(max - delay))),
            _ => planned.watermark_us,
        };
        commit.watermark_us = watermark;

        // The batch's rows as the query sees them: late ones dropped when the
        // query keeps state or deduplicates (a stateless query takes them all,
        // as in Spark), and a key seen before dropped when deduplicating.
        let mut fresh = if matches!(shape, Shape::Aggregate { .. }) || !self.spec.deduplicate.is_empty() {
            commit.late_rows = rows - kept;
            format!("SELECT * FROM {} WHERE {late_filter}", quote_ident(&new_name))
        } else {
            format!("SELECT * FROM {}", quote_ident(&new_name))
        };
        if !self.spec.deduplicate.is_empty() {
            fresh = self.deduplicate(planned, &mut tables, &fresh, watermark, &mut commit).await?;
        }

        let printed = match shape {
            Shape::Stateless => {
                let view = format!("CREATE VIEW {} AS {fresh}", quote_ident(t));
                let (rows, printed) = self.emit(n, tables, view, None).await?;
                commit.output_rows = rows;
                printed
            }
            Shape::Aggregate { window } => {
                self.run_aggregate(planned, tables, &fresh, window, watermark, &mut commit).await?
            }
        };
        commit.duration_ms = started.elapsed().as_millis() as u64;
        crash_point("after-sink", n);
        self.checkpoint.put(&format!("commits/{n}"), &commit).await?;
        crash_point("after-commit", n);
        // What only this batch needed.
        self.checkpoint.remove(&format!("sources/{n}/")).await?;
        if let Some(old) = planned.state_from {
            self.checkpoint.remove(&format!("state/{old}/")).await?;
        }
        if let Some(old) = planned.seen_from {
            self.checkpoint.remove(&format!("seen/{old}/")).await?;
        }
        self.compact(n).await?;
        Ok((commit, printed))
    }

    /// Spark's `dropDuplicatesWithinWatermark`: of the rows `fresh` selects,
    /// keep the first of each key (`stream.deduplicate` columns) not seen in
    /// an earlier batch; remember the keys (in the checkpoint, `seen/N`) until
    /// the watermark passes their first event time plus the delay. Returns
    /// the query of the kept rows.
    async fn deduplicate(
        &self,
        planned: &BatchOffsets,
        tables: &mut BTreeMap<String, TableSpec>,
        fresh: &str,
        watermark: Option<i64>,
        commit: &mut BatchCommit,
    ) -> Result<String> {
        let n = planned.batch;
        let seen_name = format!("__ignis_seen_{}", self.table);
        if let Some(from) = planned.seen_from {
            let location = self.checkpoint.url_of(&format!("seen/{from}/"));
            tables.insert(seen_name.clone(), TableSpec::files_at(Format::Parquet, location, TableOptions::default()));
        }
        let keys: Vec<String> = self.spec.deduplicate.iter().map(|k| quote_ident(k)).collect();
        let key_list = keys.join(", ");
        let column = self.spec.watermark.as_ref().map(|w| quote_ident(&w.column));
        let order = column.as_ref().map(|c| format!(" ORDER BY {c}")).unwrap_or_default();
        let mut kept = format!(
            "SELECT * EXCLUDE (__ignis_rn) FROM (SELECT *, row_number() OVER (PARTITION BY {key_list}{order}) AS \
             __ignis_rn FROM ({fresh}) AS f) AS r WHERE __ignis_rn = 1"
        );
        if planned.seen_from.is_some() {
            let same = keys.iter().map(|k| format!("s.{k} = r.{k}")).collect::<Vec<_>>().join(" AND ");
            kept.push_str(&format!(" AND NOT EXISTS (SELECT 1 FROM {} AS s WHERE {same})", quote_ident(&seen_name)));
        }
        // The keys to remember: earlier ones still inside the watermark, and this batch's.
        let first = column.as_ref().map(|c| format!(", {c} AS __ignis_first")).unwrap_or_default();
        let mut remembered = format!("SELECT {key_list}{first} FROM ({fresh}) AS f");
        if planned.seen_from.is_some() {
            let first = if column.is_some() { ", __ignis_first" } else { "" };
            remembered.push_str(&format!(" UNION ALL SELECT {key_list}{first} FROM {}", quote_ident(&seen_name)));
        }
        let seen_sql = match (&column, watermark, self.delay_us) {
            (Some(_), Some(wm), Some(delay)) => format!(
                "SELECT {key_list}, min(__ignis_first) AS __ignis_first FROM ({remembered}) AS m GROUP BY {key_list} \
                 HAVING min(__ignis_first) >= to_timestamp_micros({})",
                wm - delay
            ),
            (Some(_), _, _) => format!(
                "SELECT {key_list}, min(__ignis_first) AS __ignis_first FROM ({remembered}) AS m GROUP BY {key_list}"
            ),
            (None, _, _) => format!("SELECT DISTINCT {key_list} FROM ({remembered}) AS m"),
        };
        let location = self.checkpoint.url_of(&format!("seen/{n}/"));
        let job = JobSpec {
            tables: tables.clone(),
            sql: Some(seen_sql),
            output: OutputSpec::Write(WriteSpec::to_files(Format::Parquet, location, WriteMode::Overwrite, Vec::new())),
            ..self.batch_job()
        };
        let id = JobId::from(format!("{}-{n}-seen", self.id).as_str());
        commit.seen_rows = self.driver.run_job(id, &job, &|_| {}, std::future::pending()).await?.output_rows;
        Ok(kept)
    }

    async fn run_aggregate(
        &self,
        planned: &BatchOffsets,
        mut tables: BTreeMap<String, TableSpec>,
        fresh: &str,
        window: Option<EventWindow>,
        watermark: Option<i64>,
        commit: &mut BatchCommit,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let n = planned.batch;
        let t = &self.table;
        let state_name = format!("__ignis_state_{t}");
        if let Some(from) = planned.state_from {
            let location = self.checkpoint.url_of(&format!("state/{from}/"));
            tables.insert(state_name.clone(), TableSpec::files_at(Format::Parquet, location, TableOptions::default()));
        }
        let column = self.spec.watermark.as_ref().map(|w| quote_ident(&w.column));
        let mut all = fresh.to_string();
        if planned.state_from.is_some() {
            all.push_str(&format!(" UNION ALL SELECT * FROM {}", quote_ident(&state_name)));
        }
        // The start of a row's last window (Spark's windows are aligned to the
        // epoch, as date_bin's are): the row is needed while that window is
        // open, start + size > watermark.
        let last_start = match (&column, &window) {
            (Some(c), Some(w)) => Some((format!("date_bin(INTERVAL '{} microseconds', {c})", w.slide), w)),
            _ => None,
        };
        // The state after this batch: rows of windows still open (every row when
        // nothing ever closes: complete mode, or no event-time window).
        let keep = match (self.spec.output_mode, &last_start, watermark) {
            (OutputMode::Complete, _, _) | (_, None, _) | (_, _, None) => "true".to_string(),
            (_, Some((start, w)), Some(wm)) => format!("{start} > to_timestamp_micros({})", wm - w.size),
        };
        let state_sql = format!("WITH all_rows AS ({all}) SELECT * FROM all_rows WHERE {keep}");
        let state_location = self.checkpoint.url_of(&format!("state/{n}/"));
        let state_job = JobSpec {
            name: Some(format!("{} state", self.id)),
            tables: tables.clone(),
            sql: Some(state_sql),
            output: OutputSpec::Write(WriteSpec::to_files(
                Format::Parquet,
                state_location,
                WriteMode::Overwrite,
                Vec::new(),
            )),
            config: self.job.config.clone(),
            ..JobSpec::default()
        };
        let state_id = JobId::from(format!("{}-{n}-state", self.id).as_str());
        let outcome = self.driver.run_job(state_id, &state_job, &|_| {}, std::future::pending()).await?;
        commit.state_rows = outcome.output_rows;
        crash_point("after-state", n);

        // What this batch emits. A tumbling window's rows are all in it or all
        // out, so rows are chosen; a row of sliding windows is in closed and
        // open ones, so the windows in the result are.
        let closed_in_batch = |w: &str| match (watermark, planned.watermark_us) {
            (Some(wm), Some(before)) => format!(
                "get_field({w}, 'end') <= to_timestamp_micros({wm}) AND get_field({w}, 'end') > to_timestamp_micros({before})"
            ),
            (Some(wm), None) => format!("get_field({w}, 'end') <= to_timestamp_micros({wm})"),
            (None, _) => "false".to_string(),
        };
        let still_open = |w: &str| match planned.watermark_us {
            Some(before) => format!("get_field({w}, 'end') > to_timestamp_micros({before})"),
            None => "true".to_string(),
        };
        let (emit_filter, result_filter) = match (self.spec.output_mode, &last_start) {
            (OutputMode::Append, Some((_, w))) if w.slide != w.size => {
                ("true".to_string(), Some(closed_in_batch(&window_column(w))))
            }
            (OutputMode::Update, Some((_, w))) if w.slide != w.size => {
                ("true".to_string(), Some(still_open(&window_column(w))))
            }
            (OutputMode::Append, Some((start, w))) => match watermark {
                Some(wm) => (format!("{start} <= to_timestamp_micros({})", wm - w.size), None),
                None => ("false".to_string(), None),
            },
            (OutputMode::Update, Some((start, _))) => {
                (format!("{start} IN (SELECT {start} FROM ({fresh}) AS f)"), None)
            }
            _ => ("true".to_string(), None),
        };
        let view = format!(
            "CREATE VIEW {} AS WITH all_rows AS ({all}) SELECT * FROM all_rows WHERE {emit_filter}",
            quote_ident(t)
        );
        let (rows, printed) = self.emit_filtered(n, tables, view, result_filter).await?;
        commit.output_rows = rows;
        Ok(printed)
    }

    /// [`Self::emit`], keeping only the query's result rows that pass `filter`.
    async fn emit_filtered(
        &self,
        n: u64,
        tables: BTreeMap<String, TableSpec>,
        prelude: String,
        filter: Option<String>,
    ) -> Result<(u64, Option<Vec<RecordBatch>>)> {
        let Some(filter) = filter else { return self.emit(n, tables, prelude, None).await };
        let query = self.job.sql.clone().unwrap_or_default();
        let mut statements = crate::planner::parse_sql(&query, &self.job.config.options.config())?;
        let last = statements.pop_back().ok_or_else(|| IgnisError::Plan("sql: no statement found".into()))?;
        let mut text: Vec<String> = vec![prelude];
        text.extend(statements.iter().map(|s| s.to_string()));
        let wrapped = format!("SELECT * FROM ({last}) AS {RESULT} WHERE {filter}");
        self.emit(n, tables, text.join(";\n"), Some(wrapped)).await
    }

    /// Run the query (after `prelude` statements) over `tables` into the
    /// stream's output; returns the rows emitted, and them for the console.
    async fn emit(
        &self,
        n: u64,
        tables: BTreeMap<String, TableSpec>,
        prelude: String,
        query: Option<String>,
    ) -> Result<(u64, Option<Vec<RecordBatch>>)> {
        let query = query.unwrap_or_else(|| self.job.sql.clone().unwrap_or_default());
        let sql = if prelude.is_empty() { query } else { format!("{prelude};\n{query}") };
        let job_id = JobId::from(format!("{}-{n}", self.id).as_str());
        match &self.job.output {
            OutputSpec::Write(w) if w.format.is_files() => {
                let mode = if self.spec.output_mode == OutputMode::Complete {
                    WriteMode::Overwrite
                } else {
                    WriteMode::Append
                };
                let output = WriteSpec::to_files(w.format, w.location.clone(), mode, w.partition_by.clone());
                let job = JobSpec { tables, sql: Some(sql), output: OutputSpec::Write(output), ..self.batch_job() };
                let outcome = self.driver.run_job(job_id, &job, &|_| {}, std::future::pending()).await?;
                Ok((outcome.output_rows, None))
            }
            OutputSpec::Write(w) => {
                let batches = self.collect(job_id.as_str(), tables, sql).await?;
                let field = "output.write.bootstrap_servers";
                let topic = Topic::connect(
                    w.bootstrap_servers.as_deref().unwrap_or_default(),
                    w.topic.as_deref().unwrap_or_default(),
                    field,
                )
                .await?;
                let mut sent = 0;
                for batch in &batches {
                    sent += topic.produce(batch).await?;
                }
                Ok((sent, None))
            }
            OutputSpec::Collect => {
                let batches = self.collect(job_id.as_str(), tables, sql).await?;
                let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
                Ok((rows, Some(batches)))
            }
        }
    }

    /// A job of this stream, without its query, tables and output.
    fn batch_job(&self) -> JobSpec {
        JobSpec {
            name: Some(self.job.name.clone().unwrap_or_else(|| self.id.clone())),
            udfs: self.job.udfs.clone(),
            config: self.job.config.clone(),
            ..JobSpec::default()
        }
    }

    async fn collect(
        &self,
        job_id: &str,
        tables: BTreeMap<String, TableSpec>,
        sql: String,
    ) -> Result<Vec<RecordBatch>> {
        let job = JobSpec { tables, sql: Some(sql), output: OutputSpec::Collect, ..self.batch_job() };
        let outcome = self.driver.run_job(JobId::from(job_id), &job, &|_| {}, std::future::pending()).await?;
        match outcome.result {
            JobResult::Rows { batches, .. } => Ok(batches),
            _ => Err(IgnisError::internal("a collect job returned no rows")),
        }
    }

    /// Stage batch `n`'s source range where its tasks can read it: Kafka
    /// records as Parquet under the checkpoint; files as they are.
    async fn stage(&self, n: u64, range: &SourceRange, mut prefetched: Prefetched) -> Result<TableSpec> {
        match (&self.source, range) {
            (Source::Kafka { topic, columns, .. }, SourceRange::Kafka { partitions, .. }) => {
                let schema = columns.schema();
                let mut files = Vec::new();
                for &PartitionRange { partition: p, start, end } in partitions {
                    let records = match prefetched.remove(&p) {
                        Some(records) => records,
                        None if end > start => topic.read(p, start, end).await?,
                        None => Vec::new(),
                    };
                    if records.is_empty() && !files.is_empty() {
                        continue;
                    }
                    let batch = kafka::to_batch(&topic.name, p, &records, columns)?;
                    let mut bytes = Vec::new();
                    let mut writer = ArrowWriter::try_new(&mut bytes, schema.clone(), None)?;
                    writer.write(&batch)?;
                    writer.close()?;
                    let url = self.checkpoint.url_of(&format!("sources/{n}/{}/part-{p}.parquet", self.table));
                    store::write(&ignis_core::store::runtime_env(), &url, PutPayload::from(bytes)).await?;
                    files.push(url);
                }
                let mut table = TableSpec::files_at(Format::Parquet, String::new(), TableOptions::default());
                table.files = files;
                Ok(table)
            }
            (Source::Files { table, .. }, SourceRange::Files { files }) => {
                let mut table = table.as_ref().clone();
                table.stream = false;
                table.files = files.clone();
                Ok(table)
            }
            _ => Err(IgnisError::internal("the checkpoint's range is of another kind of source than the job's table")),
        }
    }

    /// How the query carries state, checked against the output mode as Spark checks it.
    async fn shape_of(&self, probe: &JobSpec) -> Result<Shape> {
        let (_, components) = self.driver.job_udfs(probe).await?;
        let (_, df) = crate::planner::plan_dataframe(probe, &components).await?;
        let plan = df.logical_plan();
        let mut aggregate = false;
        let mut window = None;
        let mut window_error = None;
        let watermark = self.spec.watermark.as_ref().map(|w| w.column.to_ascii_lowercase());
        plan.apply(|node| {
            if matches!(node, LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_)) {
                aggregate = true;
            }
            node.apply_expressions(|e| {
                e.apply(|e| {
                    if let Expr::ScalarFunction(f) = e
                        && f.name() == ignis_core::functions::WINDOW_FUNCTION
                    {
                        let literal = |i: usize| match f.args.get(i) {
                            Some(Expr::Literal(v, _)) => Some(v.clone()),
                            _ => None,
                        };
                        let on_watermark = match (f.args.first(), &watermark) {
                            (Some(Expr::Column(c)), Some(w)) => c.name.to_ascii_lowercase() == *w,
                            _ => false,
                        };
                        match ignis_core::functions::window_size_micros(literal(1).as_ref(), literal(2).as_ref()) {
                            Ok((size, slide)) if on_watermark => {
                                window = Some(EventWindow { size, slide, column: None })
                            }
                            Ok(_) => {}
                            Err(e) => window_error = Some(e.to_string()),
                        }
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })
        })
        .map_err(IgnisError::from_datafusion)?;
        if let Some(e) = window_error {
            return Err(IgnisError::Plan(format!("sql: {e}")));
        }
        if let Some(w) = &mut window {
            // The output column holding the window: a struct of a start and an end.
            w.column = plan.schema().fields().iter().find_map(|f| match f.data_type() {
                DataType::Struct(fields)
                    if fields.len() == 2 && fields[0].name() == "start" && fields[1].name() == "end" =>
                {
                    Some(f.name().clone())
                }
                _ => None,
            });
            if w.slide != w.size && w.column.is_none() {
                return Err(IgnisError::Job(
                    "sql: a stream grouped by a sliding window must select the window (e.g. SELECT window(ts, \
                     '10 minutes', '5 minutes') AS w, ...), so each window is emitted when it closes"
                        .into(),
                ));
            }
        }
        let mode = self.spec.output_mode;
        if !aggregate {
            if mode != OutputMode::Append {
                let mode = format!("{mode:?}").to_lowercase();
                return Err(IgnisError::Job(format!(
                    "stream.output_mode: {mode} needs an aggregation in the query; a query without one runs in \
                     append mode (as in Spark)"
                )));
            }
            return Ok(Shape::Stateless);
        }
        if mode == OutputMode::Append && window.is_none() {
            return Err(IgnisError::Job(
                "stream.output_mode: append mode with an aggregation needs a watermark ([stream] watermark = { column, \
                 delay }) and a group by window(<that column>, size), so a window can be emitted once it is closed \
                 (as in Spark); or use output_mode = \"complete\" or \"update\""
                    .into(),
            ));
        }
        Ok(Shape::Aggregate { window })
    }

    fn report(&self, status: &Mutex<StreamStatus>, done: &(BatchCommit, Option<Vec<RecordBatch>>)) {
        let commit = &done.0;
        let mut s = lock(status);
        s.batches_done += 1;
        s.last_batch = Some(commit.batch);
        s.input_rows += commit.input_rows;
        s.late_rows += commit.late_rows;
        s.output_rows += commit.output_rows;
        s.last_input_rows = commit.input_rows;
        s.last_output_rows = commit.output_rows;
        s.last_batch_ms = commit.duration_ms;
        s.processed_rows_per_s = commit.input_rows as f64 / (commit.duration_ms.max(1) as f64 / 1000.0);
        s.watermark = commit.watermark_us.and_then(rfc3339);
        s.state_rows = commit.state_rows;
        s.last_error = None;
    }
}

/// For the exactly-once tests: `IGNIS_STREAM_CRASH=POINT:BATCH` ends the
/// process at once (as kill -9 would) when batch BATCH reaches POINT.
fn crash_point(point: &str, batch: u64) {
    if let Ok(wanted) = std::env::var("IGNIS_STREAM_CRASH")
        && wanted == format!("{point}:{batch}")
    {
        eprintln!("IGNIS_STREAM_CRASH: ending the process at {point} of batch {batch}");
        std::process::abort();
    }
}

/// Microseconds since the epoch as RFC 3339.
pub fn rfc3339(us: i64) -> Option<String> {
    let secs = us.div_euclid(1_000_000);
    let nanos = (us.rem_euclid(1_000_000) * 1000) as u32;
    rskafka::chrono::DateTime::from_timestamp(secs, nanos).map(|t| t.to_rfc3339())
}

/// The alias of the query's result when a stream filters it.
const RESULT: &str = "__ignis_result";

fn window_column(w: &EventWindow) -> String {
    format!("{RESULT}.{}", quote_ident(w.column.as_deref().unwrap_or("w")))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// (rows, rows on time, latest event time in microseconds) from the stats query.
fn read_stats(batches: &[RecordBatch]) -> Result<(u64, u64, Option<i64>)> {
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok((0, 0, None));
    };
    let int = |i: usize| -> Result<u64> {
        let a = cast(batch.column(i), &DataType::Int64)?;
        let a = a.as_any().downcast_ref::<Int64Array>().expect("Int64");
        Ok(if a.is_null(0) { 0 } else { a.value(0).max(0) as u64 })
    };
    let ts = batch.column(2);
    let max_us = match ts.data_type() {
        DataType::Timestamp(_, tz) => {
            let micros = cast(ts, &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))?;
            let micros = cast(&micros, &DataType::Int64)?;
            let micros = micros.as_any().downcast_ref::<Int64Array>().expect("Int64");
            (!micros.is_null(0)).then(|| micros.value(0))
        }
        DataType::Null => None,
        other => {
            return Err(IgnisError::Job(format!(
                "stream.watermark.column: must be a timestamp column, but it is {other}"
            )));
        }
    };
    Ok((int(0)?, int(1)?, max_us))
}
