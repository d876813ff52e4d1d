//! What a topic's configs change in a producer's batches before they are appended:
//!
//! * `compression.type`: `producer` keeps every batch as it came (the default: no cost).
//!   A codec name recompresses only the batches that use another codec (records,
//!   offsets deltas, timestamps, keys, values, headers, producer id, epoch and sequence
//!   kept); `uncompressed` decompresses compressed ones.
//! * `message.timestamp.type=LogAppendTime`: the batch's attribute bit and maxTimestamp
//!   become the leader's clock, in place (records are not re-encoded), with the CRC
//!   recomputed since it covers both; the Produce answer carries the time.
//!
//! Decompression is bounded ([`DECOMPRESSED_BYTES_MAX`]): a small compressed batch must not
//! make the broker allocate gigabytes.

use bytes::{Bytes, BytesMut};
use rill_protocol::batch::{
    batches, set_log_append_time, BatchBuilder, BatchView, Compression, DecompressRecords, Records,
};

use crate::error::BrokerError;
use crate::state::topic_config::{TopicCompression, TopicConfig};

/// Most bytes one batch's records may decompress to when the broker recompresses it.
pub const DECOMPRESSED_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The records as the topic stores them, and the log-append time stamped on them (if the
/// topic uses LogAppendTime). `records` passed the produce check (whole, valid batches).
pub fn rewrite_for_topic(
    records: Bytes,
    config: &TopicConfig,
    now_ms: i64,
) -> Result<(Bytes, Option<i64>), BrokerError> {
    let target = match config.compression {
        TopicCompression::Producer => None,
        TopicCompression::Uncompressed => Some(Compression::None),
        TopicCompression::Gzip => Some(Compression::Gzip),
        TopicCompression::Snappy => Some(Compression::Snappy),
        TopicCompression::Lz4 => Some(Compression::Lz4),
        TopicCompression::Zstd => Some(Compression::Zstd),
    };
    if target.is_none() && !config.log_append_time {
        // The default: nothing to do, not even a walk over the batch headers.
        return Ok((records, None));
    }
    let needs_codec_change = |view: &BatchView<'_>| {
        target.is_some_and(|codec| view.header().compression() != Some(codec))
    };
    let any_codec_change = batches(&records)
        .flatten()
        .any(|view| needs_codec_change(&view));
    if !any_codec_change && !config.log_append_time {
        return Ok((records, None));
    }
    let mut out = BytesMut::with_capacity(records.len());
    for view in batches(&records) {
        let view = view.map_err(|e| BrokerError::CorruptMessage(e.to_string()))?;
        let start = out.len();
        match target.filter(|_| needs_codec_change(&view)) {
            Some(codec) => out.extend_from_slice(&recompress(&view, codec)?),
            None => out.extend_from_slice(view.as_bytes()),
        }
        if config.log_append_time {
            set_log_append_time(&mut out[start..], now_ms)
                .map_err(|e| BrokerError::CorruptMessage(e.to_string()))?;
        }
    }
    Ok((out.freeze(), config.log_append_time.then_some(now_ms)))
}

/// The batch's records in a new batch compressed with `codec`.
fn recompress(view: &BatchView<'_>, codec: Compression) -> Result<Bytes, BrokerError> {
    let corrupt = |e: &dyn std::fmt::Display| BrokerError::CorruptMessage(e.to_string());
    let header = view.header();
    let source = view
        .decompress_records_bounded(DECOMPRESSED_BYTES_MAX)
        .map_err(|e| corrupt(&e))?;
    let mut builder = BatchBuilder::new(codec).with_producer(
        header.producer_id(),
        header.producer_epoch(),
        header.base_sequence(),
    );
    for record in Records::new(&source, view) {
        let record = record.map_err(|e| corrupt(&e))?;
        let headers: Vec<(&str, Option<&[u8]>)> = record.headers.collect();
        builder
            .push(record.timestamp, record.key, record.value, &headers)
            .map_err(|e| corrupt(&e))?;
    }
    builder.build().map_err(|e| corrupt(&e))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::TopicDefaults;

    fn config(pairs: &[(&str, &str)]) -> TopicConfig {
        let overrides: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TopicConfig::new(&TopicDefaults::default(), overrides).unwrap()
    }

    fn batch(codec: Compression) -> Bytes {
        let mut b = BatchBuilder::new(codec).with_producer(7, 1, 40);
        for i in 0..20 {
            b.push(
                1_000 + i,
                Some(b"k"),
                Some(format!("value-{i}").as_bytes()),
                &[("h", Some(b"x"))],
            )
            .unwrap();
        }
        b.build().unwrap()
    }

    fn values(records: &Bytes) -> Vec<(i64, Vec<u8>)> {
        let mut out = Vec::new();
        for view in batches(records) {
            let view = view.unwrap();
            view.verify_crc().unwrap();
            let source = view.decompress_records().unwrap();
            for r in Records::new(&source, &view) {
                let r = r.unwrap();
                out.push((r.timestamp, r.value.unwrap().to_vec()));
            }
        }
        out
    }

    #[test]
    fn producer_compression_is_kept_without_a_copy() {
        let records = batch(Compression::Gzip);
        let (out, stamped) = rewrite_for_topic(records.clone(), &config(&[]), 5).unwrap();
        assert_eq!(out.as_ptr(), records.as_ptr());
        assert_eq!(stamped, None);
        // The same codec as the topic's: kept too.
        let (out, _) =
            rewrite_for_topic(records.clone(), &config(&[("compression.type", "gzip")]), 5)
                .unwrap();
        assert_eq!(out.as_ptr(), records.as_ptr());
    }

    #[test]
    fn another_codec_is_recompressed_and_uncompressed_decompresses() {
        let records = batch(Compression::Gzip);
        for (name, codec) in [
            ("lz4", Compression::Lz4),
            ("uncompressed", Compression::None),
        ] {
            let (out, _) =
                rewrite_for_topic(records.clone(), &config(&[("compression.type", name)]), 5)
                    .unwrap();
            let view = BatchView::new(&out).unwrap();
            assert_eq!(view.header().compression(), Some(codec), "{name}");
            assert_eq!(view.header().producer_id(), 7);
            assert_eq!(view.header().base_sequence(), 40);
            assert_eq!(view.header().records_count(), 20);
            assert_eq!(values(&out), values(&records), "{name}");
        }
    }

    #[test]
    fn log_append_time_stamps_the_batch_and_keeps_its_crc_valid() {
        let records = Bytes::from(
            [
                batch(Compression::None).to_vec(),
                batch(Compression::Lz4).to_vec(),
            ]
            .concat(),
        );
        let (out, stamped) = rewrite_for_topic(
            records,
            &config(&[("message.timestamp.type", "LogAppendTime")]),
            1_234_567,
        )
        .unwrap();
        assert_eq!(stamped, Some(1_234_567));
        let got = values(&out);
        assert_eq!(got.len(), 40);
        assert!(got.iter().all(|(ts, _)| *ts == 1_234_567), "{got:?}");
        for view in batches(&out) {
            assert!(view.unwrap().header().is_log_append_time());
        }
    }
}
