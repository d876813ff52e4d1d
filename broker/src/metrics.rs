//! Broker-wide counters, served as Prometheus text on the admin port (`GET /metrics`).
//!
//! `rill_log_flushes_total` and `rill_acks_all_responses_total` are what the
//! durability test observes: the group-commit ratio is responses per flush. A flush
//! is one sync round of the persist loop; `rill_partition_syncs_total` counts the
//! partition logs those rounds synced in place, `rill_journal_syncs_total` the
//! fdatasyncs of the shared journal and `rill_journal_partition_writes_total` the
//! partition writes they covered (writes per journal sync = partitions per fsync).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters; relaxed atomics (they are statistics, never used for ordering
/// decisions — ordering "flush before ack" is enforced by the durable-offset watch).
#[derive(Debug)]
pub struct Metrics {
    /// Completed sync rounds of the persist loop (each covers every partition with
    /// something to sync, and the terms-and-votes file).
    pub log_flushes_total: AtomicU64,
    /// Partition logs synced in place by those rounds (the fdatasync of their dirty
    /// files).
    pub partition_syncs_total: AtomicU64,
    /// fdatasyncs of the shared journal: each made the new bytes of several partitions
    /// durable at once.
    pub journal_syncs_total: AtomicU64,
    /// Partition writes those journal syncs covered.
    pub journal_partition_writes_total: AtomicU64,
    /// Journal checkpoints (journalled segment files synced in place, new epoch).
    pub journal_checkpoints_total: AtomicU64,
    /// Segment files those checkpoints synced.
    pub journal_checkpoint_file_syncs_total: AtomicU64,
    /// Appends that had to create, grow or roll a segment file themselves (the persist
    /// loop grows active segments ahead of the write stream, so this stays rare).
    pub appends_with_file_io_total: AtomicU64,
    /// Leader appends sent to the followers while the leader's own `Ready` was being
    /// synced (Raft §10.2.1: the followers write and sync them in parallel with the
    /// leader's sync; the leader counts them towards a commit only after its next sync).
    /// Shows how often replication overlaps the leader's fsync.
    pub appends_replicated_during_sync_total: AtomicU64,
    /// Produce appends that found their partition's uncommitted backlog full
    /// (`Partition::append`'s back-pressure) and waited for the commit to move.
    pub appends_backlogged_total: AtomicU64,
    /// Failed partition flushes.
    pub log_flush_errors_total: AtomicU64,
    /// Produce partition responses sent for acks=-1 after their flush.
    pub acks_all_responses_total: AtomicU64,
    /// Produces answered as duplicates of batches already in the log (idempotent
    /// producers' retries), nothing appended.
    pub duplicate_batches_total: AtomicU64,
    /// Record batches appended.
    pub batches_in_total: AtomicU64,
    /// Bytes of record batches appended.
    pub bytes_in_total: AtomicU64,
    /// Bytes of record batches handed to Fetch responses.
    pub bytes_out_total: AtomicU64,
    /// Requests handled.
    pub requests_total: AtomicU64,
    /// Connections accepted (and served).
    pub connections_total: AtomicU64,
    /// Connections refused because `connections_max` was reached.
    pub connections_refused_total: AtomicU64,
    /// Gauge: Raft groups the engine ticks (neither quiet nor sole-member leaders).
    pub raft_ticking_groups: AtomicU64,
    /// Gauge: request frame buffers of the pool (`FramePool`) in use: frames being
    /// read into one, or requests read from one and not yet done.
    pub request_pool_buffers_busy: AtomicU64,
    /// Gauge: quiet Raft groups (quiescence: idle, not ticked, no heartbeats).
    pub raft_quiet_groups: AtomicU64,
    /// Per api key: requests answered and their total handling time.
    requests_by_api: [ApiStats; API_KEYS_TRACKED],
}

/// Api keys 0..this are tracked per API (Kafka's keys are below 100).
const API_KEYS_TRACKED: usize = 128;

#[derive(Debug, Default)]
struct ApiStats {
    count: AtomicU64,
    micros_sum: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            log_flushes_total: AtomicU64::new(0),
            partition_syncs_total: AtomicU64::new(0),
            journal_syncs_total: AtomicU64::new(0),
            journal_partition_writes_total: AtomicU64::new(0),
            journal_checkpoints_total: AtomicU64::new(0),
            journal_checkpoint_file_syncs_total: AtomicU64::new(0),
            appends_with_file_io_total: AtomicU64::new(0),
            appends_replicated_during_sync_total: AtomicU64::new(0),
            appends_backlogged_total: AtomicU64::new(0),
            log_flush_errors_total: AtomicU64::new(0),
            acks_all_responses_total: AtomicU64::new(0),
            duplicate_batches_total: AtomicU64::new(0),
            batches_in_total: AtomicU64::new(0),
            bytes_in_total: AtomicU64::new(0),
            bytes_out_total: AtomicU64::new(0),
            requests_total: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_refused_total: AtomicU64::new(0),
            raft_ticking_groups: AtomicU64::new(0),
            request_pool_buffers_busy: AtomicU64::new(0),
            raft_quiet_groups: AtomicU64::new(0),
            requests_by_api: std::array::from_fn(|_| ApiStats::default()),
        }
    }
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records one handled request of `api_key` that took `elapsed` (for Fetch this
    /// includes its long-poll wait, as in Kafka's request metrics).
    pub fn record_request(&self, api_key: i16, elapsed: std::time::Duration) {
        if let Some(stats) = usize::try_from(api_key)
            .ok()
            .and_then(|k| self.requests_by_api.get(k))
        {
            stats.count.fetch_add(1, Ordering::Relaxed);
            stats
                .micros_sum
                .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP rill_request_duration_seconds Time from a request's arrival to its response, per API.\n# TYPE rill_request_duration_seconds summary"
        );
        for (key, stats) in self.requests_by_api.iter().enumerate() {
            let count = stats.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let api = kafka_protocol::messages::ApiKey::try_from(key as i16)
                .map_or_else(|()| format!("key{key}"), |k| format!("{k:?}"));
            let seconds = stats.micros_sum.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "rill_request_duration_seconds_sum{{api=\"{api}\"}} {seconds}"
            );
            let _ = writeln!(
                out,
                "rill_request_duration_seconds_count{{api=\"{api}\"}} {count}"
            );
        }
        for (name, help, counter) in [
            (
                "rill_log_flushes_total",
                "Completed sync rounds (one group commit across partitions each).",
                &self.log_flushes_total,
            ),
            (
                "rill_partition_syncs_total",
                "Partition logs synced in place by those rounds.",
                &self.partition_syncs_total,
            ),
            (
                "rill_journal_syncs_total",
                "fdatasyncs of the shared journal (each covers several partitions).",
                &self.journal_syncs_total,
            ),
            (
                "rill_journal_partition_writes_total",
                "Partition writes made durable by those journal syncs.",
                &self.journal_partition_writes_total,
            ),
            (
                "rill_journal_checkpoints_total",
                "Journal checkpoints (journalled segments synced in place).",
                &self.journal_checkpoints_total,
            ),
            (
                "rill_journal_checkpoint_file_syncs_total",
                "Segment files synced in place by journal checkpoints.",
                &self.journal_checkpoint_file_syncs_total,
            ),
            (
                "rill_appends_with_file_io_total",
                "Appends that created, grew or rolled a segment file themselves.",
                &self.appends_with_file_io_total,
            ),
            (
                "rill_appends_replicated_during_sync_total",
                "Leader appends sent to followers while the leader's own sync was in progress.",
                &self.appends_replicated_during_sync_total,
            ),
            (
                "rill_appends_backlogged_total",
                "Produce appends that waited because their partition's uncommitted appends were at the limit (the disk or the followers are behind).",
                &self.appends_backlogged_total,
            ),
            (
                "rill_log_flush_errors_total",
                "Failed partition log flushes.",
                &self.log_flush_errors_total,
            ),
            (
                "rill_acks_all_responses_total",
                "acks=-1 partition responses sent after their flush.",
                &self.acks_all_responses_total,
            ),
            (
                "rill_duplicate_batches_total",
                "Produces answered as duplicates of batches already in the log.",
                &self.duplicate_batches_total,
            ),
            (
                "rill_batches_in_total",
                "Record batches appended.",
                &self.batches_in_total,
            ),
            (
                "rill_bytes_in_total",
                "Record batch bytes appended.",
                &self.bytes_in_total,
            ),
            (
                "rill_bytes_out_total",
                "Record batch bytes fetched.",
                &self.bytes_out_total,
            ),
            (
                "rill_requests_total",
                "Requests handled.",
                &self.requests_total,
            ),
            (
                "rill_connections_total",
                "Connections accepted.",
                &self.connections_total,
            ),
            (
                "rill_connections_refused_total",
                "Connections refused at connections_max.",
                &self.connections_refused_total,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
        }
        for (name, help, gauge) in [
            (
                "rill_raft_ticking_groups",
                "Raft groups ticked by the engine's timer.",
                &self.raft_ticking_groups,
            ),
            (
                "rill_request_pool_buffers_busy",
                "Pooled request frame buffers in use (each holds its size of queued_request_max_bytes).",
                &self.request_pool_buffers_busy,
            ),
            (
                "rill_raft_quiet_groups",
                "Idle Raft groups gone quiet (no ticks, no heartbeats).",
                &self.raft_quiet_groups,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {}", gauge.load(Ordering::Relaxed));
        }
        out
    }
}
