//! The machine's limits, measured in the same run as the scenarios: what the file
//! system takes buffered and with an fdatasync every 1 MiB, memcpy bandwidth, and one
//! loopback TCP stream. The scenarios' figures are divided by these.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use crate::Error;

/// Size of each write and of the socket buffers.
const CHUNK_BYTES: usize = 1 << 20;
/// memcpy buffers: larger than any last-level cache, so this measures memory.
const MEMCPY_BUFFER_BYTES: usize = 64 << 20;

/// Bytes each measurement moves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LimitSizes {
    pub(crate) buffered_write_bytes: u64,
    pub(crate) fdatasync_write_bytes: u64,
    pub(crate) memcpy_bytes: u64,
    pub(crate) loopback_bytes: u64,
}

/// What the machine did, in MB/s (10^6 bytes per second).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) buffered_write_mb_s: f64,
    pub(crate) fdatasync_write_mb_s: f64,
    pub(crate) memcpy_mb_s: f64,
    pub(crate) loopback_tcp_mb_s: f64,
}

impl Limits {
    pub(crate) fn to_json(self, sizes: LimitSizes) -> Value {
        json!({
            "buffered_write_mb_s": self.buffered_write_mb_s,
            "fdatasync_1mib_write_mb_s": self.fdatasync_write_mb_s,
            "memcpy_mb_s": self.memcpy_mb_s,
            "loopback_tcp_single_stream_mb_s": self.loopback_tcp_mb_s,
            "bytes": {
                "buffered_write": sizes.buffered_write_bytes,
                "fdatasync_write": sizes.fdatasync_write_bytes,
                "memcpy": sizes.memcpy_bytes,
                "loopback_tcp": sizes.loopback_bytes,
            },
        })
    }
}

fn mb_per_s(bytes: u64, started: Instant) -> f64 {
    bytes as f64 / started.elapsed().as_secs_f64().max(1e-9) / 1e6
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Config(format!("{what}: {e}"))
}

/// A chunk of mixed bytes (not zeros, which some file systems and links treat
/// specially).
fn chunk() -> Vec<u8> {
    (0..CHUNK_BYTES).map(|i| (i % 251) as u8).collect()
}

/// Writes `bytes` in 1 MiB chunks to a new file in `dir`, with an fdatasync after each
/// chunk when `sync_each`; the file is removed afterwards (before its dirty pages
/// would be written back into the next measurement).
fn write_file(dir: &Path, bytes: u64, sync_each: bool) -> Result<f64, Error> {
    let path = dir.join(if sync_each {
        "limit-fdatasync.bin"
    } else {
        "limit-buffered.bin"
    });
    let data = chunk();
    let mut file = std::fs::File::create(&path).map_err(io("create limit file"))?;
    let started = Instant::now();
    let mut written = 0u64;
    while written < bytes {
        file.write_all(&data).map_err(io("write limit file"))?;
        if sync_each {
            file.sync_data().map_err(io("fdatasync limit file"))?;
        }
        written += CHUNK_BYTES as u64;
    }
    let rate = mb_per_s(written, started);
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}

/// memcpy between two large buffers, `bytes` in all.
fn memcpy(bytes: u64) -> f64 {
    let source: Vec<u8> = (0..MEMCPY_BUFFER_BYTES).map(|i| (i % 253) as u8).collect();
    let mut target = vec![0u8; MEMCPY_BUFFER_BYTES];
    // Touch the target once so page faults are not measured.
    target.copy_from_slice(&source);
    let started = Instant::now();
    let mut copied = 0u64;
    while copied < bytes {
        target.copy_from_slice(std::hint::black_box(&source));
        std::hint::black_box(&mut target);
        copied += MEMCPY_BUFFER_BYTES as u64;
    }
    mb_per_s(copied, started)
}

/// One loopback TCP connection: 1 MiB writes from this thread, a reader thread with a
/// 1 MiB buffer; timed until the reader has everything.
fn loopback(bytes: u64) -> Result<f64, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind loopback listener"))?;
    let addr = listener
        .local_addr()
        .map_err(io("loopback listener address"))?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut stream = TcpStream::connect(addr).map_err(io("connect loopback"))?;
    let data = chunk();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        stream.write_all(&data).map_err(io("write loopback"))?;
        sent += CHUNK_BYTES as u64;
    }
    drop(stream);
    let received = reader
        .join()
        .map_err(|_| Error::Config("loopback reader panicked".to_owned()))?
        .map_err(io("read loopback"))?;
    Ok(mb_per_s(received, started))
}

/// Measures all four, writing files in `dir` (on the brokers' file system).
pub(crate) fn measure(dir: &Path, sizes: LimitSizes) -> Result<Limits, Error> {
    let buffered_write_mb_s = write_file(dir, sizes.buffered_write_bytes, false)?;
    // Let the kernel write back what the buffered run left before timing syncs.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let fdatasync_write_mb_s = write_file(dir, sizes.fdatasync_write_bytes, true)?;
    let memcpy_mb_s = memcpy(sizes.memcpy_bytes);
    let loopback_tcp_mb_s = loopback(sizes.loopback_bytes)?;
    Ok(Limits {
        buffered_write_mb_s,
        fdatasync_write_mb_s,
        memcpy_mb_s,
        loopback_tcp_mb_s,
    })
}
