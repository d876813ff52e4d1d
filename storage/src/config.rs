//! Every bound of a partition log, in one place, with its default.

use crate::error::{Result, StorageError};

/// Smallest accepted `segment_bytes`: one batch header plus a little room.
pub const SEGMENT_BYTES_MIN: u64 = 1024;
/// Largest accepted `segment_bytes`: file positions in `.index` entries are `u32`
/// and Kafka caps segments at `i32::MAX` too.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;
/// Disk a new active segment file reserves (`fallocate`) when created, and the
/// smallest step by which it grows; capped at `segment_bytes`. Small, so an idle
/// partition costs about this much disk instead of a whole segment: 10,000 idle RF=3
/// partitions on one machine take about 2 GB (at 1 MiB they took 30 GB). A busy
/// segment reaches 16 MiB steps after a few doublings, and the replica engine grows
/// a written partition's segment ahead of its writes anyway.
pub const SEGMENT_GROWTH_STEP_BYTES_MIN: usize = 64 * 1024;
/// Largest step by which an active segment file grows: steps double from
/// [`SEGMENT_GROWTH_STEP_BYTES_MIN`] up to this, so a busy segment pays one
/// `fallocate` per this many bytes (measured: no visible cost next to the writes).
pub const SEGMENT_GROWTH_STEP_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Configuration of one [`crate::PartitionLog`]. Construct with [`LogConfig::default`]
/// and override fields; [`crate::PartitionLog::open`] calls [`LogConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Size of a segment file. The active segment file is reserved with `fallocate`
    /// in growing steps ([`SEGMENT_GROWTH_STEP_BYTES_MIN`] doubling up to
    /// [`SEGMENT_GROWTH_STEP_BYTES_MAX`], never beyond this size) before any byte is
    /// written there, so a full disk is an append error, not a SIGBUS on a page
    /// fault; it is rolled when the next append would not fit in this size.
    /// Default 128 MiB; range [`SEGMENT_BYTES_MIN`]..=[`SEGMENT_BYTES_MAX`].
    pub segment_bytes: u64,
    /// Roll the active segment when it is older than this (checked by
    /// [`crate::PartitionLog::maybe_roll`]); `None` (default): roll only by size.
    pub segment_ms: Option<u64>,
    /// Bytes of log between two sparse index entries. Default 4096; at least 1.
    pub index_interval_bytes: u32,
    /// Delete closed segments whose newest timestamp is older than this.
    /// Default `Some(7 days)` as in Kafka; `None` keeps data forever.
    pub retention_ms: Option<i64>,
    /// Delete the oldest closed segments while the log stays at or above this size
    /// without them. Default `None` (no size limit).
    pub retention_bytes: Option<u64>,
    /// Most closed segments kept memory-mapped at once (with their indexes loaded);
    /// least recently read ones are unmapped beyond this. Default 8; at least 1.
    pub open_maps_max: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 128 * 1024 * 1024,
            segment_ms: None,
            index_interval_bytes: 4096,
            retention_ms: Some(7 * 24 * 60 * 60 * 1000),
            retention_bytes: None,
            open_maps_max: 8,
        }
    }
}

impl LogConfig {
    /// Checks every field against its range; the error names the offending key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &'static str, reason: String| Err(StorageError::Config { key, reason });
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return bad(
                "segment_bytes",
                format!(
                    "{} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                    self.segment_bytes
                ),
            );
        }
        if self.segment_ms == Some(0) {
            return bad("segment_ms", "must be at least 1 when set".into());
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes", "must be at least 1".into());
        }
        if let Some(ms) = self.retention_ms {
            if ms < 0 {
                return bad("retention_ms", format!("{ms} is negative"));
            }
        }
        if self.open_maps_max == 0 {
            return bad("open_maps_max", "must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        LogConfig::default().validate().unwrap();
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases: Vec<(LogConfig, &str)> = vec![
            (
                LogConfig {
                    segment_bytes: 10,
                    ..LogConfig::default()
                },
                "segment_bytes",
            ),
            (
                LogConfig {
                    segment_ms: Some(0),
                    ..LogConfig::default()
                },
                "segment_ms",
            ),
            (
                LogConfig {
                    index_interval_bytes: 0,
                    ..LogConfig::default()
                },
                "index_interval_bytes",
            ),
            (
                LogConfig {
                    retention_ms: Some(-5),
                    ..LogConfig::default()
                },
                "retention_ms",
            ),
            (
                LogConfig {
                    open_maps_max: 0,
                    ..LogConfig::default()
                },
                "open_maps_max",
            ),
        ];
        for (config, key) in cases {
            match config.validate() {
                Err(StorageError::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("expected Config error for {key}, got {other:?}"),
            }
        }
    }
}
