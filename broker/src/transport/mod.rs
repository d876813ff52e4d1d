//! The inter-broker transport: Raft messages of every group, batched per peer broker
//! over one TCP connection each way (ARCHITECTURE §4 "multi-raft efficiency").
//!
//! # Layout
//!
//! * [`codec`] — the wire format: handshake, frames of [`Envelope`]s; zero-copy entry
//!   data both ways; bounded decoding of untrusted bytes.
//! * `peer` — one outbound peer: its byte-bounded queue with heartbeat coalescing (no
//!   I/O) and the task that connects with backoff, handshakes and writes frames.
//! * this module — [`TransportConfig`] (every limit), [`Transport`] (send, peers,
//!   shutdown), the accept loop and the inbound connections, [`TransportCounters`].
//!
//! # Flow
//!
//! Outbound, [`Transport::send`] never blocks and never waits for I/O: it puts the
//! message on the peer's queue or drops it (queue full, frame too large, unknown peer)
//! and counts the drop. Dropping is safe because Raft retransmits; blocking the
//! persist thread is not. A task per peer drains the queue into frames.
//!
//! Inbound, every accepted connection must first send a handshake naming its broker
//! id and our cluster id; then each frame is decoded and its envelopes are delivered
//! as one [`InboundBatch`] on the bounded channel given to [`Transport::start`].
//! A channel rather than a callback because its bound is back-pressure that needs no
//! code: when the consumer (the replica engine) falls behind, the connection stops
//! reading, TCP pushes back, the sender's queue fills and it drops — memory stays
//! bounded at every step, and the consumer may be a plain thread (`blocking_recv`)
//! or a task. A peer that sends anything invalid is disconnected and logged.
//!
//! Outbound connections only write and inbound ones only read (after the handshake),
//! so each broker pair uses two connections, one per direction. That keeps each side's
//! ownership simple: the sender owns reconnecting, the receiver owns validating.
//!
//! # Registrations
//!
//! Every handshake carries the sender's [`BrokerRegistrationInfo`] (its client address,
//! inter-broker address, rack and incarnation id; [`TransportConfig::registration`]). The transport keeps the
//! latest one of every peer whose inbound connection completed a handshake — the peer's
//! own claim, keyed by its broker id — and a controller reads them with
//! [`Transport::peer_registrations`], woken by [`Transport::registrations_changed`].
//! Only inbound handshakes count: they are the ones whose sender chose to reach this
//! broker, and each peer keeps one open to every broker it talks to.
//!
//! The map records who said what last, not who is alive: a peer whose connection closes
//! stays in it. Who is alive is the sessions' business (next section).
//!
//! # Identities: duplicates and stale incarnations
//!
//! Two processes must never speak for one broker id: the Raft groups would count one
//! voter twice. The `identity` module holds the rule and its reasons; in short, a
//! handshake is answered with a [`codec::Refusal`] instead of a hello when its
//! incarnation was replaced by a later registration in the metadata log (stale: fenced
//! for good), or when another incarnation of the same broker id holds a live session here
//! (duplicate: a session is live while its connection is open and delivered a frame
//! within `session_timeout_ms`; idle connections carry a keepalive frame every
//! `keepalive_interval_ms`). The refused process learns why from the refusal: a stale
//! incarnation at once, a duplicate once refused for two session timeouts in a row,
//! reports it on [`Transport::fenced`] and the broker exits with that message.
//!
//! A hello also tells the receiver which incarnation of it the sender's metadata
//! registers ([`Hello::known_incarnation`]): a broker that started on an empty data
//! directory learns from it, before any Raft message of that peer, that it is rejoining a
//! cluster that knew it ([`Transport::rejoining`]; see `replica::engine` for why that
//! matters to its votes).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rill_protocol::frame::FRAME_PREFIX_BYTES;
use rill_protocol::ProtocolError;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::codec::FramedRead;
use tracing::Instrument;

pub mod codec;
mod identity;
mod peer;

pub use codec::{BrokerRegistrationInfo, CodecError, Envelope, Hello, RefusalCode};
use identity::Identities;
use uuid::Uuid;

use codec::{FrameDecoder, FRAME_HEADER_BYTES, HELLO_BYTES_MAX};
use peer::{Peer, Pushed};

/// A Kafka broker id (`node_id` in the configuration): `0..=i32::MAX`, the type the
/// rest of the broker uses. Its Raft node id is one more
/// ([`crate::replica::store::raft_node_id`]).
pub type BrokerId = i32;

/// The default port of `inter_broker_listen`.
pub const INTER_BROKER_PORT_DEFAULT: u16 = 9093;

/// Every limit and timing of the transport, in one place. Defaults are given next to
/// each field; [`TransportConfig::validate`] checks them at start-up.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This broker's id, sent in every handshake and frame.
    pub broker_id: BrokerId,
    /// The cluster id; a peer with another one is refused. At most
    /// [`codec::CLUSTER_ID_BYTES_MAX`] bytes.
    pub cluster_id: String,
    /// `inter_broker_listen`: where peers connect. Default `0.0.0.0:9093`.
    pub listen_addr: SocketAddr,
    /// Largest frame sent or accepted, length prefix included. A message that does not
    /// fit a frame alone is dropped at [`Transport::send`]; a peer announcing a larger
    /// frame is disconnected before its body is read. Must hold one Raft append
    /// (`append_bytes_max`, 1 MiB by default) plus headers. Default 16 MiB; at most
    /// `i32::MAX` (the length prefix is read as Kafka's signed INT32).
    pub frame_bytes_max: usize,
    /// Bytes of messages queued for one peer, or being written to it, at most
    /// (encoded size, entry data included); a message beyond it is dropped and counted.
    /// Default 64 MiB per peer.
    pub inflight_bytes_max: usize,
    /// First delay before reconnecting to a peer. Default 50 ms.
    pub reconnect_backoff_ms_min: u64,
    /// The delay doubles after each failure up to this. Default 2,000 ms.
    pub reconnect_backoff_ms_max: u64,
    /// Time allowed for a TCP connect. Default 3,000 ms.
    pub connect_timeout_ms: u64,
    /// Time allowed for a peer's handshake, either side. Default 5,000 ms.
    pub handshake_timeout_ms: u64,
    /// An outbound connection with nothing to send for this long sends an empty frame,
    /// so the peer can tell a live broker whose groups are all quiet from a dead one
    /// ([`Transport::silent_peers`]) and its session stays live (see the module docs).
    /// Default 200 ms.
    pub keepalive_interval_ms: u64,
    /// Time allowed for writing one frame; past it the connection is dropped and
    /// reopened. Without it, a peer that vanished without a reset (power loss, a
    /// partition) holds the connection until the kernel gives up (about 15 minutes on
    /// Linux), and a restarted peer is not reached meanwhile. The cost: a receiver that
    /// stalls this long (its consumer blocked) is reconnected; what was queued for it
    /// would have been dropped anyway. Default 30,000 ms.
    pub write_stall_timeout_ms: u64,
    /// Inbound connections served at once; more are closed at accept. A cluster needs
    /// one per peer broker (two briefly while one reconnects). It also bounds the memory
    /// peers can make this broker hold for frames being received: at most
    /// `inbound_connections_max × frame_bytes_max`, and only as bytes actually arrive
    /// (plus what the inbound channel holds). Default 64.
    pub inbound_connections_max: usize,
    /// A peer process whose connection delivered no frame for this long has no live
    /// session any more: another process with its broker id may then take its place (see
    /// the module docs). Must exceed `keepalive_interval_ms`. Default 3,000 ms.
    pub session_timeout_ms: u64,
    /// What this broker tells its peers about itself in every handshake (see the module
    /// docs). Default: client host `127.0.0.1`, port 9092, no rack, and an incarnation id
    /// drawn at random by [`TransportConfig::new`]; set the real one with
    /// [`TransportConfig::with_registration`]. `client_host` must be non-empty and at most
    /// [`codec::CLIENT_HOST_BYTES_MAX`] bytes, `rack` at most [`codec::RACK_BYTES_MAX`].
    pub registration: BrokerRegistrationInfo,
}

impl TransportConfig {
    /// A configuration with every default but the broker's identity and address.
    pub fn new(
        broker_id: BrokerId,
        cluster_id: impl Into<String>,
        listen_addr: SocketAddr,
    ) -> Self {
        TransportConfig {
            broker_id,
            cluster_id: cluster_id.into(),
            listen_addr,
            frame_bytes_max: 16 * 1024 * 1024,
            inflight_bytes_max: 64 * 1024 * 1024,
            reconnect_backoff_ms_min: 50,
            reconnect_backoff_ms_max: 2_000,
            connect_timeout_ms: 3_000,
            handshake_timeout_ms: 5_000,
            write_stall_timeout_ms: 30_000,
            keepalive_interval_ms: 200,
            inbound_connections_max: 64,
            session_timeout_ms: 3_000,
            registration: BrokerRegistrationInfo {
                client_host: "127.0.0.1".into(),
                client_port: 9092,
                inter_broker_host: listen_addr.ip().to_string(),
                inter_broker_port: listen_addr.port(),
                rack: None,
                incarnation_id: BrokerRegistrationInfo::random_incarnation_id(),
            },
        }
    }

    /// This configuration announcing `registration` in its handshakes.
    pub fn with_registration(mut self, registration: BrokerRegistrationInfo) -> Self {
        self.registration = registration;
        self
    }

    /// Checks every field; the error names the key.
    pub fn validate(&self) -> Result<(), TransportError> {
        let invalid =
            |key: &'static str, reason: String| Err(TransportError::Config { key, reason });
        if self.broker_id < 0 {
            return invalid("broker_id", format!("{} is negative", self.broker_id));
        }
        if self.cluster_id.len() > codec::CLUSTER_ID_BYTES_MAX {
            return invalid(
                "cluster_id",
                format!("longer than {} bytes", codec::CLUSTER_ID_BYTES_MAX),
            );
        }
        let host = &self.registration.client_host;
        if host.is_empty() || host.len() > codec::CLIENT_HOST_BYTES_MAX {
            return invalid(
                "registration.client_host",
                format!(
                    "{} bytes, not in 1..={}",
                    host.len(),
                    codec::CLIENT_HOST_BYTES_MAX
                ),
            );
        }
        let inter_broker_host = &self.registration.inter_broker_host;
        if inter_broker_host.is_empty() || inter_broker_host.len() > codec::CLIENT_HOST_BYTES_MAX {
            return invalid(
                "registration.inter_broker_host",
                format!(
                    "{} bytes, not in 1..={}",
                    inter_broker_host.len(),
                    codec::CLIENT_HOST_BYTES_MAX
                ),
            );
        }
        if let Some(rack) = &self.registration.rack {
            if rack.len() > codec::RACK_BYTES_MAX {
                return invalid(
                    "registration.rack",
                    format!("longer than {} bytes", codec::RACK_BYTES_MAX),
                );
            }
        }
        // Room for the frame header, one envelope and a little data.
        const FRAME_BYTES_MIN: usize = 1024;
        if self.frame_bytes_max < FRAME_BYTES_MIN || self.frame_bytes_max > i32::MAX as usize {
            return invalid(
                "frame_bytes_max",
                format!(
                    "{} not in {FRAME_BYTES_MIN}..={}",
                    self.frame_bytes_max,
                    i32::MAX
                ),
            );
        }
        if self.inflight_bytes_max < self.frame_bytes_max {
            return invalid(
                "inflight_bytes_max",
                format!(
                    "{} is below frame_bytes_max {}: a full frame could never be queued",
                    self.inflight_bytes_max, self.frame_bytes_max
                ),
            );
        }
        if self.reconnect_backoff_ms_min == 0
            || self.reconnect_backoff_ms_min > self.reconnect_backoff_ms_max
        {
            return invalid(
                "reconnect_backoff_ms_min",
                format!(
                    "{} must be positive and at most reconnect_backoff_ms_max {}",
                    self.reconnect_backoff_ms_min, self.reconnect_backoff_ms_max
                ),
            );
        }
        if self.keepalive_interval_ms == 0 || self.keepalive_interval_ms >= self.session_timeout_ms
        {
            return invalid(
                "keepalive_interval_ms",
                format!(
                    "{} must be positive and below session_timeout_ms {}",
                    self.keepalive_interval_ms, self.session_timeout_ms
                ),
            );
        }
        for (key, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("write_stall_timeout_ms", self.write_stall_timeout_ms),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
            (
                "inbound_connections_max",
                self.inbound_connections_max as u64,
            ),
        ] {
            if value == 0 {
                return invalid(key, "must be positive".into());
            }
        }
        Ok(())
    }
}

/// Why the transport or one of its connections failed. Connection errors end that
/// connection only (logged, counted); the transport keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A configuration value out of range.
    #[error("transport config `{key}`: {reason}")]
    Config {
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame prefix announced a negative size or one above `frame_bytes_max`.
    #[error("framing: {0}")]
    Framing(#[from] ProtocolError),
    /// Bytes that are not a valid handshake or frame.
    #[error("decoding: {0}")]
    Codec(#[from] CodecError),
    /// A connect or handshake did not finish in time.
    #[error("{what} timed out")]
    Timeout {
        /// Which step.
        what: &'static str,
    },
    /// The peer closed the connection before its handshake.
    #[error("connection closed during the handshake")]
    ClosedDuringHandshake,
    /// The peer belongs to another cluster.
    #[error("peer is in cluster {found:?}, not {expected:?}")]
    ClusterMismatch {
        /// Ours.
        expected: String,
        /// Theirs.
        found: String,
    },
    /// The peer claims our own broker id.
    #[error("peer claims this broker's id {id}")]
    SelfConnection {
        /// The id.
        id: BrokerId,
    },
    /// The broker at a peer's address is not the broker we meant to reach.
    #[error("expected broker {expected} at this address, found {found}")]
    UnexpectedBroker {
        /// The broker id we connected for.
        expected: BrokerId,
        /// The broker id it announced.
        found: BrokerId,
    },
    /// A frame, or a message in it, names a sender other than the handshake's broker.
    #[error("frame from broker {handshake} claims sender broker {claimed} / node {node}")]
    SpoofedSender {
        /// Broker id of the handshake.
        handshake: BrokerId,
        /// Broker id in the frame header.
        claimed: BrokerId,
        /// Raft node id in the offending message (or the frame's own, if the header lied).
        node: u64,
    },
    /// A received message addressed to a Raft node other than this broker's.
    #[error("message addressed to node {to}, not to this broker")]
    Misaddressed {
        /// The addressee it names.
        to: u64,
    },
    /// The peer closed an outbound connection.
    #[error("closed by peer")]
    ClosedByPeer,
    /// The peer sent bytes on an outbound connection, where it must send nothing.
    #[error("unexpected bytes from peer on an outbound connection")]
    UnexpectedBytes,
    /// The peer refused this broker's identity (a duplicate broker id or a stale
    /// incarnation; see the module docs).
    #[error("refused by broker {by}: {reason}")]
    Refused {
        /// The refusing broker.
        by: BrokerId,
        /// Why.
        code: RefusalCode,
        /// Its explanation.
        reason: String,
    },
    /// This broker refused a connecting peer's identity (and told it why).
    #[error("peer identity refused: {reason}")]
    IdentityRefused {
        /// Why.
        code: RefusalCode,
        /// The explanation sent to the peer.
        reason: String,
    },
    /// The process answering at a peer's address is an incarnation the metadata replaced.
    #[error("broker {broker} answers as incarnation {incarnation}, replaced by {replaced_by}")]
    StalePeer {
        /// The broker id.
        broker: BrokerId,
        /// The incarnation that answered.
        incarnation: Uuid,
        /// The incarnation registered after it.
        replaced_by: Uuid,
    },
}

/// Why [`Transport::send`] did not queue a message. The message is gone; each cause is
/// also counted in [`TransportCounters`]. Callers normally ignore it: Raft retransmits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No peer with this broker id (see [`Transport::set_peers`]).
    #[error("no peer {0}")]
    UnknownPeer(BrokerId),
    /// The peer's queue holds `inflight_bytes_max` already.
    #[error("queue to peer {0} is full")]
    QueueFull(BrokerId),
    /// The message alone would exceed `frame_bytes_max`.
    #[error("message of {bytes} bytes exceeds the frame limit")]
    TooLarge {
        /// Its encoded size.
        bytes: usize,
    },
    /// The transport was shut down.
    #[error("transport shut down")]
    ShutDown,
}

/// The envelopes of one received frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundBatch {
    /// The broker that sent them (from its handshake, checked against the frame).
    pub from_broker: BrokerId,
    /// The messages, in the order the sender queued them (heartbeats first).
    pub envelopes: Vec<Envelope>,
}

/// Counters, for metrics to export. Monotonic, updated with relaxed atomics.
#[derive(Debug, Default)]
pub struct TransportCounters {
    /// Frames written to peers.
    pub frames_sent: AtomicU64,
    /// Bytes of those frames (length prefixes included).
    pub bytes_sent: AtomicU64,
    /// Messages in those frames.
    pub messages_sent: AtomicU64,
    /// Frames received and decoded.
    pub frames_received: AtomicU64,
    /// Bytes of those frames (length prefixes included).
    pub bytes_received: AtomicU64,
    /// Messages in those frames.
    pub messages_received: AtomicU64,
    /// Messages dropped at `send` because the peer's queue was full.
    pub messages_dropped_queue_full: AtomicU64,
    /// Messages dropped at `send` because they would not fit a frame.
    pub messages_dropped_too_large: AtomicU64,
    /// Messages dropped at `send` because no such peer is configured.
    pub messages_dropped_unknown_peer: AtomicU64,
    /// Messages lost with a frame whose write failed.
    pub messages_dropped_disconnected: AtomicU64,
    /// Heartbeats replaced in a queue by a newer one of the same group and direction.
    pub heartbeats_coalesced: AtomicU64,
    /// Outbound connections re-established after a previous one ended.
    pub reconnects: AtomicU64,
    /// Outbound connection attempts (connect or handshake) that failed.
    pub connect_failures: AtomicU64,
    /// Inbound connections closed for invalid input (handshake, framing, decoding).
    pub inbound_rejected: AtomicU64,
    /// Inbound connections that ended, for any reason (rejected ones included).
    pub inbound_ended: AtomicU64,
    /// Handshakes this broker refused for their identity (duplicate or stale).
    pub identities_refused: AtomicU64,
    /// Empty keepalive frames sent (not counted in `frames_sent`).
    pub keepalives_sent: AtomicU64,
    /// Empty keepalive frames received (not counted in `frames_received`).
    pub keepalives_received: AtomicU64,
}

impl TransportCounters {
    fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn bump(&self, counter: &AtomicU64) {
        self.add(counter, 1);
    }

    /// Reads a counter (a convenience for tests and exporters).
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What the accept loop, the connections and the peer tasks share.
#[derive(Debug)]
struct Shared {
    config: TransportConfig,
    counters: Arc<TransportCounters>,
    inbound: mpsc::Sender<InboundBatch>,
    /// The latest registration each peer announced on an inbound connection.
    registrations: Mutex<HashMap<BrokerId, BrokerRegistrationInfo>>,
    /// Bumped after every change of `registrations`.
    registrations_changed: watch::Sender<u64>,
    /// Sessions, registrations and replaced incarnations (module `identity`).
    identities: Mutex<Identities>,
    /// Bumped when an incarnation is replaced, so its idle connections close.
    fences_changed: watch::Sender<u64>,
    /// Set once this process learns it may not speak for its broker id.
    fenced_self: watch::Sender<Option<String>>,
    /// A peer's hello said the metadata registers another incarnation of this broker.
    rejoining: AtomicBool,
    /// Per peer: since when every handshake with it was refused as a duplicate.
    duplicate_since: Mutex<HashMap<BrokerId, Instant>>,
    /// When each peer's last frame arrived, in milliseconds after `started` (plus one:
    /// zero is never), set by its inbound connection.
    heard: Mutex<HashMap<BrokerId, Arc<AtomicU64>>>,
    started: std::time::Instant,
}

impl Shared {
    /// The clock `broker`'s inbound connections stamp on every frame.
    fn heard_clock(&self, broker: BrokerId) -> Arc<AtomicU64> {
        Arc::clone(lock(&self.heard).entry(broker).or_default())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Our hello to `peer`, telling it which incarnation of it our metadata registers.
    fn hello_for(&self, peer: BrokerId) -> Hello {
        Hello {
            broker_id: self.config.broker_id,
            cluster_id: self.config.cluster_id.clone(),
            registration: self.config.registration.clone(),
            known_incarnation: lock(&self.identities).registered(peer),
        }
    }

    /// A peer's hello named the incarnation of this broker its metadata registers.
    fn note_known(&self, from: BrokerId, known: Option<Uuid>) {
        let Some(known) = known else { return };
        if known != self.config.registration.incarnation_id
            && !self.rejoining.swap(true, Ordering::AcqRel)
        {
            tracing::info!(
                peer = from,
                registered_incarnation = %known,
                "the cluster knew this broker as an earlier incarnation: rejoining"
            );
        }
    }

    /// Marks this process fenced (once): the broker stops with `reason`.
    fn fence_self(&self, reason: String) {
        tracing::error!(broker = self.config.broker_id, %reason, "this process is fenced");
        self.fenced_self.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }

    /// A peer refused our identity: a stale incarnation is fenced at once; a duplicate
    /// once the same peer has refused it for two session timeouts in a row (a dead
    /// predecessor's session would have expired by then, so the other process is alive).
    fn refused_by(&self, peer: BrokerId, code: RefusalCode, reason: &str) {
        let id = self.config.broker_id;
        match code {
            RefusalCode::StaleIncarnation => self.fence_self(format!(
                "broker {peer} refused node_id {id}'s incarnation {}: {reason}",
                self.config.registration.incarnation_id
            )),
            RefusalCode::DuplicateBroker => {
                tracing::error!(peer, %reason, "handshake refused: another process holds this node_id");
                let since = *lock(&self.duplicate_since)
                    .entry(peer)
                    .or_insert_with(Instant::now);
                let patience = Duration::from_millis(2 * self.config.session_timeout_ms);
                if since.elapsed() >= patience {
                    self.fence_self(format!(
                        "broker {peer} has refused node_id {id} for {} ms: {reason}",
                        since.elapsed().as_millis()
                    ));
                }
            }
        }
    }

    /// Records what `broker` announced in an inbound handshake. The latest handshake
    /// wins: incarnation ids are random, so arrival is the only order there is, and a
    /// restarted peer's handshake comes after its predecessor's.
    fn record_registration(&self, broker: BrokerId, registration: BrokerRegistrationInfo) {
        let previous = lock(&self.registrations).insert(broker, registration.clone());
        if previous.as_ref() == Some(&registration) {
            return;
        }
        match &previous {
            Some(previous) if previous.incarnation_id != registration.incarnation_id => {
                tracing::info!(
                    broker,
                    old_incarnation = %previous.incarnation_id,
                    new_incarnation = %registration.incarnation_id,
                    "peer broker restarted"
                );
            }
            _ => tracing::info!(broker, ?registration, "peer broker registered"),
        }
        // Outside the map's lock: a reader holding the watch's value while it reads the
        // map must not wait for a writer that waits for the watch.
        self.registrations_changed
            .send_modify(|version| *version += 1);
    }
}

/// A peer's state and its task.
#[derive(Debug)]
struct PeerEntry {
    peer: Arc<Peer>,
    task: JoinHandle<()>,
}

/// The inter-broker transport of one broker (see the module docs).
///
/// [`Transport::send`] and [`Transport::set_peers`] may be called from any thread,
/// inside the runtime or not; [`Transport::shutdown`] stops every task.
#[derive(Debug)]
pub struct Transport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    runtime: tokio::runtime::Handle,
    peers: Mutex<HashMap<BrokerId, PeerEntry>>,
    shutdown_tx: watch::Sender<bool>,
    shut_down: AtomicBool,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    /// Tasks of removed peers, still ending; [`Transport::shutdown`] awaits them too.
    retired_tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Transport {
    /// Validates `config`, binds `config.listen_addr`, starts accepting, and connects to
    /// `peers` (broker id → address; our own id is ignored). Received frames go to
    /// `inbound`. Must be called inside a tokio runtime, whose tasks it uses.
    pub async fn start(
        config: TransportConfig,
        peers: HashMap<BrokerId, SocketAddr>,
        inbound: mpsc::Sender<InboundBatch>,
    ) -> Result<Transport, TransportError> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen_addr).await?;
        let local_addr = listener.local_addr()?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            counters: Arc::new(TransportCounters::default()),
            inbound,
            registrations: Mutex::new(HashMap::new()),
            registrations_changed: watch::channel(0).0,
            identities: Mutex::new(Identities::new(Duration::from_millis(
                config.session_timeout_ms,
            ))),
            fences_changed: watch::channel(0).0,
            fenced_self: watch::channel(None).0,
            rejoining: AtomicBool::new(false),
            duplicate_since: Mutex::new(HashMap::new()),
            heard: Mutex::new(HashMap::new()),
            started: std::time::Instant::now(),
            config,
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), shutdown));
        let transport = Transport {
            shared,
            local_addr,
            runtime: tokio::runtime::Handle::current(),
            peers: Mutex::new(HashMap::new()),
            shutdown_tx,
            shut_down: AtomicBool::new(false),
            accept_task: Mutex::new(Some(accept_task)),
            retired_tasks: Mutex::new(Vec::new()),
        };
        transport.set_peers(peers);
        Ok(transport)
    }

    /// The address the listener is bound to (the port, when configured as 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters.
    pub fn counters(&self) -> &Arc<TransportCounters> {
        &self.shared.counters
    }

    /// The latest registration of every peer that completed a handshake on an inbound
    /// connection, by broker id: what each peer claims about itself. A peer stays here
    /// after its connection closes (liveness is not this map's concern); a restarted one
    /// replaces its predecessor's entry when it connects again.
    pub fn peer_registrations(&self) -> HashMap<BrokerId, BrokerRegistrationInfo> {
        lock(&self.shared.registrations).clone()
    }

    /// A receiver whose value is bumped after every change of
    /// [`Transport::peer_registrations`] (a new peer, a new incarnation or a changed
    /// field; a reconnect announcing the same registration is no change). It starts with
    /// the current value marked seen: call [`Transport::peer_registrations`] once, then
    /// again after each `changed()`.
    pub fn registrations_changed(&self) -> watch::Receiver<u64> {
        self.shared.registrations_changed.subscribe()
    }

    /// Records that the metadata log registers `broker` as `incarnation` (call in log
    /// order, for every registration applied). A registration that replaces another
    /// incarnation fences it here: its handshakes are refused and its connections close;
    /// the outbound connection to `broker` is reopened, so it reaches the new process. If
    /// the replaced incarnation is this process's own, this process is fenced.
    pub fn set_registered(&self, broker: BrokerId, incarnation: Uuid) {
        let replaced = lock(&self.shared.identities).register(broker, incarnation);
        let Some(replaced) = replaced else { return };
        tracing::info!(broker, %replaced, by = %incarnation, "incarnation replaced: fenced");
        self.shared.fences_changed.send_modify(|v| *v += 1);
        let own = &self.shared.config;
        if broker == own.broker_id {
            if replaced == own.registration.incarnation_id {
                self.shared.fence_self(format!(
                    "the cluster metadata registered node_id {broker} as incarnation {incarnation}, replacing this process's incarnation {replaced}"
                ));
            }
            return;
        }
        if let Some(entry) = lock(&self.peers).get(&broker) {
            lock(&entry.peer.state).addr_generation += 1;
            entry.peer.reconfigured.notify_one();
        }
    }

    /// Whether `incarnation` of `broker` has a live session at this broker (an open
    /// inbound connection heard from within `session_timeout_ms`).
    pub fn is_live(&self, broker: BrokerId, incarnation: Uuid) -> bool {
        lock(&self.shared.identities).is_live(broker, incarnation, Instant::now())
    }

    /// Whether a peer told this broker that the cluster metadata registers an earlier
    /// incarnation of it (it restarted, and the cluster knew it before).
    pub fn rejoining(&self) -> bool {
        self.shared.rejoining.load(Ordering::Acquire)
    }

    /// Becomes `Some(reason)` once this process may no longer speak for its broker id (a
    /// stale incarnation, or a duplicate of a live one); the broker must stop.
    pub fn fenced(&self) -> watch::Receiver<Option<String>> {
        self.shared.fenced_self.subscribe()
    }

    /// The peers (of [`Transport::set_peers`]) no frame has arrived from within
    /// `silence`, keepalives included: dead, cut off, stalled, or never heard from.
    pub fn silent_peers(&self, silence: Duration) -> HashSet<BrokerId> {
        let now = self.shared.now_ms();
        let silence_ms = silence.as_millis() as u64;
        let heard = lock(&self.shared.heard);
        lock(&self.peers)
            .keys()
            .copied()
            .filter(|broker| {
                heard.get(broker).is_none_or(|at| {
                    let at = at.load(Ordering::Relaxed);
                    at == 0 || now.saturating_sub(at) > silence_ms
                })
            })
            .collect()
    }

    /// Bytes queued for (or being written to) `broker`, if it is a peer.
    pub fn queued_bytes(&self, broker: BrokerId) -> Option<usize> {
        lock(&self.peers)
            .get(&broker)
            .map(|entry| lock(&entry.peer.state).queue.charged_bytes())
    }

    /// Replaces the peer set: new peers get a queue and a connection, removed ones lose
    /// theirs (queued messages are dropped), a changed address reconnects. Our own id
    /// is ignored. Does nothing after shutdown.
    pub fn set_peers(&self, peers: HashMap<BrokerId, SocketAddr>) {
        if self.shut_down.load(Ordering::Acquire) {
            return;
        }
        let mut current = lock(&self.peers);
        let removed: Vec<BrokerId> = current
            .keys()
            .filter(|id| !peers.contains_key(id))
            .copied()
            .collect();
        for id in removed {
            if let Some(entry) = current.remove(&id) {
                lock(&entry.peer.state).removed = true;
                entry.peer.reconfigured.notify_one();
                // The task sees `removed` and ends; it is not awaited here (this may run
                // on a thread outside the runtime), but by `shutdown`.
                let mut retired = lock(&self.retired_tasks);
                retired.retain(|task| !task.is_finished());
                retired.push(entry.task);
            }
        }
        for (id, addr) in peers {
            if id == self.shared.config.broker_id {
                continue;
            }
            if let Some(entry) = current.get(&id) {
                let mut state = lock(&entry.peer.state);
                if state.addr != addr {
                    state.addr = addr;
                    state.addr_generation += 1;
                    drop(state);
                    entry.peer.reconfigured.notify_one();
                }
                continue;
            }
            let peer = Arc::new(Peer::new(id, addr, self.shared.config.inflight_bytes_max));
            let task = self.runtime.spawn(peer::run(
                Arc::clone(&peer),
                Arc::clone(&self.shared),
                self.shutdown_tx.subscribe(),
            ));
            current.insert(id, PeerEntry { peer, task });
        }
    }

    /// Queues `envelope` for `to_broker`. Never blocks: a message that cannot be queued
    /// is dropped, counted, and reported (callers normally ignore the error, since Raft
    /// retransmits). Heartbeats replace the pending heartbeat of their group and direction.
    pub fn send(&self, to_broker: BrokerId, envelope: Envelope) -> Result<(), SendError> {
        let counters = &self.shared.counters;
        if self.shut_down.load(Ordering::Acquire) {
            return Err(SendError::ShutDown);
        }
        debug_assert_eq!(
            envelope.message.to,
            crate::replica::store::raft_node_id(to_broker),
            "message addressed to another node than broker {to_broker}'s"
        );
        let bytes = envelope.encoded_bytes();
        if FRAME_HEADER_BYTES + bytes > self.shared.config.frame_bytes_max {
            counters.bump(&counters.messages_dropped_too_large);
            return Err(SendError::TooLarge { bytes });
        }
        let Some(peer) = lock(&self.peers)
            .get(&to_broker)
            .map(|entry| Arc::clone(&entry.peer))
        else {
            counters.bump(&counters.messages_dropped_unknown_peer);
            return Err(SendError::UnknownPeer(to_broker));
        };
        let pushed = lock(&peer.state).queue.push(envelope, bytes);
        match pushed {
            Pushed::Queued => {}
            Pushed::Coalesced => counters.bump(&counters.heartbeats_coalesced),
            Pushed::Dropped => {
                counters.bump(&counters.messages_dropped_queue_full);
                return Err(SendError::QueueFull(to_broker));
            }
        }
        peer.queued.notify_one();
        Ok(())
    }

    /// Stops accepting, closes every connection and ends every task, then returns.
    /// Queued messages are dropped. Later sends fail with [`SendError::ShutDown`].
    pub async fn shutdown(&self) {
        self.shut_down.store(true, Ordering::Release);
        // `send_replace` stores the value even when every receiver is gone.
        self.shutdown_tx.send_replace(true);
        let accept_task = lock(&self.accept_task).take();
        if let Some(task) = accept_task {
            if let Err(error) = task.await {
                tracing::error!(%error, "inter-broker accept loop panicked");
            }
        }
        let peers: Vec<PeerEntry> = lock(&self.peers).drain().map(|(_, e)| e).collect();
        for entry in peers {
            if let Err(error) = entry.task.await {
                tracing::error!(peer = entry.peer.broker_id, %error, "peer task panicked");
            }
        }
        let retired: Vec<JoinHandle<()>> = lock(&self.retired_tasks).drain(..).collect();
        for task in retired {
            if let Err(error) = task.await {
                tracing::error!(%error, "removed peer's task panicked");
            }
        }
    }
}

/// Locks a mutex, recovering it if a panicking thread poisoned it: the data under
/// these locks (queues, peer maps) stays consistent between statements, and a panic
/// elsewhere must not take the transport down with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Resolves once the transport is shutting down (or was dropped without a shutdown).
/// Looks at the current value first, so a task that subscribed after the signal
/// still stops.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Checks a peer's handshake against our configuration (either side).
fn check_hello(config: &TransportConfig, hello: &Hello) -> Result<(), TransportError> {
    if hello.cluster_id != config.cluster_id {
        return Err(TransportError::ClusterMismatch {
            expected: config.cluster_id.clone(),
            found: hello.cluster_id.clone(),
        });
    }
    if hello.broker_id == config.broker_id {
        return Err(TransportError::SelfConnection {
            id: hello.broker_id,
        });
    }
    Ok(())
}

/// Accepts connections until shutdown, then waits for every connection to end (each
/// sees the same shutdown signal).
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(shared.config.inbound_connections_max));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        tracing::warn!(%addr, "inter-broker connection refused: inbound_connections_max reached");
                        continue;
                    };
                    let shared = Arc::clone(&shared);
                    let shutdown = shutdown.clone();
                    let span = tracing::info_span!("inter_broker_in", %addr);
                    connections.spawn(async move {
                        if let Err(error) = serve_inbound(stream, &shared, shutdown).await {
                            shared.counters.bump(&shared.counters.inbound_rejected);
                            tracing::warn!(%error, "inter-broker connection closed: peer not trusted");
                        }
                        shared.counters.bump(&shared.counters.inbound_ended);
                        drop(slot);
                    }.instrument(span));
                }
                Err(error) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%error, "inter-broker accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Serves one inbound connection: handshake, then frames until EOF, an error or
/// shutdown. `Ok` for a clean end; `Err` for a peer that misbehaved.
async fn serve_inbound(
    stream: TcpStream,
    shared: &Shared,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), TransportError> {
    let config = &shared.config;
    let counters = &shared.counters;
    stream.set_nodelay(true)?;
    let peer_ip = stream.peer_addr().ok().map(|addr| addr.ip());
    // The write half is kept for the whole connection: dropping it would send a FIN,
    // which the peer's writer takes for a lost connection.
    let (reader, mut writer) = stream.into_split();
    // The handshake is read with a limit of its own size, so a garbage prefix is
    // refused from its first four bytes; frames after it get `frame_bytes_max`. The
    // codec grows the buffer with the bytes that arrive, never to a claimed length.
    let mut frames = FramedRead::new(reader, FrameDecoder::new(HELLO_BYTES_MAX));
    let handshake_timeout = Duration::from_millis(config.handshake_timeout_ms);
    let hello = tokio::select! {
        _ = stopped(&mut shutdown) => return Ok(()),
        hello = tokio::time::timeout(handshake_timeout, frames.next()) => hello,
    };
    let hello = hello
        .map_err(|_| TransportError::Timeout { what: "handshake" })?
        .ok_or(TransportError::ClosedDuringHandshake)??;
    let hello = codec::decode_hello(hello.freeze())?;
    check_hello(config, &hello)?;
    let from_broker = hello.broker_id;
    let incarnation = hello.registration.incarnation_id;
    let from_node = crate::replica::store::raft_node_id(from_broker);
    let own_node = crate::replica::store::raft_node_id(config.broker_id);
    shared.note_known(from_broker, hello.known_incarnation);
    let admitted = lock(&shared.identities).admit(from_broker, incarnation, Instant::now());
    if let Err((code, reason)) = admitted {
        counters.bump(&counters.identities_refused);
        let refusal = codec::Refusal {
            broker_id: config.broker_id,
            code,
            reason: reason.clone(),
        };
        writer.write_all(&codec::encode_refusal(&refusal)).await?;
        // Let the refusal reach the peer before the connection drops.
        let _ = writer.shutdown().await;
        return Err(TransportError::IdentityRefused { code, reason });
    }
    // Ends the session's connection however this function returns.
    let _session = SessionGuard {
        shared,
        broker: from_broker,
        incarnation,
    };
    writer
        .write_all(&codec::encode_hello(&shared.hello_for(from_broker)))
        .await?;
    let mut registration = hello.registration;
    // A peer listening on every interface (0.0.0.0) is reached at the address its
    // connection came from.
    if registration
        .inter_broker_host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        if let Some(peer_ip) = peer_ip {
            registration.inter_broker_host = peer_ip.to_string();
        }
    }
    shared.record_registration(from_broker, registration);
    let heard = shared.heard_clock(from_broker);
    heard.store(shared.now_ms(), Ordering::Relaxed);
    *frames.decoder_mut() = FrameDecoder::new(config.frame_bytes_max);
    let mut fences = shared.fences_changed.subscribe();
    loop {
        let body = tokio::select! {
            _ = stopped(&mut shutdown) => return Ok(()),
            changed = fences.changed() => {
                if changed.is_ok() {
                    if let Err((code, reason)) =
                        lock(&shared.identities).heard(from_broker, incarnation, Instant::now())
                    {
                        return Err(TransportError::IdentityRefused { code, reason });
                    }
                }
                continue;
            }
            body = frames.next() => match body {
                None => return Ok(()),
                Some(body) => body?,
            },
        };
        // Every frame renews the session; a replaced incarnation's frames are never
        // delivered.
        if let Err((code, reason)) =
            lock(&shared.identities).heard(from_broker, incarnation, Instant::now())
        {
            return Err(TransportError::IdentityRefused { code, reason });
        }
        let frame_bytes = FRAME_PREFIX_BYTES + body.len();
        let frame = codec::decode_frame(body.freeze())?;
        // The handshake named the sender; nothing in a frame may claim another.
        if frame.sender_broker_id != from_broker {
            return Err(TransportError::SpoofedSender {
                handshake: from_broker,
                claimed: frame.sender_broker_id,
                node: crate::replica::store::raft_node_id(frame.sender_broker_id),
            });
        }
        for envelope in &frame.envelopes {
            if envelope.message.from != from_node {
                return Err(TransportError::SpoofedSender {
                    handshake: from_broker,
                    claimed: from_broker,
                    node: envelope.message.from,
                });
            }
            if envelope.message.to != own_node {
                return Err(TransportError::Misaddressed {
                    to: envelope.message.to,
                });
            }
        }
        heard.store(shared.now_ms(), Ordering::Relaxed);
        if frame.envelopes.is_empty() {
            counters.bump(&counters.keepalives_received);
            continue;
        }
        counters.bump(&counters.frames_received);
        counters.add(&counters.bytes_received, frame_bytes as u64);
        counters.add(&counters.messages_received, frame.envelopes.len() as u64);
        let batch = InboundBatch {
            from_broker,
            envelopes: frame.envelopes,
        };
        tokio::select! {
            _ = stopped(&mut shutdown) => return Ok(()),
            sent = shared.inbound.send(batch) => {
                if sent.is_err() {
                    // The consumer is gone (the broker is stopping): nothing to deliver to.
                    return Ok(());
                }
            }
        }
    }
}

/// Closes an admitted connection's share of its session when the connection ends.
struct SessionGuard<'a> {
    shared: &'a Shared,
    broker: BrokerId,
    incarnation: Uuid,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.identities).closed(self.broker, self.incarnation);
    }
}

#[cfg(test)]
mod tests;
