//! `p2p-agent register`: registers this node's record once, or prints it for a relay.

use std::process::ExitCode;

use alloy::primitives::Address;
use anyhow::Context as _;
use clap::Args;
use dstack_guest::DstackClient;

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The cluster contract: the cluster's identity.
    #[arg(long, env = "DSTACK_MESH_CONTRACT")]
    pub contract: Address,
    #[command(flatten)]
    pub endpoints: crate::config::Endpoints,
    /// The UDP endpoint peers reach this node's WireGuard at, `host:port`.
    #[arg(long, env = "DSTACK_MESH_ENDPOINT")]
    pub endpoint: Option<String>,
    /// This node's TLS-gateway URL, the fallback when a tunnel cannot come up.
    #[arg(long, env = "DSTACK_MESH_GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// WireGuard key rotation epoch: each epoch is another random key, kept with the node key.
    #[arg(long, env = "DSTACK_MESH_WG_KEY_EPOCH", default_value_t = 0)]
    pub wg_key_epoch: u32,
    #[command(flatten)]
    pub state: crate::config::StateArgs,
    /// A file with a funded private key that pays for the transaction when the node's address has no
    /// funds (a key in the environment is refused).
    #[arg(long, env = "DSTACK_MESH_TX_KEY_FILE", value_name = "PATH")]
    pub tx_key_file: Option<std::path::PathBuf>,
}

/// Registers once.
///
/// # Errors
/// dstack or the chain unreachable, no seat, or a record the cluster or peers would reject.
pub async fn run(args: RegisterArgs) -> anyhow::Result<ExitCode> {
    use mesh_chain::cluster::Cluster;
    use mesh_chain::registration::{Desired, Outcome};
    let tx_key = crate::config::tx_signer(args.tx_key_file.as_deref())?;
    let rpcs = args.endpoints.rpcs()?;
    let rpc = rpcs.redacted();
    let client = DstackClient::discover(args.endpoints.dstack_endpoint.as_deref())
        .context("cannot choose a dstack endpoint")?;
    let identity =
        crate::node::NodeIdentity::load(&client, &args.state.key_file(), args.wg_key_epoch)
            .await
            .context("cannot establish this node's identity")?;
    let cluster = Cluster::connect(rpcs, args.contract)
        .await
        .map_err(|e| anyhow::anyhow!(rpc.scrub(&e.to_string())))
        .with_context(|| format!("cannot reach cluster {} via {rpc}", args.contract))?;
    let pins = cluster
        .contract_pins()
        .await
        .map_err(|e| anyhow::anyhow!(rpc.scrub(&e.to_string())))
        .context("reading the cluster's KMS root, app ids and prefix")?;
    let desired = Desired {
        wg_public_key: Some(identity.wg_public_key()),
        endpoint: args.endpoint.unwrap_or_default(),
        gateway_url: args.gateway_url.unwrap_or_default(),
    };
    match cluster
        .register(&identity.node, &desired, tx_key.as_ref(), &pins)
        .await
        .map_err(|e| anyhow::anyhow!(rpc.scrub(&format!("{e:#}"))))?
    {
        Outcome::UpToDate { token_id } => {
            eprintln!("seat {token_id}: the on-chain record is already this node's; nothing sent");
        }
        Outcome::Registered {
            token_id,
            nonce,
            tx,
            block,
            from,
            ..
        } => {
            eprintln!(
                "seat {token_id}: registered record nonce {nonce} from {from} in tx {tx}, block {block}"
            );
        }
        Outcome::NeedsRelay(reg) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&reg).context("cannot encode the registration")?
            );
            eprintln!(
                "seat {}: no funded sender (node address {} is empty and no --tx-key-file): relay the registration above with `meshctl relay -`, or fund the node's address with `meshctl fund`",
                reg.token_id,
                identity.node.address()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
