//! `--relay-for-peers` and its limits: whether this node relays WireGuard datagrams between two of its peers
//! that cannot reach each other directly, and how much it takes on.

use mesh_wg::{PeerRelayConfig, RelayLimits, RelayOffer};

/// `--relay-for-peers`: when this node offers to relay for its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayForPeersArg {
    /// When its own checks find its UDP port reachable: STUN sees no NAT in front of it, or a peer reached it
    /// first over UDP.
    Auto,
    Always,
    Never,
}

/// Peer relaying, on the userspace WireGuard only (the kernel's owns the port the relay needs).
#[derive(Debug, Clone, clap::Args)]
pub struct PeerRelayArgs {
    /// Relay WireGuard datagrams between two peers that cannot punch through to each other (two symmetric
    /// NATs, say), so that they need not go through the gateway: `auto` offers when STUN sees no NAT in
    /// front of this node, or once a peer reached it first over UDP. The relay forwards only between the
    /// two seats' authenticated endpoints, once both asked in their own tunnels; it sees ciphertext, who
    /// talks to whom and how much.
    #[arg(
        long,
        env = "DSTACK_MESH_RELAY_FOR_PEERS",
        value_enum,
        default_value_t = RelayForPeersArg::Auto
    )]
    pub relay_for_peers: RelayForPeersArg,
    /// The most pairs this node relays for at once.
    #[arg(long, env = "DSTACK_MESH_PEER_RELAY_MAX_PAIRS", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub peer_relay_max_pairs: u16,
    /// The most of those pairs one seat may be in.
    #[arg(long, env = "DSTACK_MESH_PEER_RELAY_MAX_PER_SEAT", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub peer_relay_max_per_seat: u16,
    /// Each pair's cap through this node, both ways together, in Mbit/s; 0 for none.
    #[arg(long, env = "DSTACK_MESH_PEER_RELAY_PAIR_MBPS", default_value_t = 0)]
    pub peer_relay_pair_mbps: u32,
    /// The cap on all this node relays for its peers, in Mbit/s; 0 for none.
    #[arg(long, env = "DSTACK_MESH_PEER_RELAY_TOTAL_MBPS", default_value_t = 0)]
    pub peer_relay_total_mbps: u32,
}

impl PeerRelayArgs {
    /// What the userspace device is made with.
    pub fn config(&self) -> PeerRelayConfig {
        let cap = |mbps: u32| (mbps > 0).then_some(mbps);
        PeerRelayConfig {
            offer: match self.relay_for_peers {
                RelayForPeersArg::Auto => RelayOffer::Auto,
                RelayForPeersArg::Always => RelayOffer::Always,
                RelayForPeersArg::Never => RelayOffer::Never,
            },
            limits: RelayLimits {
                max_pairs: self.peer_relay_max_pairs.into(),
                max_per_seat: self.peer_relay_max_per_seat.into(),
                pair_mbps: cap(self.peer_relay_pair_mbps),
                total_mbps: cap(self.peer_relay_total_mbps),
            },
        }
    }
}
