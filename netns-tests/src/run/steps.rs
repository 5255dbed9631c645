//! A scenario's progress, printed as it goes with the time since it began.

use std::time::Instant;

/// Progress lines of one scenario, each stamped with the time since it began (`--nocapture` shows them).
pub struct Steps {
    name: &'static str,
    t0: Instant,
}

impl Steps {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            t0: Instant::now(),
        }
    }

    pub fn step(&self, what: &str) {
        eprintln!(
            "[{} {:>6.2}s] {what}",
            self.name,
            self.t0.elapsed().as_secs_f64()
        );
    }
}
