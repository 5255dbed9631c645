//! Throughput: iperf3 through the mesh, each reference and the bare link.

use crate::Args;
use crate::cost::rss_kib;
use crate::report::{BARE, MESH};
use crate::report::{Named, Streams, Throughput};
use crate::tunnel::Tunnel;

/// iperf3 through each of `tunnels` with 1 and 4 streams, and the mesh's rate over the best
/// reference's and over the bare link's.
pub(crate) fn throughput(args: &Args, tunnels: &[Tunnel<'_>]) -> Throughput {
    let mesh_rss = || mesh_rss_mib(tunnels);
    let mesh_rss_mib_before = mesh_rss();
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
    let (streams1, streams4) = (streams(1), streams(4));
    let mesh_rss_mib_after = mesh_rss();
    if let (Some([b0, b1]), Some([a0, a1])) = (mesh_rss_mib_before, mesh_rss_mib_after) {
        eprintln!(
            "   the mesh's agents (sending / receiving node): RSS {b0:.1} / {b1:.1} MiB before its runs, {a0:.1} / {a1:.1} MiB after them, quiet since"
        );
    }
    Throughput {
        seconds: args.seconds,
        streams1,
        streams4,
        mesh_rss_mib_before,
        mesh_rss_mib_after,
    }
}

/// The RSS of the mesh's agent on the sending and on the receiving node, MiB.
fn mesh_rss_mib(tunnels: &[Tunnel<'_>]) -> Option<[f64; 2]> {
    let sides = tunnels.iter().find(|t| t.name == MESH)?.sides.as_ref()?;
    let mib = |pid| rss_kib(pid).ok().map(|kib| kib as f64 / 1024.0);
    Some([mib(sides[0].pid)?, mib(sides[1].pid)?])
}
