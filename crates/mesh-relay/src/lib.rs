//! The relay transport: WireGuard datagrams carried over a TCP stream through the dstack gateway, for peers
//! whose UDP cannot get through. The gateway terminates TLS and forwards plain TCP to the relay port; the
//! stream opens with an HTTP/1.1 upgrade and then carries length-prefixed frames, each one WireGuard message.
//! WireGuard's own cryptography stays end to end, so the gateway and the hosts see only ciphertext.
//!
//! - `frame`: the framing and the check that a frame is a WireGuard message.
//! - `upgrade`: the HTTP/1.1 upgrade that opens a stream.
//! - `target`: a peer's relay, from the gateway URL in its record.
//! - `link`: [`Link`], the sending end of a stream, [`Inbound`] datagrams, and the frame pump.
//! - `server`: the endpoint each node serves ([`serve`]).
//! - `dial`: [`Dialer`], which opens streams to peers' relays.

mod dial;
pub mod frame;
mod link;
mod server;
mod target;
pub mod upgrade;

use std::sync::atomic::{AtomicU64, Ordering};

pub use dial::{DialError, Dialer, TrustError};
pub use link::{Direction, Inbound, Link, QUEUE_BYTES, StreamEnd};
pub use server::{Limits, serve};
pub use target::{RelayTarget, TargetError, relay_target};

/// The relay's counters, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Streams accepted by this node's endpoint.
    pub accepted: AtomicU64,
    /// Streams this node dialled.
    pub dialled: AtomicU64,
    /// Streams refused because too many were open.
    pub refused: AtomicU64,
    /// Streams open now, both directions.
    pub open: AtomicU64,
    /// Streams closed for a malformed frame.
    pub malformed: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Metrics {
    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
