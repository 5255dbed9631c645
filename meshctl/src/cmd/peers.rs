//! `meshctl peers`: the on-chain peer records, each re-verified off-chain from its registration event.

use std::process::ExitCode;

use alloy::providers::Provider;
use anyhow::Context;
use mesh_chain::{
    contract::{self as chain, DstackClusterNFT, ipv4},
    record as proof,
};
use serde_json::{Value, json};

use crate::cluster::{self, ClusterOpts};
use crate::output::Output;

/// What to do about a record whose proof does not verify: agents refuse it, so the seat is out of the
/// mesh until its node registers a record they believe.
fn fix(token: u64) -> String {
    format!(
        "every agent refuses seat {token}'s record, so the node is out of the mesh. Its agent registers a new \
         record with the next nonce at its next check (every --full-read-secs); if it does not, restart that \
         agent, or run `p2p-agent register` on its node"
    )
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    cluster: ClusterOpts,
    /// Show whole WireGuard keys and instance ids.
    #[arg(short, long)]
    verbose: bool,
    /// What each seat's attestation evidence is verified under, as the agents verify it.
    #[command(flatten)]
    trust: mesh_attest::cli::TrustArgs,
}

/// What to do about a seat whose evidence does not pass: agents do not configure it until its holder binds
/// the seat with evidence that does.
fn attestation_fix(token: u64, trust_dependent: bool) -> String {
    if trust_dependent {
        return format!(
            "this is meshctl's own check, under its own trust settings, and the agents may decide otherwise \
             (each agent's verdict is in `meshctl status` on its node, or its /v1/peers/refused): give meshctl \
             the collateral the agents use, --pccs-url URL (the agents' --pccs-url) or --tdx-collateral-file FILE, \
             and --tdx-root-ca FILE only with a test PKI, then check seat {token} again"
        );
    }
    format!(
        "every agent that checks seat {token} refuses it for this too, so the node is out of the mesh: fix what \
         the reason names (the cluster's allowlists with `meshctl app-auth`, or the node), or bind the seat again \
         with its node's binding (`meshctl bind --token {token} --instance <its instance>`, once its agent asks again)"
    )
}

/// Why `meshctl`'s check of a seat's evidence failed, and whether it turned on `meshctl`'s own trust settings.
struct NotAttested {
    reason: String,
    trust_dependent: bool,
}

/// Seat `p`'s binding evidence, checked as the agents check it: its TCB status, or why it is refused.
async fn attest(
    c: &DstackClusterNFT::DstackClusterNFTInstance<crate::cluster::Chain>,
    trust: &mesh_attest::cli::TrustArgs,
    p: &DstackClusterNFT::Peer,
    chain_id: u64,
    app_ids: &[alloy::primitives::Address],
) -> Result<String, NotAttested> {
    let plain = |reason: String| NotAttested {
        reason,
        trust_dependent: false,
    };
    let binding = chain::binding_event(c, p)
        .await
        .map_err(|e| plain(format!("reading its InstanceBound event: {e}")))?
        .ok_or_else(|| {
            plain(format!(
                "no InstanceBound event in block {} (unbound)",
                p.boundBlock
            ))
        })?;
    let seat = crate::attest::Seat {
        instance_id: &binding.instance_id,
        node: binding.node,
        chain_id,
        contract: *c.address(),
        apps: app_ids,
    };
    crate::attest::check(c, trust, &binding.evidence, &seat)
        .await
        .map(|v| v.tcb_status.as_str().to_owned())
        .map_err(|e| NotAttested {
            trust_dependent: e
                .downcast_ref::<crate::attest::Refused>()
                .is_some_and(|r| r.0.depends_on_trust()),
            reason: format!("{e:#}"),
        })
}

/// A record's proof, re-checked against the contract's own KMS root and app ids.
fn verify(
    peer: &DstackClusterNFT::Peer,
    event: Option<&DstackClusterNFT::PeerRegistered>,
    chain_id: u64,
    contract: alloy::primitives::Address,
    kms_root: alloy::primitives::Address,
    app_ids: &[alloy::primitives::Address],
) -> Result<(), String> {
    let event = event.ok_or_else(|| {
        format!(
            "no PeerRegistered event with nonce {} in block {}",
            peer.nonce, peer.registeredBlock
        )
    })?;
    if event.wgPublicKey != peer.wgPublicKey
        || event.endpoint != peer.endpoint
        || event.gatewayUrl != peer.gatewayUrl
    {
        return Err("the stored record differs from its registration event".into());
    }
    let reg =
        chain::registration_from_event(event, chain_id, contract).map_err(|e| e.to_string())?;
    proof::verify_registration(&reg, kms_root, app_ids, &peer.instanceId, Some(peer.node))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub(crate) async fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::open_read(&args.cluster).await?;
    let read = "reading the peer records";
    let mut peers = c.getPeers().call().await.context(read)?;
    // The contract lists records in no particular order.
    peers.sort_by_key(|p| p.tokenId);
    let kms_root = c.kmsRoot().call().await.context(read)?;
    let app_ids = c.allowedAppIds().call().await.context(read)?;
    let chain_id = c
        .provider()
        .get_chain_id()
        .await
        .context("reading the chain id")?;
    let mut rows: Vec<Value> = Vec::new();
    let mut failures = 0;
    for p in &peers {
        let event = chain::registration_event(&c, p)
            .await
            .with_context(|| format!("fetching seat {}'s registration event", p.tokenId))?;
        let verdict = verify(
            p,
            event.as_ref(),
            chain_id,
            args.cluster.contract,
            kms_root,
            &app_ids,
        );
        let attested = attest(&c, &args.trust, p, chain_id, &app_ids).await;
        failures += usize::from(verdict.is_err()) + usize::from(attested.is_err());
        let token = u64::try_from(p.tokenId).with_context(|| {
            format!("the RPC lists seat id {}, which is out of range", p.tokenId)
        })?;
        rows.push(json!({
            "tokenId": token,
            "instanceId": p.instanceId,
            "overlayIp": ipv4(p.overlayAddress).to_string(),
            "wgPublicKey": wg_key(p),
            "endpoint": p.endpoint,
            "gatewayUrl": p.gatewayUrl,
            "nonce": p.nonce,
            "registeredBlock": p.registeredBlock,
            "proofVerified": verdict.is_ok(),
            "fix": verdict.is_err().then(|| fix(token)),
            "proofError": verdict.err(),
            "attested": attested.is_ok(),
            "tcbStatus": attested.as_ref().ok(),
            "attestationError": attested.as_ref().err().map(|e| &e.reason),
            "attestationFix": attested.as_ref().err().map(|e| attestation_fix(token, e.trust_dependent)),
        }));
    }
    let verbose = args.verbose;
    out.emit(
        || table(&rows, verbose),
        || json!({ "kmsRoot": kms_root, "appIds": app_ids, "peers": rows }),
    );
    // A record that fails off-chain verification means the contract or the RPC is not what we think; a seat
    // whose evidence is refused is out of every agent's mesh.
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn wg_key(p: &DstackClusterNFT::Peer) -> Value {
    if p.wgPublicKey.is_zero() {
        Value::Null
    } else {
        Value::String(wg_key::Key::from_bytes(p.wgPublicKey.0).to_string())
    }
}

fn table(rows: &[Value], verbose: bool) -> String {
    if rows.is_empty() {
        return "no peer records\n".into();
    }
    let cut = |s: &str, n: usize| {
        if verbose || s.len() <= n {
            s.to_string()
        } else {
            format!("{}…", &s[..n])
        }
    };
    let mut s = format!(
        "{:<6} {:<14} {:<15} {:<14} {:<22} {:<8} {:<10} {}\n",
        "TOKEN", "INSTANCE", "OVERLAY", "WG KEY", "ENDPOINT", "PROOF", "ATTESTED", "GATEWAY"
    );
    for r in rows {
        let str_of = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let proof = if r["proofVerified"].as_bool() == Some(true) {
            "ok".to_string()
        } else {
            "FAILED".to_string()
        };
        let endpoint = match str_of("endpoint").as_str() {
            "" => "-".to_string(),
            e => e.to_string(),
        };
        let gateway = match str_of("gatewayUrl").as_str() {
            "" => "-".to_string(),
            g => g.to_string(),
        };
        let attested = match r["tcbStatus"].as_str() {
            Some(status) => status.to_owned(),
            None => "REFUSED".to_owned(),
        };
        s.push_str(&format!(
            "{:<6} {:<14} {:<15} {:<14} {:<22} {:<8} {:<10} {}\n",
            r["tokenId"].as_u64().unwrap_or_default(),
            cut(&str_of("instanceId"), 12),
            str_of("overlayIp"),
            cut(&str_of("wgPublicKey"), 12),
            endpoint,
            proof,
            attested,
            gateway
        ));
        if let Some(e) = r["proofError"].as_str() {
            s.push_str(&format!(
                "       proof of seat {} does not verify: {e}\n       fix: {}\n",
                r["tokenId"],
                r["fix"].as_str().unwrap_or_default()
            ));
        }
        if let Some(e) = r["attestationError"].as_str() {
            s.push_str(&format!(
                "       seat {} does not pass meshctl's check: {e}\n       fix: {}\n",
                r["tokenId"],
                r["attestationFix"].as_str().unwrap_or_default()
            ));
        }
    }
    s
}
