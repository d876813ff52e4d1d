//! Request framing: `rill_protocol`'s [`FrameCodec`] plus two broker policies.
//!
//! Only Produce requests may be large: a frame of any other API above
//! `non_produce_request_max_bytes` is refused as soon as its api key (the 2 bytes
//! after the size prefix) has arrived, because decoded request structures can take
//! many times their wire size.
//!
//! A frame of at most [`REQUEST_RESERVE_WHOLE_BYTES_MAX`] gets its whole buffer
//! reserved as soon as its size prefix has arrived, so the socket reads the rest of
//! it straight into the buffer the request is decoded from and the log copies from.
//!
//! Why: `FrameCodec` grows a partial frame's buffer with the bytes received
//! (memory follows what a peer sent, not what it announced), and every growth
//! re-copies what had arrived. For the frames producers normally send (librdkafka's
//! message.max.bytes is 1 MB) that would be a second copy of most of the records on
//! the way to the log. The reservation is made only after the connection has taken
//! the frame's size from the broker's `queued_request_max_bytes` budget (see
//! [`RequestFrames::announced_body_bytes`]), so what peers that announce and stall can
//! reserve is bounded by the budget, and the kernel backs it with memory only as bytes
//! arrive. Larger frames keep the codec's growth policy.
//!
//! The connection does better still for the frames between [`POOLED_FRAME_BYTES_MIN`]
//! and [`POOLED_FRAME_BYTES_MAX`]: it reads them into a reused buffer of the broker's
//! [`FramePool`] (no page faults and zeroing of fresh memory per request).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use rill_protocol::frame::{FrameCodec, FRAME_PREFIX_BYTES};
use rill_protocol::ProtocolError;
use tokio_util::codec::Decoder;

use crate::metrics::Metrics;

/// Largest frame whose whole buffer is reserved from its size prefix alone.
pub const REQUEST_RESERVE_WHOLE_BYTES_MAX: usize = 1024 * 1024;

/// Capacity of each buffer in the [`FramePool`]: frames (size prefix included) of at
/// most this many bytes are read into a pooled buffer. It covers the 1 MiB batches
/// producers send by default (`rill`'s `batch_bytes_max`; librdkafka's
/// `message.max.bytes` is 1,000,000) plus their request headers, which a 1 MiB buffer
/// would not.
pub const POOLED_FRAME_BYTES_MAX: usize = 1024 * 1024 + 64 * 1024;

/// Smallest frame read into a pooled buffer: half a buffer, so a frame's budget,
/// which covers its whole buffer, is at most twice its size (smaller frames cost
/// little to allocate anyway).
pub const POOLED_FRAME_BYTES_MIN: usize = POOLED_FRAME_BYTES_MAX / 2;

/// Most bytes of idle buffers the [`FramePool`] keeps: memory that stays with the
/// broker between requests, outside `queued_request_max_bytes` (busy buffers are
/// within it). Enough for a producer's 5 requests in flight and a few more.
pub const FRAME_POOL_IDLE_BYTES_MAX: usize = 8 * POOLED_FRAME_BYTES_MAX;

/// Buffers for large request frames, reused from one request to the next.
///
/// Why: a fresh buffer per request costs the kernel a page fault and a page zeroing
/// per 4 KiB the socket read fills, and the allocator hands the memory back (munmap,
/// or a trim of its heap) when the request is done, so the next request pays again
/// (measured before this pool: about 8 % of the broker's CPU under a 1 KiB-record
/// produce load went to faults, zeroing and unmapping). A pooled buffer's pages stay
/// mapped, so the socket read only copies into them.
///
/// A frame taken from the pool is handed out as a [`Bytes`] that owns its buffer;
/// when the last slice of it is dropped (the request is done: its records are in the
/// log) the buffer goes back to the pool, unless the pool holds
/// [`FRAME_POOL_IDLE_BYTES_MAX`] already.
///
/// Buffers taken and not yet given back are counted in the broker's
/// `rill_request_pool_buffers_busy` gauge: each holds [`POOLED_FRAME_BYTES_MAX`] of
/// `queued_request_max_bytes` while busy, so the gauge times that size never exceeds
/// the budget (what a test can check without reading the allocator's mind).
#[derive(Debug, Default)]
pub struct FramePool {
    idle: Mutex<Vec<Vec<u8>>>,
    /// Where the busy-buffer gauge is kept; none in unit tests.
    metrics: Option<Arc<Metrics>>,
}

impl FramePool {
    /// An empty pool.
    pub fn new() -> Arc<FramePool> {
        Arc::new(FramePool::default())
    }

    /// An empty pool that keeps `metrics.request_pool_buffers_busy`.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Arc<FramePool> {
        Arc::new(FramePool {
            idle: Mutex::default(),
            metrics: Some(metrics),
        })
    }

    /// An empty buffer of [`POOLED_FRAME_BYTES_MAX`] capacity: an idle one if any.
    /// Its spare capacity is not initialised (a socket read fills it without a memset).
    /// Hand it back with [`FramePool::frame`] or [`FramePool::give_back`].
    pub fn take(&self) -> Vec<u8> {
        let reused = self.lock().pop();
        if let Some(metrics) = &self.metrics {
            metrics
                .request_pool_buffers_busy
                .fetch_add(1, Ordering::Relaxed);
        }
        reused.unwrap_or_else(|| Vec::with_capacity(POOLED_FRAME_BYTES_MAX))
    }

    /// `buffer` (a whole frame, size prefix included) as the frame body, a `Bytes`
    /// that gives the buffer back to the pool when its last slice is dropped.
    pub fn frame(self: &Arc<Self>, buffer: Vec<u8>) -> Bytes {
        Bytes::from_owner(PooledFrame {
            buffer,
            pool: Arc::clone(self),
        })
        .slice(FRAME_PREFIX_BYTES..)
    }

    /// Idle buffers held now.
    pub fn idle_buffers(&self) -> usize {
        self.lock().len()
    }

    /// Ends the use of a buffer from [`FramePool::take`] that never became a frame
    /// (its connection closed mid-frame); the pool may keep it.
    pub fn give_back(&self, mut buffer: Vec<u8>) {
        if let Some(metrics) = &self.metrics {
            metrics
                .request_pool_buffers_busy
                .fetch_sub(1, Ordering::Relaxed);
        }
        if buffer.capacity() != POOLED_FRAME_BYTES_MAX {
            return;
        }
        buffer.clear();
        let mut idle = self.lock();
        if (idle.len() + 1) * POOLED_FRAME_BYTES_MAX <= FRAME_POOL_IDLE_BYTES_MAX {
            idle.push(buffer);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // The list is valid whatever a panicking holder did.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The owner of a pooled frame's buffer behind its `Bytes` (see [`FramePool::frame`]).
struct PooledFrame {
    buffer: Vec<u8>,
    pool: Arc<FramePool>,
}

impl AsRef<[u8]> for PooledFrame {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for PooledFrame {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buffer));
    }
}

/// Kafka's api key of Produce, the one API whose frames may exceed the
/// non-Produce limit.
const PRODUCE_API_KEY: i16 = 0;

/// The broker's request frame decoder (see the module docs).
#[derive(Debug, Clone)]
pub struct RequestFrames {
    codec: FrameCodec,
    non_produce_frame_bytes_max: usize,
}

impl RequestFrames {
    /// Frames of at most `frame_bytes_max` (the `socket_request_max_bytes` key), and
    /// of at most `non_produce_frame_bytes_max` (`non_produce_request_max_bytes`)
    /// for every API but Produce.
    pub fn new(frame_bytes_max: usize, non_produce_frame_bytes_max: usize) -> RequestFrames {
        RequestFrames {
            codec: FrameCodec::new(frame_bytes_max),
            non_produce_frame_bytes_max,
        }
    }

    /// The body size announced by the frame at the start of `src`, once its size
    /// prefix has arrived (`None` before), after the checks that need no body: a
    /// negative size, one above `frame_bytes_max`, or (when the api key has arrived
    /// too) a non-Produce frame above `non_produce_frame_bytes_max` is an error.
    ///
    /// The connection takes this many bytes of `queued_request_max_bytes` before it
    /// lets [`Decoder::decode`] reserve the body's buffer.
    pub fn announced_body_bytes(&self, src: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let Some(prefix) = src.get(..FRAME_PREFIX_BYTES) else {
            return Ok(None);
        };
        let size = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let frame_bytes_max = self.codec.frame_bytes_max();
        let too_large = |max| ProtocolError::FrameTooLarge {
            size: i64::from(size),
            max,
        };
        let Ok(size) = usize::try_from(size) else {
            return Err(too_large(frame_bytes_max));
        };
        if size > frame_bytes_max {
            return Err(too_large(frame_bytes_max));
        }
        if let Some(key) = src.get(FRAME_PREFIX_BYTES..FRAME_PREFIX_BYTES + 2) {
            let api_key = i16::from_be_bytes([key[0], key[1]]);
            if api_key != PRODUCE_API_KEY && size > self.non_produce_frame_bytes_max {
                return Err(too_large(self.non_produce_frame_bytes_max));
            }
        }
        Ok(Some(size))
    }
}

impl Decoder for RequestFrames {
    type Item = BytesMut;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ProtocolError> {
        if let Some(prefix) = src.get(..FRAME_PREFIX_BYTES) {
            let size = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
            // Oversized or negative sizes are left to the codec, which refuses them.
            if let Ok(size) = usize::try_from(size) {
                if let Some(key) = src.get(FRAME_PREFIX_BYTES..FRAME_PREFIX_BYTES + 2) {
                    let api_key = i16::from_be_bytes([key[0], key[1]]);
                    if api_key != PRODUCE_API_KEY && size > self.non_produce_frame_bytes_max {
                        return Err(ProtocolError::FrameTooLarge {
                            size: size as i64,
                            max: self.non_produce_frame_bytes_max,
                        });
                    }
                }
                if size <= REQUEST_RESERVE_WHOLE_BYTES_MAX
                    && size <= self.codec.frame_bytes_max()
                    && src.len() < FRAME_PREFIX_BYTES + size
                {
                    src.reserve(FRAME_PREFIX_BYTES + size - src.len());
                }
            }
        }
        self.codec.decode(src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use futures::StreamExt;
    use tokio::io::{AsyncRead, ReadBuf};
    use tokio_util::codec::FramedRead;

    /// Delivers `data` in reads of at most `chunk_bytes`, recording where in memory
    /// each read's bytes were written.
    struct ChunkedReader {
        data: Vec<u8>,
        position: usize,
        chunk_bytes: usize,
        destinations: Arc<Mutex<Vec<(usize, usize)>>>,
    }

    impl AsyncRead for ChunkedReader {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self
                .chunk_bytes
                .min(self.data.len() - self.position)
                .min(buf.remaining());
            let start = self.position;
            let destination = buf.initialize_unfilled_to(n);
            destination.copy_from_slice(&self.data[start..start + n]);
            let address = destination.as_ptr() as usize;
            buf.advance(n);
            self.destinations.lock().unwrap().push((address, n));
            self.position += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Bytes of the frame body that were not read straight into the memory the
    /// frame ends up in (so were copied again inside the process).
    async fn bytes_copied_again(
        decoder: impl Decoder<Item = BytesMut, Error = ProtocolError>,
        body_bytes: usize,
    ) -> usize {
        let mut data = (body_bytes as i32).to_be_bytes().to_vec();
        data.extend((0..body_bytes).map(|i| i as u8));
        let destinations = Arc::new(Mutex::new(Vec::new()));
        let reader = ChunkedReader {
            data,
            position: 0,
            chunk_bytes: 64 * 1024,
            destinations: Arc::clone(&destinations),
        };
        let frame = FramedRead::new(reader, decoder)
            .next()
            .await
            .expect("a frame")
            .expect("valid");
        assert_eq!(frame.len(), body_bytes);
        assert!(frame.iter().enumerate().all(|(i, b)| *b == i as u8));
        let (start, end) = (
            frame.as_ptr() as usize - FRAME_PREFIX_BYTES,
            frame.as_ptr() as usize + frame.len(),
        );
        let copied_again = destinations
            .lock()
            .unwrap()
            .iter()
            .filter(|(address, n)| !(*address >= start && address + n <= end))
            .map(|(_, n)| n)
            .sum();
        copied_again
    }

    #[tokio::test]
    async fn a_one_mib_request_is_read_into_its_final_buffer() {
        let body_bytes = 1_000_000;
        let ours = bytes_copied_again(RequestFrames::new(100 << 20, 4 << 20), body_bytes).await;
        // Only what the first read brought before the size was known (FramedRead's
        // initial 8 KiB buffer) moves once more.
        assert!(ours <= 8 * 1024, "{ours} bytes copied again");
        let plain = bytes_copied_again(FrameCodec::new(100 << 20), body_bytes).await;
        eprintln!("1 MB request: {ours} bytes re-copied with RequestFrames, {plain} with FrameCodec alone");
    }

    /// A pooled frame of `body_bytes` whose body bytes are `0, 1, 2, ...`.
    fn pooled_frame(pool: &Arc<FramePool>, body_bytes: usize) -> (Bytes, usize) {
        let mut buffer = pool.take();
        let address = buffer.as_ptr() as usize;
        buffer.extend_from_slice(&(body_bytes as i32).to_be_bytes());
        buffer.extend((0..body_bytes).map(|i| i as u8));
        (pool.frame(buffer), address)
    }

    #[test]
    fn a_pooled_frame_goes_back_to_the_pool_when_its_last_slice_drops() {
        let pool = FramePool::new();
        let (frame, address) = pooled_frame(&pool, 100_000);
        assert_eq!(
            frame.len(),
            100_000,
            "the size prefix is not part of the frame"
        );
        assert_eq!(frame[..3], [0, 1, 2]);
        // Decoding keeps slices of the frame (a Produce's records) beyond the frame itself.
        let records = frame.slice(1000..2000);
        drop(frame);
        assert_eq!(pool.idle_buffers(), 0, "a slice still uses the buffer");
        drop(records);
        assert_eq!(pool.idle_buffers(), 1);
        // The next frame is read into the same memory: no fresh pages to fault in.
        let (again, again_address) = pooled_frame(&pool, 50_000);
        assert_eq!(again_address, address);
        assert_eq!(again[..3], [0, 1, 2]);
        assert_eq!(pool.idle_buffers(), 0);
    }

    #[test]
    fn the_pool_keeps_at_most_its_idle_bytes() {
        let pool = FramePool::new();
        let idle_max = FRAME_POOL_IDLE_BYTES_MAX / POOLED_FRAME_BYTES_MAX;
        let frames: Vec<Bytes> = (0..idle_max + 3)
            .map(|_| pooled_frame(&pool, 10).0)
            .collect();
        drop(frames);
        assert_eq!(pool.idle_buffers(), idle_max);
    }

    fn frame_prefix(size: i32, api_key: i16) -> BytesMut {
        let mut src = BytesMut::new();
        src.extend_from_slice(&size.to_be_bytes());
        src.extend_from_slice(&api_key.to_be_bytes());
        src
    }

    #[test]
    fn the_announced_size_is_known_and_checked_from_the_prefix_alone() {
        let frames = RequestFrames::new(100 << 20, 4 << 20);
        assert_eq!(
            frames.announced_body_bytes(&[0, 0, 1]).expect("short"),
            None
        );
        assert_eq!(
            frames
                .announced_body_bytes(&(50i32 << 20).to_be_bytes())
                .expect("valid"),
            Some(50 << 20)
        );
        assert!(frames.announced_body_bytes(&(-1i32).to_be_bytes()).is_err());
        assert!(frames
            .announced_body_bytes(&((100i32 << 20) + 1).to_be_bytes())
            .is_err());
        // Metadata (api key 3) over the non-Produce limit, Produce under the socket limit.
        assert!(frames
            .announced_body_bytes(&frame_prefix((4 << 20) + 1, 3))
            .is_err());
        assert_eq!(
            frames
                .announced_body_bytes(&frame_prefix((4 << 20) + 1, PRODUCE_API_KEY))
                .expect("valid"),
            Some((4 << 20) + 1)
        );
    }

    #[test]
    fn a_large_non_produce_frame_is_refused_from_its_header_and_a_produce_frame_is_not() {
        let mut frames = RequestFrames::new(100 << 20, 4 << 20);
        // Metadata (api key 3) one byte over the non-Produce limit: refused at once.
        let err = frames
            .decode(&mut frame_prefix((4 << 20) + 1, 3))
            .expect_err("refused");
        assert!(
            matches!(err, ProtocolError::FrameTooLarge { max, .. } if max == 4 << 20),
            "{err}"
        );
        // At the limit it is waited for like any other frame.
        assert!(frames
            .decode(&mut frame_prefix(4 << 20, 3))
            .expect("accepted")
            .is_none());
        // Produce may use the whole socket limit.
        assert!(frames
            .decode(&mut frame_prefix(50 << 20, PRODUCE_API_KEY))
            .expect("accepted")
            .is_none());
    }
}
