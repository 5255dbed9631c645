//! The cluster's leader election (its own contract, made by the cluster), as a node takes part in it: reading its seat's vote, and electing, voting
//! and withdrawing for its seat. The node sends from its node address (the contract lets a seat's node
//! vote for it) when that has funds, else with the transaction key, which the contract accepts only if it
//! holds the seat.

use alloy::primitives::{Address, TxHash, U256};
use alloy::signers::local::PrivateKeySigner;
use tracing::{info, instrument};

use crate::cluster::Cluster;
use crate::contract::DstackClusterElection;
use crate::error::ChainError;
use crate::node_key::NodeKey;

/// Gas given to a dispute beyond its estimate. The estimate is made against the chain as it is; when the
/// other seats' disputes land in between, this one may be the one that reaches the threshold and releases
/// the binding (the record cleared, the instance freed, the claim marked), which the estimate did not count.
/// Without it such a dispute ran out of gas and waited 30 s for its retry (scenario `attestation`, once in
/// three CI runs).
const DISPUTE_GAS_HEADROOM: u64 = 150_000;

/// Gas given to a ballot beyond its estimate. Electing walks the seats for the lowest eligible one, and a vote
/// that reaches the threshold elects the next: seats registered or votes cast between the estimate and the
/// block make the walk longer than estimated (scenario `scale`: fifty seats registering while the first
/// elects ran an election out of gas).
const BALLOT_GAS_HEADROOM: u64 = 60_000;

/// What a node asks of the election for its seat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ballot {
    /// `electLeader`: there is no leader.
    Elect,
    /// `castVote` against `target`: no confidence in it.
    Vote { target: u64 },
    /// `withdrawVote`.
    Withdraw,
}

impl std::fmt::Display for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Elect => write!(f, "electLeader"),
            Self::Vote { target } => write!(f, "castVote against seat {target}"),
            Self::Withdraw => write!(f, "withdrawVote"),
        }
    }
}

/// Why a ballot was not cast.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ElectionError {
    #[error(
        "no funded sender for {action}: fund this node's address ({node}) with `meshctl fund {node} --amount 0.01`, or give the agent a --tx-key-file that holds seat {seat}"
    )]
    NoSender {
        /// The call that was not sent (a ballot, a dispute), in words.
        action: String,
        node: Address,
        seat: u64,
    },
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// A ballot that went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cast {
    pub tx: TxHash,
    pub block: u64,
    pub from: Address,
}

impl Cluster {
    /// The seat seat `voter` votes against, if any.
    ///
    /// # Errors
    /// [`ChainError`] when the read fails.
    pub async fn vote_of(&self, voter: u64) -> Result<Option<u64>, ChainError> {
        let at = self.present().await?;
        let target = DstackClusterElection::new(self.election().await?, self.reader())
            .voteOf(U256::from(voter))
            .block(at)
            .call()
            .await
            .map_err(|e| ChainError::from_call("voteOf", e))?;
        Ok(u64::try_from(target).ok().filter(|t| *t != 0))
    }

    /// Sends `ballot` for seat `seat`, from the node's address when it has funds, else from
    /// `tx_key`, and waits for it to be mined.
    ///
    /// # Errors
    /// [`ElectionError`]: no funded sender, a revert in words (another node elected first, a vote already
    /// withdrawn, a sender that may not vote for the seat), or an RPC error.
    #[instrument(skip_all, fields(seat = seat, %ballot))]
    pub async fn cast(
        &self,
        node: &NodeKey,
        tx_key: Option<&PrivateKeySigner>,
        seat: u64,
        ballot: Ballot,
    ) -> Result<Cast, ElectionError> {
        let c = DstackClusterElection::new(self.election().await?, self.reader());
        let id = U256::from(seat);
        let as_seat = AsSeat { node, tx_key, seat };
        let action = ballot.to_string();
        match ballot {
            Ballot::Elect => {
                let call = c.electLeader(id);
                self.send_as(as_seat, action, "electLeader", call, BALLOT_GAS_HEADROOM)
                    .await
            }
            Ballot::Vote { target } => {
                let call = c.castVote(id, U256::from(target));
                self.send_as(as_seat, action, "castVote", call, BALLOT_GAS_HEADROOM)
                    .await
            }
            Ballot::Withdraw => {
                let call = c.withdrawVote(id);
                self.send_as(as_seat, action, "withdrawVote", call, BALLOT_GAS_HEADROOM)
                    .await
            }
        }
    }

    /// The leader, seat `seat`, hands its term to seat `to` (`handOff`), from the node's address when it
    /// has funds, else from `tx_key`, and waits for it to be mined.
    ///
    /// # Errors
    /// [`ElectionError`]: no funded sender, a revert in words (this seat no longer leads, `to` cannot take
    /// the lead), or an RPC error.
    #[instrument(skip_all, fields(seat, to))]
    pub async fn hand_off(
        &self,
        node: &NodeKey,
        tx_key: Option<&PrivateKeySigner>,
        seat: u64,
        to: u64,
    ) -> Result<Cast, ElectionError> {
        let c = DstackClusterElection::new(self.election().await?, self.reader());
        let call = c.handOff(U256::from(seat), U256::from(to));
        let action = format!("handOff to seat {to}");
        let as_seat = AsSeat { node, tx_key, seat };
        self.send_as(as_seat, action, "handOff", call, BALLOT_GAS_HEADROOM)
            .await
    }

    /// Sends `call` for seat `seat` from the node's address when it has funds, else from `tx_key`, and
    /// waits for it to be mined.
    async fn send_as<P: alloy::providers::Provider, D: alloy::contract::CallDecoder>(
        &self,
        who: AsSeat<'_>,
        action: String,
        what: &'static str,
        call: alloy::contract::CallBuilder<P, D>,
        headroom: u64,
    ) -> Result<Cast, ElectionError> {
        let at = self.present().await?;
        let Some(sender) = self
            .sender(who.node.transaction_signer(), who.tx_key, at)
            .await?
        else {
            return Err(ElectionError::NoSender {
                action,
                node: who.node.address(),
                seat: who.seat,
            });
        };
        let from = sender.address();
        let receipt = self.send(what, &sender, call, headroom).await?;
        let block = receipt.block_number.unwrap_or_default();
        let kind = match what {
            "disputeBinding" => "dispute",
            "handOff" => "hand-off",
            _ => "ballot",
        };
        info!(tx = %receipt.transaction_hash, block, %from, "{kind} mined");
        Ok(Cast {
            tx: receipt.transaction_hash,
            block,
            from,
        })
    }
}

/// Whom a transaction is sent for: a seat, by its node or the transaction key.
#[derive(Clone, Copy)]
struct AsSeat<'a> {
    node: &'a NodeKey,
    tx_key: Option<&'a PrivateKeySigner>,
    seat: u64,
}

impl Cluster {
    /// Seat `voter` disputes seat `target`'s binding of block `bound_block` (whose quote does not show what
    /// it claims), from the node's address when it has funds, else from `tx_key`, and waits for it to be
    /// mined. A dispute this seat already counted is mined and changes nothing.
    ///
    /// # Errors
    /// [`ElectionError`]: no funded sender, a revert in words (the seat was bound again since, or unbound), or
    /// an RPC error.
    #[instrument(skip_all, fields(seat = voter, target, bound_block))]
    pub async fn dispute(
        &self,
        node: &NodeKey,
        tx_key: Option<&PrivateKeySigner>,
        voter: u64,
        target: u64,
        bound_block: u64,
    ) -> Result<Cast, ElectionError> {
        let c = DstackClusterElection::new(self.election().await?, self.reader());
        let call = c.disputeBinding(U256::from(voter), U256::from(target), bound_block);
        let as_seat = AsSeat {
            node,
            tx_key,
            seat: voter,
        };
        let action = format!("disputeBinding against seat {target}");
        self.send_as(
            as_seat,
            action,
            "disputeBinding",
            call,
            DISPUTE_GAS_HEADROOM,
        )
        .await
    }
}
