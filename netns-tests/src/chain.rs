//! A real anvil for tests, from the npm toolchain that `scripts/bootstrap` installs.

use std::path::PathBuf;

use alloy::node_bindings::{Anvil, AnvilInstance};

/// anvil from `ANVIL`, else `node_modules/.bin/anvil` at the workspace root.
///
/// # Panics
/// When neither exists, with the command that installs it.
pub fn anvil_path() -> PathBuf {
    if let Some(p) = std::env::var_os("ANVIL") {
        return p.into();
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../node_modules/.bin/anvil");
    assert!(
        p.exists(),
        "anvil not found at {}: run scripts/bootstrap (or set ANVIL)",
        p.display()
    );
    p
}

/// A fresh chain on a free loopback port; the process is killed (by its handle) when dropped.
///
/// # Panics
/// When anvil does not start.
pub fn anvil() -> AnvilInstance {
    Anvil::at(anvil_path()).try_spawn().expect("anvil starts")
}
