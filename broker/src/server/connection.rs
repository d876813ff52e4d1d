//! One client connection: a reader that frames requests and starts a handler task
//! for each, and a writer that sends the responses in request order.
//!
//! Pipelining with a bound: the reader hands the writer one receiver per request
//! through a channel of capacity `requests_in_flight_max`; when it is full the
//! reader stops reading the socket (TCP back-pressure), so a client can never make
//! the broker buffer more than that many requests for it.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use rill_protocol::frame::FrameCodec;
use rill_protocol::header::parse_request_header;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;

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
        FrameCodec::new(broker.config.socket_request_max_bytes),
    );
    let (order_tx, mut order_rx) =
        mpsc::channel::<oneshot::Receiver<Reply>>(broker.config.requests_in_flight_max);

    let writer = tokio::spawn(async move {
        while let Some(reply) = order_rx.recv().await {
            match reply.await {
                Ok(Ok(Some(mut chunks))) => {
                    if let Err(e) = write_all_chunks(&mut write_half, &mut chunks).await {
                        tracing::debug!(error = %e, "write failed; closing");
                        return;
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(close)) => {
                    tracing::info!(reason = %close.0, "closing connection");
                    return;
                }
                // The handler task died (a panic in a handler): close, like Kafka does
                // on an unexpected server error, rather than answer out of order.
                Err(_) => {
                    tracing::error!("request handler failed; closing connection");
                    return;
                }
            }
        }
    });

    let mut shutdown = broker.shutdown.clone();
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
        tokio::spawn(async move {
            let _ = reply_tx.send(handle_frame(broker, frame).await);
        });
    }
    drop(order_tx);
    // Finish writing every response already owed, then close.
    let _ = writer.await;
}

async fn handle_frame(broker: Arc<Broker>, mut frame: Bytes) -> Reply {
    let header = parse_request_header(&mut frame)
        .map_err(|e| api::CloseConnection(format!("bad request header: {e}")))?;
    api::dispatch(&broker, header, frame).await
}
