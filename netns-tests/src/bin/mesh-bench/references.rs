//! The reference userspace WireGuards the mesh is compared with, and where `scripts/bench` installs them.

use std::path::PathBuf;

use anyhow::Context as _;
use netns_tests::net::wg::Reference;

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
pub(crate) fn installed(args: &Args) -> anyhow::Result<Vec<Reference>> {
    Ok(vec![
        Reference::Gotatun(GOTATUN.at(&args.gotatun)?),
        Reference::BoringtunCli(BORINGTUN_CLI.at(&args.boringtun_cli)?),
        Reference::WireguardGo,
    ])
}
