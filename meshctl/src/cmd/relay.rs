//! `meshctl relay`: submit a registration that an agent signed but could not pay for.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, bail};
use mesh_chain::{
    contract::{self as chain, DstackClusterNFT},
    error::ChainError,
    record::{self as proof, SignedRegistration},
};
use serde_json::json;

use crate::cluster::{self, events, tx_json, tx_text};
use crate::cmd::seat::Write;
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    write: Write,
    /// The signed registration as JSON (what `p2p-agent` prints), from a file, or - for stdin.
    file: PathBuf,
}

pub(crate) async fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    let text = crate::cmd::read_input(&args.file, "the registration")?;
    let reg: SignedRegistration = serde_json::from_str(&text)
        .context("the input is not a signed registration printed by p2p-agent")?;
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    if reg.contract != args.write.cluster.contract {
        bail!(
            "the registration is signed for cluster {}, not {}: relay it to its own cluster",
            reg.contract,
            args.write.cluster.contract
        );
    }
    cluster::require_chain(c.provider(), reg.chain_id, "registration").await?;
    // Check it off-chain first: a clear reason costs no gas, and a relay should not pay for a forgery.
    let seat = c
        .seatInfo(reg.token_id)
        .call()
        .await
        .map_err(|e| ChainError::from_call("seatInfo", e))?;
    let (kms_root, app_ids) = chain::trust_anchors(&c).await?;
    let bound = c
        .getPeer(reg.token_id)
        .call()
        .await
        .map_err(|e| ChainError::from_call("getPeer", e))?
        .node;
    proof::verify_registration(&reg, kms_root, &app_ids, &seat.instanceId, Some(bound))
        .with_context(|| {
            format!(
                "the registration for seat {} does not verify; not sending it",
                reg.token_id
            )
        })?;

    let (record, dstack_proof, signature) = chain::register_peer_args(&reg);
    let receipt = cluster::send(
        "registerPeer",
        c.registerPeer(record, dstack_proof, signature),
    )
    .await?;
    let registered = events::<DstackClusterNFT::PeerRegistered>(&receipt);
    anyhow::ensure!(
        !registered.is_empty(),
        "registerPeer emitted no PeerRegistered event"
    );
    out.emit(
        || {
            format!(
                "registered seat {} (instance {}, nonce {})\n  {}\n",
                reg.token_id,
                reg.instance_id,
                reg.nonce,
                tx_text(&receipt)
            )
        },
        || json!({ "tokenId": reg.token_id.to::<u64>(), "instanceId": reg.instance_id, "nonce": reg.nonce, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}
