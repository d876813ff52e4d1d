//! Durable Raft term, vote and commit hint of every partition replica of one data
//! directory, in one CRC'd, atomically replaced file (`meta/raft-state`, written by
//! `rill_storage::atomic_file`). One file, not one per partition: a broker that starts
//! 10,000 groups bumps 10,000 terms, and the persist loop writes them all with one
//! file write and one rename per round instead of 10,000 (group commit for votes).
//!
//! Lines: `<topic id> <partition> <term> <voted for broker id or -> <commit offset>`.
//! Entries are keyed by topic id, so a deleted topic's stale entry can never be taken
//! by a new topic of the same name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rill_raft::HardState;
use rill_storage::atomic_file;

use super::store::{broker_id, raft_node_id};
use crate::error::BrokerError;

/// File name inside the broker's `meta/` directory.
pub const RAFT_STATE_FILE: &str = "raft-state";

/// Key of one replica: its topic id and partition index.
pub type ReplicaKey = (uuid::Uuid, i32);

/// The in-memory copy of the file, and whether it changed in a way that must be made
/// durable before the next round's messages and answers go out.
#[derive(Debug)]
pub struct HardStates {
    dir: PathBuf,
    states: BTreeMap<ReplicaKey, HardState>,
    /// A term or vote changed since the last write.
    dirty: bool,
    /// Only commit hints changed since the last write (written lazily).
    hints_changed: bool,
}

impl HardStates {
    /// Loads the file (empty if it does not exist yet).
    pub fn load(meta_dir: &Path) -> Result<HardStates, BrokerError> {
        let mut states = BTreeMap::new();
        let body = atomic_file::read_text(meta_dir, RAFT_STATE_FILE)
            .map_err(|e| BrokerError::Storage(e.to_string()))?
            .unwrap_or_default();
        for line in body.lines() {
            let bad = || {
                BrokerError::Storage(format!(
                    "{}: bad line `{line}`",
                    meta_dir.join(RAFT_STATE_FILE).display()
                ))
            };
            let fields: Vec<&str> = line.split(' ').collect();
            let [id, index, term, vote, commit] = fields[..] else {
                return Err(bad());
            };
            let key = (
                uuid::Uuid::parse_str(id).map_err(|_| bad())?,
                index.parse().map_err(|_| bad())?,
            );
            let voted_for = match vote {
                "-" => None,
                v => Some(raft_node_id(v.parse().map_err(|_| bad())?)),
            };
            let state = HardState {
                term: term.parse().map_err(|_| bad())?,
                voted_for,
                commit_offset: commit.parse().map_err(|_| bad())?,
            };
            states.insert(key, state);
        }
        Ok(HardStates {
            dir: meta_dir.to_path_buf(),
            states,
            dirty: false,
            hints_changed: false,
        })
    }

    /// The replica's last durable state (zero for a new replica).
    pub fn get(&self, key: ReplicaKey) -> HardState {
        self.states.get(&key).copied().unwrap_or_default()
    }

    /// Records a replica's new state. A term or vote change makes the file dirty
    /// (written before the round answers); a commit hint alone is written lazily.
    pub fn set(&mut self, key: ReplicaKey, state: HardState) {
        let old = self.get(key);
        if (old.term, old.voted_for) != (state.term, state.voted_for) {
            self.dirty = true;
        } else if old.commit_offset != state.commit_offset {
            self.hints_changed = true;
        }
        self.states.insert(key, state);
    }

    /// Forgets a deleted replica (written with the next change).
    pub fn remove(&mut self, key: ReplicaKey) {
        if self.states.remove(&key).is_some() {
            self.hints_changed = true;
        }
    }

    /// Whether a term or vote waits to be written.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Writes the file if a term or vote changed (or, with `hints_too`, if only commit
    /// hints did). Returns whether it wrote.
    pub fn write(&mut self, hints_too: bool) -> Result<bool, rill_storage::StorageError> {
        if !(self.dirty || (hints_too && self.hints_changed)) {
            return Ok(false);
        }
        let mut body = String::with_capacity(self.states.len() * 64);
        for ((id, index), s) in &self.states {
            let vote = s
                .voted_for
                .map_or_else(|| "-".to_string(), |v| broker_id(v).to_string());
            body.push_str(&format!(
                "{id} {index} {} {vote} {}\n",
                s.term, s.commit_offset
            ));
        }
        atomic_file::write_text(&self.dir, RAFT_STATE_FILE, &body)?;
        self.dirty = false;
        self.hints_changed = false;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_only_term_or_vote_changes_are_urgent() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = (uuid::Uuid::from_u128(7), 3);
        let mut states = HardStates::load(dir.path()).expect("empty");
        assert_eq!(states.get(key), HardState::default());
        let voted = HardState {
            term: 4,
            voted_for: Some(raft_node_id(0)),
            commit_offset: 0,
        };
        states.set(key, voted);
        assert!(states.is_dirty());
        assert!(states.write(false).expect("written"));
        states.set(
            key,
            HardState {
                commit_offset: 9,
                ..voted
            },
        );
        assert!(!states.is_dirty(), "a commit hint alone is lazy");
        assert!(!states.write(false).expect("nothing urgent"));
        assert!(states.write(true).expect("hints written"));
        let loaded = HardStates::load(dir.path()).expect("loads");
        assert_eq!(
            loaded.get(key),
            HardState {
                commit_offset: 9,
                ..voted
            }
        );
    }
}
