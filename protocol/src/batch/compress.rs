//! Record compression (gzip, snappy, lz4, zstd behind the `compression` feature) and
//! [`DecompressRecords`], bounded decompression of a batch's records section. Clients
//! decompress; the broker only for a topic whose `compression.type` asks for another codec.

use bytes::Bytes;
use rill_record::BatchView;

use crate::error::ProtocolError;

/// Default cap on a batch's decompressed records ([`DecompressRecords::decompress_records`]):
/// generous for real batches (Kafka's `message.max.bytes` defaults to 1 MiB compressed), but
/// a bound on what a few compressed bytes can make a consumer allocate.
pub const DECOMPRESSED_RECORDS_BYTES_MAX_DEFAULT: usize = 256 * 1024 * 1024;

/// Decompression of a [`BatchView`]'s records section (the view itself lives in
/// `rill-record`, which knows no codecs).
pub trait DecompressRecords {
    /// Decompresses the records section, refusing more than
    /// [`DECOMPRESSED_RECORDS_BYTES_MAX_DEFAULT`] bytes of output; see
    /// [`DecompressRecords::decompress_records_bounded`].
    fn decompress_records(&self) -> Result<Bytes, ProtocolError> {
        self.decompress_records_bounded(DECOMPRESSED_RECORDS_BYTES_MAX_DEFAULT)
    }

    /// Decompresses the records section (requires the `compression` feature for anything but
    /// [`Compression::None`](super::Compression::None), which is returned as a copy).
    ///
    /// Compressed data comes from a peer and can expand a thousandfold (gzip, zstd), so the
    /// output is capped at `decompressed_bytes_max`: more is
    /// [`ProtocolError::DecompressedTooLarge`]. Memory used stays within about twice the cap,
    /// plus for zstd a window of at most the cap rounded up to a power of two, or 8 MiB.
    fn decompress_records_bounded(
        &self,
        decompressed_bytes_max: usize,
    ) -> Result<Bytes, ProtocolError>;
}

impl DecompressRecords for BatchView<'_> {
    fn decompress_records_bounded(
        &self,
        decompressed_bytes_max: usize,
    ) -> Result<Bytes, ProtocolError> {
        let codec = self
            .compression()
            .ok_or(ProtocolError::CompressionUnavailable {
                codec: self.compression_id(),
            })?;
        codecs::decompress(codec, self.records_bytes(), decompressed_bytes_max)
    }
}

pub(super) use codecs::compress;

#[cfg(feature = "compression")]
mod codecs {
    use std::io::Read;

    use crate::batch::Compression;
    use crate::error::ProtocolError;
    use bytes::{BufMut, Bytes, BytesMut};
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};

    // kafka-protocol's codecs report anyhow errors; we keep their text.
    fn err(e: impl std::fmt::Display) -> ProtocolError {
        ProtocolError::Compression {
            reason: format!("{e:#}"),
        }
    }

    pub(crate) fn compress(
        codec: Compression,
        records: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        let fill = |b: &mut BytesMut| {
            b.put_slice(records);
            Ok(())
        };
        let result = match codec {
            Compression::None => {
                out.put_slice(records);
                Ok(())
            }
            Compression::Gzip => Gzip::compress(out, fill),
            Compression::Snappy => Snappy::compress(out, fill),
            Compression::Lz4 => Lz4::compress(out, fill),
            Compression::Zstd => Zstd::compress(out, fill),
        };
        result.map_err(err)
    }

    /// Reads `reader` to the end, failing once the output passes `limit`. The buffer grows with
    /// the output actually produced (never sized from a length in the data).
    fn read_bounded(
        reader: impl Read,
        compressed_len: usize,
        limit: usize,
    ) -> Result<Bytes, ProtocolError> {
        let mut out = Vec::with_capacity(compressed_len.saturating_mul(4).min(limit));
        reader
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(err)?;
        if out.len() > limit {
            return Err(ProtocolError::DecompressedTooLarge { limit });
        }
        Ok(Bytes::from(out))
    }

    /// Kafka's snappy: xerial framing (8-byte magic, version, compatible version, then blocks
    /// each prefixed by a u32 length), or a raw snappy block when the magic is absent (as
    /// Java's SnappyInputStream falls back).
    fn snappy(data: &[u8], limit: usize) -> Result<Bytes, ProtocolError> {
        const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
        const XERIAL_HEADER_BYTES: usize = 16;
        let mut out = Vec::new();
        let decode_block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), ProtocolError> {
            let len = snap::raw::decompress_len(block).map_err(err)?;
            if len > limit - out.len() {
                return Err(ProtocolError::DecompressedTooLarge { limit });
            }
            let start = out.len();
            out.resize(start + len, 0);
            let n = snap::raw::Decoder::new()
                .decompress(block, &mut out[start..])
                .map_err(err)?;
            out.truncate(start + n);
            Ok(())
        };
        if data.len() >= XERIAL_HEADER_BYTES && data.starts_with(XERIAL_MAGIC) {
            let mut rest = &data[XERIAL_HEADER_BYTES..];
            while !rest.is_empty() {
                let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                    return Err(err("truncated snappy block length"));
                };
                let len = u32::from_be_bytes(*len) as usize;
                if tail.len() < len {
                    return Err(err("truncated snappy block"));
                }
                decode_block(&tail[..len], &mut out)?;
                rest = &tail[len..];
            }
        } else {
            decode_block(data, &mut out)?;
        }
        Ok(Bytes::from(out))
    }

    pub(crate) fn decompress(
        codec: Compression,
        data: &[u8],
        limit: usize,
    ) -> Result<Bytes, ProtocolError> {
        match codec {
            Compression::None => {
                if data.len() > limit {
                    return Err(ProtocolError::DecompressedTooLarge { limit });
                }
                Ok(Bytes::copy_from_slice(data))
            }
            // Java's GZIPInputStream reads concatenated members, so MultiGzDecoder.
            Compression::Gzip => {
                read_bounded(flate2::read::MultiGzDecoder::new(data), data.len(), limit)
            }
            Compression::Snappy => snappy(data, limit),
            Compression::Lz4 => {
                read_bounded(lz4::Decoder::new(data).map_err(err)?, data.len(), limit)
            }
            Compression::Zstd => {
                let mut decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(err)?;
                // The window zstd allocates comes from the frame header. Output within the cap
                // never needs a window larger than the cap, but streaming compressors declare
                // windows from their level (2 MiB at level 3, 8 MiB at level 19) regardless of
                // the size, so allow at least 8 MiB.
                let window_log = usize::BITS - limit.saturating_sub(1).leading_zeros();
                decoder
                    .window_log_max(window_log.clamp(23, 31))
                    .map_err(err)?;
                read_bounded(decoder, data.len(), limit)
            }
        }
    }
}

#[cfg(not(feature = "compression"))]
mod codecs {
    use crate::batch::Compression;
    use crate::error::ProtocolError;
    use bytes::{Bytes, BytesMut};

    pub(crate) fn compress(
        codec: Compression,
        _records: &[u8],
        _out: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        Err(ProtocolError::CompressionUnavailable { codec: codec.id() })
    }

    pub(crate) fn decompress(
        codec: Compression,
        data: &[u8],
        limit: usize,
    ) -> Result<Bytes, ProtocolError> {
        match codec {
            Compression::None if data.len() > limit => {
                Err(ProtocolError::DecompressedTooLarge { limit })
            }
            Compression::None => Ok(Bytes::copy_from_slice(data)),
            other => Err(ProtocolError::CompressionUnavailable { codec: other.id() }),
        }
    }
}
