//! Buffers a burst of traffic grew, given back once they go unused. A bulk transfer fills the reader's queue
//! (up to 2,048 packet buffers, about 3 MB) and grows the writer's coalescing buffers (up to 64 KiB each); an
//! agent that kept them after the transfer held 3 MB more on the sending node and 7 MB more on the receiving
//! one for the rest of its life, which an agent of 999 peers (about 42 MiB) should not carry within the 64 MiB
//! it is allowed. Each side counts, over windows of [`WINDOW`], how many of its spare buffers were never taken,
//! and gives those back at the window's end: after a burst, a trickle of traffic keeps what it uses and no
//! more, and a silent device keeps none.

use std::time::{Duration, Instant};

/// How long spare buffers go untaken before they are given back.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// A side's spare buffers, counted over windows of [`WINDOW`]: how many were never taken in one.
#[derive(Debug, Default)]
pub(crate) struct Spare {
    /// The fewest spare buffers held at once since the window began: that many went untaken in it.
    fewest: usize,
    /// When the window ends; `None` while no spare buffer is held.
    ends: Option<Instant>,
}

impl Spare {
    /// Notes that `held` spare buffers are held now. Called when buffers have just been taken from them.
    pub(crate) fn held(&mut self, held: usize) {
        self.fewest = self.fewest.min(held);
    }

    /// Called where the device waits, with the `held` spare buffers: how many to give back now (those no
    /// packet took during a whole window), and when to review them again (`None`: none is held).
    pub(crate) fn review(&mut self, held: usize, now: Instant) -> (usize, Option<Instant>) {
        let unused = match self.ends {
            Some(ends) if now < ends => return (0, Some(ends)),
            Some(_) => self.fewest.min(held),
            None => 0,
        };
        let kept = held - unused;
        self.fewest = kept;
        self.ends = (kept > 0).then(|| now + WINDOW);
        (unused, self.ends)
    }
}

/// Hands the heap's free pages back to the kernel. glibc's allocator keeps what it freed in the middle of a
/// heap (every packet thread allocates from an arena of its own) and returns only a free top to the kernel,
/// so the buffers given back would otherwise stay resident.
pub(crate) fn return_freed_memory() {
    #[cfg(target_env = "gnu")]
    {
        #[allow(unsafe_code)]
        // SAFETY: malloc_trim takes a plain integer and only reorganises the allocator's own free lists.
        unsafe {
            nix::libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_held_needs_no_review() {
        let mut spare = Spare::default();
        assert_eq!(spare.review(0, Instant::now()), (0, None));
    }

    #[test]
    fn buffers_untaken_for_a_whole_window_are_given_back_at_its_end() {
        let t0 = Instant::now();
        let mut spare = Spare::default();
        assert_eq!(
            spare.review(2_000, t0),
            (0, Some(t0 + WINDOW)),
            "the window starts"
        );
        // A trickle takes a few at a time: at most 3 of the 2,000 were out at once.
        spare.held(1_998);
        spare.held(1_997);
        assert_eq!(
            spare.review(2_000, t0 + WINDOW / 2),
            (0, Some(t0 + WINDOW)),
            "not before the window ends"
        );
        let (given, next) = spare.review(2_000, t0 + WINDOW);
        assert_eq!(given, 1_997, "what the trickle never took");
        assert_eq!(next, Some(t0 + 2 * WINDOW), "the 3 it used are reviewed on");
        spare.held(0);
        assert_eq!(
            spare.review(3, t0 + 2 * WINDOW),
            (0, Some(t0 + 3 * WINDOW)),
            "all 3 were taken in the second window"
        );
        assert_eq!(
            spare.review(3, t0 + 3 * WINDOW),
            (3, None),
            "a silent window gives back the rest, and nothing is left to review"
        );
    }

    #[test]
    fn buffers_in_use_all_along_are_kept() {
        let t0 = Instant::now();
        let mut spare = Spare::default();
        spare.review(64, t0);
        spare.held(0);
        assert_eq!(spare.review(64, t0 + WINDOW), (0, Some(t0 + 2 * WINDOW)));
    }

    #[test]
    fn buffers_that_came_back_during_the_window_count_only_from_the_next() {
        let t0 = Instant::now();
        let mut spare = Spare::default();
        spare.review(10, t0);
        spare.held(0);
        // 100 more came back from a burst that ended within the window.
        assert_eq!(spare.review(110, t0 + WINDOW), (0, Some(t0 + 2 * WINDOW)));
        assert_eq!(spare.review(110, t0 + 2 * WINDOW), (110, None));
    }
}
