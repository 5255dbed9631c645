//! How a test runs things, and for how long:
//! - [`process`]: bounded command runs, children killed by PID, the workspace's binaries and Foundry's.
//! - [`wait`]: bounded waits; [`steps`]: a scenario's progress.
//! - [`runtime`]: async code run from a test's synchronous thread.

pub mod process;
pub mod runtime;
pub mod steps;
pub mod wait;
