//! Per-topic configs: every topic-level key Kafka 3.x/4.x defines, its type, range,
//! default and documentation ([`TOPIC_CONFIGS`]); the validation CreateTopics and
//! (Incremental)AlterConfigs apply; and a topic's effective values (topic override, else
//! broker default, else Kafka's default).
//!
//! # Which keys Rill acts on
//!
//! Acted on: `cleanup.policy` (`delete` applies retention; `compact` makes the broker's
//! log cleaner keep the last record per key; `compact,delete` both),
//! `compression.type` (produce recompresses when it names a codec),
//! `delete.retention.ms`, `index.interval.bytes`, `max.compaction.lag.ms`,
//! `max.message.bytes`, `message.timestamp.type` (`LogAppendTime` stamps batches on the
//! leader), `min.cleanable.dirty.ratio`, `min.compaction.lag.ms` (the cleaner reads the
//! four compaction keys), `retention.bytes`, `retention.ms`, `segment.bytes`,
//! `segment.ms`. A change of any of them through AlterConfigs takes effect on every
//! replica without a restart (a smaller `segment.bytes` at the next roll).
//!
//! Every other key is validated, stored and described, but has no effect in Rill
//! ([`ConfigDef::acted_on`] is false, and its documentation says so): the flush keys
//! (Rill's durability is the broker's `durability`/`flush_interval_ms`), throttling,
//! tiered storage, timestamp bounds, `min.insync.replicas` (Raft commits on a majority),
//! `unclean.leader.election.enable` (Raft never elects an unclean leader), `preallocate`, `file.delete.delay.ms`,
//! `segment.index.bytes`, `segment.jitter.ms`, `message.downconversion.enable`,
//! `message.format.version`.

use std::collections::BTreeMap;

use crate::config::TopicDefaults;

/// Longest config value accepted, in bytes: what the metadata log's encoding holds
/// (an INT16-length string), checked before any parsing so a huge value is a clear
/// INVALID_CONFIG, never a large allocation downstream.
pub const CONFIG_VALUE_BYTES_MAX: usize = crate::controller::CONFIG_VALUE_BYTES_MAX;

/// Kafka's `ConfigSource` for a topic's own override (TOPIC_CONFIG).
pub const SOURCE_TOPIC: i8 = 1;
/// Kafka's `ConfigSource` for a broker key set in the broker's config file or flags.
pub const SOURCE_STATIC_BROKER: i8 = 4;
/// Kafka's `ConfigSource` for a default nobody set (DEFAULT_CONFIG).
pub const SOURCE_DEFAULT: i8 = 5;

/// Kafka's `ConfigDef.Type`, as DescribeConfigs v3+ reports it (`config_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    /// `true` / `false` (case-insensitive).
    Boolean = 1,
    /// Free text (checked by the key's validator).
    String = 2,
    /// A 32-bit integer.
    Int = 3,
    /// A 64-bit integer.
    Long = 5,
    /// A floating-point number.
    Double = 6,
    /// A comma-separated list.
    List = 7,
}

/// The check a value must pass besides its type.
#[derive(Debug, Clone, Copy)]
pub enum Validator {
    /// Any value of the type.
    Any,
    /// An integer within `min..=max`.
    Range(i64, i64),
    /// A number within `min..=max`.
    RangeF(f64, f64),
    /// One of these strings (case-insensitive, as Kafka's `ValidString` for these keys).
    OneOf(&'static [&'static str]),
    /// A non-empty list of these strings.
    ListOf(&'static [&'static str]),
    /// `""`, `"*"`, or a list of `partition:broker` pairs (the throttled-replicas keys).
    ThrottledReplicas,
    /// A non-empty string.
    NonEmpty,
}

/// Where a key's default comes from.
#[derive(Debug, Clone, Copy)]
pub enum DefaultValue {
    /// Kafka's fixed default.
    Fixed(&'static str),
    /// A broker-wide default Rill's broker config sets ([`TopicDefaults`]).
    Broker(fn(&TopicDefaults) -> i64),
}

/// One topic config key.
#[derive(Debug, Clone, Copy)]
pub struct ConfigDef {
    /// The topic key (`retention.ms`).
    pub name: &'static str,
    /// Its type.
    pub config_type: ConfigType,
    /// Its default.
    pub default: DefaultValue,
    /// Its range or allowed values.
    pub validator: Validator,
    /// Kafka's broker key that supplies the default (DescribeConfigs synonyms), if any.
    pub broker_key: Option<&'static str>,
    /// Rill's own broker config key for the default, when it has one: a value the
    /// operator set there makes the source STATIC_BROKER_CONFIG.
    pub rill_broker_key: Option<&'static str>,
    /// Whether Rill acts on the key (see the module docs); stored either way.
    pub acted_on: bool,
    /// Documentation DescribeConfigs returns (v3+ `documentation`).
    pub doc: &'static str,
}

const LONG_MAX: &str = "9223372036854775807";
const I32_MAX: i64 = i32::MAX as i64;

/// Codecs `compression.type` names.
pub const COMPRESSION_TYPES: &[&str] =
    &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];

macro_rules! def {
    ($name:expr, $ty:ident, $default:expr, $validator:expr, $broker:expr, $acted:expr, $doc:expr) => {
        ConfigDef {
            name: $name,
            config_type: ConfigType::$ty,
            default: $default,
            validator: $validator,
            broker_key: $broker,
            rill_broker_key: None,
            acted_on: $acted,
            doc: $doc,
        }
    };
}

/// Every topic config key, sorted by name (DescribeConfigs lists them in this order).
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    def!("cleanup.policy", List, DefaultValue::Fixed("delete"),
        Validator::ListOf(&["compact", "delete"]), Some("log.cleanup.policy"), true,
        "delete, compact or compact,delete: compact keeps the last record per key (the broker's log cleaner), delete applies retention.ms / retention.bytes, compact,delete both."),
    def!("compression.gzip.level", Int, DefaultValue::Fixed("-1"), Validator::Range(-1, 9),
        Some("compression.gzip.level"), false,
        "Level of gzip when compression.type is gzip (-1 = codec default). Stored and described; Rill does not act on it."),
    def!("compression.lz4.level", Int, DefaultValue::Fixed("9"), Validator::Range(1, 17),
        Some("compression.lz4.level"), false,
        "Level of lz4 when compression.type is lz4. Stored and described; Rill does not act on it."),
    def!("compression.type", String, DefaultValue::Fixed("producer"),
        Validator::OneOf(COMPRESSION_TYPES), Some("compression.type"), true,
        "Codec of the stored batches: producer keeps the producer's; a codec name \
         recompresses batches that use another codec; uncompressed decompresses."),
    def!("compression.zstd.level", Int, DefaultValue::Fixed("3"), Validator::Range(-131072, 22),
        Some("compression.zstd.level"), false,
        "Level of zstd when compression.type is zstd. Stored and described; Rill does not act on it."),
    def!("delete.retention.ms", Long, DefaultValue::Fixed("86400000"),
        Validator::Range(0, i64::MAX), Some("log.cleaner.delete.retention.ms"), true,
        "How long a tombstone stays after its offset was first compacted, so consumers see deletions."),
    def!("file.delete.delay.ms", Long, DefaultValue::Fixed("60000"), Validator::Range(0, i64::MAX),
        Some("log.segment.delete.delay.ms"), false,
        "Delay before a deleted segment's file is removed. Stored and described; Rill does not act on it (unlinking is safe while mapped)."),
    def!("flush.messages", Long, DefaultValue::Fixed(LONG_MAX), Validator::Range(1, i64::MAX),
        Some("log.flush.interval.messages"), false,
        "Force an fsync after this many messages. Stored and described; Rill does not act on it: durability is the broker's durability setting."),
    def!("flush.ms", Long, DefaultValue::Fixed(LONG_MAX), Validator::Range(0, i64::MAX),
        Some("log.flush.interval.ms"), false,
        "Force an fsync after this long. Stored and described; Rill does not act on it: durability is the broker's durability setting."),
    def!("follower.replication.throttled.replicas", List, DefaultValue::Fixed(""),
        Validator::ThrottledReplicas, Some("follower.replication.throttled.replicas"), false,
        "Replicas (partition:broker, or *) throttled on the follower side. Stored and described; Rill does not act on it."),
    def!("index.interval.bytes", Int, DefaultValue::Fixed("4096"), Validator::Range(1, I32_MAX),
        Some("log.index.interval.bytes"), true,
        "Bytes of log between two entries of the sparse offset index."),
    def!("leader.replication.throttled.replicas", List, DefaultValue::Fixed(""),
        Validator::ThrottledReplicas, Some("leader.replication.throttled.replicas"), false,
        "Replicas (partition:broker, or *) throttled on the leader side. Stored and described; Rill does not act on it."),
    def!("local.retention.bytes", Long, DefaultValue::Fixed("-2"), Validator::Range(-2, i64::MAX),
        Some("log.local.retention.bytes"), false,
        "Tiered storage: bytes kept locally (-2 = retention.bytes). Stored and described; Rill does not act on it."),
    def!("local.retention.ms", Long, DefaultValue::Fixed("-2"), Validator::Range(-2, i64::MAX),
        Some("log.local.retention.ms"), false,
        "Tiered storage: time kept locally (-2 = retention.ms). Stored and described; Rill does not act on it."),
    def!("max.compaction.lag.ms", Long, DefaultValue::Fixed(LONG_MAX), Validator::Range(1, i64::MAX),
        Some("log.cleaner.max.compaction.lag.ms"), true,
        "A compacted log whose oldest uncompacted record is older than this is cleaned whatever its dirty ratio."),
    ConfigDef {
        rill_broker_key: Some("message_max_bytes"),
        ..def!("max.message.bytes", Int, DefaultValue::Broker(|d| d.max_message_bytes),
            Validator::Range(64, I32_MAX), Some("message.max.bytes"), true,
            "Largest record batch (bytes) a producer may send to this topic.")
    },
    def!("message.downconversion.enable", Boolean, DefaultValue::Fixed("true"), Validator::Any,
        Some("log.message.downconversion.enable"), false,
        "Down-convert batches for old consumers. Stored and described; Rill does not act on it (it stores and serves RecordBatch v2 only)."),
    def!("message.format.version", String, DefaultValue::Fixed("3.0-IV1"), Validator::NonEmpty,
        Some("log.message.format.version"), false,
        "Deprecated in Kafka 3, removed in 4. Stored and described; Rill does not act on it."),
    def!("message.timestamp.after.max.ms", Long, DefaultValue::Fixed(LONG_MAX),
        Validator::Range(0, i64::MAX), Some("log.message.timestamp.after.max.ms"), false,
        "Largest allowed lead of a CreateTime timestamp over the broker's clock. Stored and described; Rill does not act on it."),
    def!("message.timestamp.before.max.ms", Long, DefaultValue::Fixed(LONG_MAX),
        Validator::Range(0, i64::MAX), Some("log.message.timestamp.before.max.ms"), false,
        "Largest allowed lag of a CreateTime timestamp behind the broker's clock. Stored and described; Rill does not act on it."),
    def!("message.timestamp.difference.max.ms", Long, DefaultValue::Fixed(LONG_MAX),
        Validator::Range(0, i64::MAX), Some("log.message.timestamp.difference.max.ms"), false,
        "Deprecated: largest difference between a CreateTime timestamp and the broker's clock. Stored and described; Rill does not act on it."),
    def!("message.timestamp.type", String, DefaultValue::Fixed("CreateTime"),
        Validator::OneOf(&["CreateTime", "LogAppendTime"]), Some("log.message.timestamp.type"), true,
        "CreateTime keeps the producer's timestamps; LogAppendTime makes the leader's clock the batch's timestamp."),
    def!("min.cleanable.dirty.ratio", Double, DefaultValue::Fixed("0.5"), Validator::RangeF(0.0, 1.0),
        Some("log.cleaner.min.cleanable.ratio"), true,
        "A compacted log is cleaned once uncompacted bytes are at least this share of its cleanable bytes."),
    def!("min.compaction.lag.ms", Long, DefaultValue::Fixed("0"), Validator::Range(0, i64::MAX),
        Some("log.cleaner.min.compaction.lag.ms"), true,
        "Records stay uncompacted at least this long."),
    def!("min.insync.replicas", Int, DefaultValue::Fixed("1"), Validator::Range(1, I32_MAX),
        Some("min.insync.replicas"), false,
        "Least in-sync replicas for acks=all. Stored and described; Rill does not act on it: Raft commits on a majority of the replicas."),
    def!("preallocate", Boolean, DefaultValue::Fixed("false"), Validator::Any,
        Some("log.preallocate"), false,
        "Preallocate segment files. Stored and described; Rill always reserves the active segment in growing steps."),
    def!("remote.log.copy.disable", Boolean, DefaultValue::Fixed("false"), Validator::Any, None, false,
        "Tiered storage: stop copying to remote storage. Stored and described; Rill does not act on it."),
    def!("remote.log.delete.on.disable", Boolean, DefaultValue::Fixed("false"), Validator::Any, None, false,
        "Tiered storage: delete remote data when disabled. Stored and described; Rill does not act on it."),
    def!("remote.storage.enable", Boolean, DefaultValue::Fixed("false"), Validator::Any, None, false,
        "Tiered storage. Stored and described; Rill does not act on it."),
    ConfigDef {
        rill_broker_key: Some("log_retention_bytes"),
        ..def!("retention.bytes", Long, DefaultValue::Broker(|d| d.retention_bytes),
            Validator::Range(-1, i64::MAX), Some("log.retention.bytes"), true,
            "Delete oldest closed segments while a partition is larger; -1 = no limit.")
    },
    ConfigDef {
        rill_broker_key: Some("log_retention_ms"),
        ..def!("retention.ms", Long, DefaultValue::Broker(|d| d.retention_ms),
            Validator::Range(-1, i64::MAX), Some("log.retention.ms"), true,
            "Delete closed segments whose newest record is older; -1 = keep forever.")
    },
    ConfigDef {
        rill_broker_key: Some("log_segment_bytes"),
        // Index file positions are u32; at least 1 MiB keeps the file count sane
        // (Kafka 4's lower bound too).
        ..def!("segment.bytes", Int, DefaultValue::Broker(|d| d.segment_bytes),
            Validator::Range(1_048_576, I32_MAX), Some("log.segment.bytes"), true,
            "Roll a new segment file at this size.")
    },
    def!("segment.index.bytes", Int, DefaultValue::Fixed("10485760"), Validator::Range(4, I32_MAX),
        Some("log.index.size.max.bytes"), false,
        "Size of a segment's offset index file. Stored and described; Rill sizes its indexes itself."),
    def!("segment.jitter.ms", Long, DefaultValue::Fixed("0"), Validator::Range(0, i64::MAX),
        Some("log.roll.jitter.ms"), false,
        "Random jitter subtracted from segment.ms. Stored and described; Rill does not act on it."),
    ConfigDef {
        rill_broker_key: Some("log_segment_ms"),
        ..def!("segment.ms", Long, DefaultValue::Broker(|d| d.segment_ms),
            Validator::Range(1, i64::MAX), Some("log.roll.ms"), true,
            "Roll a new segment when the active one is older than this.")
    },
    def!("unclean.leader.election.enable", Boolean, DefaultValue::Fixed("false"), Validator::Any,
        Some("unclean.leader.election.enable"), false,
        "Elect an out-of-sync replica. Stored and described; Rill does not act on it: Raft never elects a replica missing committed data."),
];

/// The definition of `key`, if it is a topic config.
pub fn definition(key: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS
        .binary_search_by(|d| d.name.cmp(key))
        .ok()
        .map(|i| &TOPIC_CONFIGS[i])
}

impl ConfigDef {
    /// The default value as text, under `defaults`.
    pub fn default_value(&self, defaults: &TopicDefaults) -> String {
        match self.default {
            DefaultValue::Fixed(value) => value.to_string(),
            DefaultValue::Broker(get) => get(defaults).to_string(),
        }
    }

    /// Whether the operator set the broker default away from Rill's built-in one.
    pub fn set_by_broker(&self, defaults: &TopicDefaults) -> bool {
        match self.default {
            DefaultValue::Fixed(_) => false,
            DefaultValue::Broker(get) => get(defaults) != get(&TopicDefaults::default()),
        }
    }

    /// Checks `value` against the key's type and range, as Kafka's `ConfigDef` does.
    /// The message says what is allowed.
    pub fn check(&self, value: &str) -> Result<(), String> {
        if value.len() > CONFIG_VALUE_BYTES_MAX {
            return Err(format!(
                "value of {} bytes, at most {CONFIG_VALUE_BYTES_MAX} allowed",
                value.len()
            ));
        }
        let trimmed = value.trim();
        let shown = || -> String {
            if trimmed.len() > 64 {
                format!("`{}…`", cut(trimmed, 64))
            } else {
                format!("`{trimmed}`")
            }
        };
        let number = match self.config_type {
            ConfigType::Boolean => {
                if !trimmed.eq_ignore_ascii_case("true") && !trimmed.eq_ignore_ascii_case("false") {
                    return Err(format!("{} is not a boolean (true or false)", shown()));
                }
                None
            }
            ConfigType::Int => Some(
                trimmed
                    .parse::<i32>()
                    .map(i64::from)
                    .map_err(|_| format!("{} is not a 32-bit integer", shown()))?,
            ),
            ConfigType::Long => Some(
                trimmed
                    .parse::<i64>()
                    .map_err(|_| format!("{} is not a 64-bit integer", shown()))?,
            ),
            ConfigType::Double => {
                let x: f64 = trimmed
                    .parse()
                    .map_err(|_| format!("{} is not a number", shown()))?;
                if let Validator::RangeF(min, max) = self.validator {
                    if !(min..=max).contains(&x) {
                        return Err(format!("{x} is outside the allowed range {min}..={max}"));
                    }
                }
                None
            }
            ConfigType::String | ConfigType::List => None,
        };
        match self.validator {
            Validator::Range(min, max) => {
                let n = number.unwrap_or_default();
                if n < min || n > max {
                    return Err(format!("{n} is outside the allowed range {min}..={max}"));
                }
            }
            Validator::OneOf(allowed) => {
                if !allowed.iter().any(|a| a.eq_ignore_ascii_case(trimmed)) {
                    return Err(format!("{} is not one of {}", shown(), allowed.join(", ")));
                }
            }
            Validator::ListOf(allowed) => {
                let items = list_items(trimmed);
                if items.is_empty() || items.iter().any(|i| !allowed.contains(i)) {
                    return Err(format!(
                        "{} is not a list of {}",
                        shown(),
                        allowed.join(", ")
                    ));
                }
            }
            Validator::ThrottledReplicas => {
                let items = list_items(trimmed);
                let pair = |item: &str| {
                    item.split_once(':').is_some_and(|(p, b)| {
                        p.trim().parse::<u32>().is_ok() && b.trim().parse::<u32>().is_ok()
                    })
                };
                let ok =
                    trimmed.is_empty() || trimmed == "*" || items.iter().all(|item| pair(item));
                if !ok {
                    return Err(format!(
                        "{} is not empty, * or a list of partition:broker pairs",
                        shown()
                    ));
                }
            }
            Validator::NonEmpty => {
                if trimmed.is_empty() {
                    return Err("the value is empty".to_string());
                }
            }
            Validator::Any | Validator::RangeF(..) => {}
        }
        Ok(())
    }
}

/// The items of a comma-separated list value, trimmed, empty ones dropped.
pub fn list_items(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// The definition of `key`, or an error naming it as unknown.
pub fn check_key(key: &str) -> Result<&'static ConfigDef, TopicConfigError> {
    definition(key).ok_or_else(|| TopicConfigError {
        key: shorten(key),
        message: "unknown topic config".to_string(),
    })
}

/// Checks one key and value: an unknown key or a bad value is an error naming the key.
pub fn check(key: &str, value: &str) -> Result<(), TopicConfigError> {
    let def = check_key(key)?;
    def.check(value).map_err(|message| TopicConfigError {
        key: key.to_string(),
        message,
    })
}

/// A key as an error names it: at most 256 bytes of it (a client may send megabytes).
fn shorten(key: &str) -> String {
    if key.len() > 256 {
        format!("{}…", cut(key, 256))
    } else {
        key.to_string()
    }
}

/// The longest prefix of `text` of at most `bytes_max` bytes that ends on a char boundary.
fn cut(text: &str, bytes_max: usize) -> &str {
    let mut end = bytes_max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Checks a numeric broker default for topic key `key` (rilld's config file).
pub fn check_value(key: &str, value: i64) -> Result<(), String> {
    let def = definition(key).ok_or_else(|| format!("unknown topic config `{key}`"))?;
    def.check(&value.to_string())
}

/// The codec `compression.type` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicCompression {
    /// `producer`: batches are stored as the producer compressed them.
    Producer,
    /// `uncompressed`: compressed batches are stored decompressed.
    Uncompressed,
    /// `gzip`.
    Gzip,
    /// `snappy`.
    Snappy,
    /// `lz4`.
    Lz4,
    /// `zstd`.
    Zstd,
}

impl TopicCompression {
    fn parse(value: &str) -> TopicCompression {
        match value.trim().to_ascii_lowercase().as_str() {
            "uncompressed" => TopicCompression::Uncompressed,
            "gzip" => TopicCompression::Gzip,
            "snappy" => TopicCompression::Snappy,
            "lz4" => TopicCompression::Lz4,
            "zstd" => TopicCompression::Zstd,
            _ => TopicCompression::Producer,
        }
    }
}

/// Kafka's `delete.retention.ms` default: one day.
pub const DELETE_RETENTION_MS_DEFAULT: i64 = 86_400_000;
/// Kafka's `min.cleanable.dirty.ratio` default.
pub const MIN_CLEANABLE_DIRTY_RATIO_DEFAULT: f64 = 0.5;

/// A topic's effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    /// `cleanup.policy`, normalised (`delete`, `compact` or `compact,delete`).
    pub cleanup_policy: String,
    /// `compression.type`.
    pub compression: TopicCompression,
    /// `message.timestamp.type` is `LogAppendTime`.
    pub log_append_time: bool,
    /// `index.interval.bytes`.
    pub index_interval_bytes: i64,
    /// `delete.retention.ms` (Kafka's default: one day).
    pub delete_retention_ms: i64,
    /// `max.compaction.lag.ms` (default: never forces a cleaning).
    pub max_compaction_lag_ms: i64,
    /// `min.cleanable.dirty.ratio` (default 0.5), within 0..=1.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms` (default 0).
    pub min_compaction_lag_ms: i64,
    /// `max.message.bytes`.
    pub max_message_bytes: i64,
    /// `retention.bytes`, -1 = unlimited.
    pub retention_bytes: i64,
    /// `retention.ms`, -1 = forever.
    pub retention_ms: i64,
    /// `segment.bytes`.
    pub segment_bytes: i64,
    /// `segment.ms`.
    pub segment_ms: i64,
    /// The keys the topic set itself (the rest are defaults), as given.
    pub overrides: BTreeMap<String, String>,
    /// The broker defaults the effective values fall back to.
    defaults: TopicDefaults,
}

/// Why a set of topic configs was rejected.
#[derive(Debug, thiserror::Error)]
#[error("config `{key}`: {message}")]
pub struct TopicConfigError {
    /// The key.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl TopicConfig {
    /// Builds the effective config from the broker defaults and the topic's
    /// overrides, rejecting unknown keys and values of the wrong type or range.
    pub fn new(
        defaults: &TopicDefaults,
        overrides: BTreeMap<String, String>,
    ) -> Result<TopicConfig, TopicConfigError> {
        if overrides.len() > crate::controller::TOPIC_CONFIGS_MAX {
            return Err(TopicConfigError {
                key: "(all)".to_string(),
                message: format!(
                    "{} configs, at most {} allowed",
                    overrides.len(),
                    crate::controller::TOPIC_CONFIGS_MAX
                ),
            });
        }
        for (key, value) in &overrides {
            check(key, value)?;
        }
        let value = |key: &str| -> String {
            overrides
                .get(key)
                .map(|v| v.trim().to_string())
                .or_else(|| definition(key).map(|d| d.default_value(defaults)))
                .unwrap_or_default()
        };
        // Checked above (type and range), so these parse.
        let number = |key: &str| value(key).parse::<i64>().unwrap_or_default();
        let policy_value = value("cleanup.policy");
        let mut policy = list_items(&policy_value);
        policy.sort_unstable();
        policy.dedup();
        Ok(TopicConfig {
            cleanup_policy: policy.join(","),
            compression: TopicCompression::parse(&value("compression.type")),
            log_append_time: value("message.timestamp.type").eq_ignore_ascii_case("LogAppendTime"),
            index_interval_bytes: number("index.interval.bytes"),
            delete_retention_ms: number("delete.retention.ms"),
            max_compaction_lag_ms: number("max.compaction.lag.ms"),
            min_cleanable_dirty_ratio: value("min.cleanable.dirty.ratio")
                .parse::<f64>()
                .unwrap_or(MIN_CLEANABLE_DIRTY_RATIO_DEFAULT),
            min_compaction_lag_ms: number("min.compaction.lag.ms"),
            max_message_bytes: number("max.message.bytes"),
            retention_bytes: number("retention.bytes"),
            retention_ms: number("retention.ms"),
            segment_bytes: number("segment.bytes"),
            segment_ms: number("segment.ms"),
            overrides,
            defaults: defaults.clone(),
        })
    }

    /// Whether the log cleaner compacts this topic (`compact` or `compact,delete`).
    pub fn is_compacted(&self) -> bool {
        self.cleanup_policy.split(',').any(|p| p == "compact")
    }

    /// Whether retention deletes old segments (`delete` or `compact,delete`).
    pub fn is_deleted_by_retention(&self) -> bool {
        self.cleanup_policy.split(',').any(|p| p == "delete")
    }

    /// The effective value of `key` as text, or None for an unknown key.
    pub fn value(&self, key: &str) -> Option<String> {
        let def = definition(key)?;
        Some(match self.overrides.get(key) {
            Some(value) => value.clone(),
            None => def.default_value(&self.defaults),
        })
    }

    /// Whether the topic set `key` itself.
    pub fn is_override(&self, key: &str) -> bool {
        self.overrides.contains_key(key)
    }

    /// Kafka's `ConfigSource` of the effective value of `key`: the topic's override,
    /// the operator's broker setting, or the built-in default.
    pub fn source(&self, key: &str) -> i8 {
        if self.is_override(key) {
            SOURCE_TOPIC
        } else if definition(key).is_some_and(|d| d.set_by_broker(&self.defaults)) {
            SOURCE_STATIC_BROKER
        } else {
            SOURCE_DEFAULT
        }
    }

    /// The broker defaults this config falls back to.
    pub fn defaults(&self) -> &TopicDefaults {
        &self.defaults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<TopicConfig, TopicConfigError> {
        let overrides = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TopicConfig::new(&TopicDefaults::default(), overrides)
    }

    #[test]
    fn the_table_is_sorted_so_lookups_find_every_key() {
        for pair in TOPIC_CONFIGS.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} before {}",
                pair[0].name,
                pair[1].name
            );
        }
        for def in TOPIC_CONFIGS {
            assert_eq!(definition(def.name).unwrap().name, def.name);
            // Every default passes its own validation.
            def.check(&def.default_value(&TopicDefaults::default()))
                .unwrap_or_else(|e| panic!("{}: default {e}", def.name));
            assert!(!def.doc.is_empty(), "{} has no documentation", def.name);
            if !def.acted_on && !def.doc.contains("Rill") && !def.doc.contains("compact") {
                panic!("{}: not acted on, and the doc does not say so", def.name);
            }
        }
    }

    #[test]
    fn overrides_replace_defaults_and_are_marked() {
        let config = with(&[("retention.ms", "1000"), ("cleanup.policy", "compact")]).unwrap();
        assert_eq!(config.retention_ms, 1000);
        assert_eq!(config.cleanup_policy, "compact");
        assert!(config.is_override("retention.ms"));
        assert!(!config.is_override("segment.bytes"));
        assert_eq!(config.value("segment.bytes").unwrap(), "134217728");
        assert_eq!(config.value("flush.messages").unwrap(), LONG_MAX);
    }

    #[test]
    fn every_kafka_type_is_accepted_in_range() {
        let config = with(&[
            ("compression.type", "lz4"),
            ("message.timestamp.type", "LogAppendTime"),
            ("min.cleanable.dirty.ratio", "0.1"),
            ("preallocate", "TRUE"),
            ("cleanup.policy", "delete, compact"),
            ("follower.replication.throttled.replicas", "0:1,1:2"),
            ("leader.replication.throttled.replicas", "*"),
            ("min.insync.replicas", "2"),
            ("local.retention.ms", "-2"),
            ("message.format.version", "3.0-IV1"),
        ])
        .unwrap();
        assert_eq!(config.compression, TopicCompression::Lz4);
        assert!(config.log_append_time);
        assert_eq!(config.cleanup_policy, "compact,delete");
    }

    #[test]
    fn the_compaction_keys_reach_the_cleaner_fields() {
        let config = with(&[]).unwrap();
        assert_eq!(config.cleanup_policy, "delete");
        assert!(!config.is_compacted() && config.is_deleted_by_retention());
        assert_eq!(config.delete_retention_ms, DELETE_RETENTION_MS_DEFAULT);
        assert_eq!(config.max_compaction_lag_ms, i64::MAX);
        assert_eq!(
            config.min_cleanable_dirty_ratio,
            MIN_CLEANABLE_DIRTY_RATIO_DEFAULT
        );
        assert_eq!(config.min_compaction_lag_ms, 0);
        let config = with(&[
            ("cleanup.policy", "compact"),
            ("delete.retention.ms", "5"),
            ("max.compaction.lag.ms", "6"),
            ("min.cleanable.dirty.ratio", "0.25"),
            ("min.compaction.lag.ms", "7"),
        ])
        .unwrap();
        assert!(config.is_compacted() && !config.is_deleted_by_retention());
        assert_eq!(config.delete_retention_ms, 5);
        assert_eq!(config.max_compaction_lag_ms, 6);
        assert_eq!(config.min_cleanable_dirty_ratio, 0.25);
        assert_eq!(config.min_compaction_lag_ms, 7);
        for key in [
            "cleanup.policy",
            "delete.retention.ms",
            "max.compaction.lag.ms",
            "min.cleanable.dirty.ratio",
            "min.compaction.lag.ms",
        ] {
            assert!(definition(key).unwrap().acted_on, "{key}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected_naming_the_key() {
        let cases = [
            ("retention.mss", "1", "unknown"),
            ("segment.bytes", "10", "range"),
            ("segment.bytes", "3000000000", "32-bit"),
            ("retention.ms", "x", "64-bit"),
            ("cleanup.policy", "zap", "list"),
            ("cleanup.policy", "", "list"),
            ("compression.type", "brotli", "one of"),
            ("preallocate", "yes", "boolean"),
            ("min.cleanable.dirty.ratio", "1.5", "range"),
            ("min.insync.replicas", "0", "range"),
            ("follower.replication.throttled.replicas", "a:b", "pairs"),
        ];
        for (key, value, says) in cases {
            let err = with(&[(key, value)]).unwrap_err();
            assert_eq!(err.key, key, "{key}={value}");
            assert!(err.to_string().contains(says), "{key}={value}: {err}");
        }
    }

    #[test]
    fn a_huge_value_is_refused_by_its_size_before_parsing() {
        let huge = "9".repeat(CONFIG_VALUE_BYTES_MAX + 1);
        let err = with(&[("retention.ms", &huge)]).unwrap_err();
        assert!(err.message.contains("bytes"), "{err}");
        assert!(err.to_string().len() < 200);
        let long_key = "k".repeat(100_000);
        let err = with(&[(&long_key, "1")]).unwrap_err();
        assert!(err.to_string().len() < 400);
    }
}
