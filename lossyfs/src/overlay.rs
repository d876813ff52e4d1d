//! The unsynced contents of one file: whole pages that were written (or zeroed) since
//! the file's last successful fsync, its size as the running process sees it, and the
//! point from which a shrinking truncation hides the backing file's bytes.
//!
//! Reads merge the overlay over the backing file; [`Overlay::write_back`] writes it
//! into the backing file (fsync); dropping an overlay is what a power loss does to it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Granularity of the overlay (the page-cache page size on the machines we run on).
pub(crate) const PAGE_BYTES: u64 = 4096;

/// Unsynced state of one file (see the module docs).
#[derive(Debug)]
pub(crate) struct Overlay {
    /// Dirty pages by page index; each holds the page's whole current content.
    pages: BTreeMap<u64, Box<[u8]>>,
    /// The file's size as the running process sees it.
    size_bytes: u64,
    /// Length of the backing file when the overlay was made (nothing else writes the
    /// backing file while an overlay exists: only `write_back` does, and then the
    /// overlay ends).
    backing_len_bytes: u64,
    /// Backing bytes at and after this were truncated away (read as zeros).
    zero_from_bytes: Option<u64>,
}

impl Overlay {
    /// An overlay with nothing dirty over a backing file of `backing_len_bytes`.
    pub(crate) fn new(backing_len_bytes: u64) -> Overlay {
        Overlay {
            pages: BTreeMap::new(),
            size_bytes: backing_len_bytes,
            backing_len_bytes,
            zero_from_bytes: None,
        }
    }

    /// The file's size as the running process sees it.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Bytes held in dirty pages (what a crash throws away, at page granularity).
    pub(crate) fn dirty_bytes(&self) -> u64 {
        self.pages.len() as u64 * PAGE_BYTES
    }

    /// Forgets the dirty pages but keeps the size (what Linux does after a failed
    /// writeback: the pages are marked clean, their data never reached the disk, and
    /// the in-memory size stays). Returns the bytes forgotten.
    pub(crate) fn forget_pages(&mut self) -> u64 {
        let dropped = self.dirty_bytes();
        self.pages.clear();
        dropped
    }

    /// The current content of backing page `index` (zeros where truncated away or
    /// past the backing file's end).
    fn backing_page(&self, backing: &File, index: u64) -> io::Result<Box<[u8]>> {
        let mut page = vec![0u8; PAGE_BYTES as usize].into_boxed_slice();
        let start = index * PAGE_BYTES;
        let visible_end = self
            .zero_from_bytes
            .map_or(self.backing_len_bytes, |z| z.min(self.backing_len_bytes));
        if start < visible_end {
            let len = (visible_end - start).min(PAGE_BYTES) as usize;
            read_full_at(backing, &mut page[..len], start)?;
        }
        Ok(page)
    }

    /// `data` written at `offset_bytes`; grows the size if it ends past it.
    pub(crate) fn write(
        &mut self,
        backing: &File,
        offset_bytes: u64,
        data: &[u8],
    ) -> io::Result<()> {
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset_bytes + done as u64;
            let index = pos / PAGE_BYTES;
            let in_page = (pos % PAGE_BYTES) as usize;
            let n = (PAGE_BYTES as usize - in_page).min(data.len() - done);
            if !self.pages.contains_key(&index) {
                let page = self.backing_page(backing, index)?;
                self.pages.insert(index, page);
            }
            let page = self
                .pages
                .get_mut(&index)
                .ok_or_else(|| io::Error::other("page just inserted is missing"))?;
            page[in_page..in_page + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        self.size_bytes = self.size_bytes.max(offset_bytes + data.len() as u64);
        Ok(())
    }

    /// Zeros `[from, to)` (FALLOC_FL_ZERO_RANGE, PUNCH_HOLE); grows the size to `to`
    /// when `grow`.
    pub(crate) fn zero(
        &mut self,
        backing: &File,
        from: u64,
        to: u64,
        grow: bool,
    ) -> io::Result<()> {
        let end = if grow { to } else { to.min(self.size_bytes) };
        let zeros = vec![0u8; PAGE_BYTES as usize];
        let mut pos = from;
        while pos < end {
            let n = (PAGE_BYTES - pos % PAGE_BYTES).min(end - pos);
            self.write(backing, pos, &zeros[..n as usize])?;
            pos += n;
        }
        Ok(())
    }

    /// ftruncate / setattr(size).
    pub(crate) fn set_size(&mut self, size_bytes: u64) {
        if size_bytes < self.size_bytes {
            self.zero_from_bytes = Some(
                self.zero_from_bytes
                    .map_or(size_bytes, |z| z.min(size_bytes)),
            );
            let first_gone = size_bytes.div_ceil(PAGE_BYTES);
            self.pages.split_off(&first_gone);
            // The page holding the new end keeps only the bytes below it, so growing
            // the file again later reads zeros there.
            if size_bytes % PAGE_BYTES != 0 {
                if let Some(page) = self.pages.get_mut(&(size_bytes / PAGE_BYTES)) {
                    page[(size_bytes % PAGE_BYTES) as usize..].fill(0);
                }
            }
        }
        self.size_bytes = size_bytes;
    }

    /// Reads `[offset, offset + len)` (cut at the size) as the running process sees it.
    pub(crate) fn read(
        &self,
        backing: &File,
        offset_bytes: u64,
        len: usize,
    ) -> io::Result<Vec<u8>> {
        let end = (offset_bytes + len as u64).min(self.size_bytes);
        if offset_bytes >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - offset_bytes) as usize);
        let mut pos = offset_bytes;
        while pos < end {
            let index = pos / PAGE_BYTES;
            let in_page = (pos % PAGE_BYTES) as usize;
            let n = (PAGE_BYTES - pos % PAGE_BYTES).min(end - pos) as usize;
            match self.pages.get(&index) {
                Some(page) => out.extend_from_slice(&page[in_page..in_page + n]),
                None => {
                    let page = self.backing_page(backing, index)?;
                    out.extend_from_slice(&page[in_page..in_page + n]);
                }
            }
            pos += n as u64;
        }
        Ok(out)
    }

    /// Writes the overlay into the backing file (truncation, pages, size); the caller
    /// then syncs the file and drops the overlay.
    pub(crate) fn write_back(&self, backing: &File) -> io::Result<()> {
        if let Some(zero_from) = self.zero_from_bytes {
            if zero_from < self.backing_len_bytes {
                backing.set_len(zero_from)?;
            }
        }
        for (&index, page) in &self.pages {
            let start = index * PAGE_BYTES;
            if start >= self.size_bytes {
                continue;
            }
            let n = (self.size_bytes - start).min(PAGE_BYTES) as usize;
            backing.write_all_at(&page[..n], start)?;
        }
        backing.set_len(self.size_bytes)?;
        Ok(())
    }
}

/// `pread` until `buf` is full or the file ends (the rest stays as it was: zeros).
pub(crate) fn read_full_at(file: &File, buf: &mut [u8], offset_bytes: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset_bytes + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
