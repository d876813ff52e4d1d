//! `rill bench produce|consume`: throughput and latency against a running broker. The
//! benchmark suite (`benches/`, `rill-bench suite`) starts brokers and runs these.
//!
//! Produce latency is per record, from `send` to its acknowledgement (so it includes
//! `linger_ms` and queueing behind earlier batches). Consume latency is per record, the
//! time the application waited in `next()` — near zero while prefetched records are
//! ready, a fetch round trip when they are not.
//!
//! With `--rate`, produce latency is coordinated-omission aware: it counts from each
//! record's due time on the fixed-rate schedule (or its send, if that came earlier), so
//! a stall that delays later sends shows in their latencies instead of hiding them.
//!
//! `--json FILE` writes the outcome and a 100 ms timeline for the benchmark suite
//! (`report.rs`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use report::Recorder;
use rill_client::{
    Admin, ClientConfig, Consumer, ConsumerConfig, Error, NewTopic, Offset, Producer,
    ProducerRecord, ResponseError, TopicPartition,
};

use crate::ProducerOptions;

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
    #[command(flatten)]
    producer: ProducerOptions,
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
    /// acknowledgement, in µs.
    pub(crate) latency_us: Histogram<u64>,
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
    let mut latency = Recorder::new();
    let record_bytes = b.size as u64;
    let mut inflight = FuturesUnordered::new();
    let mut acked: u64 = 0;
    let mut failed: u64 = 0;
    let mut first_error: Option<Error> = None;
    let started = Instant::now();
    for n in 0..b.count {
        let mut due = None;
        if b.rate > 0 {
            // Pace in ~1 ms bursts: the timer cannot sleep per record at high rates.
            let at = started + Duration::from_secs_f64(n as f64 / b.rate as f64);
            if at > Instant::now() + Duration::from_millis(1) {
                tokio::time::sleep_until(at.into()).await;
            }
            due = Some(at);
        }
        let mut record = ProducerRecord::new(b.topic.clone(), payload.clone());
        if b.keyed {
            record.key = Some(Bytes::from(format!("key-{}", n % 10_000)));
        }
        let mut sent_at = Instant::now();
        // Coordinated omission: latency counts from when the schedule wanted the record
        // sent, not from when a loop held up by a slow broker got to it.
        if let Some(due) = due {
            sent_at = sent_at.min(due);
        }
        let delivery = producer.send(record).await?;
        inflight.push(delivery.map(move |r| (sent_at.elapsed(), r)));
        // Collect whatever is already acknowledged, without waiting.
        while let Some(Some((took, result))) = inflight.next().now_or_never() {
            settle(
                took,
                result,
                &mut latency,
                record_bytes,
                &mut acked,
                &mut failed,
                &mut first_error,
            );
        }
        if n % 1024 == 0 {
            bar.set_position(acked + failed);
        }
    }
    while let Some((took, result)) = inflight.next().await {
        settle(
            took,
            result,
            &mut latency,
            record_bytes,
            &mut acked,
            &mut failed,
            &mut first_error,
        );
        if (acked + failed) % 1024 == 0 {
            bar.set_position(acked + failed);
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    producer.close().await?;
    if let Some(e) = first_error {
        println!("{failed} records failed; first error: {e}");
        return Err(e);
    }
    Ok((
        ProduceOutcome {
            records: acked,
            bytes: acked * b.size as u64,
            elapsed,
            latency_us: latency.latency_us.clone(),
        },
        latency,
    ))
}

fn settle(
    took: Duration,
    result: Result<rill_client::RecordMetadata, Error>,
    latency: &mut Recorder,
    record_bytes: u64,
    acked: &mut u64,
    failed: &mut u64,
    first_error: &mut Option<Error>,
) {
    match result {
        Ok(_) => {
            *acked += 1;
            latency.record(took, record_bytes);
        }
        Err(e) => {
            *failed += 1;
            first_error.get_or_insert(e);
        }
    }
}

async fn consume(client: ClientConfig, b: ConsumeBench) -> Result<(), Error> {
    let mut consumer = Consumer::new(ConsumerConfig {
        client,
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
    while records < b.count {
        let waited_from = Instant::now();
        let Some(record) = consumer.next().await else {
            break;
        };
        let record = record?;
        let record_bytes = record.value.as_ref().map_or(0, |v| v.len() as u64)
            + record.key.as_ref().map_or(0, |k| k.len() as u64);
        latency.record(waited_from.elapsed(), record_bytes);
        records += 1;
        bytes += record_bytes;
        if records % 1024 == 0 {
            bar.set_position(records);
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    report("consumed", records, bytes, elapsed, &latency.latency_us);
    if let Some(path) = &b.json {
        let params = serde_json::json!({
            "topic": b.topic, "size": b.size, "count": b.count, "partitions": partitions,
        });
        latency
            .write_json(path, "consume", params, records, bytes, elapsed)
            .map_err(|e| Error::Config(format!("write {}: {e}", path.display())))?;
    }
    Ok(())
}
