//! Streaming jobs: the `[stream]` section of a job, and the durations its
//! settings and the `window` function take.
//!
//! ```toml
//! [tables.events]
//! format = "kafka"
//! options = { bootstrap_servers = "127.0.0.1:9092", topic = "events", schema = "ts TIMESTAMP, country STRING" }
//!
//! [stream]
//! trigger = "5s"
//! checkpoint = "s3://bucket/checkpoints/events-by-minute"
//! output_mode = "append"
//! watermark = { column = "ts", delay = "10 minutes" }
//! sql = "SELECT window(ts, '1 minute') AS w, country, count(*) AS n FROM events GROUP BY 1, 2"
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// When batches start: a processing-time interval (`"5s"`, `"1 minute"`;
    /// `"0s"`, the default, starts the next batch as soon as the last one
    /// ended), `"available_now"` (everything there is, in batches of at most
    /// the sources' limits, then stop) or `"once"` (one batch, then stop).
    #[serde(default)]
    pub trigger: Option<String>,
    /// Where the stream keeps its offsets, commits and state: a directory URL
    /// or path. A restarted stream with the same checkpoint goes on where it stopped.
    pub checkpoint: String,
    #[serde(default)]
    pub output_mode: OutputMode,
    /// Event time: rows older than the watermark (the latest event time seen
    /// minus `delay`) are late; aggregations drop them and close windows behind it.
    #[serde(default)]
    pub watermark: Option<WatermarkSpec>,
    /// The query, when it is not given as the job's top-level `sql`.
    #[serde(default)]
    pub sql: Option<String>,
    /// Drop a row of the streaming table whose values of these columns were
    /// seen before, in this batch or an earlier one (Spark's
    /// `dropDuplicatesWithinWatermark`): a key is remembered until the
    /// watermark passes its first event time plus the delay (forever without a watermark).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deduplicate: Vec<String>,
    /// Batches whose offsets and commits the checkpoint keeps (default 100,
    /// like Spark's `minBatchesToRetain`); older ones are folded into one list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_batches: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    /// Rows are written once and never changed: an aggregation emits a window
    /// when the watermark has passed its end.
    #[default]
    Append,
    /// Each batch emits the aggregation rows its new input changed.
    Update,
    /// Each batch emits the whole aggregation result.
    Complete,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkSpec {
    /// The event-time column (a timestamp) of the stream's table.
    pub column: String,
    /// How late a row may be, e.g. `"10 minutes"`.
    pub delay: String,
}

/// A parsed trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A batch every interval (a batch that takes longer delays the next).
    Every(Duration),
    /// Batches until the sources are caught up, then stop.
    AvailableNow,
    /// One batch, then stop.
    Once,
}

impl StreamSpec {
    pub fn trigger(&self) -> Result<Trigger, String> {
        match self.trigger.as_deref().map(str::trim) {
            None => Ok(Trigger::Every(Duration::ZERO)),
            Some("available_now" | "availableNow" | "available-now") => Ok(Trigger::AvailableNow),
            Some("once") => Ok(Trigger::Once),
            Some(text) => parse_duration(text).map(Trigger::Every).map_err(|e| format!("stream.trigger: {e}")),
        }
    }

    pub fn watermark_delay(&self) -> Result<Option<Duration>, String> {
        self.watermark
            .as_ref()
            .map(|w| parse_duration(&w.delay).map_err(|e| format!("stream.watermark.delay: {e}")))
            .transpose()
    }

    /// Checks serde cannot express; messages name the field.
    pub fn validate(&self) -> Result<(), String> {
        self.trigger()?;
        self.watermark_delay()?;
        if self.checkpoint.trim().is_empty() {
            return Err("stream.checkpoint: is empty".into());
        }
        if let Some(w) = &self.watermark
            && w.column.trim().is_empty()
        {
            return Err("stream.watermark.column: is empty".into());
        }
        Ok(())
    }
}

/// A duration as Spark writes intervals and as people write timeouts:
/// `"10 minutes"`, `"1 hour"`, `"interval 30 seconds"`, `"5s"`, `"250ms"`.
/// Units: microseconds, milliseconds, seconds, minutes, hours, days, weeks
/// (singular, plural or short: us, ms, s, sec, m, min, h, d, w).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    let body = lower.strip_prefix("interval").map(str::trim_start).unwrap_or(&lower);
    let body = body.trim_matches('\'');
    let split = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
    let (number, unit) = body.split_at(split);
    let bad = || {
        format!(
            "{trimmed:?} is not a duration; write a number and a unit, such as \"10 seconds\", \"5 minutes\" or \"500ms\""
        )
    };
    let number: f64 = number.parse().map_err(|_| bad())?;
    let micros_per_unit: f64 = match unit.trim() {
        "us" | "microsecond" | "microseconds" => 1.0,
        "ms" | "millisecond" | "milliseconds" => 1e3,
        "" if number == 0.0 => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1e6,
        "m" | "min" | "mins" | "minute" | "minutes" => 60e6,
        "h" | "hour" | "hours" => 3600e6,
        "d" | "day" | "days" => 86_400e6,
        "w" | "week" | "weeks" => 604_800e6,
        _ => return Err(bad()),
    };
    let micros = number * micros_per_unit;
    if !micros.is_finite() || !(0.0..=1e16).contains(&micros) {
        return Err(bad());
    }
    Ok(Duration::from_micros(micros.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_spark_and_short_forms() {
        assert_eq!(parse_duration("10 minutes"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("interval 1 hour"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5 seconds"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        let err = parse_duration("ten minutes").unwrap_err();
        assert!(err.contains("\"ten minutes\" is not a duration"), "{err}");
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("-5s").is_err());
    }

    #[test]
    fn triggers() {
        let spec = |t: &str| StreamSpec {
            trigger: Some(t.into()),
            checkpoint: "c".into(),
            output_mode: OutputMode::Append,
            watermark: None,
            sql: None,
            deduplicate: Vec::new(),
            retained_batches: None,
        };
        assert_eq!(spec("available_now").trigger(), Ok(Trigger::AvailableNow));
        assert_eq!(spec("once").trigger(), Ok(Trigger::Once));
        assert_eq!(spec("2s").trigger(), Ok(Trigger::Every(Duration::from_secs(2))));
        assert!(spec("soon").trigger().unwrap_err().starts_with("stream.trigger: "));
    }
}
