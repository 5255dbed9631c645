//! Whether an application reads the peers' health through the API: the agent holds every peer to the peer
//! timeout while one does, and lets idle peers nothing else watches go to a longer bound otherwise
//! (`mesh_wg::Watching`). Every GET but `/metrics` counts as a read, and an open event stream as one that
//! lasts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A read after this long without one wakes the agent's mesh task ([`Readers::started_reading`]).
const QUIET: Duration = Duration::from_secs(1);

/// The API's readers, shared by every listener and the agent's mesh task.
#[derive(Debug, Default)]
pub struct Readers {
    last_read: Mutex<Option<Instant>>,
    streams: AtomicUsize,
    /// Told when reading starts, so that the device holds every peer to the peer timeout from that read on,
    /// not from the agent's next refresh (2 s while every peer is idle).
    started: tokio::sync::Notify,
}

/// An event stream that counts as reading while it is open.
#[derive(Debug)]
pub struct Following(Arc<Readers>);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Readers {
    /// A request read the API at `now`.
    pub fn read(&self, now: Instant) {
        let previous = (self.last_read.lock().unwrap_or_else(|e| e.into_inner())).replace(now);
        if previous.is_none_or(|t| now.saturating_duration_since(t) >= QUIET) {
            self.started.notify_one();
        }
    }

    /// An event stream opened; it counts until the guard is dropped.
    pub fn follow(self: &Arc<Self>) -> Following {
        self.streams.fetch_add(1, Ordering::Relaxed);
        self.started.notify_one();
        Following(Arc::clone(self))
    }

    /// Returns once a read comes after a quiet spell (a second with none), or a stream opens: at most one
    /// such start is kept while nobody waits.
    pub async fn started_reading(&self) {
        self.started.notified().await;
    }

    /// Whether anything read the API within `within` of `now`, or follows it now.
    pub fn reading(&self, within: Duration, now: Instant) -> bool {
        self.streams.load(Ordering::Relaxed) > 0
            || (self.last_read.lock().unwrap_or_else(|e| e.into_inner()))
                .is_some_and(|t| now.saturating_duration_since(t) < within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_counts_for_a_while_and_a_stream_while_it_is_open() {
        let r = Arc::new(Readers::default());
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        assert!(!r.reading(minute, t0), "nothing read yet");
        r.read(t0);
        assert!(r.reading(minute, t0 + Duration::from_secs(59)));
        assert!(!r.reading(minute, t0 + minute));
        let stream = r.follow();
        assert!(r.reading(minute, t0 + 2 * minute), "a stream is open");
        drop(stream);
        assert!(!r.reading(minute, t0 + 2 * minute));
    }

    /// A read after a quiet spell, or a stream opening, wakes whoever waits for reading to start; reads in
    /// quick succession wake nobody again.
    #[tokio::test]
    async fn reading_that_starts_after_a_quiet_spell_wakes_the_waiter() {
        let r = Arc::new(Readers::default());
        let t0 = Instant::now();
        let woke = |r: &Arc<Readers>| {
            let r = Arc::clone(r);
            async move {
                tokio::time::timeout(Duration::from_millis(50), r.started_reading())
                    .await
                    .is_ok()
            }
        };
        r.read(t0);
        assert!(woke(&r).await, "the first read");
        r.read(t0 + Duration::from_millis(300));
        assert!(!woke(&r).await, "a read soon after another");
        r.read(t0 + Duration::from_secs(5));
        assert!(woke(&r).await, "a read after a quiet spell");
        let _stream = r.follow();
        assert!(woke(&r).await, "a stream opening");
    }
}
