//! Rill's small files (recovery point, log start, leader epochs): text lines
//! followed by a `crc32 xxxxxxxx` line (crc32fast over everything before it),
//! replaced atomically: write `<name>.tmp`, fsync it, rename over `<name>`, fsync
//! the directory. A CRC mismatch is an error naming the file, never a silent reset.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{Result, StorageError};

/// Suffix of temporary files; stray ones are removed on open.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// Writes `body` (lines, each ending in '\n') to `dir/name` atomically and durably.
pub(crate) fn write(dir: &Path, name: &str, body: &str) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let mut content = String::with_capacity(body.len() + 16);
    content.push_str(body);
    let crc = crc32fast::hash(content.as_bytes());
    content.push_str(&format!("crc32 {crc:08x}\n"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| StorageError::io("create checkpoint", &tmp, e))?;
    f.write_all(content.as_bytes())
        .map_err(|e| StorageError::io("write checkpoint", &tmp, e))?;
    f.sync_all()
        .map_err(|e| StorageError::io("fsync checkpoint", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(|e| StorageError::io("rename checkpoint", &path, e))?;
    sync_dir(dir)
}

/// Reads `dir/name`; `Ok(None)` if it does not exist, the body (without the CRC
/// line) if its CRC matches, `ChecksumMismatch` naming the file otherwise.
pub(crate) fn read(dir: &Path, name: &str) -> Result<Option<String>> {
    let path = dir.join(name);
    let content = match fs::read(&path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("read checkpoint", &path, e)),
    };
    let mismatch = || StorageError::ChecksumMismatch { file: path.clone() };
    // The last line is "crc32 xxxxxxxx\n" (15 bytes).
    const CRC_LINE_BYTES: usize = 15;
    if content.len() < CRC_LINE_BYTES || !content.ends_with(b"\n") {
        return Err(mismatch());
    }
    let (body, crc_line) = content.split_at(content.len() - CRC_LINE_BYTES);
    let crc_text = crc_line
        .strip_prefix(b"crc32 ")
        .and_then(|rest| rest.strip_suffix(b"\n"))
        .and_then(|hex| std::str::from_utf8(hex).ok())
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or_else(mismatch)?;
    if crc32fast::hash(body) != crc_text {
        return Err(mismatch());
    }
    let body = String::from_utf8(body.to_vec()).map_err(|_| StorageError::MalformedFile {
        file: path.clone(),
        reason: "not UTF-8".into(),
    })?;
    Ok(Some(body))
}

/// Reads a checkpoint holding one `<key> <u64>` line.
pub(crate) fn read_u64(dir: &Path, name: &str, key: &str) -> Result<Option<u64>> {
    let Some(body) = read(dir, name)? else {
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
    write(dir, name, &format!("{key} {value}\n"))
}

/// fsyncs a directory so renames, creations and unlinks in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
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
        bytes[8] ^= 1; // a digit of the offset
        fs::write(&path, &bytes).unwrap();
        match read_u64(dir.path(), "cp", "offset") {
            Err(StorageError::ChecksumMismatch { file }) => assert_eq!(file, path),
            other => panic!("expected ChecksumMismatch, got {other:?}"),
        }
    }
}
