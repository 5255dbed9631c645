//! dstack-mesh agent library: the pieces that `p2p-agent`, `meshctl`, the simulator and the tests share.
//!
//! Layout:
//! - [`api`]: the local API on a unix socket: status, peers, a stream of peer-set changes, metrics.
//! - [`chain`]: bindings to the `DstackClusterNFT` contract, from the committed Foundry artifact.
//! - [`dstack`]: a client for dstack's guest-agent API (HTTP on a unix socket, or the simulator's URL).
//! - [`identity`]: this node as dstack attests it: instance, app, record-signing key, WireGuard key.
//! - [`proof`]: the registration proof: dstack's signature chain plus the EIP-712 record signature.
//! - [`socket`]: unix sockets served with stale-file replacement and cleanup on drop.
//! - [`registration`]: getting this node's record on-chain: find its seat, sign, send or hand to a relay.

pub mod api;
pub mod chain;
pub mod dstack;
pub mod identity;
pub mod proof;
pub mod registration;
pub mod socket;
