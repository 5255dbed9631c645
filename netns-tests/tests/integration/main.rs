//! The integration tests of dstack-mesh that need no root and no network namespace: the chain follower,
//! registration, the agent's daemon in TLS mode, its API and meshctl, each against an anvil of its own and
//! processes on loopback. They do not time one another, so they run in parallel, with the unit tests. The
//! namespace scenarios are in `tests/scenarios`. Run, after building the binaries these tests start:
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo nextest run -p netns-tests --test integration                  # all of them, in parallel
//! cargo test -p netns-tests --test integration chain_follow:: -- --nocapture   # one module
//! ```
mod agent_api;
mod agent_daemon;
mod api_commands;
mod chain_follow;
mod chain_providers;
mod chain_races;
mod chain_registration;
mod meshctl_cli;
mod meshctl_leader;
mod meshctl_policy;
mod meshctl_status;
mod runbook;
mod status_feed;
