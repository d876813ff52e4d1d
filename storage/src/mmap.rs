//! The only module with `unsafe` code: memory maps of segment files, and the
//! `fallocate`/`pwritev` system calls.
//!
//! A [`MapFile`] is one read-only, shared mapping of a segment file. Its bytes split
//! at a moving boundary, `published`:
//! * below it, bytes are *published*: they may be read, through [`View`] guards and
//!   through `Bytes` handed out by [`MapFile::bytes`], and are never written while any
//!   such reader is registered;
//! * at and above it, bytes are written (with `pwrite` into the file, whose page-cache
//!   pages the map shows) by the single [`MapWriter`] of the map, and never read.
//!
//! Appends go through `pwrite`, not stores into the map: the kernel copies straight
//! into page-cache folios it allocates for the write, while a store into a fresh
//! mapped page first takes a fault that allocates and zero-fills it (measured on
//! the development VM: 2-6x slower appends, and 35 % slower at a flush per MiB).
//!
//! The map covers a segment's whole capacity (`segment.bytes`), but the file behind
//! it is only as long as the writer has grown it ([`MapWriter::grow_file`], steps of
//! `fallocate` taken before any byte is written there). Mapping past the end of a
//! file is allowed; touching a mapped page wholly past it is SIGBUS. Readers never
//! do: they read below `published`, which never passes the file length, and the file
//! never shrinks below a published end while readers are registered (see below).
//!
//! Readers register in the `readers` counter before they check `published`, and the
//! writer lowers `published` (truncation) only after it has seen no reader
//! registered; both use `SeqCst`, so either the reader sees the lowered boundary and
//! backs off, or the writer sees the reader and refuses (the caller then copies the
//! kept prefix into a fresh file instead of overwriting the mapped one). This is what
//! makes handing out zero-copy `Bytes` of a file we keep writing sound.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

/// One memory mapping of a segment file (see the module docs for the rules).
pub(crate) struct MapFile {
    raw: MmapRaw,
    /// Bytes below this may be read and are immutable while readers are registered.
    published: AtomicUsize,
    /// Live [`View`]s and `Bytes` owners of this map.
    readers: AtomicUsize,
}

impl std::fmt::Debug for MapFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapFile")
            .field("len", &self.raw.len())
            .field("published", &self.published.load(SeqCst))
            .field("readers", &self.readers.load(SeqCst))
            .finish()
    }
}

impl MapFile {
    /// Maps `capacity_bytes` of `file` (read-only, shared) for a segment that will
    /// be appended to; the file is `file_len_bytes` long (at most `capacity_bytes`:
    /// the writer grows it before writing past it) and `published_bytes` of it are
    /// already valid content. Returns the map and its one writer, which writes
    /// through `file`.
    pub(crate) fn for_appending(
        file: Arc<File>,
        capacity_bytes: usize,
        file_len_bytes: usize,
        published_bytes: usize,
    ) -> io::Result<(Arc<MapFile>, MapWriter)> {
        assert!(
            capacity_bytes > 0
                && published_bytes <= file_len_bytes
                && file_len_bytes <= capacity_bytes
        );
        let raw = MmapOptions::new()
            .len(capacity_bytes)
            .map_raw_read_only(&*file)?;
        let map = Arc::new(MapFile {
            raw,
            published: AtomicUsize::new(published_bytes),
            readers: AtomicUsize::new(0),
        });
        let writer = MapWriter {
            map: map.clone(),
            file,
            file_len_bytes,
        };
        Ok((map, writer))
    }

    /// Maps the first `len_bytes` (> 0) of `file` read-only, all of them published.
    pub(crate) fn read_only(file: &File, len_bytes: usize) -> io::Result<Arc<MapFile>> {
        assert!(len_bytes > 0);
        let raw = MmapOptions::new().len(len_bytes).map_raw_read_only(file)?;
        Ok(Arc::new(MapFile {
            raw,
            published: AtomicUsize::new(len_bytes),
            readers: AtomicUsize::new(0),
        }))
    }

    /// Current end of the published region.
    pub(crate) fn published(&self) -> usize {
        self.published.load(SeqCst)
    }

    /// Registers a reader of `[0, end)`; false (and nothing registered) if that
    /// region is not published.
    fn register(&self, end: usize) -> bool {
        self.readers.fetch_add(1, SeqCst);
        if end <= self.published.load(SeqCst) {
            true
        } else {
            self.readers.fetch_sub(1, SeqCst);
            false
        }
    }

    /// A borrowed view of the whole published region, valid while the guard lives.
    pub(crate) fn view(&self) -> View<'_> {
        loop {
            let end = self.published();
            if self.register(end) {
                return View { map: self, end };
            }
        }
    }

    /// A zero-copy `Bytes` of `[from, to)`, which must lie in the published region.
    /// The `Bytes` keeps the mapping alive (and registered as a reader) until dropped.
    pub(crate) fn bytes(self: &Arc<Self>, from: usize, to: usize) -> Bytes {
        assert!(from <= to, "bad slice {from}..{to}");
        assert!(
            self.register(to),
            "slice {from}..{to} reaches past the published region"
        );
        Bytes::from_owner(MapSlice {
            map: self.clone(),
            from,
            to,
        })
    }
}

/// A registered, borrowed read of a map's published region.
pub(crate) struct View<'a> {
    map: &'a MapFile,
    end: usize,
}

impl std::ops::Deref for View<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `[0, end)` was published when this view registered as a reader;
        // the writer writes only at or above `published`, and lowers `published` only
        // when no reader is registered, so these bytes stay initialised and unwritten
        // while `self` lives. The map may reach past the end of the file, but
        // `published` never does (`MapWriter::publish` asserts it, and the file only
        // shrinks below a published end when no reader is registered), so no page
        // read here lies past the end (SIGBUS). The mapping outlives `self`.
        unsafe { std::slice::from_raw_parts(self.map.raw.as_ptr(), self.end) }
    }
}

impl Drop for View<'_> {
    fn drop(&mut self) {
        self.map.readers.fetch_sub(1, SeqCst);
    }
}

/// The owner behind a `Bytes` handed out by [`MapFile::bytes`].
struct MapSlice {
    map: Arc<MapFile>,
    from: usize,
    to: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: same argument as `View::deref`: `[from, to)` lies in the region that
        // was published when this owner registered as a reader, and stays unwritten
        // while it is registered; the `Arc` keeps the mapping alive (unlinking or
        // replacing the file does not unmap it, and we never shrink a file below a
        // published end while readers exist).
        unsafe {
            std::slice::from_raw_parts(self.map.raw.as_ptr().add(self.from), self.to - self.from)
        }
    }
}

impl Drop for MapSlice {
    fn drop(&mut self) {
        self.map.readers.fetch_sub(1, SeqCst);
    }
}

/// The single writer of a [`MapFile`]: writes into the unpublished part of the file.
#[derive(Debug)]
pub(crate) struct MapWriter {
    map: Arc<MapFile>,
    file: Arc<File>,
    /// Length of the file, all of it allocated: writes stay below it, so
    /// `published` (which only covers written bytes) does too.
    file_len_bytes: usize,
}

impl MapWriter {
    /// The map this writer writes.
    pub(crate) fn map(&self) -> &Arc<MapFile> {
        &self.map
    }

    /// The file behind the map.
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Length of the file (allocated, reads as zeros where never written).
    pub(crate) fn file_len(&self) -> usize {
        self.file_len_bytes
    }

    /// Extends the file to `len_bytes` (at most the map's length) with allocated
    /// blocks that read as zeros, so later writes below it cannot fail for space and
    /// recovery still finds the end at a zero batch length. Growing never hurts a
    /// reader; on error the file may have grown in part, which is just as harmless.
    pub(crate) fn grow_file(&mut self, len_bytes: usize) -> io::Result<()> {
        assert!(
            len_bytes >= self.file_len_bytes && len_bytes <= self.map.raw.len(),
            "grow to {len_bytes} from {} in a map of {}",
            self.file_len_bytes,
            self.map.raw.len()
        );
        allocate(&self.file, len_bytes as u64)?;
        self.file_len_bytes = len_bytes;
        Ok(())
    }

    fn check_unpublished(&self, pos: usize, len: usize) {
        let published = self.map.published();
        assert!(
            pos >= published,
            "write at {pos} below published end {published}"
        );
        // Writing past the file length would extend the file without reserving the
        // space behind it; `publish` relies on written bytes lying inside the file.
        assert!(
            pos + len <= self.file_len_bytes,
            "write past the end of the file ({} bytes)",
            self.file_len_bytes
        );
    }

    /// Writes `parts` back to back at `pos`, which must be unpublished, with as few
    /// `pwritev` calls as the kernel allows (usually one).
    pub(crate) fn write_at(&mut self, pos: usize, parts: &mut [IoSlice<'_>]) -> io::Result<()> {
        let len = parts.iter().map(|p| p.len()).sum();
        self.check_unpublished(pos, len);
        pwritev_all(&self.file, pos as u64, parts)
    }

    /// Makes `[from, to)` (unpublished) read as zeros.
    pub(crate) fn zero(&mut self, from: usize, to: usize) -> io::Result<()> {
        if to <= from {
            return Ok(());
        }
        self.check_unpublished(from, to - from);
        if to - from <= 1 << 20 {
            let zeros = vec![0u8; to - from];
            self.file.write_all_at(&zeros, from as u64)
        } else {
            zero_range(&self.file, from as u64, to as u64)
        }
    }

    /// Moves the published end forward to `end`, making `[old, end)` readable.
    pub(crate) fn publish(&mut self, end: usize) {
        let old = self.map.published();
        // Never past the file: a reader touching a mapped page beyond it is SIGBUS.
        assert!(end >= old && end <= self.file_len_bytes);
        self.map.published.store(end, SeqCst);
    }

    /// Moves the published end back to `end` (truncation) if no reader is registered,
    /// returning whether it did. Afterwards `[end, old)` may be overwritten.
    pub(crate) fn try_unpublish(&mut self, end: usize) -> bool {
        let old = self.map.published();
        assert!(end <= old);
        self.map.published.store(end, SeqCst);
        if self.map.readers.load(SeqCst) == 0 {
            true
        } else {
            self.map.published.store(old, SeqCst);
            false
        }
    }
}

/// `pwritev` until every byte of `parts` is written at `pos` on.
pub(crate) fn pwritev_all(
    file: &File,
    mut pos: u64,
    mut parts: &mut [IoSlice<'_>],
) -> io::Result<()> {
    // Linux caps one call at IOV_MAX (1024) buffers.
    const IOV_MAX: usize = 1024;
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        let count = parts.len().min(IOV_MAX);
        let offset = libc::off_t::try_from(pos)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: `IoSlice` is guaranteed ABI-compatible with `struct iovec` on Unix,
        // and `parts[..count]` are valid, initialised buffers that outlive the call.
        let written = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                parts.as_ptr().cast::<libc::iovec>(),
                count as libc::c_int,
                offset,
            )
        };
        if written < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if written == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        pos += written as u64;
        IoSlice::advance_slices(&mut parts, written as usize);
    }
    Ok(())
}

/// Allocates disk blocks for `[0, len)` of `file` (extending it), so that writes
/// through a map of that range cannot hit a full disk later. Falls back to writing
/// zeros where the file system has no `fallocate`.
pub(crate) fn allocate(file: &File, len: u64) -> io::Result<()> {
    let len_off = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
    // SAFETY: plain system call on a file descriptor we own for the call's duration.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len_off) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(err);
    }
    write_zeros(file, len)
}

fn write_zeros(file: &File, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let current = file.metadata()?.len();
    let zeros = vec![0u8; 1 << 20];
    let mut pos = current;
    while pos < len {
        let n = (len - pos).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// The first position at or after `pos` holding written data (`SEEK_DATA`), or
/// `None` if there is none. Preallocated, never written blocks count as holes on
/// ext4 and XFS; a file system without `SEEK_DATA` reports everything as data.
pub(crate) fn data_after(file: &File, pos: u64) -> io::Result<Option<u64>> {
    let off = libc::off_t::try_from(pos)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    // SAFETY: plain system call on a file descriptor we own for the call's duration;
    // it only moves the file position, which nothing here relies on.
    let found = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_DATA) };
    if found >= 0 {
        return Ok(Some(found as u64));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        _ => Err(err),
    }
}

/// Makes `[from, to)` of `file` read as zeros while keeping its blocks allocated
/// (`FALLOC_FL_ZERO_RANGE`), falling back to writing zeros. Must only be called on a
/// range no reader can see (see the module docs).
pub(crate) fn zero_range(file: &File, from: u64, to: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    if to <= from {
        return Ok(());
    }
    let (Ok(off), Ok(len)) = (
        libc::off_t::try_from(from),
        libc::off_t::try_from(to - from),
    ) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range too large",
        ));
    };
    // SAFETY: plain system call on a file descriptor we own for the call's duration.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_ZERO_RANGE, off, len) };
    if rc == 0 {
        return Ok(());
    }
    let zeros = vec![0u8; 1 << 20];
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_is_refused_while_a_slice_is_out() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        allocate(&file, 8192).unwrap();
        let (map, mut writer) = MapFile::for_appending(Arc::new(file), 8192, 8192, 0).unwrap();
        writer
            .write_at(0, &mut [IoSlice::new(b"ab"), IoSlice::new(b"cd")])
            .unwrap();
        writer.publish(4);
        let b = map.bytes(1, 3);
        assert_eq!(&b[..], b"bc");
        assert!(
            !writer.try_unpublish(2),
            "a live Bytes must block truncation"
        );
        assert_eq!(map.published(), 4);
        drop(b);
        assert!(writer.try_unpublish(2));
        writer.zero(2, 4).unwrap();
        assert_eq!(map.published(), 2);
        assert_eq!(&map.view()[..], b"ab");
    }
}
