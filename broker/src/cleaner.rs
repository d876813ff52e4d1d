//! The log cleaner: compacts the replicas of `cleanup.policy=compact` (and
//! `compact,delete`) topics, `__consumer_offsets` among them.
//!
//! One thread per data directory (a plain OS thread, never a tokio worker: cleaning
//! reads and writes whole segments and fsyncs them). Each round it asks every
//! compacted replica for its clean and dirty bytes below the commit point
//! ([`Partition::clean_stats`]) and cleans the dirtiest one whose dirty ratio is at
//! least the topic's `min.cleanable.dirty.ratio`, or whose oldest dirty segment is
//! older than `max.compaction.lag.ms`; when none is, it sleeps
//! `log_cleaner_backoff_ms`. A pass is `rill_storage`'s three steps: prepare under the
//! replica's lock, the rewrite without it (reads and writes bounded together by
//! `log_cleaner_io_bytes_per_second`), the swap under the lock again.
//!
//! Replication: every replica compacts its own log, only below its own high watermark
//! (committed entries, which Raft never truncates), and compaction keeps every batch's
//! offsets and epoch (`rill_storage`'s `clean` module), so the Raft log keeps its
//! entries' indexes and terms, and followers fetching a compacted range from a leader
//! append it like any other. Replicas hold the same records at the same offsets; their
//! bytes differ while one has cleaned and another not yet.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rill_storage::CleanOptions;

use crate::clock::now_ms;
use crate::config::Config;
use crate::replica::Partition;
use crate::state::topic_config::TopicConfig;
use crate::state::PartitionManager;

/// The cleaner's settings (broker config keys `log_cleaner_*`).
#[derive(Debug, Clone, Copy)]
pub struct CleanerConfig {
    /// Reads plus writes per second, at most.
    pub io_bytes_per_second: u64,
    /// Sleep when no log is due.
    pub backoff_ms: u64,
    /// Key map budget per pass.
    pub dedupe_buffer_bytes: u64,
}

impl From<&Config> for CleanerConfig {
    fn from(c: &Config) -> Self {
        CleanerConfig {
            io_bytes_per_second: c.log_cleaner_io_bytes_per_second,
            backoff_ms: c.log_cleaner_backoff_ms,
            dedupe_buffer_bytes: c.log_cleaner_dedupe_buffer_bytes,
        }
    }
}

/// Starts the data directory's cleaner thread; it ends when the manager is dropped.
pub fn spawn(
    manager: Weak<PartitionManager>,
    config: CleanerConfig,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("log-cleaner".into())
        .spawn(move || run(manager, config))
}

/// A replica due for cleaning, and how dirty it is.
struct Candidate {
    partition: Arc<Partition>,
    config: TopicConfig,
    dirty_ratio: f64,
}

fn run(manager: Weak<PartitionManager>, config: CleanerConfig) {
    // A replica whose pass failed or could not complete waits a backoff before the next.
    let mut skip_until_ms: HashMap<(String, i32), i64> = HashMap::new();
    loop {
        let now = now_ms();
        let candidate = {
            let Some(manager) = manager.upgrade() else {
                return;
            };
            pick(&manager, now, &skip_until_ms)
        };
        let Some(candidate) = candidate else {
            if !sleep_while_alive(&manager, Duration::from_millis(config.backoff_ms)) {
                return;
            }
            continue;
        };
        let key = (candidate.partition.topic.clone(), candidate.partition.index);
        match clean_once(&candidate, &config, now) {
            Ok(true) => {
                skip_until_ms.remove(&key);
            }
            Ok(false) => {
                skip_until_ms.insert(key, now + config.backoff_ms as i64);
            }
            Err(e) => {
                tracing::warn!(
                    topic = %candidate.partition.topic,
                    partition = candidate.partition.index,
                    error = %e,
                    "log cleaning failed"
                );
                skip_until_ms.insert(key, now + config.backoff_ms as i64);
            }
        }
        skip_until_ms.retain(|_, until| *until > now);
    }
}

/// Sleeps in short steps; false once the manager is gone.
fn sleep_while_alive(manager: &Weak<PartitionManager>, total: Duration) -> bool {
    let step = Duration::from_millis(100);
    let deadline = Instant::now() + total;
    loop {
        if manager.strong_count() == 0 {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep(step.min(deadline - now));
    }
}

/// The dirtiest compacted replica that is due, if any.
fn pick(
    manager: &PartitionManager,
    now: i64,
    skip_until_ms: &HashMap<(String, i32), i64>,
) -> Option<Candidate> {
    let mut best: Option<Candidate> = None;
    for (topic, partition) in manager.all_partitions() {
        if !topic.config.is_compacted()
            || skip_until_ms
                .get(&(topic.name.clone(), partition.index))
                .is_some_and(|&until| until > now)
        {
            continue;
        }
        let Some(stats) = partition.clean_stats(now, topic.config.min_compaction_lag_ms) else {
            continue;
        };
        if stats.dirty_bytes == 0 {
            continue;
        }
        let ratio = stats.dirty_ratio();
        let overdue = stats.oldest_dirty_timestamp_ms >= 0
            && now.saturating_sub(stats.oldest_dirty_timestamp_ms)
                >= topic.config.max_compaction_lag_ms;
        if !(ratio >= topic.config.min_cleanable_dirty_ratio || overdue) {
            continue;
        }
        // An overdue log goes first whatever its ratio.
        let score = if overdue { 2.0 + ratio } else { ratio };
        if best.as_ref().is_none_or(|b| score > b.dirty_ratio) {
            best = Some(Candidate {
                partition,
                config: topic.config.clone(),
                dirty_ratio: score,
            });
        }
    }
    best
}

/// One pass over one replica; whether it swapped cleaned segments in.
fn clean_once(
    candidate: &Candidate,
    config: &CleanerConfig,
    now: i64,
) -> Result<bool, crate::error::BrokerError> {
    let partition = &candidate.partition;
    let options = CleanOptions {
        cleanable_below_offset: 0, // the replica fills in its high watermark
        now_ms: now,
        min_compaction_lag_ms: candidate.config.min_compaction_lag_ms,
        delete_retention_ms: candidate.config.delete_retention_ms,
        dedupe_buffer_bytes: usize::try_from(config.dedupe_buffer_bytes).unwrap_or(usize::MAX),
    };
    let Some(job) = partition.prepare_clean(options)? else {
        return Ok(false);
    };
    let started = Instant::now();
    let mut io_bytes = 0u64;
    let rate = config.io_bytes_per_second.max(1) as f64;
    let mut throttle = |bytes: u64| {
        io_bytes += bytes;
        let due = Duration::from_secs_f64(io_bytes as f64 / rate);
        let elapsed = started.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    };
    let done = job
        .run(&mut throttle)
        .map_err(|e| crate::error::BrokerError::Storage(e.to_string()))?;
    let Some(outcome) = partition.complete_clean(done)? else {
        return Ok(false);
    };
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        topic = %partition.topic,
        partition = partition.index,
        swapped = outcome.swapped,
        segments_in = outcome.segments_in,
        segments_out = outcome.segments_out,
        bytes_in = outcome.bytes_in,
        bytes_out = outcome.bytes_out,
        records_removed = outcome.records_removed,
        tombstones_removed = outcome.tombstones_removed,
        cleaned_offset = outcome.cleaned_offset,
        seconds,
        "log cleaner pass"
    );
    Ok(outcome.swapped)
}
