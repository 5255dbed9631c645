//! Spawned tasks that have an owner.
//!
//! A bare `tokio::spawn` detaches its future: nothing stops it when whatever it works for is gone, so a
//! device that is dropped, a client that hangs up or a test that ends can leave it running, holding
//! sockets and memory for as long as the runtime lives. A [`Task`] is a spawned future that is aborted
//! when its handle is dropped, so it lives exactly as long as whoever keeps the handle.
//!
//! This is the one module of the workspace allowed to call `tokio::spawn`; the root `clippy.toml`
//! forbids it everywhere else. `tokio::task::JoinSet` is an owner too (it aborts its tasks on drop) and
//! stays allowed, for a changing number of tasks of one kind.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};
use tracing::Instrument as _;

/// A spawned future, aborted when this handle is dropped.
///
/// Awaiting it gives the future's output, or a [`JoinError`] when it panicked or was aborted.
#[must_use = "dropping a Task aborts it at once"]
pub struct Task<T> {
    name: &'static str,
    handle: JoinHandle<T>,
}

impl<T: Send + 'static> Task<T> {
    /// Spawns `fut` on the current tokio runtime, in the current tracing span (so what it logs says
    /// which node, peer or connection it works for). `name` says what it is in logs and `Debug`.
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    #[allow(clippy::disallowed_methods)] // The one place that spawns: every caller gets an owner back.
    pub fn spawn<F>(name: &'static str, fut: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        Self {
            name,
            handle: tokio::spawn(fut.in_current_span()),
        }
    }
}

impl<T> Task<T> {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the future has returned, panicked or been aborted.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Aborts the task and waits until its future has been dropped, so that what it held (a socket, a
    /// port, a lock) is released when this returns. Dropping the handle aborts too, but without waiting.
    ///
    /// # Errors
    /// The task's panic; or a cancelled [`JoinError`] when it had not finished (the usual case).
    pub async fn stop(mut self) -> Result<T, JoinError> {
        self.handle.abort();
        (&mut self.handle).await
    }
}

impl<T> Future for Task<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.handle).poll(cx)
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if !self.handle.is_finished() {
            tracing::trace!(task = self.name, "aborted with its owner");
        }
        self.handle.abort();
    }
}

impl<T> std::fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("name", &self.name)
            .field("finished", &self.is_finished())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    /// Sends on drop: tells a test that the future holding it is gone.
    struct Dropped(Option<oneshot::Sender<()>>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    fn forever() -> (
        impl Future<Output = ()> + Send + 'static,
        oneshot::Receiver<()>,
    ) {
        let (tx, rx) = oneshot::channel();
        let guard = Dropped(Some(tx));
        let fut = async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        };
        (fut, rx)
    }

    #[tokio::test]
    async fn dropping_the_handle_drops_the_future() {
        let (fut, dropped) = forever();
        let task = Task::spawn("forever", fut);
        drop(task);
        tokio::time::timeout(Duration::from_secs(5), dropped)
            .await
            .expect("the future is dropped soon after its handle")
            .expect("it is dropped, not leaked");
    }

    #[tokio::test]
    async fn stop_returns_once_the_future_is_gone() {
        let (fut, mut dropped) = forever();
        let task = Task::spawn("forever", fut);
        let stopped = task.stop().await;
        assert!(stopped.is_err_and(|e| e.is_cancelled()));
        assert_eq!(dropped.try_recv(), Ok(()), "gone by the time stop returns");
    }

    #[tokio::test]
    async fn awaiting_the_handle_gives_the_output() {
        let task = Task::spawn("answer", async { 42 });
        assert_eq!(task.await.unwrap(), 42);
    }

    #[tokio::test]
    async fn a_panic_comes_back_as_an_error() {
        let task = Task::spawn("panics", async { panic!("on purpose") });
        assert!(task.await.is_err_and(|e| e.is_panic()));
    }
}
