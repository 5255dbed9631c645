//! `p2p-agent`: the dstack-mesh agent binary: the daemon (`daemon`), and one-shot tools (identity,
//! register, wait). Parsing, logging and exit codes live here; the pieces are in the `p2p_agent` library.

mod daemon;

use std::io::Write as _;
use std::process::ExitCode;

use alloy::primitives::Address;
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use dstack_guest::DstackClient;
use dstack_guest::{DstackProof, ProofError};
use mesh_chain::record as proof;
use serde::Serialize;

/// dstack-mesh agent: proves this CVM's WireGuard key on-chain and keeps its mesh in step.
///
/// Without a subcommand it runs the daemon: `p2p-agent --mode wireguard --contract 0x… --rpc-url …`.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: daemon::RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show this CVM's dstack identity: instance id, app id, the peer key's address, and whether
    /// dstack's signature chain for it verifies. Never prints private keys.
    Identity(IdentityArgs),
    /// Register this node's peer record for its seat once, if the on-chain one differs: WireGuard key
    /// (derived from dstack), endpoint and gateway URL. Sends from the derived address when it is funded,
    /// else with --tx-key-file/PRIVATE_KEY; otherwise prints the signed registration as JSON for
    /// `meshctl relay`.
    Register(RegisterArgs),
    /// Wait until this node's record is on-chain and at least one tunnel is up (or there is no WireGuard
    /// peer to have one with, or this node runs --mode tls): exits 0 then, non-zero after --timeout-secs. For docker-compose `depends_on:
    /// service_completed_successfully`.
    Wait(WaitArgs),
}

#[derive(Debug, Args)]
struct WaitArgs {
    /// The agent's API socket.
    #[arg(long, env = "P2P_AGENT_API_SOCKET", default_value = mesh_api::DEFAULT_SOCKET)]
    api_socket: std::path::PathBuf,
    /// Give up after this many seconds.
    #[arg(long, env = "MESH_WAIT_TIMEOUT_SECS", default_value_t = 120)]
    timeout_secs: u64,
}

#[derive(Debug, Args)]
struct RegisterArgs {
    /// The cluster contract: the cluster's identity.
    #[arg(long, env = "CLUSTER_CONTRACT")]
    contract: Address,
    /// The chain's JSON-RPC URL.
    #[arg(long, env = "RPC_URL", default_value = "http://127.0.0.1:8545")]
    rpc_url: alloy::transports::http::reqwest::Url,
    /// Guest-agent endpoint: a socket path or an http:// simulator URL.
    #[arg(long, env = "DSTACK_SIMULATOR_ENDPOINT")]
    dstack_endpoint: Option<String>,
    /// The UDP endpoint peers reach this node's WireGuard at, `host:port`.
    #[arg(long, env = "MESH_ENDPOINT")]
    endpoint: Option<String>,
    /// This node's TLS-gateway URL, the fallback when a tunnel cannot come up.
    #[arg(long, env = "MESH_GATEWAY_URL")]
    gateway_url: Option<String>,
    /// WireGuard key rotation epoch: each epoch is a new key derived from dstack.
    #[arg(long, env = "MESH_WG_KEY_EPOCH", default_value_t = 0)]
    wg_key_epoch: u32,
    /// A file with a funded private key that pays for the transaction when the derived address has no
    /// funds. Without it, the PRIVATE_KEY environment variable is used.
    #[arg(long, env = "TX_KEY_FILE", value_name = "PATH")]
    tx_key_file: Option<std::path::PathBuf>,
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

    /// An app id the cluster allows (repeatable, with --kms-root). Default: this CVM's own app id, i.e. not
    /// pinned.
    #[arg(long = "app-id", value_name = "ADDRESS", requires = "kms_root")]
    app_ids: Vec<Address>,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,

    /// Print this instance's consent to the holder of seat N binding the seat to it, as JSON on stdout for
    /// `meshctl bind --consent` (the identity report then goes to stderr). Needs --bind-holder and
    /// --contract, and --chain-id or --rpc-url.
    #[arg(long, value_name = "N", requires_all = ["bind_holder", "contract"])]
    bind_token: Option<u64>,

    /// The address that holds the seat (with --bind-token).
    #[arg(long, value_name = "ADDRESS", requires = "bind_token")]
    bind_holder: Option<Address>,

    /// The cluster contract the consent is for (with --bind-token).
    #[arg(long, env = "CLUSTER_CONTRACT")]
    contract: Option<Address>,

    /// The chain id the consent is for (with --bind-token); read from --rpc-url when not given.
    #[arg(long, conflicts_with = "rpc_url")]
    chain_id: Option<u64>,

    /// A JSON-RPC URL to read the chain id from (with --bind-token).
    #[arg(long)]
    rpc_url: Option<alloy::transports::http::reqwest::Url>,
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

/// Takes the transaction key out of the process environment as soon as the agent starts, so nothing it
/// starts inherits it and nothing that reads its environment later finds it.
#[allow(unsafe_code)]
fn take_private_key() -> Option<zeroize::Zeroizing<String>> {
    let value = std::env::var("PRIVATE_KEY")
        .ok()
        .map(zeroize::Zeroizing::new);
    // SAFETY: called first in `main`, before the runtime or any other thread exists, so nothing else reads or
    // writes the environment meanwhile.
    unsafe { std::env::remove_var("PRIVATE_KEY") };
    value
}

/// The key that pays for registrations: `--tx-key-file`, else the `PRIVATE_KEY` taken at start, else none.
pub(crate) fn tx_signer(
    file: Option<&std::path::Path>,
    private_key: Option<zeroize::Zeroizing<String>>,
) -> anyhow::Result<Option<alloy::signers::local::PrivateKeySigner>> {
    Ok(mesh_chain::tx_key::load(
        file,
        "--tx-key-file",
        "PRIVATE_KEY",
        private_key.as_deref().map(String::as_str),
    )?)
}

fn main() -> ExitCode {
    let private_key = take_private_key();
    tracing_subscriber::fmt()
        .with_env_filter(
            // The agent's own events (registrations, peers added and removed) by default, others' warnings.
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "warn,p2p_agent=info,mesh_chain=info,mesh_wg=info,mesh_api=info,dstack_guest=info,unix_socket=info"
                    .into()
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, private_key)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    cli: Cli,
    private_key: Option<zeroize::Zeroizing<String>>,
) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                let _ = stop.send(true);
            });
            daemon::run(cli.run, private_key, stopped).await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Identity(args)) => identity(args).await,
        Some(Command::Register(args)) => register(args, private_key).await,
        Some(Command::Wait(args)) => wait(args).await,
    }
}

/// SIGINT or SIGTERM, whichever comes first.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn wait(args: WaitArgs) -> anyhow::Result<ExitCode> {
    use mesh_api::{Mode, Peer, Status};
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(args.timeout_secs);
    let mut last = String::from("the agent API never answered");
    while tokio::time::Instant::now() < deadline {
        let answer = match mesh_api::get::<Status>(&args.api_socket, "/v1/status").await {
            Ok(s) => mesh_api::get::<Vec<Peer>>(&args.api_socket, "/v1/peers")
                .await
                .map(|p| (s, p)),
            Err(e) => Err(e),
        };
        match answer {
            Ok((s, _)) if !s.node.registered => {
                last = match s.chain.last_error {
                    Some(e) => format!("this node's record is not on-chain yet: {e}"),
                    None => "this node's record is not on-chain yet".into(),
                }
            }
            Ok((s, peers)) => {
                // Peers without a WireGuard key (TLS nodes) are reached by URL: no tunnel to wait for.
                let tunnels = peers.iter().filter(|p| p.wg_public_key.is_some()).count();
                if s.mode == Mode::Tls || tunnels == 0 || s.peers_healthy > 0 {
                    eprintln!(
                        "ready: seat {} registered, {} of {} peers healthy",
                        s.node
                            .token_id
                            .map(|t| t.to_string())
                            .unwrap_or_else(|| "-".into()),
                        s.peers_healthy,
                        s.peers_configured
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                last = format!("no tunnel is up yet (0 of {tunnels} WireGuard peers healthy)");
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    eprintln!("not ready after {} s: {last}", args.timeout_secs);
    Ok(ExitCode::FAILURE)
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
            let identity = p2p_agent::identity::NodeIdentity::load(&client, 0)
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

async fn register(
    args: RegisterArgs,
    private_key: Option<zeroize::Zeroizing<String>>,
) -> anyhow::Result<ExitCode> {
    use mesh_chain::registration::{Cluster, Desired, Outcome};
    let tx_key = tx_signer(args.tx_key_file.as_deref(), private_key)?;
    let rpc = mesh_chain::redact::RedactedUrl::new(&args.rpc_url);
    let client = DstackClient::discover(args.dstack_endpoint.as_deref())
        .context("cannot choose a dstack endpoint")?;
    let identity = p2p_agent::identity::NodeIdentity::load(&client, args.wg_key_epoch)
        .await
        .context("cannot establish this node's identity from dstack")?;
    let cluster = Cluster::connect(args.rpc_url.clone(), args.contract)
        .await
        .map_err(|e| anyhow::anyhow!(rpc.scrub(&e.to_string())))
        .with_context(|| format!("cannot reach cluster {} via {rpc}", args.contract))?;
    let pins = cluster
        .contract_pins()
        .await
        .map_err(|e| anyhow::anyhow!(rpc.scrub(&e.to_string())))
        .context("reading the cluster's KMS root, app ids and prefix")?;
    let desired = Desired {
        wg_public_key: identity.wg_public_key(),
        endpoint: args.endpoint.unwrap_or_default(),
        gateway_url: args.gateway_url.unwrap_or_default(),
    };
    match cluster
        .register(&identity.peer, &desired, tx_key.as_ref(), &pins)
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
                "seat {}: no funded sender (derived address {} is empty and no --tx-key-file/PRIVATE_KEY): relay the registration above with `meshctl relay -`, or fund the derived address with `meshctl fund`",
                reg.token_id,
                identity.peer.address().context("derived key")?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
