//! Console progress, like Spark's: one bar per stage with tasks done, running
//! and total; plain lines when stderr is not a terminal.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use ignis_core::ids::StageId;
use ignis_core::receipt::{Receipt, StoreCounts};
use ignis_driver::JobOutcome;
use ignis_driver::scheduler::JobEvent;
use ignis_driver::service::{JobMetrics, JobStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bars: MultiProgress,
    state: Mutex<HashMap<StageId, StageBar>>,
    interactive: bool,
    name: String,
}

struct StageBar {
    bar: ProgressBar,
    tasks: usize,
    running: usize,
    done: usize,
}

impl Progress {
    pub fn new(name: &str) -> Self {
        let interactive = std::io::stderr().is_terminal();
        let target = if interactive { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        Self {
            bars: MultiProgress::with_draw_target(target),
            state: Mutex::new(HashMap::new()),
            interactive,
            name: name.to_string(),
        }
    }

    fn stage_bar(&self, stage: StageId, tasks: usize) -> StageBar {
        let bar = self.bars.add(ProgressBar::new(tasks as u64));
        bar.set_style(
            ProgressStyle::with_template("[{prefix}] {bar:30.cyan/blue} {pos}/{len} tasks {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("{} stage {stage}", self.name));
        StageBar { bar, tasks, running: 0, done: 0 }
    }

    /// Show a remote job's status (polled from the driver) the same way.
    pub fn status(&self, status: &JobStatus) {
        let Ok(mut state) = self.state.lock() else { return };
        for s in status.stages.iter().filter(|s| s.running + s.succeeded + s.failed_attempts > 0) {
            let stage = StageId(s.id);
            let bar = state.entry(stage).or_insert_with(|| self.stage_bar(stage, s.tasks));
            if bar.done == bar.tasks {
                continue;
            }
            bar.running = s.running;
            bar.done = s.succeeded;
            bar.bar.set_position(s.succeeded as u64);
            bar.bar.set_message(format!("({} running)", s.running));
            if s.succeeded == s.tasks {
                self.stage_done(stage, bar);
            }
        }
    }

    fn stage_done(&self, stage: StageId, s: &StageBar) {
        s.bar.finish_with_message("done");
        if !self.interactive {
            eprintln!("[{} stage {stage}] {}/{} tasks done", self.name, s.done, s.tasks);
        }
    }

    pub fn event(&self, event: JobEvent) {
        let Ok(mut state) = self.state.lock() else { return };
        match event {
            JobEvent::Planned { .. } => {}
            JobEvent::StageSubmitted { stage, tasks } => {
                let bar = self.stage_bar(stage, tasks);
                state.insert(stage, bar);
            }
            JobEvent::TaskStarted { stage, .. } => {
                if let Some(s) = state.get_mut(&stage) {
                    s.running += 1;
                    s.bar.set_message(format!("({} running)", s.running));
                }
            }
            JobEvent::TaskRestored { stage, .. } => {
                if let Some(s) = state.get_mut(&stage) {
                    s.done += 1;
                    s.bar.inc(1);
                }
            }
            JobEvent::TaskSucceeded { stage, .. } => {
                if let Some(s) = state.get_mut(&stage) {
                    s.running = s.running.saturating_sub(1);
                    s.done += 1;
                    s.bar.inc(1);
                    s.bar.set_message(format!("({} running)", s.running));
                }
            }
            JobEvent::AttemptDiscarded { stage, .. } => {
                if let Some(s) = state.get_mut(&stage) {
                    s.running = s.running.saturating_sub(1);
                    s.bar.set_message(format!("({} running)", s.running));
                }
            }
            JobEvent::TaskFailed { stage, partition, attempt, message, will_retry } => {
                if let Some(s) = state.get_mut(&stage) {
                    s.running = s.running.saturating_sub(1);
                }
                if will_retry {
                    let line = format!("stage {stage} task {partition} attempt {attempt} failed, retrying: {message}");
                    let _ = self.bars.println(&line);
                    if !self.interactive {
                        eprintln!("{line}");
                    }
                }
            }
            JobEvent::StageCompleted { stage } => {
                if let Some(s) = state.get(&stage) {
                    self.stage_done(stage, s);
                }
            }
        }
    }
}

pub fn summary(o: &JobOutcome) -> String {
    let metrics = JobMetrics::from(o);
    summary_line(&o.job_id.to_string(), o.elapsed.as_millis() as u64, o.stages, &metrics)
}

/// The summary of a job run on a driver service.
pub fn remote_summary(s: &JobStatus) -> String {
    summary_line(&s.id, s.elapsed_ms, s.stages.len(), &s.metrics)
}

fn summary_line(id: &str, elapsed_ms: u64, stages: usize, m: &JobMetrics) -> String {
    let dropped = if m.malformed_rows_dropped > 0 {
        format!(", {} malformed rows dropped", m.malformed_rows_dropped)
    } else {
        String::new()
    };
    let spilled =
        if m.spilled_bytes > 0 { format!(", {} spilled to disk", human_bytes(m.spilled_bytes)) } else { String::new() };
    let peak = if m.peak_task_memory > 0 {
        format!(", peak task memory {}", human_bytes(m.peak_task_memory))
    } else {
        String::new()
    };
    let hedged = if m.hedged_reads > 0 {
        format!(", {} shuffle reads hedged ({} answered first)", m.hedged_reads, m.hedge_wins)
    } else {
        String::new()
    };
    let speculated = if m.speculative_attempts > 0 {
        format!(", {} speculative attempts ({} finished first)", m.speculative_attempts, m.speculative_wins)
    } else {
        String::new()
    };
    let receipt = m.receipt.as_ref().map(receipt_line).unwrap_or_default();
    format!(
        "job {id} finished in {:.2}s: {stages} stages, {} tasks ({} attempts), {} result rows, {} shuffled{peak}{spilled}{hedged}{speculated}{dropped}{receipt}",
        elapsed_ms as f64 / 1000.0,
        m.tasks,
        m.task_attempts,
        m.output_rows,
        human_bytes(m.shuffle_bytes)
    )
}

/// The receipt as a second summary line.
fn receipt_line(r: &Receipt) -> String {
    let q = &r.requests;
    let mut used = if *q == StoreCounts::default() {
        "\nreceipt: no object-store requests".to_string()
    } else {
        format!(
            "\nreceipt: object store {} GET, {} PUT, {} LIST, {} DELETE, {} read, {} written",
            q.get,
            q.put,
            q.list,
            q.delete,
            human_bytes(q.bytes_read),
            human_bytes(q.bytes_written)
        )
    };
    if r.lambda_invocations > 0 {
        used.push_str(&format!("; Lambda {} invocations, {:.3} GB-s", r.lambda_invocations, r.lambda_gb_seconds));
    }
    if r.host_slot_seconds > 0.0 {
        used.push_str(&format!("; executor hosts {:.2} slot-s", r.host_slot_seconds));
    }
    if r.local_slot_seconds > 0.0 {
        used.push_str(&format!("; local workers {:.2} slot-s", r.local_slot_seconds));
    }
    used.push_str(&format!("; estimated ${:.6}", r.estimated_cost_usd));
    used
}

fn human_bytes(b: u64) -> String {
    ignis_core::memory::ByteSize(b).to_string()
}
