//! Configuration: one struct per component, defaults documented next to each field.

use crate::error::{Error, Result};
pub use crate::group::AssignmentStrategy;

/// How the connection layer talks to the cluster (shared by producer, consumer, admin).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` addresses to bootstrap from. Default: `["127.0.0.1:9092"]`.
    pub bootstrap_servers: Vec<String>,
    /// `client_id` sent in every request header. Default: `"rill-client"`.
    pub client_id: String,
    /// Deadline for every request, from enqueue to response. Default: 30,000 ms.
    pub request_timeout_ms: u64,
    /// Deadline for establishing a TCP connection and negotiating versions. Default: 10,000 ms.
    pub connect_timeout_ms: u64,
    /// Requests that may wait for a response on one connection at once (pipelining
    /// depth); more block until a response arrives. Default: 16.
    pub in_flight_requests_max: usize,
    /// Largest response frame accepted from a broker. Default: 256 MiB.
    pub response_bytes_max: usize,
    /// Metadata older than this is refreshed before use. Default: 300,000 ms.
    pub metadata_max_age_ms: u64,
    /// First retry backoff; doubles per attempt up to `retry_backoff_max_ms`. Default: 100 ms.
    pub retry_backoff_ms: u64,
    /// Ceiling of the retry backoff. Default: 1,000 ms.
    pub retry_backoff_max_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bootstrap_servers: vec!["127.0.0.1:9092".to_owned()],
            client_id: "rill-client".to_owned(),
            request_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            in_flight_requests_max: 16,
            response_bytes_max: 256 << 20,
            metadata_max_age_ms: 300_000,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 1_000,
        }
    }
}

impl ClientConfig {
    /// A default configuration with the given bootstrap servers (comma-separated
    /// `host:port` list, as Kafka's `bootstrap.servers`).
    pub fn new(bootstrap_servers: &str) -> Self {
        ClientConfig {
            bootstrap_servers: bootstrap_servers
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            ..ClientConfig::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.bootstrap_servers.is_empty() {
            return Err(Error::Config("bootstrap_servers is empty".into()));
        }
        if self.in_flight_requests_max == 0 {
            return Err(Error::Config(
                "in_flight_requests_max must be at least 1".into(),
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(Error::Config("request_timeout_ms must be positive".into()));
        }
        Ok(())
    }

    /// The backoff before retry number `attempt` (1-based).
    pub(crate) fn backoff(&self, attempt: u32) -> std::time::Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(16);
        std::time::Duration::from_millis(
            self.retry_backoff_ms
                .saturating_mul(factor)
                .min(self.retry_backoff_max_ms),
        )
    }
}

/// Acknowledgement level of produced batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// `acks=0`: the broker does not answer; delivery reports carry offset `-1`.
    None,
    /// `acks=1`: the leader answers after its local append.
    Leader,
    /// `acks=all` (`-1`): the leader answers after the write is committed (on a single
    /// Rill node: durable per its flush policy).
    All,
}

impl Acks {
    /// The wire value.
    pub fn as_i16(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

impl std::str::FromStr for Acks {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "0" | "none" => Ok(Acks::None),
            "1" | "leader" => Ok(Acks::Leader),
            "all" | "-1" => Ok(Acks::All),
            other => Err(Error::Config(format!(
                "acks must be 0, 1 or all, got {other:?}"
            ))),
        }
    }
}

/// Compression codec of produced batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy (Kafka's framing).
    Snappy,
    /// LZ4 frame format.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl std::str::FromStr for Compression {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "snappy" => Ok(Compression::Snappy),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(Error::Config(format!(
                "compression must be none, gzip, snappy, lz4 or zstd, got {other:?}"
            ))),
        }
    }
}

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Connection settings.
    pub client: ClientConfig,
    /// Acknowledgement level. Default: [`Acks::All`].
    pub acks: Acks,
    /// Batch compression. Default: [`Compression::None`].
    pub compression: Compression,
    /// How long a partition's batch may wait for more records before it is sent.
    /// Default: 5 ms.
    pub linger_ms: u64,
    /// A batch is closed and sent once its (uncompressed) size would pass this. A single
    /// record larger than this is sent alone if it fits `request_bytes_max`.
    /// Default: 1 MiB.
    pub batch_bytes_max: usize,
    /// Memory for records not yet acknowledged; `send` waits (back-pressure) when it is
    /// used up. Default: 16 MiB: several times what is in flight at once (a partition's
    /// `in_flight_batches_per_partition_max` batches of `batch_bytes_max`), which is all a
    /// producer needs to keep its connections busy; more only queues records longer and
    /// lets batch data leave the CPU caches before it is sent (64 MiB cost the producer
    /// 8-10 % more CPU per GB than 16 MiB, at the same throughput). Java's producer has
    /// 32 MiB (`buffer.memory`, with 16 KiB batches); librdkafka bounds its queue at
    /// 100,000 messages or 1 GiB.
    pub buffer_bytes_max: usize,
    /// Give up on a batch after this many sends. Default: `u32::MAX` (bounded by
    /// `delivery_timeout_ms` instead, as Kafka does).
    pub retries_max: u32,
    /// Give up on a batch this long after it was closed. Default: 120,000 ms.
    pub delivery_timeout_ms: u64,
    /// How long `send` waits for a topic's metadata (partition count) to appear.
    /// Default: 30,000 ms.
    pub metadata_wait_ms_max: u64,
    /// Ask the broker to auto-create unknown topics when looking them up (if the broker
    /// allows it). Default: true, like Kafka's producer.
    pub allow_auto_topic_creation: bool,
    /// Batches of one partition sent and not yet answered (Kafka's
    /// `max.in.flight.requests.per.connection`, per partition). They go out on one
    /// connection in order and the broker appends them in that order; more than one
    /// hides the replication round trip of `acks=all` (throughput grows with it until
    /// the brokers are busy). The cost, as in Kafka without idempotence: when a batch
    /// fails retriably while a later one of its partition succeeds, the retried batch
    /// lands after it. A retry waits until nothing earlier is in flight and goes out
    /// first, so only batches already in flight can overtake it. With idempotence
    /// (the default) the broker refuses a batch that would overtake an earlier one, so
    /// order holds and nothing is written twice; then at most 5 (what a broker keeps
    /// per producer). Default: 5.
    pub in_flight_batches_per_partition_max: usize,
    /// Idempotent producer (Kafka's `enable.idempotence`, on by default as in Kafka 3+):
    /// the producer gets a producer id (InitProducerId) before its first batch and
    /// numbers each partition's records, so the leader drops a retried batch it already
    /// holds (answering with its offset) and refuses one that would leave a gap: retries
    /// neither duplicate nor reorder records. Applies with [`Acks::All`] only — as in
    /// Kafka when idempotence is not set explicitly, a producer with another `acks` is
    /// not idempotent. Default: true.
    pub enable_idempotence: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            client: ClientConfig::default(),
            acks: Acks::All,
            compression: Compression::None,
            linger_ms: 5,
            batch_bytes_max: 1 << 20,
            buffer_bytes_max: 16 << 20,
            retries_max: u32::MAX,
            delivery_timeout_ms: 120_000,
            metadata_wait_ms_max: 30_000,
            allow_auto_topic_creation: true,
            in_flight_batches_per_partition_max: IDEMPOTENT_IN_FLIGHT_BATCHES_MAX,
            enable_idempotence: true,
        }
    }
}

impl ProducerConfig {
    /// Defaults with the given bootstrap servers.
    pub fn new(bootstrap_servers: &str) -> Self {
        ProducerConfig {
            client: ClientConfig::new(bootstrap_servers),
            ..ProducerConfig::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.client.validate()?;
        if self.batch_bytes_max < 128 {
            return Err(Error::Config("batch_bytes_max must be at least 128".into()));
        }
        if self.buffer_bytes_max < self.batch_bytes_max {
            return Err(Error::Config(
                "buffer_bytes_max must be at least batch_bytes_max".into(),
            ));
        }
        if self.buffer_bytes_max > (u32::MAX as usize) {
            return Err(Error::Config("buffer_bytes_max must fit in u32".into()));
        }
        if self.retries_max == 0 {
            return Err(Error::Config("retries_max must be at least 1".into()));
        }
        if self.in_flight_batches_per_partition_max == 0 {
            return Err(Error::Config(
                "in_flight_batches_per_partition_max must be at least 1".into(),
            ));
        }
        if self.is_idempotent()
            && self.in_flight_batches_per_partition_max > IDEMPOTENT_IN_FLIGHT_BATCHES_MAX
        {
            return Err(Error::Config(format!(
                "an idempotent producer keeps at most {IDEMPOTENT_IN_FLIGHT_BATCHES_MAX} batches in flight per partition (in_flight_batches_per_partition_max), since a broker keeps the last 5 per producer; or set enable_idempotence = false"
            )));
        }
        Ok(())
    }

    /// Whether this producer is idempotent: `enable_idempotence` with `acks = All`.
    pub fn is_idempotent(&self) -> bool {
        self.enable_idempotence && self.acks == Acks::All
    }
}

/// Most batches an idempotent producer keeps in flight per partition: a broker keeps the
/// last 5 batches of each producer, so any retry is among them.
pub const IDEMPOTENT_IN_FLIGHT_BATCHES_MAX: usize = 5;

/// What a consumer does when its position is outside the partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// Jump to the log start offset.
    Earliest,
    /// Jump to the log end offset.
    Latest,
    /// Return [`Error::OffsetOutOfRange`] from the stream.
    None,
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Connection settings.
    pub client: ClientConfig,
    /// Longest time a fetch waits on the broker for `fetch_bytes_min`. Default: 500 ms.
    pub fetch_wait_ms_max: i32,
    /// The broker answers a fetch as soon as it has this many bytes. Default: 1.
    pub fetch_bytes_min: i32,
    /// Upper bound on one fetch response. Default: 50 MiB.
    pub fetch_bytes_max: i32,
    /// Upper bound per partition in one fetch response. Default: 1 MiB.
    pub partition_fetch_bytes_max: i32,
    /// Fetch responses decoded ahead of the application (prefetch depth). Default: 4.
    pub prefetch_responses_max: usize,
    /// Policy for out-of-range positions, and (subscribed) where a partition without a
    /// committed offset starts. Default: [`OffsetReset::Earliest`].
    pub auto_offset_reset: OffsetReset,
    /// Consumer group (`group.id`): needed by [`Consumer::subscribe`](crate::Consumer::subscribe)
    /// and by commits. Default: none.
    pub group_id: Option<String>,
    /// Static membership (`group.instance.id`, KIP-345): a member that restarts within its
    /// session timeout gets its partitions back without a rebalance. Default: none.
    pub group_instance_id: Option<String>,
    /// A member not heard from for this long is removed from the group. Default: 45,000 ms
    /// (Kafka's).
    pub session_timeout_ms: i32,
    /// Kafka's `max.poll.interval.ms`, which is also the rebalance timeout it sends: how
    /// long the coordinator waits for every member to rejoin in a rebalance, and how long
    /// the application may hold records without asking for more (awaiting the consumer
    /// `Stream`) before this member leaves the group so others take its partitions
    /// (they are reported lost; it rejoins at its next poll). Default: 300,000 ms.
    pub rebalance_timeout_ms: i32,
    /// Interval between heartbeats; a rebalance is noticed within about this long.
    /// Default: 3,000 ms.
    pub heartbeat_interval_ms: u64,
    /// Assignors offered to the group, preferred first (`partition.assignment.strategy`).
    /// The cooperative protocol is used only if all are cooperative. Default: `[range,
    /// cooperative-sticky]` (Kafka's).
    pub assignment_strategies: Vec<AssignmentStrategy>,
    /// Commit the current positions every `auto_commit_interval_ms`, before partitions are
    /// revoked, and on close. Default: true.
    pub enable_auto_commit: bool,
    /// Auto commit interval. Default: 5,000 ms.
    pub auto_commit_interval_ms: u64,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            client: ClientConfig::default(),
            fetch_wait_ms_max: 500,
            fetch_bytes_min: 1,
            fetch_bytes_max: 50 << 20,
            partition_fetch_bytes_max: 1 << 20,
            prefetch_responses_max: 4,
            auto_offset_reset: OffsetReset::Earliest,
            group_id: None,
            group_instance_id: None,
            session_timeout_ms: 45_000,
            rebalance_timeout_ms: 300_000,
            heartbeat_interval_ms: 3_000,
            assignment_strategies: vec![
                AssignmentStrategy::Range,
                AssignmentStrategy::CooperativeSticky,
            ],
            enable_auto_commit: true,
            auto_commit_interval_ms: 5_000,
        }
    }
}

impl ConsumerConfig {
    /// Defaults with the given bootstrap servers.
    pub fn new(bootstrap_servers: &str) -> Self {
        ConsumerConfig {
            client: ClientConfig::new(bootstrap_servers),
            ..ConsumerConfig::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.client.validate()?;
        if self.prefetch_responses_max == 0 {
            return Err(Error::Config(
                "prefetch_responses_max must be at least 1".into(),
            ));
        }
        if self.partition_fetch_bytes_max <= 0 || self.fetch_bytes_max <= 0 {
            return Err(Error::Config(
                "fetch_bytes_max and partition_fetch_bytes_max must be positive".into(),
            ));
        }
        if self.fetch_wait_ms_max < 0
            || self.fetch_wait_ms_max as u64 >= self.client.request_timeout_ms
        {
            return Err(Error::Config(
                "fetch_wait_ms_max must be non-negative and below request_timeout_ms".into(),
            ));
        }
        if self.group_id.as_ref().is_some_and(|g| g.is_empty()) {
            return Err(Error::Config("group_id must not be empty".into()));
        }
        if self.session_timeout_ms <= 0 || self.rebalance_timeout_ms <= 0 {
            return Err(Error::Config(
                "session_timeout_ms and rebalance_timeout_ms must be positive".into(),
            ));
        }
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_interval_ms >= self.session_timeout_ms as u64
        {
            return Err(Error::Config(
                "heartbeat_interval_ms must be positive and below session_timeout_ms".into(),
            ));
        }
        if self.assignment_strategies.is_empty() {
            return Err(Error::Config(
                "assignment_strategies must name at least one strategy".into(),
            ));
        }
        if self.enable_auto_commit && self.auto_commit_interval_ms == 0 {
            return Err(Error::Config(
                "auto_commit_interval_ms must be positive".into(),
            ));
        }
        Ok(())
    }
}
