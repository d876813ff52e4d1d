//! rill-protocol: the Kafka wire protocol as Rill speaks it, with no sockets and no runtime.
//!
//! # Layout
//!
//! * [`frame`] — [`frame::FrameCodec`], the tokio-util codec for 4-byte size-prefixed frames;
//!   refuses oversized frames from the prefix alone.
//! * [`header`] — request headers v0–v2 and response headers v0–v1, parsed by hand with every
//!   read bounds-checked ([`header::parse_request_header`], [`header::write_response_header`],
//!   and the client-side [`header::encode_request_header`] / [`header::parse_response_header`]).
//! * [`versions`] — the table of served API versions ([`versions::SUPPORTED`]), the single
//!   source of truth for ApiVersions and UNSUPPORTED_VERSION; header versions per api/version.
//! * [`decode`] — Rill's own bounded decoders for every message body read from a peer
//!   (requests the broker serves, responses the client reads), filling `kafka-protocol`'s
//!   structs; checked against upstream by an oracle test.
//! * [`codec`] — message bodies in and out: our decoders, `kafka-protocol`'s encoders:
//!   [`codec::decode_request`], [`codec::decode_request_kind`] (dispatch),
//!   [`codec::encode_response`]; client side [`codec::encode_request`],
//!   [`codec::decode_response`].
//! * [`fetch`] — Fetch responses encoded by hand ([`fetch::encode_fetch_response`]) as small
//!   metadata chunks plus the record slices from storage, for vectored writes without copying
//!   record bytes.
//! * [`batch`] — RecordBatch v2: re-exports the layout's one home, the `rill-record` crate
//!   ([`batch::BatchView`], [`batch::batches`], [`batch::Records`], writers, client rules),
//!   and adds [`batch::BatchBuilder`] and [`batch::DecompressRecords`] (codecs behind the
//!   `compression` feature).
//! * [`error`] — [`ProtocolError`], one variant per cause, with
//!   [`ProtocolError::kafka_error_code`].
//!
//! Message types come from `kafka-protocol` (re-exported as [`kafka_protocol`]) so that the
//! broker and client use exactly one version. Only its structs and encoders are used: its
//! decoders preallocate counts read off the wire, so the workspace's `clippy.toml` forbids
//! them outside tests.
//!
//! Outside `src/`: `tests/fuzz_decoder.rs` (random and mutated frames against the broker's and
//! the client's decode paths, with a counting allocator) and `benches/fetch_encode.rs`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod batch;
pub mod codec;
pub mod decode;
pub mod error;
pub mod fetch;
pub mod frame;
pub mod header;
pub mod versions;

pub use error::ProtocolError;
pub use kafka_protocol;
