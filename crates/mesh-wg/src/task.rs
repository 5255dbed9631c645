//! The device's loops as owned tasks ([`owned_task::Task`]) that log how they ended under their name.

use std::future::Future;

use tracing::Instrument as _;

use super::Error;

/// A loop of the device, aborted when the handle is dropped.
///
/// INVARIANT: every task of this crate has an owner (this, an [`owned_task::Task`] or a `JoinSet`), so
/// dropping the `Device` stops every loop it started, and every dial and bridge they started.
#[derive(Debug)]
pub(crate) struct Task(owned_task::Task<()>);

impl Task {
    /// Spawns `fut` on the current tokio runtime; an `Err` it returns is logged with the task name.
    pub(crate) fn spawn<F>(name: &'static str, span: tracing::Span, fut: F) -> Self
    where
        F: Future<Output = Result<(), Error>> + Send + 'static,
    {
        Self(owned_task::Task::spawn(
            name,
            async move {
                match fut.await {
                    Ok(()) => tracing::debug!(task = name, "task finished"),
                    Err(err) => tracing::error!(task = name, error = %err, "task failed"),
                }
            }
            .instrument(span),
        ))
    }

    /// Aborts the task and waits until its future has been dropped (so it released what it held).
    pub(crate) async fn stop(self) {
        let name = self.0.name();
        if let Err(err) = self.0.stop().await
            && err.is_panic()
        {
            tracing::error!(task = name, "task panicked");
        }
    }
}
