//! Per-topic configs: the keys a topic may set, their validation, and their
//! effective values (topic override, else broker default).

use std::collections::BTreeMap;

use crate::config::TopicDefaults;

/// Every topic config key Rill accepts, in the order DescribeConfigs lists them.
pub const TOPIC_CONFIG_KEYS: [&str; 10] = [
    "cleanup.policy",
    "delete.retention.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
];

/// Documentation DescribeConfigs returns for each key (v3+ `documentation` field).
pub fn documentation(key: &str) -> &'static str {
    match key {
        "cleanup.policy" => {
            "delete, compact or compact,delete: compact keeps the last record per key \
             (the broker's log cleaner), delete applies retention.ms / retention.bytes, \
             compact,delete both."
        }
        "delete.retention.ms" => {
            "How long a tombstone stays after its offset was first compacted, so consumers \
             see deletions."
        }
        "max.compaction.lag.ms" => {
            "A compacted log whose oldest uncompacted record is older than this is cleaned \
             whatever its dirty ratio."
        }
        "min.cleanable.dirty.ratio" => {
            "A compacted log is cleaned once uncompacted bytes are at least this share of \
             its cleanable bytes."
        }
        "min.compaction.lag.ms" => "Records stay uncompacted at least this long.",
        "max.message.bytes" => "Largest record batch (bytes) a producer may send to this topic.",
        "retention.bytes" => {
            "Delete oldest closed segments while a partition is larger; -1 = no limit."
        }
        "retention.ms" => "Delete closed segments whose newest record is older; -1 = keep forever.",
        "segment.bytes" => "Roll a new segment file at this size.",
        "segment.ms" => "Roll a new segment when the active one is older than this.",
        _ => "",
    }
}

/// The broker key a topic key falls back to (reported as a synonym).
pub fn broker_key(key: &str) -> &'static str {
    match key {
        "cleanup.policy" => "log_cleanup_policy",
        "delete.retention.ms" => "log_cleaner_delete_retention_ms",
        "max.compaction.lag.ms" => "log_cleaner_max_compaction_lag_ms",
        "min.cleanable.dirty.ratio" => "log_cleaner_min_cleanable_ratio",
        "min.compaction.lag.ms" => "log_cleaner_min_compaction_lag_ms",
        "max.message.bytes" => "message_max_bytes",
        "retention.bytes" => "log_retention_bytes",
        "retention.ms" => "log_retention_ms",
        "segment.bytes" => "log_segment_bytes",
        "segment.ms" => "log_segment_ms",
        _ => "",
    }
}

/// Checks a numeric value of `key`; the error message says what is allowed.
pub fn check_value(key: &str, value: i64) -> Result<(), String> {
    let (min, max) = match key {
        "retention.ms" | "retention.bytes" => (-1, i64::MAX),
        "delete.retention.ms" | "min.compaction.lag.ms" => (0, i64::MAX),
        "max.compaction.lag.ms" => (1, i64::MAX),
        // Segment file positions are u32 in the index; at least 1 MiB keeps the file
        // count sane (and is storage's largest read-ahead window).
        "segment.bytes" => (1_048_576, i32::MAX as i64),
        "segment.ms" => (1, i64::MAX),
        "max.message.bytes" => (64, i32::MAX as i64),
        _ => return Err(format!("unknown topic config `{key}`")),
    };
    if value < min || value > max {
        return Err(format!(
            "{value} is outside the allowed range {min}..={max}"
        ));
    }
    Ok(())
}

/// Kafka's `delete.retention.ms` default: one day.
pub const DELETE_RETENTION_MS_DEFAULT: i64 = 86_400_000;
/// Kafka's `min.cleanable.dirty.ratio` default.
pub const MIN_CLEANABLE_DIRTY_RATIO_DEFAULT: f64 = 0.5;

/// A topic's effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    /// `cleanup.policy` (`delete` unless set; `compact`, `compact,delete`).
    pub cleanup_policy: String,
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
    /// The keys the topic set itself (the rest are broker defaults).
    pub overrides: BTreeMap<String, String>,
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
    /// overrides, rejecting unknown keys and out-of-range values.
    pub fn new(
        defaults: &TopicDefaults,
        overrides: BTreeMap<String, String>,
    ) -> Result<TopicConfig, TopicConfigError> {
        let mut config = TopicConfig {
            cleanup_policy: "delete".to_string(),
            delete_retention_ms: DELETE_RETENTION_MS_DEFAULT,
            max_compaction_lag_ms: i64::MAX,
            min_cleanable_dirty_ratio: MIN_CLEANABLE_DIRTY_RATIO_DEFAULT,
            min_compaction_lag_ms: 0,
            max_message_bytes: defaults.max_message_bytes,
            retention_bytes: defaults.retention_bytes,
            retention_ms: defaults.retention_ms,
            segment_bytes: defaults.segment_bytes,
            segment_ms: defaults.segment_ms,
            overrides: BTreeMap::new(),
        };
        for (key, value) in &overrides {
            let error = |message: String| TopicConfigError {
                key: key.clone(),
                message,
            };
            if key == "cleanup.policy" {
                let mut parts: Vec<&str> = value.split(',').map(str::trim).collect();
                parts.sort_unstable();
                parts.dedup();
                if parts.is_empty() || parts.iter().any(|p| *p != "delete" && *p != "compact") {
                    return Err(error(format!(
                        "`{value}` is not delete, compact or compact,delete"
                    )));
                }
                config.cleanup_policy = parts.join(",");
                continue;
            }
            if key == "min.cleanable.dirty.ratio" {
                config.min_cleanable_dirty_ratio = value
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| error(format!("`{value}` is not a number in 0..=1")))?;
                continue;
            }
            let number: i64 = value
                .trim()
                .parse()
                .map_err(|_| error(format!("`{value}` is not an integer")))?;
            check_value(key, number).map_err(error)?;
            match key.as_str() {
                "max.message.bytes" => config.max_message_bytes = number,
                "retention.bytes" => config.retention_bytes = number,
                "retention.ms" => config.retention_ms = number,
                "segment.bytes" => config.segment_bytes = number,
                "segment.ms" => config.segment_ms = number,
                "delete.retention.ms" => config.delete_retention_ms = number,
                "max.compaction.lag.ms" => config.max_compaction_lag_ms = number,
                "min.compaction.lag.ms" => config.min_compaction_lag_ms = number,
                _ => unreachable!("check_value accepted only known keys"),
            }
        }
        config.overrides = overrides;
        Ok(config)
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
        Some(match key {
            "cleanup.policy" => self.cleanup_policy.clone(),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "max.compaction.lag.ms" => self.max_compaction_lag_ms.to_string(),
            "min.cleanable.dirty.ratio" => self.min_cleanable_dirty_ratio.to_string(),
            "min.compaction.lag.ms" => self.min_compaction_lag_ms.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "retention.ms" => self.retention_ms.to_string(),
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            _ => return None,
        })
    }

    /// Whether the topic set `key` itself.
    pub fn is_override(&self, key: &str) -> bool {
        self.overrides.contains_key(key)
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
    fn overrides_replace_defaults_and_are_marked() {
        let config = with(&[("retention.ms", "1000"), ("cleanup.policy", "compact")]).unwrap();
        assert_eq!(config.retention_ms, 1000);
        assert_eq!(config.cleanup_policy, "compact");
        assert!(config.is_override("retention.ms"));
        assert!(!config.is_override("segment.bytes"));
        assert_eq!(config.value("segment.bytes").unwrap(), "134217728");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected_naming_the_key() {
        assert_eq!(
            with(&[("retention.mss", "1")]).unwrap_err().key,
            "retention.mss"
        );
        assert_eq!(
            with(&[("segment.bytes", "10")]).unwrap_err().key,
            "segment.bytes"
        );
        assert_eq!(
            with(&[("retention.ms", "x")]).unwrap_err().key,
            "retention.ms"
        );
        assert_eq!(
            with(&[("cleanup.policy", "zap")]).unwrap_err().key,
            "cleanup.policy"
        );
    }
}
