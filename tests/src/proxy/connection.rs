//! One proxied connection: for each direction a reader that takes chunks from the
//! source socket while the direction is not cut, and a writer that writes them to the
//! destination once their delay is over and the direction is not cut, joined by a
//! bounded queue.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Direction, Shared, CHUNKS_IN_FLIGHT_MAX, CHUNK_BYTES_MAX, UPSTREAM_CONNECT_TIMEOUT};

/// Proxies `client` to a new connection to `upstream` until both directions end, the
/// proxy is severed or its connections are dropped. Returning (or being aborted) drops
/// both sockets, which closes them.
pub(super) async fn run(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let _live = LiveGuard::new(&shared);
    let mut faults = shared.faults.subscribe();
    let generation = faults.borrow_and_update().drop_generation;
    // A refused or slow upstream closes the client's connection: to the client it
    // looks like the upstream refused it.
    let upstream =
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(_)) | Err(_) => return,
        };
    // Chunks are the unit of delay; Nagle would add its own.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let both_directions = async {
        tokio::join!(
            pump(client_read, upstream_write, Direction::Forward, &shared),
            pump(upstream_read, client_write, Direction::Backward, &shared),
        )
    };
    tokio::select! {
        _ = both_directions => {}
        // Checks the current value first, so a sever or drop during the connect counts.
        _ = faults.wait_for(|f| f.severed || f.drop_generation != generation) => {}
    }
}

/// A chunk read from the source, and when the writer may write it.
struct Chunk {
    bytes: Bytes,
    release_at: Instant,
}

/// Moves bytes from `source` to `sink` in `direction` until the source ends (then
/// half-closes the sink, as the source did) or either socket fails.
async fn pump(
    mut source: OwnedReadHalf,
    mut sink: OwnedWriteHalf,
    direction: Direction,
    shared: &Shared,
) {
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<Chunk>(CHUNKS_IN_FLIGHT_MAX);
    let reader = async move {
        let mut faults = shared.faults.subscribe();
        loop {
            // While cut, do not read: the bytes stay in the kernel, whose full buffers
            // stop the sender (TCP back-pressure) instead of growing ours.
            if faults.wait_for(|f| !f.is_cut(direction)).await.is_err() {
                return;
            }
            let mut buf = BytesMut::with_capacity(CHUNK_BYTES_MAX);
            match source.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return, // dropping chunks_tx tells the writer
                Ok(_) => {}
            }
            // The delay in force when the bytes arrived (the read may have waited long).
            let delay = faults.borrow().direction(direction).delay;
            let chunk = Chunk {
                bytes: buf.freeze(),
                release_at: Instant::now() + delay,
            };
            if chunks_tx.send(chunk).await.is_err() {
                return; // the writer ended: the sink is gone
            }
        }
    };
    let writer = async move {
        let mut faults = shared.faults.subscribe();
        while let Some(chunk) = chunks_rx.recv().await {
            tokio::time::sleep_until(chunk.release_at).await;
            // A cut that began after this chunk was read holds it here: nothing crosses
            // a cut, and the reader stops at the next chunk.
            if faults.wait_for(|f| !f.is_cut(direction)).await.is_err() {
                return;
            }
            if sink.write_all(&chunk.bytes).await.is_err() {
                return;
            }
            shared
                .bytes_counter(direction)
                .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
        }
        // The source ended: pass its half-close on, so the other side sees EOF while
        // the opposite direction keeps working.
        let _ = sink.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Counts a connection as live for as long as it exists, also when its task is aborted.
struct LiveGuard<'a> {
    shared: &'a Shared,
}

impl<'a> LiveGuard<'a> {
    fn new(shared: &'a Shared) -> LiveGuard<'a> {
        shared.connections_live.fetch_add(1, Ordering::Relaxed);
        LiveGuard { shared }
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.shared.connections_live.fetch_sub(1, Ordering::Relaxed);
    }
}
