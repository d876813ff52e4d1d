//! Bytes on the inter-broker wire: the handshake ([`Hello`]) and frames of Raft
//! messages of many groups ([`Envelope`]s).
//!
//! # Frame layout (all integers big-endian)
//!
//! ```text
//! frame     = length:u32 (bytes after itself) version:u8 sender_broker_id:i32
//!             count:u32 envelope*count
//! envelope  = topic_id:16 partition:i32 from:u64 to:u64 term:u64 body_tag:u8 body
//! body      = PreVote           last_term:u64 last_end_offset:u64
//!           | PreVoteResponse   granted:bool
//!           | Vote              last_term:u64 last_end_offset:u64 leadership_transfer:bool
//!           | VoteResponse      granted:bool
//!           | Append            prev_end_offset:u64 prev_term:u64 commit_offset:u64
//!                               count:u32 entry*count
//!           | AppendAccepted    match_end_offset:u64
//!           | AppendRejected    prev_end_offset:u64 hint_term:u64 hint_end_offset:u64
//!           | Heartbeat         commit_offset:u64 quiesce:bool
//!           | HeartbeatResponse
//!           | ResetLog          start_offset:u64 start_term:u64 membership
//!           | TimeoutNow
//! entry     = term:u64 base_offset:u64 end_offset:u64 kind_tag:u8 [membership] length:u32 data
//! membership= count:u32 voter:u64*count count:u32 learner:u64*count   (strictly ascending)
//! bool      = 0 | 1
//! hello     = length:u32 magic:"RLTX" version:u8 broker_id:i32 cluster_id:string
//!             client_host:string client_port:u16 inter_broker_host:string
//!             inter_broker_port:u16 rack:nullable_string incarnation_id:16
//!             known_incarnation:16                 (nil: the receiver is not registered)
//! refusal   = length:u32 magic:"RLTN" version:u8 broker_id:i32 code:u8 reason:string
//!             (sent instead of a hello by a broker that refuses the connecting identity;
//!             code 0 = duplicate broker registration, 1 = stale incarnation)
//! string    = length:i16 utf8                  (at most 255 bytes each, see the constants)
//! nullable_string = -1:i16 | string
//! ```
//!
//! Encoding never copies entry data: the small headers go into one `BytesMut` and each
//! entry's `Bytes` becomes a chunk of its own in the [`EncodedFrame`], which is a [`Buf`]
//! a socket writes with vectored writes. Decoding slices entry data out of the received
//! frame (`Bytes::slice`, no copy).
//!
//! Decoding reads untrusted bytes through `rill-protocol`'s [`WireReader`]: every length and
//! count is checked against the bytes left before anything is allocated, preallocation is
//! capped ([`prealloc_capacity`]), and every unknown tag or non-canonical value is a typed
//! [`CodecError`]. The frame's length prefix is checked by [`FrameDecoder`] against
//! `frame_bytes_max` before the body is read.

use std::collections::{BTreeSet, VecDeque};
use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rill_protocol::decode::source::prealloc_capacity;
use rill_protocol::decode::{DecodeError, Source, WireReader};
use rill_protocol::frame::{FrameCodec, FRAME_PREFIX_BYTES};
use rill_protocol::ProtocolError;
use rill_raft::{AppendResult, Entry, EntryKind, Membership, Message, MessageBody, NodeId};
use tokio_util::codec::Decoder;
use uuid::Uuid;

use super::BrokerId;
use crate::replica::hard_state::ReplicaKey;

/// Version byte of frames and of the handshake. A peer speaking another version is
/// refused ([`CodecError::UnknownVersion`]) rather than guessed at.
///
/// * 1 — the first transport.
/// * 2 — the handshake carries the sender's [`BrokerRegistrationInfo`]. Frames are
///   unchanged, but one number covers both: a connection whose handshake is refused
///   never carries a frame, so frames of version 1 are never met by this build.
/// * 3 — a heartbeat carries the `quiesce` flag of idle groups.
/// * 4 — the handshake carries the incarnation the sender's metadata registers for the
///   receiver ([`Hello::known_incarnation`]), and a broker may answer a handshake with a
///   [`Refusal`].
/// * 5 — the registration carries the sender's inter-broker address, so a broker that
///   is not a controller voter (whose address no configuration lists) can be reached.
pub const WIRE_VERSION: u8 = 5;

/// First bytes of a handshake body, so a connection from something that is not a Rill
/// transport (a Kafka client on the wrong port) fails at once with a clear error.
pub const HELLO_MAGIC: [u8; 4] = *b"RLTX";

/// First bytes of a [`Refusal`] body (sent in place of the answering hello).
pub const REFUSAL_MAGIC: [u8; 4] = *b"RLTN";

/// Longest [`Refusal::reason`], in bytes.
pub const REFUSAL_REASON_BYTES_MAX: usize = 512;

/// Largest refusal body: magic, version, broker id, code, reason.
pub const REFUSAL_BYTES_MAX: usize = REFUSAL_MAGIC.len() + 1 + 4 + 1 + 2 + REFUSAL_REASON_BYTES_MAX;

/// Longest cluster id a handshake may carry.
pub const CLUSTER_ID_BYTES_MAX: usize = 255;

/// Longest [`BrokerRegistrationInfo::client_host`] a handshake may carry (a DNS name
/// is at most 253 bytes).
pub const CLIENT_HOST_BYTES_MAX: usize = 255;

/// Longest [`BrokerRegistrationInfo::rack`] a handshake may carry.
pub const RACK_BYTES_MAX: usize = 255;

/// Bytes of a handshake body besides its strings: magic, version, broker id, the four
/// string lengths, client port, inter-broker port, incarnation id, known incarnation.
const HELLO_FIXED_BYTES: usize = HELLO_MAGIC.len() + 1 + 4 + 2 + 2 + 2 + 2 + 2 + 2 + 16 + 16;

/// Largest handshake body: every string at its longest. The handshake is read with this
/// as its frame limit, so a peer cannot make the receiver buffer more before it is checked.
pub const HELLO_BYTES_MAX: usize =
    HELLO_FIXED_BYTES + CLUSTER_ID_BYTES_MAX + 2 * CLIENT_HOST_BYTES_MAX + RACK_BYTES_MAX;

/// Bytes of a frame before its first envelope: length prefix, version, sender, count.
pub const FRAME_HEADER_BYTES: usize = FRAME_PREFIX_BYTES + 1 + 4 + 4;

/// Largest frame whose whole buffer [`FrameDecoder`] reserves as soon as its length
/// prefix has arrived: one Raft append at its default `append_bytes_max` (1 MiB) fits.
pub const FRAME_RESERVE_WHOLE_BYTES_MAX: usize = 1024 * 1024;

/// Bytes every envelope takes at least: group (16 + 4), from, to, term, body tag.
const ENVELOPE_BYTES_MIN: usize = 16 + 4 + 8 + 8 + 8 + 1;
/// Bytes every entry takes at least: term, base and end offsets, kind tag, data length.
const ENTRY_BYTES_MIN: usize = 8 + 8 + 8 + 1 + 4;
/// Bytes of one node id in a membership.
const NODE_ID_BYTES: usize = 8;

mod body_tag {
    pub const PRE_VOTE: u8 = 0;
    pub const PRE_VOTE_RESPONSE: u8 = 1;
    pub const VOTE: u8 = 2;
    pub const VOTE_RESPONSE: u8 = 3;
    pub const APPEND: u8 = 4;
    pub const APPEND_ACCEPTED: u8 = 5;
    pub const APPEND_REJECTED: u8 = 6;
    pub const HEARTBEAT: u8 = 7;
    pub const HEARTBEAT_RESPONSE: u8 = 8;
    pub const RESET_LOG: u8 = 9;
    pub const TIMEOUT_NOW: u8 = 10;
}

mod kind_tag {
    pub const DATA: u8 = 0;
    pub const LEADER_CHANGE: u8 = 1;
    pub const MEMBERSHIP: u8 = 2;
}

/// One Raft message and the group (partition) it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The partition whose Raft group sent the message.
    pub group: ReplicaKey,
    /// The message itself.
    pub message: Message,
}

impl Envelope {
    /// Bytes this envelope takes in a frame, entry data included. The transport charges a
    /// peer's queue this much, and [`encode_frame`] computes the frame's length from it.
    pub fn encoded_bytes(&self) -> usize {
        ENVELOPE_BYTES_MIN + body_bytes(&self.message.body)
    }
}

/// A decoded frame: who sent it and the envelopes in the order they were sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Broker id the sender wrote into the frame (checked against its handshake).
    pub sender_broker_id: BrokerId,
    /// The messages.
    pub envelopes: Vec<Envelope>,
}

/// The handshake each side of a connection sends first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's broker id (never negative).
    pub broker_id: BrokerId,
    /// The cluster the sender belongs to; a mismatch closes the connection.
    pub cluster_id: String,
    /// How Kafka clients reach the sender, and which process it is.
    pub registration: BrokerRegistrationInfo,
    /// The incarnation of the *receiver* that the sender's cluster metadata registers, if
    /// any. A broker that started on an empty data directory learns from it that the
    /// cluster knew it before (it is rejoining, not bootstrapping), before the sender's
    /// first Raft message arrives on the connection.
    pub known_incarnation: Option<Uuid>,
}

/// Why a broker refused a connecting broker's identity ([`Refusal::code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalCode {
    /// Another process with this broker id holds a live session (Kafka:
    /// DUPLICATE_BROKER_REGISTRATION).
    DuplicateBroker,
    /// This incarnation of the broker id was replaced by a newer registered one: the
    /// process is fenced for good (Kafka: a stale broker epoch).
    StaleIncarnation,
}

/// The answer of a broker that refuses a handshake's identity, sent in place of its own
/// hello so the refused process can say why it cannot join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The refusing broker's id.
    pub broker_id: BrokerId,
    /// Why.
    pub code: RefusalCode,
    /// A readable explanation naming the ids and incarnations involved, at most
    /// [`REFUSAL_REASON_BYTES_MAX`] bytes (longer ones are cut at encoding).
    pub reason: String,
}

/// What a connecting broker receives back for its handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeReply {
    /// The peer's hello: the connection is up.
    Hello(Hello),
    /// The peer refused this broker's identity.
    Refused(Refusal),
}

/// What a broker tells its peers about itself in every handshake, for the controller to
/// publish: where Kafka clients reach it and which process start this is.
///
/// It is the sender's own claim, checked only for size: a peer that passed the cluster id
/// check is trusted to describe itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BrokerRegistrationInfo {
    /// Host (name or address) Kafka clients should connect to for this broker: its
    /// advertised listener. At most [`CLIENT_HOST_BYTES_MAX`] bytes.
    pub client_host: String,
    /// Port of that listener.
    pub client_port: u16,
    /// Host (name or address) other brokers connect to: its `inter_broker_listen`
    /// address. An unspecified address (`0.0.0.0`) is taken by the receiver to mean
    /// the address the handshake came from. At most [`CLIENT_HOST_BYTES_MAX`] bytes.
    pub inter_broker_host: String,
    /// Port of `inter_broker_listen`.
    pub inter_broker_port: u16,
    /// The broker's rack (`broker.rack`), if it has one. At most [`RACK_BYTES_MAX`] bytes.
    pub rack: Option<String>,
    /// Random per process start ([`BrokerRegistrationInfo::random_incarnation_id`]), so a
    /// restarted broker is told apart from the process it replaced even when every other
    /// field is the same.
    pub incarnation_id: Uuid,
}

impl BrokerRegistrationInfo {
    /// A fresh random (v4) incarnation id. Call it once per process start and keep it.
    pub fn random_incarnation_id() -> Uuid {
        uuid::Builder::from_random_bytes(rand::random()).into_uuid()
    }
}

/// Why received bytes are not a valid frame or handshake. Every variant is the peer's
/// fault; none is raised after allocating anything sized by the offending number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A length, count or field ran past the end of the frame, or bytes followed its end.
    #[error("malformed frame: {0}")]
    Wire(#[from] DecodeError),
    /// A version byte this build does not speak.
    #[error("unknown wire version {version} (this build speaks {WIRE_VERSION})")]
    UnknownVersion {
        /// The version read off the wire.
        version: u8,
    },
    /// A message body tag no `MessageBody` variant has.
    #[error("unknown message body tag {tag}")]
    UnknownBodyTag {
        /// The tag read off the wire.
        tag: u8,
    },
    /// An entry kind tag no `EntryKind` variant has.
    #[error("unknown entry kind tag {tag}")]
    UnknownEntryKindTag {
        /// The tag read off the wire.
        tag: u8,
    },
    /// A boolean byte other than 0 or 1.
    #[error("invalid boolean byte {value}")]
    InvalidBool {
        /// The byte read off the wire.
        value: u8,
    },
    /// Membership node ids not strictly ascending (the encoder writes a set in order, so
    /// anything else was not written by a Rill transport).
    #[error("membership node ids not strictly ascending")]
    MembershipNotAscending,
    /// A negative broker id (Kafka broker ids are `0..=i32::MAX`).
    #[error("negative broker id {id}")]
    NegativeBrokerId {
        /// The id read off the wire.
        id: i32,
    },
    /// A handshake that does not start with [`HELLO_MAGIC`].
    #[error("handshake magic {found:?} is not {HELLO_MAGIC:?}")]
    BadMagic {
        /// The first bytes received.
        found: [u8; 4],
    },
    /// A handshake cluster id longer than [`CLUSTER_ID_BYTES_MAX`].
    #[error("cluster id of {bytes} bytes, at most {CLUSTER_ID_BYTES_MAX} allowed")]
    ClusterIdTooLong {
        /// Its length.
        bytes: usize,
    },
    /// A handshake client host longer than [`CLIENT_HOST_BYTES_MAX`].
    #[error("client host of {bytes} bytes, at most {CLIENT_HOST_BYTES_MAX} allowed")]
    ClientHostTooLong {
        /// Its length.
        bytes: usize,
    },
    /// A handshake rack longer than [`RACK_BYTES_MAX`].
    #[error("rack of {bytes} bytes, at most {RACK_BYTES_MAX} allowed")]
    RackTooLong {
        /// Its length.
        bytes: usize,
    },
    /// A refusal code no [`RefusalCode`] has.
    #[error("unknown refusal code {code}")]
    UnknownRefusalCode {
        /// The code read.
        code: u8,
    },
    /// A refusal reason longer than [`REFUSAL_REASON_BYTES_MAX`].
    #[error("refusal reason of {bytes} bytes, at most {REFUSAL_REASON_BYTES_MAX} allowed")]
    RefusalReasonTooLong {
        /// Its length.
        bytes: usize,
    },
}

/// An encoded frame: small header chunks interleaved with the entry data `Bytes` of the
/// envelopes, untouched. A [`Buf`] whose [`Buf::chunks_vectored`] hands every chunk to a
/// vectored write, so entry data goes from the log's buffer to the socket without a copy.
#[derive(Debug, Default)]
pub struct EncodedFrame {
    chunks: VecDeque<Bytes>,
    remaining_bytes: usize,
}

impl EncodedFrame {
    /// The chunks not yet written (for tests that check pointer identity of entry data).
    pub fn chunks(&self) -> impl Iterator<Item = &Bytes> {
        self.chunks.iter()
    }

    /// The whole frame in one buffer: a copy, for tests and for tools, never the socket path.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.remaining_bytes);
        for chunk in &self.chunks {
            out.put_slice(chunk);
        }
        out.freeze()
    }

    fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.remaining_bytes += chunk.len();
            self.chunks.push_back(chunk);
        }
    }
}

impl Buf for EncodedFrame {
    fn remaining(&self) -> usize {
        self.remaining_bytes
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map(|c| c.as_ref()).unwrap_or_default()
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for (slot, chunk) in dst.iter_mut().zip(self.chunks.iter()) {
            *slot = IoSlice::new(chunk);
            filled += 1;
        }
        filled
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(
            cnt <= self.remaining_bytes,
            "advance {cnt} past the end of an encoded frame of {} bytes",
            self.remaining_bytes
        );
        self.remaining_bytes -= cnt;
        while cnt > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if cnt < front.len() {
                front.advance(cnt);
                break;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }
}

/// Splits received bytes into frame bodies (length prefix checked and removed).
///
/// `rill_protocol`'s [`FrameCodec`] refuses a prefix above `frame_bytes_max` before
/// reading the body and grows the buffer with the bytes that arrive, never to a claimed
/// length. Each growth re-copies what had arrived, so on top of it a frame of at most
/// [`FRAME_RESERVE_WHOLE_BYTES_MAX`] gets its whole buffer reserved once its prefix is
/// in: the socket then reads it straight into the buffer its entry data are sliced from.
/// (The broker's request framing does the same, for the same reason.) What a stalling
/// peer can make this reserve is bounded by that constant per connection.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    codec: FrameCodec,
}

impl FrameDecoder {
    /// Frames of at most `frame_bytes_max` bytes, length prefix excluded.
    pub fn new(frame_bytes_max: usize) -> FrameDecoder {
        FrameDecoder {
            codec: FrameCodec::new(frame_bytes_max),
        }
    }
}

impl Decoder for FrameDecoder {
    type Item = BytesMut;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ProtocolError> {
        if let Some(prefix) = src.first_chunk::<FRAME_PREFIX_BYTES>() {
            let size = u32::from_be_bytes(*prefix) as usize;
            let frame_len = FRAME_PREFIX_BYTES + size;
            if size <= FRAME_RESERVE_WHOLE_BYTES_MAX
                && size <= self.codec.frame_bytes_max()
                && src.len() < frame_len
            {
                src.reserve(frame_len - src.len());
            }
        }
        self.codec.decode(src)
    }
}

/// Bytes of a frame carrying these envelopes, length prefix included.
pub fn frame_bytes<'a>(envelopes: impl IntoIterator<Item = &'a Envelope>) -> usize {
    FRAME_HEADER_BYTES
        + envelopes
            .into_iter()
            .map(Envelope::encoded_bytes)
            .sum::<usize>()
}

/// Encodes a frame from `sender_broker_id` carrying `envelopes` in order.
///
/// The caller keeps frames below `frame_bytes_max` (which is below `i32::MAX`, so every
/// length and count fits the fields).
pub fn encode_frame(sender_broker_id: BrokerId, envelopes: &[Envelope]) -> EncodedFrame {
    let total_bytes = frame_bytes(envelopes);
    let body_bytes = total_bytes - FRAME_PREFIX_BYTES;
    assert!(
        i32::try_from(body_bytes).is_ok() && u32::try_from(envelopes.len()).is_ok(),
        "frame of {body_bytes} bytes and {} envelopes exceeds the wire's fields",
        envelopes.len()
    );
    let mut frame = EncodedFrame::default();
    // Headers only: entry data is pushed as chunks of its own, so this is small.
    let data_bytes: usize = envelopes.iter().map(|e| e.message.entry_bytes()).sum();
    let mut head = BytesMut::with_capacity(total_bytes - data_bytes);
    head.put_u32(body_bytes as u32);
    head.put_u8(WIRE_VERSION);
    head.put_i32(sender_broker_id);
    head.put_u32(envelopes.len() as u32);
    for envelope in envelopes {
        put_envelope(&mut head, &mut frame, envelope);
    }
    frame.push(head.freeze());
    debug_assert_eq!(frame.remaining(), total_bytes);
    frame
}

fn put_envelope(head: &mut BytesMut, frame: &mut EncodedFrame, envelope: &Envelope) {
    let (topic_id, partition) = envelope.group;
    let m = &envelope.message;
    head.put_u128(topic_id.as_u128());
    head.put_i32(partition);
    head.put_u64(m.from);
    head.put_u64(m.to);
    head.put_u64(m.term);
    match &m.body {
        MessageBody::PreVote {
            last_term,
            last_end_offset,
        } => {
            head.put_u8(body_tag::PRE_VOTE);
            head.put_u64(*last_term);
            head.put_u64(*last_end_offset);
        }
        MessageBody::PreVoteResponse { granted } => {
            head.put_u8(body_tag::PRE_VOTE_RESPONSE);
            head.put_u8(u8::from(*granted));
        }
        MessageBody::Vote {
            last_term,
            last_end_offset,
            leadership_transfer,
        } => {
            head.put_u8(body_tag::VOTE);
            head.put_u64(*last_term);
            head.put_u64(*last_end_offset);
            head.put_u8(u8::from(*leadership_transfer));
        }
        MessageBody::VoteResponse { granted } => {
            head.put_u8(body_tag::VOTE_RESPONSE);
            head.put_u8(u8::from(*granted));
        }
        MessageBody::Append {
            prev_end_offset,
            prev_term,
            entries,
            commit_offset,
        } => {
            head.put_u8(body_tag::APPEND);
            head.put_u64(*prev_end_offset);
            head.put_u64(*prev_term);
            head.put_u64(*commit_offset);
            head.put_u32(entries.len() as u32);
            for entry in entries {
                head.put_u64(entry.term);
                head.put_u64(entry.base_offset);
                head.put_u64(entry.end_offset);
                match &entry.kind {
                    EntryKind::Data => head.put_u8(kind_tag::DATA),
                    EntryKind::LeaderChange => head.put_u8(kind_tag::LEADER_CHANGE),
                    EntryKind::Membership(membership) => {
                        head.put_u8(kind_tag::MEMBERSHIP);
                        put_membership(head, membership);
                    }
                }
                head.put_u32(entry.data.len() as u32);
                if !entry.data.is_empty() {
                    // The header so far becomes a chunk, then the data itself (a refcount,
                    // not a copy); `split` leaves `head` empty with the rest of its capacity.
                    frame.push(head.split().freeze());
                    frame.push(entry.data.clone());
                }
            }
        }
        MessageBody::AppendResponse(AppendResult::Accepted { match_end_offset }) => {
            head.put_u8(body_tag::APPEND_ACCEPTED);
            head.put_u64(*match_end_offset);
        }
        MessageBody::AppendResponse(AppendResult::Rejected {
            prev_end_offset,
            hint_term,
            hint_end_offset,
        }) => {
            head.put_u8(body_tag::APPEND_REJECTED);
            head.put_u64(*prev_end_offset);
            head.put_u64(*hint_term);
            head.put_u64(*hint_end_offset);
        }
        MessageBody::Heartbeat {
            commit_offset,
            quiesce,
        } => {
            head.put_u8(body_tag::HEARTBEAT);
            head.put_u64(*commit_offset);
            head.put_u8(u8::from(*quiesce));
        }
        MessageBody::HeartbeatResponse => head.put_u8(body_tag::HEARTBEAT_RESPONSE),
        MessageBody::ResetLog {
            start_offset,
            start_term,
            membership,
        } => {
            head.put_u8(body_tag::RESET_LOG);
            head.put_u64(*start_offset);
            head.put_u64(*start_term);
            put_membership(head, membership);
        }
        MessageBody::TimeoutNow => head.put_u8(body_tag::TIMEOUT_NOW),
    }
}

fn put_membership(head: &mut BytesMut, membership: &Membership) {
    for set in [&membership.voters, &membership.learners] {
        head.put_u32(set.len() as u32);
        for id in set {
            head.put_u64(*id);
        }
    }
}

fn membership_bytes(membership: &Membership) -> usize {
    4 + 4 + NODE_ID_BYTES * (membership.voters.len() + membership.learners.len())
}

/// Bytes of a body after its tag.
fn body_bytes(body: &MessageBody) -> usize {
    match body {
        MessageBody::PreVote { .. } => 16,
        MessageBody::PreVoteResponse { .. } | MessageBody::VoteResponse { .. } => 1,
        MessageBody::Vote { .. } => 17,
        MessageBody::Append { entries, .. } => {
            24 + 4
                + entries
                    .iter()
                    .map(|e| {
                        ENTRY_BYTES_MIN
                            + e.data.len()
                            + match &e.kind {
                                EntryKind::Membership(m) => membership_bytes(m),
                                _ => 0,
                            }
                    })
                    .sum::<usize>()
        }
        MessageBody::AppendResponse(AppendResult::Accepted { .. }) => 8,
        MessageBody::AppendResponse(AppendResult::Rejected { .. }) => 24,
        MessageBody::Heartbeat { .. } => 9,
        MessageBody::HeartbeatResponse | MessageBody::TimeoutNow => 0,
        MessageBody::ResetLog { membership, .. } => 16 + membership_bytes(membership),
    }
}

/// Decodes a frame body (the bytes after its length prefix). Entry data are slices of
/// `body`, not copies.
pub fn decode_frame(body: Bytes) -> Result<Frame, CodecError> {
    let mut r = WireReader::new(body);
    version(&mut r)?;
    let sender_broker_id = broker_id(&mut r)?;
    let count = r.array_len(false, ENVELOPE_BYTES_MIN)?;
    let mut envelopes = Vec::with_capacity(prealloc_capacity::<Envelope>(count));
    for _ in 0..count {
        envelopes.push(envelope(&mut r)?);
    }
    r.finish()?;
    Ok(Frame {
        sender_broker_id,
        envelopes,
    })
}

/// Encodes a handshake, length prefix included.
///
/// The strings must be within their limits ([`CLUSTER_ID_BYTES_MAX`],
/// [`CLIENT_HOST_BYTES_MAX`], [`RACK_BYTES_MAX`]); `TransportConfig::validate` refuses a
/// configuration that breaks them, so a longer one here is a bug and panics.
pub fn encode_hello(hello: &Hello) -> Bytes {
    let registration = &hello.registration;
    for (what, bytes, max) in [
        ("cluster id", hello.cluster_id.len(), CLUSTER_ID_BYTES_MAX),
        (
            "client host",
            registration.client_host.len(),
            CLIENT_HOST_BYTES_MAX,
        ),
        (
            "inter-broker host",
            registration.inter_broker_host.len(),
            CLIENT_HOST_BYTES_MAX,
        ),
        (
            "rack",
            registration.rack.as_ref().map_or(0, String::len),
            RACK_BYTES_MAX,
        ),
    ] {
        assert!(
            bytes <= max,
            "{what} of {bytes} bytes, longer than {max} (TransportConfig::validate refuses it)"
        );
    }
    encode_hello_unchecked(hello)
}

/// [`encode_hello`] without the length checks, so tests can build what a misbehaving
/// peer sends. Every string must still fit its `i16` length field.
pub(crate) fn encode_hello_unchecked(hello: &Hello) -> Bytes {
    let registration = &hello.registration;
    let rack_bytes = registration.rack.as_ref().map_or(0, String::len);
    let body_bytes = HELLO_FIXED_BYTES
        + hello.cluster_id.len()
        + registration.client_host.len()
        + registration.inter_broker_host.len()
        + rack_bytes;
    let mut out = BytesMut::with_capacity(FRAME_PREFIX_BYTES + body_bytes);
    out.put_u32(body_bytes as u32);
    out.put_slice(&HELLO_MAGIC);
    out.put_u8(WIRE_VERSION);
    out.put_i32(hello.broker_id);
    put_string(&mut out, &hello.cluster_id);
    put_string(&mut out, &registration.client_host);
    out.put_u16(registration.client_port);
    put_string(&mut out, &registration.inter_broker_host);
    out.put_u16(registration.inter_broker_port);
    match &registration.rack {
        Some(rack) => put_string(&mut out, rack),
        None => out.put_i16(-1),
    }
    out.put_u128(registration.incarnation_id.as_u128());
    out.put_u128(hello.known_incarnation.unwrap_or(Uuid::nil()).as_u128());
    debug_assert_eq!(out.len(), FRAME_PREFIX_BYTES + body_bytes);
    out.freeze()
}

/// Encodes a refusal, length prefix included; a reason longer than
/// [`REFUSAL_REASON_BYTES_MAX`] is cut at a character boundary.
pub fn encode_refusal(refusal: &Refusal) -> Bytes {
    let mut cut = refusal.reason.len().min(REFUSAL_REASON_BYTES_MAX);
    while !refusal.reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &refusal.reason[..cut];
    let body_bytes = REFUSAL_MAGIC.len() + 1 + 4 + 1 + 2 + reason.len();
    let mut out = BytesMut::with_capacity(FRAME_PREFIX_BYTES + body_bytes);
    out.put_u32(body_bytes as u32);
    out.put_slice(&REFUSAL_MAGIC);
    out.put_u8(WIRE_VERSION);
    out.put_i32(refusal.broker_id);
    out.put_u8(match refusal.code {
        RefusalCode::DuplicateBroker => 0,
        RefusalCode::StaleIncarnation => 1,
    });
    put_string(&mut out, reason);
    out.freeze()
}

/// Decodes the answer to a handshake (the bytes after its length prefix): a hello or a
/// refusal, told apart by their magic.
pub fn decode_reply(body: Bytes) -> Result<HandshakeReply, CodecError> {
    if !body.starts_with(&REFUSAL_MAGIC) {
        return decode_hello(body).map(HandshakeReply::Hello);
    }
    let mut r = WireReader::new(body);
    for _ in REFUSAL_MAGIC {
        u8_(&mut r)?;
    }
    version(&mut r)?;
    let broker_id = broker_id(&mut r)?;
    let code = match u8_(&mut r)? {
        0 => RefusalCode::DuplicateBroker,
        1 => RefusalCode::StaleIncarnation,
        code => return Err(CodecError::UnknownRefusalCode { code }),
    };
    let reason = r.string(false)?;
    if reason.len() > REFUSAL_REASON_BYTES_MAX {
        return Err(CodecError::RefusalReasonTooLong {
            bytes: reason.len(),
        });
    }
    let reason = reason.to_string();
    r.finish()?;
    Ok(HandshakeReply::Refused(Refusal {
        broker_id,
        code,
        reason,
    }))
}

/// A Kafka STRING: `i16` length, then the UTF-8 bytes. Every string sent is bounded
/// far below `i16::MAX` (cluster id, hosts, rack, refusal reason); a longer one is cut
/// at a character boundary rather than panicking, and the peer's bounded decoder then
/// refuses the handshake.
fn put_string(out: &mut BytesMut, s: &str) {
    let mut end = s.len().min(i16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_i16(end as i16);
    out.put_slice(&s.as_bytes()[..end]);
}

/// Decodes a handshake body (the bytes after its length prefix).
pub fn decode_hello(body: Bytes) -> Result<Hello, CodecError> {
    let mut r = WireReader::new(body);
    let mut found = [0u8; 4];
    for byte in &mut found {
        *byte = u8_(&mut r)?;
    }
    if found != HELLO_MAGIC {
        return Err(CodecError::BadMagic { found });
    }
    version(&mut r)?;
    let broker_id = broker_id(&mut r)?;
    // Each string is a slice of the body, checked before it is copied into a `String`.
    let cluster_id = r.string(false)?;
    if cluster_id.len() > CLUSTER_ID_BYTES_MAX {
        return Err(CodecError::ClusterIdTooLong {
            bytes: cluster_id.len(),
        });
    }
    let client_host = r.string(false)?;
    if client_host.len() > CLIENT_HOST_BYTES_MAX {
        return Err(CodecError::ClientHostTooLong {
            bytes: client_host.len(),
        });
    }
    let client_port = r.uint16()?;
    let inter_broker_host = r.string(false)?;
    if inter_broker_host.len() > CLIENT_HOST_BYTES_MAX {
        return Err(CodecError::ClientHostTooLong {
            bytes: inter_broker_host.len(),
        });
    }
    let inter_broker_port = r.uint16()?;
    let rack = r.nullable_string(false)?;
    if let Some(rack) = &rack {
        if rack.len() > RACK_BYTES_MAX {
            return Err(CodecError::RackTooLong { bytes: rack.len() });
        }
    }
    let incarnation_id = r.uuid()?;
    let known_incarnation = Some(r.uuid()?).filter(|id| !id.is_nil());
    r.finish()?;
    Ok(Hello {
        broker_id,
        known_incarnation,
        cluster_id: cluster_id.to_string(),
        registration: BrokerRegistrationInfo {
            client_host: client_host.to_string(),
            client_port,
            inter_broker_host: inter_broker_host.to_string(),
            inter_broker_port,
            rack: rack.map(|rack| rack.to_string()),
            incarnation_id,
        },
    })
}

fn version(r: &mut WireReader) -> Result<(), CodecError> {
    match u8_(r)? {
        WIRE_VERSION => Ok(()),
        version => Err(CodecError::UnknownVersion { version }),
    }
}

fn broker_id(r: &mut WireReader) -> Result<BrokerId, CodecError> {
    match r.int32()? {
        id if id < 0 => Err(CodecError::NegativeBrokerId { id }),
        id => Ok(id),
    }
}

// The reader's primitives are Kafka's signed types; these reinterpret the same bits.
fn u8_(r: &mut WireReader) -> Result<u8, CodecError> {
    Ok(r.int8()? as u8)
}

fn u64_(r: &mut WireReader) -> Result<u64, CodecError> {
    Ok(r.int64()? as u64)
}

fn bool_(r: &mut WireReader) -> Result<bool, CodecError> {
    match u8_(r)? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(CodecError::InvalidBool { value }),
    }
}

fn envelope(r: &mut WireReader) -> Result<Envelope, CodecError> {
    let topic_id = r.uuid()?;
    let partition = r.int32()?;
    let from = u64_(r)?;
    let to = u64_(r)?;
    let term = u64_(r)?;
    let body = body(r)?;
    Ok(Envelope {
        group: (topic_id, partition),
        message: Message {
            from,
            to,
            term,
            body,
        },
    })
}

fn body(r: &mut WireReader) -> Result<MessageBody, CodecError> {
    Ok(match u8_(r)? {
        body_tag::PRE_VOTE => MessageBody::PreVote {
            last_term: u64_(r)?,
            last_end_offset: u64_(r)?,
        },
        body_tag::PRE_VOTE_RESPONSE => MessageBody::PreVoteResponse { granted: bool_(r)? },
        body_tag::VOTE => MessageBody::Vote {
            last_term: u64_(r)?,
            last_end_offset: u64_(r)?,
            leadership_transfer: bool_(r)?,
        },
        body_tag::VOTE_RESPONSE => MessageBody::VoteResponse { granted: bool_(r)? },
        body_tag::APPEND => {
            let prev_end_offset = u64_(r)?;
            let prev_term = u64_(r)?;
            let commit_offset = u64_(r)?;
            let count = r.array_len(false, ENTRY_BYTES_MIN)?;
            let mut entries = Vec::with_capacity(prealloc_capacity::<Entry>(count));
            for _ in 0..count {
                entries.push(entry(r)?);
            }
            MessageBody::Append {
                prev_end_offset,
                prev_term,
                entries,
                commit_offset,
            }
        }
        body_tag::APPEND_ACCEPTED => MessageBody::AppendResponse(AppendResult::Accepted {
            match_end_offset: u64_(r)?,
        }),
        body_tag::APPEND_REJECTED => MessageBody::AppendResponse(AppendResult::Rejected {
            prev_end_offset: u64_(r)?,
            hint_term: u64_(r)?,
            hint_end_offset: u64_(r)?,
        }),
        body_tag::HEARTBEAT => MessageBody::Heartbeat {
            commit_offset: u64_(r)?,
            quiesce: bool_(r)?,
        },
        body_tag::HEARTBEAT_RESPONSE => MessageBody::HeartbeatResponse,
        body_tag::RESET_LOG => MessageBody::ResetLog {
            start_offset: u64_(r)?,
            start_term: u64_(r)?,
            membership: membership(r)?,
        },
        body_tag::TIMEOUT_NOW => MessageBody::TimeoutNow,
        tag => return Err(CodecError::UnknownBodyTag { tag }),
    })
}

fn entry(r: &mut WireReader) -> Result<Entry, CodecError> {
    let term = u64_(r)?;
    let base_offset = u64_(r)?;
    let end_offset = u64_(r)?;
    let kind = match u8_(r)? {
        kind_tag::DATA => EntryKind::Data,
        kind_tag::LEADER_CHANGE => EntryKind::LeaderChange,
        kind_tag::MEMBERSHIP => EntryKind::Membership(membership(r)?),
        tag => return Err(CodecError::UnknownEntryKindTag { tag }),
    };
    // A slice of the frame: the record batch is not copied on the way to the log.
    let data = r.bytes(false)?;
    Ok(Entry {
        term,
        base_offset,
        end_offset,
        kind,
        data,
    })
}

fn membership(r: &mut WireReader) -> Result<Membership, CodecError> {
    Ok(Membership {
        voters: node_set(r)?,
        learners: node_set(r)?,
    })
}

fn node_set(r: &mut WireReader) -> Result<BTreeSet<NodeId>, CodecError> {
    let count = r.array_len(false, NODE_ID_BYTES)?;
    let mut set = BTreeSet::new();
    let mut previous: Option<NodeId> = None;
    for _ in 0..count {
        let id = u64_(r)?;
        if previous.is_some_and(|p| p >= id) {
            return Err(CodecError::MembershipNotAscending);
        }
        previous = Some(id);
        set.insert(id);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node_set() -> impl Strategy<Value = BTreeSet<NodeId>> {
        proptest::collection::btree_set(any::<u64>(), 0..5)
    }

    fn membership() -> impl Strategy<Value = Membership> {
        (node_set(), node_set()).prop_map(|(voters, learners)| Membership { voters, learners })
    }

    fn entry() -> impl Strategy<Value = Entry> {
        let kind = prop_oneof![
            Just(EntryKind::Data),
            Just(EntryKind::LeaderChange),
            membership().prop_map(EntryKind::Membership),
        ];
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            kind,
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(term, base_offset, end_offset, kind, data)| Entry {
                term,
                base_offset,
                end_offset,
                kind,
                data: Bytes::from(data),
            })
    }

    fn body() -> impl Strategy<Value = MessageBody> {
        prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(last_term, last_end_offset)| {
                MessageBody::PreVote {
                    last_term,
                    last_end_offset,
                }
            }),
            any::<bool>().prop_map(|granted| MessageBody::PreVoteResponse { granted }),
            (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
                |(last_term, last_end_offset, leadership_transfer)| MessageBody::Vote {
                    last_term,
                    last_end_offset,
                    leadership_transfer,
                }
            ),
            any::<bool>().prop_map(|granted| MessageBody::VoteResponse { granted }),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(entry(), 0..4),
                any::<u64>()
            )
                .prop_map(|(prev_end_offset, prev_term, entries, commit_offset)| {
                    MessageBody::Append {
                        prev_end_offset,
                        prev_term,
                        entries,
                        commit_offset,
                    }
                }),
            any::<u64>().prop_map(|match_end_offset| MessageBody::AppendResponse(
                AppendResult::Accepted { match_end_offset }
            )),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(prev_end_offset, hint_term, hint_end_offset)| MessageBody::AppendResponse(
                    AppendResult::Rejected {
                        prev_end_offset,
                        hint_term,
                        hint_end_offset,
                    }
                )
            ),
            (any::<u64>(), any::<bool>()).prop_map(|(commit_offset, quiesce)| {
                MessageBody::Heartbeat {
                    commit_offset,
                    quiesce,
                }
            }),
            Just(MessageBody::HeartbeatResponse),
            (any::<u64>(), any::<u64>(), membership()).prop_map(
                |(start_offset, start_term, membership)| MessageBody::ResetLog {
                    start_offset,
                    start_term,
                    membership,
                }
            ),
            Just(MessageBody::TimeoutNow),
        ]
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        (
            any::<u128>(),
            any::<i32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            body(),
        )
            .prop_map(|(topic, partition, from, to, term, body)| Envelope {
                group: (Uuid::from_u128(topic), partition),
                message: Message {
                    from,
                    to,
                    term,
                    body,
                },
            })
    }

    /// At most 63 characters of any script: at most 252 bytes, within every string limit.
    fn short_string() -> impl Strategy<Value = String> {
        ".{0,63}"
    }

    fn hello() -> impl Strategy<Value = Hello> {
        (
            0..=i32::MAX,
            short_string(),
            short_string(),
            any::<u16>(),
            (short_string(), any::<u16>()),
            proptest::option::of(short_string()),
            any::<u128>(),
            proptest::option::of(1..=u128::MAX),
        )
            .prop_map(
                |(
                    broker_id,
                    cluster_id,
                    client_host,
                    client_port,
                    (inter_broker_host, inter_broker_port),
                    rack,
                    incarnation,
                    known,
                )| {
                    Hello {
                        broker_id,
                        cluster_id,
                        known_incarnation: known.map(Uuid::from_u128),
                        registration: BrokerRegistrationInfo {
                            client_host,
                            client_port,
                            inter_broker_host,
                            inter_broker_port,
                            rack,
                            incarnation_id: Uuid::from_u128(incarnation),
                        },
                    }
                },
            )
    }

    /// A handshake body as the socket reader hands it over (length prefix stripped).
    fn hello_body(hello: &Hello) -> Bytes {
        let mut bytes = encode_hello_unchecked(hello);
        let prefix = bytes.get_u32() as usize;
        assert_eq!(
            prefix,
            bytes.len(),
            "length prefix counts the bytes after it"
        );
        bytes
    }

    fn sample_hello() -> Hello {
        Hello {
            broker_id: 42,
            cluster_id: "rill-test".into(),
            known_incarnation: Some(Uuid::from_u128(0x0fed_cba9)),
            registration: BrokerRegistrationInfo {
                client_host: "broker-42.example".into(),
                client_port: 9092,
                inter_broker_host: "10.0.0.42".into(),
                inter_broker_port: 9093,
                rack: Some("eu-west-1a".into()),
                incarnation_id: Uuid::from_u128(0x1234_5678_9abc_def0),
            },
        }
    }

    /// The frame body as the socket reader hands it over: the length prefix checked
    /// and stripped.
    fn body_of(frame: &EncodedFrame) -> Bytes {
        let mut bytes = frame.to_bytes();
        let prefix = bytes.get_u32() as usize;
        assert_eq!(
            prefix,
            bytes.len(),
            "length prefix counts the bytes after it"
        );
        bytes
    }

    proptest! {
        #[test]
        fn every_message_survives_a_round_trip(
            sender in 0..=i32::MAX,
            envelopes in proptest::collection::vec(envelope(), 0..8),
        ) {
            let frame = encode_frame(sender, &envelopes);
            prop_assert_eq!(frame.remaining(), frame_bytes(&envelopes));
            let decoded = decode_frame(body_of(&frame)).expect("own encoding decodes");
            prop_assert_eq!(decoded.sender_broker_id, sender);
            prop_assert_eq!(decoded.envelopes, envelopes);
        }

        #[test]
        fn every_hello_survives_a_round_trip(hello in hello()) {
            let encoded = encode_hello(&hello);
            prop_assert!(encoded.len() - FRAME_PREFIX_BYTES <= HELLO_BYTES_MAX);
            prop_assert_eq!(decode_hello(hello_body(&hello)), Ok(hello));
        }

        #[test]
        fn mutated_hellos_never_panic(
            hello in hello(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = hello_body(&hello).to_vec();
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            let _ = decode_hello(Bytes::from(bytes.clone()));
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = decode_hello(Bytes::from(bytes));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(Bytes::from(bytes.clone()));
            let _ = decode_hello(Bytes::from(bytes));
        }

        #[test]
        fn mutated_frames_never_panic(
            envelopes in proptest::collection::vec(envelope(), 1..4),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = body_of(&encode_frame(7, &envelopes)).to_vec();
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            let _ = decode_frame(Bytes::from(bytes.clone()));
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = decode_frame(Bytes::from(bytes));
        }
    }

    fn append(data: Vec<Bytes>) -> Envelope {
        Envelope {
            group: (Uuid::from_u128(9), 3),
            message: Message {
                from: 1,
                to: 2,
                term: 4,
                body: MessageBody::Append {
                    prev_end_offset: 0,
                    prev_term: 0,
                    entries: data
                        .into_iter()
                        .enumerate()
                        .map(|(i, data)| Entry {
                            term: 4,
                            base_offset: i as u64,
                            end_offset: i as u64 + 1,
                            kind: EntryKind::Data,
                            data,
                        })
                        .collect(),
                    commit_offset: 0,
                },
            },
        }
    }

    fn entry_data(envelope: &Envelope) -> Vec<Bytes> {
        match &envelope.message.body {
            MessageBody::Append { entries, .. } => entries.iter().map(|e| e.data.clone()).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn entry_data_is_sent_from_its_own_buffer_and_received_as_a_slice_of_the_frame() {
        let data = vec![Bytes::from(vec![1u8; 1000]), Bytes::from(vec![2u8; 3000])];
        let frame = encode_frame(1, &[append(data.clone())]);
        // Sending: each entry's data is a chunk pointing at the caller's buffer.
        for d in &data {
            assert!(
                frame
                    .chunks()
                    .any(|c| c.as_ptr() == d.as_ptr() && c.len() == d.len()),
                "entry data was copied into the frame"
            );
        }
        // Receiving: the decoded data lies inside the received frame's buffer.
        let body = body_of(&frame);
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        let decoded = decode_frame(body.clone()).unwrap();
        let received = entry_data(&decoded.envelopes[0]);
        assert_eq!(received, data);
        for r in &received {
            assert!(
                range.contains(&(r.as_ptr() as usize)),
                "entry data was copied out of the frame"
            );
        }
    }

    #[test]
    fn encoded_frame_writes_every_chunk_in_order_through_partial_advances() {
        let data = vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defgh")];
        let mut frame = encode_frame(1, &[append(data)]);
        let whole = frame.to_bytes();
        let mut written = Vec::new();
        while frame.has_remaining() {
            let mut slices = [IoSlice::new(&[]); 3];
            let n = frame.chunks_vectored(&mut slices);
            assert!(n > 0);
            // Write at most 5 bytes at a time, as a congested socket would.
            let take = frame.chunk().len().min(5);
            written.extend_from_slice(&frame.chunk()[..take]);
            frame.advance(take);
        }
        assert_eq!(written, whole);
    }

    #[test]
    fn unknown_version_and_tags_are_typed_errors() {
        let heartbeat = Envelope {
            group: (Uuid::nil(), 0),
            message: Message {
                from: 1,
                to: 2,
                term: 1,
                body: MessageBody::HeartbeatResponse,
            },
        };
        let body = body_of(&encode_frame(1, std::slice::from_ref(&heartbeat)));
        let mut bad_version = body.to_vec();
        bad_version[0] = 9;
        assert_eq!(
            decode_frame(bad_version.into()),
            Err(CodecError::UnknownVersion { version: 9 })
        );
        let mut bad_tag = body.to_vec();
        let tag_at = 1 + 4 + 4 + ENVELOPE_BYTES_MIN - 1;
        bad_tag[tag_at] = 200;
        assert_eq!(
            decode_frame(bad_tag.into()),
            Err(CodecError::UnknownBodyTag { tag: 200 })
        );
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert!(matches!(
            decode_frame(trailing.into()),
            Err(CodecError::Wire(DecodeError::TrailingBytes { left: 1 }))
        ));
    }

    #[test]
    fn a_huge_count_is_refused_before_allocating() {
        let mut body = BytesMut::new();
        body.put_u8(WIRE_VERSION);
        body.put_u32(1);
        body.put_u32(0x7fff_ffff);
        assert!(matches!(
            decode_frame(body.freeze()),
            Err(CodecError::Wire(DecodeError::CountTooLarge { .. }))
        ));
    }

    #[test]
    fn hello_round_trips_and_rejects_foreign_bytes() {
        let hello = sample_hello();
        let mut bytes = encode_hello(&hello);
        bytes.advance(FRAME_PREFIX_BYTES);
        assert_eq!(decode_hello(bytes), Ok(hello.clone()));
        let no_rack = Hello {
            registration: BrokerRegistrationInfo {
                rack: None,
                ..hello.registration
            },
            ..hello
        };
        assert_eq!(decode_hello(hello_body(&no_rack)), Ok(no_rack));
        assert!(matches!(
            decode_hello(Bytes::from_static(b"\0\0\0\x10GET / HTTP/1.1")),
            Err(CodecError::BadMagic { .. })
        ));
    }

    #[test]
    fn a_refusal_round_trips_is_told_from_a_hello_and_is_bounded() {
        let refusal = Refusal {
            broker_id: 3,
            code: RefusalCode::StaleIncarnation,
            reason: "broker 2 incarnation x was replaced".into(),
        };
        let mut bytes = encode_refusal(&refusal);
        bytes.advance(FRAME_PREFIX_BYTES);
        assert!(bytes.len() <= REFUSAL_BYTES_MAX);
        assert_eq!(decode_reply(bytes), Ok(HandshakeReply::Refused(refusal)));
        assert_eq!(
            decode_reply(hello_body(&sample_hello())),
            Ok(HandshakeReply::Hello(sample_hello()))
        );
        let long = Refusal {
            broker_id: 1,
            code: RefusalCode::DuplicateBroker,
            reason: "é".repeat(REFUSAL_REASON_BYTES_MAX),
        };
        let mut bytes = encode_refusal(&long);
        bytes.advance(FRAME_PREFIX_BYTES);
        assert_eq!(
            bytes.len(),
            REFUSAL_BYTES_MAX,
            "the reason is cut to its bound"
        );
        assert!(matches!(
            decode_reply(bytes),
            Ok(HandshakeReply::Refused(_))
        ));
        let mut bad_code = encode_refusal(&long).to_vec();
        bad_code[FRAME_PREFIX_BYTES + REFUSAL_MAGIC.len() + 1 + 4] = 9;
        assert_eq!(
            decode_reply(Bytes::from(bad_code).slice(FRAME_PREFIX_BYTES..)),
            Err(CodecError::UnknownRefusalCode { code: 9 })
        );
    }

    #[test]
    fn a_hello_of_the_version_before_registrations_is_refused_as_unknown() {
        // Version 1 as it was sent: magic, version, broker id, cluster id, nothing more.
        let mut old = BytesMut::new();
        old.put_slice(&HELLO_MAGIC);
        old.put_u8(1);
        old.put_i32(7);
        old.put_i16(9);
        old.put_slice(b"rill-test");
        assert_eq!(
            decode_hello(old.freeze()),
            Err(CodecError::UnknownVersion { version: 1 })
        );
    }

    #[test]
    fn hello_strings_are_bounded_at_255_bytes_on_decode() {
        let at_limit = |n: usize| "h".repeat(n);
        let mut hello = sample_hello();
        hello.cluster_id = at_limit(CLUSTER_ID_BYTES_MAX);
        hello.registration.client_host = at_limit(CLIENT_HOST_BYTES_MAX);
        hello.registration.inter_broker_host = at_limit(CLIENT_HOST_BYTES_MAX);
        hello.registration.rack = Some(at_limit(RACK_BYTES_MAX));
        let longest = encode_hello(&hello);
        assert_eq!(longest.len() - FRAME_PREFIX_BYTES, HELLO_BYTES_MAX);
        assert_eq!(decode_hello(hello_body(&hello)), Ok(hello));

        let mut long_host = sample_hello();
        long_host.registration.client_host = at_limit(CLIENT_HOST_BYTES_MAX + 1);
        assert_eq!(
            decode_hello(hello_body(&long_host)),
            Err(CodecError::ClientHostTooLong { bytes: 256 })
        );
        let mut long_inter_broker_host = sample_hello();
        long_inter_broker_host.registration.inter_broker_host = at_limit(CLIENT_HOST_BYTES_MAX + 1);
        assert_eq!(
            decode_hello(hello_body(&long_inter_broker_host)),
            Err(CodecError::ClientHostTooLong { bytes: 256 })
        );
        let mut long_rack = sample_hello();
        long_rack.registration.rack = Some(at_limit(RACK_BYTES_MAX + 1));
        assert_eq!(
            decode_hello(hello_body(&long_rack)),
            Err(CodecError::RackTooLong { bytes: 256 })
        );
        let mut long_cluster = sample_hello();
        long_cluster.cluster_id = at_limit(CLUSTER_ID_BYTES_MAX + 1);
        assert_eq!(
            decode_hello(hello_body(&long_cluster)),
            Err(CodecError::ClusterIdTooLong { bytes: 256 })
        );
        // A length beyond the bytes left is refused before anything is read or copied.
        let mut claims_more = hello_body(&sample_hello()).to_vec();
        let host_length_at = HELLO_MAGIC.len() + 1 + 4 + 2 + "rill-test".len();
        claims_more[host_length_at..host_length_at + 2].copy_from_slice(&0x7fffi16.to_be_bytes());
        assert!(matches!(
            decode_hello(claims_more.into()),
            Err(CodecError::Wire(DecodeError::Truncated { .. }))
        ));
    }

    #[test]
    #[should_panic(expected = "client host of 256 bytes")]
    fn encoding_an_over_long_client_host_is_a_bug() {
        let mut hello = sample_hello();
        hello.registration.client_host = "h".repeat(CLIENT_HOST_BYTES_MAX + 1);
        encode_hello(&hello);
    }
}
