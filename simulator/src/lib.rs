//! `dstack-simulator`: dstack's guest-agent API with simulated hardware, for local dstack-mesh clusters.
//!
//! Unlike dstack's own simulator, each process can be a distinct instance of one app (same app key,
//! different instance id), and a fresh cluster can be rooted in a KMS key of your choosing.
//!
//! Layout:
//! - [`keys`]: dstack's key hierarchy (HKDF app and path keys) and the GetKey signature chain.
//! - [`fixture`]: dstack's two simulator fixtures, value for value.
//! - [`platform`]: everything simulated: identity, measurements, Sign/Verify, certificates.
//! - [`quote`]: the simulated TDX quote and the event log its RTMRs replay from.
//! - [`tls`]: the simulated "Dstack KMS CA" and the certificates it issues.
//! - [`server`]: the wire protocol (pRPC JSON over HTTP/1.1 on a unix socket, optionally loopback TCP).

pub mod fixture;
pub mod keys;
pub mod platform;
pub mod quote;
pub mod server;
pub mod tls;
