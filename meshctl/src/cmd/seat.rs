//! Seats: `mint`, `bind`, `revoke`, `deactivate`, `activate`.

use std::process::ExitCode;

use alloy::primitives::{Address, U256, utils::parse_ether};
use anyhow::{Context, bail};
use mesh_chain::contract::{self as chain, DstackClusterNFT, ipv4};
use mesh_chain::record::{self as proof, SignedBindConsent};
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
    /// The dstack instance id (40 hex characters, as dstack's Info reports it). Optional with --consent,
    /// which names it.
    #[arg(long, required_unless_present = "consent")]
    instance: Option<String>,
    /// The instance's consent, as `p2p-agent identity --bind-token` printed it in that instance (a file, or -
    /// for stdin). Every holder but the cluster owner needs one: instance ids are public, and without it
    /// anyone could take another operator's node onto their seat.
    #[arg(long, value_name = "FILE")]
    consent: Option<std::path::PathBuf>,
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

/// Whether `signer` is the cluster's owner, who may bind instances without their consent.
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

pub(crate) async fn mint(args: MintArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let instance = args
        .instance
        .as_deref()
        .map(instance_id)
        .transpose()?
        .unwrap_or_default();
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    let sender_is_owner = sender_is_owner(&c, &args.write.signer).await?;
    if !instance.is_empty() && !sender_is_owner {
        bail!(
            "only the cluster owner binds an instance at mint; instance ids are public. Mint without --instance, \
             then bind with the instance's consent: `meshctl bind --token <seat> --consent FILE`, where FILE is what \
             `p2p-agent identity --bind-token <seat> --bind-holder {} --contract {}` prints in that instance",
            args.to,
            args.write.cluster.contract
        );
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
    let consent = args
        .consent
        .as_deref()
        .map(|path| {
            let text = crate::cmd::read_input(path, "the consent")?;
            serde_json::from_str::<SignedBindConsent>(&text)
                .context("the consent is not what `p2p-agent identity --bind-token` prints")
        })
        .transpose()?;
    let instance = match (&args.instance, &consent) {
        (Some(raw), Some(c)) if instance_id(raw)? != c.instance_id => bail!(
            "--instance {raw} is not the instance that consented ({}); leave --instance out, the consent names it",
            c.instance_id
        ),
        (Some(raw), _) => instance_id(raw)?,
        (None, Some(c)) => instance_id(&c.instance_id)?,
        (None, None) => bail!("pass --instance, or --consent with the instance's consent"),
    };
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    let sender_is_owner = sender_is_owner(&c, &args.write.signer).await?;
    let token = U256::from(args.token);
    let (proof, signature) = match &consent {
        Some(consent) => {
            check_consent(&c, consent, token).await?;
            chain::bind_consent_args(consent)
        }
        None if sender_is_owner => chain::no_bind_consent(),
        None => bail!(
            "binding seat {} to instance {instance} needs the instance's consent (only the cluster owner binds \
             without it): in that instance run `p2p-agent identity --bind-token {} --bind-holder <the seat's holder> \
             --contract {} --rpc-url <rpc>` and pass what it prints with --consent FILE",
            args.token,
            args.token,
            args.write.cluster.contract
        ),
    };
    let receipt = cluster::send(
        "bind",
        c.bindInstance(token, instance.clone(), proof, signature),
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

/// Checks a consent off-chain before anyone pays for it: it is for this seat, its holder, this cluster and
/// chain, and its proof verifies against the cluster's KMS root and app ids.
async fn check_consent(
    c: &DstackClusterNFT::DstackClusterNFTInstance<alloy::providers::DynProvider>,
    consent: &SignedBindConsent,
    token: U256,
) -> anyhow::Result<()> {
    if consent.token_id != token {
        bail!(
            "the consent is for seat {}, not seat {token}: ask the instance for one for this seat",
            consent.token_id
        );
    }
    if consent.contract != *c.address() {
        bail!(
            "the consent is for cluster {}, not {}",
            consent.contract,
            c.address()
        );
    }
    cluster::require_chain(c.provider(), consent.chain_id, "consent").await?;
    let holder = c
        .ownerOf(token)
        .call()
        .await
        .map_err(|e| chain::ChainError::from_call("ownerOf", e))?;
    if consent.holder != holder {
        bail!(
            "the consent lets {} bind seat {token}, but {holder} holds it",
            consent.holder
        );
    }
    let (kms_root, app_ids) = chain::trust_anchors(c).await?;
    proof::verify_bind_consent(consent, kms_root, &app_ids).context(
        "the consent does not verify against the cluster's KMS root and app ids; not sending it",
    )?;
    Ok(())
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
