//! Seats: `mint`, `bind`, `revoke`, `deactivate`, `activate`.

use std::process::ExitCode;

use alloy::primitives::{Address, U256, utils::parse_ether};
use anyhow::{Context, bail};
use p2p_agent::chain::{DstackClusterNFT, ipv4};
use serde_json::json;

use crate::cluster::{self, ClusterOpts, SignerOpts, events, tx_json, tx_text};
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub(crate) struct Write {
    #[command(flatten)]
    pub(crate) cluster: ClusterOpts,
    #[command(flatten)]
    pub(crate) signer: SignerOpts,
}

#[derive(Debug, clap::Args)]
pub(crate) struct MintArgs {
    #[command(flatten)]
    write: Write,
    /// Who receives the seat.
    #[arg(long)]
    to: Address,
    /// Bind the seat to this dstack instance id (40 hex characters) at mint.
    #[arg(long)]
    instance: Option<String>,
    /// Pay this much ETH (public minting); defaults to the contract's price when the signer is not the owner.
    #[arg(long, value_name = "ETH")]
    pay: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BindArgs {
    #[command(flatten)]
    write: Write,
    /// The seat's token id.
    #[arg(long)]
    token: u64,
    /// The dstack instance id (40 hex characters, as dstack's Info reports it).
    #[arg(long)]
    instance: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    write: Write,
    /// The seat's token id.
    #[arg(long)]
    token: u64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RevokeArgs {
    #[command(flatten)]
    seat: TokenArgs,
    /// Confirm: revoking burns the seat for good.
    #[arg(long)]
    yes: bool,
}

/// dstack writes instance ids as 40 lowercase hex characters; accept `0x` and capitals, send the canonical
/// form the contract requires.
pub(crate) fn instance_id(raw: &str) -> anyhow::Result<String> {
    let id = raw.trim().trim_start_matches("0x").to_ascii_lowercase();
    if id.len() != 40 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "{raw:?} is not a dstack instance id: expected 40 hex characters, as dstack's Info.instance_id"
        );
    }
    Ok(id)
}

pub(crate) async fn mint(args: MintArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let instance = args
        .instance
        .as_deref()
        .map(instance_id)
        .transpose()?
        .unwrap_or_default();
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    let sender = args.write.signer.signer()?.address();
    let value = match &args.pay {
        Some(eth) => {
            parse_ether(eth).with_context(|| format!("--pay {eth:?} is not an ETH amount"))?
        }
        None => {
            let owner = c
                .owner()
                .call()
                .await
                .context("reading the cluster owner")?;
            if owner == sender {
                U256::ZERO
            } else {
                c.mintPrice()
                    .call()
                    .await
                    .context("reading the mint price")?
            }
        }
    };
    let receipt = cluster::send(
        "mint",
        c.mintNodeAccess(args.to, instance.clone()).value(value),
    )
    .await?;
    let minted = events::<DstackClusterNFT::SeatMinted>(&receipt);
    let seat = minted
        .first()
        .context("the mint transaction emitted no SeatMinted event")?;
    let (token, ip) = (seat.tokenId, ipv4(seat.overlayAddress));
    out.emit(
        || {
            let bound = if instance.is_empty() { String::new() } else { format!(", bound to instance {instance}") };
            format!("minted seat {token} to {} (overlay {ip}){bound}\n  {}\n", args.to, tx_text(&receipt))
        },
        || json!({ "tokenId": token.to::<u64>(), "to": args.to, "overlayIp": ip.to_string(), "instanceId": instance, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn bind(args: BindArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let instance = instance_id(&args.instance)?;
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    let receipt = cluster::send(
        "bind",
        c.bindInstance(U256::from(args.token), instance.clone()),
    )
    .await?;
    let cleared = !events::<DstackClusterNFT::PeerCleared>(&receipt).is_empty();
    out.emit(
        || {
            let note = if cleared { "; its previous peer record was cleared" } else { "" };
            format!("bound seat {} to instance {instance}{note}\n  {}\n", args.token, tx_text(&receipt))
        },
        || json!({ "tokenId": args.token, "instanceId": instance, "recordCleared": cleared, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn revoke(args: RevokeArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let seat = args.seat;
    if !args.yes {
        bail!(
            "revoking burns seat {} for good (its id and overlay address are never reissued): pass --yes to confirm",
            seat.token
        );
    }
    let c = cluster::open_write(&seat.write.cluster, &seat.write.signer).await?;
    let receipt = cluster::send("revoke", c.revoke(U256::from(seat.token))).await?;
    out.emit(
        || format!("revoked seat {}\n  {}\n", seat.token, tx_text(&receipt)),
        || json!({ "tokenId": seat.token, "revoked": true, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn deactivate(args: TokenArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    let receipt = cluster::send("deactivate", c.deactivate(U256::from(args.token))).await?;
    out.emit(
        || {
            format!(
                "deactivated seat {}; its peer record is cleared\n  {}\n",
                args.token,
                tx_text(&receipt)
            )
        },
        || json!({ "tokenId": args.token, "active": false, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn activate(args: TokenArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    let receipt = cluster::send("activate", c.activate(U256::from(args.token))).await?;
    out.emit(
        || {
            format!(
                "activated seat {}; its agent registers again\n  {}\n",
                args.token,
                tx_text(&receipt)
            )
        },
        || json!({ "tokenId": args.token, "active": true, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Instance ids are normalised to dstack's spelling, and anything else is refused with the expected form.
    #[test]
    fn instance_ids_are_normalised_or_refused() {
        assert_eq!(
            instance_id("0x59DF8036B824B0AAC54F8998B9E1FB2A0CFC5D3A").unwrap(),
            "59df8036b824b0aac54f8998b9e1fb2a0cfc5d3a"
        );
        let err = instance_id("node-1").unwrap_err().to_string();
        assert!(err.contains("expected 40 hex characters"), "{err}");
    }
}
