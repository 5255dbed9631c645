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
    /// Each seat's endpoint as the table last heard it.
    pub(super) endpoints: HashMap<Key, Option<SocketAddr>>,
    /// When each peer was last told this node offers.
    pub(super) offered: HashMap<Key, Instant>,
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
        }
    }
}
