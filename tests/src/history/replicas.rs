//! Replica convergence: the `.log` segment files of one partition, byte for byte,
//! across replicas.
//!
//! Segments are preallocated, so a file may run on in zeros past its last batch: only
//! the logical length counts, which ends at the file's end or where a batch length of
//! zero appears. This walks batch headers itself (base offset and length of a Kafka
//! RecordBatch v2) rather than using rill-storage, so the check does not share a bug
//! with the code it checks.

use std::fs;
use std::path::{Path, PathBuf};

/// Bytes before a batch's payload: baseOffset (8) and batchLength (4).
const BATCH_HEADER_BYTES: usize = 12;
/// The smallest batchLength of a RecordBatch v2: the header fields after batchLength
/// (partitionLeaderEpoch through the record count), with no records.
const BATCH_LENGTH_MIN: usize = 49;

/// Checks that every replica directory in `partition_dirs` (each one replica's
/// directory of the same partition) holds the same `.log` segments with the same
/// bytes up to their logical end. Returns the first difference (segment, replicas,
/// byte position and the base offset of the batch there), a torn or corrupt batch
/// header, or an I/O error, as a readable message. Zero directories are an error; one
/// is trivially identical.
pub fn replicas_identical<P: AsRef<Path>>(partition_dirs: &[P]) -> Result<(), String> {
    let Some((reference_dir, others)) = partition_dirs.split_first() else {
        return Err("no replica directories to compare".to_string());
    };
    let reference_dir = reference_dir.as_ref();
    let reference_segments = segment_files(reference_dir)?;
    for other_dir in others {
        let other_dir = other_dir.as_ref();
        let other_segments = segment_files(other_dir)?;
        compare_segment_names(
            reference_dir,
            &reference_segments,
            other_dir,
            &other_segments,
        )?;
        for (reference_file, other_file) in reference_segments.iter().zip(&other_segments) {
            compare_segments(reference_file, other_file)?;
        }
    }
    Ok(())
}

/// The `.log` files in `dir`, sorted by name (the 20-digit base offset, so log order).
fn segment_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .path();
        if path.extension().is_some_and(|ext| ext == "log") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn compare_segment_names(
    reference_dir: &Path,
    reference: &[PathBuf],
    other_dir: &Path,
    other: &[PathBuf],
) -> Result<(), String> {
    let names = |files: &[PathBuf]| -> Vec<String> {
        files
            .iter()
            .map(|f| {
                f.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    };
    let (reference_names, other_names) = (names(reference), names(other));
    if reference_names == other_names {
        return Ok(());
    }
    let first_difference = reference_names
        .iter()
        .zip(&other_names)
        .position(|(a, b)| a != b)
        .unwrap_or(reference_names.len().min(other_names.len()));
    let describe = |names: &[String]| {
        names
            .get(first_difference)
            .map_or("no more segments".to_string(), |n| format!("segment {n}"))
    };
    Err(format!(
        "segment lists differ at segment #{first_difference}: {} has {}, {} has {}",
        reference_dir.display(),
        describe(&reference_names),
        other_dir.display(),
        describe(&other_names),
    ))
}

fn compare_segments(reference_file: &Path, other_file: &Path) -> Result<(), String> {
    let reference = SegmentContent::read(reference_file)?;
    let other = SegmentContent::read(other_file)?;
    let (a, b) = (reference.logical(), other.logical());
    let common_bytes = a.len().min(b.len());
    let first_difference = a[..common_bytes]
        .iter()
        .zip(&b[..common_bytes])
        .position(|(x, y)| x != y);
    if let Some(at) = first_difference {
        return Err(format!(
            "{} and {} differ at byte {at} (in the batch with base offset {} in the first, {} in the second)",
            reference_file.display(),
            other_file.display(),
            reference.base_offset_at(at),
            other.base_offset_at(at),
        ));
    }
    if a.len() != b.len() {
        let (longer, longer_file) = if a.len() > b.len() {
            (&reference, reference_file)
        } else {
            (&other, other_file)
        };
        return Err(format!(
            "{} ends at byte {} and {} at byte {}: {} goes on with the batch with base offset {}",
            reference_file.display(),
            a.len(),
            other_file.display(),
            b.len(),
            longer_file.display(),
            longer.base_offset_at(common_bytes),
        ));
    }
    Ok(())
}

/// A segment file's bytes and the batches up to its logical end.
struct SegmentContent {
    bytes: Vec<u8>,
    /// (file position, base offset) of each batch, in file order.
    batches: Vec<(usize, i64)>,
    logical_bytes: usize,
}

impl SegmentContent {
    fn read(file: &Path) -> Result<SegmentContent, String> {
        let bytes = fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
        let mut batches = Vec::new();
        let mut position = 0;
        loop {
            let rest = &bytes[position..];
            if rest.len() < BATCH_HEADER_BYTES {
                // Fewer bytes than a header: the end, if they are preallocated zeros.
                if rest.iter().any(|&b| b != 0) {
                    return Err(format!(
                        "{}: torn batch header at byte {position}",
                        file.display()
                    ));
                }
                break;
            }
            let base_offset = i64::from_be_bytes(array(&rest[0..8]));
            let length_field = i32::from_be_bytes(array(&rest[8..12]));
            if length_field == 0 {
                break; // preallocated space: the logical end
            }
            // A negative length becomes 0 here, which the minimum below rejects.
            let length = usize::try_from(length_field).unwrap_or(0);
            if length < BATCH_LENGTH_MIN || BATCH_HEADER_BYTES + length > rest.len() {
                return Err(format!(
                    "{}: corrupt batch at byte {position} (base offset {base_offset}): batch length {length_field} with {} bytes left",
                    file.display(),
                    rest.len() - BATCH_HEADER_BYTES
                ));
            }
            batches.push((position, base_offset));
            position += BATCH_HEADER_BYTES + length;
        }
        Ok(SegmentContent {
            bytes,
            batches,
            logical_bytes: position,
        })
    }

    fn logical(&self) -> &[u8] {
        &self.bytes[..self.logical_bytes]
    }

    /// The base offset of the batch holding file position `at`, as text (none past the
    /// last batch).
    fn base_offset_at(&self, at: usize) -> String {
        let index = self.batches.partition_point(|(start, _)| *start <= at);
        match index.checked_sub(1).and_then(|i| self.batches.get(i)) {
            Some((start, base)) if at < self.logical_bytes && *start <= at => base.to_string(),
            _ => "none (past the last batch)".to_string(),
        }
    }
}

/// The fixed-size array at the start of `bytes`, whose length the caller checked.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}
