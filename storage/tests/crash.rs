//! Acceptance 2: a child process appends and flushes in a loop and is killed with
//! SIGKILL at random moments, 50 rounds. After each kill the parent reopens the log
//! and checks that every batch the child reported flushed is intact, that no partial
//! batch is visible (every batch is whole, valid and exactly what was appended), and
//! the next child continues appending where the recovered log ends.
//!
//! Custom harness: the same binary is the child when `RILL_CRASH_CHILD_DIR` is set.
//! `RILL_CRASH_SEED=<n>` replays a run; `RILL_CRASH_ROUNDS=<n>` changes the count.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rill_storage::batch::{self, RecordSpec};
use rill_storage::{LogConfig, PartitionLog};

const CHILD_ENV: &str = "RILL_CRASH_CHILD_DIR";

fn config() -> LogConfig {
    LogConfig {
        // Three growth steps' worth (1 MiB, then 2, then 3): kills land while the
        // active file grows, not only around rolls.
        segment_bytes: 3 * 1024 * 1024,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// The batch the child appends at `base`: its size and content follow from `base`,
/// so the parent can tell exactly what every offset must hold.
fn expected_batch(base: u64) -> Vec<u8> {
    let records = 1 + (base.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize; // 1..=64
    let value: Vec<u8> = (0..1024)
        .map(|i| (base as u8).wrapping_add(i as u8))
        .collect();
    let specs: Vec<RecordSpec<'_>> = (0..records)
        .map(|i| RecordSpec {
            timestamp_ms: base as i64 + i as i64,
            key: None,
            value: Some(&value),
        })
        .collect();
    let mut out = Vec::new();
    batch::encode_uncompressed(&mut out, base as i64, 1, &specs);
    out
}

fn child(dir: &Path) -> ! {
    let mut log = PartitionLog::open(dir, config()).expect("child: open");
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", log.log_end_offset()).unwrap();
    out.flush().unwrap();
    let mut since_flush = 0usize;
    loop {
        let b = expected_batch(log.log_end_offset());
        log.append(&b).expect("child: append");
        since_flush += b.len();
        if since_flush >= 256 * 1024 {
            let flushed = log.flush().expect("child: flush");
            writeln!(out, "flushed {flushed}").unwrap();
            out.flush().unwrap();
            since_flush = 0;
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Reopens the log and checks every batch; returns the log end offset.
fn verify(dir: &Path, flushed_before_kill: u64, round: usize, seed: u64) -> u64 {
    let log = PartitionLog::open(dir, config())
        .unwrap_or_else(|e| panic!("round {round} (seed {seed}): reopen failed: {e}"));
    let end = log.log_end_offset();
    assert!(
        end >= flushed_before_kill,
        "round {round} (seed {seed}): flushed offset {flushed_before_kill} lost, log ends at {end}"
    );
    let mut offset = log.log_start_offset();
    while offset < end {
        let chunk = log.read(offset, 4 * 1024 * 1024, end).unwrap();
        assert!(!chunk.is_empty(), "round {round}: empty read at {offset}");
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let want = expected_batch(offset);
            assert!(
                rest.len() >= want.len() && rest[..want.len()] == want[..],
                "round {round} (seed {seed}): batch at offset {offset} differs from what was appended"
            );
            let h = batch::parse_and_verify(rest).expect("valid batch");
            rest = &rest[want.len()..];
            offset = h.last_offset() as u64 + 1;
        }
    }
    assert_eq!(offset, end);
    end
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
    }
    let seed = std::env::var("RILL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let rounds: usize = std::env::var("RILL_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    println!("crash test: {rounds} rounds, RILL_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut end = 0;
    let mut kills_before_first_flush = 0;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("round {round}: child never became ready"));
        let start_end: u64 = ready.strip_prefix("ready ").unwrap().parse().unwrap();
        assert_eq!(
            start_end, end,
            "round {round}: child recovered a different log end"
        );
        // Kill at a random moment: sometimes at once, mostly within 60 ms of appending.
        let delay_us = match rng.next() % 8 {
            0 => 0,
            _ => rng.next() % 60_000,
        };
        std::thread::sleep(Duration::from_micros(delay_us));
        // Child::kill sends SIGKILL on Unix.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "round {round}: child must die by our SIGKILL, not on its own: {status}"
        );
        reader.join().unwrap();
        let flushed = rx
            .try_iter()
            .filter_map(|l| {
                l.strip_prefix("flushed ")
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .max();
        if flushed.is_none() {
            kills_before_first_flush += 1;
        }
        end = verify(dir.path(), flushed.unwrap_or(start_end), round, seed);
    }
    // Appends continue in this process too.
    let mut log = PartitionLog::open(dir.path(), config()).unwrap();
    log.append(&expected_batch(end)).unwrap();
    let segments = log.segment_count();
    log.close().unwrap();
    println!(
        "crash test: ok, {rounds} SIGKILLs ({kills_before_first_flush} before a first flush), \
         final log end {end}, {segments} segments, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
