//! What the namespaces are made of:
//! - [`netns`]: namespaces and veth pairs.
//! - [`uplink`]: what stands between a node and the switch (NAT routers of four kinds, slirp4netns), the
//!   nodes' addresses, and coturn as a STUN server.
//! - [`wg`]: WireGuard devices in namespaces (ours and the reference implementations).
//! - [`ping`]: reachability between namespaces.

pub mod netns;
pub mod ping;
pub mod uplink;
pub mod wg;
