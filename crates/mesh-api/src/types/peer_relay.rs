//! This node as a peer relay (`--relay-for-peers`), as `/v1/status` shows it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Whether this node relays WireGuard datagrams between two of its peers that cannot reach each other, and
/// what it has carried since the interface came up (`/v1/status` `peerRelay`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRelayStatus {
    /// Whether it offers to relay now.
    pub offering: bool,
    /// Why it offers, or why not (`--relay-for-peers always`, "no NAT in front of this node", ...).
    pub why: String,
    /// Pairs it holds an allocation for now.
    pub allocations: u64,
    /// Allocations that became ready (both seats asked).
    pub granted: u64,
    pub forwarded_bytes: u64,
    pub forwarded_datagrams: u64,
    /// Requests refused, by reason: `not-relaying`, `not-a-seat`, `self`, `peer-not-on-udp`, `full`,
    /// `seat-limit`, `released`.
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
    /// Relayed datagrams not forwarded, by reason: `unknown-vni`, `not-ready`, `stranger`, `pair-rate`,
    /// `total-rate`.
    #[serde(default)]
    pub dropped: BTreeMap<String, u64>,
    /// Relayed datagrams whose header did not parse.
    #[serde(default)]
    pub malformed: u64,
}
