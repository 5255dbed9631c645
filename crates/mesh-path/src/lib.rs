//! How a peer is reached, as pure decisions: the device in `mesh-wg` gives them the time and what arrived,
//! and does what they return. Nothing here sends, sleeps or reads a clock, so every rule is tested with
//! made-up instants.
//!
//! From the bottom up, each module using only those above it in this list:
//! - [`ipv4`]: the IPv4 packets the device makes and takes itself inside the tunnel.
//! - [`liveness`]: whether a peer answers now ([`Liveness`]), and when to probe it.
//! - [`path`]: which way a peer's datagrams go, direct or through its relay, and when to move
//!   ([`PathState`]).
//! - [`redial`]: when to dial a peer's relay again (one attempt at a time, with backoff).
//! - [`stun`]: STUN Binding requests from the WireGuard socket and their answers, one round at a time.
//! - [`nat`]: the NAT's mapping as STUN servers show it, and which pairs can punch.
//! - [`candidates`]: the addresses a node may be reached at, and the message peers exchange them in.
//! - [`punch`]: hole punching toward one peer.
//! - [`reachability`]: what a node knows of its own reachability, and the candidates it publishes.
//! - [`relays`]: which peer relay a pair that cannot go direct uses, by the round trips through each.
//!
//! The backoff that punching and the relay's redial share (with the chain follower, the leader and the
//! SDK's client) is the `backoff` crate's.

// Tests need an `Instant` to start from, and std makes one only from the clock.
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod candidates;
pub mod ipv4;
pub mod liveness;
pub mod nat;
pub mod path;
pub mod punch;
pub mod reachability;
pub mod redial;
pub mod relays;
pub mod stun;

pub use candidates::{Candidate, Source as CandidateSource};
pub use liveness::{
    DEFAULT_TIMEOUT as DEFAULT_PEER_TIMEOUT, Liveness, MAX_TIMEOUT as MAX_PEER_TIMEOUT,
    MIN_TIMEOUT as MIN_PEER_TIMEOUT,
};
pub use nat::{Mapping, NatReport};
pub use path::{
    DIRECT_QUIET, FIRST_PATH_WITHIN, HANDSHAKE_UNANSWERED, PROBE_INTERVAL, PathKind, PathState,
    TRIAL, TRIAL_EVERY,
};
pub use punch::WINDOW as PUNCH_WINDOW;
pub use stun::ServerResult as StunResult;
