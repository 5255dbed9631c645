//! The namespace scenarios of dstack-mesh, one module each, in one test binary: each binary links the whole
//! workspace with alloy (about 50 MB), so one of them instead of 30 saves disk and as many links. Run as
//! root, after building the binaries the scenarios start:
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo nextest run --profile scenarios          # those that bound nothing tightly, four at a time
//! cargo nextest run --profile timed              # those that time what they check, one at a time, alone
//! cargo test -p netns-tests --test scenarios failover:: -- --nocapture     # one module
//! ```
//!
//! `.config/nextest.toml` says which are timed: a scenario that asserts a bound of a few seconds or less, or
//! that loads both cores, would measure its neighbours as much as the system under test. The integration
//! tests that need no namespace are in `tests/integration`, and run in parallel with the unit tests.
mod adversary;
mod attestation;
mod compose;
mod control_plane_down;
mod deactivate;
mod failover;
mod fallback;
mod faults_chain;
mod faults_rpc;
mod faults_services;
mod forgery;
mod grants;
mod handoff;
mod join;
mod leader_lease;
mod leader_port;
mod liveness;
mod mesh;
mod nat;
mod nat_traversal;
mod observers;
mod overlay16;
mod peer_relay;
mod pending_registration;
mod policy_kernel;
mod postgres;
mod prometheus;
mod redis;
mod relay;
mod restart;
mod revoke;
mod rotate_and_move;
mod rpc_quorum;
mod scale;
mod sdk;
mod seat_request;
mod status_page;
mod tcb_policy;
mod wg_interop;
mod wg_netns;
mod wg_peer_relay;
mod wg_show;
