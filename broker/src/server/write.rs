//! Writing a response made of several `Bytes` chunks with vectored I/O, so that
//! storage slices in a Fetch response reach the socket without being copied into
//! one buffer first.

use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Most chunks handed to one `writev` (Linux allows 1024; 64 keeps the stack small).
const IOV_MAX: usize = 64;

/// Writes every chunk, in order, with as few `writev` calls as the socket allows.
pub async fn write_all_chunks<W: AsyncWrite + Unpin>(
    writer: &mut W,
    chunks: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let n = {
            let end = chunks.len().min(first + IOV_MAX);
            let slices: Vec<IoSlice<'_>> =
                chunks[first..end].iter().map(|c| IoSlice::new(c)).collect();
            writer.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut written = n;
        while written > 0 {
            let chunk = &mut chunks[first];
            if chunk.len() <= written {
                written -= chunk.len();
                first += 1;
            } else {
                chunk.advance(written);
                written = 0;
            }
        }
        // Skip empty chunks so the loop condition sees real work only.
        while first < chunks.len() && chunks[first].is_empty() {
            first += 1;
        }
    }
    chunks.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A writer that accepts at most `step` bytes per call, to exercise partial writes.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut left = self.step;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_vectored_writes_keep_every_byte_in_order() {
        let mut expected = Vec::new();
        let mut chunks = Vec::new();
        for i in 0..200u32 {
            let chunk: Vec<u8> = (0..(i % 7)).map(|j| (i * 7 + j) as u8).collect();
            expected.extend_from_slice(&chunk);
            chunks.push(Bytes::from(chunk));
        }
        for step in [1, 3, 10, 1000] {
            let mut w = Trickle {
                out: Vec::new(),
                step,
            };
            let mut c = chunks.clone();
            write_all_chunks(&mut w, &mut c).await.unwrap();
            assert_eq!(w.out, expected, "step {step}");
        }
    }
}
