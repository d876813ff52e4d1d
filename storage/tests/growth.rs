//! Idle cost: an active segment file reserves disk in growing steps as it fills,
//! not a whole `segment_bytes` up front. Checked on the space the file system
//! really allocated (`st_blocks`), not only on file lengths.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{batch_bytes, headers};
use rill_storage::{LogConfig, PartitionLog, SEGMENT_GROWTH_STEP_BYTES_MIN};

const MIB: u64 = 1024 * 1024;

fn config() -> LogConfig {
    LogConfig {
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn segment_file(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}

/// (length, allocated bytes) of a file.
fn file_space(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap();
    (m.len(), m.blocks() * 512)
}

/// Allocated bytes of every file under `dir`.
fn allocated_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let m = e.unwrap().metadata().unwrap();
            if m.is_file() {
                m.blocks() * 512
            } else {
                0
            }
        })
        .sum()
}

/// Appends ~100 KiB batches until the log holds at least `bytes`.
fn append_until(log: &mut PartitionLog, bytes: u64) {
    while log.size_bytes() < bytes {
        let next = log.log_end_offset();
        log.append(&batch_bytes(next as i64, 1, 100, 1000, next as i64))
            .unwrap();
    }
}

/// Reads the whole log back and checks that it holds contiguous offsets from 0.
fn assert_log_reads_back(log: &PartitionLog) {
    let end = log.log_end_offset();
    let mut expected = 0;
    // One read returns batches of one segment at most.
    while expected < end {
        let data = log.read(expected, usize::MAX, end).unwrap();
        let hs = headers(&data);
        assert!(!hs.is_empty(), "nothing read at {expected} of {end}");
        for h in &hs {
            assert_eq!(h.base_offset() as u64, expected);
            expected = h.last_offset() as u64 + 1;
        }
    }
    assert_eq!(expected, end);
}

#[test]
fn new_partition_log_reserves_only_the_first_growth_step() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.config().segment_bytes, 128 * MIB);
    let (len, allocated) = file_space(&segment_file(dir.path(), 0));
    assert_eq!(len, SEGMENT_GROWTH_STEP_BYTES_MIN as u64);
    assert!(
        allocated <= SEGMENT_GROWTH_STEP_BYTES_MIN as u64,
        "a new segment allocated {allocated} bytes"
    );
    // Checkpoints and the rest of the partition directory are a few small files.
    let total = allocated_under(dir.path());
    assert!(
        total <= SEGMENT_GROWTH_STEP_BYTES_MIN as u64 + 64 * 1024,
        "a new partition allocated {total} bytes"
    );
}

#[test]
fn segment_file_grows_in_doubling_steps_as_appends_cross_them_and_recovers_after_growth() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment_file(dir.path(), 0);
    let mut log = PartitionLog::open(dir.path(), config()).unwrap();
    let mut lengths = vec![file_space(&path).0];
    for target_mib in [1, 2, 4, 8] {
        append_until(&mut log, target_mib * MIB + 1);
        let (len, allocated) = file_space(&path);
        assert!(
            len > log.size_bytes(),
            "the file is grown before bytes are written there"
        );
        assert!(
            allocated >= len,
            "grown space is allocated ({allocated} of {len}), so a full disk fails an append, not a page fault"
        );
        lengths.push(len);
    }
    // 64 KiB, doubling (128 KiB … 1 MiB) until the log passed 1 MiB, then one doubling
    // per target.
    assert_eq!(
        lengths,
        [
            SEGMENT_GROWTH_STEP_BYTES_MIN as u64,
            2 * MIB,
            4 * MIB,
            8 * MIB,
            16 * MIB
        ]
    );
    assert_log_reads_back(&log);

    // Clean close and reopen: same log, same file, appends go on and grow it again.
    let end = log.log_end_offset();
    log.close().unwrap();
    let mut log = PartitionLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(file_space(&path).0, 16 * MIB);
    assert_log_reads_back(&log);
    append_until(&mut log, 16 * MIB + 1);
    assert_eq!(file_space(&path).0, 32 * MIB);

    // Dropped without flush or close (a process crash; the page cache survives):
    // recovery scans to the zeros of the grown, never written space.
    let end = log.log_end_offset();
    drop(log);
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.log_end_offset(), end);
    assert_log_reads_back(&log);
}

#[test]
fn rolled_segment_is_trimmed_and_the_next_one_starts_at_the_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 3 * MIB,
        ..config()
    };
    let mut log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    append_until(&mut log, 3 * MIB + 1);
    let bases = log.segment_base_offsets();
    assert_eq!(bases.len(), 2);
    let (closed_len, _) = file_space(&segment_file(dir.path(), 0));
    assert!(
        closed_len <= 3 * MIB,
        "growth never passes segment_bytes (closed segment is {closed_len})"
    );
    // The append that rolled is the only batch in the new segment. The trim is the
    // flush's work (off the append path), so it shows after one.
    log.flush().unwrap();
    let (closed_len, _) = file_space(&segment_file(dir.path(), 0));
    let batch_len = batch_bytes(0, 1, 100, 1000, 0).len() as u64;
    assert_eq!(
        closed_len,
        log.size_bytes() - batch_len,
        "a closed segment is trimmed to its used length"
    );
    // A fresh first step, grown only as far as the batch that rolled needs.
    let (active_len, _) = file_space(&segment_file(dir.path(), bases[1]));
    let first_step = SEGMENT_GROWTH_STEP_BYTES_MIN as u64;
    assert!(
        active_len >= batch_len && active_len <= 2 * first_step.max(batch_len),
        "the new segment reserved {active_len} bytes for a {batch_len}-byte batch"
    );
    assert_log_reads_back(&log);
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), config).unwrap();
    assert_log_reads_back(&log);
}

#[test]
fn append_needs_file_io_only_when_a_segment_must_grow_roll_or_be_created() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 4 * MIB,
        segment_ms: None,
        ..config()
    };
    let mut log = PartitionLog::open(dir.path(), config).unwrap();
    let small = batch_bytes(0, 1, 4, 1000, 0);
    // The first step of the active segment is reserved at the first append.
    let first = log.append_needs_file_io(small.len(), 0);
    log.append(&small).unwrap();
    assert!(
        !log.append_needs_file_io(small.len(), 0),
        "room already reserved: a plain append"
    );
    // Fill the first step: the next append must grow the file.
    while log.size_bytes() + 2 * (small.len() as u64) < SEGMENT_GROWTH_STEP_BYTES_MIN as u64 {
        let next = log.log_end_offset() as i64;
        log.append(&batch_bytes(next, 1, 4, 1000, 0)).unwrap();
    }
    let room = SEGMENT_GROWTH_STEP_BYTES_MIN - log.size_bytes() as usize;
    assert!(log.append_needs_file_io(room + 1, 0), "growth is file I/O");
    // More than the segment holds: a roll.
    assert!(
        log.append_needs_file_io(4 * MIB as usize, 0),
        "roll is file I/O"
    );
    println!("first append of a new segment needs file I/O: {first}");
}
