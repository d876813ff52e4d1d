//! Stepping off the async runtime for file-system work that may block (segment
//! creation and growth, partition directories, topic metadata files).

/// Runs `f`, which may block on the disk, without stalling the tasks of the tokio
/// worker it is called on: on the multi-threaded runtime `rilld` runs, through
/// `tokio::task::block_in_place` (the worker's other tasks move to another thread
/// while `f` runs); elsewhere (a current-thread runtime in unit tests, or no runtime)
/// it simply calls `f`.
pub fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
