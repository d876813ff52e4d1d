//! Rill's own small files — recovery point, log start, leader epochs, topic and cluster
//! metadata, and later Raft term/vote and metadata snapshots — in one format, replaced
//! atomically (ARCHITECTURE §3): write `<name>.tmp`, fsync it, rename it over `<name>`,
//! fsync the directory. A file whose CRC or length does not match is an error naming the
//! file, never a silent reset.
//!
//! Format: one text line `rill-meta v1 crc32=<8 hex digits> len=<bytes>\n`, then the body
//! the CRC (crc32fast, IEEE) covers. Bodies are text (key/value lines, JSON), so the files
//! stay readable with `tail -n +2`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{Result, StorageError};

/// Suffix of temporary files; stray ones (an interrupted write) are removed on open.
pub const TMP_SUFFIX: &str = ".tmp";

/// Writes `body` to `path` atomically and durably.
pub fn write(path: &Path, body: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = Path::new(&tmp);
    let header = format!(
        "rill-meta v1 crc32={:08x} len={}\n",
        crc32fast::hash(body),
        body.len()
    );
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(|e| StorageError::io("create", tmp, e))?;
    f.write_all(header.as_bytes())
        .and_then(|()| f.write_all(body))
        .map_err(|e| StorageError::io("write", tmp, e))?;
    f.sync_all()
        .map_err(|e| StorageError::io("fsync", tmp, e))?;
    drop(f);
    fs::rename(tmp, path).map_err(|e| StorageError::io("rename", path, e))?;
    sync_dir(dir)
}

/// Reads a file written by [`write`]: `Ok(None)` if it does not exist, its body if the
/// header, length and CRC match, [`StorageError::ChecksumMismatch`] or
/// [`StorageError::MalformedFile`] naming the file otherwise.
pub fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    let data = match fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("read", path, e)),
    };
    let malformed = |reason: &str| StorageError::MalformedFile {
        file: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let newline = data
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| malformed("no header line"))?;
    let header =
        std::str::from_utf8(&data[..newline]).map_err(|_| malformed("header is not text"))?;
    let mut words = header.split(' ');
    if words.next() != Some("rill-meta") || words.next() != Some("v1") {
        return Err(malformed("not a rill-meta v1 file"));
    }
    let crc = words
        .next()
        .and_then(|w| w.strip_prefix("crc32="))
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| malformed("bad crc32 field"))?;
    let len_bytes: usize = words
        .next()
        .and_then(|w| w.strip_prefix("len="))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| malformed("bad len field"))?;
    let body = &data[newline + 1..];
    if body.len() != len_bytes || crc32fast::hash(body) != crc {
        return Err(StorageError::ChecksumMismatch {
            file: path.to_path_buf(),
        });
    }
    Ok(Some(body.to_vec()))
}

/// Reads `dir/name` as text.
pub fn read_text(dir: &Path, name: &str) -> Result<Option<String>> {
    let path = dir.join(name);
    let Some(body) = read(&path)? else {
        return Ok(None);
    };
    String::from_utf8(body)
        .map(Some)
        .map_err(|_| StorageError::MalformedFile {
            file: path,
            reason: "not UTF-8".into(),
        })
}

/// Writes text `body` (lines, each ending in '\n') to `dir/name`.
pub fn write_text(dir: &Path, name: &str, body: &str) -> Result<()> {
    write(&dir.join(name), body.as_bytes())
}

/// Reads a checkpoint holding one `<key> <u64>` line.
pub(crate) fn read_u64(dir: &Path, name: &str, key: &str) -> Result<Option<u64>> {
    let Some(body) = read_text(dir, name)? else {
        return Ok(None);
    };
    let value = body
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| StorageError::MalformedFile {
            file: dir.join(name),
            reason: format!("no `{key} <offset>` line"),
        })?;
    Ok(Some(value))
}

/// Writes a checkpoint holding one `<key> <u64>` line.
pub(crate) fn write_u64(dir: &Path, name: &str, key: &str, value: u64) -> Result<()> {
    write_text(dir, name, &format!("{key} {value}\n"))
}

/// fsyncs a directory so renames, creations and unlinks in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_u64(dir.path(), "cp", "offset").unwrap(), None);
        write_u64(dir.path(), "cp", "offset", 12345).unwrap();
        assert_eq!(read_u64(dir.path(), "cp", "offset").unwrap(), Some(12345));
        let path = dir.path().join("cp");
        let mut bytes = fs::read(&path).unwrap();
        let last_digit = bytes.len() - 2;
        bytes[last_digit] ^= 1; // a digit of the offset
        fs::write(&path, &bytes).unwrap();
        match read_u64(dir.path(), "cp", "offset") {
            Err(StorageError::ChecksumMismatch { file }) => assert_eq!(file, path),
            other => panic!("expected ChecksumMismatch, got {other:?}"),
        }
        // A truncated file and one that is not ours are errors naming the file too.
        fs::write(&path, b"rill-meta v1 crc32=00000000 len=9\noffset 1\n").unwrap();
        assert!(matches!(
            read(&path),
            Err(StorageError::ChecksumMismatch { .. })
        ));
        fs::write(&path, b"offset 1\n").unwrap();
        assert!(matches!(
            read(&path),
            Err(StorageError::MalformedFile { .. })
        ));
    }

    #[test]
    fn binary_bodies_round_trip_and_a_stray_tmp_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topic.json");
        write(&path, b"{\"a\":1}\n\x00\xff").unwrap();
        assert_eq!(read(&path).unwrap().unwrap(), b"{\"a\":1}\n\x00\xff");
        assert!(!dir.path().join("topic.json.tmp").exists());
    }
}
