//! A node's binding, checked before anyone pays for it: read from a file, or found among the requests
//! seatless nodes put on-chain; for `mint`, `bind` and `requests`.

use alloy::primitives::Address;
use anyhow::{Context, bail};
use mesh_chain::binding::binding_requests;
use mesh_chain::contract::{self as chain, DstackClusterNFT};
use mesh_chain::record::{self as proof, NodeBinding};

use crate::cluster;

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

pub(crate) fn read_binding(path: &std::path::Path) -> anyhow::Result<NodeBinding> {
    let text = crate::cmd::read_input(path, "the binding")?;
    serde_json::from_str::<NodeBinding>(&text).context(
        "the binding is not what a seatless agent or `p2p-agent identity --bind-holder` prints",
    )
}

/// How many of the newest requests are looked through by default: one RPC call per block that holds some.
pub(crate) const DEFAULT_LIMIT: usize = 256;

/// The newest request from `instance` that verifies, with its verdict; else why none does.
///
/// # Errors
/// No request from the instance among the newest `limit`, or none that verifies (each one's reason).
pub(crate) async fn find(
    c: &DstackClusterNFT::DstackClusterNFTInstance<crate::cluster::Chain>,
    instance: &str,
    limit: usize,
    trust: &mesh_attest::cli::TrustArgs,
) -> anyhow::Result<(NodeBinding, mesh_attest::Verdict)> {
    let at = c.provider().present().await?;
    let (requests, _) = binding_requests(c, at, limit).await?;
    let mut reasons = Vec::new();
    for request in requests
        .into_iter()
        .filter(|r| r.binding.instance_id == instance)
    {
        let b = request.binding;
        match check_binding(c, &b, b.holder, trust).await {
            Ok(verdict) => return Ok((b, verdict)),
            Err(e) => reasons.push(format!(
                "block {}, node {}: {}",
                request.block,
                b.node,
                crate::output::causes(&e).join(": ")
            )),
        }
    }
    if reasons.is_empty() {
        bail!(
            "no request for a seat from instance {instance} among the newest {limit}: is its agent running, with this cluster, and funded (`meshctl fund <node>`)? Without funds it prints its binding on stdout instead, for `meshctl bind --binding FILE`"
        );
    }
    bail!(
        "no request from instance {instance} verifies, so nothing was sent:\n  {}",
        reasons.join("\n  ")
    )
}

/// Checks a binding off-chain before anyone pays for it: it is for this cluster, chain and holder; its chain
/// names the instance and the node and verifies against the cluster's KMS root and app ids; the node signed
/// it; and its quote passes as every agent will check it ([`crate::attest::verify_quote`]). The allowlists
/// are the caller's to check, from the verdict.
pub(crate) async fn check_binding(
    c: &DstackClusterNFT::DstackClusterNFTInstance<crate::cluster::Chain>,
    binding: &NodeBinding,
    holder: Address,
    trust: &mesh_attest::cli::TrustArgs,
) -> anyhow::Result<mesh_attest::Verdict> {
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
            "the binding lets {} bind a seat, but the seat goes to {holder}: make one for {holder} in the instance (`p2p-agent identity --bind-holder {holder}`)",
            binding.holder
        );
    }
    let instance = instance_id(&binding.instance_id)?;
    let (kms_root, app_ids) = chain::trust_anchors(c).await?;
    proof::verify_binding(binding, kms_root, &app_ids).context(
        "the binding does not verify against the cluster's KMS root and app ids; not sending it",
    )?;
    let seat = crate::attest::Seat {
        instance_id: &instance,
        node: binding.node,
        chain_id: binding.chain_id,
        contract: binding.contract,
        apps: &[binding.proof.app_id],
    };
    crate::attest::verify_quote(trust, &binding.evidence, &seat)
        .await
        .context("the binding's attestation evidence does not pass as the agents will check it; not sending it")
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
