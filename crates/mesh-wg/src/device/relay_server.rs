//! This node as a peer relay: its allocation table ([`mesh_peer_relay::Table`]), whether it offers, and what
//! it has told its peers. The device drives it from the packet thread and the timers
//! ([`super::peer_relay`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use crate::peer::OFFER_EVERY;

use mesh_path::reachability::RelayOffer;
use mesh_peer_relay::{Stats, Table};
use wg_key::Key;

use crate::config::PeerRelayConfig;

/// What the device tells of itself as a peer relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRelayStatus {
    /// Whether it offers to relay now, and why (or why not).
    pub offering: bool,
    pub why: &'static str,
    pub stats: Stats,
    /// Relayed datagrams whose header did not parse.
    pub malformed: u64,
}

/// This node as a relay.
pub(crate) struct Server {
    pub(super) table: Table,
    pub(super) mode: RelayOffer,
    pub(super) offering: bool,
    pub(super) why: &'static str,
    /// Each seat's endpoint as the table last heard it.
    pub(super) endpoints: HashMap<Key, Option<SocketAddr>>,
    /// When each peer was last told this node offers.
    pub(super) offered: HashMap<Key, Instant>,
    /// When the first of `offered` is due to be told again; `None` when none was told.
    pub(super) next_offer: Option<Instant>,
}

impl Server {
    pub(super) fn new(own: Key, config: PeerRelayConfig) -> Self {
        Self {
            table: Table::new(own, config.limits),
            mode: config.offer,
            offering: false,
            why: "not decided yet",
            endpoints: HashMap::new(),
            offered: HashMap::new(),
            next_offer: None,
        }
    }

    /// Whether a tick at `now` has peers to tell of the offer (or of its withdrawal): the offer changed
    /// (`changed`), an endpoint did (a peer that reaches this node directly now has not been told), a peer's
    /// last offer is due again, or peers told of a withdrawn offer are still to be forgotten. Otherwise the
    /// tick visits no peer: at 999 peers, visiting each at every tick was a tenth of an idle agent's CPU.
    pub(super) fn offers_due(&self, now: Instant, changed: bool, endpoints_changed: bool) -> bool {
        changed
            || endpoints_changed
            || self.next_offer.is_some_and(|t| now >= t)
            || (!self.offering && !self.offered.is_empty())
    }

    /// Notes when the offers told are due again, after a visit changed them.
    pub(super) fn offers_told(&mut self) {
        self.next_offer = self.offered.values().min().map(|t| *t + OFFER_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use mesh_peer_relay::Limits;

    use super::*;

    fn server() -> Server {
        let config = PeerRelayConfig {
            offer: RelayOffer::Always,
            limits: Limits::default(),
        };
        Server::new(Key::from_bytes([1; 32]), config)
    }

    #[test]
    fn a_tick_visits_the_peers_only_when_an_offer_is_due_or_something_moved() {
        let t0 = Instant::now();
        let mut s = server();
        s.offering = true;
        assert!(
            !s.offers_due(t0, false, false),
            "nothing told, nothing moved"
        );
        assert!(s.offers_due(t0, true, false), "the offer changed");
        assert!(s.offers_due(t0, false, true), "an endpoint changed");
        s.offered.insert(Key::from_bytes([2; 32]), t0);
        s.offered
            .insert(Key::from_bytes([3; 32]), t0 + OFFER_EVERY / 2);
        s.offers_told();
        assert!(!s.offers_due(t0 + OFFER_EVERY / 2, false, false));
        assert!(
            s.offers_due(t0 + OFFER_EVERY, false, false),
            "the first told is due again"
        );
        s.offering = false;
        assert!(
            s.offers_due(t0, false, false),
            "the peers told of a withdrawn offer are still to be forgotten"
        );
        s.offered.clear();
        s.offers_told();
        assert!(!s.offers_due(t0 + 10 * OFFER_EVERY, false, false));
    }
}
