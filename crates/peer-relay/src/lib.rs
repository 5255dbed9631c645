//! Peer relays. A peer relay is a member of the mesh that forwards WireGuard datagrams between two other
//! seats that cannot punch through to each other, so that such a pair need not go through the gateway. It
//! relays only for an allocation both seats asked for, each inside its own WireGuard tunnel to the relay,
//! so each request is as authenticated as the seat's tunnel is; and only between the endpoints those
//! tunnels come from. It forwards the pair's datagrams as they are, end-to-end encrypted: it sees
//! ciphertext, who talks to whom, how much and when, and can drop what it carries, no more.
//!
//! - [`wire`]: the header on a relayed datagram, and the control messages of allocation.
//! - [`table`]: the relay's allocations, and where each relayed datagram goes ([`Table`]).
//!
//! Pure, as `mesh-path` is: nothing here sends, sleeps or reads a clock (its `clippy.toml` and
//! `scripts/test` keep it so). The device in `mesh-wg` gives it the time, each datagram's source and
//! what arrived, and does what it returns; the client side, which relay a pair uses, is `mesh-path`'s.

// Tests need an `Instant` to start from, and std makes one only from the clock.
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod table;
pub mod wire;

pub use table::{Dropped, Limits, Seats, Stats, Table};
pub use wire::{CONTROL_PORT, Control, HEADER_LEN, Header, Malformed, Op, RefusedReason};
