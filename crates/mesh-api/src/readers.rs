//! Whether an application reads the peers' health through the API: the agent holds every peer to the peer
//! timeout while one does, and lets idle peers nothing else watches go to a longer bound otherwise
//! (`mesh_wg::Watching`). Every GET but `/metrics` counts as a read, and an open event stream as one that
//! lasts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The API's readers, shared by every listener and the agent's mesh task.
#[derive(Debug, Default)]
pub struct Readers {
    last_read: Mutex<Option<Instant>>,
    streams: AtomicUsize,
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
        *self.last_read.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
    }

    /// An event stream opened; it counts until the guard is dropped.
    pub fn follow(self: &Arc<Self>) -> Following {
        self.streams.fetch_add(1, Ordering::Relaxed);
        Following(Arc::clone(self))
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
}
