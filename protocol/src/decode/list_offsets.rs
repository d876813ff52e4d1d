//! (decoder being written)
