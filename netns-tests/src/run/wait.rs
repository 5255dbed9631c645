//! Waiting, bounded: every loop of a test has a deadline and says what it waited for.

use std::time::{Duration, Instant};

/// Waits up to `timeout` for `cond`, polling every `every`; panics with `what` and `context()` (e.g. a
/// log tail) if it never holds.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(every);
    }
}
