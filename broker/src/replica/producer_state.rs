//! Idempotent producers' state in one partition replica: for each producer id, its
//! epoch and the last [`BATCHES_KEPT`] batches' sequence ranges and offsets, as in
//! Kafka's `ProducerStateManager`. Sans-I/O: the replica's store feeds it every batch
//! it writes ([`ProducerStates::record`]) and every truncation
//! ([`ProducerStates::truncate`]); the leader asks it about a produce's batches before
//! writing them ([`ProducerStates::check`]).
//!
//! # What the table reflects
//!
//! Everything in the storage log, committed or not: a leader's appends are recorded as
//! they are written (before they are proposed), so up to five pipelined batches of one
//! producer are checked against each other; a follower records what it writes from its
//! leader, so a new leader already holds the state of every batch in its log. Only
//! uncommitted entries are ever truncated (a follower meeting a new leader, a leader
//! dropping appends it never proposed); [`ProducerStates::truncate`] drops the batches
//! at or past the cut and reports when a producer lost every batch it had, so the store
//! rebuilds the table from the log (the batches before may have been evicted from the
//! window).
//!
//! # The rules (Kafka's `ProducerAppendInfo.checkSequence`)
//!
//! * A batch of an epoch older than the producer's → INVALID_PRODUCER_EPOCH.
//! * A newer epoch must start at sequence 0 (KIP-360: the producer bumped its epoch and
//!   reset its sequences) → else OUT_OF_ORDER_SEQUENCE_NUMBER.
//! * Same epoch: a batch equal (first and last sequence) to one of the kept batches is a
//!   duplicate: answered with the original's offsets, nothing written. Otherwise it must
//!   follow the last batch (`last + 1`, wrapping to 0 after `i32::MAX`) → else
//!   OUT_OF_ORDER_SEQUENCE_NUMBER.
//! * A producer id with no state and a first sequence other than 0 → UNKNOWN_PRODUCER_ID
//!   (its state expired, or its batches were truncated away), as Kafka answered before
//!   KIP-360 relaxed it: the client bumps its epoch and starts at 0 again.
//!
//! # Bounds
//!
//! At most [`PRODUCERS_PER_PARTITION_MAX`] producers per partition (the least recently
//! written is forgotten first); producers idle for `producer_id_expiration_ms` are
//! expired by [`ProducerStates::expire`].

use std::collections::{HashMap, VecDeque};

use rill_record::BatchView;

/// Batches kept per producer: a producer has at most this many in flight per
/// partition, so any retry it sends is among them.
pub const BATCHES_KEPT: usize = 5;

/// Producers one partition keeps at most; beyond, the least recently written is
/// forgotten (its next batch with a sequence other than 0 gets UNKNOWN_PRODUCER_ID).
pub const PRODUCERS_PER_PARTITION_MAX: usize = 50_000;

/// The idempotence fields of one batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSequence {
    /// Producer id (≥ 0; batches without one are not idempotent and not tracked).
    pub producer_id: i64,
    /// Producer epoch.
    pub epoch: i16,
    /// Sequence of the first record.
    pub first_seq: i32,
    /// Sequence of the last record (wrapped past `i32::MAX`).
    pub last_seq: i32,
    /// Offsets the batch covers (its records).
    pub offset_count: u64,
    /// The batch's max timestamp (ms), for expiry when the table is rebuilt from the log.
    pub max_timestamp_ms: i64,
}

impl BatchSequence {
    /// The idempotence fields of a batch, or `None` for a batch without a producer id
    /// (or a control batch, which the broker writes).
    pub fn of(view: &BatchView<'_>) -> Option<BatchSequence> {
        let producer_id = view.producer_id();
        if producer_id < 0 || view.is_control() {
            return None;
        }
        let delta = view.last_offset_delta().max(0);
        let first_seq = view.base_sequence();
        Some(BatchSequence {
            producer_id,
            epoch: view.producer_epoch(),
            first_seq,
            last_seq: last_sequence(first_seq, delta),
            offset_count: u64::from(delta as u32) + 1,
            max_timestamp_ms: view.max_timestamp(),
        })
    }
}

/// Kafka's `DefaultRecordBatch.incrementSequence`: sequences wrap to 0 after `i32::MAX`.
pub fn last_sequence(first_seq: i32, last_offset_delta: i32) -> i32 {
    if first_seq > i32::MAX - last_offset_delta {
        last_offset_delta - (i32::MAX - first_seq) - 1
    } else {
        first_seq + last_offset_delta
    }
}

fn in_sequence(last_seq: i32, next_seq: i32) -> bool {
    next_seq == last_seq.wrapping_add(1) && last_seq != i32::MAX
        || (last_seq == i32::MAX && next_seq == 0)
}

/// One kept batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptBatch {
    /// Sequence of its first record.
    pub first_seq: i32,
    /// Sequence of its last record.
    pub last_seq: i32,
    /// Offset of its first record.
    pub base_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
}

/// One producer's state in a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    /// The newest epoch written.
    pub epoch: i16,
    /// The last batches of that epoch, oldest first, at most [`BATCHES_KEPT`].
    pub batches: VecDeque<KeptBatch>,
    /// When the producer last wrote (wall clock when written here; the batch's max
    /// timestamp when rebuilt from the log), for expiry.
    pub last_write_ms: i64,
}

/// What the leader does with a produce's batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write them.
    Append,
    /// A retry of batches already in the log: answer with the original's offsets
    /// (first batch's base, last batch's last), write nothing.
    Duplicate {
        /// Offset of the original's first record.
        base_offset: u64,
        /// Offset of the original's last record.
        last_offset: u64,
    },
}

/// Why a batch is refused (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// A gap, a sequence behind the kept window, or a new epoch not starting at 0.
    #[error("producer {producer_id} epoch {epoch}: sequence {first_seq} does not follow {expected_after}")]
    OutOfOrder {
        /// The producer.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The batch's first sequence.
        first_seq: i32,
        /// The last sequence held (-1 for a new epoch, which must start at 0).
        expected_after: i32,
    },
    /// An epoch older than the producer's current one.
    #[error("producer {producer_id}: epoch {epoch} is older than the current epoch {current}")]
    InvalidEpoch {
        /// The producer.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The epoch held.
        current: i16,
    },
    /// No state for the producer and a first sequence other than 0.
    #[error(
        "producer {producer_id} has no state in this partition and sequence {first_seq} is not 0"
    )]
    UnknownProducer {
        /// The producer.
        producer_id: i64,
        /// The batch's first sequence.
        first_seq: i32,
    },
}

/// Every producer's state in one partition (see the module docs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The producers held.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is held.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// One producer's state.
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Every producer's state (snapshots).
    pub fn iter(&self) -> impl Iterator<Item = (&i64, &ProducerEntry)> {
        self.producers.iter()
    }

    /// Puts a producer's state back as a snapshot held it.
    pub fn insert(&mut self, producer_id: i64, entry: ProducerEntry) {
        self.producers.insert(producer_id, entry);
    }

    /// Checks one produce's idempotent batches, in log order, against the table and
    /// against each other. A duplicate anywhere makes the whole produce a duplicate
    /// answered with the original's offsets (clients send one batch per partition and
    /// request; Kafka answers the same way).
    pub fn check(&self, batches: &[BatchSequence]) -> Result<Verdict, SequenceError> {
        // The state each producer would be in after the earlier batches of this produce.
        let mut pending: Vec<(i64, i16, i32)> = Vec::new();
        let mut duplicate: Option<(u64, u64)> = None;
        for (index, batch) in batches.iter().enumerate() {
            let after_earlier = pending
                .iter()
                .rev()
                .find(|(id, _, _)| *id == batch.producer_id)
                .map(|&(_, epoch, last_seq)| (epoch, last_seq));
            let entry = self.producers.get(&batch.producer_id);
            match self.check_one(batch, entry, after_earlier)? {
                // Only a later batch of this produce looks at it (no allocation for the
                // usual produce of one batch).
                Verdict::Append if index + 1 < batches.len() => {
                    pending.push((batch.producer_id, batch.epoch, batch.last_seq))
                }
                Verdict::Append => {}
                Verdict::Duplicate {
                    base_offset,
                    last_offset,
                } => {
                    let (base, _) = *duplicate.get_or_insert((base_offset, last_offset));
                    duplicate = Some((base, last_offset));
                }
            }
        }
        Ok(match duplicate {
            Some((base_offset, last_offset)) => Verdict::Duplicate {
                base_offset,
                last_offset,
            },
            None => Verdict::Append,
        })
    }

    fn check_one(
        &self,
        batch: &BatchSequence,
        entry: Option<&ProducerEntry>,
        after_earlier: Option<(i16, i32)>,
    ) -> Result<Verdict, SequenceError> {
        let out_of_order = |expected_after| SequenceError::OutOfOrder {
            producer_id: batch.producer_id,
            epoch: batch.epoch,
            first_seq: batch.first_seq,
            expected_after,
        };
        if let Some((epoch, last_seq)) = after_earlier {
            return if batch.epoch != epoch || !in_sequence(last_seq, batch.first_seq) {
                Err(out_of_order(last_seq))
            } else {
                Ok(Verdict::Append)
            };
        }
        let Some(entry) = entry.filter(|e| !e.batches.is_empty() || e.epoch > batch.epoch) else {
            return if batch.first_seq == 0 {
                Ok(Verdict::Append)
            } else {
                Err(SequenceError::UnknownProducer {
                    producer_id: batch.producer_id,
                    first_seq: batch.first_seq,
                })
            };
        };
        if batch.epoch < entry.epoch {
            return Err(SequenceError::InvalidEpoch {
                producer_id: batch.producer_id,
                epoch: batch.epoch,
                current: entry.epoch,
            });
        }
        if batch.epoch > entry.epoch {
            return if batch.first_seq == 0 {
                Ok(Verdict::Append)
            } else {
                Err(out_of_order(-1))
            };
        }
        if let Some(kept) = entry
            .batches
            .iter()
            .find(|k| k.first_seq == batch.first_seq && k.last_seq == batch.last_seq)
        {
            return Ok(Verdict::Duplicate {
                base_offset: kept.base_offset,
                last_offset: kept.last_offset,
            });
        }
        let last_seq = entry.batches.back().map_or(-1, |k| k.last_seq);
        if in_sequence(last_seq, batch.first_seq) {
            Ok(Verdict::Append)
        } else {
            Err(out_of_order(last_seq))
        }
    }

    /// Records a batch written to the log at `base_offset` (leader or follower, checked
    /// or not: the log is the truth), at wall-clock or batch time `write_ms`.
    pub fn record(&mut self, batch: &BatchSequence, base_offset: u64, write_ms: i64) {
        if !self.producers.contains_key(&batch.producer_id)
            && self.producers.len() >= PRODUCERS_PER_PARTITION_MAX
        {
            self.forget_least_recent();
        }
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: batch.epoch,
                batches: VecDeque::with_capacity(BATCHES_KEPT),
                last_write_ms: write_ms,
            });
        if batch.epoch != entry.epoch {
            entry.epoch = batch.epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_KEPT {
            entry.batches.pop_front();
        }
        entry.batches.push_back(KeptBatch {
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            base_offset,
            last_offset: base_offset + batch.offset_count.max(1) - 1,
        });
        entry.last_write_ms = entry.last_write_ms.max(write_ms);
    }

    fn forget_least_recent(&mut self) {
        if let Some(oldest) = self
            .producers
            .iter()
            .min_by_key(|(_, e)| e.last_write_ms)
            .map(|(id, _)| *id)
        {
            self.producers.remove(&oldest);
        }
    }

    /// The log was cut at `end_offset`: drops the batches at or past it. Returns true
    /// when a producer lost every batch it had: its earlier batches (evicted from the
    /// window) or epoch are unknown here, so the caller rebuilds the table from the log.
    #[must_use]
    pub fn truncate(&mut self, end_offset: u64) -> bool {
        let mut rebuild = false;
        self.producers.retain(|_, entry| {
            let before = entry.batches.len();
            while entry
                .batches
                .back()
                .is_some_and(|k| k.last_offset >= end_offset)
            {
                entry.batches.pop_back();
            }
            if entry.batches.is_empty() && before > 0 {
                rebuild = true;
                return false;
            }
            true
        });
        rebuild
    }

    /// Forgets everything (the log was reset, or is about to be rebuilt).
    pub fn clear(&mut self) {
        self.producers.clear();
    }

    /// Forgets producers that wrote nothing for `expiration_ms` (Kafka's
    /// `producer.id.expiration.ms`). Returns how many.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_write_ms) < expiration_ms);
        before - self.producers.len()
    }
}

/// Version line of a snapshot body.
const SNAPSHOT_VERSION_LINE: &str = "rill-producer-state v1";

impl ProducerStates {
    /// The table as a snapshot body (text, one producer a line) for a log whose entries
    /// below `end_offset` it covers; `term` is the term of the entry ending there, so a
    /// reader can tell the log still holds the same entries (Raft's log matching).
    pub fn encode_snapshot(&self, end_offset: u64, term: i32) -> Vec<u8> {
        use std::fmt::Write;
        let mut out = String::with_capacity(64 + self.producers.len() * 96);
        let _ = writeln!(out, "{SNAPSHOT_VERSION_LINE}");
        let _ = writeln!(out, "end_offset={end_offset} term={term}");
        for (id, e) in &self.producers {
            let _ = write!(out, "{id} {} {}", e.epoch, e.last_write_ms);
            for k in &e.batches {
                let _ = write!(
                    out,
                    " {}:{}:{}:{}",
                    k.first_seq, k.last_seq, k.base_offset, k.last_offset
                );
            }
            out.push('\n');
        }
        out.into_bytes()
    }

    /// Reads a snapshot body: (end offset, term, table), or `None` if it is not one.
    pub fn decode_snapshot(body: &[u8]) -> Option<(u64, i32, ProducerStates)> {
        let text = std::str::from_utf8(body).ok()?;
        let mut lines = text.lines();
        if lines.next()? != SNAPSHOT_VERSION_LINE {
            return None;
        }
        let mut head = lines.next()?.split(' ');
        let end_offset = head.next()?.strip_prefix("end_offset=")?.parse().ok()?;
        let term = head.next()?.strip_prefix("term=")?.parse().ok()?;
        let mut states = ProducerStates::new();
        for line in lines {
            let mut words = line.split(' ');
            let id: i64 = words.next()?.parse().ok()?;
            let epoch: i16 = words.next()?.parse().ok()?;
            let last_write_ms: i64 = words.next()?.parse().ok()?;
            let mut batches = VecDeque::with_capacity(BATCHES_KEPT);
            for word in words {
                let mut parts = word.split(':');
                let kept = KeptBatch {
                    first_seq: parts.next()?.parse().ok()?,
                    last_seq: parts.next()?.parse().ok()?,
                    base_offset: parts.next()?.parse().ok()?,
                    last_offset: parts.next()?.parse().ok()?,
                };
                if batches.len() == BATCHES_KEPT || kept.last_offset < kept.base_offset {
                    return None;
                }
                batches.push_back(kept);
            }
            if states.producers.len() >= PRODUCERS_PER_PARTITION_MAX {
                return None;
            }
            states.producers.insert(
                id,
                ProducerEntry {
                    epoch,
                    batches,
                    last_write_ms,
                },
            );
        }
        Some((end_offset, term, states))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer_id: i64, epoch: i16, first_seq: i32, records: i32) -> BatchSequence {
        BatchSequence {
            producer_id,
            epoch,
            first_seq,
            last_seq: last_sequence(first_seq, records - 1),
            offset_count: records as u64,
            max_timestamp_ms: 0,
        }
    }

    /// Writes `b` at the table's idea of the log end, as the store does.
    fn write(states: &mut ProducerStates, end: &mut u64, b: BatchSequence) -> u64 {
        assert_eq!(states.check(&[b]), Ok(Verdict::Append), "{b:?}");
        let base = *end;
        states.record(&b, base, 0);
        *end += b.offset_count;
        base
    }

    #[test]
    fn a_retried_batch_is_a_duplicate_with_the_original_offsets() {
        let mut s = ProducerStates::new();
        let mut end = 100;
        write(&mut s, &mut end, batch(7, 0, 0, 10));
        let base = write(&mut s, &mut end, batch(7, 0, 10, 5));
        assert_eq!(base, 110);
        assert_eq!(
            s.check(&[batch(7, 0, 10, 5)]),
            Ok(Verdict::Duplicate {
                base_offset: 110,
                last_offset: 114
            })
        );
        assert_eq!(
            s.check(&[batch(7, 0, 0, 10)]),
            Ok(Verdict::Duplicate {
                base_offset: 100,
                last_offset: 109
            })
        );
        // Another producer is independent.
        assert_eq!(s.check(&[batch(8, 0, 0, 1)]), Ok(Verdict::Append));
    }

    #[test]
    fn a_gap_is_out_of_order() {
        let mut s = ProducerStates::new();
        let mut end = 0;
        write(&mut s, &mut end, batch(1, 0, 0, 3));
        assert!(matches!(
            s.check(&[batch(1, 0, 4, 1)]),
            Err(SequenceError::OutOfOrder {
                expected_after: 2,
                ..
            })
        ));
        // Overlapping but not equal to a kept batch: out of order too.
        assert!(matches!(
            s.check(&[batch(1, 0, 1, 3)]),
            Err(SequenceError::OutOfOrder { .. })
        ));
        assert_eq!(s.check(&[batch(1, 0, 3, 1)]), Ok(Verdict::Append));
    }

    #[test]
    fn older_epochs_are_fenced_and_a_new_epoch_starts_at_zero() {
        let mut s = ProducerStates::new();
        let mut end = 0;
        write(&mut s, &mut end, batch(1, 3, 0, 3));
        assert!(matches!(
            s.check(&[batch(1, 2, 3, 1)]),
            Err(SequenceError::InvalidEpoch { current: 3, .. })
        ));
        assert!(matches!(
            s.check(&[batch(1, 4, 3, 1)]),
            Err(SequenceError::OutOfOrder {
                expected_after: -1,
                ..
            })
        ));
        write(&mut s, &mut end, batch(1, 4, 0, 2));
        // The old epoch's batches are gone: the new epoch's sequence 0 batch is the kept one.
        assert!(matches!(
            s.check(&[batch(1, 3, 0, 3)]),
            Err(SequenceError::InvalidEpoch { current: 4, .. })
        ));
        assert_eq!(
            s.check(&[batch(1, 4, 0, 2)]),
            Ok(Verdict::Duplicate {
                base_offset: 3,
                last_offset: 4
            })
        );
    }

    #[test]
    fn an_unknown_producer_must_start_at_zero() {
        let s = ProducerStates::new();
        assert_eq!(s.check(&[batch(9, 0, 0, 1)]), Ok(Verdict::Append));
        assert!(matches!(
            s.check(&[batch(9, 0, 5, 1)]),
            Err(SequenceError::UnknownProducer { first_seq: 5, .. })
        ));
    }

    #[test]
    fn only_the_last_five_batches_are_kept() {
        let mut s = ProducerStates::new();
        let mut end = 0;
        for i in 0..6 {
            write(&mut s, &mut end, batch(1, 0, i * 2, 2));
        }
        assert_eq!(s.get(1).unwrap().batches.len(), BATCHES_KEPT);
        // Batch 0 (seq 0..1) was evicted: a retry of it is out of order, not a duplicate.
        assert!(matches!(
            s.check(&[batch(1, 0, 0, 2)]),
            Err(SequenceError::OutOfOrder { .. })
        ));
        // Batch 1 (seq 2..3) is the oldest kept.
        assert_eq!(
            s.check(&[batch(1, 0, 2, 2)]),
            Ok(Verdict::Duplicate {
                base_offset: 2,
                last_offset: 3
            })
        );
    }

    #[test]
    fn batches_of_one_produce_are_checked_against_each_other() {
        let mut s = ProducerStates::new();
        let mut end = 0;
        write(&mut s, &mut end, batch(1, 0, 0, 2));
        assert_eq!(
            s.check(&[batch(1, 0, 2, 2), batch(1, 0, 4, 1)]),
            Ok(Verdict::Append)
        );
        assert!(matches!(
            s.check(&[batch(1, 0, 2, 2), batch(1, 0, 5, 1)]),
            Err(SequenceError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        assert_eq!(last_sequence(i32::MAX - 1, 3), 1);
        let mut s = ProducerStates::new();
        s.record(&batch(1, 0, i32::MAX - 1, 2), 0, 0);
        assert_eq!(s.check(&[batch(1, 0, 0, 1)]), Ok(Verdict::Append));
        assert!(s.check(&[batch(1, 0, 1, 1)]).is_err());
    }

    #[test]
    fn truncation_drops_cut_batches_and_asks_for_a_rebuild_when_a_producer_empties() {
        let mut s = ProducerStates::new();
        let mut end = 0;
        write(&mut s, &mut end, batch(1, 0, 0, 2)); // 0..1
        write(&mut s, &mut end, batch(2, 0, 0, 2)); // 2..3
        write(&mut s, &mut end, batch(1, 0, 2, 2)); // 4..5
        assert!(
            !s.truncate(4),
            "producer 1 keeps a batch, producer 2 is untouched"
        );
        assert_eq!(s.check(&[batch(1, 0, 2, 2)]), Ok(Verdict::Append));
        assert!(s.truncate(2), "producer 2 lost its only batch");
        assert!(s.get(2).is_none());
    }

    #[test]
    fn a_snapshot_reads_back_as_the_same_table() {
        let mut s = ProducerStates::new();
        let mut end = 0;
        for i in 0..7 {
            write(&mut s, &mut end, batch(1, 2, i * 3, 3));
        }
        write(&mut s, &mut end, batch(-5_i64.abs(), 0, 0, 1));
        let body = s.encode_snapshot(end, 4);
        let (read_end, term, read) = ProducerStates::decode_snapshot(&body).unwrap();
        assert_eq!((read_end, term), (end, 4));
        assert_eq!(read, s);
        assert!(
            ProducerStates::decode_snapshot(b"rill-producer-state v1\nend_offset=1\n").is_none()
        );
        assert!(
            ProducerStates::decode_snapshot(&body[..body.len() - 3]).is_none_or(|(_, _, t)| t != s)
        );
    }

    #[test]
    fn idle_producers_expire() {
        let mut s = ProducerStates::new();
        s.record(&batch(1, 0, 0, 1), 0, 1_000);
        s.record(&batch(2, 0, 0, 1), 1, 5_000);
        assert_eq!(s.expire(6_000, 2_000), 1);
        assert!(s.get(1).is_none() && s.get(2).is_some());
    }
}
