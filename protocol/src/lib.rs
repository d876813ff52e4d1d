//! rill-protocol (being built; see its issue).
