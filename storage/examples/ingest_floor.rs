//! The floor under the broker's produce path on this machine: only the syscalls and
//! checks any broker must make to take bytes from a loopback TCP socket into a log
//! file, with no protocol, no runtime and no locks. Compare the broker's CPU-seconds
//! per GB (scripts/bench-broker-cpu) with the receiver's figure here, measured in the
//! same sitting.
//!
//! ```text
//! cargo run --release -p rill-storage --example ingest_floor -- MODE [MiB] [DIR]
//! ```
//!
//! Modes (a sender thread writes MiB of 1 MiB chunks into a loopback socket; the
//! receiver, measured with its own thread CPU time, does):
//! * `tcp`: recv into a reused 1 MiB buffer (the socket's copy alone);
//! * `tcp-crc`: plus crc32c over each chunk (the batch CRC check);
//! * `file`, `file-crc`: plus a pwrite of each chunk into a preallocated file (the
//!   page-cache copy: what the broker does today), and `file-crc-sync`: plus an
//!   fdatasync every 8 MiB (the writeback the broker's sync rounds do);
//! * `splice`, `splice-crc`: socket → pipe → file with splice(2), then crc32c over the
//!   file's pages through a read-only map (one kernel copy instead of two).
//!
//! And without a socket: `group MiB INFLIGHT_MIB`: a writer pwrites 1 MiB chunks, never
//! more than INFLIGHT_MIB ahead of what is durable, while a syncer fdatasyncs in a loop
//! (the persist loop's group commit under a producer's in-flight window); `dsync MiB`:
//! write + fdatasync per 1 MiB (`dd oflag=dsync bs=1M`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

const CHUNK_BYTES: usize = 1 << 20;

/// Chunks between fdatasyncs in the `-sync` modes: about what one sync round of the
/// broker covers under an acks=1 load (80-200 rounds per GB).
const SYNC_EVERY_CHUNKS: usize = 8;

fn thread_cpu_s() -> f64 {
    // SAFETY: getrusage writes the struct it is given; zeroed is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn preallocated(dir: &str, bytes: usize) -> std::io::Result<(std::fs::File, String)> {
    let path = format!("{dir}/ingest-floor-{}.dat", std::process::id());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    // SAFETY: fallocate on an open descriptor.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as i64) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((file, path))
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("tcp", String::as_str).to_string();
    let mib: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let total = mib * CHUNK_BYTES;
    let dir = args.get(3).cloned().unwrap_or_else(|| ".".into());
    match mode.as_str() {
        "group" => {
            let inflight_mib: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
            let dir = args.get(4).cloned().unwrap_or_else(|| ".".into());
            group(total, inflight_mib * CHUNK_BYTES, &dir)
        }
        "dsync" => dsync(total, &dir),
        _ => socket_to_file(&mode, total, &dir),
    }
}

fn socket_to_file(mode: &str, total: usize, dir: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> std::io::Result<f64> {
        let mut socket = TcpStream::connect(address)?;
        let chunk = vec![7u8; CHUNK_BYTES];
        let cpu_start = thread_cpu_s();
        for _ in 0..total / CHUNK_BYTES {
            socket.write_all(&chunk)?;
        }
        Ok(thread_cpu_s() - cpu_start)
    });
    let (mut socket, _) = listener.accept()?;
    let file = if mode == "tcp" || mode == "tcp-crc" {
        None
    } else {
        Some(preallocated(dir, total)?)
    };
    let check_crc = mode.contains("-crc");
    // `-sync`: an fdatasync per SYNC_EVERY_CHUNKS, in the receiving thread, as the
    // broker's persist loop does under load (its writeback work counts here too, and
    // dirty pages never pile up to where the kernel throttles the writer).
    let sync_every_chunks = if mode.ends_with("-sync") {
        SYNC_EVERY_CHUNKS
    } else {
        0
    };
    let cpu_start = thread_cpu_s();
    let started = Instant::now();
    let mut crc = 0u32;
    if mode.starts_with("splice") {
        let Some((file, _)) = &file else {
            unreachable!("splice modes have a file")
        };
        let mut pipe = [0i32; 2];
        // SAFETY: pipe writes two descriptors into the array.
        if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a pipe descriptor; a larger pipe means fewer splices.
        unsafe { libc::fcntl(pipe[1], libc::F_SETPIPE_SZ, CHUNK_BYTES as i32) };
        // SAFETY: a read-only shared map of the preallocated file, unmapped at exit.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let mut received = 0usize;
        while received < total {
            let end = received + CHUNK_BYTES;
            while received < end {
                // SAFETY: splice between descriptors this function owns.
                let n = unsafe {
                    libc::splice(
                        socket.as_raw_fd(),
                        std::ptr::null_mut(),
                        pipe[1],
                        std::ptr::null_mut(),
                        end - received,
                        libc::SPLICE_F_MOVE,
                    )
                };
                if n <= 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut left = n as usize;
                while left > 0 {
                    let mut offset = received as i64;
                    // SAFETY: as above; the offset is within the preallocated file.
                    let m = unsafe {
                        libc::splice(
                            pipe[0],
                            std::ptr::null_mut(),
                            file.as_raw_fd(),
                            &mut offset,
                            left,
                            libc::SPLICE_F_MOVE,
                        )
                    };
                    if m <= 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    left -= m as usize;
                    received += m as usize;
                }
            }
            if check_crc {
                // SAFETY: the map covers `total` bytes and this chunk was written.
                let chunk = unsafe {
                    std::slice::from_raw_parts(
                        (map as *const u8).add(end - CHUNK_BYTES),
                        CHUNK_BYTES,
                    )
                };
                crc = crc32c::crc32c_append(crc, chunk);
            }
        }
    } else {
        let mut buffer = vec![0u8; CHUNK_BYTES];
        let mut received = 0usize;
        while received < total {
            let mut filled = 0;
            while filled < CHUNK_BYTES {
                let n = socket.read(&mut buffer[filled..])?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                filled += n;
            }
            if check_crc {
                crc = crc32c::crc32c_append(crc, &buffer);
            }
            if let Some((file, _)) = &file {
                file.write_all_at(&buffer, received as u64)?;
                if sync_every_chunks > 0 && (received / CHUNK_BYTES + 1) % sync_every_chunks == 0 {
                    file.sync_data()?;
                }
            }
            received += CHUNK_BYTES;
        }
    }
    let receiver_cpu_s = thread_cpu_s() - cpu_start;
    let elapsed_s = started.elapsed().as_secs_f64();
    let sender_cpu_s = sender
        .join()
        .map_err(|_| std::io::Error::other("sender panicked"))??;
    let gb = total as f64 / 1e9;
    println!(
        "{mode}: {:.0} MB/s, receiver {:.3} CPU-s/GB, sender {:.3} CPU-s/GB (crc {crc:08x})",
        total as f64 / 1e6 / elapsed_s,
        receiver_cpu_s / gb,
        sender_cpu_s / gb
    );
    if let Some((_, path)) = file {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

fn group(total: usize, inflight_bytes: usize, dir: &str) -> std::io::Result<()> {
    let (file, path) = preallocated(dir, total)?;
    let file = Arc::new(file);
    // (bytes written, bytes durable)
    let progress = Arc::new((Mutex::new((0usize, 0usize)), Condvar::new()));
    let started = Instant::now();
    let syncer = {
        let (file, progress) = (Arc::clone(&file), Arc::clone(&progress));
        std::thread::spawn(move || -> std::io::Result<usize> {
            let (lock, changed) = &*progress;
            let mut syncs = 0;
            loop {
                let mut state = lock.lock().map_err(|_| std::io::Error::other("poisoned"))?;
                while state.0 == state.1 {
                    if state.1 >= total {
                        return Ok(syncs);
                    }
                    state = changed
                        .wait(state)
                        .map_err(|_| std::io::Error::other("poisoned"))?;
                }
                let target = state.0;
                drop(state);
                file.sync_data()?;
                syncs += 1;
                lock.lock()
                    .map_err(|_| std::io::Error::other("poisoned"))?
                    .1 = target;
                changed.notify_all();
            }
        })
    };
    let chunk = vec![7u8; CHUNK_BYTES];
    let (lock, changed) = &*progress;
    let mut written = 0;
    while written < total {
        {
            let mut state = lock.lock().map_err(|_| std::io::Error::other("poisoned"))?;
            while state.0 - state.1 >= inflight_bytes {
                state = changed
                    .wait(state)
                    .map_err(|_| std::io::Error::other("poisoned"))?;
            }
        }
        file.write_all_at(&chunk, written as u64)?;
        written += CHUNK_BYTES;
        lock.lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .0 = written;
        changed.notify_all();
    }
    let syncs = syncer
        .join()
        .map_err(|_| std::io::Error::other("syncer panicked"))??;
    let elapsed_s = started.elapsed().as_secs_f64();
    println!(
        "group, {} MiB in flight: {:.0} MB/s, {syncs} fdatasyncs, {:.1} ms and {:.2} MB each",
        inflight_bytes / CHUNK_BYTES,
        total as f64 / 1e6 / elapsed_s,
        elapsed_s * 1e3 / syncs.max(1) as f64,
        total as f64 / 1e6 / syncs.max(1) as f64
    );
    std::fs::remove_file(path)
}

fn dsync(total: usize, dir: &str) -> std::io::Result<()> {
    let (file, path) = preallocated(dir, total)?;
    let chunk = vec![7u8; CHUNK_BYTES];
    let started = Instant::now();
    let mut written = 0;
    while written < total {
        file.write_all_at(&chunk, written as u64)?;
        file.sync_data()?;
        written += CHUNK_BYTES;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    println!(
        "write + fdatasync per 1 MiB: {:.0} MB/s",
        total as f64 / 1e6 / elapsed_s
    );
    std::fs::remove_file(path)
}
