//! Helpers shared by the integration tests: batch builders and a batch walker.
#![allow(dead_code)]

use rill_storage::batch::{self, BatchView, RecordSpec};
use rill_storage::LogConfig;

/// A batch of `records` records of `value_bytes` each, timestamps from `ts`.
pub fn batch_bytes(
    base_offset: i64,
    epoch: i32,
    records: usize,
    value_bytes: usize,
    ts: i64,
) -> Vec<u8> {
    let value: Vec<u8> = (0..value_bytes)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(base_offset as u8))
        .collect();
    let specs: Vec<RecordSpec<'_>> = (0..records)
        .map(|i| RecordSpec {
            timestamp_ms: ts + i as i64,
            key: None,
            value: Some(&value),
        })
        .collect();
    let mut out = Vec::new();
    batch::encode_uncompressed(&mut out, base_offset, epoch, &specs);
    out
}

/// Splits a buffer of whole batches into their headers.
pub fn headers(mut buf: &[u8]) -> Vec<BatchView<'_>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let h = batch::parse_and_verify(buf).expect("valid batch");
        buf = &buf[h.size_bytes()..];
        out.push(h);
    }
    out
}

/// A config with small segments so rolls happen in tests.
pub fn small_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 256,
        retention_ms: None,
        open_maps_max: 2,
        ..LogConfig::default()
    }
}
