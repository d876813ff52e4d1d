//! Test harness for cluster-level integration tests (being built).
