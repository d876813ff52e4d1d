//! Acceptance 3: flipping a byte or cutting a segment file inside the last batches
//! makes recovery truncate exactly at the first bad batch (reported through
//! `tracing`), every earlier batch reads back unchanged, and appends continue
//! without resurrecting anything that was cut.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::{batch_bytes, headers, small_config};
use rill_storage::{LogConfig, PartitionLog, RECOVERY_POINT_FILE};

const BATCHES: u64 = 40;
const RECORDS: u64 = 3;

fn config() -> LogConfig {
    small_config(8 * 1024)
}

/// Builds a closed log of 40 batches of 3 records (several segments) and returns,
/// per batch, (base offset, segment file, position in that file, length).
fn build(dir: &Path) -> Vec<(u64, PathBuf, u64, usize)> {
    let mut log = PartitionLog::open(dir, config()).unwrap();
    for i in 0..BATCHES {
        log.append(&batch_bytes(
            (i * RECORDS) as i64,
            1,
            RECORDS as usize,
            200,
            i as i64,
        ))
        .unwrap();
    }
    let mut layout = Vec::new();
    let bases = log.segment_base_offsets();
    for (k, &seg_base) in bases.iter().enumerate() {
        let seg_end = bases.get(k + 1).copied().unwrap_or(log.log_end_offset());
        let path = dir.join(format!("{seg_base:020}.log"));
        let mut pos = 0u64;
        let mut offset = seg_base;
        while offset < seg_end {
            let chunk = log.read(offset, 1, seg_end).unwrap();
            let h = &headers(&chunk)[0];
            layout.push((offset, path.clone(), pos, h.size_bytes()));
            pos += h.size_bytes() as u64;
            offset = h.last_offset() as u64 + 1;
        }
    }
    log.close().unwrap();
    assert!(
        bases.len() >= 3,
        "want several segments, got {}",
        bases.len()
    );
    layout
}

/// Captures `tracing` output of the current thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn reopen_capturing(dir: &Path) -> (PartitionLog, String) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let log = tracing::subscriber::with_default(subscriber, || {
        PartitionLog::open(dir, config()).unwrap()
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    (log, text)
}

/// Checks that the log holds exactly batches `0..kept` of the original, then that
/// appending continues at the cut and survives another reopen.
fn assert_truncated_at(dir: &Path, layout: &[(u64, PathBuf, u64, usize)], kept: usize) {
    let (mut log, warnings) = reopen_capturing(dir);
    let cut_offset = layout[kept].0;
    assert_eq!(
        log.log_end_offset(),
        cut_offset,
        "recovery must cut exactly at the bad batch"
    );
    assert!(
        warnings.contains("recovery truncated the log"),
        "truncation must be reported, got: {warnings}"
    );
    let mut offset = 0;
    let mut batches = 0;
    while offset < cut_offset {
        // Each read returns batches of one segment.
        let chunk = log.read(offset, usize::MAX, u64::MAX).unwrap();
        assert!(!chunk.is_empty());
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let want = batch_bytes(
                offset as i64,
                1,
                RECORDS as usize,
                200,
                (offset / RECORDS) as i64,
            );
            assert_eq!(
                &rest[..want.len()],
                &want[..],
                "batch at {offset} must read back unchanged"
            );
            rest = &rest[want.len()..];
            offset += RECORDS;
            batches += 1;
        }
    }
    assert_eq!(batches, kept);
    // Appends continue at the cut; a smaller batch must not let the old tail reappear.
    let small = batch_bytes(cut_offset as i64, 2, 1, 5, 0);
    log.append(&small).unwrap();
    drop(log);
    let log = PartitionLog::open(dir, config()).unwrap();
    assert_eq!(log.log_end_offset(), cut_offset + 1);
    let last = log.read(cut_offset, usize::MAX, u64::MAX).unwrap();
    assert_eq!(&last[..], &small[..]);
}

fn flip(path: &Path, pos: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, pos).unwrap();
    b[0] ^= 0x10;
    f.write_all_at(&b, pos).unwrap();
}

#[test]
fn flipped_payload_byte_in_a_last_batch_truncates_there() {
    let dir = tempfile::tempdir().unwrap();
    let layout = build(dir.path());
    let k = layout.len() - 3;
    let (_, path, pos, len) = &layout[k];
    flip(path, pos + *len as u64 - 10);
    assert_truncated_at(dir.path(), &layout, k);
}

#[test]
fn flipped_header_bytes_truncate_there() {
    // length field, magic, CRC, and a header field covered by the CRC
    for header_pos in [9u64, 16, 18, 30] {
        let dir = tempfile::tempdir().unwrap();
        let layout = build(dir.path());
        let k = layout.len() - 2;
        let (_, path, pos, _) = &layout[k];
        flip(path, pos + header_pos);
        assert_truncated_at(dir.path(), &layout, k);
    }
}

#[test]
fn file_cut_inside_the_last_batch_truncates_there() {
    let dir = tempfile::tempdir().unwrap();
    let layout = build(dir.path());
    let k = layout.len() - 1;
    let (_, path, pos, len) = &layout[k];
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(pos + *len as u64 / 2).unwrap();
    drop(f);
    assert_truncated_at(dir.path(), &layout, k);
}

#[test]
fn corruption_in_an_earlier_segment_is_found_when_no_checkpoint_vouches_for_it() {
    // Without a recovery checkpoint (as after a crash before the first one) every
    // segment is scanned: the first bad batch cuts the log, later segments go.
    let dir = tempfile::tempdir().unwrap();
    let layout = build(dir.path());
    let first_seg = &layout[0].1;
    let k = layout
        .iter()
        .rposition(|(_, p, _, _)| p == first_seg)
        .unwrap();
    let (_, path, pos, len) = &layout[k];
    flip(path, pos + *len as u64 / 2);
    std::fs::remove_file(dir.path().join(RECOVERY_POINT_FILE)).unwrap();
    assert_truncated_at(dir.path(), &layout, k);
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.segment_count(), 1);
}

#[test]
fn corrupt_checkpoint_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let checkpoint = dir.path().join(RECOVERY_POINT_FILE);
    // A digit of the offset (the body, which the CRC covers).
    let body_byte = std::fs::metadata(&checkpoint).unwrap().len() - 2;
    flip(&checkpoint, body_byte);
    match PartitionLog::open(dir.path(), config()) {
        Err(rill_storage::StorageError::ChecksumMismatch { file }) => {
            assert!(file.ends_with(RECOVERY_POINT_FILE))
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    // Restore it, then break the header line instead.
    flip(&checkpoint, body_byte);
    PartitionLog::open(dir.path(), config()).unwrap();
    flip(&checkpoint, 3);
    match PartitionLog::open(dir.path(), config()) {
        Err(rill_storage::StorageError::MalformedFile { file, .. }) => {
            assert!(file.ends_with(RECOVERY_POINT_FILE))
        }
        other => panic!("expected MalformedFile, got {other:?}"),
    }
}

#[test]
fn data_after_a_zeroed_gap_is_not_resurrected() {
    // A page lost in the middle of unflushed data reads as zeros: recovery stops
    // there, and the intact batches after the gap must not come back later.
    let dir = tempfile::tempdir().unwrap();
    let layout = build(dir.path());
    let k = layout.len() - 3;
    let (_, path, pos, _) = &layout[k];
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&[0u8; 12], *pos).unwrap();
    drop(f);
    let (log, warnings) = reopen_capturing(dir.path());
    assert_eq!(log.log_end_offset(), layout[k].0);
    assert!(
        warnings.contains("data found after the end of the log"),
        "got: {warnings}"
    );
    drop(log);
    let mut log = PartitionLog::open(dir.path(), config()).unwrap();
    // Re-append exactly the batch that was lost: the old k+1.. would line up with it.
    let again = batch_bytes(layout[k].0 as i64, 1, RECORDS as usize, 200, k as i64);
    log.append(&again).unwrap();
    drop(log);
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.log_end_offset(), layout[k].0 + RECORDS);
}

#[test]
fn clean_reopen_reports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let layout = build(dir.path());
    for _ in 0..2 {
        let (log, warnings) = reopen_capturing(dir.path());
        assert_eq!(log.log_end_offset(), layout.last().unwrap().0 + RECORDS);
        assert!(warnings.is_empty(), "unexpected warnings: {warnings}");
        log.close().unwrap();
    }
    // A large, mostly empty preallocated segment, read through the map (which may
    // read ahead zero pages past the end) is not mistaken for stale data either.
    let dir = tempfile::tempdir().unwrap();
    let big = LogConfig {
        segment_bytes: 16 * 1024 * 1024,
        ..config()
    };
    let mut log = PartitionLog::open(dir.path(), big.clone()).unwrap();
    for i in 0..100 {
        log.append(&batch_bytes(i * 3, 1, 3, 1000, 0)).unwrap();
    }
    assert!(!log.read(0, usize::MAX, u64::MAX).unwrap().is_empty());
    log.close().unwrap();
    for _ in 0..2 {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let log = tracing::subscriber::with_default(subscriber, || {
            PartitionLog::open(dir.path(), big.clone()).unwrap()
        });
        let all = log.read(0, usize::MAX, u64::MAX).unwrap();
        assert_eq!(headers(&all).len(), 100);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(text.is_empty(), "unexpected warnings: {text}");
        log.close().unwrap();
    }
}
