//! Throughput: iperf3 through the mesh, each reference and the bare link.

use serde_json::{Value, json};

use crate::Args;
use crate::tunnel::Tunnel;

/// iperf3 through each of `tunnels` with 1 and 4 streams, and the mesh's rate over the best
/// reference's and over the bare link's.
pub(crate) fn throughput(args: &Args, tunnels: &[Tunnel<'_>]) -> Value {
    let mut out = json!({ "seconds": args.seconds });
    for streams in [1u32, 4] {
        let mut runs = json!({});
        for p in tunnels {
            runs[p.name] = p.measure(streams, args.seconds);
        }
        let gbps = |name: &str| runs[name]["gbps"].as_f64().unwrap_or(0.0);
        let best = tunnels
            .iter()
            .map(|p| p.name)
            .filter(|&n| n != "mesh" && n != "bare")
            .max_by(|a, b| gbps(a).total_cmp(&gbps(b)))
            .expect("at least one reference");
        let (over_best, over_bare) = (gbps("mesh") / gbps(best), gbps("mesh") / gbps("bare"));
        eprintln!(
            "   {streams} stream(s): mesh / {best} {over_best:.2}, mesh / bare {over_bare:.2}"
        );
        runs["bestPeer"] = json!(best);
        runs["meshOverBest"] = json!(over_best);
        runs["meshOverBare"] = json!(over_bare);
        out[format!("streams{streams}")] = runs;
    }
    out
}
