//! Owned background tasks: every spawned future has a named handle that aborts it on drop.

use std::future::Future;

use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::Error;

/// A spawned task that is aborted when the handle is dropped.
///
/// INVARIANT: no task of this module is spawned without one of these, so dropping the owner
/// (the `Device`) stops every loop it started.
#[derive(Debug)]
pub(crate) struct Task {
    name: &'static str,
    handle: Option<JoinHandle<()>>,
}

impl Task {
    /// Spawns `fut` on the current tokio runtime; an `Err` it returns is logged with the task name.
    pub(crate) fn spawn<F>(name: &'static str, span: tracing::Span, fut: F) -> Self
    where
        F: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let handle = tokio::spawn(
            async move {
                match fut.await {
                    Ok(()) => tracing::debug!(task = name, "task finished"),
                    Err(err) => tracing::error!(task = name, error = %err, "task failed"),
                }
            }
            .instrument(span),
        );
        Self {
            name,
            handle: Some(handle),
        }
    }

    /// Aborts the task and waits until its future has been dropped (so it released what it held).
    pub(crate) async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
            if let Err(err) = handle.await
                && err.is_panic()
            {
                tracing::error!(task = self.name, "task panicked");
            }
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}
