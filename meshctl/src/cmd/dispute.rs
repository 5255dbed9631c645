//! `meshctl dispute`: one of your seats disputes another seat's binding whose quote does not show what the
//! binding claims (another instance or node, or no quote at all). f + 1 of the active seats release it
//! (`DstackClusterElection.disputeBinding`), which frees the instance it claims for the seat that genuinely
//! runs it. The quote is checked first, as every agent checks it: a genuine binding, or one refused only for
//! what trust, time or policy can change, is not disputed.

use std::process::ExitCode;

use alloy::primitives::U256;
use alloy::providers::Provider as _;
use anyhow::{Context, bail};
use mesh_chain::contract as chain;
use serde_json::json;

use crate::attest::{Refused, Seat, verify_quote};
use crate::cluster::{self, tx_json, tx_text};
use crate::cmd::seat::Write;
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    write: Write,
    /// Your seat's token id: the dispute is its one voice against this binding.
    #[arg(long)]
    token: u64,
    /// The seat whose binding you dispute.
    #[arg(long)]
    against: u64,
    /// What the seat's evidence is verified under, as the agents verify it.
    #[command(flatten)]
    trust: mesh_attest::cli::TrustArgs,
}

/// `meshctl clear-claim`.
#[derive(Debug, clap::Args)]
pub(crate) struct ClearArgs {
    #[command(flatten)]
    write: Write,
    /// The seat whose claim was released.
    #[arg(long)]
    token: u64,
    /// The instance id it may claim again.
    #[arg(long, value_name = "INSTANCE_ID")]
    instance: String,
}

/// The owner clears seat `token`'s released claim on `instance`.
pub(crate) async fn clear(args: ClearArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    let hash = alloy::primitives::keccak256(args.instance.as_bytes());
    let receipt = cluster::send(
        "clearDisputedClaim",
        c.clearDisputedClaim(U256::from(args.token), hash),
    )
    .await?;
    let what = format!(
        "seat {} may claim instance {} again: its holder binds it with `meshctl bind --instance {} --token {}`",
        args.token, args.instance, args.instance, args.token
    );
    out.emit(
        || format!("{what}\n  {}\n", tx_text(&receipt)),
        || json!({ "tokenId": args.token, "instanceId": args.instance, "cleared": true, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    let against = args.against;
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    let read = "reading the disputed seat";
    let p = c.getPeer(U256::from(against)).call().await.context(read)?;
    if p.boundBlock == 0 {
        bail!("seat {against} is bound to no instance: there is no binding to dispute");
    }
    let binding = chain::binding_event(&c, &p)
        .await
        .context(read)?
        .with_context(|| {
            format!(
                "seat {against}'s InstanceBound event is not in block {}: the RPC cannot show its evidence",
                p.boundBlock
            )
        })?;
    let apps = c.allowedAppIds().call().await.context(read)?;
    let chain_id = c
        .provider()
        .get_chain_id()
        .await
        .context("reading the chain id")?;
    let seat = Seat {
        instance_id: &binding.instance_id,
        node: binding.node,
        chain_id,
        contract: *c.address(),
        apps: &apps,
    };
    let refusal = match verify_quote(&args.trust, &binding.evidence, &seat).await {
        Ok(_) => bail!(
            "seat {against}'s quote shows instance {} and its node {}: its binding is genuine; a dispute is only for a binding whose quote does not show what it claims",
            binding.instance_id,
            binding.node
        ),
        Err(e) => match e.downcast::<Refused>() {
            Ok(Refused(r)) if r.shows_false_claim() => r,
            Ok(Refused(r)) => bail!(
                "seat {against}'s evidence is refused ({}: {r}), but not for what the quote itself shows: trust, time or policy can change that, so the binding is not disputed",
                r.kind()
            ),
            Err(e) => return Err(e.context(format!("checking seat {against}'s evidence"))),
        },
    };
    let e = cluster::election(&c).await?;
    let receipt = cluster::send(
        "disputeBinding",
        e.disputeBinding(U256::from(args.token), U256::from(against), p.boundBlock),
    )
    .await?;
    let released = c
        .tokenOfInstance(binding.instance_id.clone())
        .call()
        .await
        .context("reading the instance's seat")?
        != U256::from(against);
    let disputes = e
        .disputesAgainst(U256::from(against), p.boundBlock)
        .call()
        .await
        .context("reading the disputes")?;
    let threshold = e
        .voteThreshold()
        .call()
        .await
        .context("reading the threshold")?;
    let what = match released {
        true => format!(
            "seat {} disputed seat {against}'s binding to instance {} ({}): released, the instance is free to bind",
            args.token,
            binding.instance_id,
            refusal.kind()
        ),
        false => format!(
            "seat {} disputed seat {against}'s binding to instance {} ({}): {disputes} of the {threshold} disputes that release it",
            args.token,
            binding.instance_id,
            refusal.kind()
        ),
    };
    out.emit(
        || format!("{what}\n  {}\n", tx_text(&receipt)),
        || {
            json!({
                "done": what,
                "released": released,
                "disputes": disputes.to::<u64>(),
                "threshold": threshold.to::<u64>(),
                "refusal": refusal.kind(),
                "receipt": tx_json(&receipt),
            })
        },
    );
    Ok(ExitCode::SUCCESS)
}
