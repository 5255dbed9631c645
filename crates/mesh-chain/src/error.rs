//! The crate's errors: what went wrong talking to the chain, in words that name the next step. A leaf
//! module, so that every other module can use it; reverts are decoded into [`Revert`] by [`crate::revert`].

use alloy::primitives::{Address, TxHash};

/// A URL that names no transport the agent speaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "an RPC URL must be http://, https://, ws:// or wss://, not {scheme}://: check --rpc-url and --rpc-ws-url"
)]
pub struct UnknownScheme {
    pub scheme: String,
}

/// Errors talking to the cluster contract.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    #[error(
        "no contract at {address}: check --contract/DSTACK_MESH_CONTRACT and that --rpc-url points at the right chain"
    )]
    NoCode { address: Address },
    #[error("{address} holds a contract that is not a DstackClusterNFT cluster ({detail})")]
    NotCluster { address: Address, detail: String },
    #[error(transparent)]
    Scheme(#[from] UnknownScheme),
    #[error("the RPC does not have block {number}")]
    MissingBlock { number: u64 },
    #[error(
        "the RPC reports {what} {rpc}, but this node pinned {what} {pinned} at its first start (kept in its state directory): a lying or misconfigured RPC? If the cluster really moved, restart the agent with --repin to trust the RPC's values"
    )]
    PinMismatch {
        what: &'static str,
        pinned: String,
        rpc: String,
    },
    #[error("the RPC's answer cannot be true of a cluster contract: {detail}")]
    Implausible { detail: String },
    #[error("the contract reverted: {0}")]
    Reverted(Revert),
    #[error(
        "{what} was mined in transaction {tx} but failed: out of gas, or a revert the estimate did not foresee (the chain moved in between); it is retried"
    )]
    TxFailed { what: &'static str, tx: TxHash },
    #[error(
        "{what} was sent to every provider as transaction {tx}, but no quorum of them showed its receipt within {waited:?}: the chain may have halted, or the transaction may be priced too low for it; it is retried"
    )]
    NoReceipt {
        what: &'static str,
        tx: TxHash,
        waited: std::time::Duration,
    },
    #[error("RPC request failed ({what}): {source}")]
    Rpc {
        what: &'static str,
        #[source]
        source: alloy::transports::TransportError,
    },
    #[error("contract call `{what}` failed: {source}")]
    Call {
        what: &'static str,
        #[source]
        source: alloy::contract::Error,
    },
}

impl ChainError {
    /// Whether the chain did not answer, as opposed to answering something: a provider (or a quorum of
    /// them) down, hanging or split, or a receipt that did not come. What was known before still holds.
    pub fn is_unanswered(&self) -> bool {
        matches!(
            self,
            Self::Rpc { .. }
                | Self::NoReceipt { .. }
                | Self::Call { .. }
                | Self::MissingBlock { .. }
        )
    }
}

/// A decoded revert: the contract's custom error in words, and what to do about it where that is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revert {
    /// The custom error's name, e.g. `ClusterSeatNotBound`.
    pub name: String,
    /// The error with its arguments, in words.
    pub message: String,
    /// What the user can do, when there is an obvious next step.
    pub hint: Option<String>,
}

impl std::fmt::Display for Revert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.name)?;
        if let Some(hint) = &self.hint {
            write!(f, ": {hint}")?;
        }
        Ok(())
    }
}
