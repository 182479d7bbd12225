//! What scheduling a job costs the driver, without running any task: a
//! `maps` x `reduces` job (a map stage hash-split into a reduce stage) on a
//! backend that answers every task at once with a made-up shuffle output.
//! Prints the driver's CPU time per task, its peak memory and the size of the
//! task requests (as JSON, the wire form to executor hosts), for map and
//! reduce tasks apart.
//!
//!     cargo run --release -p ignis-bench --bin sched-bench -- --maps 10000 --reduces 1000

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use clap::Parser;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::Partitioning;
use datafusion::physical_plan::empty::EmptyExec;
use ignis_core::ids::{JobId, StageId};
use ignis_core::job::ShuffleCompression;
use ignis_core::shuffle::{ShuffleReaderExec, ShuffleWriterExec};
use ignis_driver::planner::stages::{Exchange, Stage, StageGraph};
use ignis_driver::scheduler::{ResultTarget, RunSettings, run_graph};
use noop::NoopBackend;

#[derive(Parser)]
struct Args {
    /// Map tasks.
    #[arg(long, default_value_t = 10_000)]
    maps: usize,
    /// Reduce tasks (partitions of the shuffle).
    #[arg(long, default_value_t = 1_000)]
    reduces: usize,
    /// Tasks the no-op backend takes at once.
    #[arg(long, default_value_t = 64)]
    slots: usize,
}

/// A backend that runs nothing: each task "writes" one shuffle object with a
/// piece per reduce partition (map tasks) or one piece (the result stage).
mod noop {
    use super::*;
    use async_trait::async_trait;
    use ignis_core::protocol::{
        PieceMeta, TaskFailure, TaskMetrics, TaskOutput, TaskRequest, TaskResult, TaskResultOutput,
    };
    use ignis_driver::backend::TaskBackend;

    pub struct NoopBackend {
        pub slots: usize,
        pub reduces: usize,
        pub map_requests: AtomicUsize,
        pub map_bytes: AtomicU64,
        pub map_max: AtomicU64,
        pub reduce_requests: AtomicUsize,
        pub reduce_bytes: AtomicU64,
        pub reduce_max: AtomicU64,
    }

    #[async_trait]
    impl TaskBackend for NoopBackend {
        async fn run(&self, request: TaskRequest) -> Result<TaskResult, TaskFailure> {
            let size = serde_json::to_vec(&request).map(|b| b.len() as u64).unwrap_or(0);
            let is_map = request.stage_id == StageId(1);
            let (count, total, max) = if is_map {
                (&self.map_requests, &self.map_bytes, &self.map_max)
            } else {
                (&self.reduce_requests, &self.reduce_bytes, &self.reduce_max)
            };
            count.fetch_add(1, Ordering::Relaxed);
            total.fetch_add(size, Ordering::Relaxed);
            max.fetch_max(size, Ordering::Relaxed);
            let root = match &request.output {
                TaskOutput::Shuffle { root, .. } => root.clone(),
                TaskOutput::Files { staging, .. } => staging.clone(),
            };
            let pieces = if is_map { self.reduces } else { 1 };
            let url = ignis_core::shuffle::shuffle_object_url(
                &root,
                &request.job_id,
                request.stage_id,
                request.partition,
                request.attempt,
            );
            Ok(TaskResult {
                job_id: request.job_id,
                stage_id: request.stage_id,
                partition: request.partition,
                attempt: request.attempt,
                output: TaskResultOutput::Shuffle {
                    url,
                    pieces: (0..pieces as u64)
                        .map(|r| PieceMeta { offset: r * 100, length: 100, rows: 0, more: vec![] })
                        .collect(),
                },
                metrics: TaskMetrics::default(),
            })
        }

        fn capacity(&self) -> usize {
            self.slots
        }

        fn name(&self) -> &str {
            "no-op"
        }
    }
}

/// This process's CPU time (user + system) in seconds and peak resident
/// memory in KiB, from /proc.
fn usage() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // Linux reports in clock ticks of 1/100 s (USER_HZ) on every common configuration.
    let cpu = (ticks(11) + ticks(12)) as f64 / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (cpu, peak)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
    let maps = Arc::new(EmptyExec::new(schema.clone()).with_partitions(args.maps));
    let split = Partitioning::Hash(vec![Arc::new(Column::new("k", 0))], args.reduces);
    let writer = Arc::new(ShuffleWriterExec::try_new(maps, Some(split))?);
    let reader = Arc::new(ShuffleReaderExec::new(StageId(1), schema, args.reduces));
    let graph = StageGraph {
        stages: vec![
            Stage {
                id: StageId(1),
                plan: writer,
                tasks: args.maps,
                inputs: vec![],
                exchange: Exchange::Split { partitions: args.reduces, keys: "hash(k)".into() },
                consumers: vec![StageId(2)],
            },
            Stage {
                id: StageId(2),
                plan: reader,
                tasks: args.reduces,
                inputs: vec![StageId(1)],
                exchange: Exchange::Result,
                consumers: vec![],
            },
        ],
    };
    let backend = Arc::new(NoopBackend {
        slots: args.slots,
        reduces: args.reduces,
        map_requests: AtomicUsize::new(0),
        map_bytes: AtomicU64::new(0),
        map_max: AtomicU64::new(0),
        reduce_requests: AtomicUsize::new(0),
        reduce_bytes: AtomicU64::new(0),
        reduce_max: AtomicU64::new(0),
    });
    // Piece tables of stages over 1,000 map tasks are written here (no shuffle data is).
    let shuffle = tempfile::tempdir()?;
    let settings = RunSettings {
        job_id: JobId::generate(),
        env: ignis_core::store::runtime_env(),
        shuffle_root: url::Url::from_directory_path(shuffle.path())
            .map_err(|()| anyhow::anyhow!("temp dir is not a path"))?
            .to_string(),
        compression: ShuffleCompression::Lz4,
        batch_size: 8192,
        options: Default::default(),
        max_task_attempts: 1,
        target: ResultTarget::Collect,
        udfs: vec![],
        task_deadline: None,
        speculation: false,
        prior: Default::default(),
        first_attempt: 0,
        journal: None,
    };
    let (cpu_before, _) = usage();
    let start = Instant::now();
    let results = run_graph(&graph, backend.clone(), &settings, &|_| {}).await?;
    let wall = start.elapsed().as_secs_f64();
    let (cpu_after, peak_kib) = usage();
    let tasks = args.maps + args.reduces;
    let per = |bytes: &AtomicU64, n: &AtomicUsize| {
        bytes.load(Ordering::Relaxed) as f64 / n.load(Ordering::Relaxed).max(1) as f64
    };
    println!("job: {} map x {} reduce tasks ({tasks} tasks), {} attempts", args.maps, args.reduces, results.attempts);
    println!(
        "driver: {:.1} s wall, {:.1} s CPU, {:.0} us CPU per task, peak RSS {:.0} MiB",
        wall,
        cpu_after - cpu_before,
        (cpu_after - cpu_before) * 1e6 / tasks as f64,
        peak_kib as f64 / 1024.0
    );
    println!(
        "map task requests: {:.0} B mean, {} B max; reduce task requests: {:.0} B mean, {} B max",
        per(&backend.map_bytes, &backend.map_requests),
        backend.map_max.load(Ordering::Relaxed),
        per(&backend.reduce_bytes, &backend.reduce_requests),
        backend.reduce_max.load(Ordering::Relaxed)
    );
    Ok(())
}
