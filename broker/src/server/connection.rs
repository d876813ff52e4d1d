//! One client connection: a reader that frames requests and starts a handler task
//! for each, and a writer that sends the responses in request order.
//!
//! Pipelining with a bound: the reader hands the writer one receiver per request
//! through a channel of capacity `requests_in_flight_max`; when it is full the
//! reader stops reading the socket (TCP back-pressure), so a client can never make
//! the broker buffer more than that many requests for it.
//!
//! Handlers run concurrently, but their effects happen in request order: each gets a
//! [`Turn`] chained to its predecessor's ([`super::order`]).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use rill_protocol::header::parse_request_header;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tracing::Instrument;

use super::framing::RequestFrames;
use super::order::{Turn, TurnChain};
use super::write::write_all_chunks;
use super::Broker;
use crate::api;
use crate::metrics::Metrics;

/// What a handler hands the writer: a response (chunks of one frame), nothing
/// (acks=0 produce), or "close the connection".
pub type Reply = Result<Option<Vec<Bytes>>, api::CloseConnection>;

/// Serves one connection until the peer closes it, an unanswerable request
/// arrives, or the broker shuts down.
pub async fn serve(socket: TcpStream, broker: Arc<Broker>) {
    let (read_half, mut write_half) = socket.into_split();
    let mut frames = FramedRead::new(
        read_half,
        RequestFrames::new(
            broker.config.socket_request_max_bytes,
            broker.config.non_produce_request_max_bytes,
        ),
    );
    let (order_tx, mut order_rx) =
        mpsc::channel::<oneshot::Receiver<Reply>>(broker.config.requests_in_flight_max);

    let writer = tokio::spawn(async move {
        let mut chunks: Vec<Bytes> = Vec::new();
        // A reply taken from the queue but not finished yet: the next one to await.
        let mut head: Option<oneshot::Receiver<Reply>> = None;
        loop {
            let first = match head.take() {
                Some(reply) => reply,
                None => match order_rx.recv().await {
                    Some(reply) => reply,
                    None => return,
                },
            };
            let mut open = take_reply(first.await.ok(), &mut chunks);
            // Coalesce: responses that are already complete go out in the same
            // `writev` (pipelined clients get many small answers per syscall).
            while open && chunks.len() < COALESCE_CHUNKS_MAX {
                let Ok(mut next) = order_rx.try_recv() else {
                    break;
                };
                match next.try_recv() {
                    Ok(reply) => open = take_reply(Some(reply), &mut chunks),
                    Err(oneshot::error::TryRecvError::Empty) => {
                        head = Some(next);
                        break;
                    }
                    Err(oneshot::error::TryRecvError::Closed) => {
                        open = take_reply(None, &mut chunks)
                    }
                }
            }
            if !chunks.is_empty() {
                if let Err(e) = write_all_chunks(&mut write_half, &mut chunks).await {
                    tracing::debug!(error = %e, "write failed; closing");
                    return;
                }
            }
            if !open {
                return;
            }
        }
    });

    let mut shutdown = broker.shutdown.clone();
    let mut turns = TurnChain::default();
    loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            _ = shutdown.wait_for(|stop| *stop) => break,
            // The writer gave up (write error or a request that closes the connection).
            _ = order_tx.closed() => break,
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame.freeze(),
            Some(Err(e)) => {
                // Oversized frame (refused from its size prefix, before the body is
                // buffered) or a socket error: nothing sensible to answer.
                tracing::info!(error = %e, "closing connection");
                break;
            }
        };
        Metrics::add(&broker.metrics().requests_total, 1);
        let (reply_tx, reply_rx) = oneshot::channel();
        if order_tx.send(reply_rx).await.is_err() {
            break; // the writer stopped
        }
        let broker = Arc::clone(&broker);
        let turn = turns.next_turn();
        // The handler runs in the connection's span, so its logs name the peer.
        tokio::spawn(
            async move {
                let _ = reply_tx.send(handle_frame(broker, frame, turn).await);
            }
            .in_current_span(),
        );
    }
    drop(order_tx);
    // Finish writing every response already owed, then close.
    let _ = writer.await;
}

/// Most chunks gathered into one `writev` from several ready responses.
const COALESCE_CHUNKS_MAX: usize = 64;

/// Appends a finished reply's chunks (`None`: its handler task died); false if the connection must close after
/// writing what was gathered so far.
fn take_reply(reply: Option<Reply>, chunks: &mut Vec<Bytes>) -> bool {
    match reply {
        Some(Ok(Some(frame))) => {
            chunks.extend(frame);
            true
        }
        Some(Ok(None)) => true,
        Some(Err(close)) => {
            tracing::info!(reason = %close.0, "closing connection");
            false
        }
        // The handler task died (a panic in a handler): close, like Kafka does on an
        // unexpected server error, rather than answer out of order.
        None => {
            tracing::error!("request handler failed; closing connection");
            false
        }
    }
}

async fn handle_frame(broker: Arc<Broker>, mut frame: Bytes, turn: Turn) -> Reply {
    let started = std::time::Instant::now();
    let header = parse_request_header(&mut frame)
        .map_err(|e| api::CloseConnection(format!("bad request header: {e}")))?;
    let api_key = header.api_key;
    let reply = api::dispatch(&broker, header, frame, turn).await;
    broker.metrics().record_request(api_key, started.elapsed());
    reply
}
