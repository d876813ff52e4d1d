//! rill-raft (being built; see its issue).
