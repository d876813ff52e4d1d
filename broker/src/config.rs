//! Broker configuration: one home for every key (STYLE §9).
//!
//! Sources, later ones overriding earlier ones: built-in defaults, the TOML file
//! given by `--config`, then command-line flags. Every key is a field of [`Config`],
//! documented where it is declared, and [`Config::load`] checks all of them at
//! start-up with an error that names the offending key. The TOML keys and the flag
//! names are the same words (`data_dir` in the file, `--data-dir` on the command line).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

/// When an acks=-1 produce is answered, and what consumers may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every append is flushed to disk (fdatasync/msync) before it is acknowledged
    /// to an acks=-1 producer or shown to consumers. Concurrent produces to a
    /// partition share one flush (group commit). Risk: none from a crash of the
    /// broker or the machine, as long as the disk honours flushes; cost: one flush
    /// latency per produce round trip.
    Fsync,
    /// Appends are acknowledged (acks=-1 and acks=1 alike) as soon as they are in the
    /// page cache, and every partition is flushed each `flush_interval_ms`. Risk: a
    /// power loss or kernel crash loses up to `flush_interval_ms` of acknowledged
    /// records (a crash of only the `rilld` process loses nothing: the page cache
    /// survives it).
    Interval,
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Fsync => "fsync",
            Durability::Interval => "interval",
        })
    }
}

/// The validated broker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `listen`: address of the Kafka client port. Default `127.0.0.1:9092`.
    pub listen: SocketAddr,
    /// `advertised_listen`: host:port that Metadata tells clients to connect to.
    /// Default: the bound `listen` address (after resolving port 0); required when
    /// `listen` is a wildcard address such as 0.0.0.0.
    pub advertised_listen: Option<String>,
    /// `admin_listen`: address of the admin HTTP port serving `GET /metrics`
    /// (Prometheus text). Default `127.0.0.1:9644`; `off` disables it.
    pub admin_listen: Option<SocketAddr>,
    /// `node_id`: this broker's id in Metadata and DescribeCluster. Default 1.
    pub node_id: i32,
    /// `inter_broker_listen`: where peer brokers connect for replication (the Raft
    /// messages of every group). Default `127.0.0.1:9093`; bound only in a cluster
    /// (`controller_voters` set).
    pub inter_broker_listen: SocketAddr,
    /// `controller_voters`: the brokers of the cluster's metadata group, as
    /// `id@host:port` of their `inter_broker_listen`, comma-separated
    /// (`1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293`). Empty (the default):
    /// this broker is a cluster of one. A broker whose `node_id` is not among them
    /// joins the cluster as a learner of the metadata group (KRaft: an observer): it
    /// hosts replicas and serves clients like any broker, but never votes for or
    /// becomes the controller (see [`crate::cluster`]).
    pub controller_voters: Vec<(i32, SocketAddr)>,
    /// `cluster_id`: the id every broker of the cluster shares (Kafka's formatted
    /// cluster id), checked in each inter-broker handshake and returned by Metadata and
    /// DescribeCluster. 1 to 255 bytes of ASCII letters, digits, `-`, `_` and `.`.
    /// Default: in a cluster, a UUID derived from the `controller_voters` text (so
    /// brokers started with the same list agree without being told); on a single node,
    /// the id kept in its data directory. Set it when the brokers do not all see the
    /// same `controller_voters` text (each broker reaching its peers through its own
    /// addresses: NAT, proxies) or to keep the id when the voters' addresses change.
    pub cluster_id: Option<String>,
    /// `data_dir`: where partition logs and topic metadata live. Default `./rill-data`.
    pub data_dir: PathBuf,
    /// `auto_create_topics`: create a topic (with `default_partitions`) when a
    /// Metadata request that allows auto-creation names an unknown one, as producers
    /// do before producing. Produce itself never creates topics (like Kafka).
    /// Default true.
    pub auto_create_topics: bool,
    /// `default_partitions`: partitions of auto-created topics and of CreateTopics
    /// requests that pass -1. Default 1. Range 1..=10000.
    pub default_partitions: i32,
    /// `socket_request_max_bytes`: largest request frame accepted; a larger one is
    /// refused before its body is allocated and the connection is closed.
    /// Default 104857600 (100 MiB). Range 1024..=2147483647.
    pub socket_request_max_bytes: usize,
    /// `non_produce_request_max_bytes`: largest frame accepted for any API other than
    /// Produce (whose record batches are the only legitimately large bodies). Decoded
    /// request structures take up to ~80x their wire bytes (e.g. an array of
    /// 2-byte empty strings becomes 2 heap structs of ~80 bytes), so this bounds the
    /// memory one request can make the broker allocate; a larger frame is refused from
    /// its header, before its body is buffered, and the connection is closed.
    /// Default 4194304 (4 MiB). Range 1024..=2147483647.
    pub non_produce_request_max_bytes: usize,
    /// `connections_max`: client connections served at once; further connections
    /// are accepted and closed immediately. Default 1024. Range 1..=1000000.
    pub connections_max: usize,
    /// `requests_in_flight_max`: requests of one connection read ahead and being
    /// handled while earlier responses are outstanding (pipelining); at the limit
    /// the broker stops reading from that socket. Default 32. Range 1..=1024.
    pub requests_in_flight_max: usize,
    /// `queued_request_max_bytes`: broker-wide budget of request bytes in flight, taken
    /// from each frame's size prefix before its body is read and given back when its
    /// response has been written (or the request is dropped). When it is used up,
    /// connections stop reading (back-pressure) instead of allocating; a frame larger
    /// than the whole budget closes its connection. A frame of at most 8 KiB may use
    /// its connection's own 8 KiB allowance instead, so small requests are served while
    /// the budget is used up. With `connections_max` (times 8 KiB for the allowances)
    /// it bounds the memory request bodies can take. Default 536870912 (512 MiB).
    /// Range 1024..=68719476736 (64 GiB).
    pub queued_request_max_bytes: usize,
    /// `connections_max_per_ip`: client connections served at once from one IP
    /// address; further ones are accepted and closed immediately, so one host cannot
    /// take every slot of `connections_max`. Default 1000. Range 1..=1000000.
    pub connections_max_per_ip: usize,
    /// `connections_max_idle_ms`: a connection with no request in progress and no
    /// byte received or response written for this long is closed (Kafka's
    /// connections.max.idle.ms); so is one whose peer does not read a response for this
    /// long. Default 600000 (10 min). Range 100..=86400000.
    pub connections_max_idle_ms: u64,
    /// `request_read_timeout_ms`: once the first byte of a request frame has arrived,
    /// the rest must arrive within this long or the connection is closed, so a peer
    /// that sends part of a frame and stalls cannot hold its buffer and budget.
    /// Time spent waiting for `queued_request_max_bytes` counts too, so stalled peers
    /// cannot queue for the budget ahead of others for long (a client has given up on
    /// such a request after its own request.timeout.ms, 30 s by default).
    /// Default 30000. Range 10..=3600000.
    pub request_read_timeout_ms: u64,
    /// `durability`: `fsync` (default) or `interval`; see [`Durability`].
    pub durability: Durability,
    /// `flush_interval_ms`: with `durability = "interval"`, how often every partition
    /// is flushed. Default 1000. Range 1..=3600000.
    pub flush_interval_ms: u64,
    /// `journal_bytes`: size of the data directory's shared journal (`meta/journal`),
    /// through which one fdatasync makes the new bytes of many partitions durable
    /// (group commit across partitions). Written with zeros when created; when full,
    /// the journalled segment files are synced in place and it starts over.
    /// Default 67108864 (64 MiB). Range 1048576..=4294967296.
    pub journal_bytes: u64,
    /// `retention_check_interval_ms`: how often retention deletes expired segments.
    /// Default 300000 (5 min, like Kafka). Range 100..=86400000.
    pub retention_check_interval_ms: u64,
    /// `log_cleaner_io_bytes_per_second`: the log cleaner's read plus write rate bound
    /// (one cleaner thread per data directory compacts `cleanup.policy=compact` topics).
    /// Default 104857600 (100 MiB/s). Range 1048576..=10737418240.
    pub log_cleaner_io_bytes_per_second: u64,
    /// `log_cleaner_backoff_ms`: how long the cleaner sleeps when no log is dirty
    /// enough (Kafka's `log.cleaner.backoff.ms`). Default 15000. Range 10..=3600000.
    pub log_cleaner_backoff_ms: u64,
    /// `log_cleaner_dedupe_buffer_bytes`: memory budget of one cleaning pass's key map
    /// (Kafka's `log.cleaner.dedupe.buffer.size`); a log with more distinct dirty
    /// keys is cleaned in several passes. Default 33554432 (32 MiB). Range
    /// 65536..=4294967296.
    pub log_cleaner_dedupe_buffer_bytes: u64,
    /// `producer_id_expiration_ms`: an idempotent producer that wrote nothing to a
    /// partition for this long is forgotten there (its next batch with a sequence other
    /// than 0 gets UNKNOWN_PRODUCER_ID; Kafka's `producer.id.expiration.ms`). Checked with
    /// retention, every `retention_check_interval_ms`. Default 86400000 (1 day).
    /// Range 1000..=2147483647.
    pub producer_id_expiration_ms: u64,
    /// `producer_snapshot_interval_ms`: a partition whose idempotent producers wrote
    /// snapshots their state (`producer-state.snapshot` next to its segments, written by
    /// the persist thread) at most this often, and also after each segment's worth of
    /// bytes, so a restart reads only the log after the snapshot. Default 30000.
    /// Range 10..=3600000.
    pub producer_snapshot_interval_ms: u64,
    /// `fetch_wait_ms_max`: upper bound on a Fetch request's max_wait_ms, so a
    /// client cannot park a request for longer. Default 30000. Range 0..=300000.
    pub fetch_wait_ms_max: u64,
    /// `replica_lag_time_max_ms`: in a cluster, a follower that has not caught up with
    /// its leader's log end for this long leaves the partition's in-sync replicas
    /// (Kafka's `replica.lag.time.max.ms`). Default 30000. Range 100..=3600000.
    pub replica_lag_time_max_ms: u64,
    /// `offsets_topic_partitions`: partitions of `__consumer_offsets`, created on the first
    /// group request (Kafka's `offsets.topic.num.partitions`). A group's coordinator is
    /// the leader of partition `abs(java_hash(group)) % offsets_topic_partitions`, so the
    /// count must not change once the topic exists. Default 50. Range 1..=1000.
    pub offsets_topic_partitions: i32,
    /// `group_initial_rebalance_delay_ms`: how long a new (empty) group waits for more
    /// members before its first rebalance completes (Kafka's
    /// `group.initial.rebalance.delay.ms`). Default 3000. Range 0..=300000.
    pub group_initial_rebalance_delay_ms: u64,
    /// `offsets_retention_minutes`: committed offsets of a group without members expire this
    /// long after the later of their commit and the moment the group became empty (Kafka's
    /// `offsets.retention.minutes`, KIP-211). Default 10080 (7 days). Range 1..=52560000.
    pub offsets_retention_minutes: u64,
    /// `shutdown_timeout_ms`: on SIGINT/SIGTERM, how long in-flight requests get to
    /// finish before the broker flushes and exits anyway. Default 10000.
    pub shutdown_timeout_ms: u64,
    /// `leader_balance_interval_ms`: in a cluster, how often a broker hands each
    /// partition it leads back to its preferred replica (the first of its assignment,
    /// which placement spreads evenly) when that replica is live and caught up; 0
    /// turns the balancer off. Default 30000. Range 0..=86400000.
    pub leader_balance_interval_ms: u64,
    /// `metadata_checkpoint_records`: in a cluster, the controller writes a checkpoint
    /// of the whole metadata image into the metadata log after this many records, and
    /// every broker then deletes the metadata log's segments below it (a broker that
    /// falls behind the trimmed log catches up from the checkpoint). Default 1000.
    /// Range 1..=1000000.
    pub metadata_checkpoint_records: u64,
    /// `debug_flush_delay_ms`: FOR TESTS ONLY. Sleep this long before every partition
    /// flush, to make the order "flush, then acknowledge" observable. Default 0.
    pub debug_flush_delay_ms: u64,
    /// `debug_deferred_sync_delay_ms`: FOR TESTS ONLY. Sleep this long before each
    /// piece of deferred sync work (a rolled segment's index syncs and trim, the
    /// recovery-point checkpoint, producer-state snapshots), so a test can cut the
    /// power while that work is still pending. Default 0.
    pub debug_deferred_sync_delay_ms: u64,
    /// `log_dir_free_bytes_min`: creating partitions (CreateTopics, CreatePartitions,
    /// auto-creation) is refused with KAFKA_STORAGE_ERROR while the file system of
    /// `data_dir` has fewer bytes than this available (statvfs `f_bavail`), so new
    /// partitions stop well before a full disk fails every produce. Existing
    /// partitions keep taking writes. Default 1073741824 (1 GiB); 0 disables the
    /// check. Range 0..=9223372036854775807.
    pub log_dir_free_bytes_min: u64,
    /// Topic config defaults for topics that do not set their own.
    pub topic_defaults: TopicDefaults,
}

/// Broker-wide defaults of the per-topic configs (Kafka's `log.*` broker keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDefaults {
    /// `log_retention_ms` (topic `retention.ms`): delete closed segments whose newest
    /// record is older than this; -1 keeps forever. Default 604800000 (7 days).
    pub retention_ms: i64,
    /// `log_retention_bytes` (topic `retention.bytes`): delete oldest closed segments
    /// while the partition is larger than this; -1 means no size limit. Default -1.
    pub retention_bytes: i64,
    /// `log_segment_bytes` (topic `segment.bytes`): roll a new segment at this size.
    /// Default 134217728 (128 MiB; Kafka's is 1 GiB). The active segment file is
    /// allocated in steps as it fills (1 MiB first), so an idle partition reserves
    /// about 1 MiB, not this much.
    /// Range 1048576..=2147483647 (index file positions are u32).
    pub segment_bytes: i64,
    /// `log_segment_ms` (topic `segment.ms`): roll a segment older than this.
    /// Default 604800000 (7 days).
    pub segment_ms: i64,
    /// `message_max_bytes` (topic `max.message.bytes`): largest record batch a
    /// producer may send. Default 1048588 (Kafka's). Range 64..=2147483647.
    pub max_message_bytes: i64,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        TopicDefaults {
            retention_ms: 604_800_000,
            retention_bytes: -1,
            segment_bytes: 134_217_728,
            segment_ms: 604_800_000,
            max_message_bytes: 1_048_588,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:9092".parse().expect("literal address"),
            advertised_listen: None,
            admin_listen: Some("127.0.0.1:9644".parse().expect("literal address")),
            node_id: 1,
            inter_broker_listen: SocketAddr::from(([127, 0, 0, 1], 9093)),
            controller_voters: Vec::new(),
            cluster_id: None,
            data_dir: PathBuf::from("./rill-data"),
            auto_create_topics: true,
            default_partitions: 1,
            socket_request_max_bytes: 100 * 1024 * 1024,
            non_produce_request_max_bytes: 4 * 1024 * 1024,
            connections_max: 1024,
            requests_in_flight_max: 32,
            queued_request_max_bytes: 512 * 1024 * 1024,
            connections_max_per_ip: 1000,
            connections_max_idle_ms: 600_000,
            request_read_timeout_ms: 30_000,
            durability: Durability::Fsync,
            flush_interval_ms: 1000,
            journal_bytes: 64 << 20,
            retention_check_interval_ms: 300_000,
            log_cleaner_io_bytes_per_second: 100 << 20,
            log_cleaner_backoff_ms: 15_000,
            log_cleaner_dedupe_buffer_bytes: 32 << 20,
            producer_id_expiration_ms: 86_400_000,
            producer_snapshot_interval_ms: 30_000,
            fetch_wait_ms_max: 30_000,
            replica_lag_time_max_ms: 30_000,
            offsets_topic_partitions: 50,
            group_initial_rebalance_delay_ms: 3000,
            offsets_retention_minutes: 10_080,
            shutdown_timeout_ms: 10_000,
            leader_balance_interval_ms: 30_000,
            metadata_checkpoint_records: 1_000,
            debug_flush_delay_ms: 0,
            debug_deferred_sync_delay_ms: 0,
            log_dir_free_bytes_min: 1024 * 1024 * 1024,
            topic_defaults: TopicDefaults::default(),
        }
    }
}

/// A configuration error; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown key or a wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message (it names the key).
        message: String,
    },
    /// A key has a value outside its range.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The key, as written in the TOML file.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The TOML file: every key optional, unknown keys rejected (a typo must not be
/// silently ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    advertised_listen: Option<String>,
    admin_listen: Option<String>,
    node_id: Option<i32>,
    inter_broker_listen: Option<String>,
    controller_voters: Option<String>,
    cluster_id: Option<String>,
    data_dir: Option<PathBuf>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<i32>,
    socket_request_max_bytes: Option<i64>,
    non_produce_request_max_bytes: Option<i64>,
    connections_max: Option<i64>,
    requests_in_flight_max: Option<i64>,
    queued_request_max_bytes: Option<i64>,
    connections_max_per_ip: Option<i64>,
    connections_max_idle_ms: Option<i64>,
    request_read_timeout_ms: Option<i64>,
    durability: Option<Durability>,
    flush_interval_ms: Option<i64>,
    journal_bytes: Option<i64>,
    retention_check_interval_ms: Option<i64>,
    log_cleaner_io_bytes_per_second: Option<i64>,
    log_cleaner_backoff_ms: Option<i64>,
    log_cleaner_dedupe_buffer_bytes: Option<i64>,
    producer_id_expiration_ms: Option<i64>,
    producer_snapshot_interval_ms: Option<i64>,
    fetch_wait_ms_max: Option<i64>,
    replica_lag_time_max_ms: Option<i64>,
    offsets_topic_partitions: Option<i64>,
    group_initial_rebalance_delay_ms: Option<i64>,
    offsets_retention_minutes: Option<i64>,
    shutdown_timeout_ms: Option<i64>,
    leader_balance_interval_ms: Option<i64>,
    metadata_checkpoint_records: Option<i64>,
    debug_flush_delay_ms: Option<i64>,
    debug_deferred_sync_delay_ms: Option<i64>,
    log_dir_free_bytes_min: Option<i64>,
    log_retention_ms: Option<i64>,
    log_retention_bytes: Option<i64>,
    log_segment_bytes: Option<i64>,
    log_segment_ms: Option<i64>,
    message_max_bytes: Option<i64>,
}

/// Command-line flags of `rilld`. Each overrides the TOML key of the same name.
#[derive(Debug, Default, Parser)]
#[command(
    name = "rilld",
    version,
    about = "Rill broker: a Kafka-compatible log broker"
)]
pub struct Cli {
    /// TOML config file; flags override its keys.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kafka client port address [default: 127.0.0.1:9092].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// host:port advertised in Metadata [default: the bound listen address].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertised_listen: Option<String>,
    /// Admin HTTP address serving /metrics, or `off` [default: 127.0.0.1:9644].
    #[arg(long, value_name = "ADDR|off")]
    pub admin_listen: Option<String>,
    /// Broker id [default: 1].
    #[arg(long)]
    pub node_id: Option<i32>,
    /// Address peers connect to for replication [default: 127.0.0.1:9093].
    #[arg(long, value_name = "ADDR")]
    pub inter_broker_listen: Option<String>,
    /// The cluster's metadata voters, `id@host:port,...` [default: none: one node].
    #[arg(long, value_name = "ID@HOST:PORT,...")]
    pub controller_voters: Option<String>,
    /// The cluster's id, shared by every broker [default: derived from
    /// --controller-voters, or kept in the data directory of a single node].
    #[arg(long, value_name = "ID")]
    pub cluster_id: Option<String>,
    /// Data directory [default: ./rill-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Create unknown topics named in Metadata requests [default: true].
    #[arg(long, value_name = "BOOL")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics [default: 1].
    #[arg(long)]
    pub default_partitions: Option<i32>,
    /// Largest request frame in bytes [default: 104857600].
    #[arg(long)]
    pub socket_request_max_bytes: Option<i64>,
    /// Largest request frame in bytes for APIs other than Produce [default: 4194304].
    #[arg(long)]
    pub non_produce_request_max_bytes: Option<i64>,
    /// Maximum concurrent client connections [default: 1024].
    #[arg(long)]
    pub connections_max: Option<i64>,
    /// Pipelined requests in flight per connection [default: 32].
    #[arg(long)]
    pub requests_in_flight_max: Option<i64>,
    /// Broker-wide budget of request bytes in flight [default: 536870912].
    #[arg(long)]
    pub queued_request_max_bytes: Option<i64>,
    /// Maximum concurrent client connections from one IP address [default: 1000].
    #[arg(long)]
    pub connections_max_per_ip: Option<i64>,
    /// Close connections idle for this long [default: 600000].
    #[arg(long)]
    pub connections_max_idle_ms: Option<i64>,
    /// Deadline for a started request frame to arrive whole [default: 30000].
    #[arg(long)]
    pub request_read_timeout_ms: Option<i64>,
    /// fsync (flush before acks=-1 ack, group commit) or interval [default: fsync].
    #[arg(long, value_enum)]
    pub durability: Option<Durability>,
    /// Flush period with --durability interval [default: 1000].
    #[arg(long)]
    pub flush_interval_ms: Option<i64>,
    /// Size of the shared journal that group-commits many partitions [default: 67108864].
    #[arg(long)]
    pub journal_bytes: Option<i64>,
    /// Retention check period [default: 300000].
    #[arg(long)]
    pub retention_check_interval_ms: Option<i64>,
    /// Log cleaner I/O rate bound, bytes/s [default: 104857600].
    #[arg(long)]
    pub log_cleaner_io_bytes_per_second: Option<i64>,
    /// Log cleaner sleep when nothing is dirty enough [default: 15000].
    #[arg(long)]
    pub log_cleaner_backoff_ms: Option<i64>,
    /// Log cleaner key-map budget per pass [default: 33554432].
    #[arg(long)]
    pub log_cleaner_dedupe_buffer_bytes: Option<i64>,
    /// Idle time after which a partition forgets an idempotent producer [default: 86400000].
    #[arg(long)]
    pub producer_id_expiration_ms: Option<i64>,
    /// How often a partition snapshots its idempotent producers' state [default: 30000].
    #[arg(long)]
    pub producer_snapshot_interval_ms: Option<i64>,
    /// Upper bound on Fetch max_wait_ms [default: 30000].
    #[arg(long)]
    pub fetch_wait_ms_max: Option<i64>,
    /// In a cluster: how long a follower may lag before it leaves the in-sync replicas
    /// [default: 30000].
    #[arg(long)]
    pub replica_lag_time_max_ms: Option<i64>,
    /// Partitions of `__consumer_offsets` [default: 50].
    #[arg(long)]
    pub offsets_topic_partitions: Option<i64>,
    /// A new group's wait for more members before its first rebalance [default: 3000].
    #[arg(long)]
    pub group_initial_rebalance_delay_ms: Option<i64>,
    /// Committed offsets of an empty group expire after this long [default: 10080].
    #[arg(long)]
    pub offsets_retention_minutes: Option<i64>,
    /// Grace period for in-flight requests at shutdown [default: 10000].
    #[arg(long)]
    pub shutdown_timeout_ms: Option<i64>,
    /// Period of handing partitions back to their preferred leaders; 0 = off
    /// [default: 30000].
    #[arg(long)]
    pub leader_balance_interval_ms: Option<i64>,
    /// Metadata records between checkpoints of the metadata image, below which the
    /// metadata log is deleted [default: 1000].
    #[arg(long)]
    pub metadata_checkpoint_records: Option<i64>,
    /// TESTS ONLY: delay before every flush [default: 0].
    #[arg(long)]
    pub debug_flush_delay_ms: Option<i64>,
    /// TESTS ONLY: delay before every piece of deferred sync work [default: 0].
    #[arg(long)]
    pub debug_deferred_sync_delay_ms: Option<i64>,
    /// Refuse new partitions while the data directory has less free space than
    /// this; 0 disables [default: 1073741824].
    #[arg(long)]
    pub log_dir_free_bytes_min: Option<i64>,
    /// Default retention.ms of topics [default: 604800000].
    #[arg(long)]
    pub log_retention_ms: Option<i64>,
    /// Default retention.bytes of topics [default: -1].
    #[arg(long)]
    pub log_retention_bytes: Option<i64>,
    /// Default segment.bytes of topics [default: 134217728].
    #[arg(long)]
    pub log_segment_bytes: Option<i64>,
    /// Default segment.ms of topics [default: 604800000].
    #[arg(long)]
    pub log_segment_ms: Option<i64>,
    /// Default max.message.bytes of topics [default: 1048588].
    #[arg(long)]
    pub message_max_bytes: Option<i64>,
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

fn in_range(key: &'static str, value: i64, min: i64, max: i64) -> Result<i64, ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            key,
            format!("{value} is outside the allowed range {min}..={max}"),
        ));
    }
    Ok(value)
}

fn parse_addr(key: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|e| invalid(key, format!("`{text}` is not an ip:port address ({e})")))
}

/// `cluster_id`: 1 to [`CLUSTER_ID_BYTES_MAX`](crate::transport::codec::CLUSTER_ID_BYTES_MAX)
/// bytes of ASCII letters, digits, `-`, `_` and `.` (Kafka's base64url ids and UUIDs
/// both fit; nothing that needs quoting in logs or a shell).
fn parse_cluster_id(text: &str) -> Result<String, ConfigError> {
    const KEY: &str = "cluster_id";
    let bytes_max = crate::transport::codec::CLUSTER_ID_BYTES_MAX;
    if text.is_empty() || text.len() > bytes_max {
        return Err(invalid(
            KEY,
            format!("{} bytes; must be 1..={bytes_max}", text.len()),
        ));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(invalid(
            KEY,
            format!("`{text}` holds {c:?}; allowed: ASCII letters, digits, `-`, `_`, `.`"),
        ));
    }
    Ok(text.to_string())
}

/// Most voters the metadata group may have (each one takes part in every commit).
const CONTROLLER_VOTERS_MAX: usize = 16;

/// `controller_voters`: `id@ip:port` items, comma-separated, distinct ids; empty
/// text means none.
fn parse_voters(text: &str) -> Result<Vec<(i32, SocketAddr)>, ConfigError> {
    const KEY: &str = "controller_voters";
    let mut voters: Vec<(i32, SocketAddr)> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addr) = item
            .split_once('@')
            .ok_or_else(|| invalid(KEY, format!("`{item}` is not id@ip:port")))?;
        let id: i32 = id
            .parse()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| invalid(KEY, format!("`{id}` is not a broker id")))?;
        if voters.iter().any(|(v, _)| *v == id) {
            return Err(invalid(KEY, format!("broker {id} is listed twice")));
        }
        voters.push((id, parse_addr(KEY, addr)?));
    }
    if voters.len() > CONTROLLER_VOTERS_MAX {
        return Err(invalid(
            KEY,
            format!("{} voters; at most {CONTROLLER_VOTERS_MAX}", voters.len()),
        ));
    }
    voters.sort_unstable_by_key(|(id, _)| *id);
    Ok(voters)
}

impl Config {
    /// The cluster id this configuration fixes: `cluster_id` when set, else the one
    /// derived from `controller_voters` ([`Config::cluster_id_from_voters`]); `None` for
    /// a single node without `cluster_id` (its id is kept in its data directory).
    pub fn configured_cluster_id(&self) -> Option<String> {
        self.cluster_id
            .clone()
            .or_else(|| self.cluster_id_from_voters())
    }

    /// In a cluster, the cluster id every broker derives from the same
    /// `controller_voters` (a UUID from two FNV-1a hashes of their canonical text), so
    /// brokers started with the same list recognise each other and no id has to be
    /// handed around; `None` for a single node (its id is kept in its data directory).
    pub fn cluster_id_from_voters(&self) -> Option<String> {
        if self.controller_voters.is_empty() {
            return None;
        }
        let text: Vec<String> = self
            .controller_voters
            .iter()
            .map(|(id, addr)| format!("{id}@{addr}"))
            .collect();
        let text = text.join(",");
        let fnv = |seed: u64| {
            text.bytes().fold(seed, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
        };
        let high = fnv(0xcbf2_9ce4_8422_2325);
        let low = fnv(0x8422_2325_cbf2_9ce4);
        Some(uuid::Uuid::from_u64_pair(high, low).to_string())
    }

    /// Builds the configuration from defaults, the file named by `cli.config`, and
    /// the flags, then validates it.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let mut config = Config::default();
        // Flag wins over file: `cli.x.or(file.x)`.
        macro_rules! pick {
            ($field:ident) => {
                cli.$field.clone().or(file.$field.clone())
            };
        }
        if let Some(v) = pick!(listen) {
            config.listen = parse_addr("listen", &v)?;
        }
        if let Some(v) = pick!(advertised_listen) {
            if v.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(invalid(
                    "advertised_listen",
                    format!("`{v}` is not host:port"),
                ));
            }
            config.advertised_listen = Some(v);
        }
        if let Some(v) = pick!(admin_listen) {
            config.admin_listen = if v == "off" {
                None
            } else {
                Some(parse_addr("admin_listen", &v)?)
            };
        }
        if let Some(v) = pick!(node_id) {
            config.node_id = in_range("node_id", v.into(), 0, i32::MAX.into())? as i32;
        }
        if let Some(v) = pick!(inter_broker_listen) {
            config.inter_broker_listen = parse_addr("inter_broker_listen", &v)?;
        }
        if let Some(v) = pick!(controller_voters) {
            config.controller_voters = parse_voters(&v)?;
        }
        if let Some(v) = pick!(cluster_id) {
            config.cluster_id = Some(parse_cluster_id(&v)?);
        }
        if let Some(v) = pick!(data_dir) {
            if v.as_os_str().is_empty() {
                return Err(invalid("data_dir", "must not be empty"));
            }
            config.data_dir = v;
        }
        if let Some(v) = pick!(auto_create_topics) {
            config.auto_create_topics = v;
        }
        if let Some(v) = pick!(default_partitions) {
            config.default_partitions = in_range("default_partitions", v.into(), 1, 10_000)? as i32;
        }
        if let Some(v) = pick!(socket_request_max_bytes) {
            config.socket_request_max_bytes =
                in_range("socket_request_max_bytes", v, 1024, i32::MAX.into())? as usize;
        }
        if let Some(v) = pick!(non_produce_request_max_bytes) {
            config.non_produce_request_max_bytes =
                in_range("non_produce_request_max_bytes", v, 1024, i32::MAX.into())? as usize;
        }
        if let Some(v) = pick!(connections_max) {
            config.connections_max = in_range("connections_max", v, 1, 1_000_000)? as usize;
        }
        if let Some(v) = pick!(requests_in_flight_max) {
            config.requests_in_flight_max =
                in_range("requests_in_flight_max", v, 1, 1024)? as usize;
        }
        if let Some(v) = pick!(queued_request_max_bytes) {
            config.queued_request_max_bytes =
                in_range("queued_request_max_bytes", v, 1024, 64 << 30)? as usize;
        }
        if let Some(v) = pick!(connections_max_per_ip) {
            config.connections_max_per_ip =
                in_range("connections_max_per_ip", v, 1, 1_000_000)? as usize;
        }
        if let Some(v) = pick!(connections_max_idle_ms) {
            config.connections_max_idle_ms =
                in_range("connections_max_idle_ms", v, 100, 86_400_000)? as u64;
        }
        if let Some(v) = pick!(request_read_timeout_ms) {
            config.request_read_timeout_ms =
                in_range("request_read_timeout_ms", v, 10, 3_600_000)? as u64;
        }
        if let Some(v) = pick!(durability) {
            config.durability = v;
        }
        if let Some(v) = pick!(flush_interval_ms) {
            config.flush_interval_ms = in_range("flush_interval_ms", v, 1, 3_600_000)? as u64;
        }
        if let Some(v) = pick!(journal_bytes) {
            config.journal_bytes = in_range("journal_bytes", v, 1 << 20, 1 << 32)? as u64;
        }
        if let Some(v) = pick!(retention_check_interval_ms) {
            config.retention_check_interval_ms =
                in_range("retention_check_interval_ms", v, 100, 86_400_000)? as u64;
        }
        if let Some(v) = pick!(log_cleaner_io_bytes_per_second) {
            config.log_cleaner_io_bytes_per_second =
                in_range("log_cleaner_io_bytes_per_second", v, 1 << 20, 10 << 30)? as u64;
        }
        if let Some(v) = pick!(log_cleaner_backoff_ms) {
            config.log_cleaner_backoff_ms =
                in_range("log_cleaner_backoff_ms", v, 10, 3_600_000)? as u64;
        }
        if let Some(v) = pick!(log_cleaner_dedupe_buffer_bytes) {
            config.log_cleaner_dedupe_buffer_bytes =
                in_range("log_cleaner_dedupe_buffer_bytes", v, 1 << 16, 4 << 30)? as u64;
        }
        if let Some(v) = pick!(producer_id_expiration_ms) {
            config.producer_id_expiration_ms =
                in_range("producer_id_expiration_ms", v, 1000, i64::from(i32::MAX))? as u64;
        }
        if let Some(v) = pick!(producer_snapshot_interval_ms) {
            config.producer_snapshot_interval_ms =
                in_range("producer_snapshot_interval_ms", v, 10, 3_600_000)? as u64;
        }
        if let Some(v) = pick!(fetch_wait_ms_max) {
            config.fetch_wait_ms_max = in_range("fetch_wait_ms_max", v, 0, 300_000)? as u64;
        }
        if let Some(v) = pick!(replica_lag_time_max_ms) {
            config.replica_lag_time_max_ms =
                in_range("replica_lag_time_max_ms", v, 100, 3_600_000)? as u64;
        }
        if let Some(v) = pick!(offsets_topic_partitions) {
            config.offsets_topic_partitions =
                in_range("offsets_topic_partitions", v, 1, 1000)? as i32;
        }
        if let Some(v) = pick!(group_initial_rebalance_delay_ms) {
            config.group_initial_rebalance_delay_ms =
                in_range("group_initial_rebalance_delay_ms", v, 0, 300_000)? as u64;
        }
        if let Some(v) = pick!(offsets_retention_minutes) {
            config.offsets_retention_minutes =
                in_range("offsets_retention_minutes", v, 1, 52_560_000)? as u64;
        }
        if let Some(v) = pick!(shutdown_timeout_ms) {
            config.shutdown_timeout_ms = in_range("shutdown_timeout_ms", v, 0, 3_600_000)? as u64;
        }
        if let Some(v) = pick!(leader_balance_interval_ms) {
            config.leader_balance_interval_ms =
                in_range("leader_balance_interval_ms", v, 0, 86_400_000)? as u64;
        }
        if let Some(v) = pick!(metadata_checkpoint_records) {
            config.metadata_checkpoint_records =
                in_range("metadata_checkpoint_records", v, 1, 1_000_000)? as u64;
        }
        if let Some(v) = pick!(debug_flush_delay_ms) {
            config.debug_flush_delay_ms = in_range("debug_flush_delay_ms", v, 0, 60_000)? as u64;
        }
        if let Some(v) = pick!(debug_deferred_sync_delay_ms) {
            config.debug_deferred_sync_delay_ms =
                in_range("debug_deferred_sync_delay_ms", v, 0, 600_000)? as u64;
        }
        if let Some(v) = pick!(log_dir_free_bytes_min) {
            config.log_dir_free_bytes_min =
                in_range("log_dir_free_bytes_min", v, 0, i64::MAX)? as u64;
        }
        let t = &mut config.topic_defaults;
        if let Some(v) = pick!(log_retention_ms) {
            t.retention_ms = check_topic_key("log_retention_ms", "retention.ms", v)?;
        }
        if let Some(v) = pick!(log_retention_bytes) {
            t.retention_bytes = check_topic_key("log_retention_bytes", "retention.bytes", v)?;
        }
        if let Some(v) = pick!(log_segment_bytes) {
            t.segment_bytes = check_topic_key("log_segment_bytes", "segment.bytes", v)?;
        }
        if let Some(v) = pick!(log_segment_ms) {
            t.segment_ms = check_topic_key("log_segment_ms", "segment.ms", v)?;
        }
        if let Some(v) = pick!(message_max_bytes) {
            t.max_message_bytes = check_topic_key("message_max_bytes", "max.message.bytes", v)?;
        }
        Ok(config)
    }

    /// The directory holding topic metadata files.
    pub fn topics_dir(&self) -> PathBuf {
        self.data_dir.join("meta")
    }

    /// The directory of one partition's log: `<data_dir>/<topic>-<partition>`.
    pub fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        partition_dir(&self.data_dir, topic, partition)
    }
}

/// `<data_dir>/<topic>-<partition>.<topic id>`: where a cluster keeps a replica. The
/// topic id in the name means a topic deleted and created again under the same name
/// never opens a replica of the old one left behind (a broker that was down during the
/// deletion, a removal that failed).
pub fn replica_dir(data_dir: &Path, topic: &str, partition: i32, topic_id: uuid::Uuid) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}.{}", topic_id.simple()))
}

/// `<data_dir>/<topic>-<partition>` (ARCHITECTURE §3).
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

fn check_topic_key(key: &'static str, topic_key: &str, value: i64) -> Result<i64, ConfigError> {
    crate::state::topic_config::check_value(topic_key, value)
        .map_err(|message| invalid(key, message))?;
    Ok(value)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_arguments_give_the_documented_defaults() {
        let config = Config::load(&Cli::default()).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9092".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("./rill-data"));
        assert_eq!(config.socket_request_max_bytes, 104_857_600);
        assert_eq!(config.durability, Durability::Fsync);
        assert!(config.auto_create_topics);
        assert_eq!(config.log_dir_free_bytes_min, 1 << 30);
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rill.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:19092\"\ndefault_partitions = 3\ndurability = \"interval\"\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "rilld",
            "--config",
            path.to_str().unwrap(),
            "--default-partitions",
            "5",
        ]);
        let config = Config::load(&cli).unwrap();
        assert_eq!(config.listen.port(), 19092);
        assert_eq!(config.default_partitions, 5);
        assert_eq!(config.durability, Durability::Interval);
    }

    #[test]
    fn controller_voters_parse_and_may_leave_this_broker_out() {
        let cli = Cli::parse_from([
            "rilld",
            "--node-id",
            "2",
            "--controller-voters",
            "3@127.0.0.1:9293, 1@127.0.0.1:9093,2@127.0.0.1:9193",
        ]);
        let config = Config::load(&cli).unwrap();
        let ids: Vec<i32> = config.controller_voters.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(config.controller_voters[1].1.port(), 9193);
        // A broker outside the voters is a learner of the metadata group.
        let cli = Cli::parse_from([
            "rilld",
            "--node-id",
            "4",
            "--controller-voters",
            "1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293",
        ]);
        let config = Config::load(&cli).unwrap();
        assert_eq!(config.controller_voters.len(), 3);
        assert_eq!(config.node_id, 4);
        for bad in [
            "1@127.0.0.1:9093,1@127.0.0.1:9193",
            "x@127.0.0.1:9093",
            "2:127.0.0.1:9093",
            "2@localhost",
        ] {
            let cli = Cli::parse_from(["rilld", "--node-id", "2", "--controller-voters", bad]);
            let err = Config::load(&cli).unwrap_err().to_string();
            assert!(err.contains("controller_voters"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_explicit_cluster_id_overrides_the_one_derived_from_the_voters() {
        // Two brokers that reach each other at different addresses (say, through
        // proxies) derive different ids from their voter lists; one set id joins them.
        let broker = |voters: &str, cluster_id: Option<&str>| {
            let mut args = vec!["rilld", "--node-id", "1", "--controller-voters", voters];
            if let Some(id) = cluster_id {
                args.extend(["--cluster-id", id]);
            }
            Config::load(&Cli::parse_from(args)).unwrap()
        };
        let a = broker("1@127.0.0.1:9093,2@127.0.0.1:9193", None);
        let b = broker("1@127.0.0.1:9093,2@127.0.0.1:19193", None);
        assert_ne!(a.configured_cluster_id(), b.configured_cluster_id());
        let a = broker(
            "1@127.0.0.1:9093,2@127.0.0.1:9193",
            Some("MkU3OEVBNTcwNTJENDM2Qk"),
        );
        let b = broker(
            "1@127.0.0.1:9093,2@127.0.0.1:19193",
            Some("MkU3OEVBNTcwNTJENDM2Qk"),
        );
        assert_eq!(
            a.configured_cluster_id().as_deref(),
            Some("MkU3OEVBNTcwNTJENDM2Qk")
        );
        assert_eq!(a.configured_cluster_id(), b.configured_cluster_id());
        // A single node keeps the id of its data directory unless told one.
        let single = Config::load(&Cli::parse_from(["rilld"])).unwrap();
        assert_eq!(single.configured_cluster_id(), None);

        let long = "x".repeat(256);
        for bad in ["", "has space", "semi;colon", long.as_str()] {
            let cli = Cli::parse_from(["rilld", "--cluster-id", bad]);
            let err = Config::load(&cli).unwrap_err().to_string();
            assert!(err.contains("cluster_id"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cli = Cli::parse_from(["rilld", "--socket-request-max-bytes", "10"]);
        let err = Config::load(&cli).unwrap_err().to_string();
        assert!(err.contains("socket_request_max_bytes"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rill.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let cli = Cli::parse_from(["rilld", "--config", path.to_str().unwrap()]);
        let err = Config::load(&cli).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");

        for (flag, key) in [
            ("--queued-request-max-bytes", "queued_request_max_bytes"),
            ("--connections-max-per-ip", "connections_max_per_ip"),
            ("--connections-max-idle-ms", "connections_max_idle_ms"),
            ("--request-read-timeout-ms", "request_read_timeout_ms"),
        ] {
            let cli = Cli::parse_from(["rilld", flag, "0"]);
            let err = Config::load(&cli).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }

        let cli = Cli::parse_from(["rilld", "--log-dir-free-bytes-min=-1"]);
        let err = Config::load(&cli).unwrap_err().to_string();
        assert!(err.contains("log_dir_free_bytes_min"), "{err}");

        let cli = Cli::parse_from(["rilld", "--log-segment-bytes", "5"]);
        let err = Config::load(&cli).unwrap_err().to_string();
        assert!(err.contains("log_segment_bytes"), "{err}");
    }
}
