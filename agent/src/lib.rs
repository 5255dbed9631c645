//! dstack-mesh agent library: the pieces that `p2p-agent`, `meshctl`, the simulator and the tests share.
//!
//! Layout:
//! - [`chain`]: bindings to the `DstackClusterNFT` contract, from the committed Foundry artifact.
//! - [`dstack`]: a client for dstack's guest-agent API (HTTP on a unix socket, or the simulator's URL).
//! - [`proof`]: the registration proof: dstack's signature chain plus the EIP-712 record signature.

pub mod chain;
pub mod dstack;
pub mod proof;
