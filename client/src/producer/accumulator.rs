//! Per-partition batching, without I/O or clocks of its own (time comes in as `now`).
//!
//! Each partition has at most one *open* batch (still taking records), a queue of
//! *closed* batches (encoded, waiting to be sent), and up to
//! `in_flight_batches_per_partition_max` batches *in flight*, sent in the order they were
//! closed (each batch has a sequence number within its partition). A batch that fails
//! retriably goes back into its queue in sequence order, and nothing behind it is sent
//! until it was resent; it is resent only once nothing earlier is in flight. With one in
//! flight that keeps strict order across retries; with more, a batch already in flight
//! behind a failed one can still land first (Kafka's producer without idempotence
//! behaves the same).
//!
//! Idempotence: once [`Accumulator::set_producer`] gave it a producer id and epoch, each
//! batch is stamped when it closes with them and its partition's next sequence, so
//! sequences follow closing order, which is sending order; a retry resends the same
//! bytes (same sequence), which the leader recognises. After an epoch bump
//! ([`Accumulator::reset_producer`], with nothing in flight) every partition's sequences
//! start over at 0 and the batches waiting are stamped again in order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::delivery::Completion;
use crate::config::Compression;
use crate::error::{Error, Result};
use crate::partitioner::{partition_for_key, StickyPartitioner};
use crate::record::ProducerRecord;
use crate::wire::BatchWriter;

/// An encoded batch waiting to be sent (or being sent, or waiting for a retry).
#[derive(Debug)]
pub(crate) struct ClosedBatch {
    /// The RecordBatch bytes, built once and resent as they are on retries.
    pub(crate) records: Bytes,
    /// Records in the batch.
    pub(crate) record_count: u32,
    /// Bytes of `buffer_bytes_max` held by the batch until it completes.
    pub(crate) reserved_bytes: usize,
    /// Where the outcome goes.
    pub(crate) completion: Arc<Completion>,
    /// Sends so far.
    pub(crate) attempts: u32,
    /// When the batch was closed; `delivery_timeout_ms` counts from here.
    pub(crate) closed_at: Instant,
    /// Position among its partition's batches (closing order): the order they are sent
    /// and requeued in.
    pub(crate) seq: u64,
    /// Idempotent batches: the producer epoch stamped in them.
    pub(crate) producer_epoch: Option<i16>,
}

struct OpenBatch {
    writer: BatchWriter,
    opened_at: Instant,
    record_count: u32,
    size_estimate_bytes: usize,
    reserved_bytes: usize,
    completion: Arc<Completion>,
}

#[derive(Default)]
struct PartitionQueue {
    open: Option<OpenBatch>,
    /// Ascending `seq`.
    closed: VecDeque<ClosedBatch>,
    /// Sequence numbers and completions of the batches sent and not yet settled,
    /// ascending `seq`.
    in_flight: VecDeque<(u64, Arc<Completion>)>,
    /// The head of `closed` may not be sent before this (retry backoff).
    retry_at: Option<Instant>,
    /// The `seq` of the next batch to close.
    next_seq: u64,
    /// Idempotence: the sequence number of the next record to close into a batch.
    next_sequence: i32,
}

impl PartitionQueue {
    fn is_idle(&self) -> bool {
        self.open.is_none() && self.closed.is_empty() && self.in_flight.is_empty()
    }

    /// Whether the head of `closed` may be sent now (ignoring backoff): a window slot is
    /// free, and a retried batch waits until nothing earlier is in flight.
    fn head_sendable(&self, in_flight_max: usize) -> bool {
        match self.closed.front() {
            None => false,
            Some(head) => {
                self.in_flight.len() < in_flight_max
                    && (head.attempts == 0 || self.in_flight.is_empty())
            }
        }
    }
}

#[derive(Default)]
struct TopicQueues {
    partitions: Vec<PartitionQueue>,
    sticky: StickyPartitioner,
    /// The topic's partition count and the metadata generation it was read at (so a
    /// send need not look it up in the metadata while the generation holds).
    partition_count: Option<(u64, i32)>,
}

impl TopicQueues {
    /// The partition count, if it was read at metadata `generation`.
    fn partition_count_at(&self, generation: u64) -> Option<i32> {
        self.partition_count
            .and_then(|(g, n)| (g == generation).then_some(n))
    }
}

/// Which records of a batch get a handle on its outcome.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Reports {
    /// Every record (a `DeliveryFuture` each).
    PerRecord,
    /// Only the record that opens a batch (its `BatchDelivery` covers the batch): the
    /// others cost no reference count on the batch's completion.
    PerBatch,
}

/// Where `append` put a record.
pub(crate) struct Appended {
    /// The partition chosen (the delivery report carries it too; tests check it here).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) partition: i32,
    /// The batch's completion: for every record with [`Reports::PerRecord`], for the
    /// batch's first record only with [`Reports::PerBatch`].
    pub(crate) completion: Option<Arc<Completion>>,
    /// The record's index in its batch (offset = base offset + index).
    pub(crate) index: u32,
    /// A batch became ready to send, or a new batch started its linger timer: the
    /// sender must look again (it may be asleep with no deadline).
    pub(crate) wake_sender: bool,
}

/// What [`Accumulator::append_many_if_known`] appended.
#[derive(Default)]
pub(crate) struct AppendedMany {
    /// Records appended (a prefix of those given).
    pub(crate) records: usize,
    /// Their size estimates: the budget they hold.
    pub(crate) reserved_bytes: usize,
    /// The sender must look again (see [`Appended::wake_sender`]).
    pub(crate) wake_sender: bool,
    /// The encoding error that ended the prefix, if one did.
    pub(crate) error: Option<Error>,
}

/// A batch handed to the sender.
pub(crate) struct Drained {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) batch: ClosedBatch,
}

/// FNV-1a: the accumulator looks its topic up per record, and SipHash (the std
/// default, which resists hash flooding) costs more than the rest of the lookup.
/// Topic names come from the application, not from peers.
#[derive(Default)]
struct TopicHasher(u64);

impl std::hash::Hasher for TopicHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(PRIME);
        }
        self.0 = hash;
    }
}

type TopicMap = HashMap<Arc<str>, TopicQueues, std::hash::BuildHasherDefault<TopicHasher>>;

/// All partitions' batches of one producer.
pub(crate) struct Accumulator {
    topics: TopicMap,
    linger: Duration,
    batch_bytes_max: usize,
    compression: Compression,
    /// Batches of one partition in flight at once (at least 1).
    in_flight_max: usize,
    /// While positive, linger is ignored (someone is waiting in `flush`).
    pub(crate) flushes_pending: usize,
    /// Idempotence: the producer id and epoch batches are stamped with when they close.
    producer: Option<(i64, i16)>,
    /// Buffers of completed batches, reused by new ones (see [`Accumulator::recycle`]).
    buffer_pool: Vec<BytesMut>,
}

/// Idle batch buffers kept for reuse: enough to cover the churn of batches completing
/// while others open, so a steady producer allocates (and page-faults) no new batch
/// memory. The pool holds at most this many times `batch_bytes_max` beyond the
/// `buffer_bytes_max` budget.
const BUFFER_POOL_MAX: usize = 8;

impl Accumulator {
    pub(crate) fn new(
        linger: Duration,
        batch_bytes_max: usize,
        compression: Compression,
        in_flight_max: usize,
    ) -> Self {
        Accumulator {
            topics: TopicMap::default(),
            linger,
            batch_bytes_max,
            compression,
            in_flight_max: in_flight_max.max(1),
            flushes_pending: 0,
            producer: None,
            buffer_pool: Vec::new(),
        }
    }

    /// Takes back the bytes of a completed batch for a later batch to write into, if
    /// nothing else holds them and the pool has room; otherwise they are freed.
    pub(crate) fn recycle(&mut self, records: Bytes) {
        if self.buffer_pool.len() >= BUFFER_POOL_MAX {
            return;
        }
        if let Ok(buf) = records.try_into_mut() {
            // A buffer that grew for an oversized record is not kept.
            if buf.capacity() <= 2 * self.batch_bytes_max {
                self.buffer_pool.push(buf);
            }
        }
    }

    /// Remembers the partition count of `topic` read from metadata of `generation` (or
    /// a later one: the generation is read before the count, so a change in between
    /// only makes the next send look again).
    pub(crate) fn remember_partition_count(&mut self, topic: &str, generation: u64, count: i32) {
        let queues = match self.topics.get_mut(topic) {
            Some(q) => q,
            None => self.topics.entry(Arc::from(topic)).or_default(),
        };
        queues.partition_count = Some((generation, count));
    }

    /// Buffers waiting in the pool (tests).
    #[cfg(test)]
    pub(crate) fn pooled_buffers(&self) -> usize {
        self.buffer_pool.len()
    }

    /// The producer id and epoch of an idempotent producer, if it has them.
    pub(crate) fn producer(&self) -> Option<(i64, i16)> {
        self.producer
    }

    /// Makes every batch closed from now on idempotent under `producer_id` and `epoch`.
    pub(crate) fn set_producer(&mut self, producer_id: i64, epoch: i16) {
        self.producer = Some((producer_id, epoch));
    }

    /// An epoch bump (or a new producer id): every partition's sequences start over at 0
    /// and the batches waiting to be sent are stamped again, in order. Called only with
    /// nothing in flight (a batch in flight keeps the old stamp).
    pub(crate) fn reset_producer(&mut self, producer_id: i64, epoch: i16) -> Result<()> {
        debug_assert_eq!(self.in_flight_total(), 0);
        self.producer = Some((producer_id, epoch));
        for queues in self.topics.values_mut() {
            for queue in &mut queues.partitions {
                queue.next_sequence = 0;
                for batch in queue.closed.iter_mut() {
                    batch.records = crate::wire::restamp_producer(
                        &batch.records,
                        producer_id,
                        epoch,
                        queue.next_sequence,
                    )?;
                    batch.producer_epoch = Some(epoch);
                    queue.next_sequence = next_sequence(queue.next_sequence, batch.record_count);
                }
            }
        }
        Ok(())
    }

    /// Batches in flight in every partition.
    pub(crate) fn in_flight_total(&self) -> usize {
        self.topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .map(|q| q.in_flight.len())
            .sum()
    }

    /// Whether a batch of the partition closed before batch `seq` is still unsettled (in
    /// flight, or waiting for a retry): then a sequence error of `seq` is explained by it
    /// (the leader saw a gap) and `seq` is simply sent again after it.
    pub(crate) fn has_earlier_unsettled(&self, topic: &str, partition: i32, seq: u64) -> bool {
        self.topics
            .get(topic)
            .and_then(|t| t.partitions.get(partition as usize))
            .is_some_and(|q| {
                q.in_flight.iter().any(|(s, _)| *s < seq) || q.closed.iter().any(|b| b.seq < seq)
            })
    }

    /// Adds a record to its partition's open batch. `partition_count` comes from
    /// metadata; an explicit `record.partition` was checked against it by the caller.
    /// `reserved_bytes` of buffer memory were acquired for it.
    #[cfg(test)]
    pub(crate) fn append(
        &mut self,
        record: &ProducerRecord,
        timestamp_ms: i64,
        partition_count: i32,
        reserved_bytes: usize,
        now: Instant,
    ) -> Result<Appended> {
        self.append_with_clock(
            record,
            timestamp_ms,
            partition_count,
            reserved_bytes,
            || now,
            Reports::PerRecord,
        )
    }

    /// [`Accumulator::append`] reading the clock only when a batch opens or closes (the
    /// linger timer and the delivery timeout need it; most records do neither).
    pub(crate) fn append_with_clock(
        &mut self,
        record: &ProducerRecord,
        timestamp_ms: i64,
        partition_count: i32,
        reserved_bytes: usize,
        now: impl Fn() -> Instant,
        reports: Reports,
    ) -> Result<Appended> {
        let batching = self.batching();
        let topic_queues = match self.topics.get_mut(record.topic.as_str()) {
            Some(q) => q,
            None => self
                .topics
                .entry(Arc::from(record.topic.as_str()))
                .or_default(),
        };
        append_to(
            topic_queues,
            &mut self.buffer_pool,
            batching,
            record,
            timestamp_ms,
            partition_count,
            reserved_bytes,
            now,
            reports,
        )
    }

    /// The settings a record's append needs (see [`Batching`]).
    fn batching(&self) -> Batching {
        Batching {
            batch_bytes_max: self.batch_bytes_max,
            compression: self.compression,
            producer: self.producer,
        }
    }

    /// [`Accumulator::append_with_clock`] with the topic's partition count remembered
    /// at metadata `generation` (see [`Accumulator::remember_partition_count`]): the
    /// common send, which looks the topic up once. `None` if the count is not known at
    /// that generation (nothing was appended); an explicit partition outside the count
    /// is an error.
    pub(crate) fn append_if_known(
        &mut self,
        record: &ProducerRecord,
        generation: u64,
        timestamp_ms: i64,
        reserved_bytes: usize,
        now: impl Fn() -> Instant,
        reports: Reports,
    ) -> Option<Result<Appended>> {
        let batching = self.batching();
        let topic_queues = self.topics.get_mut(record.topic.as_str())?;
        let partition_count = topic_queues.partition_count_at(generation)?;
        if let Some(p) = record.partition {
            if p < 0 || p >= partition_count {
                return Some(Err(Error::UnknownPartition {
                    topic: record.topic.clone(),
                    partition: p,
                }));
            }
        }
        Some(append_to(
            topic_queues,
            &mut self.buffer_pool,
            batching,
            record,
            timestamp_ms,
            partition_count,
            reserved_bytes,
            now,
            reports,
        ))
    }

    /// Appends a prefix of `records` under one call (one lock for the caller): each as
    /// [`Accumulator::append_if_known`] with [`Reports::PerBatch`], `timestamp_ms` for
    /// the records without one of their own, and each record's size estimate as its
    /// reserved budget. Stops before the first record that needs the common path's
    /// slow side: its topic's partition count not known at `generation`, an explicit
    /// partition outside it. `opened` gets the completion of every batch a record opened.
    /// Returns the records appended and their reserved bytes, and whether the sender
    /// must look again; an encoding error ends the prefix (the records before it stay
    /// appended, and are counted in the error's place by the caller's budget).
    pub(crate) fn append_many_if_known(
        &mut self,
        records: &[ProducerRecord],
        generation: u64,
        timestamp_ms: i64,
        now: impl Fn() -> Instant,
        opened: &mut Vec<Arc<Completion>>,
    ) -> AppendedMany {
        let batching = self.batching();
        let Accumulator {
            topics,
            buffer_pool,
            ..
        } = self;
        let mut done = AppendedMany::default();
        // The topic of the previous record: a run of records to one topic looks it up once.
        let mut current: Option<(&str, &mut TopicQueues, i32)> = None;
        for record in records {
            let topic = record.topic.as_str();
            // The same name as the previous record's (a caller reusing one `String`
            // compares no bytes).
            let same_topic = current.as_ref().is_some_and(|(name, _, _)| {
                (name.as_ptr() == topic.as_ptr() && name.len() == topic.len()) || *name == topic
            });
            if !same_topic {
                let Some(queues) = topics.get_mut(topic) else {
                    break;
                };
                let Some(partition_count) = queues.partition_count_at(generation) else {
                    break;
                };
                current = Some((topic, queues, partition_count));
            }
            let Some((_, queues, partition_count)) = current.as_mut() else {
                break;
            };
            let partition_count = *partition_count;
            if record
                .partition
                .is_some_and(|p| p < 0 || p >= partition_count)
            {
                break;
            }
            let size = record.size_estimate_bytes();
            let appended = append_to(
                queues,
                buffer_pool,
                batching,
                record,
                record.timestamp_ms.unwrap_or(timestamp_ms),
                partition_count,
                size,
                &now,
                Reports::PerBatch,
            );
            match appended {
                Ok(a) => {
                    done.records += 1;
                    done.reserved_bytes += size;
                    done.wake_sender |= a.wake_sender;
                    if let Some(c) = a.completion {
                        opened.push(c);
                    }
                }
                Err(e) => {
                    done.error = Some(e);
                    break;
                }
            }
        }
        done
    }

    /// Closes batches whose linger expired (all open batches while a flush is pending)
    /// and takes, in order, the batches of every partition that fit its in-flight window
    /// (a retried batch only once nothing earlier is in flight, and not while backing
    /// off). Returns them and the next instant something becomes due.
    pub(crate) fn drain(&mut self, now: Instant) -> Result<(Vec<Drained>, Option<Instant>)> {
        let mut out = Vec::new();
        let mut next: Option<Instant> = None;
        let flushing = self.flushes_pending > 0;
        for (topic, queues) in self.topics.iter_mut() {
            let partition_count = queues.partitions.len() as i32;
            for (index, queue) in queues.partitions.iter_mut().enumerate() {
                if let Some(open) = &queue.open {
                    let due = open.opened_at + self.linger;
                    // A batch whose linger expired stays open (and keeps filling) while
                    // it could not be sent anyway: its partition's window is full or
                    // closed batches wait ahead of it. Closing it would queue a batch of
                    // a few records per send (at linger 0, 65k requests of ~15 records
                    // for 1 GB). The completion that frees a slot wakes the sender,
                    // which closes it then; a full batch closes in `append` as before.
                    let room =
                        queue.closed.is_empty() && queue.in_flight.len() < self.in_flight_max;
                    if flushing || (due <= now && room) {
                        close_open(queue, now, self.producer)?;
                        queues.sticky.on_batch_closed(index as i32, partition_count);
                    } else if due > now {
                        next = Some(next.map_or(due, |n| n.min(due)));
                    }
                }
                while queue.head_sendable(self.in_flight_max) {
                    if let Some(retry_at) = queue.retry_at {
                        if retry_at > now {
                            next = Some(next.map_or(retry_at, |n| n.min(retry_at)));
                            break;
                        }
                        queue.retry_at = None;
                    }
                    let Some(batch) = queue.closed.pop_front() else {
                        break; // head_sendable saw a head
                    };
                    queue
                        .in_flight
                        .push_back((batch.seq, batch.completion.clone()));
                    out.push(Drained {
                        topic: topic.clone(),
                        partition: index as i32,
                        batch,
                    });
                }
            }
        }
        Ok((out, next))
    }

    /// The in-flight batch `seq` of a partition finished (delivered or given up).
    pub(crate) fn complete(&mut self, topic: &str, partition: i32, seq: u64) {
        if let Some(queue) = self.queue_mut(topic, partition) {
            queue.in_flight.retain(|(s, _)| *s != seq);
        }
    }

    /// An in-flight batch of a partition failed retriably: back into its queue, in
    /// sequence order (ahead of every batch closed after it), not to be sent before
    /// `retry_at`.
    pub(crate) fn requeue(
        &mut self,
        topic: &str,
        partition: i32,
        batch: ClosedBatch,
        retry_at: Instant,
    ) {
        let queue = self
            .queue_mut(topic, partition)
            .expect("a requeued batch's partition exists");
        queue.in_flight.retain(|(s, _)| *s != batch.seq);
        let at = queue.closed.partition_point(|b| b.seq < batch.seq);
        queue.closed.insert(at, batch);
        queue.retry_at = Some(retry_at);
    }

    /// Completions of every batch not yet finished (for `flush`).
    pub(crate) fn pending_completions(&self) -> Vec<Arc<Completion>> {
        let mut out = Vec::new();
        for queues in self.topics.values() {
            for q in &queues.partitions {
                if let Some(open) = &q.open {
                    out.push(open.completion.clone());
                }
                out.extend(q.closed.iter().map(|b| b.completion.clone()));
                out.extend(q.in_flight.iter().map(|(_, c)| c.clone()));
            }
        }
        out
    }

    /// Whether no batch is open, queued or in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.topics
            .values()
            .all(|t| t.partitions.iter().all(PartitionQueue::is_idle))
    }

    fn queue_mut(&mut self, topic: &str, partition: i32) -> Option<&mut PartitionQueue> {
        self.topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(partition as usize))
    }
}

/// The accumulator's settings a record's append needs, copied out so the topic's queues
/// and the buffer pool can be borrowed at once.
#[derive(Clone, Copy)]
struct Batching {
    batch_bytes_max: usize,
    compression: Compression,
    producer: Option<(i64, i16)>,
}

/// Appends `record` to its partition's open batch in `topic_queues` (see
/// [`Accumulator::append_with_clock`]); a new batch takes its buffer from `pool`.
#[allow(clippy::too_many_arguments)]
fn append_to(
    topic_queues: &mut TopicQueues,
    pool: &mut Vec<BytesMut>,
    batching: Batching,
    record: &ProducerRecord,
    timestamp_ms: i64,
    partition_count: i32,
    reserved_bytes: usize,
    now: impl Fn() -> Instant,
    reports: Reports,
) -> Result<Appended> {
    if topic_queues.partitions.len() < partition_count as usize {
        topic_queues
            .partitions
            .resize_with(partition_count as usize, PartitionQueue::default);
    }
    let partition = match (record.partition, &record.key) {
        (Some(p), _) => p,
        (None, Some(key)) => partition_for_key(key, partition_count),
        (None, None) => topic_queues.sticky.partition(partition_count),
    };
    let queue = &mut topic_queues.partitions[partition as usize];
    let size = record.size_estimate_bytes();
    let mut wake_sender = false;

    // Close the open batch if this record would push it past the limit.
    if let Some(open) = &queue.open {
        if open.record_count > 0 && open.size_estimate_bytes + size > batching.batch_bytes_max {
            close_open(queue, now(), batching.producer)?;
            topic_queues
                .sticky
                .on_batch_closed(partition, partition_count);
            wake_sender = true;
        }
    }
    wake_sender |= queue.open.is_none();
    let (compression, batch_bytes_max) = (batching.compression, batching.batch_bytes_max);
    let open = queue.open.get_or_insert_with(|| OpenBatch {
        writer: BatchWriter::new(
            compression,
            // A fresh buffer gets the whole batch's capacity at once, so it never
            // grows (each growth copies it and touches new pages). That reserves
            // address space only: the kernel gives pages as records fill them.
            pool.pop()
                .unwrap_or_else(|| BytesMut::with_capacity(batch_bytes_max)),
        ),
        opened_at: now(),
        record_count: 0,
        size_estimate_bytes: crate::wire::BATCH_OVERHEAD_BYTES,
        reserved_bytes: 0,
        completion: Arc::new(Completion::default()),
    });
    open.writer.push(record, timestamp_ms)?;
    let index = open.record_count;
    open.record_count += 1;
    open.size_estimate_bytes += size;
    open.reserved_bytes += reserved_bytes;
    let completion = (index == 0 || reports == Reports::PerRecord).then(|| open.completion.clone());
    if open.size_estimate_bytes >= batching.batch_bytes_max {
        close_open(queue, now(), batching.producer)?;
        topic_queues
            .sticky
            .on_batch_closed(partition, partition_count);
        wake_sender = true;
    }
    Ok(Appended {
        partition,
        completion,
        index,
        wake_sender,
    })
}

/// Kafka's sequence arithmetic: `i32::MAX` is followed by 0.
fn next_sequence(sequence: i32, records: u32) -> i32 {
    let records = records.min(i32::MAX as u32) as i32;
    if sequence > i32::MAX - records {
        records - (i32::MAX - sequence) - 1
    } else {
        sequence + records
    }
}

fn close_open(
    queue: &mut PartitionQueue,
    now: Instant,
    producer: Option<(i64, i16)>,
) -> Result<()> {
    if let Some(open) = queue.open.take() {
        let stamp = producer.map(|(id, epoch)| (id, epoch, queue.next_sequence));
        let records = open.writer.finish(stamp)?;
        if stamp.is_some() {
            queue.next_sequence = next_sequence(queue.next_sequence, open.record_count);
        }
        queue.closed.push_back(ClosedBatch {
            records,
            record_count: open.record_count,
            reserved_bytes: open.reserved_bytes,
            completion: open.completion,
            attempts: 0,
            closed_at: now,
            seq: queue.next_seq,
            producer_epoch: producer.map(|(_, epoch)| epoch),
        });
        queue.next_seq += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: Option<&'static str>, value_bytes: usize) -> ProducerRecord {
        let mut r = ProducerRecord::new("t", vec![b'v'; value_bytes]);
        r.key = key.map(|k| Bytes::from_static(k.as_bytes()));
        r
    }

    fn acc(linger_ms: u64, batch_bytes_max: usize) -> Accumulator {
        acc_pipelined(linger_ms, batch_bytes_max, 1)
    }

    fn acc_pipelined(linger_ms: u64, batch_bytes_max: usize, in_flight_max: usize) -> Accumulator {
        Accumulator::new(
            Duration::from_millis(linger_ms),
            batch_bytes_max,
            Compression::None,
            in_flight_max,
        )
    }

    fn header(records: &Bytes) -> (i64, i16, i32) {
        let view = rill_protocol::batch::BatchView::new(records).unwrap();
        view.verify_crc().unwrap();
        (
            view.producer_id(),
            view.producer_epoch(),
            view.base_sequence(),
        )
    }

    #[test]
    fn idempotent_batches_number_records_per_partition_and_restart_after_a_bump() {
        let mut a = acc_pipelined(0, 256, 5);
        a.set_producer(42, 3);
        let t0 = Instant::now();
        for _ in 0..6 {
            a.append(&record(Some("k"), 100), 0, 1, 150, t0).unwrap();
        }
        let (ready, _) = a.drain(t0).unwrap();
        assert!(ready.len() >= 3, "pipelined: {}", ready.len());
        let mut expected_sequence = 0;
        for d in &ready {
            assert_eq!(header(&d.batch.records), (42, 3, expected_sequence));
            expected_sequence += d.batch.record_count as i32;
        }
        // The first batch fails and comes back; the rest complete. A bump restamps it.
        let mut ready = ready.into_iter();
        let first = ready.next().unwrap();
        for d in ready {
            a.complete("t", 0, d.batch.seq);
        }
        assert!(a.has_earlier_unsettled("t", 0, first.batch.seq + 1));
        a.requeue("t", 0, first.batch, t0);
        a.reset_producer(42, 4).unwrap();
        let (ready, _) = a.drain(t0).unwrap();
        assert_eq!(
            header(&ready[0].batch.records),
            (42, 4, 0),
            "sequences start over"
        );
        assert_eq!(ready[0].batch.producer_epoch, Some(4));
    }

    /// A completed batch's buffer is written into by the next batch instead of a fresh
    /// allocation, unless something else still holds its bytes; the pool is bounded.
    #[test]
    fn completed_batch_buffers_are_reused_by_later_batches() {
        let mut a = acc(0, 4096);
        let t0 = Instant::now();
        a.append(&record(None, 100), 0, 1, 150, t0).unwrap();
        let (mut ready, _) = a.drain(t0).unwrap();
        let d = ready.pop().unwrap();
        a.complete("t", 0, d.batch.seq);
        let held = d.batch.records.clone();
        a.recycle(d.batch.records);
        assert_eq!(
            a.pooled_buffers(),
            0,
            "bytes still referenced are not reused"
        );
        drop(held);

        a.append(&record(None, 100), 0, 1, 150, t0).unwrap();
        let (mut ready, _) = a.drain(t0).unwrap();
        let d = ready.pop().unwrap();
        a.complete("t", 0, d.batch.seq);
        // While pooled the buffer stays allocated, so a fresh allocation could not
        // have its address.
        let second_ptr = d.batch.records.as_ptr();
        a.recycle(d.batch.records);
        assert_eq!(a.pooled_buffers(), 1);

        a.append(&record(None, 100), 0, 1, 150, t0).unwrap();
        assert_eq!(
            a.pooled_buffers(),
            0,
            "the open batch took the pooled buffer"
        );
        let (mut ready, _) = a.drain(t0).unwrap();
        let d = ready.pop().unwrap();
        assert_eq!(
            d.batch.records.as_ptr(),
            second_ptr,
            "written into the recycled buffer"
        );
        header(&d.batch.records);

        for _ in 0..2 * BUFFER_POOL_MAX {
            a.recycle(Bytes::from(vec![0u8; 100]));
        }
        assert_eq!(a.pooled_buffers(), BUFFER_POOL_MAX);
    }

    #[test]
    fn keyed_records_go_to_the_kafka_partition_and_index_within_the_batch() {
        let mut a = acc(10, 1 << 20);
        let now = Instant::now();
        let first = a
            .append(&record(Some("foobar"), 10), 0, 10, 50, now)
            .unwrap();
        assert_eq!(first.partition, partition_for_key(b"foobar", 10));
        let second = a
            .append(&record(Some("foobar"), 10), 0, 10, 50, now)
            .unwrap();
        assert_eq!((first.index, second.index), (0, 1));
        assert!(Arc::ptr_eq(
            first.completion.as_ref().unwrap(),
            second.completion.as_ref().unwrap()
        ));
    }

    /// Per-batch reports: only the record that opens a batch holds its completion,
    /// and every batch has one such record.
    #[test]
    fn per_batch_reports_go_to_the_first_record_of_each_batch_only() {
        let mut a = acc(60_000, 1024);
        let t0 = Instant::now();
        let mut opened = Vec::new();
        for i in 0..20 {
            let appended = a
                .append_with_clock(&record(Some("k"), 100), 0, 1, 150, || t0, Reports::PerBatch)
                .unwrap();
            assert_eq!(
                appended.completion.is_some(),
                appended.index == 0,
                "record {i} (index {})",
                appended.index
            );
            if appended.index == 0 {
                opened.push(appended.completion.unwrap());
            }
        }
        a.in_flight_max = usize::MAX;
        a.flushes_pending = 1;
        let (ready, _) = a.drain(t0).unwrap();
        assert!(ready.len() > 1, "several batches: {}", ready.len());
        assert_eq!(ready.len(), opened.len(), "one report per batch");
        for (d, c) in ready.iter().zip(&opened) {
            assert!(Arc::ptr_eq(&d.batch.completion, c));
        }
    }

    /// The many-record append queues a prefix exactly as single appends would (one
    /// completion per opened batch, every record's size reserved) and stops before a
    /// record of a topic whose partition count is not known at this generation and
    /// before an explicit partition outside the count.
    #[test]
    fn append_many_queues_a_prefix_and_stops_where_the_slow_path_must_decide() {
        let mut a = acc(60_000, 1024);
        a.remember_partition_count("t", 7, 2);
        let t0 = Instant::now();
        let mut records: Vec<ProducerRecord> = (0..20).map(|_| record(None, 100)).collect();
        records[15].topic = "unknown".into();
        let mut opened = Vec::new();
        let done = a.append_many_if_known(&records, 7, 0, || t0, &mut opened);
        assert!(done.error.is_none());
        assert_eq!(done.records, 15, "stops at the unknown topic");
        let size = records[0].size_estimate_bytes();
        assert_eq!(done.reserved_bytes, 15 * size);
        assert!(done.wake_sender);
        a.in_flight_max = usize::MAX;
        a.flushes_pending = 1;
        let (ready, _) = a.drain(t0).unwrap();
        assert!(ready.len() > 1, "several batches: {}", ready.len());
        assert_eq!(ready.len(), opened.len(), "one completion per batch");
        for d in &ready {
            // Drained by partition, opened in time order: the same set.
            assert!(opened.iter().any(|c| Arc::ptr_eq(&d.batch.completion, c)));
        }
        let queued: u32 = ready.iter().map(|d| d.batch.record_count).sum();
        assert_eq!(queued, 15);
        let reserved: usize = ready.iter().map(|d| d.batch.reserved_bytes).sum();
        assert_eq!(reserved, done.reserved_bytes);

        let stale = a.append_many_if_known(&records[..1], 8, 0, || t0, &mut opened);
        assert_eq!(
            stale.records, 0,
            "a newer metadata generation: the count is re-read"
        );
        let mut explicit = records[..3].to_vec();
        explicit[1].partition = Some(1);
        explicit[2].partition = Some(2);
        let done = a.append_many_if_known(&explicit, 7, 0, || t0, &mut opened);
        assert_eq!(done.records, 2, "partition 2 of 2 is left to the slow path");
    }

    #[test]
    fn batch_waits_for_linger_then_drains_once() {
        let mut a = acc(10, 1 << 20);
        let t0 = Instant::now();
        let first = a.append(&record(Some("k"), 10), 0, 1, 50, t0).unwrap();
        assert!(
            first.wake_sender,
            "a new batch must start the sender's linger timer"
        );
        let second = a.append(&record(Some("k"), 10), 0, 1, 50, t0).unwrap();
        assert!(!second.wake_sender, "no wake-up per record");
        let (ready, next) = a.drain(t0).unwrap();
        assert!(ready.is_empty());
        assert_eq!(next, Some(t0 + Duration::from_millis(10)));
        let (ready, _) = a.drain(t0 + Duration::from_millis(10)).unwrap();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].batch.record_count, 2);
        assert!(!a.is_idle(), "in flight until completed");
        a.complete("t", 0, ready[0].batch.seq);
        assert!(a.is_idle());
    }

    #[test]
    fn full_batch_closes_without_waiting_for_linger() {
        let mut a = acc(60_000, 1024);
        let t0 = Instant::now();
        let mut closed = false;
        for _ in 0..20 {
            closed |= a
                .append(&record(Some("k"), 100), 0, 1, 150, t0)
                .unwrap()
                .wake_sender;
        }
        assert!(closed);
        let (ready, _) = a.drain(t0).unwrap();
        assert_eq!(ready.len(), 1, "one in flight per partition");
        assert!(ready[0].batch.records.len() <= 1024);
    }

    /// At linger 0 with the partition's window full, records keep filling one open
    /// batch instead of each drain closing a batch of a few records; the completion
    /// that frees the slot lets the whole batch go.
    #[test]
    fn an_expired_batch_keeps_filling_while_the_window_is_full() {
        let mut a = acc(0, 1 << 20);
        let t0 = Instant::now();
        a.append(&record(Some("k"), 100), 0, 1, 150, t0).unwrap();
        let (mut sent, _) = a.drain(t0).unwrap();
        assert_eq!(sent.len(), 1);
        let first = sent.pop().unwrap();
        for _ in 0..5 {
            a.append(&record(Some("k"), 100), 0, 1, 150, t0).unwrap();
            let (ready, next) = a.drain(t0).unwrap();
            assert!(ready.is_empty(), "the window is full");
            assert_eq!(next, None, "nothing to wait for but the completion");
        }
        a.complete("t", 0, first.batch.seq);
        let (ready, _) = a.drain(t0).unwrap();
        assert_eq!(ready.len(), 1);
        assert_eq!(
            ready[0].batch.record_count, 5,
            "one batch of the five records"
        );
    }

    #[test]
    fn only_one_batch_per_partition_in_flight_and_retries_go_first() {
        let mut a = acc(0, 256);
        let t0 = Instant::now();
        for _ in 0..10 {
            a.append(&record(Some("k"), 100), 0, 1, 150, t0).unwrap();
        }
        let (mut ready, _) = a.drain(t0).unwrap();
        assert_eq!(ready.len(), 1);
        let first = ready.pop().unwrap();
        let first_records = first.batch.records.clone();
        assert!(a.drain(t0).unwrap().0.is_empty(), "head still in flight");
        let retry_at = t0 + Duration::from_millis(100);
        a.requeue("t", 0, first.batch, retry_at);
        let (ready, next) = a.drain(t0).unwrap();
        assert!(ready.is_empty(), "backing off");
        assert_eq!(next, Some(retry_at));
        let (ready, _) = a.drain(retry_at).unwrap();
        assert_eq!(
            ready[0].batch.records, first_records,
            "the same batch again, first"
        );
    }

    #[test]
    fn flush_ignores_linger() {
        let mut a = acc(60_000, 1 << 20);
        let t0 = Instant::now();
        a.append(&record(None, 10), 0, 4, 50, t0).unwrap();
        assert!(a.drain(t0).unwrap().0.is_empty());
        a.flushes_pending = 1;
        assert_eq!(a.drain(t0).unwrap().0.len(), 1);
    }

    #[test]
    fn null_key_records_stick_to_one_partition_per_batch() {
        let mut a = acc(60_000, 1 << 20);
        let t0 = Instant::now();
        let p = a.append(&record(None, 10), 0, 8, 50, t0).unwrap().partition;
        for _ in 0..50 {
            assert_eq!(
                a.append(&record(None, 10), 0, 8, 50, t0).unwrap().partition,
                p
            );
        }
    }

    #[test]
    fn batches_pipeline_up_to_the_window_and_a_retry_waits_for_earlier_ones() {
        let mut a = acc_pipelined(0, 256, 3);
        let t0 = Instant::now();
        for _ in 0..10 {
            a.append(&record(Some("k"), 100), 0, 1, 150, t0).unwrap();
        }
        let (ready, _) = a.drain(t0).unwrap();
        let seqs: Vec<u64> = ready.iter().map(|d| d.batch.seq).collect();
        assert_eq!(seqs, [0, 1, 2], "a full window, in closing order");
        assert!(a.drain(t0).unwrap().0.is_empty(), "window full");
        let mut ready = ready.into_iter();
        let (b0, mut b1, mut b2) = (
            ready.next().unwrap(),
            ready.next().unwrap(),
            ready.next().unwrap(),
        );
        // The sender counts the failed attempt before requeueing.
        b1.batch.attempts += 1;
        b2.batch.attempts += 1;
        // Batch 1 fails while 0 and 2 are still in flight: it goes back ahead of 3, and
        // nothing is sent — not 1 (0 is earlier and in flight), not 3 (behind 1).
        a.requeue("t", 0, b1.batch, t0);
        assert!(a.drain(t0).unwrap().0.is_empty());
        // Batch 2 fails too: queued after 1.
        a.requeue("t", 0, b2.batch, t0);
        assert!(a.drain(t0).unwrap().0.is_empty(), "0 still in flight");
        a.complete("t", 0, b0.batch.seq);
        let (ready, _) = a.drain(t0).unwrap();
        let seqs: Vec<u64> = ready.iter().map(|d| d.batch.seq).collect();
        assert_eq!(seqs, [1], "the earliest retry goes out alone first");
        a.complete("t", 0, 1);
        let (ready, _) = a.drain(t0).unwrap();
        let seqs: Vec<u64> = ready.iter().map(|d| d.batch.seq).collect();
        assert_eq!(
            seqs,
            [2, 3, 4],
            "then the next retry, and fresh batches pipeline behind it"
        );
    }
}
