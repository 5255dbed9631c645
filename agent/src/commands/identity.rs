//! `p2p-agent identity`: what this instance is (dstack's Info), its node key's address and whether dstack's
//! chain for it verifies; and, with `--bind-holder`, the binding a holder sends to bind a seat to it (what a
//! seatless agent also asks for on-chain by itself).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use alloy::primitives::{Address, B256};
use anyhow::Context as _;
use clap::Args;
use dstack_guest::{DstackClient, ProofError};
use mesh_chain::record::NodeBinding;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// Guest-agent endpoint: a socket path or an http:// simulator URL. Default: the first of
    /// /var/run/dstack.sock, /run/dstack.sock, /var/run/dstack/dstack.sock, /run/dstack/dstack.sock.
    #[arg(long, env = "DSTACK_MESH_DSTACK_ENDPOINT")]
    pub dstack_endpoint: Option<String>,

    #[command(flatten)]
    pub state: crate::config::StateArgs,

    /// Trusted KMS root address; without it the chain is reported but not verified.
    #[arg(long, env = "DSTACK_MESH_KMS_ROOT")]
    pub kms_root: Option<Address>,

    /// An app id the cluster allows (repeatable, with --kms-root). Default: this CVM's own app id, i.e. not
    /// pinned.
    #[arg(long = "app-id", value_name = "ADDRESS", requires = "kms_root")]
    pub app_ids: Vec<Address>,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,

    /// Print this node's binding for the holder ADDRESS as JSON on stdout, for `meshctl bind --binding` or
    /// `meshctl mint --binding`: it names no seat, so the holder binds one of its seats with it, or the
    /// owner mints one. The identity report then goes to stderr. It carries this instance's TDX quote, whose
    /// report data commits to the chain, the contract and the node key. Needs --contract, and --chain-id or
    /// --rpc-url. (A running agent without a seat asks for one on-chain by itself: see `--holder`.)
    #[arg(long, value_name = "ADDRESS", requires = "contract")]
    pub bind_holder: Option<Address>,

    /// The cluster contract the binding is for (with --bind-holder).
    #[arg(long, env = "DSTACK_MESH_CONTRACT")]
    pub contract: Option<Address>,

    /// The chain id the binding is for (with --bind-holder); read from --rpc-url when not given.
    #[arg(long, conflicts_with = "rpc_url")]
    pub chain_id: Option<u64>,

    /// A JSON-RPC URL to read the chain id from (with --bind-holder).
    #[arg(long)]
    pub rpc_url: Option<alloy::transports::http::reqwest::Url>,
}

/// What `identity` reports.
#[derive(Debug, Serialize)]
struct Identity {
    instance_id: String,
    app_id: Address,
    app_name: String,
    /// The node key's address: what the seat is bound to.
    node: Address,
    key_file: PathBuf,
    kms_signer: Address,
    /// `None` when no KMS root was given.
    chain_verified: Option<bool>,
    /// Why verification failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    chain_error: Option<String>,
    app_id_pinned: bool,
    /// What this instance's quote and event log claim (unverified): the cluster owner allowlists these with
    /// `meshctl app-auth allow-compose` and `allow-os` so that peers accept the instance.
    compose_hash: Option<B256>,
    os_measurement: Option<B256>,
    /// Why they could not be read, when they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    measurements_error: Option<String>,
}

/// This instance's evidence, with a quote whose report data is `report_data`.
async fn evidence(
    client: &DstackClient,
    report_data: &[u8; 64],
) -> anyhow::Result<mesh_attest::Evidence> {
    let quote = client
        .get_quote(report_data)
        .await
        .context("dstack GetQuote failed")?;
    mesh_attest::Evidence::from_dstack(&quote.quote, &quote.event_log)
        .context("dstack's quote and event log do not make evidence")
}

/// Prints the report, and the binding when asked for one.
///
/// # Errors
/// dstack unreachable, a key file that does not open, or no chain id for the binding.
pub async fn run(args: IdentityArgs) -> anyhow::Result<ExitCode> {
    let client = DstackClient::discover(args.dstack_endpoint.as_deref())
        .context("cannot choose a dstack endpoint")?;
    let key_file = args.state.key_file();
    let identity = crate::node::NodeIdentity::load(&client, &key_file, 0)
        .await
        .context("cannot establish this node's identity")?;
    let node = &identity.node;

    let app_id_pinned = !args.app_ids.is_empty();
    let allowed = if app_id_pinned {
        args.app_ids
    } else {
        vec![node.app_id]
    };
    let verdict: Option<Result<(), ProofError>> = args
        .kms_root
        .map(|root| dstack_guest::verify_chain(&node.proof, root, &allowed).map(|_| ()));
    let mut report = Identity {
        instance_id: node.instance_id.clone(),
        app_id: node.app_id,
        app_name: identity.app_name.clone(),
        node: node.address(),
        key_file,
        kms_signer: node
            .proof
            .kms_signer()
            .context("cannot recover the KMS signer")?,
        chain_verified: verdict.as_ref().map(Result::is_ok),
        chain_error: verdict
            .as_ref()
            .and_then(|v| v.as_ref().err().map(ToString::to_string)),
        app_id_pinned,
        compose_hash: None,
        os_measurement: None,
        measurements_error: None,
    };

    // With a binding to print, stdout carries only the binding, so it can go straight to a file.
    let binding = match (args.bind_holder, args.contract) {
        (Some(holder), Some(contract)) => {
            let chain_id = chain_id(args.chain_id, args.rpc_url.as_ref()).await?;
            let binding = crate::node::binding(&client, node, holder, chain_id, contract)
                .await
                .context("making this node's binding")?;
            Some(binding)
        }
        _ => None,
    };
    match claimed_measurements(&client, binding.as_ref()).await {
        Ok(claimed) => {
            report.compose_hash = Some(B256::from(claimed.compose_hash));
            report.os_measurement = Some(B256::from(claimed.os_measurement));
        }
        Err(e) => report.measurements_error = Some(format!("{e:#}")),
    }
    let mut report_out: Box<dyn std::io::Write> = if binding.is_some() {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    if args.json {
        writeln!(
            report_out,
            "{}",
            serde_json::to_string_pretty(&report).context("cannot encode the report")?
        )?;
    } else {
        writeln!(report_out, "{}", report.text())?;
    }
    if let Some(binding) = binding {
        println!(
            "{}",
            serde_json::to_string_pretty(&binding).context("cannot encode the binding")?
        );
        eprintln!(
            "binding of instance {} (node {}) for holder {} of cluster {} on chain {}: pass it to `meshctl bind --binding FILE --token N`, or `meshctl mint --binding FILE --to {}`",
            binding.instance_id,
            binding.node,
            binding.holder,
            binding.contract,
            binding.chain_id,
            binding.holder
        );
    }
    Ok(if report.chain_verified == Some(false) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The chain the binding is for: `--chain-id`, else the chain `--rpc-url` is on.
async fn chain_id(
    given: Option<u64>,
    rpc_url: Option<&alloy::transports::http::reqwest::Url>,
) -> anyhow::Result<u64> {
    use alloy::providers::{Provider as _, ProviderBuilder};
    match (given, rpc_url) {
        (Some(id), _) => Ok(id),
        (None, Some(url)) => ProviderBuilder::new()
            .connect_http(url.clone())
            .get_chain_id()
            .await
            .context("reading the chain id from --rpc-url"),
        (None, None) => {
            anyhow::bail!(
                "--bind-holder needs the chain the cluster is on: pass --chain-id or --rpc-url"
            )
        }
    }
}

/// The compose hash and OS image this instance's quotes claim: the binding's own when there is one.
async fn claimed_measurements(
    client: &DstackClient,
    binding: Option<&NodeBinding>,
) -> anyhow::Result<mesh_attest::ClaimedMeasurements> {
    let evidence = match binding {
        Some(b) => mesh_attest::Evidence::decode(&b.evidence)?,
        None => evidence(client, &[0; 64]).await?,
    };
    Ok(mesh_attest::claimed_measurements(&evidence)?)
}

impl Identity {
    /// The report for people.
    fn text(&self) -> String {
        let chain = match (&self.chain_verified, &self.chain_error) {
            (None, _) => "not checked (pass --kms-root)".to_owned(),
            (Some(true), _) if self.app_id_pinned => "verified".to_owned(),
            (Some(true), _) => "verified (app id not pinned: pass --app-id)".to_owned(),
            (Some(false), Some(e)) => format!("FAILED: {e}"),
            (Some(false), None) => "FAILED".to_owned(),
        };
        let shown = |v: Option<B256>| match (v, &self.measurements_error) {
            (Some(v), _) => v.to_string(),
            (None, Some(e)) => format!("unknown ({e})"),
            (None, None) => "unknown".to_owned(),
        };
        format!(
            "instance id:     {}\napp id:          {} ({})\nnode:            {}\nkey file:        {}\nKMS signer:      {}\nchain:           {chain}\ncompose hash:    {}\nOS image:        {}",
            self.instance_id,
            self.app_id,
            self.app_name,
            self.node,
            self.key_file.display(),
            self.kms_signer,
            shown(self.compose_hash),
            shown(self.os_measurement),
        )
    }
}
