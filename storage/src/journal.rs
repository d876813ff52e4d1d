//! The shared journal of one data directory: group commit across partitions.
//!
//! Every partition has its own segment files, so an fdatasync of one cannot cover
//! another's data: a round that made 240 partitions durable needed 240 fdatasyncs
//! (each one a device cache flush on ext4 when no metadata changed). The journal turns
//! that into one: the persist loop appends the round's new segment bytes of every
//! partition to this one preallocated file, fdatasyncs it once, and only then counts
//! them durable. The segment files themselves are synced later, all at once, when the
//! journal is full or must be emptied (a *checkpoint*); until then a power loss may
//! take their tails, and [`Journal::open`] writes them back from the journal before
//! any log is opened.
//!
//! # On disk
//!
//! A file of `capacity_bytes`, written with zeros when created (so later fdatasyncs
//! overwrite allocated blocks and change no metadata). Two header slots (bytes 0 and
//! 512) hold the current *epoch*, the newer valid one wins; a checkpoint writes the
//! next epoch into the other slot, so a torn header write leaves the previous one.
//! Records start at byte 4096, one after another:
//!
//! ```text
//! magic u32 "RLJR" | epoch u64 | payload_len u32 | crc32c u32 (of epoch, payload)
//! payload: path_len u16 | path (UTF-8, relative to the data dir) | position u64 | data
//! ```
//!
//! All little-endian. Replay applies the records of the current epoch in order and
//! stops at the first one that is torn, from an older epoch, or fails its CRC: that
//! round's fdatasync never completed, so none of it was acknowledged.
//!
//! # The rule that keeps replay safe
//!
//! Replay writes old bytes back at their old positions. That is only right while
//! nothing has since cut or rewritten those positions: once a log truncates, resets,
//! or is deleted (and maybe recreated under the same name), its records in the
//! current epoch must not be replayed. So before a log whose bytes are in the current
//! epoch truncates, resets or is deleted, the journal checkpoints
//! ([`Journal::checkpoint_epoch`]): every journalled file is synced in place and a new
//! epoch begins. Truncations are rare (a follower meeting a new leader), so this costs
//! little.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::atomic_file;
use crate::error::{Result, StorageError};
use crate::flush::FlushedTo;
use crate::mmap::pwritev_all;

/// Size of the header area; records start here.
const RECORDS_START_BYTES: u64 = 4096;
/// Offset of each of the two header slots.
const HEADER_SLOT_BYTES: u64 = 512;
const HEADER_MAGIC: &[u8; 8] = b"RILLJNL\x01";
/// magic + epoch + crc.
const HEADER_LEN_BYTES: usize = 8 + 8 + 4;
const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"RLJR");
/// magic + epoch + payload_len + crc.
const RECORD_HEADER_BYTES: usize = 4 + 4 + 8 + 4;
/// Longest relative path a record may name.
const PATH_BYTES_MAX: usize = 4096;
/// Smallest journal that holds a useful round.
pub const JOURNAL_CAPACITY_BYTES_MIN: u64 = 1 << 20;

/// New bytes of one partition's active segment, to be made durable through the
/// journal instead of an fdatasync of the segment (from
/// [`PartitionLog::journal_write`](crate::PartitionLog::journal_write)).
#[derive(Debug)]
pub struct JournalWrite {
    pub(crate) file: Arc<File>,
    /// The segment's path relative to the data directory.
    pub(crate) relative_path: String,
    pub(crate) position: u64,
    /// Zero-copy slice of the segment's map.
    pub(crate) data: Bytes,
    pub(crate) outcome: FlushedTo,
}

impl JournalWrite {
    /// Bytes this write adds to the journal (header, path and data).
    pub fn journal_bytes(&self) -> u64 {
        record_bytes(&self.relative_path, self.data.len())
    }

    /// What the log may record once the journal holds this write durably; hand it to
    /// [`PartitionLog::complete_journaled`](crate::PartitionLog::complete_journaled).
    pub fn into_outcome(self) -> FlushedTo {
        self.outcome
    }
}

fn record_bytes(relative_path: &str, data_len: usize) -> u64 {
    (RECORD_HEADER_BYTES + 2 + relative_path.len() + 8 + data_len) as u64
}

/// What [`Journal::open`] found and wrote back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Records of the current epoch applied.
    pub records: u64,
    /// Bytes written back into segment files.
    pub bytes: u64,
    /// Records naming a file that no longer exists (its partition was deleted).
    pub skipped: u64,
}

/// The journal of one data directory (see the module docs). Not thread-safe by
/// itself: the broker keeps it behind one lock, taken without any partition lock held
/// by the persist loop, and with one partition's lock held by that partition's
/// truncation barrier (so the order is always partition → journal).
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    capacity_bytes: u64,
    epoch: u64,
    write_position: u64,
    /// Files with bytes durable only through the current epoch, by address.
    journalled: HashMap<usize, Arc<File>>,
    /// Checkpoints run, and the segment files they synced in place (statistics).
    checkpoints_total: u64,
    checkpoint_file_syncs_total: u64,
}

impl Journal {
    /// Opens the journal at `path` (creating it with `capacity_bytes` of zeros), first
    /// writing back into the segment files under `data_dir` whatever the current
    /// epoch holds, syncing them, and starting a new epoch. Call before any log of
    /// the directory is opened.
    pub fn open(
        path: &Path,
        data_dir: &Path,
        capacity_bytes: u64,
    ) -> Result<(Journal, ReplayStats)> {
        let capacity_bytes = capacity_bytes.max(JOURNAL_CAPACITY_BYTES_MIN);
        let io = |op: &'static str| move |e: io::Error| StorageError::io(op, path, e);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io("open journal"))?;
        let len_bytes = file.metadata().map_err(io("stat journal"))?.len();
        let (epoch, stats) = if existed {
            let epoch = read_epoch(&file).map_err(io("read journal header"))?;
            let stats = match epoch {
                Some(epoch) => replay(&file, len_bytes, epoch, data_dir)?,
                None => {
                    tracing::warn!(journal = %path.display(), "journal has no valid header: nothing to replay");
                    ReplayStats::default()
                }
            };
            (epoch.unwrap_or(0), stats)
        } else {
            (0, ReplayStats::default())
        };
        let mut usable_bytes = capacity_bytes.max(len_bytes);
        if len_bytes < capacity_bytes {
            match zero_fill(&file, len_bytes, capacity_bytes) {
                Ok(()) => {}
                Err(e) if is_no_space(&e) => {
                    // Start anyway, syncing every partition in place: a full disk
                    // must not keep the broker (and its data) offline. The new epoch
                    // below still retires what was replayed.
                    tracing::warn!(journal = %path.display(), capacity_bytes, "no space for the journal: partitions sync in place until a restart finds room");
                    usable_bytes = RECORDS_START_BYTES;
                }
                Err(e) => return Err(StorageError::io("allocate journal", path, e)),
            }
        }
        let mut journal = Journal {
            file,
            path: path.to_path_buf(),
            capacity_bytes: usable_bytes,
            epoch,
            write_position: RECORDS_START_BYTES,
            journalled: HashMap::new(),
            checkpoints_total: 0,
            checkpoint_file_syncs_total: 0,
        };
        journal.begin_epoch()?;
        if !existed {
            if let Some(parent) = path.parent() {
                atomic_file::sync_dir(parent)?;
            }
        }
        Ok((journal, stats))
    }

    /// The current epoch: logs remember it with their journalled bytes
    /// ([`PartitionLog::journal_epoch`](crate::PartitionLog::journal_epoch)).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Bytes free in the current epoch.
    pub fn free_bytes(&self) -> u64 {
        self.capacity_bytes - self.write_position
    }

    /// Total size of the record area (0 when the disk had no room for the journal).
    pub fn record_capacity_bytes(&self) -> u64 {
        self.capacity_bytes - RECORDS_START_BYTES
    }

    /// Appends `writes` and fdatasyncs the journal once: when this returns `Ok`, every
    /// write is durable. Checkpoints first if they do not fit in what is left of the
    /// epoch. The caller must keep `writes` within [`record_capacity_bytes`]
    /// (`Self::record_capacity_bytes`). On error the journal must not be trusted again
    /// (fail-stop), like any failed fsync.
    pub fn append(&mut self, writes: &[JournalWrite]) -> Result<()> {
        let total: u64 = writes.iter().map(JournalWrite::journal_bytes).sum();
        assert!(
            total <= self.record_capacity_bytes(),
            "journal writes of {total} bytes exceed the journal"
        );
        if total > self.free_bytes() {
            self.checkpoint()?;
        }
        let mut headers: Vec<u8> = Vec::with_capacity(writes.len() * (RECORD_HEADER_BYTES + 64));
        let mut spans = Vec::with_capacity(writes.len());
        for w in writes {
            let start = headers.len();
            let payload_len = 2 + w.relative_path.len() + 8 + w.data.len();
            let mut prefix = Vec::with_capacity(2 + w.relative_path.len() + 8);
            prefix.extend_from_slice(&(w.relative_path.len() as u16).to_le_bytes());
            prefix.extend_from_slice(w.relative_path.as_bytes());
            prefix.extend_from_slice(&w.position.to_le_bytes());
            let mut crc = crc32c::crc32c(&self.epoch.to_le_bytes());
            crc = crc32c::crc32c_append(crc, &prefix);
            crc = crc32c::crc32c_append(crc, &w.data);
            headers.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
            headers.extend_from_slice(&self.epoch.to_le_bytes());
            headers.extend_from_slice(&(payload_len as u32).to_le_bytes());
            headers.extend_from_slice(&crc.to_le_bytes());
            headers.extend_from_slice(&prefix);
            spans.push(start..headers.len());
        }
        let mut parts = Vec::with_capacity(writes.len() * 2);
        for (w, span) in writes.iter().zip(&spans) {
            parts.push(IoSlice::new(&headers[span.clone()]));
            parts.push(IoSlice::new(&w.data));
        }
        pwritev_all(&self.file, self.write_position, &mut parts)
            .map_err(|e| StorageError::io("write journal", &self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| StorageError::io("fdatasync journal", &self.path, e))?;
        self.write_position += total;
        for w in writes {
            self.journalled
                .entry(Arc::as_ptr(&w.file) as usize)
                .or_insert_with(|| Arc::clone(&w.file));
        }
        Ok(())
    }

    /// Syncs every journalled segment file in place and starts a new epoch (empty
    /// journal). Nothing to do if no file was journalled in this epoch.
    pub fn checkpoint(&mut self) -> Result<()> {
        if self.journalled.is_empty() {
            return Ok(());
        }
        let files: Vec<Arc<File>> = self.journalled.drain().map(|(_, f)| f).collect();
        self.checkpoints_total += 1;
        self.checkpoint_file_syncs_total += files.len() as u64;
        sync_files(&files)
            .map_err(|e| StorageError::io("fdatasync journalled segment", &self.path, e))?;
        self.begin_epoch()
    }

    /// Checkpoints if `epoch` is still the current one: the barrier before a log that
    /// journalled bytes in `epoch` truncates, resets or is deleted (module docs).
    pub fn checkpoint_epoch(&mut self, epoch: u64) -> Result<()> {
        if epoch == self.epoch {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Checkpoints run since the journal was opened.
    pub fn checkpoints_total(&self) -> u64 {
        self.checkpoints_total
    }

    /// Segment files those checkpoints synced in place (fdatasyncs besides the
    /// journal's own).
    pub fn checkpoint_file_syncs_total(&self) -> u64 {
        self.checkpoint_file_syncs_total
    }

    /// Files whose bytes the current epoch holds.
    pub fn journalled_files(&self) -> usize {
        self.journalled.len()
    }

    /// Writes the next epoch's header into its slot and syncs it.
    fn begin_epoch(&mut self) -> Result<()> {
        let epoch = self.epoch + 1;
        let mut header = [0u8; HEADER_LEN_BYTES];
        header[..8].copy_from_slice(HEADER_MAGIC);
        header[8..16].copy_from_slice(&epoch.to_le_bytes());
        let crc = crc32c::crc32c(&header[..16]);
        header[16..].copy_from_slice(&crc.to_le_bytes());
        self.file
            .write_all_at(&header, (epoch % 2) * HEADER_SLOT_BYTES)
            .map_err(|e| StorageError::io("write journal header", &self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| StorageError::io("fdatasync journal", &self.path, e))?;
        self.epoch = epoch;
        self.write_position = RECORDS_START_BYTES;
        Ok(())
    }
}

/// The epoch of the newer valid header slot, if any.
fn read_epoch(file: &File) -> io::Result<Option<u64>> {
    let mut best = None;
    for slot in 0..2 {
        let mut header = [0u8; HEADER_LEN_BYTES];
        match file.read_exact_at(&mut header, slot * HEADER_SLOT_BYTES) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => continue,
            Err(e) => return Err(e),
        }
        let crc = u32::from_le_bytes(header[16..].try_into().expect("4 bytes"));
        if &header[..8] != HEADER_MAGIC || crc32c::crc32c(&header[..16]) != crc {
            continue;
        }
        let epoch = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        best = best.max(Some(epoch));
    }
    Ok(best)
}

/// Writes back the records of `epoch`, in order, then syncs the files written.
fn replay(file: &File, len_bytes: u64, epoch: u64, data_dir: &Path) -> Result<ReplayStats> {
    let mut stats = ReplayStats::default();
    let mut targets: HashMap<String, Option<File>> = HashMap::new();
    let mut position = RECORDS_START_BYTES;
    let journal_error = |e| StorageError::io("read journal", data_dir, e);
    while let Some(record) = read_record(file, position, len_bytes, epoch).map_err(journal_error)? {
        position += (RECORD_HEADER_BYTES + record.payload.len()) as u64;
        let Some((path, at, data)) = parse_payload(&record.payload) else {
            // A CRC-valid record we cannot parse was written by a different format:
            // stop rather than guess.
            tracing::warn!(position, "unparseable journal record: replay stops here");
            break;
        };
        let target = match targets.get(path) {
            Some(t) => t,
            None => {
                let full = data_dir.join(path);
                let opened = match OpenOptions::new().write(true).open(&full) {
                    Ok(f) => Some(f),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(StorageError::io("open journalled segment", full, e)),
                };
                targets.entry(path.to_string()).or_insert(opened)
            }
        };
        let Some(target) = target else {
            stats.skipped += 1;
            continue;
        };
        target
            .write_all_at(data, at)
            .map_err(|e| StorageError::io("replay journal", data_dir.join(path), e))?;
        stats.records += 1;
        stats.bytes += data.len() as u64;
    }
    let files: Vec<Arc<File>> = targets.into_values().flatten().map(Arc::new).collect();
    sync_files(&files).map_err(|e| StorageError::io("fdatasync replayed segment", data_dir, e))?;
    if stats.records > 0 || stats.skipped > 0 {
        tracing::info!(
            records = stats.records,
            bytes = stats.bytes,
            skipped = stats.skipped,
            "journal replayed"
        );
    }
    Ok(stats)
}

struct RawRecord {
    payload: Vec<u8>,
}

/// The record at `position` if it is whole, of `epoch`, and passes its CRC.
fn read_record(
    file: &File,
    position: u64,
    len_bytes: u64,
    epoch: u64,
) -> io::Result<Option<RawRecord>> {
    if position + RECORD_HEADER_BYTES as u64 > len_bytes {
        return Ok(None);
    }
    let mut header = [0u8; RECORD_HEADER_BYTES];
    file.read_exact_at(&mut header, position)?;
    let magic = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let record_epoch = u64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
    let payload_len = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")) as u64;
    let crc = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
    if magic != RECORD_MAGIC
        || record_epoch != epoch
        || payload_len > len_bytes - position - RECORD_HEADER_BYTES as u64
    {
        return Ok(None);
    }
    // Bounded by the journal's own size (checked above).
    let mut payload = vec![0u8; payload_len as usize];
    file.read_exact_at(&mut payload, position + RECORD_HEADER_BYTES as u64)?;
    let actual = crc32c::crc32c_append(crc32c::crc32c(&epoch.to_le_bytes()), &payload);
    if actual != crc {
        return Ok(None);
    }
    Ok(Some(RawRecord { payload }))
}

/// (relative path, position, data) of a payload, if well formed and the path stays
/// inside the data directory.
fn parse_payload(payload: &[u8]) -> Option<(&str, u64, &[u8])> {
    let path_len = u16::from_le_bytes(payload.get(..2)?.try_into().ok()?) as usize;
    if path_len > PATH_BYTES_MAX {
        return None;
    }
    let path = std::str::from_utf8(payload.get(2..2 + path_len)?).ok()?;
    let inside = Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !inside || path.is_empty() {
        return None;
    }
    let at_bytes = payload.get(2 + path_len..2 + path_len + 8)?;
    let at = u64::from_le_bytes(at_bytes.try_into().ok()?);
    Some((path, at, &payload[2 + path_len + 8..]))
}

fn is_no_space(e: &io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(e.raw_os_error(), Some(ENOSPC) | Some(EDQUOT))
}

/// Writes zeros over `[from, to)` (allocated, written blocks: later overwrites need no
/// metadata change), then syncs.
fn zero_fill(file: &File, from: u64, to: u64) -> io::Result<()> {
    const CHUNK_BYTES: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK_BYTES];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(CHUNK_BYTES);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()
}

/// Most threads a checkpoint syncs files on (concurrent fdatasyncs share journal
/// commits and device flushes; one after another each pays for its own).
const SYNC_THREADS_MAX: usize = 64;

/// fdatasync of every file, several at once; the first error wins.
fn sync_files(files: &[Arc<File>]) -> io::Result<()> {
    if files.len() <= 1 {
        return files.iter().try_for_each(|f| f.sync_data());
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let first_error = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..files.len().min(SYNC_THREADS_MAX) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(file) = files.get(i) else { return };
                if let Err(e) = file.sync_data() {
                    first_error
                        .lock()
                        .expect("sync error lock")
                        .get_or_insert(e);
                }
            });
        }
    });
    match first_error.into_inner().expect("sync error lock") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{encode_uncompressed, RecordSpec};
    use crate::{LogConfig, PartitionLog};

    const CAPACITY_BYTES: u64 = 2 << 20;

    fn batch(value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let record = RecordSpec {
            timestamp_ms: 1_700_000_000_000,
            key: None,
            value: Some(value),
        };
        encode_uncompressed(&mut out, 0, -1, &[record]);
        out
    }

    /// Appends `count` batches to the log at `<data>/<name>` and journals them.
    fn append_journalled(
        data: &Path,
        journal: &mut Journal,
        name: &str,
        count: usize,
    ) -> PartitionLog {
        let mut log = PartitionLog::open(&data.join(name), LogConfig::default()).unwrap();
        log.flush().unwrap(); // the directory and segment exist durably
        for n in 0..count {
            log.append_as_leader(&batch(format!("{name} {n}").as_bytes()), 1)
                .unwrap();
        }
        let write = log.journal_write(data).expect("journalable");
        journal.append(std::slice::from_ref(&write)).unwrap();
        log.complete_journaled(write.into_outcome(), journal.epoch());
        log
    }

    /// Stands in for a power loss that took the unsynced tail of a segment: zeroes
    /// the file from `from` on.
    fn lose_tail(data: &Path, name: &str, from: u64) {
        let path = data.join(name).join("00000000000000000000.log");
        let file = OpenOptions::new().write(true).open(path).unwrap();
        let len = file.metadata().unwrap().len();
        file.write_all_at(&vec![0; (len - from) as usize], from)
            .unwrap();
    }

    fn values(data: &Path, name: &str) -> usize {
        let log = PartitionLog::open(&data.join(name), LogConfig::default()).unwrap();
        log.log_end_offset() as usize
    }

    #[test]
    fn replay_writes_back_every_journalled_partition() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let journal_path = data.join("journal");
        let (mut journal, stats) = Journal::open(&journal_path, data, CAPACITY_BYTES).unwrap();
        assert_eq!(stats, ReplayStats::default());
        let a = append_journalled(data, &mut journal, "a-0", 10);
        let b = append_journalled(data, &mut journal, "b-0", 3);
        assert_eq!(journal.journalled_files(), 2);
        drop((a, b, journal));
        lose_tail(data, "a-0", 0);
        lose_tail(data, "b-0", 0);
        let (_journal, stats) = Journal::open(&journal_path, data, CAPACITY_BYTES).unwrap();
        assert_eq!(stats.records, 2);
        assert_eq!((values(data, "a-0"), values(data, "b-0")), (10, 3));
    }

    #[test]
    fn a_checkpoint_ends_the_epoch_whose_records_replay() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let journal_path = data.join("journal");
        let (mut journal, _) = Journal::open(&journal_path, data, CAPACITY_BYTES).unwrap();
        let log = append_journalled(data, &mut journal, "a-0", 5);
        let epoch = log.journal_epoch().unwrap();
        journal.checkpoint_epoch(epoch).unwrap();
        assert_ne!(journal.epoch(), epoch);
        assert_eq!(journal.journalled_files(), 0);
        // An older epoch: no checkpoint.
        journal.checkpoint_epoch(epoch).unwrap();
        drop((log, journal));
        // What the checkpoint synced in place was "cut" since (as a truncation would):
        // the old records must not come back.
        lose_tail(data, "a-0", 0);
        let (_journal, stats) = Journal::open(&journal_path, data, CAPACITY_BYTES).unwrap();
        assert_eq!(stats.records, 0);
        assert_eq!(values(data, "a-0"), 0);
    }

    #[test]
    fn replay_stops_at_a_torn_record_and_skips_deleted_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let journal_path = data.join("journal");
        let (mut journal, _) = Journal::open(&journal_path, data, CAPACITY_BYTES).unwrap();
        let gone = append_journalled(data, &mut journal, "gone-0", 2);
        let kept = append_journalled(data, &mut journal, "kept-0", 4);
        let first_end =
            RECORDS_START_BYTES + journal.record_capacity_bytes() - journal.free_bytes();
        let torn = append_journalled(data, &mut journal, "torn-0", 4);
        drop((gone, kept, torn, journal));
        std::fs::remove_dir_all(data.join("gone-0")).unwrap();
        // Tear the last record: one byte of its data flipped.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&journal_path)
            .unwrap();
        let at = first_end + RECORD_HEADER_BYTES as u64 + 40;
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 0xff], at).unwrap();
        lose_tail(data, "kept-0", 0);
        lose_tail(data, "torn-0", 0);
        let (_journal, stats) = Journal::open(&journal_path, data, CAPACITY_BYTES).unwrap();
        assert_eq!((stats.records, stats.skipped), (1, 1));
        assert_eq!((values(data, "kept-0"), values(data, "torn-0")), (4, 0));
    }

    #[test]
    fn a_full_epoch_checkpoints_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let (mut journal, _) =
            Journal::open(&data.join("journal"), data, JOURNAL_CAPACITY_BYTES_MIN).unwrap();
        let mut log = PartitionLog::open(&data.join("a-0"), LogConfig::default()).unwrap();
        log.flush().unwrap();
        let value = vec![7u8; 100_000];
        let first_epoch = journal.epoch();
        for _ in 0..20 {
            log.append_as_leader(&batch(&value), 1).unwrap();
            let write = log.journal_write(data).expect("journalable");
            journal.append(std::slice::from_ref(&write)).unwrap();
            log.complete_journaled(write.into_outcome(), journal.epoch());
        }
        // 2 MB through a 1 MiB journal: at least one checkpoint.
        assert!(journal.epoch() > first_epoch);
        assert!(journal.free_bytes() < journal.record_capacity_bytes());
    }

    #[test]
    fn payload_paths_must_stay_inside_the_data_directory() {
        let payload = |path: &str| {
            let mut p = (path.len() as u16).to_le_bytes().to_vec();
            p.extend_from_slice(path.as_bytes());
            p.extend_from_slice(&9u64.to_le_bytes());
            p.extend_from_slice(b"data");
            p
        };
        assert_eq!(
            parse_payload(&payload("t-0/0.log")),
            Some(("t-0/0.log", 9, &b"data"[..]))
        );
        for bad in ["../x", "/etc/passwd", "", "a/../../b", "./a"] {
            assert_eq!(parse_payload(&payload(bad)), None, "{bad}");
        }
        assert_eq!(parse_payload(&[5, 0, b'a']), None);
    }
}
