//! Transactions that one provider cannot stop: each is signed once and sent to every provider (the same
//! bytes, so the first that takes it wins and the rest are duplicates), sent again to all of them while it
//! waits, and its receipt is read through the quorum. A provider that is down, hangs, refuses or drops
//! transactions changes nothing while another takes them; the report names it ([`crate::quorum`]).
//!
//! Its gas and fees are the median of the providers' estimates, its nonce the count a quorum agrees on at
//! the head a quorum reached, above the nonces this process still waits on. One transaction is signed at a
//! time, so that two tasks of one node never take one nonce.

use std::time::{Duration, Instant};

use alloy::eips::eip2718::Encodable2718 as _;
use alloy::network::{EthereumWallet, NetworkTransactionBuilder as _, TransactionBuilder as _};
use alloy::primitives::{Address, B256, Bytes, TxHash};
use alloy::providers::Provider as _;
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::{RpcError, TransportErrorKind};
use tracing::{debug, info};

use crate::error::ChainError;
use crate::quorum::agree;
use crate::rpc::{Rpcs, Sending};

/// How often the receipt is asked for.
const RECEIPT_POLL: Duration = Duration::from_millis(250);

/// How long a transaction waits for its receipt before it is reported as failed (its sender retries).
pub const RECEIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// How often a transaction still waiting is sent to every provider again: one that dropped it, or was down
/// when it was sent, gets it again.
const RESEND_EVERY: Duration = Duration::from_secs(5);

/// A transaction sent, still waited on: its nonce is freed when this is dropped, however the wait ends.
struct Waiting<'a> {
    sending: &'a Sending,
    from: Address,
    nonce: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = self.sending.waiting();
        if let Some(nonces) = waiting.get_mut(&self.from) {
            nonces.remove(&self.nonce);
            if nonces.is_empty() {
                waiting.remove(&self.from);
            }
        }
    }
}

/// What a transaction pays for its gas.
enum Fees {
    Eip1559 { max_fee: u128, tip: u128 },
    Legacy { price: u128 },
}

/// A signed transaction.
struct Signed {
    raw: Bytes,
    hash: B256,
    nonce: u64,
}

impl Rpcs {
    /// Sends `request` from `signer`: its gas is the estimate plus `headroom`, and a revert at estimation
    /// comes back in words ([`ChainError::Reverted`]). Waits for the receipt, read through the quorum.
    ///
    /// # Errors
    /// [`ChainError`]: a revert, a refusal by every provider (funds, nonce), no receipt within
    /// [`RECEIPT_TIMEOUT`] ([`ChainError::NoReceipt`]), or a transaction mined but failed.
    pub async fn send(
        &self,
        what: &'static str,
        signer: &PrivateKeySigner,
        request: TransactionRequest,
        headroom: u64,
    ) -> Result<TransactionReceipt, ChainError> {
        let from = signer.address();
        let (signed, waiting) = {
            let _one = self.sending.one_at_a_time.lock().await;
            let mut signed = self
                .sign(what, signer, request.clone(), headroom, Attempt::default())
                .await?;
            if let Err(e) = self.broadcast(what, &signed.raw).await {
                // Once more, for the two refusals another signing can answer: a nonce a mined transaction of
                // this sender took (the head the count was read at was behind it), or one a transaction of its
                // still waiting holds at a lower price (its own, left behind by a restart or a fee spike).
                let again = match refused(&e) {
                    Some(Refused::Nonce) => Attempt {
                        at_least: Some(signed.nonce + 1),
                        bump_percent: 0,
                    },
                    Some(Refused::Underpriced) => Attempt {
                        at_least: None,
                        bump_percent: REPLACEMENT_BUMP_PERCENT,
                    },
                    None => return Err(e),
                };
                debug!(what, nonce = signed.nonce, ?again, "refused; signing again");
                signed = self
                    .sign(what, signer, request.clone(), headroom, again)
                    .await?;
                self.broadcast(what, &signed.raw).await?;
            }
            self.sending
                .waiting()
                .entry(from)
                .or_default()
                .insert(signed.nonce);
            let waiting = Waiting {
                sending: &self.sending,
                from,
                nonce: signed.nonce,
            };
            (signed, waiting)
        };
        let receipt = self.receipt(what, &signed).await;
        drop(waiting);
        match receipt {
            Err(ChainError::TxFailed { what, tx }) => {
                Err(self.why_failed(what, tx, from, request).await)
            }
            other => other,
        }
    }

    /// Why a transaction mined but failed: the same call made again on the chain as it is now, whose revert
    /// names what changed in between (another node's transaction took the step first, say), or the failure
    /// as it was when the call passes now (it ran out of gas) or the RPC does not answer.
    ///
    /// Made at a head a quorum has reached, as every other read: at `latest`, a provider a block behind
    /// the others answers the call as it was before, and an honest provider is named as dissenting.
    async fn why_failed(
        &self,
        what: &'static str,
        tx: TxHash,
        from: Address,
        request: TransactionRequest,
    ) -> ChainError {
        let at = match self.present().await {
            Ok(at) => at,
            Err(e) => {
                debug!(what, %tx, error = %e, "no head to call the failed transaction again at");
                return ChainError::TxFailed { what, tx };
            }
        };
        match self.reader().call(request.from(from)).block(at).await {
            Err(e) => {
                match ChainError::from_call(what, alloy::contract::Error::TransportError(e)) {
                    ChainError::Reverted(revert) => {
                        debug!(what, %tx, %revert, "the failed transaction, called again, names its revert");
                        ChainError::Reverted(revert)
                    }
                    _ => ChainError::TxFailed { what, tx },
                }
            }
            Ok(_) => ChainError::TxFailed { what, tx },
        }
    }

    /// Fills `request` (chain id, nonce, gas, fees) and signs it.
    async fn sign(
        &self,
        what: &'static str,
        signer: &PrivateKeySigner,
        request: TransactionRequest,
        headroom: u64,
        attempt: Attempt,
    ) -> Result<Signed, ChainError> {
        let from = signer.address();
        let request = request.with_from(from);
        let chain_id = *self
            .sending
            .chain_id
            .get_or_try_init(|| async {
                self.reader()
                    .get_chain_id()
                    .await
                    .map_err(|source| ChainError::Rpc {
                        what: "eth_chainId",
                        source,
                    })
            })
            .await?;
        // Asked together: each estimate waits a moment for a slow provider's figure, not one after another.
        let (gas, fees, nonce) = tokio::join!(
            self.reader().estimate_gas(request.clone()),
            self.fees(),
            self.next_nonce(from, attempt.at_least),
        );
        let gas = gas
            .map_err(|e| ChainError::from_call(what, alloy::contract::Error::TransportError(e)))?;
        let nonce = nonce?;
        let bump = |fee: u128| fee.saturating_mul(100 + u128::from(attempt.bump_percent)) / 100;
        let request = match fees? {
            Fees::Eip1559 { max_fee, tip } => request
                .with_max_fee_per_gas(bump(max_fee))
                .with_max_priority_fee_per_gas(bump(tip)),
            Fees::Legacy { price } => request.with_gas_price(bump(price)),
        }
        .with_chain_id(chain_id)
        .with_nonce(nonce)
        .with_gas_limit(gas.saturating_add(headroom));
        let envelope = request
            .build(&EthereumWallet::from(signer.clone()))
            .await
            .map_err(|e| ChainError::Rpc {
                what,
                source: TransportErrorKind::custom_str(&format!("signing the transaction: {e}")),
            })?;
        Ok(Signed {
            hash: *envelope.tx_hash(),
            raw: envelope.encoded_2718().into(),
            nonce,
        })
    }

    /// The next nonce of `from` (and at least `at_least`): the count a quorum agrees on at the head a quorum
    /// reached, above every nonce this process still waits on.
    async fn next_nonce(&self, from: Address, at_least: Option<u64>) -> Result<u64, ChainError> {
        let at = self.present().await?;
        let mined = self
            .reader()
            .get_transaction_count(from)
            .block_id(at)
            .await
            .map_err(|source| ChainError::Rpc {
                what: "eth_getTransactionCount",
                source,
            })?;
        let above_waiting = self
            .sending
            .waiting()
            .get(&from)
            .and_then(|n| n.last())
            .map(|n| n.saturating_add(1));
        Ok(mined
            .max(above_waiting.unwrap_or(0))
            .max(at_least.unwrap_or(0)))
    }

    /// EIP-1559 fees: twice the gas price the providers quote (room for the base fee to double over several
    /// blocks) and their priority fee; a chain that quotes no priority fee gets a legacy gas price.
    async fn fees(&self) -> Result<Fees, ChainError> {
        let (price, tip) = tokio::join!(
            self.reader().get_gas_price(),
            self.reader().get_max_priority_fee_per_gas()
        );
        let price = price.map_err(|source| ChainError::Rpc {
            what: "eth_gasPrice",
            source,
        })?;
        Ok(match tip {
            Ok(tip) => {
                let max_fee = price.saturating_mul(2).max(tip);
                Fees::Eip1559 {
                    max_fee,
                    tip: tip.min(max_fee),
                }
            }
            Err(e) => {
                debug!(error = %e, "no priority fee quoted: a legacy gas price");
                Fees::Legacy { price }
            }
        })
    }

    /// Sends the signed bytes to every provider: done when one takes them, or had them already.
    async fn broadcast(&self, what: &'static str, raw: &Bytes) -> Result<(), ChainError> {
        match self
            .reader()
            .raw_request::<_, B256>("eth_sendRawTransaction".into(), (raw,))
            .await
        {
            Ok(_) => Ok(()),
            Err(RpcError::ErrorResp(e))
                if agree::is_duplicate(&e.message)
                    && !e.message.to_ascii_lowercase().contains("nonce too low") =>
            {
                Ok(())
            }
            Err(source) => Err(ChainError::Rpc { what, source }),
        }
    }

    /// Waits for the receipt of `signed`, read through the quorum, sending it again every
    /// [`RESEND_EVERY`].
    async fn receipt(
        &self,
        what: &'static str,
        signed: &Signed,
    ) -> Result<TransactionReceipt, ChainError> {
        let began = Instant::now();
        let mut resend_at = began + RESEND_EVERY;
        loop {
            match self.reader().get_transaction_receipt(signed.hash).await {
                Ok(Some(receipt)) if receipt.status() => {
                    info!(what, tx = %signed.hash, block = receipt.block_number.unwrap_or_default(), "mined");
                    return Ok(receipt);
                }
                Ok(Some(_)) => {
                    return Err(ChainError::TxFailed {
                        what,
                        tx: signed.hash,
                    });
                }
                Ok(None) => {}
                // Providers a block apart, or some down: asked again.
                Err(e) => {
                    debug!(what, error = %self.scrub(&e.to_string()), "no agreed receipt yet")
                }
            }
            let now = Instant::now();
            if now.duration_since(began) >= RECEIPT_TIMEOUT {
                return Err(ChainError::NoReceipt {
                    what,
                    tx: signed.hash,
                    waited: RECEIPT_TIMEOUT,
                });
            }
            if now >= resend_at {
                resend_at = now + RESEND_EVERY;
                if let Err(e) = self.broadcast(what, &signed.raw).await {
                    debug!(what, error = %self.scrub(&e.to_string()), "sending the transaction again failed");
                }
            }
            tokio::time::sleep(RECEIPT_POLL).await;
        }
    }
}

/// How a transaction is signed again after a refusal.
#[derive(Debug, Clone, Copy, Default)]
struct Attempt {
    /// Its nonce at least this.
    at_least: Option<u64>,
    /// Its fees this much above the quote.
    bump_percent: u32,
}

/// How much above the quote a replacement pays: clients want 10 % more than what it replaces.
const REPLACEMENT_BUMP_PERCENT: u32 = 30;

/// Why the providers refused a transaction, where signing again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Its nonce was taken by a mined transaction.
    Nonce,
    /// A transaction of the sender waiting with its nonce pays more.
    Underpriced,
}

fn refused(e: &ChainError) -> Option<Refused> {
    let ChainError::Rpc {
        source: RpcError::ErrorResp(r),
        ..
    } = e
    else {
        return None;
    };
    let m = r.message.to_ascii_lowercase();
    if m.contains("nonce too low") {
        Some(Refused::Nonce)
    } else if m.contains("underpriced") {
        Some(Refused::Underpriced)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(message: &'static str) -> ChainError {
        ChainError::Rpc {
            what: "castVote",
            source: RpcError::ErrorResp(alloy::rpc::json_rpc::ErrorPayload {
                code: -32000,
                message: message.into(),
                data: None,
            }),
        }
    }

    #[test]
    fn a_refusal_for_the_nonce_or_the_price_is_signed_again_and_no_other() {
        assert_eq!(
            refused(&refusal("nonce too low: next nonce 7")),
            Some(Refused::Nonce)
        );
        assert_eq!(
            refused(&refusal("replacement transaction underpriced")),
            Some(Refused::Underpriced)
        );
        assert_eq!(
            refused(&refusal("insufficient funds for gas * price + value")),
            None
        );
        assert_eq!(
            refused(&ChainError::NoReceipt {
                what: "castVote",
                tx: B256::ZERO,
                waited: RECEIPT_TIMEOUT
            }),
            None
        );
    }
}
