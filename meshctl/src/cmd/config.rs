//! `meshctl config show|set`: the cluster's configuration.

use std::process::ExitCode;

use alloy::primitives::{Address, U256, utils::format_ether, utils::parse_ether};
use anyhow::{Context, bail};
use mesh_chain::contract::ipv4;
use serde_json::{Value, json};

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
    /// Show the configuration.
    Show(ClusterOpts),
    /// Change the configuration (owner only). Each option is its own transaction.
    Set(SetArgs),
}

#[derive(Debug, clap::Args)]
struct SetArgs {
    #[command(flatten)]
    write: Write,
    /// The most seats that may be active at once.
    #[arg(long)]
    max_nodes: Option<u64>,
    /// Let anyone mint a seat for the mint price.
    #[arg(long)]
    public_minting: Option<bool>,
    /// The price of a publicly minted seat, in ETH.
    #[arg(long, value_name = "ETH")]
    mint_price: Option<String>,
    /// Production mode: gateway URLs must be https under an allowed base domain.
    #[arg(long)]
    production: Option<bool>,
    /// Allow gateway URLs under this base domain (production mode).
    #[arg(long, value_name = "DOMAIN")]
    add_base_domain: Vec<String>,
    /// Stop allowing a base domain.
    #[arg(long, value_name = "DOMAIN")]
    remove_base_domain: Vec<String>,
    /// Allow instances of this dstack app id to register.
    #[arg(value_parser = crate::cluster::address, long, value_name = "APP_ID")]
    allow_app_id: Vec<Address>,
    /// Stop allowing a dstack app id.
    #[arg(value_parser = crate::cluster::address, long, value_name = "APP_ID")]
    disallow_app_id: Vec<Address>,
    /// Re-pin the dstack KMS root.
    #[arg(value_parser = crate::cluster::address, long, value_name = "ADDRESS")]
    kms_root: Option<Address>,
}

pub(crate) async fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Show(opts) => show(opts, out).await,
        Action::Set(set) => apply(set, out).await,
    }
}

async fn show(opts: ClusterOpts, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::open_read(&opts).await?;
    let read = "reading the cluster configuration";
    let election = crate::cluster::election(&c).await?;
    let app_auth = crate::cluster::app_auth(&c).await?;
    let (network, prefix) = {
        let p = c.meshPrefix().call().await.context(read)?;
        (ipv4(p._0), p._1)
    };
    let v = json!({
        "contract": opts.contract,
        "owner": c.owner().call().await.context(read)?,
        "kmsRoot": c.kmsRoot().call().await.context(read)?,
        "appIds": c.allowedAppIds().call().await.context(read)?,
        "prefix": format!("{network}/{prefix}"),
        "seatCapacity": c.seatCapacity().call().await.context(read)?.to_string(),
        "maxNodes": c.maxNodes().call().await.context(read)?.to_string(),
        "activeSeats": c.activeSeats().call().await.context(read)?.to_string(),
        "lastTokenId": c.lastTokenId().call().await.context(read)?.to_string(),
        "publicMinting": c.publicMinting().call().await.context(read)?,
        "mintPriceEth": format_ether(c.mintPrice().call().await.context(read)?),
        "productionMode": c.productionMode().call().await.context(read)?,
        "baseDomains": app_auth.baseDomains().call().await.context(read)?,
        "appAuth": *app_auth.address(),
        "requireAllowedDevice": app_auth.requireAllowedDevice().call().await.context(read)?,
        "requireBoundInstance": app_auth.requireBoundInstance().call().await.context(read)?,
        "election": *election.address(),
        "leaderTokenId": election.leaderTokenId().call().await.context(read)?.to_string(),
    });
    out.emit(|| render(&v), || v.clone());
    Ok(ExitCode::SUCCESS)
}

fn render(v: &Value) -> String {
    let mut s = String::new();
    if let Some(map) = v.as_object() {
        for (k, val) in map {
            let text = match val {
                Value::String(t) => t.clone(),
                Value::Array(items) if items.is_empty() => "(none)".into(),
                Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned).unwrap_or(i.to_string()))
                    .collect::<Vec<_>>()
                    .join(", "),
                other => other.to_string(),
            };
            s.push_str(&format!("{k:<22}{text}\n"));
        }
    }
    s
}

async fn apply(a: SetArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let nothing = a.max_nodes.is_none()
        && a.public_minting.is_none()
        && a.mint_price.is_none()
        && a.production.is_none()
        && a.kms_root.is_none()
        && a.add_base_domain.is_empty()
        && a.remove_base_domain.is_empty()
        && a.allow_app_id.is_empty()
        && a.disallow_app_id.is_empty();
    if nothing {
        bail!("nothing to set: pass at least one option (see `meshctl config set --help`)");
    }
    let c = cluster::open_write(&a.write.cluster, &a.write.signer).await?;
    let mut done: Vec<Value> = Vec::new();
    let mut text = String::new();
    let mut note = |what: String, receipt: &alloy::rpc::types::TransactionReceipt| {
        text.push_str(&format!("{what}\n  {}\n", tx_text(receipt)));
        done.push(json!({ "set": what, "receipt": tx_json(receipt) }));
    };
    if let Some(n) = a.max_nodes {
        let r = cluster::send("setMaxNodes", c.setMaxNodes(U256::from(n))).await?;
        note(format!("max nodes = {n}"), &r);
    }
    if let Some(on) = a.public_minting {
        let r = cluster::send("setPublicMinting", c.setPublicMinting(on)).await?;
        note(format!("public minting = {on}"), &r);
    }
    if let Some(eth) = &a.mint_price {
        let wei = parse_ether(eth)
            .with_context(|| format!("--mint-price {eth:?} is not an ETH amount"))?;
        let r = cluster::send("setMintPrice", c.setMintPrice(wei)).await?;
        note(format!("mint price = {eth} ETH"), &r);
    }
    if let Some(on) = a.production {
        let r = cluster::send("setProductionMode", c.setProductionMode(on)).await?;
        note(format!("production mode = {on}"), &r);
    }
    let domains = !(a.add_base_domain.is_empty() && a.remove_base_domain.is_empty());
    // The gateway domains live in the cluster's app auth, with the rest of what it accepts of a node.
    let auth = match domains {
        true => Some(crate::cluster::app_auth(&c).await?),
        false => None,
    };
    for d in &a.add_base_domain {
        let auth = auth.as_ref().context("the app auth was read")?;
        let r = cluster::send("addBaseDomain", auth.addBaseDomain(d.clone())).await?;
        note(format!("base domain added: {d}"), &r);
    }
    for d in &a.remove_base_domain {
        let auth = auth.as_ref().context("the app auth was read")?;
        let r = cluster::send("removeBaseDomain", auth.removeBaseDomain(d.clone())).await?;
        note(format!("base domain removed: {d}"), &r);
    }
    for id in &a.allow_app_id {
        let r = cluster::send("setAppId", c.setAppId(*id, true)).await?;
        note(format!("app id allowed: {id}"), &r);
    }
    for id in &a.disallow_app_id {
        let r = cluster::send("setAppId", c.setAppId(*id, false)).await?;
        note(format!("app id disallowed: {id}"), &r);
    }
    if let Some(root) = a.kms_root {
        let r = cluster::send("setKmsRoot", c.setKmsRoot(root)).await?;
        note(format!("kms root = {root}"), &r);
    }
    out.emit(|| text.clone(), || json!({ "changes": done }));
    Ok(ExitCode::SUCCESS)
}
