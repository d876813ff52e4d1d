//! Partition choice, identical to Kafka's Java producer.
//!
//! * A record with a key goes to `toPositive(murmur2(key)) % partition_count`, so the
//!   same key lands on the same partition as with the Java client, librdkafka's
//!   `murmur2_random` partitioner, kcat `-X partitioner=murmur2_random`, and Kafka
//!   Streams.
//! * A record without a key sticks to one partition until that partition's current
//!   batch is closed (full or sent), then moves to another random partition (KIP-480's
//!   sticky partitioner), so null-key traffic still forms large batches.

use rand::Rng;

/// Kafka's 32-bit murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed
/// `0x9747b28c`; the result is the same `i32` bit pattern Java returns.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        // Java reads each 4-byte group little-endian.
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    // Java's switch falls through from the highest remaining byte down.
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which differs for
/// `i32::MIN` and for every negative number).
pub fn to_positive(n: i32) -> i32 {
    n & 0x7fff_ffff
}

/// The partition Kafka's default partitioner picks for `key` among `partition_count`.
///
/// # Panics
/// If `partition_count` is not positive (a topic always has at least one partition;
/// callers check metadata first).
pub fn partition_for_key(key: &[u8], partition_count: i32) -> i32 {
    assert!(partition_count > 0, "partition_count must be positive");
    to_positive(murmur2(key)) % partition_count
}

/// Sticky partition choice for records without a key (one instance per topic).
#[derive(Debug, Default)]
pub(crate) struct StickyPartitioner {
    current: Option<i32>,
}

impl StickyPartitioner {
    /// The partition for the next null-key record.
    #[inline]
    pub(crate) fn partition(&mut self, partition_count: i32) -> i32 {
        match self.current {
            Some(p) if p < partition_count => p,
            _ => {
                let p = rand::thread_rng().gen_range(0..partition_count);
                self.current = Some(p);
                p
            }
        }
    }

    /// The batch of `closed_partition` was closed: move on to another partition, as
    /// Kafka does, so the next batch fills elsewhere.
    pub(crate) fn on_batch_closed(&mut self, closed_partition: i32, partition_count: i32) {
        if self.current != Some(closed_partition) {
            return;
        }
        if partition_count <= 1 {
            self.current = Some(0);
            return;
        }
        // A different partition, uniformly among the others.
        let mut p = rand::thread_rng().gen_range(0..partition_count - 1);
        if p >= closed_partition {
            p += 1;
        }
        self.current = Some(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's `UtilsTest.testMurmur2` (clients/src/test/.../UtilsTest.java).
    #[test]
    fn murmur2_matches_kafka_utils_test_vectors() {
        let cases: &[(&str, i32)] = &[
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), *expected, "murmur2({input:?})");
        }
    }

    /// Further vectors computed with Kafka's `Utils.murmur2` (as used by Akka's Kafka
    /// sharding tests), covering every tail length 1..=3 and an exact 4-byte block.
    #[test]
    fn murmur2_covers_every_tail_length() {
        let cases: &[(&str, i32)] = &[
            ("1", -1_993_445_489),
            ("12", 126_087_238),
            ("123", -267_702_483),
            ("1234", -1_614_185_708),
            ("12345", -1_188_365_604),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), *expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn to_positive_clears_the_sign_bit_like_java() {
        assert_eq!(to_positive(-1), i32::MAX);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(5), 5);
    }

    #[test]
    fn key_partition_is_positive_modulo_of_murmur2() {
        // murmur2("foobar") = -790332482; toPositive = 1357151166; % 10 = 6.
        assert_eq!(partition_for_key(b"foobar", 10), 1_357_151_166 % 10);
        for n in 1..64 {
            let p = partition_for_key(b"some key", n);
            assert!((0..n).contains(&p));
        }
    }

    #[test]
    fn sticky_partition_holds_until_its_batch_closes_then_moves() {
        let mut sticky = StickyPartitioner::default();
        let first = sticky.partition(8);
        for _ in 0..100 {
            assert_eq!(sticky.partition(8), first);
        }
        sticky.on_batch_closed(first, 8);
        let second = sticky.partition(8);
        assert_ne!(second, first);
        // Closing some other partition's batch does not move it.
        sticky.on_batch_closed((second + 1) % 8, 8);
        assert_eq!(sticky.partition(8), second);
    }
}
