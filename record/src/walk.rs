//! [`batches`]: the batches concatenated in a blob (a Produce request's or Fetch response's
//! `records`, or a log segment's bytes), walked by their length prefixes.

use crate::error::RecordError;
use crate::layout::{BATCH_LENGTH_MIN, BATCH_LENGTH_POS, LOG_OVERHEAD_BYTES};
use crate::view::BatchView;

/// Iterator over the batches in a blob; see [`batches`].
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    rest: &'a [u8],
    position: usize,
    failed: bool,
}

/// Iterates over the batches in `blob`.
///
/// Stops (`None`) at a truncated tail: fewer than 12 bytes left, or a plausible batchLength
/// that runs past the end (a Fetch answer may end with a partial batch; a Produce request
/// must not, so a producer-side caller checks [`Batches::remainder`] afterwards). A batch
/// whose header is garbage yields one `Err` and ends the iteration.
pub fn batches(blob: &[u8]) -> Batches<'_> {
    Batches {
        rest: blob,
        position: 0,
        failed: false,
    }
}

impl<'a> Batches<'a> {
    /// Byte position in the blob of the next batch (once the iteration has stopped: the
    /// length of the complete batches, where a truncated tail starts).
    pub fn position(&self) -> usize {
        self.position
    }

    /// The bytes not yet iterated (a truncated tail once the iteration has stopped).
    pub fn remainder(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<BatchView<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.len() < LOG_OVERHEAD_BYTES {
            return None;
        }
        let p = BATCH_LENGTH_POS;
        let batch_length = i32::from_be_bytes([
            self.rest[p],
            self.rest[p + 1],
            self.rest[p + 2],
            self.rest[p + 3],
        ]);
        if batch_length >= BATCH_LENGTH_MIN
            && self.rest.len() < LOG_OVERHEAD_BYTES + batch_length as usize
        {
            return None; // truncated tail
        }
        match BatchView::new(self.rest) {
            Ok(view) => {
                self.rest = &self.rest[view.size_bytes()..];
                self.position += view.size_bytes();
                Some(Ok(view))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
