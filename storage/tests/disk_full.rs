//! Acceptance 4: disk full. A child process runs under a small file-size limit
//! (`RLIMIT_FSIZE`, with SIGXFSZ ignored so the kernel reports `EFBIG` instead of
//! killing it — the same error path as `ENOSPC` on a full disk): appends go on until
//! a write crosses the limit, then append returns a typed I/O error,
//! the log is left exactly as it was (reads, flush and retries work, nothing is
//! torn), the process exits normally, and the log reopens cleanly afterwards and
//! takes appends again.
//!
//! Two cases: the limit falls inside the first allocation step of the segment
//! (the write fails), and past it (growing the file by the next step fails).
//!
//! Custom harness: the same binary is the child when `RILL_DISKFULL_CHILD_DIR` is set.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{batch_bytes, headers};
use rill_storage::{LogConfig, PartitionLog, StorageError, SEGMENT_GROWTH_STEP_BYTES_MIN};

const CHILD_ENV: &str = "RILL_DISKFULL_CHILD_DIR";
/// `<segment bytes> <file size limit bytes>` of the case the child runs.
const CASE_ENV: &str = "RILL_DISKFULL_CASE";
const MIB: u64 = 1024 * 1024;

/// (segment bytes, file size limit bytes).
const CASES: [(u64, u64); 2] = [
    // Below the first allocation step: the first segment exists before the limit is
    // set, writes past the limit fail, and a new segment cannot be allocated.
    (MIB, SEGMENT_GROWTH_STEP_BYTES_MIN as u64 / 2),
    // Past the first step of a larger segment: growing the file fails.
    (4 * MIB, 3 * MIB / 2),
];

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn child(dir: &Path, segment_bytes: u64, file_size_limit_bytes: u64) {
    let config = || config(segment_bytes);
    let mut log = PartitionLog::open(&dir.join("log"), config()).expect("open before the limit");
    // SAFETY: plain libc calls with valid arguments; the test process is single-threaded here.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit), 0);
        limit.rlim_cur = file_size_limit_bytes as libc::rlim_t;
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
    let mut appended = 0;
    let error = loop {
        let b = batch_bytes(log.log_end_offset() as i64, 1, 16, 1000, appended);
        match log.append(&b) {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
        assert!(appended < 10_000, "the file-size limit never hit");
    };
    // Under RLIMIT_FSIZE the write past the limit fails (EFBIG) even inside the
    // allocated part of the segment; on a really full disk it is growing the file
    // (or allocating the next segment) that fails (ENOSPC), as in the second case.
    let expected_op = if file_size_limit_bytes < SEGMENT_GROWTH_STEP_BYTES_MIN as u64 {
        "write segment"
    } else {
        "grow segment"
    };
    assert!(
        matches!(&error, StorageError::Io { op, .. } if *op == expected_op),
        "expected a `{expected_op}` error, got: {error}"
    );
    let end = log.log_end_offset();
    // The failed append changed nothing: same end, everything readable, retry fails
    // the same way, flushing what is there works.
    let all = log.read(0, usize::MAX, u64::MAX).unwrap();
    assert_eq!(headers(&all).len(), appended as usize);
    let retry = batch_bytes(end as i64, 1, 16, 1000, 0);
    assert!(log.append(&retry).is_err());
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.flush().unwrap(), end);
    // Opening a new log cannot allocate its first step either: an error, not a crash.
    if file_size_limit_bytes < SEGMENT_GROWTH_STEP_BYTES_MIN as u64 {
        match PartitionLog::open(&dir.join("other"), config()) {
            Err(StorageError::Io { .. }) => {}
            other => panic!("expected an I/O error opening under the limit, got {other:?}"),
        }
    }
    println!("appended {appended} end {end} error {error}");
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let case = std::env::var(CASE_ENV).expect("case");
        let (segment_bytes, limit_bytes) = case.split_once(' ').expect("two numbers");
        child(
            Path::new(&dir),
            segment_bytes.parse().unwrap(),
            limit_bytes.parse().unwrap(),
        );
        return;
    }
    for (segment_bytes, file_size_limit_bytes) in CASES {
        run_case(segment_bytes, file_size_limit_bytes);
    }
}

fn run_case(segment_bytes: u64, file_size_limit_bytes: u64) {
    let config = || config(segment_bytes);
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, dir.path())
        .env(CASE_ENV, format!("{segment_bytes} {file_size_limit_bytes}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "child did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        status.success(),
        "child must exit normally, got {status}; output: {text}"
    );
    let mut words = text.split_whitespace();
    assert_eq!(words.next(), Some("appended"));
    let appended: usize = words.next().unwrap().parse().unwrap();
    assert_eq!(words.next(), Some("end"));
    let end: u64 = words.next().unwrap().parse().unwrap();
    assert!(appended > 0);
    // Reopen without the limit: clean, complete, and appends work again.
    let mut log = PartitionLog::open(&dir.path().join("log"), config()).unwrap();
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(
        headers(&log.read(0, usize::MAX, u64::MAX).unwrap()).len(),
        appended
    );
    // Past the old limit, across a segment roll.
    let mut batches = 0;
    while log.segment_count() < 2 {
        let next = log.log_end_offset();
        log.append(&batch_bytes(next as i64, 1, 16, 1000, 0))
            .unwrap();
        batches += 1;
        assert!(batches < 10_000, "never rolled");
    }
    assert_eq!(log.log_end_offset(), end + batches * 16);
    log.close().unwrap();
    println!(
        "disk-full test: ok, segment {segment_bytes} bytes, limit {file_size_limit_bytes} bytes ({})",
        text.trim()
    );
}
