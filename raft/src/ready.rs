//! The output of the core: one [`Ready`] at a time, handed back with `advance`.
//!
//! The rule "persist before you send what depends on it" is in the types:
//! messages that depend on the persist are inside [`AfterPersist`], which only
//! releases them in exchange for a [`Durable`] receipt, and a `Durable` is made
//! only by consuming the [`Persist`] (`Persist::into_durable`, called after the
//! fsync). The same receipt is what `Raft::advance` takes back.

use crate::message::Message;
use crate::types::{Entry, HardState, LogStart, Membership, RoleState};

/// Everything the driver must do for the core, in this order:
///
/// 1. send `messages` (at once, no need to wait for anything);
/// 2. write `persist` (reset, truncate, append, hard state — in that order)
///    and make it durable (fsync), unless `persist.is_empty()`;
/// 3. `let durable = persist.into_durable();`
/// 4. send `after_persist.release(&durable)`;
/// 5. `raft.advance(durable)`.
///
/// `role` and `commit_offset` report changes and may be acted on at any point
/// (the high watermark may be exposed once the entries up to it are written).
#[derive(Debug)]
#[must_use = "a Ready must be persisted and handed back with advance"]
pub struct Ready {
    /// The node's role changed (or its term or known leader did).
    pub role: Option<RoleState>,
    /// The commit offset (high watermark) advanced to this value.
    pub commit_offset: Option<u64>,
    /// Messages that depend on nothing unpersisted: send them now.
    pub messages: Vec<Message>,
    /// Log and hard-state changes to make durable.
    pub persist: Persist,
    /// Messages that may only be sent once `persist` is durable.
    pub after_persist: AfterPersist,
}

/// Discard the whole log and start empty at `start` (a follower that fell
/// behind the leader's log start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogReset {
    /// The new log start.
    pub start: LogStart,
    /// Membership in effect at the new start (keep it with the log start).
    pub membership: Membership,
}

/// Storage work of one `Ready`. Apply `reset_to`, then `truncate_to`, then
/// append `entries`, then write `hard_state`; the node relies on all of it
/// being durable once `into_durable` is called.
#[derive(Debug)]
#[must_use = "persist the changes, then call into_durable"]
pub struct Persist {
    /// Throw the log away and start empty here.
    pub reset_to: Option<LogReset>,
    /// Remove every entry covering an offset ≥ this (an entry boundary;
    /// Kafka's `truncateTo`).
    pub truncate_to: Option<u64>,
    /// Entries to append; the first starts at the log end after truncation.
    pub entries: Vec<Entry>,
    /// Term, vote and commit hint to store, if changed.
    pub hard_state: Option<HardState>,
    /// Whether anything besides the commit hint changed; if not, no fsync is
    /// needed before the after-persist messages go out.
    pub(crate) sync_required: bool,
    pub(crate) ready_seq: u64,
}

impl Persist {
    /// Nothing to write at all.
    pub fn is_empty(&self) -> bool {
        self.reset_to.is_none()
            && self.truncate_to.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
    }

    /// Whether the changes must be fsynced before `into_durable` (false when
    /// only the commit hint changed, which may be written lazily).
    pub fn sync_required(&self) -> bool {
        self.sync_required
    }

    /// Declares the changes durable. Call only after the fsync completed.
    pub fn into_durable(self) -> Durable {
        Durable {
            ready_seq: self.ready_seq,
        }
    }
}

/// Receipt that a `Ready`'s persist is durable; see the module docs.
#[derive(Debug)]
#[must_use = "hand the receipt back with Raft::advance"]
pub struct Durable {
    pub(crate) ready_seq: u64,
}

/// Messages held back until the persist of the same `Ready` is durable
/// (vote grants, append acknowledgements, anything sent in a term or with a
/// vote not yet on disk).
#[derive(Debug)]
#[must_use = "release after the persist is durable and send"]
pub struct AfterPersist {
    pub(crate) messages: Vec<Message>,
    pub(crate) ready_seq: u64,
}

impl AfterPersist {
    /// The messages, in exchange for proof that the persist is durable.
    pub fn release(self, durable: &Durable) -> Vec<Message> {
        assert_eq!(
            self.ready_seq, durable.ready_seq,
            "receipt belongs to another Ready"
        );
        self.messages
    }

    /// How many messages wait (for tracing).
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Looks at the held messages without releasing them (for tracing and tests).
    pub fn peek(&self) -> &[Message] {
        &self.messages
    }
}
