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
use alloy::primitives::{Address, B256, Bytes};
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
                .sign(what, signer, request.clone(), headroom, None)
                .await?;
            if let Err(e) = self.broadcast(what, &signed.raw).await {
                // The head the nonce was read at was behind a transaction of this sender: once more, from a
                // fresh count.
                if !refused_nonce(&e) {
                    return Err(e);
                }
                debug!(
                    what,
                    nonce = signed.nonce,
                    "the nonce was taken; signing again with the next"
                );
                signed = self
                    .sign(what, signer, request, headroom, Some(signed.nonce + 1))
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
        receipt
    }

    /// Fills `request` (chain id, nonce, gas, fees) and signs it.
    async fn sign(
        &self,
        what: &'static str,
        signer: &PrivateKeySigner,
        request: TransactionRequest,
        headroom: u64,
        at_least: Option<u64>,
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
            self.next_nonce(from, at_least),
        );
        let gas = gas
            .map_err(|e| ChainError::from_call(what, alloy::contract::Error::TransportError(e)))?;
        let nonce = nonce?;
        let request = match fees? {
            Fees::Eip1559 { max_fee, tip } => request
                .with_max_fee_per_gas(max_fee)
                .with_max_priority_fee_per_gas(tip),
            Fees::Legacy { price } => request.with_gas_price(price),
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

/// Whether every provider refused a transaction for its nonce: it was taken by one that is mined.
fn refused_nonce(e: &ChainError) -> bool {
    matches!(e, ChainError::Rpc { source: RpcError::ErrorResp(r), .. } if r.message.to_ascii_lowercase().contains("nonce too low"))
}
