//! The producer: `send` queues a record into its partition's batch and returns a
//! [`DeliveryFuture`]; a background sender task closes batches by `linger_ms` /
//! `batch_bytes_max`, groups them by leader into Produce requests, and retries failures
//! with backoff. Up to `in_flight_batches_per_partition_max` batches of a partition are
//! in flight at once (one by default, so order holds across retries; see the
//! accumulator). Requests to one leader are written to its connection by that leader's
//! *lane* task in the order the accumulator released their batches — the broker
//! appends a connection's Produce requests in arrival order — and their responses are
//! awaited concurrently.
//!
//! Memory is bounded: every queued record holds `buffer_bytes_max` budget (its size
//! estimate) until its batch completes; `send` waits for budget when it is used up.
//!
//! Idempotence (on by default with acks=all, `ProducerConfig::enable_idempotence`): the
//! first `send` gets a producer id (InitProducerId); every batch carries it, its epoch
//! and its partition's sequence numbers, so a leader answers a retry of a batch it holds
//! with the original offset instead of writing it again, and refuses a batch that would
//! leave a gap (OUT_OF_ORDER_SEQUENCE_NUMBER), which is resent after the earlier one.
//! Delivery is then exactly once and in order per partition, across retries, leader
//! changes and broker restarts. A sequence error no earlier batch explains (the broker
//! lost the producer's state: UNKNOWN_PRODUCER_ID, or a gap after a batch that failed for
//! good) bumps the epoch as Kafka's producer does (KIP-360): the sender waits until
//! nothing is in flight, asks InitProducerId for epoch + 1, and every partition's
//! sequences start over at 0.
//!
//! Without idempotence delivery is *at least once*: a batch whose response was lost
//! (e.g. the broker died after writing it) is written again on retry.

mod accumulator;
mod delivery;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
#[cfg(not(target_os = "linux"))]
use std::time::{SystemTime, UNIX_EPOCH};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    InitProducerIdRequest, ProduceRequest, ProduceResponse, ProducerId,
};
use kafka_protocol::protocol::{Request, StrBytes};
use tokio::sync::{mpsc, Notify, Semaphore, TryAcquireError};

use self::accumulator::{Accumulator, Drained, Reports};
pub use self::delivery::{BatchDelivery, BatchReport, DeliveryFuture};
use crate::cluster::Cluster;
use crate::config::{Acks, ProducerConfig};
use crate::conn::Frame;
use crate::error::{Error, Result};
use crate::record::ProducerRecord;
use crate::wire::{self, ProduceTopic};

/// Upper bound on the record bytes put into one Produce request; more batches for the
/// same broker go into further requests.
const REQUEST_RECORD_BYTES_MAX: usize = 16 << 20;

struct Inner {
    config: ProducerConfig,
    cluster: Arc<Cluster>,
    accumulator: Mutex<Accumulator>,
    /// `buffer_bytes_max` worth of permits, one per byte of queued record estimate.
    memory: Semaphore,
    /// Wakes the sender: a batch closed, a batch completed, a flush started, close.
    wake_sender: Notify,
    closed: AtomicBool,
    /// Batch sends that failed retriably and were queued again.
    retries_total: AtomicU64,
    /// Per leader broker id, the queue of its lane task (see the module docs). A lane
    /// ends when the producer is dropped (its queue closes).
    lanes: Mutex<HashMap<i32, mpsc::UnboundedSender<Vec<Drained>>>>,
    /// Idempotence: held while the producer id is first fetched, so `send`s wait for it.
    init_lock: tokio::sync::Mutex<()>,
    /// Idempotence: a sequence error asked for an epoch bump (see the module docs).
    bump_needed: AtomicBool,
    /// Epoch bumps done (KIP-360 resets).
    epoch_bumps_total: AtomicU64,
    /// `config.client.client_id`, as request headers carry it.
    client_id: StrBytes,
    /// Round trips of Produce requests.
    request_latency: RequestLatency,
}

/// The round trips of the most recent Produce requests that got a response (from queued
/// on the connection to the response read), in µs: a ring of `REQUEST_LATENCY_SAMPLES_MAX`
/// samples, one per request (not per record), so recording is cheap and memory bounded.
#[derive(Default)]
struct RequestLatency {
    ring: Mutex<LatencyRing>,
}

#[derive(Default)]
struct LatencyRing {
    samples_us: Vec<u64>,
    /// Samples ever recorded (the next slot is `recorded % REQUEST_LATENCY_SAMPLES_MAX`).
    recorded: u64,
}

/// Request round trips the producer remembers (at most 512 KiB of samples, grown as
/// requests come): plenty for a p99.9, small for a producer that lives for months.
const REQUEST_LATENCY_SAMPLES_MAX: usize = 1 << 16;

impl RequestLatency {
    fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (ring.recorded % REQUEST_LATENCY_SAMPLES_MAX as u64) as usize;
        if slot < ring.samples_us.len() {
            ring.samples_us[slot] = us;
        } else {
            ring.samples_us.push(us);
        }
        ring.recorded += 1;
    }
}

/// A queued record: its batch's completion (see [`Reports`]) and its index in the batch.
struct Queued {
    completion: Option<Arc<delivery::Completion>>,
    index: u32,
}

/// What [`Producer::send_now`] got to.
enum SendNow {
    /// The send is over: appended, or failed.
    Done(Result<Queued>),
    /// It has to wait: for `size` bytes of budget unless `budget_held`, then for the
    /// topic's metadata or the producer id.
    Wait { size: usize, budget_held: bool },
}

/// An asynchronous Kafka producer.
///
/// ```no_run
/// # async fn demo() -> Result<(), rill_client::Error> {
/// use rill_client::{Producer, ProducerConfig, ProducerRecord};
/// let producer = Producer::new(ProducerConfig::new("127.0.0.1:9092"))?;
/// let delivery = producer
///     .send(ProducerRecord::new("events", "hello").with_key("user-1"))
///     .await?;                 // waits only if the buffer is full
/// let written = delivery.await?; // waits for the broker's acknowledgement
/// println!("partition {} offset {}", written.partition, written.offset);
/// producer.close().await?;
/// # Ok(()) }
/// ```
pub struct Producer {
    inner: Arc<Inner>,
}

impl Producer {
    /// Creates a producer and starts its sender task (on the current tokio runtime).
    /// Connects lazily, on the first `send`.
    pub fn new(config: ProducerConfig) -> Result<Producer> {
        config.validate()?;
        let cluster = Arc::new(Cluster::new(
            config.client.clone(),
            config.allow_auto_topic_creation,
        )?);
        let inner = Arc::new(Inner {
            accumulator: Mutex::new(Accumulator::new(
                Duration::from_millis(config.linger_ms),
                config.batch_bytes_max,
                config.compression,
                config.in_flight_batches_per_partition_max,
            )),
            memory: Semaphore::new(config.buffer_bytes_max),
            wake_sender: Notify::new(),
            closed: AtomicBool::new(false),
            retries_total: AtomicU64::new(0),
            lanes: Mutex::new(HashMap::new()),
            init_lock: tokio::sync::Mutex::new(()),
            bump_needed: AtomicBool::new(false),
            epoch_bumps_total: AtomicU64::new(0),
            client_id: StrBytes::from_string(config.client.client_id.clone()),
            request_latency: RequestLatency::default(),
            cluster,
            config,
        });
        tokio::spawn(run_sender(inner.clone()));
        Ok(Producer { inner })
    }

    /// Queues `record` for sending.
    ///
    /// Awaiting this waits for the topic's metadata (first use) and for buffer space
    /// (back-pressure when `buffer_bytes_max` is in use); the returned
    /// [`DeliveryFuture`] then resolves when the broker acknowledges the record, to its
    /// partition and offset, or to the error that ended its delivery.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        self.send_ref(&record).await
    }

    /// [`Producer::send`] of a borrowed record: the producer copies the record's bytes
    /// into its batch, so a caller sending many records (a loader, a benchmark) can
    /// build one and change only what differs, without allocating or cloning a record,
    /// its topic name or its value per send.
    pub async fn send_ref(&self, record: &ProducerRecord) -> Result<DeliveryFuture> {
        let queued = self.send_reporting(record, Reports::PerRecord).await?;
        match queued.completion {
            Some(completion) => Ok(DeliveryFuture::new(completion, queued.index)),
            None => Err(Error::Protocol(
                "internal: a record sent for a report of its own got none".into(),
            )),
        }
    }

    /// [`Producer::send_ref`] for a caller that wants one report per batch rather than
    /// per record (a bulk loader, a benchmark): the record that opens a batch gets the
    /// batch's [`BatchDelivery`], whose [`BatchReport`] counts and settles every record
    /// of the batch; the others get `None`. Each record is queued exactly as by
    /// `send_ref` (same order, retries, back-pressure), but the records that join a
    /// batch hold no reference to its outcome, which spares two atomic read-modify-writes
    /// per record (the reference's count up and down).
    pub async fn send_ref_batched(&self, record: &ProducerRecord) -> Result<Option<BatchDelivery>> {
        let queued = self.send_reporting(record, Reports::PerBatch).await?;
        Ok(queued
            .completion
            .filter(|_| queued.index == 0)
            .map(BatchDelivery::new))
    }

    /// [`Producer::send_ref_batched`] for many records at once, without waiting: queues
    /// the longest prefix of `records` that needs no wait, under one lock, one buffer
    /// budget acquisition and one clock read (the records without a timestamp of their
    /// own get the same CreateTime), and returns how many it queued. A
    /// [`BatchDelivery`] for every batch one of them opened is pushed to `opened`. The
    /// records are queued exactly as by `send_ref_batched` one by one (same order,
    /// partitions, batches, retries, buffer bound).
    ///
    /// It stops before the first record that would have to wait (for buffer space, the
    /// topic's metadata or an idempotent producer's id) or that `send_ref_batched` would
    /// refuse (too large, an unknown partition): the caller sends that one with
    /// `send_ref_batched`, which waits or says why not, then carries on here. So a bulk
    /// loader's loop is
    ///
    /// ```no_run
    /// # async fn demo(producer: &rill_client::Producer, records: &[rill_client::ProducerRecord]) -> Result<(), rill_client::Error> {
    /// let mut opened = Vec::new();
    /// let mut next = 0;
    /// while next < records.len() {
    ///     next += producer.try_send_many_batched(&records[next..], &mut opened)?;
    ///     if let Some(record) = records.get(next) {
    ///         opened.extend(producer.send_ref_batched(record).await?);
    ///         next += 1;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// An error is returned if the producer is closed (nothing queued) or a record could
    /// not be encoded (the records before it are queued; their batches' deliveries are
    /// in `opened`).
    pub fn try_send_many_batched(
        &self,
        records: &[ProducerRecord],
        opened: &mut Vec<BatchDelivery>,
    ) -> Result<usize> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        // The budget of the prefix that fits what is free now (the sender only adds to
        // it meanwhile; another sending thread may take it first, and then this call
        // queues nothing and the caller's `send_ref_batched` waits).
        let free_bytes = inner.memory.available_permits();
        let record_bytes_max = self.record_bytes_max();
        let mut budget_bytes = 0usize;
        let mut fitting = 0;
        for record in records {
            let size = record.size_estimate_bytes();
            if size > record_bytes_max
                || budget_bytes + size > free_bytes
                || budget_bytes + size > u32::MAX as usize
            {
                break;
            }
            budget_bytes += size;
            fitting += 1;
        }
        if fitting == 0 {
            return Ok(0);
        }
        match inner.memory.try_acquire_many(budget_bytes as u32) {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::Closed) => return Err(Error::Closed),
            Err(TryAcquireError::NoPermits) => return Ok(0),
        }
        let generation = inner.cluster.generation();
        let timestamp_ms = now_ms();
        let mut completions = Vec::new();
        let done = {
            let mut acc = inner.accumulator.lock().unwrap_or_else(|e| e.into_inner());
            if inner.config.is_idempotent() && acc.producer().is_none() {
                accumulator::AppendedMany::default()
            } else {
                acc.append_many_if_known(
                    &records[..fitting],
                    generation,
                    timestamp_ms,
                    Instant::now,
                    &mut completions,
                )
            }
        };
        if budget_bytes > done.reserved_bytes {
            inner.memory.add_permits(budget_bytes - done.reserved_bytes);
        }
        if done.wake_sender {
            inner.wake_sender.notify_one();
        }
        opened.extend(completions.into_iter().map(BatchDelivery::new));
        match done.error {
            Some(e) => Err(e),
            None => Ok(done.records),
        }
    }

    /// The largest record (by its size estimate) a send accepts: it must fit the
    /// buffer and one request.
    fn record_bytes_max(&self) -> usize {
        self.inner
            .config
            .buffer_bytes_max
            .min(REQUEST_RECORD_BYTES_MAX)
    }

    /// Queues `record`, with the batch's completion for the records `reports` names.
    async fn send_reporting(&self, record: &ProducerRecord, reports: Reports) -> Result<Queued> {
        match self.send_now(record, reports) {
            SendNow::Done(result) => result,
            // Boxed: the slow path's state (budget and metadata waits) would otherwise
            // make every send's future that large, to be set up and moved per record.
            SendNow::Wait { size, budget_held } => {
                Box::pin(self.send_after_waits(record, size, budget_held, reports)).await
            }
        }
    }

    /// The common send, without waiting: budget free, the topic's partition count
    /// known (and, idempotent, the producer id). Otherwise says what is left to wait for.
    fn send_now(&self, record: &ProducerRecord, reports: Reports) -> SendNow {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return SendNow::Done(Err(Error::Closed));
        }
        let size = record.size_estimate_bytes();
        if size > self.record_bytes_max() {
            return SendNow::Done(Err(Error::RecordTooLarge {
                record_bytes: size,
                limit_bytes: self.record_bytes_max(),
            }));
        }
        // Buffer budget first: without waiters the semaphore's fast path, no future.
        // The budget is returned by hand when the batch completes (see `finish_batch`),
        // so a record costs no permit object; a send that fails returns it.
        match inner.memory.try_acquire_many(size as u32) {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::Closed) => return SendNow::Done(Err(Error::Closed)),
            Err(TryAcquireError::NoPermits) => {
                return SendNow::Wait {
                    size,
                    budget_held: false,
                }
            }
        }
        match self.append_if_ready(record, size, reports) {
            Some(appended) => SendNow::Done(self.appended(appended, size)),
            None => SendNow::Wait {
                size,
                budget_held: true,
            },
        }
    }

    /// The rest of a send that [`Producer::send_now`] could not finish: waits for
    /// budget (unless held) and the topic's metadata, then appends.
    async fn send_after_waits(
        &self,
        record: &ProducerRecord,
        size: usize,
        budget_held: bool,
        reports: Reports,
    ) -> Result<Queued> {
        let inner = &self.inner;
        if !budget_held {
            inner
                .memory
                .acquire_many(size as u32)
                .await
                .map_err(|_| Error::Closed)?
                .forget();
        }
        let appended = self.append_reserved(record, size, reports).await;
        self.appended(appended, size)
    }

    /// A record's append done: its budget back if it failed, else the sender woken if
    /// the append asks for it, and where the record went.
    fn appended(&self, appended: Result<accumulator::Appended>, size: usize) -> Result<Queued> {
        let inner = &self.inner;
        let appended = match appended {
            Ok(a) => a,
            Err(e) => {
                inner.memory.add_permits(size);
                return Err(e);
            }
        };
        if appended.wake_sender {
            inner.wake_sender.notify_one();
        }
        Ok(Queued {
            completion: appended.completion,
            index: appended.index,
        })
    }

    /// The append of the common case, under one lock: `None` (nothing appended) if the
    /// topic's partition count is not known at the current metadata generation, or an
    /// idempotent producer has no producer id yet.
    fn append_if_ready(
        &self,
        record: &ProducerRecord,
        size: usize,
        reports: Reports,
    ) -> Option<Result<accumulator::Appended>> {
        let inner = &self.inner;
        let generation = inner.cluster.generation();
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(now_ms);
        let mut acc = inner.accumulator.lock().unwrap_or_else(|e| e.into_inner());
        if inner.config.is_idempotent() && acc.producer().is_none() {
            return None;
        }
        acc.append_if_known(
            record,
            generation,
            timestamp_ms,
            size,
            Instant::now,
            reports,
        )
    }

    /// Appends `record` (its `size` of budget already held) to its partition's batch.
    /// The partition count is remembered per metadata generation, so the common case
    /// takes the accumulator's lock once and never looks at the metadata.
    async fn append_reserved(
        &self,
        record: &ProducerRecord,
        size: usize,
        reports: Reports,
    ) -> Result<accumulator::Appended> {
        let inner = &self.inner;
        // Read before the partition count below (see `remember_partition_count`).
        let generation = inner.cluster.generation();
        if let Some(appended) = self.append_if_ready(record, size, reports) {
            return appended;
        }
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(now_ms);
        let partition_count = self.partition_count(&record.topic).await?;
        check_partition(record, partition_count)?;
        if inner.config.is_idempotent() {
            init_producer_id(inner).await?;
        }
        let mut acc = inner.accumulator.lock().unwrap_or_else(|e| e.into_inner());
        acc.remember_partition_count(&record.topic, generation, partition_count);
        acc.append_with_clock(
            record,
            timestamp_ms,
            partition_count,
            size,
            Instant::now,
            reports,
        )
    }

    /// Partition count of `topic`, from cached metadata or after fetching it.
    async fn partition_count(&self, topic: &str) -> Result<i32> {
        if let Some(n) = self.inner.cluster.cached_partition_count(topic) {
            return Ok(n);
        }
        let wait = Duration::from_millis(self.inner.config.metadata_wait_ms_max);
        let metadata = self.inner.cluster.topic(topic, wait).await?;
        metadata
            .topics
            .get(topic)
            .map(|t| t.partitions.len() as i32)
            .filter(|n| *n > 0)
            .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))
    }

    /// How many times a batch send failed retriably and the batch was queued again
    /// (since this producer was created).
    pub fn retries_total(&self) -> u64 {
        self.inner.retries_total.load(Ordering::Relaxed)
    }

    /// How many times the producer bumped its epoch to recover from a sequence error
    /// (KIP-360; see the module docs).
    pub fn epoch_bumps_total(&self) -> u64 {
        self.inner.epoch_bumps_total.load(Ordering::Relaxed)
    }

    /// Round trips of this producer's Produce requests, in µs, from the request queued on
    /// its connection to its response read: the broker's and the network's share of a
    /// record's latency, without the time records wait in the producer (`linger_ms`,
    /// buffer, in-flight limits). One sample per request that got a response, the most
    /// recent 2^20 of them, in no particular order. acks=0 requests have none.
    pub fn request_latencies_us(&self) -> Vec<u64> {
        let ring = self
            .inner
            .request_latency
            .ring
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        ring.samples_us.clone()
    }

    /// The producer id and epoch, once an idempotent producer has them.
    pub fn producer_id_and_epoch(&self) -> Option<(i64, i16)> {
        self.inner
            .accumulator
            .lock()
            .expect("accumulator lock")
            .producer()
    }

    /// Number of partitions of `topic` (fetching metadata if needed).
    pub async fn partitions_for(&self, topic: &str) -> Result<i32> {
        self.partition_count(topic).await
    }

    /// Sends every queued record now (ignoring `linger_ms`) and waits until each one
    /// queued before this call is acknowledged or has failed. Failures are reported
    /// through the records' [`DeliveryFuture`]s; `flush` itself only fails if the
    /// producer is closed underneath it.
    pub async fn flush(&self) -> Result<()> {
        /// Ends this flush's "ignore linger" even if the flush future is dropped early.
        struct FlushGuard<'a>(&'a Inner);
        impl Drop for FlushGuard<'_> {
            fn drop(&mut self) {
                self.0.accumulator.lock().unwrap().flushes_pending -= 1;
            }
        }
        let completions = {
            let mut acc = self.inner.accumulator.lock().unwrap();
            acc.flushes_pending += 1;
            acc.pending_completions()
        };
        let _guard = FlushGuard(&self.inner);
        self.inner.wake_sender.notify_one();
        for c in completions {
            let _ = c.wait().await;
        }
        Ok(())
    }

    /// Flushes, then stops accepting records. Dropping a producer without `close` still
    /// delivers what was queued, in the background, while the runtime runs.
    pub async fn close(&self) -> Result<()> {
        self.flush().await?;
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake_sender.notify_one();
        Ok(())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake_sender.notify_one();
    }
}

/// An explicit partition must exist.
fn check_partition(record: &ProducerRecord, partition_count: i32) -> Result<()> {
    match record.partition {
        Some(p) if p < 0 || p >= partition_count => Err(Error::UnknownPartition {
            topic: record.topic.clone(),
            partition: p,
        }),
        _ => Ok(()),
    }
}

/// Wall-clock ms since the Unix epoch for a record's CreateTime, read per record. On
/// Linux from the kernel's coarse clock (the time of the last tick: a read of the vDSO
/// page without a TSC read, several times cheaper than a precise read), so a timestamp
/// is at most one tick (1-4 ms) early.
fn now_ms() -> i64 {
    #[cfg(target_os = "linux")]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        // `tv_nsec` is an i64 on 64-bit targets but not on every Linux target.
        #[allow(clippy::useless_conversion)]
        t.tv_sec
            .saturating_mul(1000)
            .saturating_add(i64::from(t.tv_nsec) / 1_000_000)
    }
    #[cfg(not(target_os = "linux"))]
    {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// Gets the idempotent producer's id (once; concurrent `send`s wait for the first).
async fn init_producer_id(inner: &Inner) -> Result<()> {
    let _one = inner.init_lock.lock().await;
    if inner
        .accumulator
        .lock()
        .expect("accumulator lock")
        .producer()
        .is_some()
    {
        return Ok(());
    }
    let (id, epoch) = request_producer_id(inner, None).await?;
    inner
        .accumulator
        .lock()
        .expect("accumulator lock")
        .set_producer(id, epoch);
    tracing::debug!(producer_id = id, epoch, "idempotent producer initialised");
    Ok(())
}

/// InitProducerId at any broker, retried with backoff on retriable errors within
/// `delivery_timeout_ms`. With `current` (KIP-360), the broker bumps that id's epoch.
async fn request_producer_id(inner: &Inner, current: Option<(i64, i16)>) -> Result<(i64, i16)> {
    let (id, epoch) = current.unwrap_or((-1, -1));
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(i32::MAX)
        .with_producer_id(ProducerId(id))
        .with_producer_epoch(epoch);
    let deadline = Instant::now() + Duration::from_millis(inner.config.delivery_timeout_ms);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match inner.cluster.request_any(&request).await {
            Ok(response) => match Error::from_code(response.error_code, None) {
                None => return Ok((response.producer_id.0, response.producer_epoch)),
                Some(e) => e,
            },
            Err(e) => e,
        };
        if !error.is_retriable() || Instant::now() >= deadline {
            return Err(error);
        }
        tracing::debug!(error = %error, attempts, "InitProducerId failed; retrying");
        tokio::time::sleep(inner.config.client.backoff(attempts)).await;
    }
}

/// Bumps the epoch once nothing is in flight (see the module docs); false while
/// batches are still in flight or the bump failed (retried at the next wake-up).
async fn bump_epoch_if_needed(inner: &Inner) -> bool {
    if !inner.bump_needed.load(Ordering::Acquire) {
        return true;
    }
    let current = {
        let acc = inner.accumulator.lock().expect("accumulator lock");
        if acc.in_flight_total() > 0 {
            return false;
        }
        acc.producer()
    };
    match request_producer_id(inner, current).await {
        Ok((id, epoch)) => {
            let reset = inner
                .accumulator
                .lock()
                .expect("accumulator lock")
                .reset_producer(id, epoch);
            if let Err(e) = reset {
                tracing::error!(error = %e, "cannot restamp batches after an epoch bump");
                return false;
            }
            inner.bump_needed.store(false, Ordering::Release);
            inner.epoch_bumps_total.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                producer_id = id,
                epoch,
                "idempotent producer bumped its epoch; sequences start over"
            );
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "epoch bump failed; retrying");
            tokio::time::sleep(inner.config.client.backoff(1)).await;
            false
        }
    }
}

/// The sender loop: drain due batches, dispatch them, sleep until the next deadline or
/// a wake-up. Ends when the producer is closed and nothing is left.
async fn run_sender(inner: Arc<Inner>) {
    loop {
        if inner.closed.load(Ordering::Acquire)
            && inner
                .accumulator
                .lock()
                .expect("accumulator lock")
                .is_idle()
        {
            return;
        }
        if !bump_epoch_if_needed(&inner).await {
            // Waiting for in-flight batches to settle (each settles with a wake-up), or
            // retrying a failed bump.
            if inner.bump_needed.load(Ordering::Acquire)
                && inner
                    .accumulator
                    .lock()
                    .expect("accumulator lock")
                    .in_flight_total()
                    == 0
            {
                continue;
            }
            inner.wake_sender.notified().await;
            continue;
        }
        let drained = inner.accumulator.lock().unwrap().drain(Instant::now());
        let (batches, next_due) = match drained {
            Ok(x) => x,
            Err(e) => {
                // Encoding a batch failed: a bug or an impossible record; nothing can be
                // sent safely, so fail loudly rather than spin.
                tracing::error!(error = %e, "producer could not encode a batch");
                (Vec::new(), None)
            }
        };
        if !batches.is_empty() {
            dispatch(&inner, batches).await;
        }
        if inner.closed.load(Ordering::Acquire) && inner.accumulator.lock().unwrap().is_idle() {
            return;
        }
        let wake = inner.wake_sender.notified();
        match next_due {
            Some(at) => {
                tokio::select! {
                    _ = wake => {}
                    _ = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => wake.await,
        }
    }
}

/// Groups batches by partition leader and starts one Produce request per leader
/// (per `REQUEST_RECORD_BYTES_MAX` of records).
async fn dispatch(inner: &Arc<Inner>, batches: Vec<Drained>) {
    let metadata = match inner.cluster.metadata().await {
        Ok(m) => m,
        Err(e) => {
            for d in batches {
                retry_or_fail(inner, d, e.clone());
            }
            return;
        }
    };
    let mut by_leader: HashMap<i32, Vec<Vec<Drained>>> = HashMap::new();
    for d in batches {
        let leader = metadata
            .topics
            .get(&*d.topic)
            .and_then(|t| t.partitions.get(d.partition as usize))
            .map_or(-1, |p| p.leader);
        if leader < 0 {
            inner.cluster.invalidate();
            let error = Error::Broker {
                code: kafka_protocol::error::ResponseError::LeaderNotAvailable,
                message: Some(format!("no leader known for {}/{}", d.topic, d.partition)),
            };
            retry_or_fail(inner, d, error);
            continue;
        }
        let requests = by_leader.entry(leader).or_default();
        // A partition's pipelined batches go in separate requests: one request is
        // answered as a whole, so batches sharing it would share one round trip.
        let fits = requests.last().is_some_and(|r| {
            r.iter().map(|x| x.batch.records.len()).sum::<usize>() + d.batch.records.len()
                <= REQUEST_RECORD_BYTES_MAX
                && !r
                    .iter()
                    .any(|x| x.partition == d.partition && x.topic == d.topic)
        });
        if fits {
            requests.last_mut().expect("checked").push(d);
        } else {
            requests.push(vec![d]);
        }
    }
    let mut lanes = inner.lanes.lock().expect("lanes lock");
    for (leader, requests) in by_leader {
        let lane = lanes.entry(leader).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_lane(Arc::downgrade(inner), leader, rx));
            tx
        });
        for batches in requests {
            // The lane ends only once the producer is gone, when nothing dispatches.
            let _ = lane.send(batches);
        }
    }
}

/// The lane of one leader: writes its Produce requests in order (each is queued on the
/// connection before the next is started) and leaves each response to a task of its
/// own. Its queue is unbounded in count but not in bytes: every batch in it holds
/// `buffer_bytes_max` budget.
async fn run_lane(
    inner: Weak<Inner>,
    leader: i32,
    mut requests: mpsc::UnboundedReceiver<Vec<Drained>>,
) {
    while let Some(batches) = requests.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        produce(inner, leader, batches).await;
    }
}

/// Writes one Produce request to `leader`'s connection, then (on a task of its own)
/// awaits the response and settles every batch in it.
async fn produce(inner: Arc<Inner>, leader: i32, batches: Vec<Drained>) {
    let conn = match inner.cluster.broker_connection(leader).await {
        Ok(c) => c,
        Err(e) => {
            inner.cluster.observe_error(&e);
            for d in batches {
                retry_or_fail(&inner, d, e.clone());
            }
            return;
        }
    };
    let version = match conn.version_of::<ProduceRequest>() {
        Ok(v) => v,
        Err(e) => {
            for d in batches {
                fail(&inner, d, e.clone());
            }
            return;
        }
    };
    let mut topics: Vec<ProduceTopic<'_>> = Vec::new();
    for d in &batches {
        let part = (d.partition, &d.batch.records);
        match topics.iter_mut().find(|(name, _)| *name == &*d.topic) {
            Some((_, parts)) => parts.push(part),
            None => topics.push((&d.topic, vec![part])),
        }
    }
    let acks = inner.config.acks;
    let timeout_ms = inner.config.client.request_timeout_ms.min(i32::MAX as u64) as i32;
    let client_id = &inner.client_id;
    // The batches are written from their own buffers, not copied into the request.
    let queued = conn
        .send_encoded(
            ProduceRequest::KEY,
            version,
            acks != Acks::None,
            |correlation_id| {
                wire::encode_produce_parts(
                    version,
                    correlation_id,
                    client_id,
                    acks.as_i16(),
                    timeout_ms,
                    &topics,
                )
                .map(Frame::Parts)
            },
        )
        .await;
    drop(topics);

    if acks == Acks::None {
        for d in batches {
            match &queued {
                Ok(_) => succeed(&inner, d, -1),
                Err(e) => retry_or_fail(&inner, d, e.clone()),
            }
        }
        return;
    }

    let sent = match queued {
        Ok(Some(sent)) => sent,
        Ok(None) => {
            let e = Error::Protocol("a produce request got no reply channel".into());
            for d in batches {
                retry_or_fail(&inner, d, e.clone());
            }
            return;
        }
        Err(e) => {
            inner.cluster.observe_error(&e);
            for d in batches {
                retry_or_fail(&inner, d, e.clone());
            }
            return;
        }
    };
    // The request's round trip, from queued on the connection to its response read:
    // what the broker and network take, without the time records queued in the producer.
    let queued_at = Instant::now();
    tokio::spawn(async move {
        match conn.response::<ProduceRequest>(sent).await {
            Ok(response) => {
                inner.request_latency.record(queued_at.elapsed());
                settle(&inner, batches, &response)
            }
            Err(e) => {
                inner.cluster.observe_error(&e);
                for d in batches {
                    retry_or_fail(&inner, d, e.clone());
                }
            }
        }
    });
}

/// Settles every batch of a Produce request by its partition's answer.
fn settle(inner: &Inner, batches: Vec<Drained>, response: &ProduceResponse) {
    for d in batches {
        let answer = response
            .responses
            .iter()
            .filter(|t| *t.name.0 == *d.topic)
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == d.partition);
        match answer {
            None => {
                let e = Error::Protocol(format!(
                    "produce response has no entry for {}/{}",
                    d.topic, d.partition
                ));
                fail(inner, d, e);
            }
            Some(p) => match Error::from_code(p.error_code, p.error_message.as_deref()) {
                None => succeed(inner, d, p.base_offset),
                Some(e) if is_sequence_error(&e) && d.batch.producer_epoch.is_some() => {
                    sequence_error(inner, d, e)
                }
                Some(e) => {
                    inner.cluster.observe_error(&e);
                    retry_or_fail(inner, d, e);
                }
            },
        }
    }
}

/// The errors an idempotent batch gets for its sequence or epoch.
fn is_sequence_error(e: &Error) -> bool {
    matches!(
        e,
        Error::Broker {
            code: ResponseError::OutOfOrderSequenceNumber
                | ResponseError::UnknownProducerId
                | ResponseError::InvalidProducerEpoch,
            ..
        }
    )
}

/// An idempotent batch refused for its sequence: sent again after the earlier batch the
/// leader is missing, when one is unsettled; otherwise the producer's state at the
/// leader is gone or broken and the epoch is bumped (the batch is stamped again and
/// resent). A batch of an epoch older than the producer's is resent under the new one.
fn sequence_error(inner: &Inner, d: Drained, error: Error) {
    let (explained, current_epoch) = {
        let acc = inner.accumulator.lock().expect("accumulator lock");
        (
            acc.has_earlier_unsettled(&d.topic, d.partition, d.batch.seq),
            acc.producer().map(|(_, epoch)| epoch),
        )
    };
    let stale_epoch = d.batch.producer_epoch < current_epoch;
    if !explained && !stale_epoch {
        if matches!(
            error,
            Error::Broker {
                code: ResponseError::InvalidProducerEpoch,
                ..
            }
        ) {
            // Someone else bumped this producer id's epoch: it is fenced for good.
            fail(inner, d, error);
            return;
        }
        tracing::debug!(topic = %d.topic, partition = d.partition, error = %error, "sequence error: bumping the producer epoch");
        inner.bump_needed.store(true, Ordering::Release);
    }
    retry_if(inner, d, error, true);
}

fn succeed(inner: &Inner, d: Drained, base_offset: i64) {
    d.batch
        .completion
        .complete(Ok((d.partition, base_offset)), d.batch.record_count);
    finish_batch(inner, d);
}

fn fail(inner: &Inner, d: Drained, error: Error) {
    let attempts = d.batch.attempts + 1;
    d.batch.completion.complete(
        Err(Error::DeliveryFailed {
            attempts,
            last_error: Box::new(error),
        }),
        d.batch.record_count,
    );
    finish_batch(inner, d);
}

/// A failed send: requeue at the head of the partition with backoff if the error is
/// retriable and neither `retries_max` nor `delivery_timeout_ms` ran out; else fail.
fn retry_or_fail(inner: &Inner, d: Drained, error: Error) {
    let retriable = error.is_retriable();
    retry_if(inner, d, error, retriable);
}

/// [`retry_or_fail`] with the caller's judgement of whether `error` is retriable.
fn retry_if(inner: &Inner, mut d: Drained, error: Error, retriable: bool) {
    d.batch.attempts += 1;
    let timed_out =
        d.batch.closed_at.elapsed() >= Duration::from_millis(inner.config.delivery_timeout_ms);
    if retriable && d.batch.attempts < inner.config.retries_max && !timed_out {
        tracing::debug!(
            topic = %d.topic,
            partition = d.partition,
            records = d.batch.record_count,
            attempt = d.batch.attempts,
            error = %error,
            "retrying batch"
        );
        inner.retries_total.fetch_add(1, Ordering::Relaxed);
        let retry_at = Instant::now() + inner.config.client.backoff(d.batch.attempts);
        inner
            .accumulator
            .lock()
            .unwrap()
            .requeue(&d.topic, d.partition, d.batch, retry_at);
        inner.wake_sender.notify_one();
    } else {
        d.batch.attempts -= 1;
        fail(inner, d, error);
    }
}

fn finish_batch(inner: &Inner, d: Drained) {
    inner.memory.add_permits(d.batch.reserved_bytes);
    {
        let mut acc = inner.accumulator.lock().unwrap_or_else(|e| e.into_inner());
        acc.complete(&d.topic, d.partition, d.batch.seq);
        acc.recycle(d.batch.records);
    }
    inner.wake_sender.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ring keeps the most recent samples and never grows past its bound.
    #[test]
    fn request_latency_ring_keeps_the_latest_samples_within_its_bound() {
        let ring = RequestLatency::default();
        let total = REQUEST_LATENCY_SAMPLES_MAX as u64 + 10;
        for us in 0..total {
            ring.record(Duration::from_micros(us));
        }
        let samples = ring.ring.lock().unwrap().samples_us.clone();
        assert_eq!(samples.len(), REQUEST_LATENCY_SAMPLES_MAX);
        assert_eq!(
            samples.iter().min(),
            Some(&10),
            "the 10 oldest were overwritten"
        );
        assert_eq!(samples.iter().max(), Some(&(total - 1)));
    }
}
