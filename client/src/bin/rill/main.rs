//! `rill`: command-line tool for Rill (and any Kafka-compatible broker).
//!
//! # Layout
//!
//! * `main.rs` — arguments (clap) and the topic/cluster/produce/consume commands.
//! * `bench.rs` — `rill bench produce|consume`: progress bar, throughput, HDR latency.
//! * `group.rs` — `rill group list|describe|delete|reset-offsets`: consumer groups.
#![forbid(unsafe_code)]

mod bench;
mod group;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use rill_client::{
    Acks, Admin, AssignmentStrategy, ClientConfig, Compression, Consumer, ConsumerConfig,
    ConsumerRecord, Error, NewTopic, Offset, OffsetReset, Producer, ProducerConfig, ProducerRecord,
    TopicPartition,
};
use tokio::io::AsyncBufReadExt;

/// Command-line tool for Rill and other Kafka-compatible brokers.
#[derive(Parser, Debug)]
#[command(name = "rill", version, about)]
struct Cli {
    /// Bootstrap broker(s), comma-separated host:port.
    #[arg(
        short = 'b',
        long = "bootstrap-server",
        env = "RILL_BOOTSTRAP",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    bootstrap: String,

    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 30_000, global = true)]
    request_timeout_ms: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce records read from stdin, one per line.
    Produce(ProduceArgs),
    /// Consume records and print them to stdout.
    Consume(ConsumeArgs),
    /// Describe the cluster: id, controller, brokers with the partitions they lead and
    /// host, under-replicated partitions (fewer in-sync replicas than replicas) and
    /// partitions without a leader.
    Cluster,
    /// Measure throughput and latency.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Manage consumer groups: members, assignments, committed offsets and lag.
    #[command(subcommand)]
    Group(group::GroupCommand),
}

#[derive(Subcommand, Debug)]
enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions (-1: the broker's default).
        #[arg(short, long, default_value_t = 1)]
        partitions: i32,
        /// Replication factor (-1: the broker's default).
        #[arg(short, long, default_value_t = -1)]
        replication_factor: i16,
        /// Topic config as key=value (repeatable), e.g. retention.ms=60000.
        #[arg(short, long = "config", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
    },
    /// List topic names.
    List,
    /// Show partitions, leaders, replicas and configs.
    Describe {
        /// Topics to describe (all if none).
        names: Vec<String>,
        /// Also list every config, not only non-default ones.
        #[arg(long)]
        all_configs: bool,
    },
    /// Delete topics.
    Delete {
        /// Topics to delete.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Change a topic's configs: set keys, or return them to their defaults.
    Alter {
        /// Topic name.
        name: String,
        /// Config to set as key=value (repeatable), e.g. retention.ms=60000.
        #[arg(short, long = "config", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
        /// Config key to return to its default (repeatable).
        #[arg(long = "delete-config")]
        delete_configs: Vec<String>,
    },
    /// Delete the records of a partition below an offset (its new log start).
    DeleteRecords {
        /// Topic name.
        name: String,
        /// Partition.
        #[arg(short, long)]
        partition: i32,
        /// Records below this offset go; -1 = the high watermark (all records).
        #[arg(short, long)]
        offset: i64,
    },
    /// Grow a topic to a new total partition count.
    AddPartitions {
        /// Topic name.
        name: String,
        /// New total number of partitions.
        #[arg(short, long)]
        partitions: i32,
    },
}

/// Producer tuning shared by `produce` and `bench produce`.
#[derive(Args, Debug, Clone)]
pub(crate) struct ProducerOptions {
    /// Acknowledgements: 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub(crate) acks: String,
    /// Compression: none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none")]
    pub(crate) compression: String,
    /// How long a batch may wait for more records, in ms.
    #[arg(long, default_value_t = 5)]
    pub(crate) linger_ms: u64,
    /// Largest batch, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub(crate) batch_bytes_max: usize,
    /// Memory for unacknowledged records, in bytes.
    #[arg(long, default_value_t = ProducerConfig::default().buffer_bytes_max)]
    pub(crate) buffer_bytes_max: usize,
    /// Batches of one partition in flight at once (Kafka's
    /// max.in.flight.requests.per.connection); at most 5 with idempotence. Without
    /// idempotence, above 1 a retried batch can land after a later one.
    #[arg(long, default_value_t = 5)]
    pub(crate) in_flight_per_partition: usize,
    /// Turn idempotence off (it applies with --acks all only): retries may then write a
    /// batch twice.
    #[arg(long)]
    pub(crate) no_idempotence: bool,
}

impl ProducerOptions {
    pub(crate) fn config(&self, client: ClientConfig) -> Result<ProducerConfig, Error> {
        Ok(ProducerConfig {
            client,
            acks: self.acks.parse::<Acks>()?,
            compression: self.compression.parse::<Compression>()?,
            linger_ms: self.linger_ms,
            batch_bytes_max: self.batch_bytes_max,
            buffer_bytes_max: self.buffer_bytes_max,
            in_flight_batches_per_partition_max: self.in_flight_per_partition,
            enable_idempotence: !self.no_idempotence,
            ..ProducerConfig::default()
        })
    }
}

#[derive(Args, Debug)]
struct ProduceArgs {
    /// Topic to produce to.
    topic: String,
    /// Split each line at the first occurrence of this string into key and value.
    #[arg(short = 'K', long)]
    key_separator: Option<String>,
    /// Header key=value added to every record (repeatable).
    #[arg(short = 'H', long = "header", value_parser = parse_key_value)]
    headers: Vec<(String, String)>,
    /// Send every record to this partition (default: by key, or sticky for no key).
    #[arg(short, long)]
    partition: Option<i32>,
    #[command(flatten)]
    producer: ProducerOptions,
}

/// How `consume` prints records.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum OutputFormat {
    /// The value only.
    Value,
    /// The key, a tab, the value (`--key-separator` changes the tab).
    Kv,
    /// One JSON object per record with topic, partition, offset, timestamp, key, value, headers.
    Json,
}

#[derive(Args, Debug)]
struct ConsumeArgs {
    /// Topic to consume.
    topic: String,
    /// Partitions to read (repeatable; default: all).
    #[arg(short, long = "partition")]
    partitions: Vec<i32>,
    /// Start at the earliest offset (the default when no other start is given).
    #[arg(long, conflicts_with_all = ["offset", "from_time", "from_end"])]
    from_beginning: bool,
    /// Start at the log end: only new records.
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    from_end: bool,
    /// Start at this offset in every selected partition.
    #[arg(short, long, conflicts_with = "from_time")]
    offset: Option<i64>,
    /// Start at the first record at or after this time: ms since the Unix epoch, or
    /// relative like -30s, -5m, -2h, -1d.
    #[arg(long, allow_hyphen_values = true)]
    from_time: Option<String>,
    /// Stop after this many records.
    #[arg(short = 'c', long)]
    count: Option<u64>,
    /// Stop once every partition is read up to the end offset it had at start.
    #[arg(short = 'e', long)]
    exit_at_end: bool,
    /// Output format.
    #[arg(short = 'f', long, value_enum, default_value_t = OutputFormat::Value)]
    format: OutputFormat,
    /// Separator between key and value in `kv` format.
    #[arg(short = 'K', long, default_value = "\t")]
    key_separator: String,
    /// Consume as a member of this consumer group (subscribe mode): the group assigns the
    /// partitions, reading resumes after the group's committed offsets (`--from-end`
    /// starts partitions without one at the end, otherwise at the beginning), and offsets
    /// are committed as records are printed and on exit (also on Ctrl-C).
    #[arg(short, long, conflicts_with_all = ["partitions", "offset", "from_time", "exit_at_end"])]
    group: Option<String>,
    /// Assignors offered to the group, preferred first: range, roundrobin,
    /// cooperative-sticky (comma-separated).
    #[arg(
        long,
        requires = "group",
        value_delimiter = ',',
        default_value = "range,cooperative-sticky"
    )]
    assignment_strategy: Vec<String>,
}

/// `haystack` split at the first occurrence of a non-empty `separator`.
fn split_once_bytes<'a>(haystack: &'a [u8], separator: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    if separator.is_empty() {
        return None;
    }
    haystack
        .windows(separator.len())
        .position(|w| w == separator)
        .map(|i| (&haystack[..i], &haystack[i + separator.len()..]))
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Parses `--from-time`: absolute ms, or `-<n><s|m|h|d>` relative to now.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        if ms >= 0 {
            return Ok(ms);
        }
    }
    let rel = s
        .strip_prefix('-')
        .ok_or_else(|| format!("bad time {s:?}: use ms since epoch or -30s/-5m/-2h/-1d"))?;
    let (digits, unit) = rel.split_at(rel.len().saturating_sub(1));
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("bad relative time {s:?}"))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("bad time unit in {s:?}")),
    };
    Ok(now_ms() - n * unit_ms)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RILL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let worker_threads = match &cli.command {
        Command::Bench(cmd) => bench::worker_threads(cmd),
        _ => None,
    };
    let runtime = match worker_threads {
        Some(threads) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build(),
        None => tokio::runtime::Runtime::new(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rill: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rill: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let mut client = ClientConfig::new(&cli.bootstrap);
    client.client_id = "rill-cli".to_owned();
    client.request_timeout_ms = cli.request_timeout_ms;
    match cli.command {
        Command::Topic(cmd) => topic(client, cmd).await,
        Command::Produce(args) => produce(client, args).await,
        Command::Consume(args) => consume(client, args).await,
        Command::Cluster => cluster(client).await,
        Command::Bench(cmd) => bench::run(client, cmd).await,
        Command::Group(cmd) => group::run(client, cmd).await,
    }
}

async fn topic(client: ClientConfig, cmd: TopicCommand) -> Result<(), Error> {
    let admin = Admin::new(client)?;
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            let mut t = NewTopic::new(name.clone(), partitions);
            t.replication_factor = replication_factor;
            t.configs = configs.into_iter().collect();
            admin.create_topics(&[t]).await?;
            println!("created topic {name}");
        }
        TopicCommand::List => {
            for name in admin.list_topics().await? {
                println!("{name}");
            }
        }
        TopicCommand::Describe { names, all_configs } => {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            for t in admin.describe_topics(&refs).await? {
                println!(
                    "topic {}  partitions {}{}",
                    t.name,
                    t.partitions.len(),
                    if t.is_internal { "  (internal)" } else { "" }
                );
                for p in &t.partitions {
                    println!(
                        "  partition {:>4}  leader {:>3}  epoch {:>4}  replicas {:?}  isr {:?}{}",
                        p.partition,
                        p.leader,
                        p.leader_epoch,
                        p.replicas,
                        p.isr,
                        if p.isr.len() < p.replicas.len() {
                            "  under-replicated"
                        } else {
                            ""
                        }
                    );
                }
                match admin.describe_topic_configs(&t.name).await {
                    Ok(configs) => {
                        for c in configs.iter().filter(|c| all_configs || !c.is_default) {
                            println!(
                                "  config {}={}",
                                c.name,
                                c.value.as_deref().unwrap_or("<null>")
                            );
                        }
                    }
                    Err(e) => println!("  configs unavailable: {e}"),
                }
            }
        }
        TopicCommand::Delete { names } => {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            admin.delete_topics(&refs).await?;
            println!("deleted {}", names.join(", "));
        }
        TopicCommand::Alter {
            name,
            configs,
            delete_configs,
        } => {
            if configs.is_empty() && delete_configs.is_empty() {
                return Err(Error::Config(
                    "nothing to alter: give --config key=value or --delete-config key".into(),
                ));
            }
            admin
                .alter_topic_configs(&name, &configs, &delete_configs)
                .await?;
            println!("altered topic {name}");
        }
        TopicCommand::DeleteRecords {
            name,
            partition,
            offset,
        } => {
            let low_watermark = admin.delete_records(&name, partition, offset).await?;
            println!("{name}-{partition} now starts at offset {low_watermark}");
        }
        TopicCommand::AddPartitions { name, partitions } => {
            admin.create_partitions(&name, partitions).await?;
            println!("topic {name} now has {partitions} partitions");
        }
    }
    Ok(())
}

async fn cluster(client: ClientConfig) -> Result<(), Error> {
    let admin = Admin::new(client)?;
    let c = admin.describe_cluster().await?;
    println!("cluster id {}", c.cluster_id);
    println!("controller {}", c.controller_id);
    let topics = admin.describe_topics(&[]).await?;
    let partitions: Vec<(&str, &rill_client::PartitionInfo)> = topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.as_str(), p)))
        .collect();
    for b in c.brokers {
        let leads = partitions
            .iter()
            .filter(|(_, p)| p.leader == b.node_id)
            .count();
        let hosts = partitions
            .iter()
            .filter(|(_, p)| p.replicas.contains(&b.node_id))
            .count();
        println!(
            "broker {}  {}:{}{}  leads {leads}  replicas {hosts}",
            b.node_id,
            b.host,
            b.port,
            b.rack.map(|r| format!("  rack {r}")).unwrap_or_default()
        );
    }
    let under: Vec<_> = partitions
        .iter()
        .filter(|(_, p)| p.isr.len() < p.replicas.len())
        .collect();
    println!(
        "partitions {}  under-replicated {}",
        partitions.len(),
        under.len()
    );
    for (topic, p) in under {
        let missing: Vec<i32> = p
            .replicas
            .iter()
            .filter(|r| !p.isr.contains(r))
            .copied()
            .collect();
        println!(
            "  under-replicated {topic}-{}  leader {}  replicas {:?}  isr {:?}  out of sync {missing:?}",
            p.partition, p.leader, p.replicas, p.isr
        );
    }
    for (topic, p) in partitions.iter().filter(|(_, p)| p.leader < 0) {
        println!(
            "  no leader {topic}-{}  replicas {:?}",
            p.partition, p.replicas
        );
    }
    print_follower_lag(&admin, &partitions).await;
    Ok(())
}

/// Most lagging followers listed one by one.
const LAGGING_FOLLOWERS_SHOWN: usize = 20;
/// How long `rill cluster` waits for a broker's log end offsets.
const LAG_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Prints each follower's lag (leader's log end minus its own, in offsets): a total per
/// broker and the most lagging partitions. A broker that does not answer is named.
async fn print_follower_lag(admin: &Admin, partitions: &[(&str, &rill_client::PartitionInfo)]) {
    let mut hosted: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    for (topic, p) in partitions {
        for &replica in &p.replicas {
            hosted
                .entry(replica)
                .or_default()
                .push((topic.to_string(), p.partition));
        }
    }
    // All brokers at once, each within LAG_QUERY_TIMEOUT: a stopped broker accepts
    // connections and never answers.
    let answers = futures::future::join_all(hosted.iter().map(|(broker, list)| async move {
        let answer = tokio::time::timeout(
            LAG_QUERY_TIMEOUT,
            admin.replica_log_end_offsets(*broker, list),
        )
        .await;
        (*broker, answer)
    }))
    .await;
    let mut ends: BTreeMap<i32, HashMap<(String, i32), i64>> = BTreeMap::new();
    for (broker, answer) in answers {
        match answer {
            Ok(Ok(found)) => {
                ends.insert(broker, found);
            }
            Ok(Err(e)) => println!("broker {broker}: log end offsets unavailable ({e})"),
            Err(_) => println!(
                "broker {broker}: log end offsets unavailable (no answer within {} s)",
                LAG_QUERY_TIMEOUT.as_secs()
            ),
        }
    }
    // (lag, topic, partition, follower, leader)
    let mut lagging: Vec<(i64, &str, i32, i32, i32)> = Vec::new();
    let mut total_by_broker: BTreeMap<i32, i64> = BTreeMap::new();
    for (topic, p) in partitions {
        let key = (topic.to_string(), p.partition);
        let Some(leader_end) = ends.get(&p.leader).and_then(|e| e.get(&key)) else {
            continue;
        };
        for &follower in p.replicas.iter().filter(|r| **r != p.leader) {
            let Some(end) = ends.get(&follower).and_then(|e| e.get(&key)) else {
                continue;
            };
            let lag = (leader_end - end).max(0);
            *total_by_broker.entry(follower).or_default() += lag;
            if lag > 0 {
                lagging.push((lag, topic, p.partition, follower, p.leader));
            }
        }
    }
    for (broker, total) in &total_by_broker {
        println!("follower lag  broker {broker}  {total} offsets behind its leaders in all");
    }
    lagging.sort_by_key(|l| std::cmp::Reverse(l.0));
    for (lag, topic, partition, follower, leader) in lagging.iter().take(LAGGING_FOLLOWERS_SHOWN) {
        println!("  lagging {topic}-{partition}  follower {follower}  {lag} offsets behind leader {leader}");
    }
    if lagging.len() > LAGGING_FOLLOWERS_SHOWN {
        println!(
            "  ... and {} more lagging replicas",
            lagging.len() - LAGGING_FOLLOWERS_SHOWN
        );
    }
}

async fn produce(client: ClientConfig, args: ProduceArgs) -> Result<(), Error> {
    let producer = Producer::new(args.producer.config(client)?)?;
    // Async stdin, so reading never blocks a runtime thread the sender needs; lines are
    // bytes (values need not be UTF-8).
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line: Vec<u8> = Vec::new();
    let mut pending = Vec::new();
    let mut sent: u64 = 0;
    loop {
        line.clear();
        let n = lines
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| Error::Config(format!("reading stdin: {e}")))?;
        if n == 0 {
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let (key, value) = match &args.key_separator {
            Some(sep) => match split_once_bytes(text, sep.as_bytes()) {
                Some((k, v)) => (Some(Bytes::copy_from_slice(k)), v),
                None => (None, text),
            },
            None => (None, text),
        };
        let mut record = ProducerRecord::new(args.topic.clone(), Bytes::copy_from_slice(value));
        record.key = key;
        record.partition = args.partition;
        for (k, v) in &args.headers {
            record = record.with_header(k.clone(), Bytes::copy_from_slice(v.as_bytes()));
        }
        pending.push(producer.send(record).await?);
        sent += 1;
        // Settle reports as we go so memory stays bounded on long inputs.
        if pending.len() >= 10_000 {
            for d in pending.drain(..) {
                d.await?;
            }
        }
    }
    producer.flush().await?;
    for d in pending {
        d.await?;
    }
    producer.close().await?;
    eprintln!("produced {sent} record(s) to {}", args.topic);
    Ok(())
}

/// How long `consume --group` waits for a record before it flushes what it printed and
/// commits it.
const GROUP_IDLE_COMMIT_MS: u64 = 200;
/// `consume --group` flushes and commits at least every this many records.
const GROUP_COMMIT_RECORDS: u64 = 1024;

/// `rill consume --group`: a subscribed member that commits as it goes and leaves the
/// group on exit. Offsets are committed only after the records before them were flushed
/// to stdout (so auto commit, which could commit records still in the buffer, is off):
/// a record is never lost, and at most the records since the last commit are printed
/// again by the next owner of a partition after a rebalance or a crash.
async fn consume_group(
    client: ClientConfig,
    args: ConsumeArgs,
    group: String,
) -> Result<(), Error> {
    let strategies = args
        .assignment_strategy
        .iter()
        .map(|s| s.trim().parse::<AssignmentStrategy>())
        .collect::<Result<Vec<_>, _>>()?;
    let config = ConsumerConfig {
        client,
        group_id: Some(group),
        assignment_strategies: strategies,
        auto_offset_reset: if args.from_end {
            OffsetReset::Latest
        } else {
            OffsetReset::Earliest
        },
        enable_auto_commit: false,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(config)?;
    consumer.subscribe(&[args.topic.as_str()])?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut consumed: u64 = 0;
    let mut uncommitted: u64 = 0;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let idle = Duration::from_millis(GROUP_IDLE_COMMIT_MS);
    let result: Result<(), Error> = loop {
        let next = tokio::select! {
            r = tokio::time::timeout(idle, consumer.next()) => r,
            _ = &mut interrupted => break Ok(()),
        };
        let record = match next {
            Err(_idle) => {
                if uncommitted > 0 {
                    if let Err(e) = flush_and_commit(&mut out, &consumer).await {
                        break Err(e);
                    }
                    uncommitted = 0;
                }
                continue;
            }
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(e),
            Ok(Some(Ok(r))) => r,
        };
        if let Err(e) = print_record(&mut out, &record, args.format, &args.key_separator) {
            break Err(Error::Config(format!("writing stdout: {e}")));
        }
        consumed += 1;
        uncommitted += 1;
        if args.count.is_some_and(|c| consumed >= c) {
            break Ok(());
        }
        if uncommitted >= GROUP_COMMIT_RECORDS {
            if let Err(e) = flush_and_commit(&mut out, &consumer).await {
                break Err(e);
            }
            uncommitted = 0;
        }
    };
    let committed = flush_and_commit(&mut out, &consumer).await;
    let closed = consumer.close().await;
    result.and(committed).and(closed)
}

/// Flushes stdout, then commits the positions of the records printed.
async fn flush_and_commit(out: &mut impl Write, consumer: &Consumer) -> Result<(), Error> {
    out.flush()
        .map_err(|e| Error::Config(format!("writing stdout: {e}")))?;
    consumer.commit_sync().await
}

async fn consume(client: ClientConfig, args: ConsumeArgs) -> Result<(), Error> {
    if let Some(group) = args.group.clone() {
        return consume_group(client, args, group).await;
    }
    let config = ConsumerConfig {
        client: client.clone(),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(config)?;
    let partitions: Vec<i32> = if args.partitions.is_empty() {
        (0..consumer.partitions_for(&args.topic).await?).collect()
    } else {
        args.partitions.clone()
    };
    if partitions.is_empty() {
        return Err(Error::UnknownTopic(args.topic));
    }
    let tps: Vec<TopicPartition> = partitions
        .iter()
        .map(|p| TopicPartition::new(args.topic.clone(), *p))
        .collect();
    consumer.assign(&tps);
    let start = if let Some(o) = args.offset {
        Offset::At(o)
    } else if let Some(t) = &args.from_time {
        Offset::Timestamp(parse_time(t).map_err(Error::Config)?)
    } else if args.from_end {
        Offset::End
    } else {
        Offset::Beginning
    };
    for tp in &tps {
        consumer.seek(tp, start)?;
    }
    // With --exit-at-end: the end offset each partition had at start.
    let mut remaining_ends: HashMap<i32, i64> = HashMap::new();
    if args.exit_at_end {
        for tp in &tps {
            let end = consumer.latest_offset(tp).await?;
            let begin = match start {
                Offset::At(o) => o,
                Offset::End => end,
                _ => consumer.earliest_offset(tp).await?,
            };
            if end > begin {
                remaining_ends.insert(tp.partition, end);
            }
        }
        if remaining_ends.is_empty() {
            return Ok(());
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut consumed: u64 = 0;
    while let Some(record) = consumer.next().await {
        let record = record?;
        print_record(&mut out, &record, args.format, &args.key_separator)
            .map_err(|e| Error::Config(format!("writing stdout: {e}")))?;
        consumed += 1;
        if args.count.is_some_and(|c| consumed >= c) {
            break;
        }
        if args.exit_at_end {
            if let Some(end) = remaining_ends.get(&record.partition) {
                if record.offset + 1 >= *end {
                    remaining_ends.remove(&record.partition);
                }
            }
            if remaining_ends.is_empty() {
                break;
            }
        }
        // Keep interactive use responsive without a flush per record.
        if consumed % 1024 == 0 {
            let _ = out.flush();
        }
    }
    out.flush()
        .map_err(|e| Error::Config(format!("writing stdout: {e}")))?;
    Ok(())
}

fn print_record(
    out: &mut impl Write,
    r: &ConsumerRecord,
    format: OutputFormat,
    key_separator: &str,
) -> std::io::Result<()> {
    let value = r.value.as_deref().unwrap_or_default();
    match format {
        OutputFormat::Value => {
            out.write_all(value)?;
            out.write_all(b"\n")
        }
        OutputFormat::Kv => {
            out.write_all(r.key.as_deref().unwrap_or_default())?;
            out.write_all(key_separator.as_bytes())?;
            out.write_all(value)?;
            out.write_all(b"\n")
        }
        OutputFormat::Json => {
            write!(
                out,
                "{{\"topic\":{},\"partition\":{},\"offset\":{},\"timestamp\":{},\"key\":{},\"value\":{},\"headers\":{{",
                json_str(r.topic.as_bytes()),
                r.partition,
                r.offset,
                r.timestamp_ms,
                r.key.as_deref().map_or_else(|| "null".to_owned(), json_str),
                r.value.as_deref().map_or_else(|| "null".to_owned(), json_str),
            )?;
            for (i, h) in r.headers.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write!(
                    out,
                    "{}:{}",
                    json_str(h.key.as_bytes()),
                    h.value
                        .as_deref()
                        .map_or_else(|| "null".to_owned(), json_str)
                )?;
            }
            out.write_all(b"}}\n")
        }
    }
}

/// A JSON string literal of (lossily UTF-8 decoded) bytes.
fn json_str(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_absolute_times_parse() {
        assert_eq!(parse_time("1700000000000").unwrap(), 1_700_000_000_000);
        let t = parse_time("-5m").unwrap();
        assert!((now_ms() - t - 300_000).abs() < 5_000);
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn key_separator_splits_at_the_first_occurrence_only() {
        assert_eq!(
            split_once_bytes(b"k::v::w", b"::"),
            Some((&b"k"[..], &b"v::w"[..]))
        );
        assert_eq!(split_once_bytes(b"no separator", b":"), None);
        assert_eq!(split_once_bytes(b"x", b""), None);
    }

    #[test]
    fn json_escapes_control_characters_and_quotes() {
        assert_eq!(json_str(b"a\"b\\c\nd\x01"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn cli_parses_bench_flags() {
        let cli = Cli::try_parse_from([
            "rill",
            "bench",
            "produce",
            "t",
            "--size",
            "1024",
            "--count",
            "1000",
            "--partitions",
            "8",
            "--acks",
            "1",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Bench(_)));
    }
}
