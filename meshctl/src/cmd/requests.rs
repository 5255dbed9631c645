//! `requests`: the seats nodes asked for on-chain while they had none, newest first, each verified as `bind`
//! will verify it; and the search `bind --instance` makes among them.

use std::process::ExitCode;

use alloy::eips::BlockId;
use alloy::primitives::{Address, B256};
use mesh_chain::binding::{BindingRequest, binding_requests};
use mesh_chain::contract::DstackClusterNFT;
use serde_json::json;

use crate::cluster::{self, ClusterOpts};
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    cluster: ClusterOpts,
    /// Show only the requests to this holder.
    #[arg(long, value_parser = crate::cluster::address, value_name = "ADDRESS")]
    holder: Option<Address>,
    /// Show the requests answered since, or replaced by a later one, too.
    #[arg(long)]
    all: bool,
    /// How many of the newest requests to look through.
    #[arg(long, value_name = "N", default_value_t = crate::binding::DEFAULT_LIMIT)]
    limit: usize,
    /// What each request's quote is verified under.
    #[command(flatten)]
    trust: mesh_attest::cli::TrustArgs,
}

/// One request as the holder sees it: what it is, and whether `bind` would take it.
struct Judged {
    request: BindingRequest,
    /// The seat its instance is bound to now, if any.
    bound: Option<u64>,
    /// What the quote measures and whether the cluster allows it, or why it does not verify.
    verdict: Result<crate::attest::Listed, String>,
}

pub(crate) async fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::open_read(&args.cluster).await?;
    let at = c.provider().present().await?;
    let (requests, unreadable) = binding_requests(&c, at, args.limit).await?;
    let mut shown = Vec::new();
    let mut newest_of_node = std::collections::BTreeSet::new();
    for request in requests {
        if args.holder.is_some_and(|h| h != request.binding.holder) {
            continue;
        }
        // Newest first: a node's older requests were answered or replaced.
        let newest = newest_of_node.insert(request.binding.node);
        if !newest && !args.all {
            continue;
        }
        let judged = judge(&c, at, request, &args.trust).await?;
        // Pending until a seat is bound to its node (the contract clears it then), and not replaced by a
        // request to another holder.
        let b = &judged.request.binding;
        let pending = c
            .bindingRequestedOf(b.node)
            .block(at)
            .call()
            .await
            .map_err(|e| mesh_chain::error::ChainError::from_call("bindingRequestedOf", e))?
            == b.holder
            && newest;
        if pending || args.all {
            shown.push(judged);
        }
    }
    out.emit(
        || text(&shown, unreadable.len()),
        || json!({ "requests": shown.iter().map(to_json).collect::<Vec<_>>(), "unreadable": unreadable.iter().map(|u| json!({"block": u.block, "reason": u.reason})).collect::<Vec<_>>() }),
    );
    Ok(ExitCode::SUCCESS)
}

async fn judge(
    c: &DstackClusterNFT::DstackClusterNFTInstance<crate::cluster::Chain>,
    at: BlockId,
    request: BindingRequest,
    trust: &mesh_attest::cli::TrustArgs,
) -> anyhow::Result<Judged> {
    let b = &request.binding;
    let token = c
        .tokenOfInstance(b.instance_id.clone())
        .block(at)
        .call()
        .await
        .map_err(|e| mesh_chain::error::ChainError::from_call("tokenOfInstance", e))?;
    let verdict = match crate::binding::check_binding(c, b, b.holder, trust).await {
        Ok(v) => Ok(crate::attest::Listed::read(c, &v).await?),
        Err(e) => Err(crate::output::causes(&e).join(": ")),
    };
    Ok(Judged {
        bound: (!token.is_zero()).then(|| token.to::<u64>()),
        request,
        verdict,
    })
}

fn allowed(value: B256, allowed: bool) -> String {
    match allowed {
        true => format!("{value} (allowed)"),
        false => format!("{value} (NOT allowed)"),
    }
}

fn text(shown: &[Judged], unreadable: usize) -> String {
    let mut s = match shown.len() {
        0 => "no pending requests for a seat\n".to_owned(),
        1 => "1 request for a seat, newest first:\n".to_owned(),
        n => format!("{n} requests for a seat, newest first:\n"),
    };
    for j in shown {
        let b = &j.request.binding;
        s.push_str(&format!(
            "instance {}  node {}  holder {}  block {}\n",
            b.instance_id, b.node, b.holder, j.request.block
        ));
        if let Some(token) = j.bound {
            s.push_str(&format!("  bound to seat {token} now\n"));
        }
        match &j.verdict {
            Ok(l) => {
                s.push_str(&format!(
                    "  compose hash {}\n",
                    allowed(l.compose, l.compose_allowed)
                ));
                s.push_str(&format!("  OS image     {}\n", allowed(l.os, l.os_allowed)));
                let allow_os = if l.os_allowed { "" } else { " --allow-os" };
                let token = j.bound.map(|t| format!(" --token {t}")).unwrap_or_default();
                s.push_str(&format!(
                    "  bind: meshctl bind --instance {}{token}{allow_os}\n",
                    b.instance_id
                ));
            }
            Err(e) => s.push_str(&format!("  does not verify: {e}\n")),
        }
    }
    if unreadable > 0 {
        s.push_str(&format!(
            "{unreadable} request events could not be read (see --json)\n"
        ));
    }
    s
}

fn to_json(j: &Judged) -> serde_json::Value {
    let b = &j.request.binding;
    let (verified, error, listed) = match &j.verdict {
        Ok(l) => (true, None, Some(l)),
        Err(e) => (false, Some(e.clone()), None),
    };
    json!({
        "instanceId": b.instance_id,
        "node": b.node,
        "holder": b.holder,
        "block": j.request.block,
        "tx": j.request.tx,
        "boundTo": j.bound,
        "verified": verified,
        "error": error,
        "composeHash": listed.map(|l| l.compose),
        "composeAllowed": listed.map(|l| l.compose_allowed),
        "osImage": listed.map(|l| l.os),
        "osAllowed": listed.map(|l| l.os_allowed),
    })
}
