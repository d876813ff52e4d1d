//! The batch helpers against `kafka-protocol`'s independent encoder and decoder (the oracle),
//! plus the builder and codecs. Layout-only tests live in `rill-record`.

use super::*;
use crate::error::ProtocolError;
use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression as KpCompression, Record, RecordBatchDecoder, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType,
};
use rill_record::varint::{put_varlong, read_varlong, varlong_len};

/// The CRC and the client rules (transactions allowed: the oracle writes transactional
/// batches).
fn validate(view: &BatchView<'_>) -> Result<(), RecordError> {
    view.verify_crc()?;
    validate_client_batch(
        view,
        ClientBatchRules {
            transactions_supported: true,
        },
    )
}

fn sample_batch(compression: Compression) -> Bytes {
    let mut b = BatchBuilder::new(compression).with_producer(77, 3, 10);
    b.push(1_000, Some(b"k0"), Some(b"v0"), &[]).unwrap();
    b.push(
        999,
        None,
        Some(b"v1"),
        &[("h", Some(b"x")), ("h", None), ("other", Some(b""))],
    )
    .unwrap();
    b.push(1_005, Some(b""), None, &[]).unwrap();
    b.build().unwrap()
}

#[test]
fn built_batch_has_the_header_kafka_expects_and_a_valid_crc() {
    let bytes = sample_batch(Compression::None);
    let view = BatchView::new(&bytes).unwrap();
    assert_eq!(view.size_bytes(), bytes.len());
    assert_eq!(view.base_offset(), 0);
    assert_eq!(view.batch_length() as usize, bytes.len() - 12);
    assert_eq!(view.partition_leader_epoch(), -1);
    assert_eq!(view.magic(), 2);
    assert_eq!(view.compression(), Some(Compression::None));
    assert!(!view.is_transactional() && !view.is_control() && !view.is_log_append_time());
    assert_eq!(view.last_offset_delta(), 2);
    assert_eq!(view.base_timestamp(), 1_000);
    assert_eq!(view.max_timestamp(), 1_005);
    assert_eq!(view.producer_id(), 77);
    assert_eq!(view.producer_epoch(), 3);
    assert_eq!(view.base_sequence(), 10);
    assert_eq!(view.records_count(), 3);
    validate(&view).unwrap();
}

#[test]
fn our_records_decode_with_kafka_protocol_and_with_our_iterator() {
    let bytes = sample_batch(Compression::None);
    let set = RecordBatchDecoder::decode(&mut bytes.clone()).unwrap();
    assert_eq!(set.records.len(), 3);
    assert_eq!(set.records[1].offset, 1);
    assert_eq!(set.records[1].timestamp, 999);
    assert_eq!(set.records[1].sequence, 11);
    assert_eq!(set.records[1].value.as_deref(), Some(&b"v1"[..]));
    assert_eq!(set.records[2].key.as_deref(), Some(&b""[..]));
    assert_eq!(set.records[2].value, None);

    let view = BatchView::new(&bytes).unwrap();
    let records: Vec<_> = view.records().unwrap().map(Result::unwrap).collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].key, Some(&b"k0"[..]));
    assert_eq!(records[0].timestamp, 1_000);
    assert_eq!(records[1].offset, 1);
    assert_eq!(records[1].timestamp, 999);
    assert_eq!(
        records[1].headers.clone().collect::<Vec<_>>(),
        vec![
            ("h", Some(&b"x"[..])),
            ("h", None),
            ("other", Some(&b""[..]))
        ]
    );
    assert_eq!(records[2].value, None);
}

#[test]
fn batches_encoded_by_kafka_protocol_are_read_in_place() {
    let records: Vec<Record> = (0..5)
        .map(|i| Record {
            transactional: true,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 9,
            producer_id: 5,
            producer_epoch: 1,
            timestamp_type: TimestampType::Creation,
            offset: 100 + i,
            sequence: i as i32,
            timestamp: 50 + i,
            key: None,
            value: Some(Bytes::from(vec![i as u8; 10])),
            headers: IndexMap::from([(StrBytes::from_static_str("a"), None)]),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: KpCompression::None,
        },
    )
    .unwrap();
    let view = BatchView::new(&buf).unwrap();
    validate(&view).unwrap();
    assert_eq!(view.base_offset(), 100);
    assert_eq!(view.last_offset(), 104);
    assert_eq!(view.next_offset(), 105);
    assert_eq!(view.partition_leader_epoch(), 9);
    assert!(view.is_transactional());
    let ours: Vec<_> = view.records().unwrap().map(Result::unwrap).collect();
    for (r, o) in records.iter().zip(&ours) {
        assert_eq!(o.offset, r.offset);
        assert_eq!(o.timestamp, r.timestamp);
        assert_eq!(o.value, r.value.as_deref());
        assert_eq!(o.headers.clone().collect::<Vec<_>>(), vec![("a", None)]);
    }
}

#[test]
fn a_flipped_bit_fails_the_crc_but_stamping_offset_and_epoch_does_not() {
    let bytes = sample_batch(Compression::None);
    let mut copy = bytes.to_vec();
    set_base_offset(&mut copy, 1234).unwrap();
    set_partition_leader_epoch(&mut copy, 7).unwrap();
    let view = BatchView::new(&copy).unwrap();
    validate(&view).unwrap();
    assert_eq!(
        (view.base_offset(), view.partition_leader_epoch()),
        (1234, 7)
    );
    assert_eq!(
        view.records().unwrap().nth(2).unwrap().unwrap().offset,
        1236
    );

    for at in [21, 30, 60, copy.len() - 1] {
        let mut bad = copy.clone();
        bad[at] ^= 0x10;
        let err = BatchView::new(&bad).unwrap().verify_crc().unwrap_err();
        assert!(matches!(err, RecordError::CrcMismatch { .. }), "byte {at}");
        assert_eq!(ProtocolError::from(err).kafka_error_code(), Some(2));
    }
}

#[test]
fn log_append_time_rewrites_timestamps_and_keeps_the_crc_valid() {
    let mut copy = sample_batch(Compression::None).to_vec();
    set_log_append_time(&mut copy, 42_000).unwrap();
    let view = BatchView::new(&copy).unwrap();
    validate(&view).unwrap();
    assert!(view.is_log_append_time());
    assert!(view
        .records()
        .unwrap()
        .all(|r| r.unwrap().timestamp == 42_000));
}

#[test]
fn garbage_batches_are_rejected_with_typed_errors() {
    let good = sample_batch(Compression::None).to_vec();
    assert!(matches!(
        BatchView::new(&good[..60]),
        Err(RecordError::Truncated { .. })
    ));
    let mut bad = good.clone();
    bad[16] = 1;
    assert!(matches!(
        BatchView::new(&bad),
        Err(RecordError::UnsupportedMagic { magic: 1 })
    ));
    let mut bad = good.clone();
    bad[8..12].copy_from_slice(&48i32.to_be_bytes());
    assert!(BatchView::new(&bad).is_err());
    let mut bad = good.clone();
    bad[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
    assert!(BatchView::new(&bad).is_err());
    let mut bad = good.clone();
    bad[8..12].copy_from_slice(&(-1i32).to_be_bytes());
    assert!(BatchView::new(&bad).is_err());

    // Header inconsistencies are caught by validate() even with a matching CRC.
    let fix_crc = |b: &mut Vec<u8>| {
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
    };
    for (at, value) in [(57usize, 0i32), (57, -5), (57, 1_000_000), (23, -1)] {
        let mut bad = good.clone();
        bad[at..at + 4].copy_from_slice(&value.to_be_bytes());
        fix_crc(&mut bad);
        assert!(
            matches!(
                validate(&BatchView::new(&bad).unwrap()),
                Err(e) if e.is_invalid_record()
            ),
            "field at {at} = {value}"
        );
    }
    let mut bad = good.clone();
    bad[22] |= 0x07; // codec 7
    fix_crc(&mut bad);
    assert!(validate(&BatchView::new(&bad).unwrap()).is_err());

    // A record whose length runs past the batch is a typed error, not a panic.
    let mut bad = good.clone();
    bad[61] = 0x7e; // record length 63
    let err = BatchView::new(&bad)
        .unwrap()
        .records()
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, RecordError::CorruptRecord { .. }));
    assert!(matches!(
        ProtocolError::from(err),
        ProtocolError::CorruptRecord { .. }
    ));
}

#[test]
fn batches_iterator_stops_at_a_truncated_tail() {
    let one = sample_batch(Compression::None);
    let mut blob = Vec::new();
    for _ in 0..3 {
        blob.extend_from_slice(&one);
    }
    for cut in 0..=blob.len() {
        let mut it = batches(&blob[..cut]);
        let n = it.by_ref().inspect(|b| assert!(b.is_ok())).count();
        assert_eq!(n, cut / one.len(), "cut at {cut}");
        assert_eq!(it.position(), n * one.len());
        assert_eq!(it.remainder().len(), cut - n * one.len());
    }
}

#[test]
fn batches_iterator_reports_garbage_once() {
    let one = sample_batch(Compression::None);
    let mut blob = one.to_vec();
    blob.extend_from_slice(&[0u8; 70]); // batch_length 0: garbage, not a truncation
    let results: Vec<_> = batches(&blob).collect();
    assert_eq!(results.len(), 2);
    assert!(results[0].is_ok());
    assert!(results[1].is_err());
}

type RecordSpec = (
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

fn record_spec() -> impl proptest::strategy::Strategy<Value = RecordSpec> {
    use proptest::prelude::*;
    (
        any::<i64>(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::collection::vec(
            (
                "[a-z.]{0,6}",
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            ),
            0..3,
        ),
    )
}

proptest::proptest! {
    #[test]
    fn any_records_round_trip_through_builder_view_and_iterator(
        specs in proptest::collection::vec(record_spec(), 1..20),
        producer_id in -1i64..1000,
        base_sequence in -1i32..i32::MAX,
    ) {
        let mut builder = BatchBuilder::new(Compression::None).with_producer(producer_id, 0, base_sequence);
        for (ts, key, value, headers) in &specs {
            let headers: Vec<(&str, Option<&[u8]>)> =
                headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            builder.push(*ts, key.as_deref(), value.as_deref(), &headers).unwrap();
        }
        let bytes = builder.build().unwrap();
        let view = BatchView::new(&bytes).unwrap();
        validate(&view).unwrap();
        proptest::prop_assert_eq!(view.records_count() as usize, specs.len());
        proptest::prop_assert_eq!(view.max_timestamp(), specs.iter().map(|s| s.0).max().unwrap());
        let records: Vec<_> = view.records().unwrap().map(Result::unwrap).collect();
        proptest::prop_assert_eq!(records.len(), specs.len());
        for (i, (r, (ts, key, value, headers))) in records.iter().zip(&specs).enumerate() {
            proptest::prop_assert_eq!(r.offset, i as i64);
            proptest::prop_assert_eq!(r.timestamp, *ts);
            proptest::prop_assert_eq!(r.key, key.as_deref());
            proptest::prop_assert_eq!(r.value, value.as_deref());
            let expected: Vec<(&str, Option<&[u8]>)> =
                headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            proptest::prop_assert_eq!(&r.headers.clone().collect::<Vec<_>>(), &expected);
        }
        // kafka-protocol's decoder agrees on offsets, timestamps and values. It adds
        // timestamp deltas without wrapping (a panic in debug builds), so it is asked
        // only when no delta from the batch's base timestamp overflows.
        let base_ts = view.base_timestamp();
        if specs.iter().any(|s| s.0.checked_sub(base_ts).is_none()) {
            return Ok(());
        }
        let set = RecordBatchDecoder::decode(&mut bytes.clone()).unwrap();
        for (theirs, ours) in set.records.iter().zip(&records) {
            proptest::prop_assert_eq!(theirs.offset, ours.offset);
            proptest::prop_assert_eq!(theirs.timestamp, ours.timestamp);
            proptest::prop_assert_eq!(theirs.value.as_deref(), ours.value);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_batch_helpers(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        for view in batches(&data) {
            let Ok(view) = view else { break };
            let _ = validate(&view);
            if let Ok(records) = view.records() {
                for r in records {
                    if r.is_err() { break; }
                }
            }
        }
    }
}

#[test]
fn empty_builder_refuses_to_build() {
    assert!(BatchBuilder::default().build().is_err());
}

#[test]
fn varlong_len_matches_encoding() {
    for v in [
        0i64,
        1,
        -1,
        63,
        64,
        -64,
        -65,
        300,
        i64::MAX,
        i64::MIN,
        1 << 40,
    ] {
        let mut b = BytesMut::new();
        put_varlong(&mut b, v);
        assert_eq!(b.len(), varlong_len(v), "{v}");
        let mut s = &b[..];
        assert_eq!(read_varlong(&mut s).unwrap(), v);
    }
}

#[cfg(not(feature = "compression"))]
#[test]
fn compression_without_the_feature_is_a_typed_error() {
    let mut b = BatchBuilder::new(Compression::Gzip);
    b.push(0, None, Some(b"x"), &[]).unwrap();
    assert!(matches!(
        b.build(),
        Err(ProtocolError::CompressionUnavailable { codec: 1 })
    ));
}

#[cfg(feature = "compression")]
#[test]
fn decompression_bombs_are_refused_at_the_cap() {
    let zeros = vec![0u8; 4 << 20];
    for codec in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let mut b = BatchBuilder::new(codec);
        b.push(0, None, Some(&zeros), &[]).unwrap();
        let bytes = b.build().unwrap();
        assert!(bytes.len() < 1 << 20, "{codec:?}: {} bytes", bytes.len());
        let view = BatchView::new(&bytes).unwrap();
        assert!(
            matches!(
                view.decompress_records_bounded(1 << 20),
                Err(ProtocolError::DecompressedTooLarge { limit }) if limit == 1 << 20
            ),
            "{codec:?}"
        );
        let plain = view.decompress_records().unwrap();
        assert!(plain.len() > 4 << 20);
        let record = Records::new(&plain, &view).next().unwrap().unwrap();
        assert_eq!(record.value.unwrap().len(), 4 << 20);
    }
}

#[cfg(feature = "compression")]
#[test]
fn raw_snappy_without_xerial_framing_is_accepted() {
    let plain_batch = sample_batch(Compression::None);
    let records = &plain_batch[BATCH_HEADER_BYTES..];
    let compressed = snap::raw::Encoder::new().compress_vec(records).unwrap();
    let mut batch = plain_batch[..BATCH_HEADER_BYTES].to_vec();
    batch.extend_from_slice(&compressed);
    let batch_length = (batch.len() - BATCH_LENGTH_PREFIX_BYTES) as i32;
    batch[8..12].copy_from_slice(&batch_length.to_be_bytes());
    batch[21..23].copy_from_slice(&Compression::Snappy.id().to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    let view = BatchView::new(&batch).unwrap();
    validate(&view).unwrap();
    assert_eq!(&view.decompress_records().unwrap()[..], records);
    // A raw block that claims a huge length is refused before anything is allocated.
    let mut lying = batch.clone();
    lying.truncate(BATCH_HEADER_BYTES);
    lying.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]);
    let batch_length = (lying.len() - BATCH_LENGTH_PREFIX_BYTES) as i32;
    lying[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let view = BatchView::new(&lying).unwrap();
    assert!(matches!(
        view.decompress_records_bounded(1 << 20),
        Err(ProtocolError::DecompressedTooLarge { .. })
    ));
}

#[cfg(feature = "compression")]
#[test]
fn every_codec_round_trips_and_kafka_protocol_agrees() {
    for codec in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let mut b = BatchBuilder::new(codec);
        for i in 0..100u32 {
            let value = format!("value-{i}-{}", "x".repeat(50));
            b.push(i64::from(i), None, Some(value.as_bytes()), &[])
                .unwrap();
        }
        let bytes = b.build().unwrap();
        let view = BatchView::new(&bytes).unwrap();
        validate(&view).unwrap();
        assert_eq!(view.compression(), Some(codec));
        assert!(bytes.len() < 100 * 50, "{codec:?} did not compress");
        let plain = view.decompress_records().unwrap();
        let records: Vec<_> = Records::new(&plain, &view).map(Result::unwrap).collect();
        assert_eq!(records.len(), 100);
        assert_eq!(records[99].offset, 99);
        let set = RecordBatchDecoder::decode(&mut bytes.clone()).unwrap();
        assert_eq!(set.records.len(), 100);
        assert_eq!(
            set.records[7].value,
            Some(Bytes::from(format!("value-7-{}", "x".repeat(50))))
        );
    }
}
