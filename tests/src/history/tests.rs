//! Constructed histories, one per kind of violation, and replica directories built
//! by hand.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use bytes::Bytes;
use tempfile::TempDir;

use super::*;

fn value(id: u32) -> Bytes {
    Bytes::from(format!("v-{id:04}"))
}

/// Ten attempts; v0–v5 acknowledged at offsets 0, 1, 3, 4 of partition 0 (offset 2 is a
/// control batch) and 0, 1 of partition 1; v6 and v7 failed, and v6 made it to the log
/// anyway; v8 and v9 were attempted and never answered.
fn clean_history() -> History {
    let mut history = History::default();
    for id in 0..10 {
        history.record_attempt(value(id));
    }
    for (partition, offset, id) in [
        (0, 0, 0),
        (0, 1, 1),
        (0, 3, 2),
        (0, 4, 3),
        (1, 0, 4),
        (1, 1, 5),
    ] {
        history.record_ack(partition, offset, value(id));
    }
    history.record_failure(value(6));
    history.record_failure(value(7));
    let partition_0 = vec![
        (0, value(0)),
        (1, value(1)),
        (3, value(2)),
        (4, value(3)),
        (5, value(6)),
    ];
    // Two replicas of partition 0, the second one a batch behind: not a violation.
    history.record_read(0, partition_0.clone());
    history.record_read(0, partition_0[..4].to_vec());
    history.record_reads(&BTreeMap::from([(1, vec![(0, value(4)), (1, value(5))])]));
    history
}

#[test]
fn clean_history_with_gaps_and_indeterminate_values_passes() {
    let report = clean_history().check(Duplicates::Forbidden);
    report.assert_ok();
    assert_eq!(
        (
            report.attempts,
            report.acks,
            report.failures,
            report.reads,
            report.records_read
        ),
        (10, 6, 2, 3, 11)
    );
    assert!(report
        .to_string()
        .starts_with("ok: 10 attempted, 6 acknowledged"));
}

#[test]
fn acknowledged_value_missing_from_every_read_is_lost() {
    let mut history = clean_history();
    history.record_attempt(value(20));
    history.record_ack(1, 2, value(20));
    let report = history.check(Duplicates::Forbidden);
    assert_eq!(
        report.lost,
        vec![Ack {
            partition: 1,
            offset: 2,
            value: value(20)
        }]
    );
    assert!(!report.is_ok());
}

#[test]
fn acknowledged_value_read_in_another_partition_only_is_lost() {
    let mut history = History::default();
    history.record_ack(0, 0, value(1));
    history.record_read(1, [(0, value(1))]);
    let report = history.check(Duplicates::Forbidden);
    assert_eq!(report.lost.len(), 1);
}

#[test]
fn acknowledged_value_read_at_another_offset_is_moved() {
    let mut history = History::default();
    history.record_ack(0, 5, value(1));
    history.record_read(0, [(6, value(1))]);
    let report = history.check(Duplicates::Forbidden);
    assert_eq!(
        report.moved,
        vec![Moved {
            ack: Ack {
                partition: 0,
                offset: 5,
                value: value(1)
            },
            read_offsets: vec![6]
        }]
    );
    assert!(report.lost.is_empty());
    assert!(!report.is_ok());
}

#[test]
fn offset_holding_different_values_in_two_reads_is_reuse() {
    let mut history = clean_history();
    // A third read of partition 0 (another replica) that has v7 where the others have v3.
    history.record_read(
        0,
        [(0, value(0)), (1, value(1)), (3, value(2)), (4, value(7))],
    );
    let report = history.check(Duplicates::Forbidden);
    assert_eq!(
        report.offset_reuse,
        vec![OffsetReuse {
            partition: 0,
            offset: 4,
            values: vec![(Source::Ack, value(3)), (Source::Read(3), value(7))]
        }]
    );
    assert!(!report.is_ok());
}

#[test]
fn two_acknowledgements_of_one_offset_are_reuse() {
    let mut history = History::default();
    history.record_ack(0, 7, value(1));
    history.record_ack(0, 7, value(2));
    history.record_read(0, [(7, value(2))]);
    let report = history.check(Duplicates::Forbidden);
    assert_eq!(report.offset_reuse.len(), 1);
    assert_eq!(
        report.offset_reuse[0].values,
        vec![(Source::Ack, value(1)), (Source::Ack, value(2))]
    );
    assert_eq!(report.lost.len(), 1, "v1 is read nowhere");
}

#[test]
fn duplicates_are_reported_and_fail_only_when_forbidden() {
    let mut history = clean_history();
    // A retried v7 written twice, at 5 and 6 of partition 1.
    history.record_read(
        1,
        [(0, value(4)), (1, value(5)), (5, value(7)), (6, value(7))],
    );

    let allowed = history.check(Duplicates::Allowed);
    assert_eq!(
        allowed.duplicates,
        vec![Duplicate {
            value: value(7),
            positions: vec![(1, 5), (1, 6)]
        }]
    );
    allowed.assert_ok();
    assert!(allowed.to_string().contains("duplicates (allowed): 1"));

    let forbidden = history.check(Duplicates::Forbidden);
    assert_eq!(forbidden.duplicates.len(), 1);
    assert!(!forbidden.is_ok());
}

#[test]
fn value_never_attempted_is_a_phantom() {
    let mut history = clean_history();
    history.record_read(1, [(0, value(4)), (1, value(5)), (2, value(99))]);
    let report = history.check(Duplicates::Forbidden);
    assert_eq!(
        report.phantoms,
        vec![Phantom {
            value: value(99),
            positions: vec![(1, 2)]
        }]
    );
    assert!(!report.is_ok());
}

#[test]
fn offsets_going_backwards_within_a_read_are_reported() {
    let mut history = History::default();
    for id in 0..3 {
        history.record_attempt(value(id));
    }
    history.record_read(
        0,
        [(0, value(0)), (2, value(1)), (1, value(2)), (1, value(2))],
    );
    let report = history.check(Duplicates::Allowed);
    assert_eq!(
        report.non_monotonic,
        vec![
            NonMonotonic {
                partition: 0,
                read: 0,
                previous_offset: 2,
                offset: 1
            },
            NonMonotonic {
                partition: 0,
                read: 0,
                previous_offset: 1,
                offset: 1
            }
        ]
    );
    assert!(!report.is_ok());
}

#[test]
#[should_panic(expected = "acknowledged values lost: 12")]
fn assert_ok_panics_with_a_summary() {
    let mut history = History::default();
    for id in 0..12 {
        history.record_ack(0, i64::from(id), value(id));
    }
    history.check(Duplicates::Forbidden).assert_ok();
}

#[test]
fn display_shows_counts_and_the_first_few_examples() {
    let mut history = History::default();
    for id in 0..12 {
        history.record_ack(0, i64::from(id), value(id));
    }
    let shown = history.check(Duplicates::Forbidden).to_string();
    assert!(
        shown.starts_with("VIOLATIONS: 0 attempted, 12 acknowledged"),
        "{shown}"
    );
    assert!(
        shown.contains("\"v-0000\" acknowledged at partition 0 offset 0"),
        "{shown}"
    );
    assert!(shown.contains("\"v-0004\""), "{shown}");
    assert!(!shown.contains("\"v-0005\""), "{shown}");
    assert!(shown.contains("… and 7 more"), "{shown}");
}

// Replicas.

/// A RecordBatch-shaped run of bytes: base offset, batch length, then `length` bytes
/// derived from the base offset (the checker reads no further into a batch).
fn batch(base_offset: i64, length: usize) -> Vec<u8> {
    let mut bytes = base_offset.to_be_bytes().to_vec();
    bytes.extend((length as i32).to_be_bytes());
    bytes.extend((0..length).map(|i| (i as i64 + base_offset) as u8 | 1));
    bytes
}

const SEGMENT_0: &str = "00000000000000000000.log";
const SEGMENT_3: &str = "00000000000000000003.log";

/// A replica directory with two segments: batches at 0 and 1 (then `zero_tail_bytes`
/// of preallocated zeros) and at 3; plus an index file the check must ignore.
fn replica(zero_tail_bytes: usize) -> TempDir {
    let dir = TempDir::new().expect("temp dir");
    let mut first = [batch(0, 60), batch(1, 100)].concat();
    first.resize(first.len() + zero_tail_bytes, 0);
    write(dir.path(), SEGMENT_0, &first);
    write(dir.path(), SEGMENT_3, &batch(3, 70));
    write(dir.path(), "00000000000000000000.index", &[7; 16]);
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).expect("write segment");
}

fn paths(dirs: &[&TempDir]) -> Vec<std::path::PathBuf> {
    dirs.iter().map(|d| d.path().to_path_buf()).collect()
}

#[test]
fn replicas_with_different_zero_tails_are_identical() {
    let (a, b, c) = (replica(0), replica(5), replica(4096));
    replicas_identical(&paths(&[&a, &b, &c])).expect("identical");
}

#[test]
fn a_one_byte_difference_is_found_with_its_position_and_batch() {
    let (a, b) = (replica(1000), replica(10));
    let file = b.path().join(SEGMENT_0);
    let mut bytes = fs::read(&file).expect("read");
    let at = 72 + 12 + 50; // inside the second batch (base offset 1), past its header
    bytes[at] ^= 0x10;
    fs::write(&file, bytes).expect("write");

    let error = replicas_identical(&paths(&[&a, &b])).expect_err("a difference");
    assert!(error.contains(SEGMENT_0), "{error}");
    assert!(error.contains(&format!("differ at byte {at}")), "{error}");
    assert!(error.contains("base offset 1 in the first"), "{error}");
}

#[test]
fn a_replica_missing_the_last_batch_differs() {
    let (a, b) = (replica(0), replica(200));
    // Zero the second batch of b's first segment: its log now ends after batch 0.
    let file = b.path().join(SEGMENT_0);
    let mut bytes = fs::read(&file).expect("read");
    bytes[72..].fill(0);
    fs::write(&file, bytes).expect("write");

    let error = replicas_identical(&paths(&[&a, &b])).expect_err("a shorter replica");
    assert!(error.contains("ends at byte 184"), "{error}");
    assert!(error.contains("at byte 72"), "{error}");
    assert!(error.contains("base offset 1"), "{error}");
}

#[test]
fn a_missing_segment_differs() {
    let (a, b) = (replica(0), replica(0));
    fs::remove_file(b.path().join(SEGMENT_3)).expect("remove");
    let error = replicas_identical(&paths(&[&a, &b])).expect_err("a missing segment");
    assert!(
        error.contains(&format!("has segment {SEGMENT_3}")),
        "{error}"
    );
    assert!(error.contains("has no more segments"), "{error}");
}

#[test]
fn a_corrupt_batch_length_is_an_error() {
    let (a, b) = (replica(0), replica(0));
    write(
        b.path(),
        SEGMENT_3,
        &[batch(3, 70), batch(4, 500)[..100].to_vec()].concat(),
    );
    let error = replicas_identical(&paths(&[&a, &b])).expect_err("a torn batch");
    assert!(
        error.contains("corrupt batch at byte 82 (base offset 4)"),
        "{error}"
    );
}

#[test]
fn no_replicas_is_an_error() {
    let none: &[std::path::PathBuf] = &[];
    assert!(replicas_identical(none).is_err());
}

#[test]
fn values_read_out_of_their_send_order_are_reordered() {
    let mut history = clean_history();
    // One producer sent v0, v1, v2, v3 in this order (v8 was never read: skipped).
    history.record_send_order(0, vec![value(0), value(1), value(8), value(2), value(3)]);
    history.check(Duplicates::Forbidden).assert_ok();
    // Another sent v3 before v2 to partition 0: read the other way round.
    history.record_send_order(0, vec![value(3), value(2)]);
    let report = history.check(Duplicates::Forbidden);
    assert_eq!(
        report.reordered,
        vec![Reordered {
            partition: 0,
            earlier: (value(3), 4),
            later: (value(2), 3),
        }]
    );
    assert!(!report.is_ok());
    assert!(report.to_string().contains("out of their send order"));
}
