//! One path of every agent's API, asked of all of them at once and again every few milliseconds, on a
//! thread of its own ([`Sampler`]): what an application polling the agents would have seen, moment by
//! moment. [`crate::system::leadership`] samples `/v1/leader`, [`crate::system::liveness`] `/v1/peers`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

/// How long one agent may take to answer a sample: a frozen agent never does.
const ANSWER_WITHIN: Duration = Duration::from_millis(80);

/// Every agent's answer at one moment: `None` for an agent that did not answer in time.
#[derive(Debug, Clone)]
pub struct Sample<T> {
    pub at: Instant,
    /// Node i's answer at index i - 1.
    pub answers: Vec<Option<T>>,
}

/// Asks every agent's API for one path at once, every `every`, until stopped.
pub struct Sampler<T> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample<T>>>>,
}

impl<T: DeserializeOwned + Send + 'static> Sampler<T> {
    /// Starts sampling `path` of the agents at `sockets` (node i's at `sockets[i - 1]`).
    pub fn start(sockets: Vec<PathBuf>, path: &'static str, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let mut samples = Vec::new();
                let mut tick = tokio::time::interval(every);
                // Bounded by the stop flag, which the guard sets on drop.
                while !flag.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let at = Instant::now();
                    let asks = sockets.iter().map(|s| async move {
                        tokio::time::timeout(ANSWER_WITHIN, mesh_api::get(s.as_path(), path))
                            .await
                            .ok()
                            .and_then(Result::ok)
                    });
                    let answers = futures::future::join_all(asks).await;
                    samples.push(Sample { at, answers });
                }
                samples
            })
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns what was seen.
    pub fn stop(mut self) -> Vec<Sample<T>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .expect("the sampler thread panicked")
    }
}

impl<T> Drop for Sampler<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
