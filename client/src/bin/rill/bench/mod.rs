//! `rill bench produce|consume`: throughput and latency against a running broker. The
//! benchmark suite (`benches/`, `rill-bench suite`) starts brokers and runs these.
//!
//! Produce latency is per record, from `send` to its acknowledgement (so it includes
//! `linger_ms` and queueing behind earlier batches). At `--rate` each record's own
//! latency is measured; unlimited runs wait per batch instead of per record (the
//! client's CPU is what they measure) and give every record its batch's latency, taken
//! from before the batch's first record was sent: an upper bound for each record.
//! Consume latency is per record, the time the application waited in `next()` — near
//! zero while prefetched records are ready, a fetch round trip when they are not. The
//! clock is read only for the waits: a record that was ready at the first poll counts as
//! 1 µs, the histogram's floor.
//!
//! With `--rate`, produce latency is coordinated-omission aware: it counts from each
//! record's due time on the fixed-rate schedule (or its send, if that came earlier), so
//! a stall that delays later sends shows in their latencies instead of hiding them.
//!
//! `--json FILE` writes the outcome and a 100 ms timeline for the benchmark suite
//! (`report.rs`).

use std::path::PathBuf;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use report::{histogram, Recorder};
use rill_client::{
    Admin, BatchDelivery, BatchReport, ClientConfig, Consumer, ConsumerConfig, Error, NewTopic,
    Offset, Producer, ProducerRecord, ResponseError, TopicPartition,
};

use crate::ProducerOptions;

mod paced;
mod report;

#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Produce `--count` records of `--size` bytes and report throughput and latency.
    Produce(ProduceBench),
    /// Consume `--count` records from the beginning and report throughput and latency.
    Consume(ConsumeBench),
}

#[derive(Args, Debug)]
pub(crate) struct ProduceBench {
    /// Topic (created with `--partitions` if missing).
    topic: String,
    /// Value size in bytes.
    #[arg(short, long, default_value_t = 1024)]
    size: usize,
    /// Number of records.
    #[arg(short, long, default_value_t = 1_000_000)]
    count: u64,
    /// Partitions to create the topic with if it does not exist.
    #[arg(short, long, default_value_t = 1)]
    partitions: i32,
    /// Give records keys (`key-<n % 10000>`) instead of null keys (sticky partitioning).
    #[arg(long)]
    keyed: bool,
    /// Send at most this many records per second (0: as fast as possible). Unlimited
    /// runs measure throughput, and their latencies are mostly queueing in the
    /// producer's buffer; a rate below saturation measures latency.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// Also write the outcome (totals, latency quantiles, a 100 ms timeline) as JSON
    /// to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Runtime worker threads of this client process. One by default: the record loop,
    /// the producer's sender and the socket's writer and reader then share a thread,
    /// which spares the cross-thread wake-ups (futexes) of every batch and leaves the
    /// other cores to the broker (on a 2-core machine: 0.845 -> 0.786 client
    /// CPU-s/GB, 353 -> 434 MB/s); more let socket writes overlap batch building.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    #[command(flatten)]
    producer: ProducerOptions,
}

/// The runtime worker threads `cmd` asks for, if it has a say (`bench produce`).
pub(crate) fn worker_threads(cmd: &BenchCommand) -> Option<usize> {
    match cmd {
        BenchCommand::Produce(b) => Some(usize::from(b.threads)),
        BenchCommand::Consume(_) => None,
    }
}

#[derive(Args, Debug)]
pub(crate) struct ConsumeBench {
    /// Topic to read (all partitions, from the beginning).
    topic: String,
    /// Number of records to read.
    #[arg(short, long, default_value_t = 1_000_000)]
    count: u64,
    /// Expected value size, used only for the progress bar's byte rate.
    #[arg(short, long, default_value_t = 1024)]
    size: usize,
    /// Most bytes one fetch returns per partition (the consumer's
    /// `partition_fetch_bytes_max`): what each round trip can carry.
    #[arg(long, default_value_t = ConsumerConfig::default().partition_fetch_bytes_max)]
    partition_fetch_bytes_max: i32,
    /// Read through the consumer's per-record `Stream` (one owned record at a time)
    /// instead of `Consumer::next_batch` (a borrowed batch at a time).
    #[arg(long)]
    per_record: bool,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// Also write the outcome (totals, latency quantiles, a 100 ms timeline) as JSON
    /// to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub(crate) async fn run(client: ClientConfig, cmd: BenchCommand) -> Result<(), Error> {
    match cmd {
        BenchCommand::Produce(b) => produce(client, b).await,
        BenchCommand::Consume(b) => consume(client, b).await,
    }
}

fn progress(count: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(count);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} records ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// What a produce run measured.
pub(crate) struct ProduceOutcome {
    /// Records acknowledged.
    pub(crate) records: u64,
    /// Value bytes acknowledged.
    pub(crate) bytes: u64,
    /// From the first send to the last acknowledgement.
    pub(crate) elapsed: Duration,
    /// Per-record latency from `send` (or its due time under `--rate`) to
    /// acknowledgement, in µs (see the module docs).
    pub(crate) latency_us: Histogram<u64>,
    /// Round trips of the Produce requests, in µs: from a request queued on its
    /// connection to its response read, without the time records spent queued in the
    /// producer ([`Producer::request_latencies_us`]).
    pub(crate) request_latency_us: Histogram<u64>,
}

fn report(what: &str, records: u64, bytes: u64, elapsed: Duration, latency_us: &Histogram<u64>) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!("{what}: {records} records, {bytes} bytes in {secs:.3} s");
    println!(
        "throughput: {:.1} MB/s, {:.0} records/s",
        bytes as f64 / secs / 1e6,
        records as f64 / secs
    );
    let ms = |q: f64| latency_us.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        ms(0.999),
        latency_us.max() as f64 / 1000.0
    );
}

async fn produce(client: ClientConfig, b: ProduceBench) -> Result<(), Error> {
    let (outcome, mut recorder) = produce_run(client, &b, -1).await?;
    if let Some(path) = &b.json {
        let params = serde_json::json!({
            "topic": b.topic, "size": b.size, "count": b.count, "partitions": b.partitions,
            "keyed": b.keyed, "rate": b.rate, "acks": b.producer.acks,
            "compression": b.producer.compression, "linger_ms": b.producer.linger_ms,
            "in_flight_per_partition": b.producer.in_flight_per_partition,
        });
        recorder.request_latency_us = Some(outcome.request_latency_us.clone());
        recorder
            .write_json(
                path,
                "produce",
                params,
                outcome.records,
                outcome.bytes,
                outcome.elapsed,
            )
            .map_err(|e| Error::Config(format!("write {}: {e}", path.display())))?;
    }
    report(
        "produced",
        outcome.records,
        outcome.bytes,
        outcome.elapsed,
        &outcome.latency_us,
    );
    let r = &outcome.request_latency_us;
    let ms = |q: f64| r.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "request latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  ({} requests)",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        ms(0.999),
        r.max() as f64 / 1000.0,
        r.len()
    );
    Ok(())
}

/// Runs a produce bench (creating the topic with `replication_factor` if missing) and
/// returns what it measured (and the recorder with its timeline); the first failed
/// delivery is the error.
async fn produce_run(
    client: ClientConfig,
    b: &ProduceBench,
    replication_factor: i16,
) -> Result<(ProduceOutcome, Recorder), Error> {
    let admin = Admin::new(client.clone())?;
    let topic = NewTopic {
        replication_factor,
        ..NewTopic::new(b.topic.clone(), b.partitions)
    };
    match admin.create_topics(&[topic]).await {
        Ok(()) => {}
        Err(Error::Broker {
            code: ResponseError::TopicAlreadyExists,
            ..
        }) => {}
        Err(e) => return Err(e),
    }
    let mut config = b.producer.config(client)?;
    // The bench waits for metadata of a topic it may just have created.
    config.metadata_wait_ms_max = 30_000;
    let producer = Producer::new(config)?;
    let partitions = producer.partitions_for(&b.topic).await?;
    println!(
        "producing {} records of {} bytes to {} ({} partitions, acks={}, compression={}, rate={})",
        b.count,
        b.size,
        b.topic,
        partitions,
        b.producer.acks,
        b.producer.compression,
        if b.rate == 0 {
            "unlimited".to_owned()
        } else {
            format!("{}/s", b.rate)
        }
    );
    // One payload shared by every record: the bench measures the client and broker, not
    // the allocator. Mixed bytes so compression has something (but not everything) to do.
    let payload = Bytes::from(
        (0..b.size)
            .map(|i| (i % 251) as u8 ^ (i / 7) as u8)
            .collect::<Vec<u8>>(),
    );
    let bar = progress(b.count, b.quiet);
    let mut tally = Tally {
        latency: Recorder::new(),
        record_bytes: b.size as u64,
        acked: 0,
        failed: 0,
        first_error: None,
    };
    let started = Instant::now();
    let run = ProduceRun {
        producer: &producer,
        b,
        payload: &payload,
        started,
        bar: &bar,
    };
    if b.rate > 0 && !b.keyed {
        paced::produce_paced_batched(&run, &mut tally).await?;
    } else if b.rate > 0 {
        produce_paced(&run, &mut tally).await?;
    } else {
        produce_flat_out(&run, &mut tally).await?;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    producer.close().await?;
    let mut request_latency_us = histogram();
    for us in producer.request_latencies_us() {
        request_latency_us.saturating_record(us.max(1));
    }
    if tally.acked + tally.failed != b.count {
        return Err(Error::Protocol(format!(
            "bench accounting: {} records sent but {} acknowledged and {} failed",
            b.count, tally.acked, tally.failed
        )));
    }
    if let Some(e) = tally.first_error {
        println!("{} records failed; first error: {e}", tally.failed);
        return Err(e);
    }
    Ok((
        ProduceOutcome {
            records: tally.acked,
            bytes: tally.acked * b.size as u64,
            elapsed,
            latency_us: tally.latency.latency_us.clone(),
            request_latency_us,
        },
        tally.latency,
    ))
}

/// What the produce loops work with: the producer, the bench's options, the one value
/// every record carries, when the run started and its progress bar.
struct ProduceRun<'a> {
    producer: &'a Producer,
    b: &'a ProduceBench,
    payload: &'a Bytes,
    started: Instant,
    bar: &'a ProgressBar,
}

/// What the produce loops count.
struct Tally {
    /// Latency histogram and the timeline of acknowledgements.
    latency: Recorder,
    /// Value bytes of one record.
    record_bytes: u64,
    acked: u64,
    failed: u64,
    first_error: Option<Error>,
}

impl Tally {
    /// Counts `records` records that share one outcome and one latency.
    fn settle(&mut self, took: Duration, records: u32, result: Result<(), Error>) {
        match result {
            Ok(()) => {
                self.acked += u64::from(records);
                self.latency.record_n(
                    took,
                    u64::from(records),
                    u64::from(records) * self.record_bytes,
                );
            }
            Err(e) => {
                self.failed += u64::from(records);
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// Gives the bench's one record the key of record `n` (if keyed): the record is built
/// once and sent by reference, so a send allocates nothing.
fn set_bench_key(b: &ProduceBench, record: &mut ProducerRecord, n: u64) {
    if b.keyed {
        record.key = Some(Bytes::from(format!("key-{}", n % 10_000)));
    }
}

/// Records the unlimited-rate loop hands the producer per call (64 KiB of 1 KiB
/// records): the producer's lock, budget and clock are taken once per group.
const SEND_GROUP_RECORDS: usize = 64;

/// Unlimited rate: waits per batch, not per record (see the module docs). Records go
/// out in groups through `try_send_many_batched` (one lock, one budget acquisition and
/// one clock read per group); a record it leaves (it has to wait for buffer space) goes
/// through `send_ref_batched`, which waits. A record's latency is its batch's: from a
/// clock mark taken before the call that queued the batch's first record to the
/// batch's acknowledgement, so the figure can only over-state a record's latency (by
/// the sends of its group before it, microseconds, plus the batch's fill time for
/// records after the first), never under-state it.
async fn produce_flat_out(run: &ProduceRun<'_>, tally: &mut Tally) -> Result<(), Error> {
    let (producer, b, payload, bar) = (run.producer, run.b, run.payload, run.bar);
    let mut batches = FuturesUnordered::new();
    // Built once: a send copies the records' bytes, so the group is reused.
    let group_len = SEND_GROUP_RECORDS.min(usize::try_from(b.count).unwrap_or(usize::MAX));
    let mut group: Vec<ProducerRecord> = (0..group_len)
        .map(|_| ProducerRecord::new(b.topic.clone(), payload.clone()))
        .collect();
    let mut opened = Vec::new();
    let mut n: u64 = 0;
    while n < b.count {
        let len = group_len.min(usize::try_from(b.count - n).unwrap_or(usize::MAX));
        let group = &mut group[..len];
        for (i, record) in group.iter_mut().enumerate() {
            set_bench_key(b, record, n + i as u64);
        }
        // A batch opened by a record that waited keeps the mark from before the wait.
        let mark = Instant::now();
        n += send_group(producer, group, &mut opened).await? as u64;
        if opened.is_empty() {
            continue;
        }
        for batch in opened.drain(..) {
            batches.push(batch.map(move |r| (mark, r)));
        }
        // A batch opened: collect the ones already settled, without waiting.
        while let Some(Some((sent_at, report))) = batches.next().now_or_never() {
            settle_batch(tally, sent_at, report);
        }
        bar.set_position(tally.acked + tally.failed);
    }
    while let Some((sent_at, report)) = batches.next().await {
        settle_batch(tally, sent_at, report);
        bar.set_position(tally.acked + tally.failed);
    }
    Ok(())
}

/// Queues a prefix of `group` without waiting (`try_send_many_batched`), and where it
/// stops before the end, the record it stopped at through `send_ref_batched`, which
/// waits for buffer space or says why the record cannot go. Returns how many records
/// were queued (at least one for a non-empty group); a batch any of them opened goes
/// into `opened`.
async fn send_group(
    producer: &Producer,
    group: &[ProducerRecord],
    opened: &mut Vec<BatchDelivery>,
) -> Result<usize, Error> {
    let mut queued = producer.try_send_many_batched(group, opened)?;
    if let Some(record) = group.get(queued) {
        opened.extend(producer.send_ref_batched(record).await?);
        queued += 1;
    }
    Ok(queued)
}

fn settle_batch(tally: &mut Tally, sent_at: Instant, report: BatchReport) {
    let took = report.settled_at.saturating_duration_since(sent_at);
    tally.settle(took, report.records, report.first.map(|_| ()));
}

/// Fixed rate with keys: every record's own latency, from its due time on the schedule
/// (or its `send`, if earlier) to its acknowledgement, through a delivery future per
/// record (keyed records share batches in no order the loop could follow; without keys
/// `paced.rs` sends in groups and waits per batch).
async fn produce_paced(run: &ProduceRun<'_>, tally: &mut Tally) -> Result<(), Error> {
    let (producer, b, payload, started, bar) =
        (run.producer, run.b, run.payload, run.started, run.bar);
    let mut inflight = FuturesUnordered::new();
    let mut record = ProducerRecord::new(b.topic.clone(), payload.clone());
    for n in 0..b.count {
        // Pace in ~1 ms bursts: the timer cannot sleep per record at high rates.
        let due = started + Duration::from_secs_f64(n as f64 / b.rate as f64);
        if due > Instant::now() + Duration::from_millis(1) {
            // Acknowledgements that arrive while the loop waits are taken as they come:
            // a latency is read when its future completes here, so one left until
            // after the sleep would be charged the rest of the sleep (up to ~2 ms with
            // tokio's 1 ms timer).
            let sleep = tokio::time::sleep_until(due.into());
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    biased;
                    () = &mut sleep => break,
                    Some((took, result)) = inflight.next(), if !inflight.is_empty() => {
                        let result: Result<rill_client::RecordMetadata, Error> = result;
                        tally.settle(took, 1, result.map(|_| ()));
                    }
                }
            }
        }
        set_bench_key(b, &mut record, n);
        // Coordinated omission: latency counts from when the schedule wanted the record
        // sent, not from when a loop held up by a slow broker got to it.
        let sent_at = Instant::now().min(due);
        let delivery = producer.send_ref(&record).await?;
        inflight.push(delivery.map(move |r| (sent_at.elapsed(), r)));
        // Collect whatever is already acknowledged, without waiting.
        while let Some(Some((took, result))) = inflight.next().now_or_never() {
            tally.settle(took, 1, result.map(|_| ()));
        }
        if n % 1024 == 0 {
            bar.set_position(tally.acked + tally.failed);
        }
    }
    while let Some((took, result)) = inflight.next().await {
        tally.settle(took, 1, result.map(|_| ()));
        if (tally.acked + tally.failed) % 1024 == 0 {
            bar.set_position(tally.acked + tally.failed);
        }
    }
    Ok(())
}

/// Awaits `next` and says how long it waited: a value ready at the first poll waited
/// one poll, counted as zero (the histogram's floor of 1 µs, an upper bound) without
/// reading the clock; otherwise the wait plus 1 µs for that first poll.
async fn await_timed<F: std::future::Future>(next: F) -> (F::Output, Duration) {
    let mut next = std::pin::pin!(next);
    match futures::poll!(&mut next) {
        Poll::Ready(value) => (value, Duration::ZERO),
        Poll::Pending => {
            let waited_from = Instant::now();
            let value = next.await;
            (value, waited_from.elapsed() + Duration::from_micros(1))
        }
    }
}

async fn consume(client: ClientConfig, b: ConsumeBench) -> Result<(), Error> {
    let mut consumer = Consumer::new(ConsumerConfig {
        client,
        partition_fetch_bytes_max: b.partition_fetch_bytes_max,
        ..ConsumerConfig::default()
    })?;
    let partitions = consumer.partitions_for(&b.topic).await?;
    if partitions == 0 {
        return Err(Error::UnknownTopic(b.topic));
    }
    let tps: Vec<TopicPartition> = (0..partitions)
        .map(|p| TopicPartition::new(b.topic.clone(), p))
        .collect();
    consumer.assign(&tps);
    for tp in &tps {
        consumer.seek(tp, Offset::Beginning)?;
    }
    println!(
        "consuming {} records (expected {} bytes each) from {} ({} partitions)",
        b.count, b.size, b.topic, partitions
    );
    let bar = progress(b.count, b.quiet);
    let mut latency = Recorder::new();
    let mut records: u64 = 0;
    let mut bytes: u64 = 0;
    let started = Instant::now();
    // Records ready at the first poll, not yet given to the recorder: they go in one
    // call (one coarse clock read) when a wait comes or every 1024 records.
    let (mut ready_records, mut ready_bytes) = (0u64, 0u64);
    while records < b.count {
        let before = records;
        let waited = if b.per_record {
            let (record, waited) = await_timed(consumer.next()).await;
            let Some(record) = record else {
                break;
            };
            let record = record?;
            let record_bytes = record.value.as_ref().map_or(0, |v| v.len() as u64)
                + record.key.as_ref().map_or(0, |k| k.len() as u64);
            records += 1;
            bytes += record_bytes;
            if waited.is_zero() {
                ready_records += 1;
                ready_bytes += record_bytes;
            } else {
                latency.record(waited, record_bytes);
            }
            waited
        } else {
            // Per batch: its first record waited, the others were ready.
            let (batch, waited) = await_timed(consumer.next_batch()).await;
            let Some(batch) = batch else {
                break;
            };
            let batch = batch?;
            let wanted = usize::try_from(b.count - records).unwrap_or(usize::MAX);
            let mut first_bytes = None;
            for r in batch.iter().take(wanted) {
                let record_bytes =
                    r.value().map_or(0, |v| v.len() as u64) + r.key().map_or(0, |k| k.len() as u64);
                records += 1;
                bytes += record_bytes;
                if first_bytes.is_none() && !waited.is_zero() {
                    first_bytes = Some(record_bytes);
                } else {
                    ready_records += 1;
                    ready_bytes += record_bytes;
                }
            }
            if let Some(first_bytes) = first_bytes {
                latency.record(waited, first_bytes);
            }
            waited
        };
        // Every 1024 records (or batch crossing a multiple of 1024) and at each wait.
        let crossed_1k = before / 1024 != records / 1024;
        if crossed_1k || !waited.is_zero() {
            latency.record_n(Duration::ZERO, ready_records, ready_bytes);
            (ready_records, ready_bytes) = (0, 0);
        }
        if crossed_1k {
            bar.set_position(records);
        }
    }
    latency.record_n(Duration::ZERO, ready_records, ready_bytes);
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    report("consumed", records, bytes, elapsed, &latency.latency_us);
    if let Some(path) = &b.json {
        let params = serde_json::json!({
            "topic": b.topic, "size": b.size, "count": b.count, "partitions": partitions,
            "partition_fetch_bytes_max": b.partition_fetch_bytes_max, "per_record": b.per_record,
        });
        latency
            .write_json(path, "consume", params, records, bytes, elapsed)
            .map_err(|e| Error::Config(format!("write {}: {e}", path.display())))?;
    }
    Ok(())
}
