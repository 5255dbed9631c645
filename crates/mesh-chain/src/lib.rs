//! The cluster contract, and what an agent believes of it.
//!
//! - [`error`]: the crate's error, [`error::ChainError`], in words that name the next step.
//! - [`contract`]: bindings to `DstackClusterNFT` (alloy's `sol!` over the committed Foundry artifact), and the
//!   check that an address holds a cluster.
//! - [`revert`]: a contract's revert put into words.
//! - [`record`]: the peer record and the bind consent, their EIP-712 signatures, and their verification
//!   (dstack's chain itself is [`dstack_guest::chain`]).
//! - [`node_key`]: this node's key, made in the CVM, which signs its records, its binding and its ballots.
//! - [`membership`]: which records are believed, and which of those are peers to configure (pure).
//! - [`view`]: what a node believes of the chain, kept in its state file.
//! - [`follow`]: following the contract: paged full reads and events per block range, reorg-aware; what
//!   they do to the view is decided without I/O in [`follow::apply`].
//! - [`heads`]: what wakes the follower: new heads by WebSocket subscription, or a polling timer.
//! - [`budget`]: how often a node polls and reads every record as a safety net, so that the cluster's nodes
//!   together ask their provider a few requests a second whatever the cluster's size (pure).
//! - [`rpc`]: connections to the RPC, over HTTP or WebSocket, and the chain's providers ([`rpc::Rpcs`]),
//!   connected once: the one handle every read and transaction goes through.
//! - [`quorum`]: the transport over every provider: a read taken where a quorum agree, an estimate as their
//!   median, a transaction from the first that takes it; which method is which is decided in one place.
//! - [`stall`]: whether the chain has stopped making blocks, from when its head was seen to move (pure).
//! - [`tx`]: transactions signed once, sent to every provider, their receipts read through the quorum.
//! - [`cluster`]: the cluster contract as a node acts on it: the providers and the contract, shared by every
//!   task.
//! - [`cli`]: the provider flags the agent and `meshctl` share (feature `cli`).
//! - [`registration`]: getting this node's record on-chain.
//! - [`binding`]: a seat for a node without one: its request on-chain, and the holder's walk over them.
//! - [`election`]: the node's part in the leader election: its seat's vote, electing, voting, withdrawing.
//! - [`policy`]: who may reach whom, as the cluster's app auth holds it.
//! - [`tx_key`]: the key that pays for transactions.
//! - [`redact`]: RPC URLs with their credentials hidden, for logs, errors and the API.

pub mod binding;
pub mod budget;
#[cfg(feature = "cli")]
pub mod cli;
pub mod cluster;
pub mod contract;
pub mod election;
pub mod error;
pub mod follow;
pub mod heads;
pub mod membership;
pub mod node_key;
pub mod pace;
pub mod policy;
pub mod quorum;
pub mod record;
pub mod redact;
pub mod registration;
pub mod revert;
pub mod roster;
pub mod rpc;
pub mod stall;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tx;
pub mod tx_key;
pub mod view;
