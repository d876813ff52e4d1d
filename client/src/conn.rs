//! One TCP connection to one broker: pipelined requests, correlation ids, a bound on
//! requests in flight, a timeout on every request, and ApiVersions negotiation.
//!
//! Two tasks own the socket halves. The writer takes encoded frames from a bounded
//! channel, registers each request that expects an answer with the reader *before*
//! writing it (so a fast response always finds its entry), and batches writes until
//! the channel is empty. The reader matches responses to requests in order — Kafka
//! answers one connection's requests in request order — checks the correlation id,
//! and hands the raw frame to the caller, who decodes it on its own task.
//!
//! Any socket error or a correlation mismatch breaks the connection: every waiting
//! request fails with [`Error::Disconnected`] and the owner reconnects on next use.

use rill_protocol::decode::Decode;
use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::{Request, StrBytes};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;

use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::wire;

/// A request queued on a connection ([`Connection::send`]) whose response is to come.
pub(crate) struct Sent {
    reply: oneshot::Receiver<Result<Bytes>>,
    version: i16,
    deadline: tokio::time::Instant,
    /// The time the request was given (for the timeout error).
    timeout: Duration,
    api: &'static str,
}

/// A request waiting for its response.
struct Pending {
    correlation_id: i32,
    reply: oneshot::Sender<Result<Bytes>>,
    /// Held until the response arrives: this is what bounds requests in flight.
    _permit: OwnedSemaphorePermit,
}

/// An encoded request frame: whole, or in parts written back to back (a Produce
/// request whose batches are written from their own buffers, not copied into it).
pub(crate) enum Frame {
    Whole(Bytes),
    Parts(Vec<Bytes>),
}

/// An encoded frame for the writer, with its response slot (if one is expected).
struct WriteJob {
    frame: Frame,
    pending: Option<Pending>,
}

/// A connection to one broker. Cheap to share behind an `Arc`; all methods take `&self`.
pub(crate) struct Connection {
    addr: String,
    client_id: StrBytes,
    write_tx: mpsc::Sender<WriteJob>,
    in_flight: Arc<Semaphore>,
    next_correlation_id: AtomicI32,
    /// Negotiated version per API key: the highest both sides support.
    versions: HashMap<i16, i16>,
    request_timeout: Duration,
    broken: Arc<AtomicBool>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Connection {
    /// Connects to `addr` and negotiates API versions, within `connect_timeout_ms`.
    pub(crate) async fn connect(addr: &str, config: &ClientConfig) -> Result<Connection> {
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout {
                api: "connect",
                addr: addr.to_owned(),
                timeout_ms: config.connect_timeout_ms,
            })?
            .map_err(|e| Error::io(addr, e))?;
        stream.set_nodelay(true).map_err(|e| Error::io(addr, e))?;
        let (read_half, write_half) = stream.into_split();

        let broken = Arc::new(AtomicBool::new(false));
        let (write_tx, write_rx) = mpsc::channel::<WriteJob>(config.in_flight_requests_max);
        let (pending_tx, pending_rx) = mpsc::unbounded_channel::<Pending>();
        let writer = tokio::spawn(write_loop(
            addr.to_owned(),
            write_half,
            write_rx,
            pending_tx,
            broken.clone(),
        ));
        let frames = FramedRead::new(read_half, wire::frame_codec(config.response_bytes_max));
        let reader = tokio::spawn(read_loop(
            addr.to_owned(),
            frames,
            pending_rx,
            broken.clone(),
        ));

        let mut conn = Connection {
            addr: addr.to_owned(),
            client_id: StrBytes::from_string(config.client_id.clone()),
            write_tx,
            in_flight: Arc::new(Semaphore::new(config.in_flight_requests_max)),
            next_correlation_id: AtomicI32::new(0),
            versions: HashMap::new(),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            broken,
            tasks: [writer, reader],
        };
        let versions = tokio::time::timeout(connect_timeout, conn.negotiate_versions())
            .await
            .map_err(|_| Error::Timeout {
                api: "ApiVersions",
                addr: addr.to_owned(),
                timeout_ms: config.connect_timeout_ms,
            })??;
        conn.versions = versions;
        Ok(conn)
    }

    /// Whether the connection failed and must be replaced.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire) || self.write_tx.is_closed()
    }

    /// The negotiated version of `api_key`, or `None` if there is no common version.
    pub(crate) fn version(&self, api_key: ApiKey) -> Option<i16> {
        self.versions.get(&(api_key as i16)).copied()
    }

    /// Sends `request` at the negotiated version and awaits its response.
    pub(crate) async fn request<R: Request>(&self, request: &R) -> Result<R::Response>
    where
        R::Response: Decode,
    {
        let version = self.version_of::<R>()?;
        self.request_at(request, version).await
    }

    /// The negotiated version for request type `R`.
    pub(crate) fn version_of<R: Request>(&self) -> Result<i16> {
        let api_key = ApiKey::try_from(R::KEY)
            .map_err(|_| Error::Protocol(format!("unknown api key {}", R::KEY)))?;
        self.version(api_key).ok_or(Error::UnsupportedVersion {
            api: wire::api_name(R::KEY),
            addr: self.addr.clone(),
        })
    }

    /// Sends `request` at `version` and awaits its response, within `request_timeout_ms`.
    pub(crate) async fn request_at<R: Request>(
        &self,
        request: &R,
        version: i16,
    ) -> Result<R::Response>
    where
        R::Response: Decode,
    {
        self.request_at_with_timeout(request, version, self.request_timeout)
            .await
    }

    /// Like [`Connection::request_at`] with a deadline of its own: JoinGroup waits on
    /// the coordinator for the whole rebalance, longer than `request_timeout_ms`.
    pub(crate) async fn request_at_with_timeout<R: Request>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response>
    where
        R::Response: Decode,
    {
        let frame = self.exchange(request, version, true, timeout).await?;
        let frame = frame.ok_or_else(|| Error::Protocol("no response frame".into()))?;
        wire::decode_response::<R>(frame, version)
    }

    async fn exchange<R: Request>(
        &self,
        request: &R,
        version: i16,
        expect_response: bool,
        timeout: Duration,
    ) -> Result<Option<Bytes>> {
        match self
            .enqueue(request, version, expect_response, timeout)
            .await?
        {
            None => Ok(None),
            Some(sent) => self.wait(sent).await.map(Some),
        }
    }

    /// Awaits the response of a request queued by [`Connection::send_encoded`], within what is
    /// left of its `request_timeout_ms`, and decodes it.
    pub(crate) async fn response<R: Request>(&self, sent: Sent) -> Result<R::Response>
    where
        R::Response: Decode,
    {
        let version = sent.version;
        let frame = self.wait(sent).await?;
        wire::decode_response::<R>(frame, version)
    }

    /// Queues a request that `encode` builds from its correlation id (a Produce request
    /// in parts) and, with `expect_response`, returns its response to be awaited with
    /// [`Connection::response`]; without, returns once the frame is queued (Produce with
    /// `acks=0`). Requests are written in the order these calls return, so a caller that
    /// needs two requests in order (a partition's pipelined Produce batches) sends the
    /// second after the first's call returned.
    pub(crate) async fn send_encoded(
        &self,
        api_key: i16,
        version: i16,
        expect_response: bool,
        encode: impl FnOnce(i32) -> Result<Frame>,
    ) -> Result<Option<Sent>> {
        self.enqueue_with(
            api_key,
            version,
            expect_response,
            self.request_timeout,
            encode,
        )
        .await
    }

    /// Takes an in-flight slot, encodes and queues `request` for the writer; the whole
    /// exchange (queueing and response) gets `timeout`.
    async fn enqueue<R: Request>(
        &self,
        request: &R,
        version: i16,
        expect_response: bool,
        timeout: Duration,
    ) -> Result<Option<Sent>> {
        self.enqueue_with(
            R::KEY,
            version,
            expect_response,
            timeout,
            |correlation_id| {
                wire::encode_request(request, version, correlation_id, &self.client_id)
                    .map(Frame::Whole)
            },
        )
        .await
    }

    /// [`Connection::enqueue`] with the frame built by `encode` from the correlation id.
    async fn enqueue_with(
        &self,
        api_key: i16,
        version: i16,
        expect_response: bool,
        timeout: Duration,
        encode: impl FnOnce(i32) -> Result<Frame>,
    ) -> Result<Option<Sent>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let api = wire::api_name(api_key);
        let work = async {
            if self.is_broken() {
                return Err(Error::Disconnected {
                    addr: self.addr.clone(),
                });
            }
            let permit = self
                .in_flight
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::Closed)?;
            let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed);
            let frame = encode(correlation_id)?;
            let (pending, sent) = if expect_response {
                let (reply, reply_rx) = oneshot::channel();
                (
                    Some(Pending {
                        correlation_id,
                        reply,
                        _permit: permit,
                    }),
                    Some(Sent {
                        reply: reply_rx,
                        version,
                        deadline,
                        timeout,
                        api,
                    }),
                )
            } else {
                drop(permit);
                (None, None)
            };
            self.write_tx
                .send(WriteJob { frame, pending })
                .await
                .map_err(|_| Error::Disconnected {
                    addr: self.addr.clone(),
                })?;
            Ok(sent)
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out(api, timeout)),
        }
    }

    /// The response frame of a queued request, before its deadline.
    async fn wait(&self, sent: Sent) -> Result<Bytes> {
        match tokio::time::timeout_at(sent.deadline, sent.reply).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Disconnected {
                addr: self.addr.clone(),
            }),
            Err(_) => Err(self.timed_out(sent.api, sent.timeout)),
        }
    }

    /// A request ran out of time: the connection counts as broken, since later responses
    /// on it could only be stale.
    fn timed_out(&self, api: &'static str, timeout: Duration) -> Error {
        self.broken.store(true, Ordering::Release);
        Error::Timeout {
            api,
            addr: self.addr.clone(),
            timeout_ms: timeout.as_millis() as u64,
        }
    }

    /// ApiVersions handshake: ask at our highest version; a broker that does not know it
    /// answers UNSUPPORTED_VERSION in the v0 layout with its own ranges, and we ask again
    /// at the highest version both know.
    async fn negotiate_versions(&self) -> Result<HashMap<i16, i16>> {
        let ours = wire::client_api_version_range(ApiKey::ApiVersions);
        let mut version = ours.1;
        for _ in 0..2 {
            let request = ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("rill-client"))
                .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
            let frame = self
                .exchange(&request, version, true, self.request_timeout)
                .await?;
            let frame = frame.expect("ApiVersions expects a response");
            let response: ApiVersionsResponse = wire::decode_api_versions_response(frame, version)?;
            if response.error_code == 35 {
                // UNSUPPORTED_VERSION: retry at the broker's highest ApiVersions version.
                let broker_max = response
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                    .map(|k| k.max_version)
                    .unwrap_or(0);
                let next = broker_max.min(ours.1);
                if next >= version {
                    break;
                }
                version = next;
                continue;
            }
            if let Some(err) = Error::from_code(response.error_code, None) {
                return Err(err);
            }
            return Ok(negotiate(&response));
        }
        Err(Error::UnsupportedVersion {
            api: "ApiVersions",
            addr: self.addr.clone(),
        })
    }
}

/// For every API both sides know, the highest version inside both ranges.
fn negotiate(response: &ApiVersionsResponse) -> HashMap<i16, i16> {
    let mut versions = HashMap::new();
    for broker in &response.api_keys {
        let Ok(key) = ApiKey::try_from(broker.api_key) else {
            continue;
        };
        let (ours_min, ours_max) = wire::client_api_version_range(key);
        if ours_max < ours_min {
            continue;
        }
        let high = ours_max.min(broker.max_version);
        let low = ours_min.max(broker.min_version);
        if high >= low {
            versions.insert(broker.api_key, high);
        }
    }
    versions
}

/// Bytes of queued frames the writer gathers into one vectored write at most: several
/// Produce requests of 1 MiB batches go out in one call, and a long queue does not
/// delay the registration of later requests' response slots unboundedly.
const WRITE_GATHER_BYTES_MAX: usize = 4 << 20;

/// Slices per `writev` call: Linux's `IOV_MAX`.
const WRITE_SLICES_MAX: usize = 1024;

impl Frame {
    /// The frame's bytes, in order.
    fn parts(&self) -> &[Bytes] {
        match self {
            Frame::Whole(frame) => std::slice::from_ref(frame),
            Frame::Parts(parts) => parts,
        }
    }
}

/// The writer task: registers each request's response slot, then writes every frame
/// queued meanwhile (up to `WRITE_GATHER_BYTES_MAX`) with vectored writes straight
/// from the frames' buffers: a Produce request's header and its batches go out in one
/// system call, without a copy into a write buffer and without a small packet of its
/// own for the header (a `BufWriter` flushed the header before writing a batch larger
/// than its buffer: two calls and two TCP segments per request).
async fn write_loop(
    addr: String,
    mut write_half: tokio::net::tcp::OwnedWriteHalf,
    mut jobs: mpsc::Receiver<WriteJob>,
    pending_tx: mpsc::UnboundedSender<Pending>,
    broken: Arc<AtomicBool>,
) {
    let mut frames: Vec<Frame> = Vec::new();
    while let Some(mut job) = jobs.recv().await {
        // Coalesce whatever is queued into one vectored write.
        let mut gathered_bytes = 0;
        loop {
            if let Some(pending) = job.pending.take() {
                if pending_tx.send(pending).is_err() {
                    broken.store(true, Ordering::Release);
                    return;
                }
            }
            gathered_bytes += job.frame.parts().iter().map(Bytes::len).sum::<usize>();
            frames.push(job.frame);
            if gathered_bytes >= WRITE_GATHER_BYTES_MAX {
                break;
            }
            match jobs.try_recv() {
                Ok(next) => job = next,
                Err(_) => break,
            }
        }
        let written = write_frames(&mut write_half, &frames).await;
        frames.clear();
        if let Err(e) = written {
            tracing::debug!(%addr, error = %e, "write failed");
            broken.store(true, Ordering::Release);
            return;
        }
    }
}

/// Writes `frames` whole, in order, with as few `writev` calls as the socket takes.
async fn write_frames(
    out: &mut tokio::net::tcp::OwnedWriteHalf,
    frames: &[Frame],
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = frames
        .iter()
        .flat_map(Frame::parts)
        .filter(|part| !part.is_empty())
        .map(|part| IoSlice::new(part))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let upto = rest.len().min(WRITE_SLICES_MAX);
        let n = out.write_vectored(&rest[..upto]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

async fn read_loop(
    addr: String,
    mut frames: FramedRead<tokio::net::tcp::OwnedReadHalf, wire::FrameCodec>,
    mut pending_rx: mpsc::UnboundedReceiver<Pending>,
    broken: Arc<AtomicBool>,
) {
    let failure = loop {
        let frame = match frames.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(wire::FrameError::Io(e))) => break Error::io(&addr, e),
            Some(Err(wire::FrameError::Frame(e))) => {
                break Error::Protocol(format!("reading from {addr}: {e}"))
            }
            None => break Error::Disconnected { addr: addr.clone() },
        };
        let Ok(pending) = pending_rx.try_recv() else {
            break Error::Protocol(format!("{addr} sent a response nobody asked for"));
        };
        let correlation_id = match wire::peek_correlation_id(&frame) {
            Ok(id) => id,
            Err(e) => break e,
        };
        if correlation_id != pending.correlation_id {
            break Error::Protocol(format!(
                "{addr} answered correlation id {correlation_id}, expected {}",
                pending.correlation_id
            ));
        }
        // The caller may have timed out and gone; that is fine.
        let _ = pending.reply.send(Ok(frame));
    };
    broken.store(true, Ordering::Release);
    tracing::debug!(%addr, error = %failure, "connection closed");
    pending_rx.close();
    while let Ok(pending) = pending_rx.try_recv() {
        let _ = pending.reply.send(Err(failure.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;

    fn broker_api(key: ApiKey, min: i16, max: i16) -> ApiVersion {
        ApiVersion::default()
            .with_api_key(key as i16)
            .with_min_version(min)
            .with_max_version(max)
    }

    #[test]
    fn negotiation_picks_the_highest_version_both_sides_support() {
        let (ours_min, ours_max) = wire::client_api_version_range(ApiKey::Metadata);
        let response = ApiVersionsResponse::default().with_api_keys(vec![
            // Broker newer than us: our max.
            broker_api(ApiKey::Metadata, 0, ours_max + 5),
            // Broker older than us: its max.
            broker_api(ApiKey::Produce, 3, 7),
            // No overlap: not usable.
            broker_api(ApiKey::ListOffsets, 50, 60),
            // An API this client does not speak at all.
            broker_api(ApiKey::DescribeAcls, 0, 3),
        ]);
        let versions = negotiate(&response);
        assert!(ours_min <= ours_max);
        assert_eq!(versions.get(&(ApiKey::Metadata as i16)), Some(&ours_max));
        assert_eq!(versions.get(&(ApiKey::Produce as i16)), Some(&7));
        assert_eq!(versions.get(&(ApiKey::ListOffsets as i16)), None);
        assert_eq!(
            wire::client_api_version_range(ApiKey::DescribeAcls),
            (0, -1),
            "the example of an API the client does not speak must stay one"
        );
        assert_eq!(versions.get(&(ApiKey::DescribeAcls as i16)), None);
    }

    #[test]
    fn fetch_is_capped_below_topic_id_versions() {
        let (_, max) = wire::client_api_version_range(ApiKey::Fetch);
        assert!(max <= 12, "Fetch v13+ addresses topics by id");
    }

    /// A peer that accepts but never answers: the handshake (and so every request on
    /// such a connection) ends with a timeout, not a hang.
    #[tokio::test]
    async fn handshake_with_a_silent_peer_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let silent = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            // Hold the socket open without answering.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        });
        let config = ClientConfig {
            connect_timeout_ms: 200,
            request_timeout_ms: 200,
            ..ClientConfig::new(&addr)
        };
        let started = std::time::Instant::now();
        let err = Connection::connect(&addr, &config).await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        silent.abort();
    }

    /// A peer that closes the connection: requests fail with a retriable error.
    #[tokio::test]
    async fn peer_closing_the_connection_fails_the_handshake_retriably() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let closer = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            drop(socket);
        });
        let err = Connection::connect(&addr, &ClientConfig::new(&addr))
            .await
            .unwrap_err();
        assert!(err.is_retriable(), "{err}");
        closer.await.unwrap();
    }
}
