//! A history checker for acks=all produce workloads: what the producers were told
//! (acknowledged at an offset, failed, or nothing yet) against what reads of the
//! partition logs found, and a byte-for-byte comparison of replicas' log files.
//!
//! A workload gives every produced record a value unique to it (its id) and records:
//!
//! - [`History::record_attempt`] before each send;
//! - [`History::record_ack`] for each acknowledgement (partition and offset);
//! - [`History::record_failure`] for each send that failed or timed out: the record is
//!   *indeterminate*, it may or may not be in the log;
//! - [`History::record_read`] for each read of a partition's log (one consumer pass
//!   over a partition; several reads may come from several replicas or times).
//!
//! [`History::check`] returns a [`Report`] of every violation it finds:
//!
//! - an acknowledged value lost (read nowhere in its partition),
//! - an acknowledged value read only at offsets other than the acknowledged one,
//! - an offset holding two different values (across reads, or across acknowledgements),
//! - a value read at two positions (a duplicate: an error or not by [`Duplicates`]),
//! - a value never attempted (a phantom),
//! - offsets not increasing within one read,
//! - values one producer sent to a partition read in another order than sent
//!   ([`History::record_send_order`]; with an idempotent producer, retries never
//!   reorder).
//!
//! Gaps in offsets are not violations: control batches (each Raft term's
//! LEADER_CHANGE entry) hold offsets that consumers skip.
//!
//! [`replicas_identical`] compares the `.log` segment files of one partition across
//! replicas over their logical length.
//!
//! # Layout
//!
//! - this file: [`History`] and the checks;
//! - `report`: [`Report`], one type per violation, and their display;
//! - `replicas`: [`replicas_identical`].

mod replicas;
mod report;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

pub use replicas::replicas_identical;
pub use report::{
    Ack, Duplicate, Moved, NonMonotonic, OffsetReuse, Phantom, Reordered, Report, Source,
    EXAMPLES_SHOWN,
};

/// Whether a value read at two positions is a violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Duplicates {
    /// Reported but not a violation: without idempotent producers a retried send
    /// may be written twice.
    Allowed,
    /// A violation (idempotent producers, or a workload that never retries).
    Forbidden,
}

/// What producers were told and what reads found; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct History {
    attempted: BTreeSet<Bytes>,
    acks: Vec<Ack>,
    failed: BTreeSet<Bytes>,
    reads: Vec<PartitionRead>,
    /// Per partition, streams of values in the order one producer sent them.
    send_orders: Vec<(i32, Vec<Bytes>)>,
}

/// One read of one partition's log: (offset, value) in the order read.
#[derive(Clone, Debug)]
struct PartitionRead {
    partition: i32,
    records: Vec<(i64, Bytes)>,
}

impl History {
    /// One producer sent `values` to `partition` in this order: the check reports any
    /// two of them that a read found in the other order (values never read are
    /// skipped: indeterminate ones may be missing).
    pub fn record_send_order(&mut self, partition: i32, values: Vec<Bytes>) {
        self.send_orders.push((partition, values));
    }

    /// A producer is about to send `value`.
    pub fn record_attempt(&mut self, value: impl Into<Bytes>) {
        self.attempted.insert(value.into());
    }

    /// The broker acknowledged `value` at `offset` of `partition` (an acknowledged
    /// value counts as attempted).
    pub fn record_ack(&mut self, partition: i32, offset: i64, value: impl Into<Bytes>) {
        self.acks.push(Ack {
            partition,
            offset,
            value: value.into(),
        });
    }

    /// The send of `value` failed or timed out: it may or may not be in the log, and
    /// either is correct (it counts as attempted).
    pub fn record_failure(&mut self, value: impl Into<Bytes>) {
        self.failed.insert(value.into());
    }

    /// One read of `partition`'s log: its records' (offset, value) in the order read.
    /// Call once per pass; several passes (replicas, times) are checked against each
    /// other. A read may start anywhere and may miss a tail another read has.
    pub fn record_read<V: Into<Bytes>>(
        &mut self,
        partition: i32,
        records: impl IntoIterator<Item = (i64, V)>,
    ) {
        self.reads.push(PartitionRead {
            partition,
            records: records.into_iter().map(|(o, v)| (o, v.into())).collect(),
        });
    }

    /// One read of each partition in `per_partition` (partition → (offset, value)).
    pub fn record_reads(&mut self, per_partition: &BTreeMap<i32, Vec<(i64, Bytes)>>) {
        for (&partition, records) in per_partition {
            self.record_read(partition, records.iter().cloned());
        }
    }

    /// Checks the history; `duplicates` says whether a duplicate fails the report.
    ///
    /// An acknowledged value is *lost* if no read of its partition holds it, *moved* if
    /// reads hold it in its partition but never at the acknowledged offset. A read that
    /// misses a value another read of the partition has is not a loss by itself (a
    /// lagging replica); replicas that disagree show as offset reuse, and
    /// [`replicas_identical`] checks convergence.
    pub fn check(&self, duplicates: Duplicates) -> Report {
        let mut report = Report::new(duplicates);
        report.attempts = self.attempted.len();
        report.acks = self.acks.len();
        report.failures = self.failed.len();
        report.reads = self.reads.len();

        let mut offsets = OffsetValues::default();
        for ack in &self.acks {
            offsets.note(ack.partition, ack.offset, Source::Ack, &ack.value);
        }
        // Value → every distinct (partition, offset) a read found it at.
        let mut positions: BTreeMap<&Bytes, BTreeSet<(i32, i64)>> = BTreeMap::new();
        for (read_index, read) in self.reads.iter().enumerate() {
            report.records_read += read.records.len();
            let mut previous_offset: Option<i64> = None;
            for (offset, value) in &read.records {
                if let Some(previous) = previous_offset.filter(|p| p >= offset) {
                    report.non_monotonic.push(NonMonotonic {
                        partition: read.partition,
                        read: read_index,
                        previous_offset: previous,
                        offset: *offset,
                    });
                }
                previous_offset = Some(*offset);
                offsets.note(read.partition, *offset, Source::Read(read_index), value);
                positions
                    .entry(value)
                    .or_default()
                    .insert((read.partition, *offset));
            }
        }
        report.offset_reuse = offsets.into_reuse();

        for ack in &self.acks {
            let found = positions.get(&ack.value);
            if found.is_some_and(|at| at.contains(&(ack.partition, ack.offset))) {
                continue;
            }
            let read_offsets: Vec<i64> = found
                .into_iter()
                .flatten()
                .filter(|(partition, _)| *partition == ack.partition)
                .map(|(_, offset)| *offset)
                .collect();
            if read_offsets.is_empty() {
                report.lost.push(ack.clone());
            } else {
                report.moved.push(Moved {
                    ack: ack.clone(),
                    read_offsets,
                });
            }
        }

        for (partition, values) in &self.send_orders {
            let mut previous: Option<(&Bytes, i64)> = None;
            for value in values {
                // The first position read: a duplicate is reported as such.
                let Some(offset) = positions.get(value).and_then(|at| {
                    at.iter()
                        .filter(|(p, _)| p == partition)
                        .map(|(_, o)| *o)
                        .min()
                }) else {
                    continue;
                };
                if let Some((earlier, earlier_offset)) = previous {
                    if earlier_offset > offset {
                        report.reordered.push(Reordered {
                            partition: *partition,
                            earlier: (earlier.clone(), earlier_offset),
                            later: (value.clone(), offset),
                        });
                    }
                }
                previous = Some((value, offset));
            }
        }

        let acked: BTreeSet<&Bytes> = self.acks.iter().map(|a| &a.value).collect();
        for (value, at) in positions {
            let at: Vec<(i32, i64)> = at.into_iter().collect();
            let attempted = self.attempted.contains(value)
                || self.failed.contains(value)
                || acked.contains(value);
            if !attempted {
                report.phantoms.push(Phantom {
                    value: value.clone(),
                    positions: at.clone(),
                });
            }
            if at.len() > 1 {
                report.duplicates.push(Duplicate {
                    value: value.clone(),
                    positions: at,
                });
            }
        }
        report
    }
}

/// The values seen at each (partition, offset), to find offsets that held two.
#[derive(Default)]
struct OffsetValues {
    /// The first value seen at each position and where it was seen.
    first: BTreeMap<(i32, i64), (Source, Bytes)>,
    /// Positions that held more than one value: each distinct value once, with the
    /// first place it was seen.
    reused: BTreeMap<(i32, i64), Vec<(Source, Bytes)>>,
}

impl OffsetValues {
    fn note(&mut self, partition: i32, offset: i64, source: Source, value: &Bytes) {
        match self.first.entry((partition, offset)) {
            Entry::Vacant(entry) => {
                entry.insert((source, value.clone()));
            }
            Entry::Occupied(entry) => {
                let first = entry.get();
                if first.1 == value {
                    return;
                }
                let values = self
                    .reused
                    .entry((partition, offset))
                    .or_insert_with(|| vec![first.clone()]);
                if !values.iter().any(|(_, v)| v == value) {
                    values.push((source, value.clone()));
                }
            }
        }
    }

    fn into_reuse(self) -> Vec<OffsetReuse> {
        self.reused
            .into_iter()
            .map(|((partition, offset), values)| OffsetReuse {
                partition,
                offset,
                values,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
