//! Rill's own small metadata files: CRC-protected and replaced atomically
//! (ARCHITECTURE §3): write a temp file, fsync it, rename it over the old one, fsync
//! the directory. A file whose CRC does not match is an error naming the file,
//! never silently reset.
//!
//! Format: one text line `rill-meta v1 crc32=<8 hex digits> len=<bytes>\n`, then the
//! JSON body the CRC (crc32fast, IEEE) covers. Human-readable with `tail -n +2`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a metadata file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MetaFileError {
    /// An I/O error on the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The header line is missing or malformed, or the CRC or length do not match.
    #[error("{path}: corrupt metadata file ({reason})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MetaFileError + '_ {
    move |source| MetaFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `body` to `path` atomically and durably.
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<(), MetaFileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let header = format!(
        "rill-meta v1 crc32={:08x} len={}\n",
        crc32fast::hash(body),
        body.len()
    );
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(header.as_bytes()).map_err(io(&tmp))?;
        file.write_all(body).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(dir)
}

/// Fsyncs a directory so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), MetaFileError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Reads and checks a file written by [`write_atomic`], returning its body.
pub fn read(path: &Path) -> Result<Vec<u8>, MetaFileError> {
    let data = fs::read(path).map_err(io(path))?;
    let corrupt = |reason: &str| MetaFileError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let newline = data
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("no header line"))?;
    let header = std::str::from_utf8(&data[..newline]).map_err(|_| corrupt("header not text"))?;
    let mut words = header.split(' ');
    if words.next() != Some("rill-meta") || words.next() != Some("v1") {
        return Err(corrupt("not a rill-meta v1 file"));
    }
    let crc = words
        .next()
        .and_then(|w| w.strip_prefix("crc32="))
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| corrupt("bad crc32 field"))?;
    let len: usize = words
        .next()
        .and_then(|w| w.strip_prefix("len="))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| corrupt("bad len field"))?;
    let body = &data[newline + 1..];
    if body.len() != len {
        return Err(corrupt(&format!("length {} != {len}", body.len())));
    }
    if crc32fast::hash(body) != crc {
        return Err(corrupt("crc32 mismatch"));
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_a_flipped_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.meta");
        write_atomic(&path, b"{\"a\":1}").unwrap();
        assert_eq!(read(&path).unwrap(), b"{\"a\":1}");
        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 2;
        data[last] ^= 1;
        fs::write(&path, data).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("t.meta") && err.contains("crc32"), "{err}");
    }
}
