//! The machine's limits, measured in the same run as the scenarios: what the file
//! system takes buffered and with an fdatasync every 1 MiB (one stream, and three at
//! once: three replicas sharing a disk), memcpy and CRC-32C bandwidth, one loopback
//! TCP stream, and one fetch-shaped loopback stream (sent from a mapped file in the page
//! cache, CRC-checked on receive: what a consumer's catch-up can reach at most). The
//! scenarios' figures are divided by these.
//!
//! Each measurement also takes its threads' CPU time (`getrusage(RUSAGE_THREAD)`), so
//! the suite can print the floor of CPU-seconds per GB that the unavoidable work of a
//! producer (copy each value into its batch, checksum it, send it) and of a broker at
//! acks=1 (receive, check the checksum, copy into the page cache) costs on this machine:
//! a CPU target below its floor is out of reach of any code on this machine.

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
/// The file the fetch-shaped loopback sends from, cycling: larger than any last-level
/// cache, as a catch-up read through log segments is.
const FETCH_FILE_BYTES: usize = 64 << 20;

/// Bytes each measurement moves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LimitSizes {
    pub(crate) buffered_write_bytes: u64,
    pub(crate) fdatasync_write_bytes: u64,
    /// The longer write+fdatasync run whose second half is the disk's sustained rate.
    pub(crate) fdatasync_sustained_bytes: u64,
    pub(crate) memcpy_bytes: u64,
    pub(crate) loopback_bytes: u64,
}

/// Concurrent write+fdatasync streams of the shared-disk measurement (one per replica
/// of an RF=3 partition whose brokers share this machine's disk).
const SHARED_DISK_STREAMS: u64 = 3;

/// What the machine did, in MB/s (10^6 bytes per second), and what it cost in
/// CPU-seconds per GB (10^9 bytes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) buffered_write_mb_s: f64,
    /// CPU of the writing thread, per GB: the copy into the page cache, in whatever
    /// memory the kernel hands out (on a VM that returns free memory to its host, the
    /// first write to each such page also pays a fault in the host).
    pub(crate) buffered_write_cpu_s_per_gb: f64,
    /// The same write right after as much anonymous memory was touched and freed,
    /// meant to give the page cache memory the host has backed (the kernel's own cost
    /// of a page-cache write, without the VM's); on 2026-11-26 it was the cheaper of
    /// the two in four runs out of five.
    pub(crate) buffered_write_backed_cpu_s_per_gb: f64,
    pub(crate) fdatasync_write_mb_s: f64,
    /// write+fdatasync every 1 MiB over the second half of a longer run: what the disk
    /// sustains once a burst allowance (a cloud disk's, a host cache's) is spent.
    pub(crate) fdatasync_sustained_mb_s: f64,
    /// Each of three concurrent write+fdatasync-every-1-MiB streams, on average.
    pub(crate) fdatasync_write_3_streams_mb_s: f64,
    pub(crate) memcpy_mb_s: f64,
    /// CRC-32C (the record batch checksum) over a buffer in cache, one thread.
    pub(crate) crc32c_mb_s: f64,
    pub(crate) loopback_tcp_mb_s: f64,
    /// CPU of the loopback sender's and receiver's threads, per GB moved.
    pub(crate) loopback_send_cpu_s_per_gb: f64,
    pub(crate) loopback_recv_cpu_s_per_gb: f64,
    /// One loopback stream shaped like a consumer's catch-up: 1 MiB writes straight
    /// from a mapped file in the page cache (as the broker writes fetch responses), read
    /// in 1 MiB frames that are CRC-32C checked (as the consumer checks each batch).
    pub(crate) fetch_loopback_mb_s: f64,
    /// CPU of that stream's receiver (read + CRC), per GB.
    pub(crate) fetch_loopback_recv_cpu_s_per_gb: f64,
    /// One loopback stream shaped like a produce at acks=1 with nothing else: 1 MiB
    /// frames read from the socket, CRC-32C checked and written into a preallocated
    /// file (the page cache), in one loop on one thread: the least broker there is.
    pub(crate) produce_loopback_mb_s: f64,
    /// CPU of that stream's receiver (read + CRC + write), per GB.
    pub(crate) produce_loopback_recv_cpu_s_per_gb: f64,
}

/// CPU-seconds per GB of work that runs at `mb_s` on one busy thread.
fn cpu_s_per_gb(mb_s: f64) -> f64 {
    1000.0 / mb_s.max(1e-9)
}

impl Limits {
    /// The least CPU a producer spends per GB of 1 KiB records here: copy each value
    /// into its batch (memcpy), checksum the batch (CRC-32C), send it (the loopback
    /// sender's CPU).
    pub(crate) fn client_floor_cpu_s_per_gb(&self) -> f64 {
        cpu_s_per_gb(self.memcpy_mb_s)
            + cpu_s_per_gb(self.crc32c_mb_s)
            + self.loopback_send_cpu_s_per_gb
    }

    /// The least CPU a broker spends per GB produced at acks=1 here, from its parts
    /// measured apart: receive it (the loopback receiver's CPU), check the CRC-32C,
    /// copy it into the page cache (the cheaper of the two buffered writes: a broker may
    /// be lucky with its memory too); without the fdatasyncs and their writeback.
    pub(crate) fn broker_parts_cpu_s_per_gb(&self) -> f64 {
        self.loopback_recv_cpu_s_per_gb
            + cpu_s_per_gb(self.crc32c_mb_s)
            + self.page_cache_write_floor_cpu_s_per_gb()
    }

    /// The least CPU a broker spends per GB produced at acks=1 here: the same work done
    /// together by the produce-shaped loopback's receiver (the kernel's costs of a
    /// socket and the page cache side by side are more than of each alone), or the sum
    /// of the parts where that was not measured.
    pub(crate) fn broker_floor_cpu_s_per_gb(&self) -> f64 {
        if self.produce_loopback_recv_cpu_s_per_gb > 0.0 {
            self.produce_loopback_recv_cpu_s_per_gb
        } else {
            self.broker_parts_cpu_s_per_gb()
        }
    }

    /// The cheaper of the two page-cache write measurements, per GB.
    pub(crate) fn page_cache_write_floor_cpu_s_per_gb(&self) -> f64 {
        self.buffered_write_cpu_s_per_gb
            .min(self.buffered_write_backed_cpu_s_per_gb)
    }

    /// The most MB/s that one producer and one broker sharing this machine's two cores
    /// could reach if each spent only its floor of CPU per GB.
    pub(crate) fn produce_cpu_bound_mb_s(&self, cores: f64) -> f64 {
        cores * 1000.0 / (self.client_floor_cpu_s_per_gb() + self.broker_floor_cpu_s_per_gb())
    }

    pub(crate) fn to_json(self, sizes: LimitSizes) -> Value {
        json!({
            "buffered_write_mb_s": self.buffered_write_mb_s,
            "buffered_write_cpu_s_per_gb": self.buffered_write_cpu_s_per_gb,
            "buffered_write_backed_cpu_s_per_gb": self.buffered_write_backed_cpu_s_per_gb,
            "fdatasync_1mib_write_mb_s": self.fdatasync_write_mb_s,
            "fdatasync_1mib_write_3_streams_mb_s_each": self.fdatasync_write_3_streams_mb_s,
            "fdatasync_1mib_write_sustained_mb_s": self.fdatasync_sustained_mb_s,
            "memcpy_mb_s": self.memcpy_mb_s,
            "crc32c_mb_s": self.crc32c_mb_s,
            "loopback_tcp_single_stream_mb_s": self.loopback_tcp_mb_s,
            "loopback_send_cpu_s_per_gb": self.loopback_send_cpu_s_per_gb,
            "loopback_recv_cpu_s_per_gb": self.loopback_recv_cpu_s_per_gb,
            "fetch_loopback_crc_mb_s": self.fetch_loopback_mb_s,
            "fetch_loopback_recv_cpu_s_per_gb": self.fetch_loopback_recv_cpu_s_per_gb,
            "produce_loopback_mb_s": self.produce_loopback_mb_s,
            "produce_loopback_recv_cpu_s_per_gb": self.produce_loopback_recv_cpu_s_per_gb,
            "broker_parts_cpu_s_per_gb": self.broker_parts_cpu_s_per_gb(),
            "client_floor_cpu_s_per_gb": self.client_floor_cpu_s_per_gb(),
            "broker_floor_cpu_s_per_gb": self.broker_floor_cpu_s_per_gb(),
            "bytes": {
                "buffered_write": sizes.buffered_write_bytes,
                "fdatasync_write": sizes.fdatasync_write_bytes,
                "fdatasync_sustained": sizes.fdatasync_sustained_bytes,
                "memcpy": sizes.memcpy_bytes,
                "loopback_tcp": sizes.loopback_bytes,
            },
        })
    }
}

fn mb_per_s(bytes: u64, started: Instant) -> f64 {
    bytes as f64 / started.elapsed().as_secs_f64().max(1e-9) / 1e6
}

/// CPU time (user + system) the calling thread has used, in seconds.
fn thread_cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct it is given; zeroed is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to an owned rusage; RUSAGE_THREAD is Linux's own thread.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    if rc != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU-seconds per GB for `cpu_s` spent moving `bytes`.
fn per_gb(cpu_s: f64, bytes: u64) -> f64 {
    cpu_s / (bytes as f64 / 1e9).max(1e-9)
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Config(format!("{what}: {e}"))
}

/// A chunk of mixed bytes (not zeros, which some file systems and links treat
/// specially).
fn chunk() -> Vec<u8> {
    (0..CHUNK_BYTES).map(|i| (i % 251) as u8).collect()
}

/// Allocates `[0, len)` of `file` as the broker's segments are (fallocate ahead of
/// the writes); where the file system cannot, the writes allocate as they go.
pub(crate) fn preallocate(file: &std::fs::File, len: u64) {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).unwrap_or(libc::off_t::MAX);
    // SAFETY: fallocate on an fd we own; a failure only leaves the file unallocated.
    unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
}

/// Writes `bytes` in 1 MiB chunks to a new file `name` in `dir`, with an fdatasync
/// after each chunk when `sync_each`; the file is removed afterwards (before its dirty
/// pages would be written back into the next measurement). Returns MB/s and the
/// writing thread's CPU-seconds per GB.
fn write_file(dir: &Path, name: &str, bytes: u64, sync_each: bool) -> Result<(f64, f64), Error> {
    let path = dir.join(name);
    let data = chunk();
    let mut file = std::fs::File::create(&path).map_err(io("create limit file"))?;
    if !sync_each {
        // Buffered writes go into preallocated space, as a broker's appends do (its
        // segments grow by fallocate ahead of the writes): without it the figure
        // includes the file system's block allocation, which appends do not pay.
        preallocate(&file, bytes);
    }
    let cpu_before = thread_cpu_s();
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
    let cpu = per_gb(thread_cpu_s() - cpu_before, written);
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok((rate, cpu))
}

/// [`write_file`] (buffered) right after touching and freeing as much anonymous
/// memory as it writes: the freed pages are the next the kernel hands out, meant to be
/// ones the VM has not returned to its host yet (how long that takes was not measured;
/// this write was the cheaper of the two in four runs of five on 2026-11-26). Returns
/// the writing thread's CPU-seconds per GB.
fn write_file_host_backed(dir: &Path, bytes: u64) -> Result<f64, Error> {
    let len = usize::try_from(bytes).map_err(|_| Error::Config("limit size".to_owned()))?;
    let mut touched = Vec::<u8>::new();
    touched.try_reserve_exact(len).map_err(|e| {
        Error::Config(format!(
            "host-backed write: cannot allocate {len} bytes to touch ({e}); lower --limits-mib"
        ))
    })?;
    touched.resize(len, 0);
    // Write every page, so the host backs each (zeros may map the shared zero page).
    for page in touched.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&mut touched);
    drop(touched);
    Ok(write_file(dir, "limit-buffered-backed.bin", bytes, false)?.1)
}

/// Free memory a VM has returned to its host since boot, in KiB (Linux's free page
/// reporting, as a virtio balloon uses it): `None` where the kernel does not report.
pub(crate) fn vm_reported_kib() -> Option<u64> {
    std::fs::read_to_string("/sys/module/page_reporting/parameters/reported_kib")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Writes `bytes` with an fdatasync every 1 MiB to a new file and returns the MB/s of
/// the second half: past the burst a disk may take at first.
fn fdatasync_sustained(dir: &Path, bytes: u64) -> Result<f64, Error> {
    let path = dir.join("limit-fdatasync-sustained.bin");
    let data = chunk();
    let mut file = std::fs::File::create(&path).map_err(io("create limit file"))?;
    let mut written = 0u64;
    let mut second_half: Option<(Instant, u64)> = None;
    let outcome = loop {
        if written >= bytes {
            break Ok(());
        }
        if second_half.is_none() && written >= bytes / 2 {
            second_half = Some((Instant::now(), written));
        }
        if let Err(e) = file.write_all(&data).and_then(|()| file.sync_data()) {
            break Err(io("write+fdatasync limit file")(e));
        }
        written += CHUNK_BYTES as u64;
    };
    drop(file);
    let _ = std::fs::remove_file(&path);
    outcome?;
    let (from, at) = second_half.unwrap_or((Instant::now(), written));
    Ok(mb_per_s(written - at, from))
}

/// `SHARED_DISK_STREAMS` threads at once, each writing `bytes` with an fdatasync every
/// 1 MiB to its own file: the average MB/s of one stream while the others run.
fn shared_disk_streams(dir: &Path, bytes: u64) -> Result<f64, Error> {
    let started = Instant::now();
    let streams: Vec<_> = (0..SHARED_DISK_STREAMS)
        .map(|i| {
            let dir = dir.to_path_buf();
            std::thread::spawn(move || {
                write_file(&dir, &format!("limit-shared-{i}.bin"), bytes, true)
            })
        })
        .collect();
    for stream in streams {
        stream
            .join()
            .map_err(|_| Error::Config("shared-disk writer panicked".to_owned()))??;
    }
    Ok(mb_per_s(bytes * SHARED_DISK_STREAMS, started) / SHARED_DISK_STREAMS as f64)
}

/// CRC-32C over a 1 MiB buffer (in cache, as a batch is when it is checked), `bytes`
/// in all.
fn crc32c(bytes: u64) -> f64 {
    let data = chunk();
    let started = Instant::now();
    let mut done = 0u64;
    let mut crc = 0u32;
    while done < bytes {
        crc = crc32c::crc32c_append(crc, std::hint::black_box(&data));
        done += CHUNK_BYTES as u64;
    }
    std::hint::black_box(crc);
    mb_per_s(done, started)
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
/// 1 MiB buffer; timed until the reader has everything. Returns MB/s and the sender's
/// and receiver's CPU-seconds per GB.
fn loopback(bytes: u64) -> Result<(f64, f64, f64), Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind loopback listener"))?;
    let addr = listener
        .local_addr()
        .map_err(io("loopback listener address"))?;
    let reader = std::thread::spawn(move || -> std::io::Result<(u64, f64)> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut total = 0u64;
        let cpu_before = thread_cpu_s();
        loop {
            match stream.read(&mut buf)? {
                0 => return Ok((total, thread_cpu_s() - cpu_before)),
                n => total += n as u64,
            }
        }
    });
    let stream = TcpStream::connect(addr).map_err(io("connect loopback"))?;
    let cpu_before = thread_cpu_s();
    let started = Instant::now();
    let sent = send_chunks(stream, bytes)?;
    let send_cpu_s = thread_cpu_s() - cpu_before;
    let (received, recv_cpu_s) = reader
        .join()
        .map_err(|_| Error::Config("loopback reader panicked".to_owned()))?
        .map_err(io("read loopback"))?;
    Ok((
        mb_per_s(received, started),
        per_gb(send_cpu_s, sent),
        per_gb(recv_cpu_s, received),
    ))
}

/// Sends `bytes` (rounded up to whole chunks) in 1 MiB writes, then closes the
/// stream; returns the bytes sent.
fn send_chunks(mut stream: TcpStream, bytes: u64) -> Result<u64, Error> {
    let data = chunk();
    let mut sent = 0u64;
    while sent < bytes {
        stream.write_all(&data).map_err(io("write loopback"))?;
        sent += CHUNK_BYTES as u64;
    }
    Ok(sent)
}

/// A file of `len` bytes mapped read-only, unmapped on drop.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn new(file: &std::fs::File, len: usize) -> Result<Mapped, Error> {
        use std::os::fd::AsRawFd;
        // SAFETY: a read-only shared mapping of a file we own, of its written length;
        // nothing truncates the file while it is mapped.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io("map limit file")(std::io::Error::last_os_error()));
        }
        Ok(Mapped { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until `self` is dropped.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// A consumer's catch-up with nothing but the unavoidable work: one loopback
/// connection; the sender writes 1 MiB slices of a mapped file in the page cache (as
/// the broker writes a fetch response's segment slices), the receiver reads whole
/// 1 MiB frames and computes each one's CRC-32C (as the consumer checks each batch).
/// No protocol, no records. Returns MB/s and the receiver's CPU-seconds per GB.
fn fetch_loopback(dir: &Path, bytes: u64) -> Result<(f64, f64), Error> {
    let path = dir.join("limit-fetch.bin");
    {
        let mut file = std::fs::File::create(&path).map_err(io("create limit file"))?;
        let data = chunk();
        for _ in 0..FETCH_FILE_BYTES / CHUNK_BYTES {
            file.write_all(&data).map_err(io("write limit file"))?;
        }
    }
    let file = std::fs::File::open(&path).map_err(io("open limit file"))?;
    let mapped = Mapped::new(&file, FETCH_FILE_BYTES);
    // The page cache keeps the pages; the name is not needed any more.
    let _ = std::fs::remove_file(&path);
    let mapped = mapped?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind loopback listener"))?;
    let addr = listener
        .local_addr()
        .map_err(io("loopback listener address"))?;
    let reader = spawn_frame_reader(listener, None);
    let mut stream = TcpStream::connect(addr).map_err(io("connect loopback"))?;
    // Touch every page once, so the sender measures sends, not first faults.
    let warm: u8 = mapped.bytes().iter().step_by(4096).fold(0, |a, b| a ^ b);
    std::hint::black_box(warm);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut at = 0usize;
    while sent < bytes {
        let end = at + CHUNK_BYTES;
        stream
            .write_all(&mapped.bytes()[at..end])
            .map_err(io("write loopback"))?;
        at = if end >= FETCH_FILE_BYTES { 0 } else { end };
        sent += CHUNK_BYTES as u64;
    }
    drop(stream);
    join_frame_reader(reader, started)
}

/// The receiving side of the fetch- and produce-shaped streams, on a thread of its
/// own: accepts one connection, reads it in 1 MiB frames, checks each frame's CRC-32C
/// and writes it to `sink` if there is one; yields the bytes read, the thread's CPU
/// seconds and the CRCs (so the work is not optimised away).
fn spawn_frame_reader(
    listener: TcpListener,
    mut sink: Option<std::fs::File>,
) -> std::thread::JoinHandle<std::io::Result<(u64, f64, u32)>> {
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept()?;
        let mut frame = vec![0u8; CHUNK_BYTES];
        let (mut total, mut filled, mut crc) = (0u64, 0usize, 0u32);
        let cpu_before = thread_cpu_s();
        loop {
            match stream.read(&mut frame[filled..])? {
                0 => {
                    if let Some(sink) = &mut sink {
                        sink.write_all(&frame[..filled])?;
                    }
                    return Ok((total, thread_cpu_s() - cpu_before, crc));
                }
                n => {
                    total += n as u64;
                    filled += n;
                    if filled == frame.len() {
                        crc ^= crc32c::crc32c(&frame);
                        if let Some(sink) = &mut sink {
                            sink.write_all(&frame)?;
                        }
                        filled = 0;
                    }
                }
            }
        }
    })
}

/// Waits for a [`spawn_frame_reader`] thread: MB/s since `started` and its CPU-seconds
/// per GB.
fn join_frame_reader(
    reader: std::thread::JoinHandle<std::io::Result<(u64, f64, u32)>>,
    started: Instant,
) -> Result<(f64, f64), Error> {
    let (received, recv_cpu_s, crc) = reader
        .join()
        .map_err(|_| Error::Config("loopback reader panicked".to_owned()))?
        .map_err(io("read loopback (or write its file)"))?;
    std::hint::black_box(crc);
    Ok((mb_per_s(received, started), per_gb(recv_cpu_s, received)))
}

/// One loopback connection shaped like an acks=1 produce into a broker that does
/// nothing else: the sender writes 1 MiB chunks; the receiver reads them into one
/// frame, checks its CRC-32C and writes it into a file preallocated as a segment is
/// (`fallocate`), on one thread. Returns MB/s and the receiver's CPU-seconds per GB.
fn produce_loopback(dir: &Path, bytes: u64) -> Result<(f64, f64), Error> {
    let path = dir.join("limit-produce.bin");
    let file = std::fs::File::create(&path).map_err(io("create limit file"))?;
    preallocate(&file, bytes);
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind loopback listener"))?;
    let addr = listener
        .local_addr()
        .map_err(io("loopback listener address"))?;
    let reader = spawn_frame_reader(listener, Some(file));
    let outcome = (|| {
        let stream = TcpStream::connect(addr).map_err(io("connect loopback"))?;
        let started = Instant::now();
        send_chunks(stream, bytes)?;
        join_frame_reader(reader, started)
    })();
    let _ = std::fs::remove_file(&path);
    outcome
}

/// Measures them all, writing files in `dir` (on the brokers' file system).
pub(crate) fn measure(dir: &Path, sizes: LimitSizes) -> Result<Limits, Error> {
    let (buffered_write_mb_s, buffered_write_cpu_s_per_gb) =
        write_file(dir, "limit-buffered.bin", sizes.buffered_write_bytes, false)?;
    let buffered_write_backed_cpu_s_per_gb =
        write_file_host_backed(dir, sizes.buffered_write_bytes)?;
    let (produce_loopback_mb_s, produce_loopback_recv_cpu_s_per_gb) =
        produce_loopback(dir, sizes.buffered_write_bytes)?;
    // Let the kernel write back what the buffered run left before timing syncs.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let (fdatasync_write_mb_s, _) = write_file(
        dir,
        "limit-fdatasync.bin",
        sizes.fdatasync_write_bytes,
        true,
    )?;
    let fdatasync_write_3_streams_mb_s =
        shared_disk_streams(dir, sizes.fdatasync_write_bytes / SHARED_DISK_STREAMS)?;
    let fdatasync_sustained_mb_s = fdatasync_sustained(dir, sizes.fdatasync_sustained_bytes)?;
    let memcpy_mb_s = memcpy(sizes.memcpy_bytes);
    // CRC runs in cache and about as fast as memcpy: the same byte count is enough.
    let crc32c_mb_s = crc32c(sizes.memcpy_bytes);
    let (loopback_tcp_mb_s, loopback_send_cpu_s_per_gb, loopback_recv_cpu_s_per_gb) =
        loopback(sizes.loopback_bytes)?;
    let (fetch_loopback_mb_s, fetch_loopback_recv_cpu_s_per_gb) =
        fetch_loopback(dir, sizes.loopback_bytes)?;
    Ok(Limits {
        buffered_write_mb_s,
        buffered_write_cpu_s_per_gb,
        buffered_write_backed_cpu_s_per_gb,
        fdatasync_write_mb_s,
        fdatasync_sustained_mb_s,
        fdatasync_write_3_streams_mb_s,
        memcpy_mb_s,
        crc32c_mb_s,
        loopback_tcp_mb_s,
        loopback_send_cpu_s_per_gb,
        loopback_recv_cpu_s_per_gb,
        fetch_loopback_mb_s,
        fetch_loopback_recv_cpu_s_per_gb,
        produce_loopback_mb_s,
        produce_loopback_recv_cpu_s_per_gb,
    })
}
