//! `p2p-agent`: the dstack-mesh agent binary. Thin: parsing, logging and exit codes; the work is in
//! the `p2p_agent` library.

use std::process::ExitCode;

use alloy::primitives::Address;
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use p2p_agent::dstack::DstackClient;
use p2p_agent::proof::{self, DstackProof, ProofError};
use serde::Serialize;

/// dstack-mesh agent: proves this CVM's WireGuard key on-chain and keeps its mesh in step.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show this CVM's dstack identity: instance id, app id, the peer key's address, and whether
    /// dstack's signature chain for it verifies. Never prints private keys.
    Identity(IdentityArgs),
}

#[derive(Debug, Args)]
struct IdentityArgs {
    /// Guest-agent endpoint: a socket path or an http:// simulator URL. Default: the first of
    /// /var/run/dstack.sock, /run/dstack.sock, /var/run/dstack/dstack.sock, /run/dstack/dstack.sock.
    #[arg(long, env = "DSTACK_SIMULATOR_ENDPOINT")]
    dstack_endpoint: Option<String>,

    /// Trusted KMS root address; without it the chain is reported but not verified.
    #[arg(long, env = "DSTACK_MESH_KMS_ROOT")]
    kms_root: Option<Address>,

    /// An app id the cluster allows (repeatable). Default: this CVM's own app id, i.e. not pinned.
    #[arg(long = "app-id", value_name = "ADDRESS")]
    app_ids: Vec<Address>,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Identity(args) => identity(args).await,
    }
}

async fn identity(args: IdentityArgs) -> anyhow::Result<ExitCode> {
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
        .map(|root| proof::verify_chain(&proof, root, &allowed).map(|_| ()));
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

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot encode the report")?
        );
    } else {
        println!("instance id:     {}", report.instance_id);
        println!("app id:          {} ({})", report.app_id, report.app_name);
        println!("key path:        {}", report.key_path);
        println!("derived address: {}", report.derived_address);
        println!("KMS signer:      {}", report.kms_signer);
        let chain = match (&report.chain_verified, &report.chain_error) {
            (None, _) => "not checked (pass --kms-root)".to_owned(),
            (Some(true), _) if report.app_id_pinned => "verified".to_owned(),
            (Some(true), _) => "verified (app id not pinned: pass --app-id)".to_owned(),
            (Some(false), Some(e)) => format!("FAILED: {e}"),
            (Some(false), None) => "FAILED".to_owned(),
        };
        println!("chain:           {chain}");
    }
    Ok(if report.chain_verified == Some(false) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
