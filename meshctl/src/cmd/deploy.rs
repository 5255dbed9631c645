//! `meshctl deploy`: a new cluster from the committed contract artifact.

use std::process::ExitCode;

use alloy::primitives::{Address, U256};
use anyhow::{Context, bail};
use ipnetwork::Ipv4Network;
use mesh_chain::contract::DstackClusterNFT;
use serde_json::json;

use crate::cluster::{self, ChainOpts, SignerOpts};
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    chain: ChainOpts,
    #[command(flatten)]
    signer: SignerOpts,
    /// The address of the dstack KMS root key that every member's proof must lead to.
    #[arg(value_parser = crate::cluster::address, long, env = "DSTACK_MESH_KMS_ROOT")]
    kms_root: Address,
    /// A dstack app id whose instances may join; repeat for several.
    #[arg(value_parser = crate::cluster::address,
        long = "app-id",
        env = "DSTACK_MESH_APP_IDS",
        value_delimiter = ',',
        required = true
    )]
    app_ids: Vec<Address>,
    /// The mesh prefix, from /8 to /30: seat N's overlay address is network + N, so a /24 holds seats 1 to 254
    /// and a /16 seats 1 to 65,534. Seat ids count up and are never reused, revoked seats' included, and the
    /// prefix is fixed when the cluster is deployed: once the ids reach the prefix's last address, no seat can be
    /// minted, and only a new cluster with a wider prefix (10.1.0.0/16, say) grows further. It must not overlap
    /// dstack's gateway network.
    #[arg(long, env = "DSTACK_MESH_PREFIX", default_value = "10.0.1.0/24")]
    prefix: Ipv4Network,
    /// The most seats that may be active at once.
    #[arg(long, env = "DSTACK_MESH_MAX_NODES", default_value_t = 100)]
    max_nodes: u64,
    /// The cluster owner; defaults to the signer.
    #[arg(value_parser = crate::cluster::address, long, env = "DSTACK_MESH_CLUSTER_OWNER")]
    owner: Option<Address>,
}

pub(crate) async fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    if args.prefix.network() != args.prefix.ip() {
        bail!(
            "--prefix {} has host bits set: did you mean {}/{}?",
            args.prefix,
            args.prefix.network(),
            args.prefix.prefix()
        );
    }
    if !(8..=30).contains(&args.prefix.prefix()) {
        bail!(
            "--prefix {}: the length must be between 8 and 30 so that seats have addresses",
            args.prefix
        );
    }
    mesh_chain::membership::Prefix::new(args.prefix.network(), args.prefix.prefix())
        .map_err(anyhow::Error::from)
        .and_then(|p| Ok(p.outside_dstack()?))
        .with_context(|| format!("--prefix {}", args.prefix))?;
    let signer = args.signer.signer()?;
    let owner = args.owner.unwrap_or(signer.address());
    let signing = cluster::Chain::new(&args.chain, signer)?;
    let deploy = DstackClusterNFT::deploy_builder(
        &signing,
        owner,
        args.kms_root,
        args.app_ids.clone(),
        u32::from(args.prefix.network()),
        args.prefix.prefix(),
        U256::from(args.max_nodes),
    );
    let receipt = cluster::send("deploy", deploy)
        .await
        .context("deploying the cluster contract")?;
    let address = receipt.contract_address.with_context(|| {
        format!(
            "the deployment {} was mined without a contract address: a lying RPC?",
            receipt.transaction_hash
        )
    })?;
    out.emit(
        || {
            format!(
                "deployed cluster {address}\n  owner      {owner}\n  kms root   {}\n  app ids    {}\n  prefix     {}\n  max nodes  {}\n\nexport DSTACK_MESH_CONTRACT={address}\n",
                args.kms_root,
                args.app_ids.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
                args.prefix,
                args.max_nodes
            )
        },
        || {
            json!({
                "contract": address, "owner": owner, "kmsRoot": args.kms_root, "appIds": args.app_ids,
                "prefix": args.prefix.to_string(), "maxNodes": args.max_nodes,
            })
        },
    );
    Ok(ExitCode::SUCCESS)
}
