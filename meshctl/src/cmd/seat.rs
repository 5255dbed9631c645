//! Seats: `mint`, `bind`, `revoke`, `deactivate`, `activate`.

use std::process::ExitCode;

use alloy::primitives::{Address, U256, utils::parse_ether};
use anyhow::{Context, bail};
use mesh_chain::contract::{self as chain, DstackClusterNFT, ipv4};
use mesh_chain::error::ChainError;
use mesh_chain::record::{self as proof, NodeBinding};
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
    #[arg(value_parser = crate::cluster::address, long)]
    to: Address,
    /// Bind the seat at mint to the node whose binding this is: what `p2p-agent identity --bind-token <next
    /// seat id> --bind-holder <--to>` printed in that instance (a file, or - for stdin). Verified before
    /// anything is sent.
    #[arg(long, value_name = "FILE")]
    binding: Option<std::path::PathBuf>,
    /// What the binding's quote is verified under.
    #[command(flatten)]
    trust: mesh_attest::cli::TrustArgs,
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
    /// The node's binding, as `p2p-agent identity --bind-token` printed it in that instance (a file, or - for
    /// stdin): the node key made in the instance, dstack's chain for it, the instance's TDX quote and the
    /// node's consent. Verified before anything is sent. After an instance lost its volume (and so its keys),
    /// bind the seat again with the binding of its new key.
    #[arg(long, value_name = "FILE")]
    binding: std::path::PathBuf,
    /// What the binding's quote is verified under.
    #[command(flatten)]
    trust: mesh_attest::cli::TrustArgs,
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

/// Whether `signer` is the cluster's owner, who mints for free.
async fn sender_is_owner(
    c: &chain::DstackClusterNFT::DstackClusterNFTInstance<alloy::providers::DynProvider>,
    signer: &SignerOpts,
) -> anyhow::Result<bool> {
    let owner = c
        .owner()
        .call()
        .await
        .context("reading the cluster owner")?;
    Ok(signer.signer()?.address() == owner)
}

fn read_binding(path: &std::path::Path) -> anyhow::Result<NodeBinding> {
    let text = crate::cmd::read_input(path, "the binding")?;
    serde_json::from_str::<NodeBinding>(&text)
        .context("the binding is not what `p2p-agent identity --bind-token` prints")
}

pub(crate) async fn mint(args: MintArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let binding = args.binding.as_deref().map(read_binding).transpose()?;
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    let sender_is_owner = sender_is_owner(&c, &args.write.signer).await?;
    if let Some(b) = &binding {
        let next = c
            .lastTokenId()
            .call()
            .await
            .context("reading the last seat id")?
            + U256::from(1);
        check_binding(&c, b, next, args.to, &args.trust).await?;
    }
    let value = match &args.pay {
        Some(eth) => {
            parse_ether(eth).with_context(|| format!("--pay {eth:?} is not an ETH amount"))?
        }
        None => {
            if sender_is_owner {
                U256::ZERO
            } else {
                c.mintPrice()
                    .call()
                    .await
                    .context("reading the mint price")?
            }
        }
    };
    let arg = binding
        .as_ref()
        .map_or_else(chain::no_binding, chain::binding_arg);
    let receipt = cluster::send("mint", c.mintNodeAccess(args.to, arg).value(value)).await?;
    let minted = events::<DstackClusterNFT::SeatMinted>(&receipt);
    let seat = minted
        .first()
        .context("the mint transaction emitted no SeatMinted event")?;
    let (token, ip) = (seat.tokenId, ipv4(seat.overlayAddress));
    let instance = binding
        .as_ref()
        .map(|b| b.instance_id.clone())
        .unwrap_or_default();
    let node = binding.as_ref().map(|b| b.node);
    out.emit(
        || {
            let bound = match &binding {
                Some(b) => format!(", bound to instance {} (node {})", b.instance_id, b.node),
                None => String::new(),
            };
            format!("minted seat {token} to {} (overlay {ip}){bound}\n  {}\n", args.to, tx_text(&receipt))
        },
        || json!({ "tokenId": token.to::<u64>(), "to": args.to, "overlayIp": ip.to_string(), "instanceId": instance, "node": node, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn bind(args: BindArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let binding = read_binding(&args.binding)?;
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    let token = U256::from(args.token);
    let holder = c
        .ownerOf(token)
        .call()
        .await
        .map_err(|e| ChainError::from_call("ownerOf", e))?;
    check_binding(&c, &binding, token, holder, &args.trust).await?;
    let receipt =
        cluster::send("bind", c.bindInstance(token, chain::binding_arg(&binding))).await?;
    let cleared = !events::<DstackClusterNFT::PeerCleared>(&receipt).is_empty();
    let instance = &binding.instance_id;
    let node = binding.node;
    out.emit(
        || {
            let note = if cleared { "; its previous peer record was cleared" } else { "" };
            format!("bound seat {} to instance {instance}, node {node}{note}\n  {}\n", args.token, tx_text(&receipt))
        },
        || json!({ "tokenId": args.token, "instanceId": instance, "node": node, "recordCleared": cleared, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}

/// Checks a binding off-chain before anyone pays for it: it is for this seat, holder, cluster and chain; its
/// chain names the instance and the node and verifies against the cluster's KMS root and app ids; the node
/// signed it; and its evidence passes as every agent will check it ([`check_evidence`]).
async fn check_binding(
    c: &DstackClusterNFT::DstackClusterNFTInstance<alloy::providers::DynProvider>,
    binding: &NodeBinding,
    token: U256,
    holder: Address,
    trust: &mesh_attest::cli::TrustArgs,
) -> anyhow::Result<()> {
    if binding.token_id != token {
        bail!(
            "the binding is for seat {}, not seat {token}: make one for this seat in the instance (`p2p-agent identity --bind-token {token} --bind-holder {holder}`)",
            binding.token_id
        );
    }
    if binding.contract != *c.address() {
        bail!(
            "the binding is for cluster {}, not {}",
            binding.contract,
            c.address()
        );
    }
    cluster::require_chain(c.provider(), binding.chain_id, "binding").await?;
    if binding.holder != holder {
        bail!(
            "the binding lets {} bind seat {token}, but {holder} holds it (or will receive it): make one for {holder} in the instance",
            binding.holder
        );
    }
    instance_id(&binding.instance_id)?;
    let (kms_root, app_ids) = chain::trust_anchors(c).await?;
    proof::verify_binding(binding, kms_root, &app_ids).context(
        "the binding does not verify against the cluster's KMS root and app ids; not sending it",
    )?;
    check_evidence(c, binding, trust)
        .await
        .context("the binding's attestation evidence does not pass as the agents will check it; not sending it")
}

/// The evidence passes as every agent will check it ([`crate::attest::check`]), for the app of the binding's
/// chain.
async fn check_evidence(
    c: &DstackClusterNFT::DstackClusterNFTInstance<alloy::providers::DynProvider>,
    binding: &NodeBinding,
    trust: &mesh_attest::cli::TrustArgs,
) -> anyhow::Result<()> {
    let seat = crate::attest::Seat {
        instance_id: &instance_id(&binding.instance_id)?,
        node: binding.node,
        chain_id: binding.chain_id,
        contract: binding.contract,
        apps: &[binding.proof.app_id],
    };
    crate::attest::check(c, trust, &binding.evidence, &seat)
        .await
        .map(|_| ())
}

/// The owner lets a seat serve another dstack app than the one its first record came from.
pub(crate) async fn reset_seat_app(args: TokenArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    let receipt = cluster::send("resetSeatApp", c.resetSeatApp(U256::from(args.token))).await?;
    let previous = events::<DstackClusterNFT::SeatAppReset>(&receipt)
        .first()
        .map(|e| e.previousAppId)
        .context("resetSeatApp emitted no SeatAppReset event")?;
    out.emit(
        || {
            format!(
                "seat {} no longer serves app {previous}: its next record may come from any allowed app\n  {}\n",
                args.token,
                tx_text(&receipt)
            )
        },
        || json!({ "tokenId": args.token, "previousAppId": previous, "receipt": tx_json(&receipt) }),
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

/// Takes a seat out of the mesh (`active` false) or brings it back.
pub(crate) async fn set_active(
    args: TokenArgs,
    active: bool,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    let token = U256::from(args.token);
    let receipt = if active {
        cluster::send("activate", c.activate(token)).await?
    } else {
        cluster::send("deactivate", c.deactivate(token)).await?
    };
    let (done, then) = if active {
        ("activated", "its agent registers again")
    } else {
        ("deactivated", "its peer record is cleared")
    };
    out.emit(
        || {
            format!(
                "{done} seat {}; {then}\n  {}\n",
                args.token,
                tx_text(&receipt)
            )
        },
        || json!({ "tokenId": args.token, "active": active, "receipt": tx_json(&receipt) }),
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
