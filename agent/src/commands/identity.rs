//! `p2p-agent identity`: what dstack says this instance is, whether its signature chain verifies, and its
//! consent to a seat binding.

use std::io::Write as _;
use std::process::ExitCode;

use alloy::primitives::Address;
use anyhow::Context as _;
use clap::Args;
use dstack_guest::{DstackClient, DstackProof, ProofError};
use mesh_chain::record as proof;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// Guest-agent endpoint: a socket path or an http:// simulator URL. Default: the first of
    /// /var/run/dstack.sock, /run/dstack.sock, /var/run/dstack/dstack.sock, /run/dstack/dstack.sock.
    #[arg(long, env = "DSTACK_MESH_DSTACK_ENDPOINT")]
    pub dstack_endpoint: Option<String>,

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

    /// Print this instance's consent to the holder of seat N binding the seat to it, as JSON on stdout for
    /// `meshctl bind --consent` (the identity report then goes to stderr). Needs --bind-holder and
    /// --contract, and --chain-id or --rpc-url.
    #[arg(long, value_name = "N", requires_all = ["bind_holder", "contract"])]
    pub bind_token: Option<u64>,

    /// The address that holds the seat (with --bind-token).
    #[arg(long, value_name = "ADDRESS", requires = "bind_token")]
    pub bind_holder: Option<Address>,

    /// The cluster contract the consent is for (with --bind-token).
    #[arg(long, env = "DSTACK_MESH_CONTRACT")]
    pub contract: Option<Address>,

    /// The chain id the consent is for (with --bind-token); read from --rpc-url when not given.
    #[arg(long, conflicts_with = "rpc_url")]
    pub chain_id: Option<u64>,

    /// A JSON-RPC URL to read the chain id from (with --bind-token).
    #[arg(long)]
    pub rpc_url: Option<alloy::transports::http::reqwest::Url>,
}

/// What `identity` reports.
#[derive(Debug, Serialize)]
struct Identity {
    instance_id: String,
    app_id: Address,
    app_name: String,
    key_path: String,
    derived_address: Address,
    kms_signer: Address,
    /// `None` when no KMS root was given.
    chain_verified: Option<bool>,
    /// Why verification failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    chain_error: Option<String>,
    app_id_pinned: bool,
}

/// Prints the report, and the consent when asked for one.
///
/// # Errors
/// dstack unreachable, or no chain id for the consent.
pub async fn run(args: IdentityArgs) -> anyhow::Result<ExitCode> {
    let client = DstackClient::discover(args.dstack_endpoint.as_deref())
        .context("cannot choose a dstack endpoint")?;
    let info = client.info().await.context("dstack Info failed")?;
    anyhow::ensure!(
        !info.instance_id.is_empty(),
        "this app has no instance id (app-compose sets no_instance_id); dstack-mesh needs one"
    );
    let key_path = proof::key_path(&info.instance_id);
    let purpose = proof::purpose(&info.instance_id);
    let reply = client
        .get_key(&key_path, &purpose)
        .await
        .with_context(|| format!("dstack GetKey {key_path:?} failed"))?;
    let proof = DstackProof::from_get_key(&reply, info.app_id, &purpose)
        .context("cannot build the dstack proof from GetKey's reply")?;

    let app_id_pinned = !args.app_ids.is_empty();
    let allowed = if app_id_pinned {
        args.app_ids
    } else {
        vec![info.app_id]
    };
    let verdict: Option<Result<(), ProofError>> = args
        .kms_root
        .map(|root| dstack_guest::verify_chain(&proof, root, &allowed).map(|_| ()));
    let report = Identity {
        instance_id: info.instance_id,
        app_id: info.app_id,
        app_name: info.app_name,
        key_path,
        derived_address: proof.derived_address().context("derived key")?,
        kms_signer: proof
            .kms_signer()
            .context("cannot recover the KMS signer")?,
        chain_verified: verdict.as_ref().map(Result::is_ok),
        chain_error: verdict
            .as_ref()
            .and_then(|v| v.as_ref().err().map(ToString::to_string)),
        app_id_pinned,
    };

    // With a consent to print, stdout carries only the consent, so it can go straight to a file.
    let consent = match (args.bind_token, args.bind_holder, args.contract) {
        (Some(token), Some(holder), Some(contract)) => {
            let chain_id = match (args.chain_id, &args.rpc_url) {
                (Some(id), _) => id,
                (None, Some(url)) => {
                    use alloy::providers::{Provider as _, ProviderBuilder};
                    ProviderBuilder::new()
                        .connect_http(url.clone())
                        .get_chain_id()
                        .await
                        .context("reading the chain id from --rpc-url")?
                }
                (None, None) => anyhow::bail!(
                    "--bind-token needs the chain the cluster is on: pass --chain-id or --rpc-url"
                ),
            };
            let identity = crate::identity::NodeIdentity::load(&client, 0)
                .await
                .context("cannot establish this node's identity from dstack")?;
            Some(
                identity
                    .peer
                    .sign_bind_consent(
                        alloy::primitives::U256::from(token),
                        holder,
                        chain_id,
                        contract,
                    )
                    .context("signing the consent")?,
            )
        }
        _ => None,
    };
    let mut report_out: Box<dyn std::io::Write> = if consent.is_some() {
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
        let chain = match (&report.chain_verified, &report.chain_error) {
            (None, _) => "not checked (pass --kms-root)".to_owned(),
            (Some(true), _) if report.app_id_pinned => "verified".to_owned(),
            (Some(true), _) => "verified (app id not pinned: pass --app-id)".to_owned(),
            (Some(false), Some(e)) => format!("FAILED: {e}"),
            (Some(false), None) => "FAILED".to_owned(),
        };
        writeln!(
            report_out,
            "instance id:     {}\napp id:          {} ({})\nkey path:        {}\nderived address: {}\nKMS signer:      {}\nchain:           {chain}",
            report.instance_id,
            report.app_id,
            report.app_name,
            report.key_path,
            report.derived_address,
            report.kms_signer
        )?;
    }
    if let Some(consent) = consent {
        println!(
            "{}",
            serde_json::to_string_pretty(&consent).context("cannot encode the consent")?
        );
        eprintln!(
            "consent for seat {} (holder {}) of cluster {} on chain {}: pass it to `meshctl bind --consent FILE`",
            consent.token_id, consent.holder, consent.contract, consent.chain_id
        );
    }
    Ok(if report.chain_verified == Some(false) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
