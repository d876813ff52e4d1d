//! One outbound peer: its bounded queue ([`PeerQueue`], no I/O) and the task that
//! connects, handshakes and drains the queue into frames ([`run`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio_util::codec::FramedRead;
use tracing::Instrument;

use super::codec::{self, Envelope, FrameDecoder, FRAME_HEADER_BYTES, HELLO_BYTES_MAX};
use super::{lock, stopped, BrokerId, Shared, TransportError};
use crate::replica::hard_state::ReplicaKey;

/// What [`PeerQueue::push`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued behind the messages before it.
    Queued,
    /// A heartbeat that replaced the pending one of its group and direction.
    Coalesced,
    /// Not queued: it would take the queue above its byte limit.
    Dropped,
}

/// The messages waiting for one peer, bounded in bytes (encoded size, entry data
/// included). Heartbeats wait apart, at most one per (group, direction): a newer one
/// replaces the older, so an unreachable peer costs one heartbeat per group however
/// long it stays away.
///
/// Bytes stay charged from [`PeerQueue::push`] until [`PeerQueue::release`], which the
/// writer calls once a frame has left (or failed), so the limit bounds what is queued
/// plus what is being written.
#[derive(Debug)]
pub(crate) struct PeerQueue {
    messages: VecDeque<(Envelope, usize)>,
    /// Keyed by group and `true` for a HeartbeatResponse.
    heartbeats: HashMap<(ReplicaKey, bool), (Envelope, usize)>,
    charged_bytes: usize,
    inflight_bytes_max: usize,
}

impl PeerQueue {
    pub(crate) fn new(inflight_bytes_max: usize) -> PeerQueue {
        PeerQueue {
            messages: VecDeque::new(),
            heartbeats: HashMap::new(),
            charged_bytes: 0,
            inflight_bytes_max,
        }
    }

    /// Bytes queued or being written.
    pub(crate) fn charged_bytes(&self) -> usize {
        self.charged_bytes
    }

    /// Queues `envelope` of `bytes` encoded bytes, coalescing heartbeats.
    pub(crate) fn push(&mut self, envelope: Envelope, bytes: usize) -> Pushed {
        if envelope.message.is_heartbeat() {
            let is_response = matches!(
                envelope.message.body,
                rill_raft::MessageBody::HeartbeatResponse
            );
            let key = (envelope.group, is_response);
            let replaced_bytes = self.heartbeats.get(&key).map_or(0, |(_, b)| *b);
            if self.charged_bytes - replaced_bytes + bytes > self.inflight_bytes_max {
                return Pushed::Dropped;
            }
            self.charged_bytes = self.charged_bytes - replaced_bytes + bytes;
            let replaced = self.heartbeats.insert(key, (envelope, bytes));
            return if replaced.is_some() {
                Pushed::Coalesced
            } else {
                Pushed::Queued
            };
        }
        if self.charged_bytes + bytes > self.inflight_bytes_max {
            return Pushed::Dropped;
        }
        self.charged_bytes += bytes;
        self.messages.push_back((envelope, bytes));
        Pushed::Queued
    }

    /// Takes the next frame's worth of envelopes (heartbeats first, then messages in
    /// the order they were queued) whose frame stays within `frame_bytes_max`, and
    /// their bytes (still charged until [`PeerQueue::release`]). Empty when nothing waits.
    pub(crate) fn take_batch(&mut self, frame_bytes_max: usize) -> (Vec<Envelope>, usize) {
        let budget_bytes = frame_bytes_max.saturating_sub(FRAME_HEADER_BYTES);
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        // Heartbeats first: they are small and a late one can cost an election.
        let keys: Vec<_> = self.heartbeats.keys().copied().collect();
        for key in keys {
            let fits = self
                .heartbeats
                .get(&key)
                .is_some_and(|(_, b)| batch_bytes + b <= budget_bytes);
            if fits {
                if let Some((envelope, bytes)) = self.heartbeats.remove(&key) {
                    batch_bytes += bytes;
                    batch.push(envelope);
                }
            }
        }
        while let Some((_, bytes)) = self.messages.front() {
            // The first envelope always goes: `Transport::send` refused any envelope
            // that does not fit a frame alone.
            if !batch.is_empty() && batch_bytes + bytes > budget_bytes {
                break;
            }
            if let Some((envelope, bytes)) = self.messages.pop_front() {
                batch_bytes += bytes;
                batch.push(envelope);
            }
        }
        (batch, batch_bytes)
    }

    /// Uncharges the bytes of a batch that was written or lost.
    pub(crate) fn release(&mut self, bytes: usize) {
        assert!(
            bytes <= self.charged_bytes,
            "releasing {bytes} bytes of {} charged",
            self.charged_bytes
        );
        self.charged_bytes -= bytes;
    }
}

/// The state of one outbound peer shared between [`super::Transport::send`] (any
/// thread) and the peer's task.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) broker_id: BrokerId,
    pub(crate) state: Mutex<PeerState>,
    /// Messages were queued.
    pub(crate) queued: Notify,
    /// The address changed or the peer was removed.
    pub(crate) reconfigured: Notify,
}

#[derive(Debug)]
pub(crate) struct PeerState {
    pub(crate) queue: PeerQueue,
    pub(crate) addr: SocketAddr,
    /// Bumped on every address change, so a connection to the old address ends.
    pub(crate) addr_generation: u64,
    pub(crate) removed: bool,
}

impl Peer {
    pub(crate) fn new(broker_id: BrokerId, addr: SocketAddr, inflight_bytes_max: usize) -> Peer {
        Peer {
            broker_id,
            state: Mutex::new(PeerState {
                queue: PeerQueue::new(inflight_bytes_max),
                addr,
                addr_generation: 0,
                removed: false,
            }),
            queued: Notify::new(),
            reconfigured: Notify::new(),
        }
    }
}

/// Exponential backoff with jitter between connection attempts.
#[derive(Debug)]
struct Backoff {
    min_ms: u64,
    max_ms: u64,
    next_ms: u64,
}

impl Backoff {
    fn new(min_ms: u64, max_ms: u64) -> Backoff {
        Backoff {
            min_ms,
            max_ms,
            next_ms: min_ms,
        }
    }

    fn reset(&mut self) {
        self.next_ms = self.min_ms;
    }

    /// The next delay: uniform in `[next/2, next]` so brokers that lost a peer at the
    /// same moment do not all reconnect at the same moment; then `next` doubles.
    fn next_delay(&mut self) -> Duration {
        let ceiling_ms = self.next_ms.max(1);
        let delay_ms = rand::thread_rng().gen_range(ceiling_ms / 2..=ceiling_ms);
        self.next_ms = self.next_ms.saturating_mul(2).min(self.max_ms);
        Duration::from_millis(delay_ms)
    }
}

/// Why a connection's write loop ended.
enum Ended {
    /// The transport is shutting down or the peer was removed: the task ends.
    Stop,
    /// The peer's address changed: reconnect at once.
    Moved,
    /// The connection failed: reconnect after a backoff.
    Failed(TransportError),
}

/// The task of one outbound peer: connect, handshake, drain the queue; on failure back
/// off and reconnect, until shutdown or removal.
pub(crate) async fn run(peer: Arc<Peer>, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let span = tracing::info_span!("inter_broker_out", peer = peer.broker_id);
    run_peer(peer, shared, shutdown).instrument(span).await
}

async fn run_peer(peer: Arc<Peer>, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let config = &shared.config;
    let mut backoff = Backoff::new(
        config.reconnect_backoff_ms_min,
        config.reconnect_backoff_ms_max,
    );
    let mut connected_before = false;
    loop {
        let (addr, generation) = {
            let state = lock(&peer.state);
            if state.removed {
                return;
            }
            (state.addr, state.addr_generation)
        };
        let connected = tokio::select! {
            _ = stopped(&mut shutdown) => return,
            connected = connect(&shared, peer.broker_id, addr) => connected,
        };
        match connected {
            Ok(stream) => {
                if connected_before {
                    shared.counters.bump(&shared.counters.reconnects);
                }
                connected_before = true;
                tracing::debug!(%addr, "inter-broker connection up");
                let ended = write_loop(
                    &peer,
                    &shared,
                    &mut shutdown,
                    stream,
                    generation,
                    &mut backoff,
                )
                .await;
                match ended {
                    Ended::Stop => return,
                    Ended::Moved => continue,
                    Ended::Failed(error) => {
                        tracing::info!(%addr, %error, "inter-broker connection lost");
                    }
                }
            }
            Err(error) => {
                shared.counters.bump(&shared.counters.connect_failures);
                tracing::debug!(%addr, %error, "inter-broker connect failed");
            }
        }
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            // An address change or removal cuts the wait short.
            _ = peer.reconfigured.notified() => {}
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Connects to `addr` and exchanges handshakes; the peer must answer with the broker
/// id we meant to reach and our cluster id.
async fn connect(
    shared: &Shared,
    expected_broker_id: BrokerId,
    addr: SocketAddr,
) -> Result<TcpStream, TransportError> {
    let config = &shared.config;
    let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
    let mut stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| TransportError::Timeout { what: "connect" })??;
    stream.set_nodelay(true)?;
    let hello = codec::encode_hello(&shared.hello());
    stream.write_all(&hello).await?;
    let handshake_timeout = Duration::from_millis(config.handshake_timeout_ms);
    let reply = {
        let mut frames = FramedRead::new(&mut stream, FrameDecoder::new(HELLO_BYTES_MAX));
        tokio::time::timeout(handshake_timeout, frames.next())
            .await
            .map_err(|_| TransportError::Timeout { what: "handshake" })?
            .ok_or(TransportError::ClosedDuringHandshake)??
    };
    let reply = codec::decode_hello(reply.freeze())?;
    super::check_hello(config, &reply)?;
    if reply.broker_id != expected_broker_id {
        return Err(TransportError::UnexpectedBroker {
            expected: expected_broker_id,
            found: reply.broker_id,
        });
    }
    Ok(stream)
}

/// Drains the queue into frames on `stream` until the connection fails, the address
/// changes, the peer is removed or the transport shuts down.
async fn write_loop(
    peer: &Peer,
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
    stream: TcpStream,
    generation: u64,
    backoff: &mut Backoff,
) -> Ended {
    let counters = &shared.counters;
    let (mut reader, mut writer) = stream.into_split();
    // The peer never sends after its handshake: any read result means the connection
    // is gone (EOF or reset) or the peer misbehaves. Watching it notices a dead
    // connection while idle instead of at the next write.
    let mut probe = [0u8; 1];
    let keepalive_interval = Duration::from_millis(shared.config.keepalive_interval_ms);
    loop {
        let (batch, batch_bytes) = {
            let mut state = lock(&peer.state);
            if state.removed {
                return Ended::Stop;
            }
            if state.addr_generation != generation {
                return Ended::Moved;
            }
            state.queue.take_batch(shared.config.frame_bytes_max)
        };
        if batch.is_empty() {
            let keepalive = tokio::select! {
                _ = stopped(shutdown) => return Ended::Stop,
                _ = peer.queued.notified() => false,
                _ = peer.reconfigured.notified() => false,
                read = reader.read(&mut probe) => {
                    return Ended::Failed(match read {
                        Ok(0) => TransportError::ClosedByPeer,
                        Ok(_) => TransportError::UnexpectedBytes,
                        Err(error) => error.into(),
                    });
                }
                // Nothing to send for a while: an empty frame tells the peer we live.
                _ = tokio::time::sleep(keepalive_interval) => true,
            };
            if !keepalive {
                continue;
            }
        }
        let mut frame = codec::encode_frame(shared.config.broker_id, &batch);
        let frame_bytes = bytes::Buf::remaining(&frame);
        let write_stall_timeout = Duration::from_millis(shared.config.write_stall_timeout_ms);
        let written = tokio::select! {
            _ = stopped(shutdown) => None,
            // `write_all_buf` hands the frame's chunks to vectored writes: entry data
            // goes from its buffer to the socket without a copy.
            written = tokio::time::timeout(write_stall_timeout, writer.write_all_buf(&mut frame)) => {
                Some(written.unwrap_or(Err(std::io::ErrorKind::TimedOut.into())))
            }
        };
        lock(&peer.state).queue.release(batch_bytes);
        match written {
            None => return Ended::Stop,
            Some(Ok(())) => {
                // Only a connection that carried a frame resets the backoff: a peer that
                // accepts the handshake and then hangs up keeps being retried slowly.
                backoff.reset();
                counters.add(&counters.frames_sent, 1);
                counters.add(&counters.bytes_sent, frame_bytes as u64);
                counters.add(&counters.messages_sent, batch.len() as u64);
            }
            Some(Err(error)) => {
                // Part of the frame may have left; the receiver discards a partial frame
                // with the connection, and Raft retransmits what mattered.
                counters.add(&counters.messages_dropped_disconnected, batch.len() as u64);
                return Ended::Failed(error.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_raft::{Message, MessageBody};
    use uuid::Uuid;

    fn envelope(partition: i32, body: MessageBody) -> Envelope {
        Envelope {
            group: (Uuid::from_u128(1), partition),
            message: Message {
                from: 1,
                to: 2,
                term: 1,
                body,
            },
        }
    }

    fn push(queue: &mut PeerQueue, envelope: Envelope) -> Pushed {
        let bytes = envelope.encoded_bytes();
        queue.push(envelope, bytes)
    }

    #[test]
    fn a_newer_heartbeat_replaces_the_pending_one_of_its_group_and_direction() {
        let mut queue = PeerQueue::new(1 << 20);
        for commit_offset in 0..1000 {
            push(
                &mut queue,
                envelope(
                    0,
                    MessageBody::Heartbeat {
                        commit_offset,
                        quiesce: false,
                    },
                ),
            );
        }
        push(&mut queue, envelope(0, MessageBody::HeartbeatResponse));
        push(
            &mut queue,
            envelope(
                1,
                MessageBody::Heartbeat {
                    commit_offset: 5,
                    quiesce: false,
                },
            ),
        );
        let (batch, bytes) = queue.take_batch(1 << 20);
        assert_eq!(batch.len(), 3);
        assert!(batch.contains(&envelope(
            0,
            MessageBody::Heartbeat {
                commit_offset: 999,
                quiesce: false,
            }
        )));
        assert_eq!(bytes, queue.charged_bytes());
        queue.release(bytes);
        assert_eq!(queue.charged_bytes(), 0);
    }

    #[test]
    fn a_full_queue_drops_and_never_exceeds_its_byte_limit() {
        let one = envelope(0, MessageBody::TimeoutNow).encoded_bytes();
        let mut queue = PeerQueue::new(one * 10 + one / 2);
        let outcomes: Vec<_> = (0..20)
            .map(|_| push(&mut queue, envelope(0, MessageBody::TimeoutNow)))
            .collect();
        assert_eq!(
            outcomes.iter().filter(|o| **o == Pushed::Queued).count(),
            10
        );
        assert_eq!(
            outcomes.iter().filter(|o| **o == Pushed::Dropped).count(),
            10
        );
        assert!(queue.charged_bytes() <= one * 10 + one / 2);
    }

    #[test]
    fn a_batch_keeps_send_order_and_stops_at_the_frame_limit() {
        let mut queue = PeerQueue::new(1 << 20);
        for i in 0..10 {
            push(&mut queue, envelope(i, MessageBody::TimeoutNow));
        }
        let one = envelope(0, MessageBody::TimeoutNow).encoded_bytes();
        let (first, _) = queue.take_batch(FRAME_HEADER_BYTES + 4 * one);
        let (rest, _) = queue.take_batch(1 << 20);
        let partitions: Vec<i32> = first.iter().chain(&rest).map(|e| e.group.1).collect();
        assert_eq!(first.len(), 4);
        assert_eq!(partitions, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn backoff_doubles_to_its_ceiling_with_jitter() {
        let mut backoff = Backoff::new(50, 2000);
        let delays: Vec<u64> = (0..10)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert!((25..=50).contains(&delays[0]));
        assert!((50..=100).contains(&delays[1]));
        assert!(delays[9] <= 2000 && delays[9] >= 1000);
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(50));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Heartbeat { partition: i32, response: bool },
        Data { partition: i32 },
        Write { frame_bytes_max: usize },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..3i32, any::<bool>()).prop_map(|(partition, response)| Op::Heartbeat {
                partition,
                response
            }),
            (0..3i32).prop_map(|partition| Op::Data { partition }),
            (FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + 400)
                .prop_map(|frame_bytes_max| Op::Write { frame_bytes_max }),
        ]
    }

    proptest::proptest! {
        /// Whatever the interleaving of sends and writes: charged bytes stay within the
        /// limit, data messages leave in the order they were queued (none skipped but
        /// the dropped ones), and at most one heartbeat per (group, direction) waits.
        #[test]
        fn the_queue_keeps_its_bound_its_order_and_one_heartbeat_per_key(
            ops in proptest::collection::vec(op(), 0..200),
            limit_bytes in 100usize..2_000,
        ) {
            let mut queue = PeerQueue::new(limit_bytes);
            let mut next_sequence = 0u64;
            let mut accepted = Vec::new();
            let mut written = Vec::new();
            for op in ops {
                match op {
                    Op::Heartbeat { partition, response } => {
                        let body = if response {
                            MessageBody::HeartbeatResponse
                        } else {
                            MessageBody::Heartbeat {
                                commit_offset: next_sequence,
                                quiesce: false,
                            }
                        };
                        push(&mut queue, envelope(partition, body));
                    }
                    Op::Data { partition } => {
                        let body = MessageBody::AppendResponse(rill_raft::AppendResult::Accepted {
                            match_end_offset: next_sequence,
                        });
                        if push(&mut queue, envelope(partition, body)) == Pushed::Queued {
                            accepted.push(next_sequence);
                        }
                        next_sequence += 1;
                    }
                    Op::Write { frame_bytes_max } => {
                        let (batch, bytes) = queue.take_batch(frame_bytes_max);
                        let mut keys = std::collections::HashSet::new();
                        for e in &batch {
                            match e.message.body {
                                MessageBody::AppendResponse(rill_raft::AppendResult::Accepted {
                                    match_end_offset,
                                }) => written.push(match_end_offset),
                                MessageBody::HeartbeatResponse => {
                                    proptest::prop_assert!(keys.insert((e.group, true)));
                                }
                                _ => proptest::prop_assert!(keys.insert((e.group, false))),
                            }
                        }
                        queue.release(bytes);
                    }
                }
                proptest::prop_assert!(queue.charged_bytes() <= limit_bytes);
                proptest::prop_assert!(queue.heartbeats.len() <= 6);
            }
            proptest::prop_assert!(accepted.starts_with(&written));
        }
    }
}
