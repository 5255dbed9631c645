//! The namespace scenarios and integration tests of dstack-mesh, one module each, in one test binary: each
//! binary links the whole workspace with alloy (about 50 MB), so one of them instead of 33 saves some
//! 1.6 GB of disk and as many links. Run as root, after building the binaries the scenarios start:
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios -- --test-threads=1           # all of them, one at a time
//! cargo test -p netns-tests --test scenarios failover:: -- --nocapture     # one module
//! ```
//!
//! `scripts/test` runs them one at a time, as when each module was its own binary run alone: most time how
//! long failover or convergence takes, and two at once on 2 cores would measure each other.
mod adversary;
mod agent_api;
mod agent_daemon;
mod attestation;
mod chain_follow;
mod chain_registration;
mod compose;
mod control_plane_down;
mod deactivate;
mod failover;
mod fallback;
mod forgery;
mod join;
mod leader_lease;
mod liveness;
mod mesh;
mod meshctl_cli;
mod meshctl_status;
mod nat;
mod nat_traversal;
mod overlay16;
mod pending_registration;
mod postgres;
mod prometheus;
mod redis;
mod relay;
mod restart;
mod revoke;
mod rotate_and_move;
mod scale;
mod sdk;
mod sdk_typescript;
mod status_page;
mod wg_interop;
mod wg_netns;
mod wg_show;
