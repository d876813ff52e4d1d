//! One partition replica: its log, its leader epoch, its high watermark, and group
//! commit. This is where each replica will own its Raft group.
//!
//! Thread safety: the log sits behind a `std::sync::Mutex` held only for
//! non-blocking work (a memcpy append, slicing a read, preparing or completing a
//! flush); the fdatasync itself runs outside the lock on the blocking pool, so
//! appends continue while a flush is in progress and the next flush covers them
//! (group commit: every produce that arrives during one flush shares the next).
//!
//! Visibility: `visible_end_offset` (the high watermark) is what Fetch reads up to
//! and ListOffsets(latest) answers. With `durability = fsync` it is the flushed end
//! of the log, so a consumer never sees a record a crash could take back; with
//! `interval` it is the appended end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rill_storage::PartitionLog;
use tokio::sync::{watch, Notify};

use crate::config::Durability;
use crate::error::BrokerError;
use crate::metrics::Metrics;

/// The leader epoch stamped on batches: a single node never changes leader.
pub const LEADER_EPOCH: i32 = 0;

/// Checks a client's view of the leader epoch against ours (-1: no check): the one
/// place Fetch, ListOffsets and OffsetForLeaderEpoch decide FENCED_LEADER_EPOCH
/// (the client is behind) or UNKNOWN_LEADER_EPOCH (the client is ahead).
pub fn check_leader_epoch(current_leader_epoch: i32) -> Result<(), BrokerError> {
    if current_leader_epoch == -1 || current_leader_epoch == LEADER_EPOCH {
        Ok(())
    } else if current_leader_epoch > LEADER_EPOCH {
        Err(BrokerError::UnknownLeaderEpoch)
    } else {
        Err(BrokerError::FencedLeaderEpoch)
    }
}

/// Where the durable end of a partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableState {
    /// Every offset below this is on disk.
    pub end_offset: i64,
    /// The last flush failed; waiters answer KAFKA_STORAGE_ERROR.
    pub failed: bool,
}

#[derive(Debug, Default)]
struct FlushState {
    /// A flush task is running.
    running: bool,
    /// An append arrived after the running flush captured its range.
    again: bool,
}

/// Result of appending one batch.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    /// Offset assigned to the batch's first record.
    pub base_offset: i64,
    /// Offset of the batch's last record.
    pub last_offset: i64,
    /// log_start_offset after the append.
    pub log_start_offset: i64,
}

/// One partition of a topic, served by this broker.
pub struct Partition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub index: i32,
    log: Mutex<PartitionLog>,
    visible_tx: watch::Sender<i64>,
    durable_tx: watch::Sender<DurableState>,
    flush: Mutex<FlushState>,
    /// Notified whenever a flush task ends (see [`Partition::close`]).
    flush_idle: Notify,
    /// Set (under the log lock) when the topic is deleted: no more appends or flushes.
    closed: AtomicBool,
    durability: Durability,
    flush_delay_ms: u64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Partition({}-{})", self.topic, self.index)
    }
}

impl Partition {
    /// Wraps an opened log. Everything in a freshly opened log was recovered from
    /// disk, so it is all durable and visible.
    pub fn new(
        topic: String,
        index: i32,
        log: PartitionLog,
        durability: Durability,
        flush_delay_ms: u64,
        metrics: Arc<Metrics>,
    ) -> Partition {
        let end = log.log_end_offset() as i64;
        Partition {
            topic,
            index,
            log: Mutex::new(log),
            visible_tx: watch::Sender::new(end),
            durable_tx: watch::Sender::new(DurableState {
                end_offset: end,
                failed: false,
            }),
            flush: Mutex::new(FlushState::default()),
            flush_idle: Notify::new(),
            closed: AtomicBool::new(false),
            durability,
            flush_delay_ms,
            metrics,
        }
    }

    /// Locks the log. A poisoned lock means a panic inside storage; the log may be
    /// half-updated, which is a broken invariant, so we propagate the panic.
    pub fn log(&self) -> MutexGuard<'_, PartitionLog> {
        self.log.lock().expect("partition log lock poisoned")
    }

    /// The high watermark: consumers read below it.
    pub fn visible_end_offset(&self) -> i64 {
        *self.visible_tx.borrow()
    }

    /// A receiver woken whenever the high watermark moves (Fetch long polls).
    pub fn watch_visible(&self) -> watch::Receiver<i64> {
        self.visible_tx.subscribe()
    }

    /// The durable end, for tests and metrics.
    pub fn durable(&self) -> DurableState {
        *self.durable_tx.borrow()
    }

    /// Appends record batches (one or more, whole, as produced) as leader, all or
    /// nothing, at once (no waiting: the caller holds its connection's turn). With
    /// `durability = fsync` this schedules a group-commit flush; under `interval` the
    /// records are visible on return. [`Partition::wait_acknowledgeable`] waits for
    /// what acks=-1 needs.
    pub fn append(self: &Arc<Self>, batches: &[u8]) -> Result<Appended, BrokerError> {
        let (appended, batch_count) = {
            let mut log = self.log();
            if self.closed.load(Ordering::Acquire) {
                return Err(BrokerError::UnknownTopicOrPartition);
            }
            // segment.ms is checked when data arrives, as in Kafka.
            log.maybe_roll(crate::clock::now_ms())
                .map_err(crate::state::append_error)?;
            let info = log
                .append_as_leader(batches, LEADER_EPOCH)
                .map_err(crate::state::append_error)?;
            let appended = Appended {
                base_offset: info.base_offset as i64,
                last_offset: info.last_offset as i64,
                log_start_offset: log.log_start_offset() as i64,
            };
            (appended, info.batch_count)
        };
        Metrics::add(&self.metrics.batches_in_total, batch_count as u64);
        Metrics::add(&self.metrics.bytes_in_total, batches.len() as u64);
        let end = appended.last_offset + 1;
        match self.durability {
            Durability::Interval => {
                self.visible_tx.send_if_modified(|v| raise(v, end));
            }
            Durability::Fsync => self.request_flush(),
        }
        Ok(appended)
    }

    /// Waits until `appended` may be acknowledged to an acks=-1 producer: under
    /// `durability = fsync` once a completed flush covers it, under `interval` at once.
    pub async fn wait_acknowledgeable(&self, appended: &Appended) -> Result<(), BrokerError> {
        match self.durability {
            Durability::Interval => Ok(()),
            Durability::Fsync => self.wait_durable(appended.last_offset + 1).await,
        }
    }

    /// Waits until a flush covers every offset below `end_offset`.
    async fn wait_durable(&self, end_offset: i64) -> Result<(), BrokerError> {
        let mut rx = self.durable_tx.subscribe();
        let state = rx
            .wait_for(|s| s.end_offset >= end_offset || s.failed)
            .await
            .map_err(|_| BrokerError::Storage("partition closed".into()))?;
        if state.end_offset >= end_offset {
            Ok(())
        } else {
            Err(BrokerError::Storage("flush failed".into()))
        }
    }

    /// Starts a flush task unless one is running, in which case that task runs one
    /// more round after its current one (which is what makes produces that arrive
    /// during a flush share the next one).
    pub fn request_flush(self: &Arc<Self>) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        {
            let mut state = self.flush.lock().expect("flush state lock poisoned");
            if state.running {
                state.again = true;
                return;
            }
            state.running = true;
        }
        let partition = Arc::clone(self);
        tokio::spawn(async move { partition.flush_rounds().await });
    }

    async fn flush_rounds(self: Arc<Self>) {
        loop {
            if self.flush_delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(self.flush_delay_ms)).await;
            }
            // Clear `again` before capturing the range: an append after this point
            // either lands in this flush or sets `again` for the next round.
            self.flush.lock().expect("flush state lock poisoned").again = false;
            let result = self.flush_once().await;
            match result {
                Ok(end) => {
                    Metrics::add(&self.metrics.log_flushes_total, 1);
                    // Both only after the flush completed, so a consumer never sees
                    // what is not durable. The high watermark first: when an acks=-1
                    // producer is answered (woken by the durable watch), Fetch and
                    // ListOffsets on any connection already show its records.
                    self.visible_tx.send_if_modified(|v| raise(v, end));
                    self.durable_tx.send_if_modified(|s| {
                        let moved = end > s.end_offset || s.failed;
                        s.end_offset = s.end_offset.max(end);
                        s.failed = false;
                        moved
                    });
                }
                Err(e) => {
                    Metrics::add(&self.metrics.log_flush_errors_total, 1);
                    tracing::error!(topic = %self.topic, partition = self.index, error = %e, "flush failed");
                    self.durable_tx.send_modify(|s| s.failed = true);
                }
            }
            let mut state = self.flush.lock().expect("flush state lock poisoned");
            if !state.again {
                state.running = false;
                drop(state);
                self.flush_idle.notify_waiters();
                return;
            }
        }
    }

    /// One flush: capture the range under the lock, write it out without the lock,
    /// record completion under the lock. Returns the offset the flush made durable.
    async fn flush_once(&self) -> Result<i64, BrokerError> {
        let job = self.log().prepare_flush();
        let flushed = tokio::task::spawn_blocking(move || job.run())
            .await
            .map_err(|e| BrokerError::Storage(format!("flush task: {e}")))?
            .map_err(|e| BrokerError::Storage(e.to_string()))?;
        let end = flushed.offset() as i64;
        self.log().complete_flush(flushed);
        Ok(end)
    }

    /// Flushes everything appended so far and waits for it (shutdown, interval
    /// policy). Returns the durable end offset.
    pub async fn flush_now(&self) -> Result<i64, BrokerError> {
        let end = self.flush_once().await?;
        Metrics::add(&self.metrics.log_flushes_total, 1);
        // High watermark before durable offset, as in `flush_rounds`.
        self.visible_tx.send_if_modified(|v| raise(v, end));
        self.durable_tx.send_if_modified(|s| {
            let moved = end > s.end_offset;
            s.end_offset = s.end_offset.max(end);
            moved
        });
        Ok(end)
    }

    /// Closes the partition for a topic deletion: later appends fail with
    /// UNKNOWN_TOPIC_OR_PARTITION, producers still waiting for a flush get an error,
    /// and this returns once no flush task is running, so none can write into the
    /// directory after it is removed (or into a new topic of the same name).
    pub async fn close(&self) {
        {
            let _log = self.log();
            self.closed.store(true, Ordering::Release);
        }
        self.durable_tx.send_modify(|s| s.failed = true);
        loop {
            let idle = self.flush_idle.notified();
            tokio::pin!(idle);
            // Register before checking, so a task ending in between still wakes us.
            idle.as_mut().enable();
            if !self
                .flush
                .lock()
                .expect("flush state lock poisoned")
                .running
            {
                return;
            }
            idle.await;
        }
    }

    /// Reads whole batches from `start_offset`, at most `bytes_max` (but at least one
    /// batch, like Kafka, so a large batch never blocks a consumer), below the high
    /// watermark. The returned `Bytes` are slices of the mapped segment (zero copy).
    pub fn read(&self, start_offset: i64, bytes_max: usize) -> Result<ReadResult, BrokerError> {
        let visible_end = self.visible_end_offset();
        let log = self.log();
        let log_start_offset = log.log_start_offset() as i64;
        if start_offset < log_start_offset
            || start_offset > visible_end.max(log.log_end_offset() as i64)
        {
            return Err(BrokerError::OffsetOutOfRange {
                offset: start_offset,
                log_start_offset,
                log_end_offset: visible_end,
            });
        }
        let records = if start_offset >= visible_end {
            Bytes::new()
        } else {
            log.read(start_offset as u64, bytes_max, visible_end as u64)
                .map_err(|e| BrokerError::Storage(e.to_string()))?
        };
        Ok(ReadResult {
            records,
            high_watermark: visible_end,
            log_start_offset,
        })
    }

    /// Deletes closed segments past the topic's retention (set in its `LogConfig`),
    /// never anything at or above the high watermark.
    pub fn apply_retention(&self, now_ms: i64) {
        let visible_end = self.visible_end_offset() as u64;
        let mut log = self.log();
        match log.apply_retention(now_ms, visible_end) {
            Ok(outcome) if outcome.segments_deleted > 0 => tracing::info!(
                topic = %self.topic,
                partition = self.index,
                segments = outcome.segments_deleted,
                bytes = outcome.bytes_deleted,
                log_start_offset = outcome.log_start_offset,
                "retention deleted segments"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "retention failed")
            }
        }
    }
}

/// Batches read for a Fetch.
#[derive(Debug)]
pub struct ReadResult {
    /// Whole record batches, zero-copy slices of the log.
    pub records: Bytes,
    /// The high watermark at the time of the read.
    pub high_watermark: i64,
    /// The log start offset at the time of the read.
    pub log_start_offset: i64,
}

fn raise(value: &mut i64, to: i64) -> bool {
    if to > *value {
        *value = to;
        true
    } else {
        false
    }
}
