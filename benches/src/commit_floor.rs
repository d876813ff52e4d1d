//! What the disk alone allows an acks=all record's latency at a fixed rate: the
//! machine's floor under the p99 target of the fixed-rate runs.
//!
//! A broker at acks=all answers a record once an fdatasync that began after the
//! record was written has returned (group commit), on a majority of the replicas.
//! This model keeps only that: one thread writes the records of each linger window at
//! the window's end (as a producer with that linger sends them), into one preallocated
//! file per replica (as segments grow by fallocate ahead of the writes); one thread
//! per file loops fdatasync, each covering everything written before it began, and
//! starts the next as soon as one returns (the best a group commit can do). A
//! record's latency runs from its place in the schedule (so a stalled writer is
//! charged, coordinated-omission aware) to the moment the `quorum`-th file's covering
//! fdatasync returned. No network, no CPU work, no broker: any code on this machine
//! answers later than this.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::scenarios::Quantiles;
use crate::Error;

/// The fixed-rate workload to model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Workload {
    pub(crate) records_per_s: f64,
    pub(crate) record_bytes: usize,
    /// The producer's linger: records of one window are written together at its end.
    pub(crate) linger: Duration,
    pub(crate) duration: Duration,
    /// Replicas, one file each (all on this machine's disk, as the suite's brokers).
    pub(crate) replicas: usize,
    /// Replicas whose fdatasync must cover a record before it counts as committed.
    pub(crate) quorum: usize,
}

/// How long a sync thread waits before it looks again when nothing new was written.
const IDLE_POLL: Duration = Duration::from_micros(50);

/// One replica's file and how far its syncs got.
struct Replica {
    file: File,
    /// Windows written to the file so far.
    written: AtomicU64,
    /// For each window: nanoseconds after the start at which an fdatasync covering it
    /// returned (0: not yet).
    covered_ns: Vec<AtomicU64>,
}

/// Runs the model in `dir` and returns the records' latency quantiles in µs (p50, p90,
/// p99, p99.9, max). Its files are removed afterwards.
pub(crate) fn measure(dir: &Path, w: Workload) -> Result<Quantiles, Error> {
    let io = |what: &'static str| move |e: std::io::Error| Error::Config(format!("{what}: {e}"));
    let linger = w.linger.max(Duration::from_micros(100));
    let windows = (w.duration.as_secs_f64() / linger.as_secs_f64())
        .ceil()
        .max(1.0) as usize;
    let per_window = (w.records_per_s * linger.as_secs_f64()).round().max(1.0) as usize;
    let window_bytes = per_window * w.record_bytes;
    let data: Vec<u8> = (0..window_bytes).map(|i| (i % 251) as u8).collect();
    let quorum = w.quorum.clamp(1, w.replicas.max(1));
    let mut replicas = Vec::new();
    let mut paths = Vec::new();
    for i in 0..w.replicas.max(1) {
        let path = dir.join(format!("commit-floor-{i}.bin"));
        let file = File::create(&path).map_err(io("create commit-floor file"))?;
        paths.push(path);
        crate::limits::preallocate(&file, (windows * window_bytes) as u64);
        replicas.push(Arc::new(Replica {
            file,
            written: AtomicU64::new(0),
            covered_ns: (0..windows).map(|_| AtomicU64::new(0)).collect(),
        }));
    }
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let syncers: Vec<_> = replicas
        .iter()
        .map(|r| {
            let (r, done) = (Arc::clone(r), Arc::clone(&done));
            std::thread::spawn(move || sync_loop(&r, &done, start))
        })
        .collect();
    let mut write_result = Ok(());
    for window in 0..windows {
        // A window's records are sent at its end (the linger); late if the writer fell
        // behind, never early.
        let due = start + linger * (window as u32 + 1);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for r in &replicas {
            if let Err(e) = r.file.write_all_at(&data, (window * window_bytes) as u64) {
                write_result = Err(e);
                break;
            }
            r.written.store(window as u64 + 1, Ordering::Release);
        }
        if write_result.is_err() {
            break;
        }
    }
    done.store(true, Ordering::Release);
    let mut sync_result = Ok(());
    for s in syncers {
        let r = s
            .join()
            .map_err(|_| Error::Config("commit-floor sync thread panicked".to_owned()))?;
        sync_result = sync_result.and(r);
    }
    for path in &paths {
        let _ = std::fs::remove_file(path);
    }
    write_result.map_err(io("write commit-floor file"))?;
    sync_result.map_err(io("fdatasync commit-floor file"))?;

    let mut hist = Histogram::<u64>::new(3).map_err(|e| Error::Config(e.to_string()))?;
    let record_gap_ns = linger.as_nanos() as f64 / per_window as f64;
    for window in 0..windows {
        let mut covered: Vec<u64> = replicas
            .iter()
            .map(|r| r.covered_ns[window].load(Ordering::Acquire))
            .collect();
        covered.sort_unstable();
        let committed_ns = covered[quorum - 1];
        let window_start_ns = (linger * window as u32).as_nanos() as f64;
        for j in 0..per_window {
            let scheduled_ns = window_start_ns + j as f64 * record_gap_ns;
            let latency_us = ((committed_ns as f64 - scheduled_ns) / 1000.0).max(1.0);
            hist.record(latency_us as u64)
                .map_err(|e| Error::Config(format!("commit-floor histogram: {e}")))?;
        }
    }
    Ok([
        hist.value_at_quantile(0.5) as f64,
        hist.value_at_quantile(0.9) as f64,
        hist.value_at_quantile(0.99) as f64,
        hist.value_at_quantile(0.999) as f64,
        hist.max() as f64,
    ])
}

/// Loops fdatasync on `r` until the writer is done and everything it wrote is
/// covered, stamping each window with the return of the first sync that began after
/// the window was written.
fn sync_loop(r: &Replica, done: &AtomicBool, start: Instant) -> std::io::Result<()> {
    let mut synced = 0u64;
    loop {
        let finished = done.load(Ordering::Acquire);
        let written = r.written.load(Ordering::Acquire);
        if written == synced {
            if finished {
                return Ok(());
            }
            std::thread::sleep(IDLE_POLL);
            continue;
        }
        r.file.sync_data()?;
        let now_ns = start.elapsed().as_nanos() as u64;
        for window in synced..written {
            r.covered_ns[window as usize].store(now_ns.max(1), Ordering::Release);
        }
        synced = written;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_is_counted_and_waits_at_least_for_its_window() {
        let dir = tempfile::tempdir().expect("temp dir");
        let q = measure(
            dir.path(),
            Workload {
                records_per_s: 20_000.0,
                record_bytes: 1024,
                linger: Duration::from_millis(2),
                duration: Duration::from_millis(200),
                replicas: 3,
                quorum: 2,
            },
        )
        .expect("measure");
        // A record waits for the end of its window and then for an fdatasync: the
        // median record at least half the 2 ms linger, the first of a window all of it.
        assert!(q[0] >= 1_000.0, "{q:?}");
        assert!(q[4] >= 2_000.0, "{q:?}");
        assert!(q.windows(2).all(|p| p[0] <= p[1]), "{q:?}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }
}
