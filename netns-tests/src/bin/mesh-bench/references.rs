//! The reference userspace WireGuards the mesh is compared with: where `scripts/bench` installs them, and
//! a pair of each on the LAN.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use netns_tests::prelude::*;
use netns_tests::wg::{Reference, WireguardGo, test_key};

use crate::Args;

/// A reference that `scripts/bench` installs from crates.io, pinned, into the ignored `target/peers`.
struct Installed {
    flag: &'static str,
    env: &'static str,
    krate: &'static str,
    version: &'static str,
}

const GOTATUN: Installed = Installed {
    flag: "--gotatun",
    env: "MESH_BENCH_GOTATUN",
    krate: "gotatun-cli",
    version: "0.10.2",
};

const BORINGTUN_CLI: Installed = Installed {
    flag: "--boringtun-cli",
    env: "MESH_BENCH_BORINGTUN_CLI",
    krate: "boringtun-cli",
    version: "0.7.1",
};

impl Installed {
    /// `path` made absolute, or an error naming the flag and the command that installs it: a comparison
    /// without one of the references would read as complete, so there is no skipping it.
    fn at(&self, path: &std::path::Path) -> anyhow::Result<PathBuf> {
        let path = std::path::absolute(path)
            .with_context(|| format!("{} {}", self.flag, path.display()))?;
        anyhow::ensure!(
            path.is_file(),
            "{} is missing (set with {} or ${}): install it with `cargo install --locked --root target/peers \
             {} --version {}`, as scripts/bench does",
            path.display(),
            self.flag,
            self.env,
            self.krate,
            self.version
        );
        Ok(path)
    }
}

/// The references the mesh is compared with, in the table's order.
pub(crate) fn references(args: &Args) -> anyhow::Result<Vec<Reference>> {
    Ok(vec![
        Reference::Gotatun(GOTATUN.at(&args.gotatun)?),
        Reference::BoringtunCli(BORINGTUN_CLI.at(&args.boringtun_cli)?),
        Reference::WireguardGo,
    ])
}

/// Reference k's overlay address `host` (1 or 2): 10.0.(2 + k).host, apart from the mesh's 10.0.1.0/24.
pub(crate) fn reference_ip(k: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2 + u8::try_from(k).expect("few references"), host)
}

/// A pair of `reference` on nodes 3 + 2k and 4 + 2k, overlay [`reference_ip`]; returns once a ping goes
/// through (the handshake done), so that no measurement includes it.
pub(crate) fn reference_pair(
    lan: &Lan,
    reference: &Reference,
    k: usize,
) -> (WireguardGo, WireguardGo) {
    let (i, j) = (3 + 2 * k, 4 + 2 * k);
    let seed = |node: usize| u8::try_from(28 + node).expect("few references");
    // Node `node` as overlay host `host`, its peer node `peer` as `peer_host`.
    let start = |node: usize, host: u8, peer: usize, peer_host: u8| {
        WireguardGo::start(
            reference,
            lan.node(node),
            &test_key(seed(node)),
            &format!("{}/24", reference_ip(k, host)),
            &test_key(seed(peer)).public_key(),
            &format!("{}:51820", lan_ip(peer)),
            &format!("{}/32", reference_ip(k, peer_host)),
        )
    };
    let a = start(i, 1, j, 2);
    let b = start(j, 2, i, 1);
    let target = reference_ip(k, 2);
    wait_until(
        &format!("a ping through the {} pair ({i} -> {j})", reference.name()),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || ping(lan.node(i), target, 1, Duration::from_millis(200)).1 == 1,
        || lan.node(i).exec_ok(&["wg", "show", &a.ifname]),
    );
    (a, b)
}
