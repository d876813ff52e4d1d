//! Behaviour of the public PartitionLog API, one property per test.

mod common;

use common::{batch_bytes, headers, small_config};
use rill_storage::{PartitionLog, StorageError};

#[test]
fn leader_append_stamps_offsets_and_epoch_and_reads_back_zero_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(64 * 1024)).unwrap();
    let b = batch_bytes(0, -1, 3, 10, 1000);
    let first = log.append_as_leader(&b, 5).unwrap();
    let second = log.append_as_leader(&b, 5).unwrap();
    assert_eq!((first.base_offset, first.last_offset), (0, 2));
    assert_eq!((second.base_offset, second.last_offset), (3, 5));
    assert_eq!(log.log_end_offset(), 6);
    let all = log.read(0, usize::MAX, 6).unwrap();
    let hs = headers(&all);
    assert_eq!(hs.len(), 2);
    assert_eq!(
        (hs[1].base_offset(), hs[1].partition_leader_epoch()),
        (3, 5)
    );
    // A mid-batch offset returns the whole batch holding it.
    let mid = log.read(4, usize::MAX, 6).unwrap();
    assert_eq!(headers(&mid)[0].base_offset(), 3);
    // The high watermark bounds what is returned.
    assert_eq!(headers(&log.read(0, usize::MAX, 5).unwrap()).len(), 1);
    assert!(log.read(3, usize::MAX, 5).unwrap().is_empty());
    // bytes_max is a soft bound: at least one batch.
    assert_eq!(headers(&log.read(0, 1, 6).unwrap()).len(), 1);
    assert!(log.read(6, 100, 6).unwrap().is_empty());
    assert!(matches!(
        log.read(7, 100, 6),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.term_at(4), Some(5));
}

#[test]
fn follower_append_requires_contiguous_offsets_and_rejects_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(64 * 1024)).unwrap();
    log.append(&batch_bytes(0, 1, 2, 10, 0)).unwrap();
    match log.append(&batch_bytes(5, 1, 2, 10, 0)) {
        Err(StorageError::NonContiguous {
            expected: 2,
            actual: 5,
        }) => {}
        other => panic!("expected NonContiguous, got {other:?}"),
    }
    let mut bad = batch_bytes(2, 1, 2, 10, 0);
    let n = bad.len();
    bad[n - 3] ^= 0xff;
    assert!(matches!(
        log.append(&bad),
        Err(StorageError::CorruptBatch { .. })
    ));
    assert!(matches!(
        log.append(&batch_bytes(2, 0, 1, 10, 0)),
        Err(StorageError::EpochRegression { .. })
    ));
    assert_eq!(log.log_end_offset(), 2, "failed appends change nothing");
    // Several batches in one call, with an epoch change in between.
    let mut two = batch_bytes(2, 1, 1, 10, 0);
    two.extend_from_slice(&batch_bytes(3, 4, 1, 10, 0));
    log.append(&two).unwrap();
    assert_eq!(log.end_offset_for_epoch(1), Some((1, 3)));
    assert_eq!(log.end_offset_for_epoch(3), Some((1, 3)));
    assert_eq!(log.end_offset_for_epoch(4), Some((4, 4)));
    assert_eq!(log.end_offset_for_epoch(0), None);
}

#[test]
fn rolls_by_size_reads_across_segments_and_bounds_open_maps() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(4096)).unwrap();
    for i in 0..60 {
        log.append_as_leader(&batch_bytes(0, -1, 2, 100, i * 10), 1)
            .unwrap();
    }
    assert!(
        log.segment_count() >= 4,
        "segments: {}",
        log.segment_count()
    );
    let end = log.log_end_offset();
    let mut offset = 0;
    let mut batches = 0;
    while offset < end {
        let chunk = log.read(offset, 1000, end).unwrap();
        let hs = headers(&chunk);
        assert!(!hs.is_empty());
        assert_eq!(hs[0].base_offset() as u64, offset);
        offset = hs.last().unwrap().last_offset() as u64 + 1;
        batches += hs.len();
        assert!(log.open_maps() <= 2);
    }
    assert_eq!(batches, 60);
    assert_eq!(log.offset_for_timestamp(255).unwrap(), Some((52, 260)));
    assert_eq!(log.offset_for_timestamp(591).unwrap(), Some((119, 591)));
    assert_eq!(log.offset_for_timestamp(592).unwrap(), None);
    assert_eq!(log.max_timestamp().unwrap(), Some((591, 119)));
}

#[test]
fn truncation_keeps_handed_out_bytes_intact() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(64 * 1024)).unwrap();
    for _ in 0..10 {
        log.append_as_leader(&batch_bytes(0, -1, 2, 50, 0), 1)
            .unwrap();
    }
    let held = log.read(10, usize::MAX, 20).unwrap();
    let copy = held.to_vec();
    assert_eq!(
        log.truncate_suffix(11).unwrap(),
        10,
        "a straddled batch goes whole"
    );
    log.append_as_leader(&batch_bytes(0, -1, 5, 7, 0), 2)
        .unwrap();
    assert_eq!(
        &held[..],
        &copy[..],
        "reader's slice unchanged after truncate + append"
    );
    assert_eq!(log.term_at(10), Some(2));
    assert_eq!(log.term_at(9), Some(1));
    drop(held);
    // Without readers the cut happens in place.
    assert_eq!(log.truncate_suffix(4).unwrap(), 4);
    log.append_as_leader(&batch_bytes(0, -1, 1, 7, 0), 3)
        .unwrap();
    let read = log.read(0, usize::MAX, 100).unwrap();
    let hs = headers(&read);
    assert_eq!(
        hs.iter().map(|h| h.base_offset()).collect::<Vec<_>>(),
        vec![0, 2, 4]
    );
}

#[test]
fn reopen_recovers_everything_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(4096)).unwrap();
    for i in 0..40 {
        log.append_as_leader(&batch_bytes(0, -1, 3, 60, i), 1 + (i as i32 / 10))
            .unwrap();
    }
    log.flush().unwrap();
    let before = log.read(0, usize::MAX, u64::MAX).unwrap().to_vec();
    let segments = log.segment_base_offsets();
    drop(log); // no close: like a crash after flush
    let mut log = PartitionLog::open(dir.path(), small_config(4096)).unwrap();
    assert_eq!(log.segment_base_offsets(), segments);
    assert_eq!(log.log_end_offset(), 120);
    assert_eq!(log.read(0, usize::MAX, u64::MAX).unwrap().to_vec(), before);
    assert_eq!(log.term_at(119), Some(4));
    log.append_as_leader(&batch_bytes(0, -1, 1, 10, 0), 4)
        .unwrap();
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), small_config(4096)).unwrap();
    assert_eq!(log.log_end_offset(), 121);
}

#[test]
fn retention_deletes_old_segments_and_reset_restarts_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(4096);
    config.retention_bytes = Some(8192);
    let mut log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    for i in 0..60 {
        log.append_as_leader(&batch_bytes(0, -1, 2, 100, i), 1)
            .unwrap();
    }
    let before = log.segment_count();
    // Nothing below the high watermark 0 may go.
    assert_eq!(log.apply_retention(0, 0).unwrap().segments_deleted, 0);
    let out = log.apply_retention(0, log.log_end_offset()).unwrap();
    assert!(out.segments_deleted > 0 && log.segment_count() < before);
    assert!(log.size_bytes() >= 8192 && log.size_bytes() < 8192 + 4096);
    assert_eq!(log.log_start_offset(), out.log_start_offset);
    assert!(matches!(
        log.read(0, 10, 1000),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    let start = log.log_start_offset();
    assert_eq!(
        headers(&log.read(start, 10, 1000).unwrap())[0].base_offset() as u64,
        start
    );
    drop(log);
    let mut log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    assert_eq!(log.log_start_offset(), start);
    log.reset_to(1000).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (1000, 1000));
    log.append(&batch_bytes(1000, 7, 1, 10, 0)).unwrap();
    drop(log);
    let log = PartitionLog::open(dir.path(), config).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (1000, 1001));
    assert_eq!(log.segment_count(), 1);
}

#[test]
fn segments_wholly_below_an_offset_are_deleted_and_the_start_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(4096);
    let mut log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    for i in 0..60 {
        log.append_as_leader(&batch_bytes(0, -1, 2, 100, i), 1)
            .unwrap();
    }
    // Offset 0 lies in the first segment: nothing is wholly below it.
    assert_eq!(log.delete_segments_below(0).unwrap().segments_deleted, 0);
    let before = log.segment_count();
    let out = log.delete_segments_below(70).unwrap();
    assert!(out.segments_deleted > 0 && log.segment_count() < before);
    let start = log.log_start_offset();
    assert_eq!(start, out.log_start_offset);
    assert!(
        start > 0 && start <= 70,
        "start {start}: the segment holding 70 stays"
    );
    // Never the active segment, however far the offset.
    log.delete_segments_below(u64::MAX).unwrap();
    assert_eq!(log.segment_count(), 1);
    let start = log.log_start_offset();
    drop(log);
    let log = PartitionLog::open(dir.path(), config).unwrap();
    assert_eq!(log.log_start_offset(), start);
    assert_eq!(log.log_end_offset(), 120);
}

#[test]
fn time_retention_and_age_roll() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(64 * 1024);
    config.retention_ms = Some(1000);
    config.segment_ms = Some(1);
    let mut log = PartitionLog::open(dir.path(), config).unwrap();
    log.append_as_leader(&batch_bytes(0, -1, 1, 10, 5_000), 1)
        .unwrap();
    let far_future = i64::MAX / 2;
    assert!(log.maybe_roll(far_future).unwrap());
    log.append_as_leader(&batch_bytes(0, -1, 1, 10, 9_000), 1)
        .unwrap();
    assert!(log.maybe_roll(far_future).unwrap());
    let out = log.apply_retention(9_500, u64::MAX).unwrap();
    assert_eq!((out.segments_deleted, out.log_start_offset), (1, 1));
}

#[test]
fn split_flush_runs_outside_the_log_and_advances_flushed_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(4096)).unwrap();
    for _ in 0..20 {
        log.append_as_leader(&batch_bytes(0, -1, 1, 300, 0), 1)
            .unwrap();
    }
    let job = log.prepare_flush();
    assert_eq!(job.target_offset(), 20);
    let done = std::thread::spawn(move || job.run())
        .join()
        .unwrap()
        .unwrap();
    log.append_as_leader(&batch_bytes(0, -1, 1, 300, 0), 1)
        .unwrap();
    log.complete_flush(done);
    assert_eq!(log.flushed_offset(), 20);
    // A truncation in between voids a flush prepared before it.
    let job = log.prepare_flush();
    log.truncate_suffix(15).unwrap();
    let done = job.run().unwrap();
    log.complete_flush(done);
    assert_eq!(log.flushed_offset(), 15);
    assert_eq!(log.flush().unwrap(), 15);
}

#[test]
fn truncation_into_a_closed_segment_keeps_every_handed_out_slice() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(4096)).unwrap();
    for i in 0..40 {
        log.append_as_leader(&batch_bytes(0, -1, 2, 100, i), 1)
            .unwrap();
    }
    let bases = log.segment_base_offsets();
    assert!(bases.len() >= 3);
    let end = log.log_end_offset();
    let in_first = log.read(0, usize::MAX, end).unwrap();
    let in_second = log.read(bases[1], usize::MAX, end).unwrap();
    let in_active = log.read(*bases.last().unwrap(), usize::MAX, end).unwrap();
    let copies = [in_first.to_vec(), in_second.to_vec(), in_active.to_vec()];
    // Cut inside the second segment, then write different data over the same offsets.
    let cut = bases[1] + 2;
    assert_eq!(log.truncate_suffix(cut).unwrap(), cut);
    for _ in 0..20 {
        log.append_as_leader(&batch_bytes(0, -1, 1, 7, 0), 2)
            .unwrap();
    }
    assert_eq!(&in_first[..], &copies[0][..]);
    assert_eq!(&in_second[..], &copies[1][..]);
    assert_eq!(&in_active[..], &copies[2][..]);
    // The log itself holds the new data.
    let read = log.read(cut, usize::MAX, u64::MAX).unwrap();
    let hs = headers(&read);
    assert_eq!(
        (hs[0].base_offset() as u64, hs[0].partition_leader_epoch()),
        (cut, 2)
    );
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config(4096)).unwrap();
    assert_eq!(log.log_end_offset(), cut + 20);
    assert_eq!(log.term_at(cut - 1), Some(1));
    assert_eq!(log.term_at(cut), Some(2));
}

#[test]
fn deleted_records_move_the_start_inside_a_segment_and_it_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(4096);
    let mut log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    for i in 0..60 {
        log.append_as_leader(&batch_bytes(0, -1, 2, 100, i), 1)
            .unwrap();
    }
    let segments = log.segment_count();
    // 71 lies inside a batch (70..=71) inside a closed segment.
    assert_eq!(log.delete_records_below(71).unwrap(), 71);
    assert_eq!(log.log_start_offset(), 71);
    let segment_start = log.segment_start_offset();
    assert!(segment_start > 0 && segment_start <= 70, "{segment_start}");
    assert!(log.segment_count() < segments);
    // Never backwards, never past the end.
    assert_eq!(log.delete_records_below(10).unwrap(), 71);
    assert_eq!(log.delete_records_below(1_000).unwrap(), 120);
    assert_eq!(log.log_start_offset(), 120);
    drop(log);
    let log = PartitionLog::open(dir.path(), config).unwrap();
    assert_eq!(log.log_start_offset(), 120);
    assert_eq!(log.log_end_offset(), 120);
    assert!(log.segment_start_offset() <= 120);
}

#[test]
fn a_new_config_takes_effect_on_an_open_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(64 * 1024)).unwrap();
    for i in 0..10 {
        log.append_as_leader(&batch_bytes(0, -1, 2, 100, i), 1)
            .unwrap();
    }
    assert_eq!(log.segment_count(), 1);
    // A smaller segment size caps the active segment: the next append rolls.
    log.set_config(small_config(1024)).unwrap();
    log.append_as_leader(&batch_bytes(0, -1, 2, 100, 10), 1)
        .unwrap();
    assert_eq!(log.segment_count(), 2);
    assert_eq!(log.config().segment_bytes, 1024);
    // An invalid config is refused and the old one stays.
    assert!(log.set_config(small_config(10)).is_err());
    assert_eq!(log.config().segment_bytes, 1024);
}

/// The body lines of the `leader-epoch-checkpoint` file in `dir` (empty if absent).
fn epoch_file_lines(dir: &std::path::Path) -> Vec<String> {
    match std::fs::read_to_string(dir.join("leader-epoch-checkpoint")) {
        Ok(text) => text.lines().skip(1).map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

/// The epoch file is written lazily — a new leader's first append writes no file — but
/// always before the recovery point passes the epochs it names: recovery trusts the
/// file for the segments below the recovery point and rebuilds only later entries from
/// the batches. After appends in epochs 1, 2 and 3 over several segments and a flush,
/// the file lists all three, and a reopen answers OffsetForLeaderEpoch as before.
#[test]
fn epochs_reach_their_file_before_the_recovery_point_passes_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(4096)).unwrap();
    let b = batch_bytes(0, -1, 3, 100, 1000);
    for epoch in 1..=3 {
        for _ in 0..12 {
            log.append_as_leader(&b, epoch).unwrap();
        }
    }
    assert!(log.segment_count() > 3, "the appends span several segments");
    assert!(
        !epoch_file_lines(dir.path()).contains(&"3 72".to_string()),
        "the append path wrote the epoch file"
    );
    log.flush().unwrap();
    assert_eq!(
        epoch_file_lines(dir.path()),
        vec!["1 0", "2 36", "3 72"],
        "the flush moved the recovery point without writing the epochs below it"
    );
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config(4096)).unwrap();
    assert_eq!(log.end_offset_for_epoch(1), Some((1, 36)));
    assert_eq!(log.end_offset_for_epoch(2), Some((2, 72)));
    assert_eq!(log.end_offset_for_epoch(3), Some((3, 108)));
}
