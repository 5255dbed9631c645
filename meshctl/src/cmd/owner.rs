//! `meshctl owner show|transfer|accept|cancel`: the cluster's ownership, which also rules its app auth, moved
//! in two steps (OpenZeppelin's `Ownable2Step`): the owner offers it, and nothing changes until the new owner
//! accepts, so a mistyped address cannot take the cluster. A multisig accepts by sending the call `accept
//! --calldata` prints.

use std::process::ExitCode;

use alloy::primitives::{Address, Bytes};
use alloy::sol_types::SolCall as _;
use anyhow::{Context, bail};
use mesh_chain::contract::DstackClusterNFT;
use serde_json::json;

use crate::cluster::{self, ClusterOpts, tx_json, tx_text};
use crate::cmd::seat::Write;
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Show the owner, and whom the ownership is offered to.
    Show(ClusterOpts),
    /// Offer the ownership to ADDRESS (owner only). Nothing changes until ADDRESS accepts.
    Transfer(TransferArgs),
    /// Accept the ownership offered to the signer. With --calldata, print the call for a multisig to send.
    Accept(AcceptArgs),
    /// Withdraw an offer not accepted yet (owner only).
    Cancel(Write),
}

#[derive(Debug, clap::Args)]
struct TransferArgs {
    #[command(flatten)]
    write: Write,
    /// The new owner: a multisig, for a cluster to be relied on.
    #[arg(value_parser = crate::cluster::address, value_name = "ADDRESS")]
    to: Address,
}

#[derive(Debug, clap::Args)]
struct AcceptArgs {
    #[command(flatten)]
    write: Write,
    /// Print the transaction (to, data) for the pending owner to send, a multisig from its own interface,
    /// instead of sending it with the signer.
    #[arg(long)]
    calldata: bool,
}

pub(crate) async fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Show(opts) => show(opts, out).await,
        Action::Transfer(a) => transfer(a, out).await,
        Action::Accept(a) => accept(a, out).await,
        Action::Cancel(w) => cancel(w, out).await,
    }
}

/// The owner and the pending owner (zero when none).
async fn owners(
    c: &DstackClusterNFT::DstackClusterNFTInstance<crate::cluster::Chain>,
) -> anyhow::Result<(Address, Address)> {
    let owner = c.owner().call().await.context("reading the owner")?;
    let pending = c
        .pendingOwner()
        .call()
        .await
        .context("reading the pending owner")?;
    Ok((owner, pending))
}

async fn show(opts: ClusterOpts, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::open_read(&opts).await?;
    let (owner, pending) = owners(&c).await?;
    let pending = (!pending.is_zero()).then_some(pending);
    out.emit(
        || match pending {
            Some(p) => format!("owner {owner}; offered to {p}, not accepted yet\n"),
            None => format!("owner {owner}\n"),
        },
        || json!({ "owner": owner, "pendingOwner": pending }),
    );
    Ok(ExitCode::SUCCESS)
}

async fn transfer(args: TransferArgs, out: &Output) -> anyhow::Result<ExitCode> {
    if args.to.is_zero() {
        bail!("the zero address cannot accept: to withdraw an offer, run `meshctl owner cancel`");
    }
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    require_owner(&c, &args.write).await?;
    let receipt = cluster::send("transferOwnership", c.transferOwnership(args.to)).await?;
    let to = args.to;
    out.emit(
        || {
            format!(
                "offered the cluster to {to}; nothing changes until it accepts: `meshctl owner accept` signed by {to}, or, for a multisig, the call `meshctl owner accept --calldata` prints\n  {}\n",
                tx_text(&receipt)
            )
        },
        || json!({ "pendingOwner": to, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}

async fn accept(args: AcceptArgs, out: &Output) -> anyhow::Result<ExitCode> {
    if args.calldata {
        let c = cluster::open_read(&args.write.cluster).await?;
        let (_, pending) = owners(&c).await?;
        if pending.is_zero() {
            bail!(
                "the cluster is offered to nobody: its owner runs `meshctl owner transfer ADDRESS` first"
            );
        }
        let to = *c.address();
        let data = Bytes::from(DstackClusterNFT::acceptOwnershipCall {}.abi_encode());
        out.emit(
            || format!("send from {pending}:\n  to    {to}\n  value 0\n  data  {data}\n"),
            || json!({ "from": pending, "to": to, "value": "0", "data": data }),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    let (_, pending) = owners(&c).await?;
    let signer = args.write.signer.signer()?.address();
    if pending != signer {
        match pending.is_zero() {
            true => bail!(
                "the cluster is offered to nobody: its owner runs `meshctl owner transfer {signer}` first"
            ),
            false => bail!(
                "the cluster is offered to {pending}, not to the signer {signer}: sign with {pending}'s key, or, for a multisig, send the call `meshctl owner accept --calldata` prints"
            ),
        }
    }
    let receipt = cluster::send("acceptOwnership", c.acceptOwnership()).await?;
    out.emit(
        || format!("{signer} owns the cluster now\n  {}\n", tx_text(&receipt)),
        || json!({ "owner": signer, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}

async fn cancel(write: Write, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::open_write(&write.cluster, &write.signer).await?;
    require_owner(&c, &write).await?;
    let receipt = cluster::send("transferOwnership", c.transferOwnership(Address::ZERO)).await?;
    out.emit(
        || format!("withdrew the offer\n  {}\n", tx_text(&receipt)),
        || json!({ "pendingOwner": null, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}

/// The signer owns the cluster, or an error that says who does.
async fn require_owner(
    c: &DstackClusterNFT::DstackClusterNFTInstance<crate::cluster::Chain>,
    write: &Write,
) -> anyhow::Result<()> {
    let (owner, _) = owners(c).await?;
    let signer = write.signer.signer()?.address();
    if owner != signer {
        bail!("{owner} owns the cluster, not the signer {signer}: sign with the owner's key");
    }
    Ok(())
}
