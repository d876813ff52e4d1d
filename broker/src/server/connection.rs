//! One client connection: a reader that frames requests and starts a handler task
//! for each, and a writer that sends the responses in request order.
//!
//! Pipelining with a bound: the reader hands the writer one receiver per request
//! through a channel of capacity `requests_in_flight_max`; when it is full the
//! reader stops reading the socket (TCP back-pressure), so a client can never make
//! the broker buffer more than that many requests for it.
//!
//! Limits on what a peer can hold (see the config keys for the numbers): each
//! frame's body bytes come out of the broker-wide `queued_request_max_bytes` budget
//! (or, for a small frame, a small allowance of its connection) before the body is
//! read; a started frame must arrive whole within
//! `request_read_timeout_ms`; a connection idle for `connections_max_idle_ms` is
//! closed.
//!
//! Handlers run concurrently, but their effects happen in request order: each gets a
//! [`Turn`] chained to its predecessor's ([`crate::context::order`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use rill_protocol::frame::FRAME_PREFIX_BYTES;
use rill_protocol::header::parse_request_header;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Decoder;
use tracing::Instrument;

use super::framing::{FramePool, RequestFrames, POOLED_FRAME_BYTES_MAX, POOLED_FRAME_BYTES_MIN};
use super::write::write_all_chunks;
use crate::api::{self, Reply};
use crate::context::order::{Turn, TurnChain};
use crate::context::Broker;
use crate::metrics::Metrics;

/// Most bytes read from the socket while no request budget is held (between frames,
/// before a size prefix is known): what a peer can make the broker buffer for it
/// beyond `queued_request_max_bytes`, so it is small.
const READ_AHEAD_UNBUDGETED_BYTES: usize = 8 * 1024;

/// Request bytes each connection may have in flight without taking them from the
/// broker-wide `queued_request_max_bytes` budget (see [`serve`]); what they add to the
/// memory the budget bounds is at most `connections_max` times this.
const REQUEST_ALLOWANCE_BYTES: usize = 8 * 1024;

/// A request on its way to the writer: its reply, and the part of the broker's
/// request budget its frame holds until the reply has been written.
struct Pending {
    reply: oneshot::Receiver<Reply>,
    budget: OwnedSemaphorePermit,
}

/// What the idle timeout looks at, shared by the reader and the writer.
struct Activity {
    started: Instant,
    /// Requests read and not yet answered on the socket.
    requests_in_progress: AtomicUsize,
    /// When the writer last wrote a response, in ms since `started`.
    last_write_ms: AtomicU64,
    /// The client's address as Kafka reports it in DescribeGroups (`/127.0.0.1`: Java's
    /// `InetAddress.toString`), "" if the socket could not tell.
    client_host: Arc<str>,
}

impl Activity {
    fn wrote(&self, replies: usize) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_write_ms.store(ms, Ordering::Relaxed);
        self.requests_in_progress
            .fetch_sub(replies, Ordering::Relaxed);
    }

    fn last_write(&self) -> Instant {
        self.started + Duration::from_millis(self.last_write_ms.load(Ordering::Relaxed))
    }
}

/// Serves one connection until the peer closes it, an unanswerable request
/// arrives, a limit closes it, or the broker shuts down.
///
/// `request_budget` holds `queued_request_max_bytes` permits, one per byte: a frame
/// takes its body size from it as soon as its size prefix has arrived, before its
/// body is buffered, and gives it back when its response has been written (or the
/// request is dropped). While the budget is short the connection does not read the
/// socket, so a broker full of half-sent frames pushes back instead of allocating.
/// A frame of at most [`REQUEST_ALLOWANCE_BYTES`] takes the connection's own allowance
/// of that many bytes instead when it is free, so clients that send small requests
/// one at a time (metadata, fetches, small produces) never wait for the shared budget.
///
/// A frame of [`POOLED_FRAME_BYTES_MIN`] to [`POOLED_FRAME_BYTES_MAX`] bytes is read into
/// a buffer of `frame_pool` (see [`FramePool`]) when the budget can cover that whole
/// buffer, not only the frame.
pub async fn serve(
    socket: TcpStream,
    broker: Arc<Broker>,
    request_budget: Arc<Semaphore>,
    frame_pool: Arc<FramePool>,
) {
    let client_host: Arc<str> = socket
        .peer_addr()
        .map(|peer| format!("/{}", peer.ip()))
        .unwrap_or_default()
        .into();
    let (mut read_half, mut write_half) = socket.into_split();
    let mut frames = RequestFrames::new(
        broker.config.socket_request_max_bytes,
        broker.config.non_produce_request_max_bytes,
    );
    let (order_tx, mut order_rx) = mpsc::channel::<Pending>(broker.config.requests_in_flight_max);
    let activity = Arc::new(Activity {
        started: Instant::now(),
        requests_in_progress: AtomicUsize::new(0),
        last_write_ms: AtomicU64::new(0),
        client_host,
    });

    let writer_activity = Arc::clone(&activity);
    // A peer that sends requests but never reads the answers would hold their request
    // budget forever: a write that cannot finish within the idle timeout closes the
    // connection (nothing moved on it for that long, by definition idle).
    let write_timeout = Duration::from_millis(broker.config.connections_max_idle_ms);
    let writer = tokio::spawn(async move {
        let mut chunks: Vec<Bytes> = Vec::new();
        // Budget of the replies gathered into `chunks`, given back once they are written.
        let mut written_budgets: Vec<OwnedSemaphorePermit> = Vec::new();
        // A reply taken from the queue but not finished yet: the next one to await.
        let mut head: Option<Pending> = None;
        loop {
            let first = match head.take() {
                Some(pending) => pending,
                None => match order_rx.recv().await {
                    Some(pending) => pending,
                    None => return,
                },
            };
            let Pending { reply, budget } = first;
            let mut open = take_reply(reply.await.ok(), &mut chunks);
            written_budgets.push(budget);
            // Coalesce: responses that are already complete go out in the same
            // `writev` (pipelined clients get many small answers per syscall).
            while open && chunks.len() < COALESCE_CHUNKS_MAX {
                let Ok(mut next) = order_rx.try_recv() else {
                    break;
                };
                match next.reply.try_recv() {
                    Ok(reply) => open = take_reply(Some(reply), &mut chunks),
                    Err(oneshot::error::TryRecvError::Empty) => {
                        head = Some(next);
                        break;
                    }
                    Err(oneshot::error::TryRecvError::Closed) => {
                        open = take_reply(None, &mut chunks)
                    }
                }
                written_budgets.push(next.budget);
            }
            if !chunks.is_empty() {
                match tokio::time::timeout(
                    write_timeout,
                    write_all_chunks(&mut write_half, &mut chunks),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "write failed; closing");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(
                            timeout_ms = write_timeout.as_millis() as u64,
                            "closing connection: responses not read by the peer within connections_max_idle_ms"
                        );
                        return;
                    }
                }
            }
            writer_activity.wrote(written_budgets.len());
            written_budgets.clear();
            if !open {
                return;
            }
        }
    });

    let allowance = Arc::new(Semaphore::new(REQUEST_ALLOWANCE_BYTES));
    let budget_bytes_max = broker.config.queued_request_max_bytes;
    let read_timeout = Duration::from_millis(broker.config.request_read_timeout_ms);
    let idle_timeout = Duration::from_millis(broker.config.connections_max_idle_ms);
    let mut shutdown = broker.shutdown.clone();
    let mut turns = TurnChain::default();
    let mut buf = BytesMut::with_capacity(READ_AHEAD_UNBUDGETED_BYTES);
    // The frame at the front, when it is read into a pooled buffer (size prefix
    // included); `buf` then holds nothing.
    let mut pooled: Option<Vec<u8>> = None;
    // The body size the frame at the front announced, once `budget` holds it (the
    // budget may hold more: a pooled frame's covers its whole buffer).
    let mut frame_body_bytes = 0usize;
    // Whether that frame is read into a pooled buffer.
    let mut pool_frame = false;
    // The budget of the frame at the front of `buf`, once its size prefix is known.
    let mut budget: Option<OwnedSemaphorePermit> = None;
    // When the frame at the front of `buf` must be complete; `None` while `buf` is empty.
    let mut frame_deadline: Option<Instant> = None;
    let mut last_read = Instant::now();
    loop {
        if budget.is_none() {
            let announced = match frames.announced_body_bytes(&buf) {
                Ok(announced) => announced,
                Err(e) => {
                    // Refused from its size prefix (or api key), before the body is buffered.
                    tracing::info!(error = %e, "closing connection");
                    break;
                }
            };
            if let Some(body_bytes) = announced {
                // It could never get its budget: waiting would stall this connection forever.
                if body_bytes > budget_bytes_max {
                    tracing::info!(
                        body_bytes,
                        limit = budget_bytes_max,
                        "closing connection: frame larger than queued_request_max_bytes"
                    );
                    break;
                }
                // Frame sizes are at most i32::MAX, checked by `announced_body_bytes`.
                let permits = body_bytes as u32;
                // A small frame takes the connection's own allowance if it is free, so a
                // client whose requests are small is served even while the shared budget
                // is used up: a fair (FIFO) wait behind peers that announce large frames
                // and stall would cost every request up to request_read_timeout_ms.
                let small = body_bytes <= REQUEST_ALLOWANCE_BYTES;
                let immediate = small
                    .then(|| Arc::clone(&allowance).try_acquire_many_owned(permits).ok())
                    .flatten()
                    .or_else(|| {
                        Arc::clone(&request_budget)
                            .try_acquire_many_owned(permits)
                            .ok()
                    });
                let permit = match immediate {
                    Some(permit) => permit,
                    None => {
                        tracing::debug!(body_bytes, "waiting for request budget");
                        // The wait counts against the frame's deadline: otherwise peers
                        // that announce frames and stall would queue (the semaphore is
                        // fair) ahead of well-behaved clients for many deadlines in a row.
                        // A client's own request timeout (Kafka's request.timeout.ms,
                        // 30 s) has given up on a request that waited that long anyway.
                        let acquired = tokio::select! {
                            acquired = Arc::clone(&request_budget).acquire_many_owned(permits) => acquired,
                            // The connection's own earlier small request may finish first.
                            acquired = Arc::clone(&allowance).acquire_many_owned(permits), if small => acquired,
                            _ = sleep_until_some(frame_deadline) => {
                                tracing::info!(
                                    body_bytes,
                                    "closing connection: no request budget within request_read_timeout_ms"
                                );
                                break;
                            }
                            _ = shutdown.wait_for(|stop| *stop) => break,
                            _ = order_tx.closed() => break,
                        };
                        let Ok(permit) = acquired else {
                            break; // the semaphore is never closed
                        };
                        permit
                    }
                };
                let mut permit = permit;
                // A frame read into a pooled buffer holds budget for the whole buffer:
                // the buffer's memory may all be resident (it served earlier frames)
                // however few bytes a stalled peer sends. Frames of at least half a
                // buffer only, so that costs at most twice their size; if the budget
                // cannot spare it now, the frame gets a buffer of its own size.
                pool_frame = false;
                if (POOLED_FRAME_BYTES_MIN..=POOLED_FRAME_BYTES_MAX)
                    .contains(&(FRAME_PREFIX_BYTES + body_bytes))
                    && !small
                {
                    let rest = (POOLED_FRAME_BYTES_MAX - body_bytes) as u32;
                    if let Ok(more) = Arc::clone(&request_budget).try_acquire_many_owned(rest) {
                        permit.merge(more);
                        pool_frame = true;
                    }
                }
                frame_body_bytes = body_bytes;
                budget = Some(permit);
            }
        }
        // A large frame whose budget is held (and whose api key has been checked) moves
        // into a pooled buffer, and the socket reads the rest straight into it.
        let frame_bytes = budget
            .as_ref()
            .map(|_| FRAME_PREFIX_BYTES + frame_body_bytes);
        let poolable = budget.is_some() && pool_frame;
        if poolable && pooled.is_none() && buf.len() >= FRAME_PREFIX_BYTES + 2 {
            if let Err(e) = frames.announced_body_bytes(&buf) {
                tracing::info!(error = %e, "closing connection");
                break;
            }
            let mut buffer = frame_pool.take();
            // Between frames at most the read-ahead arrived: all of it is this frame's.
            buffer.extend_from_slice(&buf);
            buf.clear();
            pooled = Some(buffer);
        }
        if let (Some(buffer), Some(frame_bytes)) = (&pooled, frame_bytes) {
            if buffer.len() == frame_bytes {
                let (Some(buffer), Some(frame_budget)) = (pooled.take(), budget.take()) else {
                    unreachable!("checked just above");
                };
                frame_deadline = None;
                let frame = frame_pool.frame(buffer);
                if !dispatch(
                    &broker,
                    &order_tx,
                    &mut turns,
                    &activity,
                    frame,
                    frame_budget,
                )
                .await
                {
                    break; // the writer stopped
                }
                continue;
            }
        } else if budget.is_some() && !(poolable && buf.len() < FRAME_PREFIX_BYTES + 2) {
            match frames.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let Some(frame_budget) = budget.take() else {
                        unreachable!("checked just above");
                    };
                    // A frame larger than the read-ahead grew `buf` for itself, and the
                    // rest of `buf` still shares that allocation: kept, it would hold the
                    // frame's memory after the frame and its budget are gone (a peer that
                    // sent one 100 MiB frame would pin 100 MiB for as long as it stays
                    // connected). The rest (at most the read-ahead) moves to a small buffer.
                    if frame.len() + FRAME_PREFIX_BYTES > READ_AHEAD_UNBUDGETED_BYTES {
                        let mut rest =
                            BytesMut::with_capacity(READ_AHEAD_UNBUDGETED_BYTES.max(buf.len()));
                        rest.extend_from_slice(&buf);
                        buf = rest;
                    }
                    frame_deadline = (!buf.is_empty()).then(|| Instant::now() + read_timeout);
                    if !dispatch(
                        &broker,
                        &order_tx,
                        &mut turns,
                        &activity,
                        frame.freeze(),
                        frame_budget,
                    )
                    .await
                    {
                        break; // the writer stopped
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::info!(error = %e, "closing connection");
                    break;
                }
            }
        }
        // Between frames, read only a little ahead: those bytes are outside the budget.
        // Within a frame, read only up to its end: bytes of the next frame would be
        // outside the budget too, and could be as many as the frame buffer's spare room.
        let buffered_bytes = pooled.as_ref().map_or(buf.len(), Vec::len);
        let read_bytes_max = match frame_bytes {
            Some(frame_bytes) => frame_bytes.saturating_sub(buffered_bytes).max(1),
            None => READ_AHEAD_UNBUDGETED_BYTES
                .saturating_sub(buffered_bytes)
                .max(1),
        };
        if pooled.is_none() && buf.capacity() == buf.len() {
            buf.reserve(READ_AHEAD_UNBUDGETED_BYTES.min(read_bytes_max));
        }
        let idle_deadline = if activity.requests_in_progress.load(Ordering::Relaxed) > 0 {
            Instant::now() + idle_timeout
        } else {
            last_read.max(activity.last_write()) + idle_timeout
        };
        // A pooled buffer has room for its whole frame (POOLED_FRAME_BYTES_MAX).
        let mut into_pooled;
        let mut into_buf;
        let room: &mut (dyn BufMut + Send) = match pooled.as_mut() {
            Some(buffer) => {
                into_pooled = buffer.limit(read_bytes_max);
                &mut into_pooled
            }
            None => {
                into_buf = (&mut buf).limit(read_bytes_max);
                &mut into_buf
            }
        };
        tokio::select! {
            read = read_half.read_buf(room) => match read {
                Ok(0) => break, // the peer closed (a partial frame is dropped with it)
                Ok(_) => {
                    last_read = Instant::now();
                    frame_deadline.get_or_insert(last_read + read_timeout);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "read failed; closing");
                    break;
                }
            },
            _ = sleep_until_some(frame_deadline) => {
                tracing::info!(
                    timeout_ms = read_timeout.as_millis() as u64,
                    "closing connection: request frame not complete within request_read_timeout_ms"
                );
                break;
            }
            _ = tokio::time::sleep_until(idle_deadline.into()), if frame_deadline.is_none() => {
                let idle = activity.requests_in_progress.load(Ordering::Relaxed) == 0
                    && last_read.max(activity.last_write()).elapsed() >= idle_timeout;
                if idle {
                    tracing::info!(
                        idle_ms = idle_timeout.as_millis() as u64,
                        "closing connection: idle for connections_max_idle_ms"
                    );
                    break;
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
            // The writer gave up (write error or a request that closes the connection).
            _ = order_tx.closed() => break,
        }
    }
    // A frame cut short leaves its pooled buffer (and the busy gauge) to the pool.
    if let Some(buffer) = pooled.take() {
        frame_pool.give_back(buffer);
    }
    drop(order_tx);
    // Finish writing every response already owed, then close.
    let _ = writer.await;
}

/// Completes at `deadline`, or never when there is none.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Starts the handler of one request and queues its reply for the writer; false if
/// the writer has stopped.
async fn dispatch(
    broker: &Arc<Broker>,
    order_tx: &mpsc::Sender<Pending>,
    turns: &mut TurnChain,
    activity: &Activity,
    frame: Bytes,
    budget: OwnedSemaphorePermit,
) -> bool {
    Metrics::add(&broker.metrics().requests_total, 1);
    let (reply_tx, reply_rx) = oneshot::channel();
    activity
        .requests_in_progress
        .fetch_add(1, Ordering::Relaxed);
    let pending = Pending {
        reply: reply_rx,
        budget,
    };
    if order_tx.send(pending).await.is_err() {
        return false;
    }
    let broker = Arc::clone(broker);
    let turn = turns.next_turn();
    let client_host = Arc::clone(&activity.client_host);
    // The handler runs in the connection's span, so its logs name the peer.
    tokio::spawn(
        async move {
            let _ = reply_tx.send(handle_frame(broker, frame, turn, &client_host).await);
        }
        .in_current_span(),
    );
    true
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

async fn handle_frame(
    broker: Arc<Broker>,
    mut frame: Bytes,
    turn: Turn,
    client_host: &str,
) -> Reply {
    let started = std::time::Instant::now();
    let header = parse_request_header(&mut frame)
        .map_err(|e| api::CloseConnection(format!("bad request header: {e}")))?;
    let api_key = header.api_key;
    let reply = api::dispatch(&broker, header, frame, turn, client_host).await;
    broker.metrics().record_request(api_key, started.elapsed());
    reply
}
