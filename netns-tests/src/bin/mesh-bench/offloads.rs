//! Offloads: the mesh's throughput with its TUN offload, its UDP GSO/GRO, or both turned off.

use netns_tests::prelude::*;

use crate::Args;
use crate::report::{ByStreams, Named};
use crate::topology::tunnels;

/// The mesh's variants with offloads turned off, by name and the agents' flags.
pub(crate) const VARIANTS: [(&str, &[&str]); 3] = [
    ("no offloads", &["--no-tun-offload", "--no-udp-offload"]),
    ("TUN offload only", &["--no-udp-offload"]),
    ("UDP GSO/GRO only", &["--no-tun-offload"]),
];

/// Throughput and its cost through the mesh for each of [`VARIANTS`], each on a fresh two-node
/// topology (the full mesh is the throughput section's `mesh`).
pub(crate) fn offloads(args: &Args) -> Named<ByStreams> {
    let mut out = Vec::new();
    for (name, flags) in VARIANTS {
        let lan = Lan::new(2);
        let cluster = Cluster::deploy_seats(&lan, 2);
        let mut all = vec!["--wg-backend", "userspace"];
        all.extend(flags);
        let (agents, _keys) = Agent::builder(&cluster).flags(all).mesh(1..=2);
        let mut tunnel = tunnels(&lan, &agents, &[]).remove(0);
        tunnel.name = name;
        let runs = ByStreams {
            streams1: tunnel.measure(1, args.seconds),
            streams4: tunnel.measure(4, args.seconds),
        };
        out.push((name, runs));
    }
    Named(out)
}
