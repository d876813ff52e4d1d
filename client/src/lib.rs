//! rill-client (being built; see its issue).
