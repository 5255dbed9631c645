//! Async code run from a test's synchronous thread.

/// Runs `f` to completion on a fresh current-thread runtime, on this thread.
///
/// # Panics
/// When the runtime cannot be built.
pub fn block_on<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}
