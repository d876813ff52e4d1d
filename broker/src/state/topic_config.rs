//! Per-topic configs: the keys a topic may set, their validation, and their
//! effective values (topic override, else broker default).

use std::collections::BTreeMap;

use crate::config::TopicDefaults;

/// Every topic config key Rill accepts, in the order DescribeConfigs lists them.
pub const TOPIC_CONFIG_KEYS: [&str; 6] = [
    "cleanup.policy",
    "max.message.bytes",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
];

/// Documentation DescribeConfigs returns for each key (v3+ `documentation` field).
pub fn documentation(key: &str) -> &'static str {
    match key {
        "cleanup.policy" => {
            "delete, compact or compact,delete. Stored and reported, but compaction is \
             NOT implemented yet: every topic is cleaned by deletion (retention.ms / \
             retention.bytes) only."
        }
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

/// A topic's effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// `cleanup.policy` as given (`delete` unless set). Compaction is not implemented.
    pub cleanup_policy: String,
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
                _ => unreachable!("check_value accepted only known keys"),
            }
        }
        config.overrides = overrides;
        Ok(config)
    }

    /// The effective value of `key` as text, or None for an unknown key.
    pub fn value(&self, key: &str) -> Option<String> {
        Some(match key {
            "cleanup.policy" => self.cleanup_policy.clone(),
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
