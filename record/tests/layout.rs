//! The layout, walker, record iterator, writers and client rules, on batches built here
//! with the crate's own writers (rill-protocol's tests check the same code against
//! kafka-protocol's independent encoder and decoder).

use rill_record::layout::*;
use rill_record::varint::put_varlong;
use rill_record::write::{
    finish_batch, set_base_offset, set_log_append_time, set_partition_leader_epoch, BatchFields,
};
use rill_record::{
    batches, validate_client_batch, BatchView, ClientBatchRules, RecordError, TimestampType,
};

type Header<'a> = (&'a str, Option<&'a [u8]>);

fn put_nullable(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varlong(out, -1),
        Some(b) => {
            put_varlong(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// A batch of `values` at timestamps 1000, 1001, ...; the first record has two headers.
fn batch(values: &[Option<&[u8]>], attributes: i16) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_BYTES];
    let mut body = Vec::new();
    for (i, v) in values.iter().enumerate() {
        body.clear();
        body.push(0);
        put_varlong(&mut body, i as i64);
        put_varlong(&mut body, i as i64);
        put_nullable(&mut body, Some(format!("k{i}").as_bytes()));
        put_nullable(&mut body, *v);
        let headers: &[Header<'_>] = if i == 0 {
            &[("h", Some(b"x")), ("h", None)]
        } else {
            &[]
        };
        put_varlong(&mut body, headers.len() as i64);
        for (k, v) in headers {
            put_nullable(&mut body, Some(k.as_bytes()));
            put_nullable(&mut body, *v);
        }
        put_varlong(&mut out, body.len() as i64);
        out.extend_from_slice(&body);
    }
    let n = values.len() as i32;
    let fields = BatchFields {
        base_offset: 0,
        partition_leader_epoch: -1,
        attributes,
        last_offset_delta: n - 1,
        base_timestamp: 1000,
        max_timestamp: 1000 + i64::from(n) - 1,
        producer_id: 7,
        producer_epoch: 1,
        base_sequence: 3,
        records_count: n,
    };
    finish_batch(&mut out, &fields).unwrap();
    out
}

fn set_i32(b: &mut [u8], pos: usize, v: i32) {
    b[pos..pos + 4].copy_from_slice(&v.to_be_bytes());
}

fn fix_crc(b: &mut [u8]) {
    let crc = rill_record::compute_crc(b);
    b[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn header_fields_are_read_where_the_layout_puts_them() {
    let b = batch(&[Some(b"a"), None, Some(b"ccc")], 0);
    let v = BatchView::new(&b).unwrap();
    assert_eq!(v.size_bytes(), b.len());
    assert_eq!(v.batch_length() as usize, b.len() - LOG_OVERHEAD_BYTES);
    assert_eq!(
        (v.base_offset(), v.partition_leader_epoch(), v.magic()),
        (0, -1, 2)
    );
    assert_eq!((v.last_offset_delta(), v.records_count()), (2, 3));
    assert_eq!((v.base_timestamp(), v.max_timestamp()), (1000, 1002));
    assert_eq!(
        (v.producer_id(), v.producer_epoch(), v.base_sequence()),
        (7, 1, 3)
    );
    assert_eq!(v.compression(), Some(Compression::None));
    assert_eq!(v.timestamp_type(), TimestampType::CreateTime);
    assert!(!v.is_control() && !v.is_transactional());
    v.verify_crc().unwrap();
    validate_client_batch(&v, ClientBatchRules::default()).unwrap();
}

#[test]
fn records_and_headers_decode_in_place() {
    let b = batch(&[Some(b"a"), None, Some(b"ccc")], 0);
    let v = BatchView::new(&b).unwrap();
    let records: Vec<_> = v.records().unwrap().map(Result::unwrap).collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].key, Some(&b"k0"[..]));
    assert_eq!(records[1].value, None);
    assert_eq!((records[2].offset, records[2].timestamp), (2, 1002));
    let headers: Vec<_> = records[0].headers.clone().collect();
    assert_eq!(headers, vec![("h", Some(&b"x"[..])), ("h", None)]);
    assert_eq!(records[0].headers.len(), 2);
    assert!(records[1].headers.is_empty());
}

#[test]
fn stamping_offset_and_epoch_keeps_the_crc_and_log_append_time_rewrites_it() {
    let mut b = batch(&[Some(b"a"), Some(b"b")], 0);
    set_base_offset(&mut b, 1234).unwrap();
    set_partition_leader_epoch(&mut b, 9).unwrap();
    let v = BatchView::new(&b).unwrap();
    v.verify_crc().unwrap();
    assert_eq!((v.base_offset(), v.partition_leader_epoch()), (1234, 9));
    assert_eq!(v.records().unwrap().nth(1).unwrap().unwrap().offset, 1235);
    set_log_append_time(&mut b, 42_000).unwrap();
    let v = BatchView::new(&b).unwrap();
    v.verify_crc().unwrap();
    assert_eq!(v.timestamp_type(), TimestampType::LogAppendTime);
    assert!(v.records().unwrap().all(|r| r.unwrap().timestamp == 42_000));
    assert!(set_base_offset(&mut [0u8; 7], 1).is_err());
    assert!(set_log_append_time(&mut [0u8; 60], 1).is_err());
}

#[test]
fn a_flipped_bit_in_the_crc_range_fails_the_crc() {
    let b = batch(&[Some(b"hello")], 0);
    for at in CRC_START_POS..b.len() {
        let mut bad = b.clone();
        bad[at] ^= 0x10;
        assert!(
            matches!(
                BatchView::new(&bad).unwrap().verify_crc(),
                Err(RecordError::CrcMismatch { .. })
            ),
            "byte {at}"
        );
    }
}

#[test]
fn views_refuse_garbage_with_typed_errors() {
    let good = batch(&[Some(b"a")], 0);
    assert!(matches!(
        BatchView::new(&good[..60]),
        Err(RecordError::Truncated { .. })
    ));
    let mut old = good.clone();
    old[MAGIC_POS] = 1;
    assert_eq!(
        BatchView::new(&old),
        Err(RecordError::UnsupportedMagic { magic: 1 })
    );
    // A v1 message is shorter than a v2 header: still reported as its magic.
    assert_eq!(
        BatchView::new(&old[..26]),
        Err(RecordError::UnsupportedMagic { magic: 1 })
    );
    for len in [48, -1, i32::MIN] {
        let mut bad = good.clone();
        set_i32(&mut bad, BATCH_LENGTH_POS, len);
        assert_eq!(
            BatchView::new(&bad),
            Err(RecordError::BadBatchLength { batch_length: len })
        );
    }
    let mut bad = good.clone();
    set_i32(&mut bad, BATCH_LENGTH_POS, i32::MAX);
    assert!(matches!(
        BatchView::new(&bad),
        Err(RecordError::Truncated { .. })
    ));
    // A record length past the batch is an error, not a panic.
    let mut bad = good.clone();
    bad[HEADER_BYTES] = 0x7e;
    let err = BatchView::new(&bad)
        .unwrap()
        .records()
        .unwrap()
        .next()
        .unwrap();
    assert!(matches!(err, Err(RecordError::CorruptRecord { .. })));
}

#[test]
fn walker_stops_at_a_truncated_tail_and_reports_garbage_once() {
    let one = batch(&[Some(b"a"), Some(b"b")], 0);
    let blob: Vec<u8> = one.iter().chain(&one).chain(&one).copied().collect();
    for cut in 0..=blob.len() {
        let mut it = batches(&blob[..cut]);
        let n = it.by_ref().inspect(|b| assert!(b.is_ok())).count();
        assert_eq!(n, cut / one.len(), "cut at {cut}");
        assert_eq!(it.position(), n * one.len());
        assert_eq!(it.remainder().len(), cut - n * one.len());
    }
    let mut garbage = one.clone();
    garbage.extend_from_slice(&[0u8; 70]);
    let results: Vec<_> = batches(&garbage).collect();
    assert_eq!(results.len(), 2);
    assert!(results[0].is_ok() && results[1].is_err());
}

#[test]
fn client_rules_refuse_each_broken_rule_and_check_the_crc_first() {
    let rules = ClientBatchRules::default();
    let check = |b: &[u8]| validate_client_batch(&BatchView::new(b).unwrap(), rules);
    let good = batch(&[Some(b"a"), Some(b"b"), Some(b"c")], 0);

    let mut bad = good.clone();
    set_i32(&mut bad, LAST_OFFSET_DELTA_POS, 5);
    fix_crc(&mut bad);
    assert!(matches!(
        check(&bad),
        Err(RecordError::InconsistentRecordsCount { .. })
    ));
    let e = check(&bad).unwrap_err();
    assert!(e.is_invalid_record());
    assert!(e
        .to_string()
        .starts_with("Inconsistent batch offset range and record count"));

    let mut bad = good.clone();
    set_i32(&mut bad, RECORDS_COUNT_POS, 0);
    fix_crc(&mut bad);
    assert_eq!(
        check(&bad),
        Err(RecordError::InvalidRecordsCount { records_count: 0 })
    );

    let mut bad = good.clone();
    set_i32(&mut bad, LAST_OFFSET_DELTA_POS, -1);
    fix_crc(&mut bad);
    assert!(matches!(
        check(&bad),
        Err(RecordError::InvalidOffsetRange { .. })
    ));

    // 3 records fit; 100,000 do not fit the same bytes, even with a matching delta.
    let mut bad = good.clone();
    set_i32(&mut bad, LAST_OFFSET_DELTA_POS, 99_999);
    set_i32(&mut bad, RECORDS_COUNT_POS, 100_000);
    fix_crc(&mut bad);
    assert!(matches!(
        check(&bad),
        Err(RecordError::RecordsCountExceedsBytes { .. })
    ));
    // ... nor as gzip, whose worst-case expansion is 1032:1 ...
    bad[ATTRIBUTES_POS + 1] |= Compression::Gzip.id() as u8;
    fix_crc(&mut bad);
    assert!(matches!(
        check(&bad),
        Err(RecordError::RecordsCountExceedsBytes { .. })
    ));
    // ... but as zstd (32768:1) they might.
    bad[ATTRIBUTES_POS + 1] = (bad[ATTRIBUTES_POS + 1] & !0x07) | Compression::Zstd.id() as u8;
    fix_crc(&mut bad);
    assert_eq!(check(&bad), Ok(()));

    let control = batch(&[Some(b"a")], ATTR_CONTROL);
    assert_eq!(check(&control), Err(RecordError::ControlBatchFromClient));
    let txn = batch(&[Some(b"a")], ATTR_TRANSACTIONAL);
    assert_eq!(check(&txn), Err(RecordError::TransactionalUnsupported));
    let allowed = ClientBatchRules {
        transactions_supported: true,
    };
    assert_eq!(
        validate_client_batch(&BatchView::new(&txn).unwrap(), allowed),
        Ok(())
    );

    let mut unknown = good.clone();
    unknown[ATTRIBUTES_POS + 1] |= 0x07;
    fix_crc(&mut unknown);
    assert_eq!(
        check(&unknown),
        Err(RecordError::UnknownCompression { codec: 7 })
    );
    assert!(!RecordError::UnknownCompression { codec: 7 }.is_invalid_record());

    // A broken rule with a bad CRC is corruption, as Kafka checks the CRC first.
    let mut corrupt = control.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    assert!(matches!(
        check(&corrupt),
        Err(RecordError::CrcMismatch { .. })
    ));
}

#[test]
fn random_bytes_never_panic_the_view_walker_or_iterator() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let good = batch(&[Some(b"a"), Some(b"bb"), None], 0);
    for _ in 0..20_000 {
        let mut data = good.clone();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % data.len();
            data[at] = next() as u8;
        }
        data.truncate((next() as usize) % (data.len() + 1));
        for view in batches(&data) {
            let Ok(view) = view else { break };
            let _ = validate_client_batch(&view, ClientBatchRules::default());
            if let Ok(records) = view.records() {
                for r in records {
                    let Ok(r) = r else { break };
                    let _ = r.headers.count();
                }
            }
        }
    }
}
