//! The consumer: in assign mode the application names the partitions and positions them
//! with [`Consumer::seek`]; in subscribe mode ([`Consumer::subscribe`]) a consumer group
//! assigns them (see [`crate::group`]). Either way records come as a [`Stream`].
//!
//! A background fetcher keeps one fetch per leader in flight and hands responses over
//! through a bounded channel of `prefetch_responses_max` responses, so the next records
//! are usually ready when the application asks. It walks only the batch headers (to
//! know the next offset) and sends the next fetch at once; the stream decodes the
//! batches as it reaches them, so decoding overlaps the network and the broker. Every assignment or seek bumps the partition's
//! *epoch*; chunks fetched under an older epoch are dropped, so a seek is never followed
//! by records from before it.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{FetchRequest, ListOffsetsRequest};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::admin::topic_name;
use crate::cluster::Cluster;
use crate::config::{ConsumerConfig, OffsetReset};
use crate::error::{Error, Result};
use crate::group::{self, commit::GroupCtx, RebalanceListener, Subscription};
use crate::record::{ConsumerRecord, RecordBatchRef, RecordEntry, TopicPartition};

/// A position to start reading from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// The log start offset (earliest record still kept).
    Beginning,
    /// The log end offset: only records produced from now on.
    End,
    /// An exact offset.
    At(i64),
    /// The first record whose timestamp is at or after this (ms since the Unix
    /// epoch); the log end if there is none.
    Timestamp(i64),
}

/// Kafka's ListOffsets sentinel timestamps.
const LATEST_TIMESTAMP: i64 = -1;
const EARLIEST_TIMESTAMP: i64 = -2;

#[derive(Debug, Clone, Copy)]
enum Position {
    Fetch(i64),
    Resolve(Offset),
}

/// What the application has been handed of one assigned partition: the offset after the
/// last record returned (-1 before the first), or [`Cursor::REVOKED`] once the partition
/// was taken away. One atomic, so the stream and a revocation on the group task agree on
/// exactly which records were delivered: a record is returned only if the cursor moved
/// past it before the revocation swapped it out.
#[derive(Debug)]
pub(crate) struct Cursor(AtomicI64);

impl Cursor {
    const REVOKED: i64 = i64::MIN;

    fn new(delivered: i64) -> Arc<Cursor> {
        Arc::new(Cursor(AtomicI64::new(delivered)))
    }

    /// Records delivery up to `next_offset`; false if the partition was revoked.
    fn advance(&self, next_offset: i64) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                (c != Cursor::REVOKED).then_some(next_offset.max(c))
            })
            .is_ok()
    }

    /// Stops delivery; returns the offset after the last record delivered, if any.
    fn revoke(&self) -> Option<i64> {
        let last = self.0.swap(Cursor::REVOKED, Ordering::SeqCst);
        (last >= 0).then_some(last)
    }

    fn delivered(&self) -> Option<i64> {
        let c = self.0.load(Ordering::SeqCst);
        (c >= 0).then_some(c)
    }
}

#[derive(Debug, Clone)]
struct PartitionState {
    position: Position,
    /// Unique over the consumer's life (not per partition), so chunks fetched before a
    /// partition was revoked and assigned again never pass for current ones.
    epoch: u64,
    cursor: Arc<Cursor>,
    /// Where reading starts after the last assign/seek, once resolved. Whoever resolves
    /// first (fetcher or `position()`) sets it; the other adopts it, so "end" means one
    /// offset even if records arrive between the two lookups.
    start: Option<i64>,
}

/// Kafka's `max.poll.interval.ms` timer for a `Stream` consumer: the application is
/// "in poll" while it awaits the next record and no record is ready; otherwise the
/// timer runs from when it took the latest fetched chunk (a batch of records). Taking
/// a chunk or waiting stores one atomic — nothing per record.
pub(crate) struct PollTimer {
    base: std::time::Instant,
    /// Milliseconds after `base` when the latest chunk was taken, or [`Self::WAITING`].
    taken_at_ms: AtomicU64,
}

impl PollTimer {
    const WAITING: u64 = u64::MAX;

    fn new() -> PollTimer {
        PollTimer {
            base: std::time::Instant::now(),
            taken_at_ms: AtomicU64::new(Self::WAITING),
        }
    }

    fn waiting(&self) {
        self.taken_at_ms.store(Self::WAITING, Ordering::Relaxed);
    }

    fn took_chunk(&self) {
        let now_ms = self.base.elapsed().as_millis() as u64;
        self.taken_at_ms.store(now_ms, Ordering::Relaxed);
    }

    /// How long the application has gone without polling, when that exceeds `limit`.
    pub(crate) fn overdue(&self, limit: Duration) -> Option<Duration> {
        let taken_at_ms = self.taken_at_ms.load(Ordering::Relaxed);
        if taken_at_ms == Self::WAITING {
            return None;
        }
        let since = self
            .base
            .elapsed()
            .saturating_sub(Duration::from_millis(taken_at_ms));
        (since > limit).then_some(since)
    }
}

/// State the consumer, its fetcher and its group task share.
pub(crate) struct Shared {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) config: ConsumerConfig,
    partitions: Mutex<HashMap<TopicPartition, PartitionState>>,
    changed: Notify,
    next_epoch: AtomicU64,
    /// When the application last polled (`max.poll.interval.ms`, checked by the group
    /// task).
    pub(crate) poll_timer: PollTimer,
}

impl Shared {
    fn epoch(&self) -> u64 {
        self.next_epoch.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TopicPartition, PartitionState>> {
        crate::group::commit::lock(&self.partitions)
    }

    /// Adds partitions to the assignment (group mode): each starts at its committed
    /// offset (`Offset::At`, which also counts as delivered up to there) or per the reset
    /// policy. Partitions already assigned are left alone.
    pub(crate) fn add_partitions(&self, partitions: Vec<(TopicPartition, Offset)>) {
        {
            let mut map = self.lock();
            for (tp, start) in partitions {
                if map.contains_key(&tp) {
                    continue;
                }
                let (position, begin, delivered) = match start {
                    Offset::At(o) => (Position::Fetch(o), Some(o), o),
                    other => (Position::Resolve(other), None, -1),
                };
                let epoch = self.epoch();
                map.insert(
                    tp,
                    PartitionState {
                        position,
                        epoch,
                        cursor: Cursor::new(delivered),
                        start: begin,
                    },
                );
            }
        }
        self.changed.notify_one();
    }

    /// Takes partitions out of the assignment: no record of them is returned after this.
    /// Returns the offset after the last record delivered of each (to commit), where
    /// any was.
    pub(crate) fn revoke_partitions(
        &self,
        partitions: &[TopicPartition],
    ) -> Vec<(TopicPartition, i64)> {
        let mut positions = Vec::new();
        {
            let mut map = self.lock();
            for tp in partitions {
                if let Some(state) = map.remove(tp) {
                    if let Some(o) = state.cursor.revoke() {
                        positions.push((tp.clone(), o));
                    }
                }
            }
        }
        self.changed.notify_one();
        positions
    }

    /// The offset after the last record delivered, per assigned partition that has one
    /// (what a commit of "the current positions" commits).
    pub(crate) fn delivered_positions(&self) -> Vec<(TopicPartition, i64)> {
        let mut v: Vec<(TopicPartition, i64)> = self
            .lock()
            .iter()
            .filter_map(|(tp, s)| s.cursor.delivered().map(|o| (tp.clone(), o)))
            .collect();
        v.sort();
        v
    }
}

/// Records of one partition from one fetch, tagged with the epoch they were fetched at.
///
/// The fetcher only walks the batch headers (to know where to fetch next) and hands
/// over the raw batches; they are decoded here, on the application's side, one batch
/// at a time as the stream reaches them, so decoding overlaps the next fetch. A decoded
/// batch is one `Bytes` and a reused `Vec` of record positions in it: nothing is
/// allocated or reference-counted per record until a record is handed out.
pub(crate) struct Chunk {
    tp: TopicPartition,
    /// The same topic name shared by every record of the chunk.
    topic: Arc<str>,
    epoch: u64,
    cursor: Arc<Cursor>,
    /// The bytes of the batch being handed out (its records section, or decompressed).
    source: Bytes,
    /// The records of that batch at or above the fetch offset, as positions in `source`.
    entries: Vec<RecordEntry>,
    /// Index in `entries` of the next record to hand out.
    next: usize,
    /// The batch last handed out whole by [`Consumer::next_batch`], borrowed by the
    /// application until its next call; its `Vec` is swapped back in for the next batch.
    lent_source: Bytes,
    lent: Vec<RecordEntry>,
    /// Whole batches not decoded yet (cut by [`crate::wire::walk_batches`]).
    batches: Bytes,
    /// A batch that failed to decode, with the offset to fetch again from: reported
    /// once the records before it are handed out.
    failed: Option<(Error, i64)>,
    /// Offset after the chunk's last batch. Control batches (a Raft leader's entry,
    /// transaction markers) hold offsets but no records for the application, so the
    /// position moves here once the chunk's records are consumed, not to the last
    /// record's offset + 1.
    next_offset: i64,
    /// The offset the fetch asked for (the position while the chunk waits).
    fetch_offset: i64,
}

impl Chunk {
    fn new(
        tp: TopicPartition,
        topic: Arc<str>,
        epoch: u64,
        cursor: Arc<Cursor>,
        batches: Bytes,
        next_offset: i64,
        fetch_offset: i64,
    ) -> Chunk {
        Chunk {
            tp,
            topic,
            epoch,
            cursor,
            source: Bytes::new(),
            entries: Vec::new(),
            next: 0,
            lent_source: Bytes::new(),
            lent: Vec::new(),
            batches,
            failed: None,
            next_offset,
            fetch_offset,
        }
    }

    /// Whether a decoded record is ready to hand out.
    fn has_record(&self) -> bool {
        self.next < self.entries.len()
    }

    /// Once the decoded batch is handed out, decodes batches until one has records for
    /// the application, every batch is decoded, or one fails (kept in `failed`). Per
    /// batch, never per record: memory is one batch's records.
    fn fill(&mut self) {
        while !self.has_record() && !self.batches.is_empty() && self.failed.is_none() {
            self.next = 0;
            let result = crate::wire::decode_first_batch(
                &mut self.batches,
                self.fetch_offset,
                &mut self.source,
                &mut self.entries,
            );
            if let Err(e) = result {
                // Records below the failed batch were handed out (or are ready):
                // reading resumes at the batch, or at the fetch offset inside it.
                let at = crate::wire::first_base_offset(&self.batches)
                    .map_or(self.fetch_offset, |b| b.max(self.fetch_offset));
                self.batches = Bytes::new();
                self.failed = Some((e, at));
            }
        }
    }

    /// The next decoded record, owned.
    fn take_record(&mut self) -> Option<ConsumerRecord> {
        let entry = self.entries.get(self.next)?;
        let record = entry.to_record(&self.source, &self.topic, self.tp.partition);
        self.next += 1;
        Some(record)
    }

    /// Moves the rest of the decoded batch to the lent slot (read by
    /// [`Chunk::lent_batch`]); returns the offset of its last record.
    fn lend_batch(&mut self) -> Option<i64> {
        if !self.has_record() {
            return None;
        }
        self.entries.drain(..self.next);
        std::mem::swap(&mut self.entries, &mut self.lent);
        self.lent_source = std::mem::take(&mut self.source);
        self.entries.clear();
        self.next = 0;
        self.lent.last().map(|e| e.offset)
    }

    fn lent_batch(&self) -> RecordBatchRef<'_> {
        RecordBatchRef {
            topic: &self.topic,
            partition: self.tp.partition,
            source: &self.lent_source,
            entries: &self.lent,
        }
    }

    /// The offset of the next record (or failure) the chunk hands out, if any.
    fn next_position(&mut self) -> Option<i64> {
        self.fill();
        self.entries
            .get(self.next)
            .map(|r| r.offset)
            .or(self.failed.as_ref().map(|(_, at)| *at))
    }
}

/// What [`Consumer::poll_take`] hands out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Take {
    /// One owned record (the `Stream`).
    Record,
    /// The rest of a decoded batch, lent ([`Consumer::next_batch`]).
    Batch,
}

/// An assign-mode consumer. Read records through its [`Stream`] implementation:
///
/// ```no_run
/// # async fn demo() -> Result<(), rill_client::Error> {
/// use futures::StreamExt;
/// use rill_client::{Consumer, ConsumerConfig, Offset, TopicPartition};
/// let mut consumer = Consumer::new(ConsumerConfig::new("127.0.0.1:9092"))?;
/// let tp = TopicPartition::new("events", 0);
/// consumer.assign(&[tp.clone()]);
/// consumer.seek(&tp, Offset::Beginning)?;
/// while let Some(record) = consumer.next().await {
///     let record = record?;
///     println!("{} {:?}", record.offset, record.value);
/// }
/// # Ok(()) }
/// ```
pub struct Consumer {
    shared: Arc<Shared>,
    /// Decoded fetch responses (one message per response, so the prefetch bound does not
    /// shrink with the number of partitions).
    responses: mpsc::Receiver<Result<Vec<Chunk>>>,
    /// Chunks of received responses not yet started.
    queued: VecDeque<Chunk>,
    current: Option<Chunk>,
    /// Per partition, the offset after the last record handed to the application
    /// (updated per chunk, not per record); cleared by `seek`.
    consumed_positions: HashMap<TopicPartition, i64>,
    fetcher: JoinHandle<()>,
    /// Where the group task reports errors the application must see (fenced, a fatal
    /// group error): the same channel as fetch errors.
    errors: mpsc::Sender<Result<Vec<Chunk>>>,
    /// The group (if `group_id` is set): commits, and membership once subscribed.
    group: Option<Arc<GroupCtx>>,
    membership: Option<group::MembershipHandle>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.fetcher.abort();
        if let Some(m) = &self.membership {
            // Without `close`, the member is removed after its session timeout.
            m.abort();
        }
    }
}

impl Consumer {
    /// A consumer with no partitions assigned. Starts its fetcher task on the current
    /// tokio runtime; connects lazily.
    pub fn new(config: ConsumerConfig) -> Result<Consumer> {
        config.validate()?;
        let cluster = Arc::new(Cluster::new(config.client.clone(), false)?);
        let (tx, rx) = mpsc::channel(config.prefetch_responses_max);
        let group = config.group_id.as_ref().map(|g| {
            Arc::new(GroupCtx::new(
                cluster.clone(),
                g.clone(),
                config.group_instance_id.clone(),
            ))
        });
        let shared = Arc::new(Shared {
            cluster,
            config,
            partitions: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            next_epoch: AtomicU64::new(1),
            poll_timer: PollTimer::new(),
        });
        let fetcher = tokio::spawn(run_fetcher(shared.clone(), tx.clone()));
        Ok(Consumer {
            shared,
            responses: rx,
            queued: VecDeque::new(),
            current: None,
            consumed_positions: HashMap::new(),
            fetcher,
            errors: tx,
            group,
            membership: None,
        })
    }

    /// Joins the consumer group `group_id` and consumes `topics`: the group's assignor
    /// decides which partitions this member reads, and a rebalance (a member joins or
    /// leaves, partitions are added) changes them. Each assigned partition starts at the
    /// group's committed offset, or per `auto_offset_reset` if there is none. Needs
    /// `group_id`; call once. Call [`Consumer::close`] to commit and leave the group.
    pub fn subscribe(&mut self, topics: &[&str]) -> Result<()> {
        let topics = topics.iter().map(|t| (*t).to_owned()).collect();
        self.subscribe_with(Subscription::Topics(topics), None)
    }

    /// Like [`Consumer::subscribe`], for every topic whose whole name matches `pattern`
    /// (a regular expression; internal topics never match). New matching topics are
    /// picked up when metadata is refreshed (every `metadata_max_age_ms`).
    pub fn subscribe_pattern(&mut self, pattern: &str) -> Result<()> {
        self.subscribe_with(Subscription::pattern(pattern)?, None)
    }

    /// Subscribes (see [`Consumer::subscribe`]) and calls `listener` whenever the
    /// assignment changes, with exactly the partitions added, revoked or lost.
    pub fn subscribe_with(
        &mut self,
        subscription: Subscription,
        listener: Option<Arc<dyn RebalanceListener>>,
    ) -> Result<()> {
        let Some(group) = self.group.clone() else {
            return Err(Error::Config("subscribe needs group_id".into()));
        };
        if self.membership.is_some() {
            return Err(Error::Config("the consumer is already subscribed".into()));
        }
        if !self.shared.lock().is_empty() {
            return Err(Error::Config(
                "subscribe on a consumer with an assign()ed assignment".into(),
            ));
        }
        self.membership = Some(group::membership::spawn(
            group,
            self.shared.clone(),
            subscription,
            listener,
            self.errors.clone(),
        ));
        Ok(())
    }

    /// Commits the current positions (the offset after the last record returned, per
    /// assigned partition) and waits for the coordinator's answer. Needs `group_id`.
    /// While the group rebalances the coordinator answers REBALANCE_IN_PROGRESS (or
    /// ILLEGAL_GENERATION once this member's generation is gone); a commit sent while this
    /// member's JoinGroup waits on the coordinator is answered after it (one connection
    /// answers in order).
    pub async fn commit_sync(&self) -> Result<()> {
        let offsets = self.shared.delivered_positions();
        self.commit_offsets_sync(&offsets).await
    }

    /// Commits explicit offsets (each the offset of the *next* record to read, as in
    /// Kafka) and waits for the answer. Needs `group_id`.
    pub async fn commit_offsets_sync(&self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let group = self
            .group
            .as_ref()
            .ok_or_else(|| Error::Config("commit needs group_id".into()))?;
        group.commit(offsets).await
    }

    /// Starts a commit of the current positions in the background; the handle resolves
    /// to its result (dropping it does not cancel the commit). Needs `group_id`.
    pub fn commit_async(&self) -> Result<JoinHandle<Result<()>>> {
        let group = self
            .group
            .clone()
            .ok_or_else(|| Error::Config("commit needs group_id".into()))?;
        let offsets = self.shared.delivered_positions();
        Ok(tokio::spawn(async move { group.commit(&offsets).await }))
    }

    /// The group's committed offsets of `partitions` (absent: none committed). Needs
    /// `group_id`.
    pub async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, i64>> {
        let group = self
            .group
            .as_ref()
            .ok_or_else(|| Error::Config("committed needs group_id".into()))?;
        group.committed(partitions).await
    }

    /// Leaves the group cleanly: with auto commit, commits the current positions; calls
    /// the listener's `on_revoked` with the whole assignment; sends LeaveGroup (not for a
    /// static member, which keeps its partitions until its session times out, as in
    /// Kafka) so the others rebalance at once. An assign-mode consumer with a `group_id`
    /// and auto commit commits its positions. As in Kafka, a failed auto commit here is
    /// logged, not returned (the group may be rebalancing): call
    /// [`Consumer::commit_sync`] first to learn whether the positions were committed.
    pub async fn close(mut self) -> Result<()> {
        match self.membership.take() {
            Some(m) => m.close().await,
            None => {
                if self.group.is_some() && self.shared.config.enable_auto_commit {
                    if let Err(e) = self.commit_sync().await {
                        tracing::warn!(error = %e, "auto commit at close failed");
                    }
                }
                Ok(())
            }
        }
    }

    /// Replaces the assignment. Newly assigned partitions start per
    /// `auto_offset_reset` (earliest or latest) unless [`Consumer::seek`] positions them;
    /// partitions kept keep their position.
    pub fn assign(&mut self, partitions: &[TopicPartition]) {
        let start = match self.shared.config.auto_offset_reset {
            OffsetReset::Latest => Offset::End,
            OffsetReset::Earliest | OffsetReset::None => Offset::Beginning,
        };
        {
            let mut map = self.shared.lock();
            map.retain(|tp, _| partitions.contains(tp));
            for tp in partitions {
                if !map.contains_key(tp) {
                    let epoch = self.shared.epoch();
                    map.insert(
                        tp.clone(),
                        PartitionState {
                            position: Position::Resolve(start),
                            epoch,
                            cursor: Cursor::new(-1),
                            start: None,
                        },
                    );
                }
            }
        }
        // Records already fetched for partitions that stay assigned are kept: their
        // fetch position is past them.
        if self
            .current
            .as_ref()
            .is_some_and(|c| !partitions.contains(&c.tp))
        {
            self.current = None;
        }
        self.queued.retain(|c| partitions.contains(&c.tp));
        self.consumed_positions
            .retain(|tp, _| partitions.contains(tp));
        self.shared.changed.notify_one();
    }

    /// The assigned partitions.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        let mut v: Vec<_> = self.shared.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Moves the read position of an assigned partition. Records fetched before the seek
    /// are discarded.
    pub fn seek(&mut self, tp: &TopicPartition, offset: Offset) -> Result<()> {
        {
            let mut map = self.shared.lock();
            let state = map.get_mut(tp).ok_or_else(|| Error::NotAssigned {
                topic: tp.topic.clone(),
                partition: tp.partition,
            })?;
            state.epoch = self.shared.epoch();
            (state.position, state.start) = match offset {
                Offset::At(o) => (Position::Fetch(o), Some(o)),
                other => (Position::Resolve(other), None),
            };
            // A commit of the current position after a seek commits the sought offset
            // (or nothing until a symbolic one resolves and a record is read).
            state.cursor = Cursor::new(match offset {
                Offset::At(o) => o,
                _ => -1,
            });
        }
        if self.current.as_ref().is_some_and(|c| &c.tp == tp) {
            self.current = None;
        }
        self.queued.retain(|c| &c.tp != tp);
        self.consumed_positions.remove(tp);
        self.shared.changed.notify_one();
        Ok(())
    }

    /// After a batch of `tp` failed to decode: fetch again from `at` (a new epoch, so
    /// chunks fetched beyond the batch are dropped), keeping what was delivered. The
    /// application sees the error each time it polls past the batch, as with Kafka's
    /// `CorruptRecordException`. Nothing happens if `tp` was sought since `epoch`.
    fn rewind(&mut self, tp: &TopicPartition, epoch: u64, at: i64) {
        {
            let mut map = self.shared.lock();
            let Some(state) = map.get_mut(tp).filter(|s| s.epoch == epoch) else {
                return;
            };
            state.epoch = self.shared.epoch();
            state.position = Position::Fetch(at);
        }
        self.queued.retain(|c| &c.tp != tp);
        // The next record the application can get is at the failed batch.
        self.consumed_positions.insert(tp.clone(), at);
        self.shared.changed.notify_one();
    }

    /// The offset of the next record the stream will return for `tp` (Kafka's
    /// `position`). A symbolic position (beginning, end, timestamp) is resolved now, so
    /// after `seek(tp, Offset::End)` this pins "the end" to the current log end.
    pub async fn position(&mut self, tp: &TopicPartition) -> Result<i64> {
        if !self.shared.lock().contains_key(tp) {
            return Err(Error::NotAssigned {
                topic: tp.topic.clone(),
                partition: tp.partition,
            });
        }
        if let Some(chunk) = self.current.as_mut().filter(|c| &c.tp == tp) {
            if let Some(o) = chunk.next_position() {
                return Ok(o);
            }
        }
        // Fetched ahead but not handed out yet: the position is where that starts.
        if let Some(chunk) = self.queued.iter_mut().find(|c| &c.tp == tp) {
            return Ok(chunk.next_position().unwrap_or(chunk.fetch_offset));
        }
        if let Some(o) = self.consumed_positions.get(tp) {
            return Ok(*o);
        }
        let state = self
            .shared
            .lock()
            .get(tp)
            .cloned()
            .ok_or_else(|| Error::NotAssigned {
                topic: tp.topic.clone(),
                partition: tp.partition,
            })?;
        if let Some(start) = state.start {
            return Ok(start);
        }
        match state.position {
            Position::Fetch(o) => Ok(o),
            Position::Resolve(spec) => {
                let o = resolve(&self.shared.cluster, tp, spec).await?;
                Ok(settle_start(&self.shared, tp, state.epoch, o).unwrap_or(o))
            }
        }
    }

    /// The offset of the earliest record still in the log (log start offset).
    pub async fn earliest_offset(&self, tp: &TopicPartition) -> Result<i64> {
        list_offset(&self.shared.cluster, tp, EARLIEST_TIMESTAMP).await
    }

    /// The log end offset (high watermark): the offset the next record will get.
    pub async fn latest_offset(&self, tp: &TopicPartition) -> Result<i64> {
        list_offset(&self.shared.cluster, tp, LATEST_TIMESTAMP).await
    }

    /// The offset of the first record with a timestamp at or after `timestamp_ms`, or
    /// `None` if every record is older.
    pub async fn offset_for_time(
        &self,
        tp: &TopicPartition,
        timestamp_ms: i64,
    ) -> Result<Option<i64>> {
        let offset = list_offset(&self.shared.cluster, tp, timestamp_ms.max(0)).await?;
        Ok((offset >= 0).then_some(offset))
    }

    /// Partition count of `topic`.
    pub async fn partitions_for(&self, topic: &str) -> Result<i32> {
        let m = self
            .shared
            .cluster
            .topic(topic, Duration::from_millis(0))
            .await?;
        Ok(m.topics.get(topic).map_or(0, |t| t.partitions.len() as i32))
    }
}

impl Consumer {
    /// The records of the next record batch (of one partition), borrowed until the next
    /// call: the cheapest way to read, with no allocation and no reference count per
    /// record ([`crate::RecordRef::to_record`] makes an owned record where one is
    /// wanted). Records come in the same order, with the same positions, commits and
    /// errors as through the [`Stream`], and the two can be mixed: a batch holds the
    /// records the stream has not returned yet. `None` only once the consumer is shut
    /// down. Cancel-safe: dropping the future loses no record.
    pub async fn next_batch(&mut self) -> Option<Result<RecordBatchRef<'_>>> {
        match std::future::poll_fn(|cx| self.poll_take(cx, Take::Batch)).await? {
            Err(e) => Some(Err(e)),
            // `poll_take` lends a batch of the current chunk before it answers.
            Ok(_) => self.current.as_ref().map(|c| Ok(c.lent_batch())),
        }
    }

    /// The next record ([`Take::Record`]: returned) or batch ([`Take::Batch`]: lent in
    /// the current chunk, `None` returned), moving the delivered cursor past it.
    fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        take: Take,
    ) -> Poll<Option<Result<Option<ConsumerRecord>>>> {
        loop {
            if let Some(chunk) = &mut self.current {
                chunk.fill();
                if chunk.has_record() {
                    let (record, last_offset) = match take {
                        Take::Record => {
                            let record = chunk.take_record();
                            let offset = record.as_ref().map_or(chunk.fetch_offset, |r| r.offset);
                            (record, offset)
                        }
                        Take::Batch => {
                            let offset = chunk.lend_batch().unwrap_or(chunk.fetch_offset);
                            (None, offset)
                        }
                    };
                    // Decodes the next batch if this one is done: none left now means
                    // this was the chunk's last record, unless a failed batch follows.
                    chunk.fill();
                    let last = !chunk.has_record() && chunk.failed.is_none();
                    let next = if last {
                        chunk.next_offset.max(last_offset + 1)
                    } else {
                        last_offset + 1
                    };
                    // Revoked by the group meanwhile: the records belong to the next owner.
                    if !chunk.cursor.advance(next) {
                        self.current = None;
                        continue;
                    }
                    if last {
                        self.consumed_positions.insert(chunk.tp.clone(), next);
                    }
                    return Poll::Ready(Some(Ok(record)));
                }
                if let Some((e, at)) = chunk.failed.take() {
                    let (tp, epoch) = (chunk.tp.clone(), chunk.epoch);
                    self.current = None;
                    self.rewind(&tp, epoch, at);
                    return Poll::Ready(Some(Err(e)));
                }
                // A chunk of control batches only: nothing to hand out, but the
                // position moves past them.
                chunk.cursor.advance(chunk.next_offset);
                self.consumed_positions
                    .entry(chunk.tp.clone())
                    .and_modify(|p| *p = (*p).max(chunk.next_offset))
                    .or_insert(chunk.next_offset);
                self.current = None;
            }
            if let Some(chunk) = self.queued.pop_front() {
                let current_epoch = self.shared.lock().get(&chunk.tp).map(|s| s.epoch);
                if current_epoch == Some(chunk.epoch) {
                    self.shared.poll_timer.took_chunk();
                    self.current = Some(chunk);
                }
                continue;
            }
            match self.responses.poll_recv(cx) {
                Poll::Pending => {
                    self.shared.poll_timer.waiting();
                    return Poll::Pending;
                }
                // The fetcher only stops when the consumer is dropped.
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(chunks))) => self.queued.extend(chunks),
            }
        }
    }
}

impl Stream for Consumer {
    type Item = Result<ConsumerRecord>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            return match this.poll_take(cx, Take::Record) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(Some(record)))) => Poll::Ready(Some(Ok(record))),
                // Not for `Take::Record`; asked again rather than taken as the end.
                Poll::Ready(Some(Ok(None))) => continue,
            };
        }
    }
}

/// The offset a symbolic position stands for right now.
async fn resolve(cluster: &Cluster, tp: &TopicPartition, spec: Offset) -> Result<i64> {
    Ok(match spec {
        Offset::Beginning => list_offset(cluster, tp, EARLIEST_TIMESTAMP).await?,
        Offset::End => list_offset(cluster, tp, LATEST_TIMESTAMP).await?,
        Offset::At(o) => o,
        Offset::Timestamp(ts) => match list_offset(cluster, tp, ts.max(0)).await? {
            o if o >= 0 => o,
            _ => list_offset(cluster, tp, LATEST_TIMESTAMP).await?,
        },
    })
}

/// One ListOffsets lookup against the partition's leader.
async fn list_offset(cluster: &Cluster, tp: &TopicPartition, timestamp: i64) -> Result<i64> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match list_offset_once(cluster, tp, timestamp).await {
            Ok(o) => return Ok(o),
            Err(e) if e.is_retriable() && attempt < 5 => {
                cluster.observe_error(&e);
                tokio::time::sleep(cluster.config.backoff(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn list_offset_once(cluster: &Cluster, tp: &TopicPartition, timestamp: i64) -> Result<i64> {
    let metadata = cluster.topic(&tp.topic, Duration::from_millis(0)).await?;
    let leader = metadata
        .topics
        .get(&tp.topic)
        .and_then(|t| t.partitions.get(tp.partition as usize))
        .ok_or_else(|| Error::UnknownPartition {
            topic: tp.topic.clone(),
            partition: tp.partition,
        })?
        .leader;
    let conn = cluster.broker_connection(leader).await?;
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(&tp.topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(tp.partition)
                .with_timestamp(timestamp)])]);
    let response = conn.request(&request).await?;
    let p = response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == tp.partition)
        .ok_or_else(|| Error::Protocol("ListOffsets response lacks the partition".into()))?;
    if let Some(e) = Error::from_code(p.error_code, None) {
        return Err(e);
    }
    Ok(p.offset)
}

/// The fetch loop: resolve positions, fetch from each leader, decode, hand over.
async fn run_fetcher(shared: Arc<Shared>, tx: mpsc::Sender<Result<Vec<Chunk>>>) {
    let mut attempt: u32 = 0;
    loop {
        let snapshot: Vec<(TopicPartition, PartitionState)> = {
            let map = shared.lock();
            map.iter().map(|(tp, s)| (tp.clone(), s.clone())).collect()
        };
        if snapshot.is_empty() {
            shared.changed.notified().await;
            continue;
        }
        match fetch_round(&shared, &tx, snapshot).await {
            Ok(()) => attempt = 0,
            Err(e) => {
                if tx.is_closed() {
                    return;
                }
                shared.cluster.observe_error(&e);
                attempt += 1;
                if !e.is_retriable() {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                } else {
                    tracing::debug!(error = %e, attempt, "fetch failed; backing off");
                }
                tokio::select! {
                    _ = tokio::time::sleep(shared.cluster.config.backoff(attempt)) => {}
                    _ = shared.changed.notified() => {}
                }
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Records `resolved` as the start of `tp` for `epoch`, unless a start was already
/// settled (then that one wins) or a seek happened since (`None`).
fn settle_start(shared: &Shared, tp: &TopicPartition, epoch: u64, resolved: i64) -> Option<i64> {
    let mut map = shared.lock();
    let s = map.get_mut(tp)?;
    if s.epoch != epoch {
        return None;
    }
    if let Some(start) = s.start {
        return Some(start);
    }
    s.start = Some(resolved);
    s.position = Position::Fetch(resolved);
    Some(resolved)
}

/// Out of range: read again from `spec` (per `auto_offset_reset`), unless a seek
/// happened since `epoch`.
fn reset(shared: &Shared, tp: &TopicPartition, epoch: u64, spec: Offset) {
    if let Some(s) = shared.lock().get_mut(tp) {
        if s.epoch == epoch {
            s.position = Position::Resolve(spec);
            s.start = None;
        }
    }
}

/// Sets `tp`'s fetch position unless a seek happened since `epoch`.
fn advance(shared: &Shared, tp: &TopicPartition, epoch: u64, position: Position) {
    if let Some(s) = shared.lock().get_mut(tp) {
        if s.epoch == epoch {
            s.position = position;
        }
    }
}

async fn fetch_round(
    shared: &Arc<Shared>,
    tx: &mpsc::Sender<Result<Vec<Chunk>>>,
    snapshot: Vec<(TopicPartition, PartitionState)>,
) -> Result<()> {
    let cluster = &shared.cluster;
    // Resolve symbolic positions first.
    let mut fetchable: Vec<(TopicPartition, u64, i64)> = Vec::new();
    let mut cursors: HashMap<TopicPartition, Arc<Cursor>> = HashMap::new();
    for (tp, state) in snapshot {
        cursors.insert(tp.clone(), state.cursor.clone());
        match state.position {
            Position::Fetch(o) => fetchable.push((tp, state.epoch, o)),
            Position::Resolve(spec) => {
                let offset = match spec {
                    Offset::Beginning => list_offset(cluster, &tp, EARLIEST_TIMESTAMP).await?,
                    Offset::End => list_offset(cluster, &tp, LATEST_TIMESTAMP).await?,
                    Offset::At(o) => o,
                    Offset::Timestamp(ts) => match list_offset(cluster, &tp, ts.max(0)).await? {
                        o if o >= 0 => o,
                        _ => list_offset(cluster, &tp, LATEST_TIMESTAMP).await?,
                    },
                };
                // Settled as the start, not only as the fetch position: until the
                // application consumes, `position()` answers the start, while the fetch
                // position runs ahead with read-ahead responses not yet polled.
                let Some(offset) = settle_start(shared, &tp, state.epoch, offset) else {
                    continue; // sought elsewhere since the snapshot
                };
                fetchable.push((tp, state.epoch, offset));
            }
        }
    }
    let mut topics_wanted: Vec<&str> = fetchable
        .iter()
        .map(|(tp, _, _)| tp.topic.as_str())
        .collect();
    topics_wanted.sort_unstable();
    topics_wanted.dedup();
    let mut metadata = cluster.metadata().await?;
    for t in topics_wanted {
        if !metadata.topics.contains_key(t) {
            metadata = cluster.topic(t, Duration::from_millis(0)).await?;
        }
    }
    let mut by_leader: HashMap<i32, Vec<(TopicPartition, u64, i64)>> = HashMap::new();
    for (tp, epoch, offset) in fetchable {
        let leader = metadata
            .topics
            .get(&tp.topic)
            .and_then(|t| t.partitions.get(tp.partition as usize))
            .map(|p| p.leader)
            .ok_or_else(|| Error::UnknownPartition {
                topic: tp.topic.clone(),
                partition: tp.partition,
            })?;
        by_leader
            .entry(leader)
            .or_default()
            .push((tp, epoch, offset));
    }
    let fetches = by_leader
        .into_iter()
        .map(|(leader, parts)| fetch_from(shared, tx, leader, parts, &cursors));
    let results = futures::future::join_all(fetches).await;
    results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
}

async fn fetch_from(
    shared: &Arc<Shared>,
    tx: &mpsc::Sender<Result<Vec<Chunk>>>,
    leader: i32,
    parts: Vec<(TopicPartition, u64, i64)>,
    cursors: &HashMap<TopicPartition, Arc<Cursor>>,
) -> Result<()> {
    let config = &shared.config;
    let conn = shared.cluster.broker_connection(leader).await?;
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (tp, _, offset) in &parts {
        let p = FetchPartition::default()
            .with_partition(tp.partition)
            .with_fetch_offset(*offset)
            .with_partition_max_bytes(config.partition_fetch_bytes_max);
        match topics.iter_mut().find(|t| *t.topic.0 == *tp.topic) {
            Some(t) => t.partitions.push(p),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(topic_name(&tp.topic))
                    .with_partitions(vec![p]),
            ),
        }
    }
    let request = FetchRequest::default()
        .with_max_wait_ms(config.fetch_wait_ms_max)
        .with_min_bytes(config.fetch_bytes_min)
        .with_max_bytes(config.fetch_bytes_max)
        .with_topics(topics);
    let response = conn.request(&request).await?;
    if let Some(e) = Error::from_code(response.error_code, None) {
        return Err(e);
    }
    let mut retriable: Option<Error> = None;
    let mut chunks = Vec::new();
    for topic in response.responses {
        let topic_arc: Arc<str> = Arc::from(topic.topic.0.as_str());
        for pd in topic.partitions {
            let Some((tp, epoch, offset)) = parts
                .iter()
                .find(|(tp, _, _)| *tp.topic == *topic_arc && tp.partition == pd.partition_index)
                .cloned()
            else {
                continue;
            };
            match Error::from_code(pd.error_code, None) {
                None => {}
                Some(Error::Broker {
                    code: kafka_protocol::error::ResponseError::OffsetOutOfRange,
                    ..
                }) => {
                    match config.auto_offset_reset {
                        OffsetReset::Earliest => reset(shared, &tp, epoch, Offset::Beginning),
                        OffsetReset::Latest => reset(shared, &tp, epoch, Offset::End),
                        OffsetReset::None => {
                            let e = Error::OffsetOutOfRange {
                                topic: tp.topic.clone(),
                                partition: tp.partition,
                                offset,
                            };
                            tx.send(Err(e)).await.map_err(|_| Error::Closed)?;
                        }
                    }
                    continue;
                }
                Some(e) if e.is_retriable() => {
                    retriable = Some(e);
                    continue;
                }
                Some(e) => {
                    tx.send(Err(e)).await.map_err(|_| Error::Closed)?;
                    continue;
                }
            }
            let Some(records) = pd.records else { continue };
            if records.is_empty() {
                continue;
            }
            // Headers only: the records are decoded by the stream, while the next
            // fetch is on its way.
            let (batches, next) = match crate::wire::walk_batches(&records) {
                Ok(Some(walked)) => walked,
                Ok(None) => continue,
                Err(e) => {
                    tx.send(Err(e)).await.map_err(|_| Error::Closed)?;
                    continue;
                }
            };
            if next > offset {
                let Some(cursor) = cursors.get(&tp).cloned() else {
                    continue;
                };
                advance(shared, &tp, epoch, Position::Fetch(next));
                chunks.push(Chunk::new(
                    tp,
                    topic_arc.clone(),
                    epoch,
                    cursor,
                    batches,
                    next,
                    offset,
                ));
            }
        }
    }
    if !chunks.is_empty() {
        tx.send(Ok(chunks)).await.map_err(|_| Error::Closed)?;
    }
    match retriable {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
