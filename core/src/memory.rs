//! Task memory: how much each task may hold in DataFusion's accounted
//! operators (sorts, hash aggregations, hash joins, repartition buffers), and
//! how that limit is worded and sized.
//!
//! A task runs under its own memory pool of this size (see the executor);
//! operators that can spill (sort, aggregation, sort-merge join) write to the
//! local disk when the pool is full, the others fail the task with DataFusion's
//! "Resources exhausted" error, which Ignis completes with the limit and the
//! setting that sets it.

use std::fmt;

use crate::error::{ErrorKind, IgnisError};

/// The share of a budget (machine, host or function memory) a backend gives
/// its task pools. DataFusion's pool accounts for the large allocations only
/// (hash tables, sort buffers); batches in flight, the object store's buffers
/// and the process itself use the rest.
pub const POOLED_SHARE: f64 = 0.7;

/// A number of bytes, read from `4g`, `512MiB`, `1.5GB` or `1073741824`
/// (units are binary, as Spark's `--executor-memory`: `g` = 1024^3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{s:?} is not a size: write a number with an optional unit, e.g. 4g or 512MiB"))?;
        let unit = unit.trim().to_ascii_lowercase();
        let scale: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
            "" => 1,
            "k" => 1 << 10,
            "m" => 1 << 20,
            "g" => 1 << 30,
            "t" => 1 << 40,
            _ => return Err(format!("{s:?}: unknown unit {unit:?} (use k, m, g or t, e.g. 4g)")),
        };
        let bytes = number * scale as f64;
        if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
            return Err(format!("{s:?} is not a usable size"));
        }
        Ok(Self(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 { write!(f, "{} B", self.0) } else { write!(f, "{value:.1} {}", UNITS[unit]) }
    }
}

/// The memory limit of each task on an executor, and where it came from (for
/// the error of a task over it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMemory {
    pub limit: ByteSize,
    /// The setting a user changes to raise it, e.g. `--executor-memory 8g`.
    pub set_by: String,
}

impl TaskMemory {
    /// `budget` shared by `slots` concurrent tasks, [`POOLED_SHARE`] of it pooled.
    pub fn share(budget: u64, slots: usize, set_by: impl Into<String>) -> Self {
        let per_task = (budget as f64 * POOLED_SHARE / slots.max(1) as f64) as u64;
        Self { limit: ByteSize(per_task.max(1 << 20)), set_by: set_by.into() }
    }

    /// Local mode: `workers` in-process tasks at a time; `task_memory` when
    /// set, else a share of the machine.
    pub fn local(workers: usize, task_memory: Option<ByteSize>) -> Self {
        match task_memory {
            Some(limit) => Self { limit, set_by: "--task-memory".into() },
            None => Self::share(
                machine_memory_or_default(),
                workers,
                "--task-memory (default: 70% of the machine's memory over the local workers)",
            ),
        }
    }

    /// An executor host with `slots` task slots: `task_memory` when set, else
    /// a share of `executor_memory` (default: the machine's memory).
    pub fn host(slots: usize, executor_memory: Option<ByteSize>, task_memory: Option<ByteSize>) -> Self {
        match (task_memory, executor_memory) {
            (Some(limit), _) => Self { limit, set_by: "--task-memory".into() },
            (None, Some(budget)) => Self::share(budget.0, slots, "--executor-memory (70% of it over the host's slots)"),
            (None, None) => Self::share(
                machine_memory_or_default(),
                slots,
                "--executor-memory (default: 70% of the machine's memory over the host's slots)",
            ),
        }
    }

    /// A Lambda function runs one task per invocation: a share of the
    /// function's memory (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, in MB).
    pub fn lambda() -> Self {
        match lambda_function_memory_mb() {
            Some(mb) => Self::share(mb << 20, 1, "the function's memory size (70% of it)"),
            None => Self::share(machine_memory_or_default(), 1, "the function's memory size (70% of it)"),
        }
    }

    /// A task's error, completed with the limit when it ran out of memory.
    /// Such a failure is the user's to fix, not retried: the same task under
    /// the same limit runs out again (each task has a pool of its own).
    pub fn explain(&self, error: IgnisError) -> IgnisError {
        let text = error.to_string();
        if !text.contains("Resources exhausted") {
            return error;
        }
        IgnisError::Task {
            kind: ErrorKind::User,
            message: format!(
                "{text}\nthe task ran out of its memory limit of {} (set by {}); operators that cannot spill \
             (hash join build sides, ...) must fit in it: raise the limit or the job's shuffle_partitions",
                self.limit, self.set_by
            ),
        }
    }
}

/// The memory of the Lambda function this process runs in (MB), as the
/// Lambda runtime states it (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`).
pub fn lambda_function_memory_mb() -> Option<u64> {
    std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").ok().and_then(|m| m.trim().parse().ok())
}

/// This machine's memory: the smaller of the physical memory and the
/// cgroup's limit (containers), if either can be read.
pub fn machine_memory() -> Option<u64> {
    let physical = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|m| m.trim().parse::<u64>().ok());
    match (physical, cgroup) {
        (Some(p), Some(c)) => Some(p.min(c)),
        (p, c) => p.or(c),
    }
}

/// The machine's memory, or 4 GiB where it cannot be read.
pub fn machine_memory_or_default() -> u64 {
    machine_memory().unwrap_or(4 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_spark_writes_them() {
        assert_eq!("4g".parse::<ByteSize>(), Ok(ByteSize(4 << 30)));
        assert_eq!("512MiB".parse::<ByteSize>(), Ok(ByteSize(512 << 20)));
        assert_eq!("1.5GB".parse::<ByteSize>(), Ok(ByteSize(3 << 29)));
        assert_eq!("1048576".parse::<ByteSize>(), Ok(ByteSize(1 << 20)));
        assert!("4x".parse::<ByteSize>().unwrap_err().contains("unknown unit"));
        assert!("g".parse::<ByteSize>().unwrap_err().contains("not a size"));
        assert!("0".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(3 << 29).to_string(), "1.5 GiB");
    }

    #[test]
    fn only_memory_errors_are_completed() {
        let memory = TaskMemory { limit: ByteSize(64 << 20), set_by: "--task-memory".into() };
        let other = memory.explain(IgnisError::Input("division by zero".into()));
        assert_eq!(other.to_string(), "division by zero");
        let full = memory.explain(IgnisError::DataFusion(datafusion::error::DataFusionError::ResourcesExhausted(
            "Failed to allocate additional 1.0 MB for HashJoinInput".into(),
        )));
        let text = full.to_string();
        assert!(
            text.contains("HashJoinInput") && text.contains("64.0 MiB") && text.contains("--task-memory"),
            "{text}"
        );
    }
}
