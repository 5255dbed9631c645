//! Throughput: iperf3 through the mesh, each reference and the bare link.

use crate::Args;
use crate::report::{BARE, MESH};
use crate::report::{Named, Streams, Throughput};
use crate::tunnel::Tunnel;

/// iperf3 through each of `tunnels` with 1 and 4 streams, and the mesh's rate over the best
/// reference's and over the bare link's.
pub(crate) fn throughput(args: &Args, tunnels: &[Tunnel<'_>]) -> Throughput {
    let streams = |streams: u32| {
        let runs = Named(
            tunnels
                .iter()
                .map(|p| (p.name, p.measure(streams, args.seconds)))
                .collect(),
        );
        let gbps = |name: &str| runs.get(name).map_or(0.0, |r| r.gbps);
        let best = tunnels
            .iter()
            .map(|p| p.name)
            .filter(|&n| n != MESH && n != BARE)
            .max_by(|a, b| gbps(a).total_cmp(&gbps(b)))
            .expect("at least one reference");
        let (over_best, over_bare) = (gbps(MESH) / gbps(best), gbps(MESH) / gbps(BARE));
        eprintln!(
            "   {streams} stream(s): mesh / {best} {over_best:.2}, mesh / bare {over_bare:.2}"
        );
        Streams {
            runs,
            best_peer: best,
            mesh_over_best: over_best,
            mesh_over_bare: over_bare,
        }
    };
    Throughput {
        seconds: args.seconds,
        streams1: streams(1),
        streams4: streams(4),
    }
}
