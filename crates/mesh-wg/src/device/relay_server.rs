//! This node as a peer relay: its allocation table ([`mesh_peer_relay::Table`]), whether it offers, and what
//! it has told its peers. The device drives it from the packet thread and the timers
//! ([`super::peer_relay`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

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
    /// What the table heard of each seat and what each was told, in the order of the timer's peers.
    pub(super) seats: Seats,
}

impl Server {
    pub(super) fn new(own: Key, config: PeerRelayConfig) -> Self {
        Self {
            table: Table::new(own, config.limits),
            mode: config.offer,
            offering: false,
            why: "not decided yet",
            seats: Seats::default(),
        }
    }
}

/// One peer as the relay's upkeep knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seat {
    pub(super) key: Key,
    /// The seat's endpoint as the table last heard it; `None` until the table has heard of the seat.
    pub(super) endpoint: Option<Option<SocketAddr>>,
    /// When the peer was last told this node offers; `None` while it is not told.
    pub(super) offered: Option<Instant>,
}

/// The relay's upkeep's view of every peer, kept in the order of the timer's peers so that a tick reads each
/// by its place: with a thousand idle peers, looking each up by key at every tick (three hashes of a key) was
/// a fifth of the idle agent's CPU.
#[derive(Debug, Default)]
pub(super) struct Seats(Vec<Seat>);

impl Seats {
    /// Puts the seats in the order of `keys`, keeping what is known of each that stays; a new one is not yet
    /// heard of nor told. Returns the keys that are gone, in the order they were kept. A tick whose peers
    /// are those of the last compares each key once and moves nothing.
    pub(super) fn align(&mut self, keys: impl Iterator<Item = Key> + Clone) -> Vec<Key> {
        if self.0.iter().map(|s| s.key).eq(keys.clone()) {
            return Vec::new();
        }
        let mut known: HashMap<Key, Seat> = self.0.iter().map(|s| (s.key, *s)).collect();
        let aligned: Vec<Seat> = keys
            .map(|key| {
                known.remove(&key).unwrap_or(Seat {
                    key,
                    endpoint: None,
                    offered: None,
                })
            })
            .collect();
        let gone = (self.0.iter())
            .filter(|s| known.contains_key(&s.key))
            .map(|s| s.key)
            .collect();
        self.0 = aligned;
        gone
    }

    /// The seat at `i`, in the order of the keys last aligned to.
    pub(super) fn get_mut(&mut self, i: usize) -> &mut Seat {
        &mut self.0[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        Key::from_bytes([n; 32])
    }

    #[test]
    fn seats_follow_the_peers_order_and_keep_what_is_known_of_those_that_stay() {
        let mut seats = Seats::default();
        assert!(seats.align([key(1), key(2), key(3)].into_iter()).is_empty());
        let at = Instant::now();
        seats.get_mut(1).endpoint = Some(Some("10.0.0.2:51820".parse().unwrap()));
        seats.get_mut(1).offered = Some(at);
        seats.get_mut(2).endpoint = Some(None);

        assert!(
            seats.align([key(1), key(2), key(3)].into_iter()).is_empty(),
            "the same peers: nothing gone"
        );
        assert_eq!(seats.get_mut(1).offered, Some(at), "and nothing moved");

        let gone = seats.align([key(4), key(2), key(1)].into_iter());
        assert_eq!(gone, [key(3)]);
        assert_eq!(
            *seats.get_mut(0),
            Seat {
                key: key(4),
                endpoint: None,
                offered: None
            },
            "a new peer is neither heard of nor told"
        );
        assert_eq!(seats.get_mut(1).key, key(2));
        assert_eq!(seats.get_mut(1).offered, Some(at), "kept across the move");
        assert_eq!(
            seats.get_mut(2).endpoint,
            None,
            "key 1 had not been heard of"
        );

        assert_eq!(
            seats.align(std::iter::empty()),
            [key(4), key(2), key(1)],
            "all gone, in order"
        );
    }
}
