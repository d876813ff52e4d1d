//! rill-broker (being built; see its issue).
