//! What `rill bench produce|consume --json FILE` writes: the outcome of a run (records,
//! bytes, elapsed, rates, latency quantiles) and a timeline of 100 ms intervals (records
//! and bytes acknowledged or consumed in each, with that interval's p50/p99 latency),
//! for the benchmark suite's table and plots (`benches/`).
//!
//! The [`Recorder`] is fed from where the bench loops record a latency today, one call
//! per record; it keeps the whole-run histogram, one interval histogram that is reset
//! at each interval's end, and a bounded list of finished intervals. Interval ends are
//! found with the coarse monotonic clock (a few ns, a jiffy of resolution: plenty for
//! 100 ms buckets), so it adds no precise clock read per record.

use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Length of one timeline interval.
const INTERVAL: Duration = Duration::from_millis(100);
/// Timeline intervals kept (about 28 hours at 100 ms): past this, later intervals are
/// merged into the last one instead of growing the list.
const INTERVALS_MAX: usize = 1_000_000;

/// A latency histogram: 1 µs .. 1 hour, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

/// A smaller histogram for one interval (2 significant digits: the plots need no more).
fn interval_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static histogram bounds are valid")
}

/// One finished timeline interval.
struct Interval {
    /// Start of the interval, from the recorder's start, in ms.
    start_ms: u64,
    records: u64,
    bytes: u64,
    p50_us: u64,
    p99_us: u64,
}

/// Records per-record latencies and bytes into a whole-run histogram and a timeline.
pub(crate) struct Recorder {
    /// Coarse-clock reading at `started`, in ns.
    started_coarse_ns: u64,
    /// Whole-run latency, in µs.
    pub(crate) latency_us: Histogram<u64>,
    /// Produce request round trips, in µs, when the producer reports them (kept apart
    /// from the time records queue in the producer before their request is sent).
    pub(crate) request_latency_us: Option<Histogram<u64>>,
    interval_index: u64,
    interval_records: u64,
    interval_bytes: u64,
    interval_latency_us: Histogram<u64>,
    timeline: Vec<Interval>,
}

/// The coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`), in ns: same epoch as
/// `Instant`'s clock, read from the vDSO without touching the TSC.
fn coarse_now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Recorder {
    /// A recorder whose timeline starts now.
    pub(crate) fn new() -> Recorder {
        Recorder {
            started_coarse_ns: coarse_now_ns(),
            latency_us: histogram(),
            request_latency_us: None,
            interval_index: 0,
            interval_records: 0,
            interval_bytes: 0,
            interval_latency_us: interval_histogram(),
            timeline: Vec::new(),
        }
    }

    /// One record of `bytes` done, `latency` after it was due.
    pub(crate) fn record(&mut self, latency: Duration, bytes: u64) {
        self.record_n(latency, 1, bytes);
    }

    /// `records` records of `bytes` in all done at once (one batch's acknowledgement,
    /// or records a consumer found ready), each `latency` after it was due.
    pub(crate) fn record_n(&mut self, latency: Duration, records: u64, bytes: u64) {
        if records == 0 {
            return;
        }
        let us = (latency.as_micros() as u64).max(1);
        self.latency_us.saturating_record_n(us, records);
        let index =
            coarse_now_ns().saturating_sub(self.started_coarse_ns) / INTERVAL.as_nanos() as u64;
        if index != self.interval_index {
            self.close_interval(index);
        }
        self.interval_records += records;
        self.interval_bytes += bytes;
        self.interval_latency_us.saturating_record_n(us, records);
    }

    /// Ends the current interval (if it saw anything) and moves to `next_index`.
    fn close_interval(&mut self, next_index: u64) {
        if self.interval_records > 0 {
            let interval = Interval {
                start_ms: self.interval_index * INTERVAL.as_millis() as u64,
                records: self.interval_records,
                bytes: self.interval_bytes,
                p50_us: self.interval_latency_us.value_at_quantile(0.50),
                p99_us: self.interval_latency_us.value_at_quantile(0.99),
            };
            let full = self.timeline.len() >= INTERVALS_MAX;
            match self.timeline.last_mut() {
                Some(last) if full => {
                    last.records += interval.records;
                    last.bytes += interval.bytes;
                    last.p99_us = last.p99_us.max(interval.p99_us);
                }
                _ => self.timeline.push(interval),
            }
        }
        self.interval_index = next_index;
        self.interval_records = 0;
        self.interval_bytes = 0;
        self.interval_latency_us.reset();
    }

    /// Writes the outcome as JSON to `path`: `what` ("produce" or "consume"), `params`
    /// (the run's settings as given), totals over `elapsed`, quantiles and the timeline.
    pub(crate) fn write_json(
        &mut self,
        path: &Path,
        what: &str,
        params: Value,
        records: u64,
        bytes: u64,
        elapsed: Duration,
    ) -> std::io::Result<()> {
        self.close_interval(self.interval_index + 1);
        let secs = elapsed.as_secs_f64().max(1e-9);
        let timeline: Vec<Value> = self
            .timeline
            .iter()
            .map(|i| {
                json!({
                    "start_ms": i.start_ms,
                    "records": i.records,
                    "bytes": i.bytes,
                    "p50_us": i.p50_us,
                    "p99_us": i.p99_us,
                })
            })
            .collect();
        let out = json!({
            "what": what,
            "params": params,
            "records": records,
            "bytes": bytes,
            "elapsed_s": elapsed.as_secs_f64(),
            "mb_per_s": bytes as f64 / secs / 1e6,
            "records_per_s": records as f64 / secs,
            "latency_us": quantiles(&self.latency_us),
            "request_latency_us": self.request_latency_us.as_ref().map(quantiles),
            "interval_ms": INTERVAL.as_millis() as u64,
            "timeline": timeline,
        });
        let text = serde_json::to_string_pretty(&out).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }
}

/// p50/p90/p99/p99.9/max of `h`, in µs.
fn quantiles(h: &Histogram<u64>) -> Value {
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p99_9": h.value_at_quantile(0.999),
        "max": h.max(),
        "count": h.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_totals_quantiles_and_a_timeline() {
        let mut r = Recorder::new();
        for i in 0..1000u64 {
            r.record(Duration::from_micros(100 + i), 10);
        }
        let path = std::env::temp_dir().join(format!("rill-report-{}.json", std::process::id()));
        r.write_json(
            &path,
            "produce",
            json!({"size": 10}),
            1000,
            10_000,
            Duration::from_secs(1),
        )
        .expect("write json");
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        let _ = std::fs::remove_file(&path);
        assert_eq!(v["records"], 1000);
        assert_eq!(v["mb_per_s"].as_f64(), Some(0.01));
        let p50 = v["latency_us"]["p50"].as_u64().expect("p50");
        assert!((590..=610).contains(&p50), "p50 {p50}");
        assert_eq!(v["latency_us"]["max"].as_u64(), Some(1099));
        let timeline = v["timeline"].as_array().expect("timeline");
        let total: u64 = timeline.iter().filter_map(|i| i["records"].as_u64()).sum();
        assert_eq!(total, 1000);
        assert!(v["request_latency_us"].is_null());
    }
}
