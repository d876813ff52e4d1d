//! The result of [`History::check`](super::History::check): counts, and every
//! violation found, one type per kind.

use std::fmt;

use bytes::Bytes;

use super::Duplicates;

/// Examples of each kind of violation that the display shows (the report holds all).
pub const EXAMPLES_SHOWN: usize = 5;
/// Bytes of a value the display shows before eliding the rest.
const VALUE_SHOWN_BYTES_MAX: usize = 40;

/// An acknowledgement: `value` was written at `offset` of `partition`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The partition the broker acknowledged.
    pub partition: i32,
    /// The offset the broker acknowledged.
    pub offset: i64,
    /// The value acknowledged.
    pub value: Bytes,
}

/// Where a value at an offset was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// In an acknowledgement.
    Ack,
    /// In the read with this index (in the order reads were recorded).
    Read(usize),
}

/// An acknowledged value that reads found in its partition, but never at the
/// acknowledged offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    /// The acknowledgement.
    pub ack: Ack,
    /// The offsets of the partition where reads found the value.
    pub read_offsets: Vec<i64>,
}

/// An offset that held different values (in different reads, or acknowledged for two
/// values): the log reused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetReuse {
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// Each distinct value, with where it was first seen there.
    pub values: Vec<(Source, Bytes)>,
}

/// A value read at more than one (partition, offset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    /// The value.
    pub value: Bytes,
    /// Every distinct (partition, offset) it was read at.
    pub positions: Vec<(i32, i64)>,
}

/// A value read that no producer attempted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phantom {
    /// The value.
    pub value: Bytes,
    /// Every (partition, offset) it was read at.
    pub positions: Vec<(i32, i64)>,
}

/// An offset not greater than the one before it in the same read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonMonotonic {
    /// The partition read.
    pub partition: i32,
    /// The index of the read (in the order reads were recorded).
    pub read: usize,
    /// The offset before.
    pub previous_offset: i64,
    /// The offset that did not increase.
    pub offset: i64,
}

/// Two values one producer sent to a partition in one order and a read found in the
/// other (see [`History::record_send_order`](super::History::record_send_order)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reordered {
    /// The partition.
    pub partition: i32,
    /// The value sent first, and the offset it was read at.
    pub earlier: (Bytes, i64),
    /// The value sent after it, read at a lower offset.
    pub later: (Bytes, i64),
}

/// Everything [`History::check`](super::History::check) found. `Display` prints
/// counts and the first [`EXAMPLES_SHOWN`] examples of each kind of violation.
#[derive(Clone, Debug)]
pub struct Report {
    /// Whether duplicates count as violations in [`Report::is_ok`].
    pub duplicates_policy: Duplicates,
    /// Distinct values attempted.
    pub attempts: usize,
    /// Acknowledgements.
    pub acks: usize,
    /// Distinct values whose send failed (indeterminate).
    pub failures: usize,
    /// Reads of a partition.
    pub reads: usize,
    /// Records over all reads.
    pub records_read: usize,
    /// Acknowledged values no read of their partition found.
    pub lost: Vec<Ack>,
    /// Acknowledged values read only at other offsets than acknowledged.
    pub moved: Vec<Moved>,
    /// Offsets that held different values.
    pub offset_reuse: Vec<OffsetReuse>,
    /// Values read at several positions (violations only under
    /// [`Duplicates::Forbidden`]).
    pub duplicates: Vec<Duplicate>,
    /// Values read that were never attempted.
    pub phantoms: Vec<Phantom>,
    /// Offsets that did not increase within a read.
    pub non_monotonic: Vec<NonMonotonic>,
    /// Values of one producer's partition stream read out of their send order.
    pub reordered: Vec<Reordered>,
}

impl Report {
    pub(super) fn new(duplicates_policy: Duplicates) -> Report {
        Report {
            duplicates_policy,
            attempts: 0,
            acks: 0,
            failures: 0,
            reads: 0,
            records_read: 0,
            lost: Vec::new(),
            moved: Vec::new(),
            offset_reuse: Vec::new(),
            duplicates: Vec::new(),
            phantoms: Vec::new(),
            non_monotonic: Vec::new(),
            reordered: Vec::new(),
        }
    }

    /// True if the history has no violation (duplicates count only under
    /// [`Duplicates::Forbidden`]).
    pub fn is_ok(&self) -> bool {
        self.lost.is_empty()
            && self.moved.is_empty()
            && self.offset_reuse.is_empty()
            && (self.duplicates.is_empty() || self.duplicates_policy == Duplicates::Allowed)
            && self.phantoms.is_empty()
            && self.non_monotonic.is_empty()
            && self.reordered.is_empty()
    }

    /// Panics with the report's display unless [`Report::is_ok`].
    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(self.is_ok(), "history check failed:\n{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} attempted, {} acknowledged, {} indeterminate; {} reads, {} records read",
            if self.is_ok() { "ok" } else { "VIOLATIONS" },
            self.attempts,
            self.acks,
            self.failures,
            self.reads,
            self.records_read
        )?;
        section(f, "acknowledged values lost", &self.lost, |f, a| {
            write!(
                f,
                "{} acknowledged at partition {} offset {}",
                ShowValue(&a.value),
                a.partition,
                a.offset
            )
        })?;
        section(
            f,
            "acknowledged values read at another offset",
            &self.moved,
            |f, m| {
                write!(
                    f,
                    "{} acknowledged at partition {} offset {}, read at {:?}",
                    ShowValue(&m.ack.value),
                    m.ack.partition,
                    m.ack.offset,
                    m.read_offsets
                )
            },
        )?;
        section(
            f,
            "offsets holding different values",
            &self.offset_reuse,
            |f, r| {
                write!(f, "partition {} offset {}:", r.partition, r.offset)?;
                for (source, value) in &r.values {
                    let source = match source {
                        Source::Ack => "ack".to_string(),
                        Source::Read(i) => format!("read {i}"),
                    };
                    write!(f, " {} ({source})", ShowValue(value))?;
                }
                Ok(())
            },
        )?;
        let duplicates_title = match self.duplicates_policy {
            Duplicates::Allowed => "duplicates (allowed)",
            Duplicates::Forbidden => "duplicates",
        };
        section(f, duplicates_title, &self.duplicates, |f, d| {
            write!(
                f,
                "{} at {}",
                ShowValue(&d.value),
                ShowPositions(&d.positions)
            )
        })?;
        section(f, "values never attempted", &self.phantoms, |f, p| {
            write!(
                f,
                "{} at {}",
                ShowValue(&p.value),
                ShowPositions(&p.positions)
            )
        })?;
        section(
            f,
            "offsets not increasing within a read",
            &self.non_monotonic,
            |f, n| {
                write!(
                    f,
                    "read {} of partition {}: offset {} after {}",
                    n.read, n.partition, n.offset, n.previous_offset
                )
            },
        )?;
        section(
            f,
            "values read out of their send order",
            &self.reordered,
            |f, r| {
                write!(
                    f,
                    "partition {}: {} (sent first) at offset {}, {} (sent after) at offset {}",
                    r.partition,
                    ShowValue(&r.earlier.0),
                    r.earlier.1,
                    ShowValue(&r.later.0),
                    r.later.1
                )
            },
        )
    }
}

/// A title line with the count, then up to EXAMPLES_SHOWN examples; nothing if empty.
fn section<T>(
    f: &mut fmt::Formatter<'_>,
    title: &str,
    items: &[T],
    mut show: impl FnMut(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    writeln!(f, "  {title}: {}", items.len())?;
    for item in items.iter().take(EXAMPLES_SHOWN) {
        write!(f, "    ")?;
        show(f, item)?;
        writeln!(f)?;
    }
    if items.len() > EXAMPLES_SHOWN {
        writeln!(f, "    … and {} more", items.len() - EXAMPLES_SHOWN)?;
    }
    Ok(())
}

/// A value as quoted, escaped ASCII, elided after VALUE_SHOWN_BYTES_MAX bytes.
struct ShowValue<'a>(&'a Bytes);

impl fmt::Display for ShowValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(VALUE_SHOWN_BYTES_MAX)];
        write!(f, "\"{}\"", shown.escape_ascii())?;
        if self.0.len() > VALUE_SHOWN_BYTES_MAX {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

/// Positions as `p0@17, p1@3`.
struct ShowPositions<'a>(&'a [(i32, i64)]);

impl fmt::Display for ShowPositions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (partition, offset)) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "p{partition}@{offset}")?;
        }
        Ok(())
    }
}
