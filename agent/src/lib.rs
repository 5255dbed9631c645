//! dstack-mesh agent library: the pieces that `p2p-agent`, `meshctl`, the simulator and the tests share.
//!
//! Layout:
//! - [`api`]: the local API on a unix socket: status, peers, a stream of peer-set changes, metrics.
//! - [`backoff`]: exponential backoff for what is retried.
//! - [`chain`]: bindings to the `DstackClusterNFT` contract, from the committed Foundry artifact.
//! - [`dstack`]: a client for dstack's guest-agent API (HTTP on a unix socket, or the simulator's URL).
//! - [`follow`]: following the contract: full reads and events per block range, reorg-aware.
//! - [`hooks`]: the `--on-change` command, run with a cleaned environment and a time limit.
//! - [`identity`]: this node as dstack attests it: instance, app, record-signing key, WireGuard key.
//! - [`membership`]: the on-chain records that pass this node's own checks, as overlay peers.
//! - [`proof`]: the registration proof: dstack's signature chain plus the EIP-712 record signature.
//! - [`wg`]: the userspace WireGuard data plane: boringtun's noise over TUN and UDP, with the standard UAPI.
//! - [`state`]: the chain view kept in `--state-dir`, so a restart without the RPC brings the mesh up.
//! - [`socket`]: unix sockets served with stale-file replacement and cleanup on drop.
//! - [`redact`]: RPC URLs with their credentials hidden, for logs, errors and the API.
//! - [`reconcile`]: the one diff of desired peers against the device's, as minimal changes.
//! - [`registration`]: getting this node's record on-chain: find its seat, sign, send or hand to a relay.

pub mod api;
pub mod backoff;
pub mod chain;
pub mod dstack;
pub mod follow;
pub mod hooks;
pub mod identity;
pub mod membership;
pub mod proof;
pub mod reconcile;
pub mod redact;
pub mod registration;
pub mod socket;
pub mod state;
pub mod wg;
