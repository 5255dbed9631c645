//! Seats: `mint`, `bind`, `revoke`, `deactivate`, `activate`.

use std::process::ExitCode;

use alloy::primitives::{Address, U256, utils::parse_ether};
use anyhow::{Context, bail};
use mesh_chain::contract::{self as chain, DstackClusterNFT, ipv4};
use mesh_chain::error::ChainError;
use mesh_chain::record::NodeBinding;
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
    /// Bind the seat at mint to the node whose binding this is: what a seatless agent printed on its stdout,
    /// or `p2p-agent identity --bind-holder <--to>` printed in that instance (a file, or - for stdin).
    /// Verified before anything is sent.
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
    /// The instance to bind, by the request its agent put on-chain while it had no seat: the newest one from
    /// that instance that verifies. Its agent says so in its log and status.
    #[arg(
        long,
        value_name = "ID",
        required_unless_present = "binding",
        conflicts_with = "binding"
    )]
    instance: Option<String>,
    /// The node's binding, from a file (or - for stdin): what a seatless agent without funds printed on its
    /// stdout, or `p2p-agent identity --bind-holder` printed in the instance.
    #[arg(long, value_name = "FILE")]
    binding: Option<std::path::PathBuf>,
    /// The seat to bind (or rebind: after an instance lost its volume and so its keys, or to move a seat to
    /// another instance). Without it, a new seat is minted to the binding's holder, bound at mint: the
    /// owner mints for free, anyone else pays the price when public minting is on.
    #[arg(long)]
    token: Option<u64>,
    /// Also allow the OS image the binding's quote measures, when the cluster does not allow it yet (the
    /// owner): after a first boot, this is how an image is allowed, from the quote just verified.
    #[arg(long)]
    allow_os: bool,
    /// How many of the newest requests to look through for --instance.
    #[arg(long, value_name = "N", default_value_t = crate::binding::DEFAULT_LIMIT)]
    requests: usize,
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

/// Whether `signer` is the cluster's owner, who mints for free.
async fn sender_is_owner(
    c: &chain::DstackClusterNFT::DstackClusterNFTInstance<crate::cluster::Chain>,
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
    let binding = args
        .binding
        .as_deref()
        .map(crate::binding::read_binding)
        .transpose()?;
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    if let Some(b) = &binding {
        let verdict = crate::binding::check_binding(&c, b, args.to, &args.trust).await?;
        crate::attest::Listed::read(&c, &verdict)
            .await?
            .require()
            .context("not minting a seat bound to it")?;
    }
    let minted = mint_seat(
        &c,
        &args.write.signer,
        args.to,
        binding.as_ref(),
        args.pay.as_deref(),
    )
    .await?;
    out.emit(|| minted.text(), || minted.json());
    Ok(ExitCode::SUCCESS)
}

/// A seat minted, perhaps bound at mint.
struct Minted {
    token: U256,
    to: Address,
    ip: std::net::Ipv4Addr,
    binding: Option<(String, Address)>,
    receipt: alloy::rpc::types::TransactionReceipt,
}

impl Minted {
    fn text(&self) -> String {
        let bound = match &self.binding {
            Some((instance, node)) => format!(", bound to instance {instance} (node {node})"),
            None => String::new(),
        };
        format!(
            "minted seat {} to {} (overlay {}){bound}\n  {}\n",
            self.token,
            self.to,
            self.ip,
            tx_text(&self.receipt)
        )
    }

    fn json(&self) -> serde_json::Value {
        let (instance, node) = self.binding.clone().unzip();
        json!({ "tokenId": self.token.to::<u64>(), "to": self.to, "overlayIp": self.ip.to_string(), "instanceId": instance.unwrap_or_default(), "node": node, "receipt": tx_json(&self.receipt) })
    }
}

/// Mints the next seat to `to`, bound with `binding` if there is one; the seat's id is whatever comes next.
async fn mint_seat(
    c: &DstackClusterNFT::DstackClusterNFTInstance<crate::cluster::Chain>,
    signer: &SignerOpts,
    to: Address,
    binding: Option<&NodeBinding>,
    pay: Option<&str>,
) -> anyhow::Result<Minted> {
    let value = match pay {
        Some(eth) => {
            parse_ether(eth).with_context(|| format!("--pay {eth:?} is not an ETH amount"))?
        }
        None if sender_is_owner(c, signer).await? => U256::ZERO,
        None => c
            .mintPrice()
            .call()
            .await
            .context("reading the mint price")?,
    };
    let arg = binding.map_or_else(chain::no_binding, chain::binding_arg);
    let receipt = cluster::send("mint", c.mintNodeAccess(to, arg).value(value)).await?;
    let minted = events::<DstackClusterNFT::SeatMinted>(&receipt);
    let seat = minted
        .first()
        .context("the mint transaction emitted no SeatMinted event")?;
    Ok(Minted {
        token: seat.tokenId,
        to,
        ip: ipv4(seat.overlayAddress),
        binding: binding.map(|b| (b.instance_id.clone(), b.node)),
        receipt,
    })
}

pub(crate) async fn bind(args: BindArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    let (binding, verdict) = match (&args.instance, &args.binding) {
        (Some(raw), _) => {
            let instance = crate::binding::instance_id(raw)?;
            crate::binding::find(&c, &instance, args.requests, &args.trust).await?
        }
        (None, Some(path)) => {
            let binding = crate::binding::read_binding(path)?;
            let verdict =
                crate::binding::check_binding(&c, &binding, binding.holder, &args.trust).await?;
            (binding, verdict)
        }
        (None, None) => {
            bail!("name the node to bind: --instance ID (its request on-chain) or --binding FILE")
        }
    };
    if let Some(token) = args.token {
        let holder = c
            .ownerOf(U256::from(token))
            .call()
            .await
            .map_err(|e| ChainError::from_call("ownerOf", e))?;
        if binding.holder != holder {
            bail!(
                "the binding lets {} bind a seat, but {holder} holds seat {token}: the node asks whom its --holder names (by default the cluster's owner); bind one of {}'s seats, or have the node ask {holder}",
                binding.holder,
                binding.holder
            );
        }
    }
    let mut listed = crate::attest::Listed::read(&c, &verdict).await?;
    if args.allow_os && !listed.os_allowed {
        let auth = cluster::app_auth(&c).await?;
        let r = cluster::send("setOsMeasurement", auth.setOsMeasurement(listed.os, true)).await?;
        eprintln!(
            "allowed OS image {}, which the binding's quote measures\n  {}",
            listed.os,
            tx_text(&r)
        );
        listed.os_allowed = true;
    }
    listed.require().context("not binding it")?;
    let Some(token) = args.token else {
        let minted =
            mint_seat(&c, &args.write.signer, binding.holder, Some(&binding), None).await?;
        out.emit(|| minted.text(), || minted.json());
        return Ok(ExitCode::SUCCESS);
    };
    let receipt = cluster::send(
        "bind",
        c.bindInstance(U256::from(token), chain::binding_arg(&binding)),
    )
    .await?;
    let cleared = !events::<DstackClusterNFT::PeerCleared>(&receipt).is_empty();
    let instance = &binding.instance_id;
    let node = binding.node;
    out.emit(
        || {
            let note = if cleared { "; its previous peer record was cleared" } else { "" };
            format!("bound seat {token} to instance {instance}, node {node}{note}\n  {}\n", tx_text(&receipt))
        },
        || json!({ "tokenId": token, "instanceId": instance, "node": node, "recordCleared": cleared, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
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
