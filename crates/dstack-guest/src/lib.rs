//! dstack's guest API, with nothing mesh-specific: what an app inside a dstack CVM calls, and how to check
//! what it gets back.
//!
//! - [`wire`]: the guest agent's JSON wire types (pRPC's JSON form), shared by the client and simulators.
//! - [`client`]: a client for the guest agent, finding its endpoint as dstack's SDKs do.
//! - [`chain`]: dstack's GetKey signature chain: its messages, [`chain::verify_chain`], and the proof a
//!   derived key carries.

pub mod chain;
pub mod client;
pub mod wire;

pub use chain::{DstackProof, ProofError, VerifiedChain, verify_chain};
pub use client::{
    DerivedKey, DstackClient, DstackError, Endpoint, GetKeyReply, Info, Quote, SignatureChain,
};
