//! Which peers' timers run at a tick: every peer that is not quiet, and a quiet one once a [`QUIET_TICK`] or
//! as soon as anything touches it. With a thousand idle peers, a tick visits the hundred that are due.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use mesh_path::relays::Candidate;
use wg_key::Key;

use crate::peer::{Peer, QUIET_TICK, RelayView, Ticked};

/// The device's peers as the timer knows them, each with its part in peer relaying as its last run left it.
#[derive(Default)]
pub(super) struct Schedule {
    /// The device's [`super::shared::State::generation`] the list was read at.
    generation: Option<u64>,
    views: Vec<(Arc<Peer>, RelayView)>,
    /// Each peer's place in `views`, by key: a tick's control messages are addressed by key, and at a
    /// thousand peers a search of the list for each of a round of offers was a million comparisons.
    places: HashMap<Key, usize>,
    /// When each peer's timer runs next, by its place in `views`.
    next: Vec<Instant>,
    candidates: Vec<Candidate>,
    /// The relays ready for the pairs changed, or the peers did, since last taken.
    ready_changed: bool,
}

impl Schedule {
    /// Reads the device's peers again when they changed (by `generation`), keeping what is known of those that
    /// stay. A new peer's timer runs at once.
    pub(super) fn sync(
        &mut self,
        generation: u64,
        peers: impl FnOnce() -> Vec<Arc<Peer>>,
        now: Instant,
    ) {
        if self.generation == Some(generation) {
            return;
        }
        let mut known: HashMap<Key, (RelayView, Instant)> = (self.views.drain(..))
            .zip(self.next.drain(..))
            .map(|((p, view), next)| (p.public_key, (view, next)))
            .collect();
        for peer in peers() {
            let (view, next) = known
                .remove(&peer.public_key)
                .unwrap_or((RelayView::default(), now));
            self.views.push((peer, view));
            self.next.push(next);
        }
        self.places = (self.views.iter().enumerate())
            .map(|(i, (p, _))| (p.public_key, i))
            .collect();
        self.generation = Some(generation);
        self.ready_changed = true;
        self.candidates_changed();
    }

    /// The peers whose timers run now, by place: those due, and those touched since their last run.
    pub(super) fn due(&self, now: Instant) -> Vec<usize> {
        (self.views.iter().zip(&self.next).enumerate())
            // Every peer's flag is taken, so that one touched just before its timer ran is not run twice.
            .filter(|(_, ((peer, _), next))| peer.take_touched() | (now >= **next))
            .map(|(i, _)| i)
            .collect()
    }

    pub(super) fn peer(&self, i: usize) -> &Arc<Peer> {
        &self.views[i].0
    }

    /// The peer whose key is `key`, if it is one.
    pub(super) fn peer_of(&self, key: &Key) -> Option<&Arc<Peer>> {
        self.places.get(key).map(|&i| &self.views[i].0)
    }

    /// The peer at `i` ran its timer at `now`: it runs again at the next tick, or after [`QUIET_TICK`] if quiet.
    pub(super) fn ran(&mut self, i: usize, ticked: &Ticked, now: Instant) {
        let (_, view) = &mut self.views[i];
        self.ready_changed |= view.ready != ticked.view.ready;
        let candidate_changed = view.candidate != ticked.view.candidate;
        *view = ticked.view.clone();
        self.next[i] = if ticked.quiet { now + QUIET_TICK } else { now };
        if candidate_changed {
            self.candidates_changed();
        }
    }

    fn candidates_changed(&mut self) {
        self.candidates = (self.views.iter())
            .filter_map(|(_, v)| v.candidate)
            .collect();
    }

    /// The peers that offer to relay and that this node reaches directly.
    pub(super) fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// Every peer with its part in peer relaying.
    pub(super) fn views(&self) -> &[(Arc<Peer>, RelayView)] {
        &self.views
    }

    /// Whether the relays ready for the pairs, or the peers, changed since last asked.
    pub(super) fn take_ready_changed(&mut self) -> bool {
        std::mem::take(&mut self.ready_changed)
    }
}

#[cfg(test)]
mod tests {
    use boringtun::noise::rate_limiter::RateLimiter;
    use boringtun::x25519;

    use super::*;
    use crate::Liveness;
    use crate::peer::NoiseKeys;

    fn peer(seed: u8) -> Arc<Peer> {
        let secret = x25519::StaticSecret::from([seed; 32]);
        let public = x25519::PublicKey::from(&secret);
        let keys = NoiseKeys {
            rate_limiter: Arc::new(RateLimiter::new(&public, 100)),
            secret,
        };
        let key = Key::from_bytes([seed.wrapping_add(100); 32]);
        Arc::new(Peer::new(
            key,
            u32::from(seed),
            &keys,
            None,
            Liveness::default(),
            &[],
        ))
    }

    fn ticked(quiet: bool) -> Ticked {
        Ticked {
            sends: Vec::new(),
            view: RelayView::default(),
            reached_first: false,
            quiet,
        }
    }

    /// A quiet peer's timer waits a [`QUIET_TICK`] unless something touches it; a busy one runs at every tick;
    /// a new peer's runs at once, and those that stay keep their place when the peers change.
    #[test]
    fn a_quiet_peer_runs_once_a_quiet_tick_or_when_touched() {
        let tick = super::super::TIMER_TICK;
        let (p, q, r) = (peer(1), peer(2), peer(3));
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.sync(1, || vec![p.clone(), q.clone()], t0);
        assert_eq!(s.due(t0), [0, 1], "new peers run at once");
        s.ran(0, &ticked(true), t0);
        s.ran(1, &ticked(false), t0);
        assert_eq!(s.due(t0 + tick), [1], "the quiet one waits");
        p.touch();
        assert_eq!(s.due(t0 + tick), [0, 1], "until touched");
        s.ran(0, &ticked(true), t0 + tick);
        assert_eq!(s.due(t0 + 2 * tick), [1]);
        assert_eq!(s.due(t0 + tick + QUIET_TICK), [0, 1], "a quiet tick later");
        s.sync(
            1,
            || unreachable!("the same generation is not read again"),
            t0,
        );
        r.take_touched();
        s.sync(2, || vec![q.clone(), p.clone(), r.clone()], t0 + 2 * tick);
        assert_eq!(s.due(t0 + 2 * tick), [0, 2], "q busy, p still quiet, r new");
        assert!(
            Arc::ptr_eq(s.peer_of(&p.public_key).unwrap(), &p),
            "found by key in its new place"
        );
        s.sync(3, || vec![q.clone()], t0 + 3 * tick);
        assert!(s.peer_of(&p.public_key).is_none(), "gone with the peers");
    }
}
