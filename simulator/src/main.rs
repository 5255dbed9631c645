//! `dstack-simulator`: serves dstack's guest-agent API on a unix socket with simulated keys and quotes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use alloy_primitives::Address;
use anyhow::Context as _;
use clap::{ArgGroup, Parser, ValueEnum};
use cli_env::Alias;
use dstack_simulator::fixture::{FIXTURE_A, FIXTURE_B};
use dstack_simulator::keys::KmsRootKey;
use dstack_simulator::platform::{InstanceChoice, KeySource, Platform, SimulatorConfig};
use dstack_simulator::server;
use tracing::{info, warn};
use unix_socket::UnixSocket;

/// A dstack guest-agent simulator. It serves the real agent's API (POST /GetKey, /GetQuote, /Info,
/// /Sign, /Verify, /Version, /GetTlsKey and the legacy /prpc/Tappd.* paths; JSON only) on a unix
/// socket, with keys derived through dstack's real hierarchy and quotes that prove nothing.
///
/// Choose the keys with --fixture (dstack's own simulator values) or --kms-root-key[-file] (a fresh
/// cluster whose app key is derived from that root as dstack's KMS does). Run one simulator per
/// simulated CVM: give each its own --socket and --instance-name; they share the app key.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
#[command(group(
    ArgGroup::new("key_source")
        .required(true)
        .args(["fixture", "kms_root_key", "kms_root_key_file"])
))]
#[command(group(ArgGroup::new("mock_pki").args(["mock_pki_seed", "mock_pki_seed_file"])))]
struct Cli {
    /// Unix socket to serve on. A stale socket file is replaced; a live one is refused.
    #[arg(long, env = "DSTACK_MESH_SIM_SOCKET", default_value = "./dstack.sock")]
    socket: PathBuf,

    /// Also serve plain HTTP on this loopback address (e.g. 127.0.0.1:8090), for clients that use
    /// DSTACK_SIMULATOR_ENDPOINT=http://…. Non-loopback addresses are refused.
    #[arg(long, env = "DSTACK_MESH_SIM_LISTEN", value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,

    /// Reproduce one of dstack's simulator fixtures: `a` (Aug 2025, KMS root 0x8f2c…e7C5) or `b` (2026).
    #[arg(long, env = "DSTACK_MESH_SIM_FIXTURE", value_enum)]
    fixture: Option<FixtureName>,

    /// KMS root private key (64 hex digits) of a fresh cluster. Prefer --kms-root-key-file: command
    /// lines are visible to other users. Never logged.
    #[arg(
        long,
        env = "DSTACK_MESH_SIM_KMS_ROOT_KEY",
        hide_env_values = true,
        value_name = "HEX",
        conflicts_with = "kms_root_key_file"
    )]
    kms_root_key: Option<SecretArg>,

    /// File holding the KMS root private key as hex.
    #[arg(long, env = "DSTACK_MESH_SIM_KMS_ROOT_KEY_FILE", value_name = "PATH")]
    kms_root_key_file: Option<PathBuf>,

    /// App id (40 hex digits) of a fresh cluster. Default: the first 20 bytes of the compose hash,
    /// as dstack does when no app id is set.
    #[arg(
        long,
        env = "DSTACK_MESH_SIM_APP_ID",
        value_name = "HEX40",
        conflicts_with = "fixture"
    )]
    app_id: Option<Address>,

    /// App name (app-compose `name`). Default: the fixture's, or `dstack-mesh`.
    #[arg(long, env = "DSTACK_MESH_SIM_APP_NAME")]
    app_name: Option<String>,

    /// This instance's id (40 hex digits). Default: the fixture's, or the one --instance-name
    /// `default` gives.
    #[arg(long, env = "DSTACK_MESH_SIM_INSTANCE_ID", value_name = "HEX40", value_parser = parse_instance_id, conflicts_with = "instance_name")]
    instance_id: Option<[u8; 20]>,

    /// Name this instance; its id is the first 20 bytes of
    /// sha256("dstack-simulator/instance:" ‖ name ‖ app_id), so names give stable, distinct ids.
    #[arg(long, env = "DSTACK_MESH_SIM_INSTANCE_NAME")]
    instance_name: Option<String>,

    /// Sign quotes through a mock Intel DCAP PKI made from this seed (64 hex digits; every simulator of a
    /// cluster given the same seed shares one mock "Intel"), so that a verifier that trusts the mock root
    /// (`p2p-agent --tdx-root-ca`) accepts them. Without it, quotes are unsigned. Prefer
    /// --mock-pki-seed-file: anyone holding the seed can sign quotes the mock root vouches for.
    #[arg(
        long,
        env = "DSTACK_MESH_SIM_MOCK_PKI_SEED",
        hide_env_values = true,
        value_name = "HEX",
        conflicts_with = "mock_pki_seed_file"
    )]
    mock_pki_seed: Option<SecretArg>,

    /// File holding the mock PKI seed as hex.
    #[arg(long, env = "DSTACK_MESH_SIM_MOCK_PKI_SEED_FILE", value_name = "PATH")]
    mock_pki_seed_file: Option<PathBuf>,

    /// Write the mock PKI's root CA certificate (PEM) here at start: what `p2p-agent --tdx-root-ca` takes.
    #[arg(long, value_name = "PATH", requires = "mock_pki")]
    write_tdx_root_ca: Option<PathBuf>,

    /// Write the mock PKI's collateral (JSON, dcap-qvl's QuoteCollateralV3) here at start, valid from now for
    /// --collateral-days: what `p2p-agent --tdx-collateral-file` takes.
    #[arg(long, value_name = "PATH", requires = "mock_pki")]
    write_collateral: Option<PathBuf>,

    /// How long the written collateral is valid, in days.
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    collateral_days: u64,

    /// Also serve a mock PCCS on this address: Intel's v4 collateral API with the mock PKI's collateral, for
    /// `p2p-agent --pccs-url http://ADDR:PORT`. Its TCB status, and whether it is expired or down, change
    /// while it runs: `curl -X PUT --data OutOfDate http://ADDR:PORT/mock/tcb-status`, `.../mock/expired`
    /// and `.../mock/down` take `true` or `false`, `GET .../mock` shows them. For rehearsing the cluster's
    /// TCB policy (`meshctl app-auth tcb set`) and a failing PCCS; anyone who reaches it can change it.
    #[arg(long, value_name = "ADDR:PORT", requires = "mock_pki")]
    serve_pccs: Option<SocketAddr>,

    /// The TCB status the mock PCCS starts with (--serve-pccs).
    #[arg(long, value_name = "STATUS", default_value = "UpToDate", value_parser = parse_tcb_status, requires = "serve_pccs")]
    pccs_tcb_status: tdx_mock::TcbStatus,
}

/// A TCB status as Intel spells it.
fn parse_tcb_status(raw: &str) -> Result<tdx_mock::TcbStatus, String> {
    tdx_mock::TcbStatus::parse(raw).ok_or_else(|| {
        format!(
            "{raw:?} is no TCB status: give one of {}",
            tdx_mock::TcbStatus::ALL.map(|s| s.as_str()).join(", ")
        )
    })
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FixtureName {
    /// dstack's simulator as of Aug 2025 (used by the earlier Python prototype).
    A,
    /// dstack's simulator from 2026-01-15 on.
    B,
}

/// A secret command-line value. Parsed after clap, because clap echoes values it rejects.
#[derive(Clone)]
struct SecretArg(zeroize::Zeroizing<String>);

impl std::str::FromStr for SecretArg {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(zeroize::Zeroizing::new(s.to_owned())))
    }
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn parse_instance_id(s: &str) -> Result<[u8; 20], String> {
    let bytes = dstack_guest::wire::decode_hex(s).map_err(|e| format!("not hex: {e}"))?;
    <[u8; 20]>::try_from(bytes.as_slice())
        .map_err(|_| format!("expected 20 bytes (40 hex digits), got {}", bytes.len()))
}

/// The older names of the simulator's environment variables, still read (see `cli_env`).
const ENV_ALIASES: &[Alias] = &[
    Alias::new("DSTACK_MESH_SIM_SOCKET", "DSTACK_SIM_SOCKET"),
    Alias::new("DSTACK_MESH_SIM_LISTEN", "DSTACK_SIM_LISTEN"),
    Alias::new("DSTACK_MESH_SIM_FIXTURE", "DSTACK_SIM_FIXTURE"),
    Alias::new("DSTACK_MESH_SIM_KMS_ROOT_KEY", "DSTACK_SIM_KMS_ROOT_KEY"),
    Alias::new(
        "DSTACK_MESH_SIM_KMS_ROOT_KEY_FILE",
        "DSTACK_SIM_KMS_ROOT_KEY_FILE",
    ),
    Alias::new("DSTACK_MESH_SIM_APP_ID", "DSTACK_SIM_APP_ID"),
    Alias::new("DSTACK_MESH_SIM_APP_NAME", "DSTACK_SIM_APP_NAME"),
    Alias::new("DSTACK_MESH_SIM_INSTANCE_ID", "DSTACK_SIM_INSTANCE_ID"),
    Alias::new("DSTACK_MESH_SIM_INSTANCE_NAME", "DSTACK_SIM_INSTANCE_NAME"),
];

#[allow(unsafe_code)]
fn main() -> std::process::ExitCode {
    // SAFETY: first in `main`, before the runtime or any other thread exists.
    let cli: Cli = unsafe { cli_env::parse(ENV_ALIASES) };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let keys = match (cli.fixture, cli.kms_root_key, cli.kms_root_key_file) {
        (Some(FixtureName::A), _, _) => KeySource::Fixture(&FIXTURE_A),
        (Some(FixtureName::B), _, _) => KeySource::Fixture(&FIXTURE_B),
        (None, Some(secret), _) => KeySource::Cluster {
            root: KmsRootKey::from_hex(&secret.0).context("bad --kms-root-key")?,
            app_id: cli.app_id,
        },
        (None, None, Some(path)) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            );
            let root = KmsRootKey::from_hex(&text)
                .with_context(|| format!("bad KMS root key in {}", path.display()))?;
            KeySource::Cluster {
                root,
                app_id: cli.app_id,
            }
        }
        (None, None, None) => anyhow::bail!("choose --fixture or --kms-root-key[-file]"),
    };
    let source = match &keys {
        KeySource::Fixture(f) => format!("fixture {}", f.name),
        KeySource::Cluster { .. } => "fresh cluster".to_owned(),
    };
    let instance = match (cli.instance_id, cli.instance_name) {
        (Some(id), _) => InstanceChoice::Id(id),
        (None, Some(name)) => InstanceChoice::Name(name),
        (None, None) => InstanceChoice::Default,
    };
    let seed = match (cli.mock_pki_seed, &cli.mock_pki_seed_file) {
        (Some(secret), _) => Some(parse_seed(&secret.0).context("bad --mock-pki-seed")?),
        (None, Some(path)) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            );
            Some(
                parse_seed(&text)
                    .with_context(|| format!("bad mock PKI seed in {}", path.display()))?,
            )
        }
        (None, None) => None,
    };
    let mock_pki = seed.map(|s| Arc::new(tdx_mock::MockPki::from_seed(*s)));
    // Kept for the server's life: it stops when dropped.
    let mut _pccs = None;
    if let (Some(pki), Some(addr)) = (&mock_pki, cli.serve_pccs) {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot serve the mock PCCS on {addr} (--serve-pccs)"))?;
        let pccs = tdx_mock::pccs::MockPccs::signing(
            listener,
            tdx_mock::MockPki::clone(pki),
            std::time::Duration::from_secs(cli.collateral_days.saturating_mul(86_400)),
            cli.pccs_tcb_status,
        );
        info!(url = %pccs.url(), tcb_status = %cli.pccs_tcb_status, "serving a mock PCCS: PUT /mock/tcb-status, /mock/expired or /mock/down changes it");
        _pccs = Some(pccs);
    }
    if let Some(pki) = &mock_pki {
        if let Some(path) = &cli.write_tdx_root_ca {
            write_file(path, pki.root_ca_pem().as_bytes())?;
        }
        if let Some(path) = &cli.write_collateral {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("the clock is before 1970")?
                .as_secs();
            let opts = tdx_mock::CollateralOptions::valid_from(now, cli.collateral_days);
            write_file(path, pki.collateral_json(&opts).as_bytes())?;
        }
    }
    let platform = Arc::new(
        Platform::new(SimulatorConfig {
            keys,
            instance,
            app_name: cli.app_name,
            mock_pki,
        })
        .context("cannot set up the simulated CVM")?,
    );

    let unix = UnixSocket::bind(&cli.socket).await?;
    let tcp = match cli.listen {
        Some(addr) => Some(server::bind_tcp(addr).await?),
        None => None,
    };
    warn!(
        source,
        "this is a SIMULATED dstack guest agent: its keys are not sealed, its quotes are unsigned (or signed \
         by a mock Intel PKI), and anyone who can reach it gets the app's keys"
    );
    info!(
        socket = %unix.path().display(),
        listen = ?cli.listen,
        app_id = %platform.app_id(),
        instance_id = %platform.instance_id_hex(),
        app_key_address = %platform.app_address(),
        kms_root = ?platform.kms_root(),
        "serving"
    );
    server::serve(platform, &unix, tcp, shutdown_signal()).await;
    Ok(())
}

/// A 32-byte seed from hex (surrounding whitespace and a 0x prefix allowed).
fn parse_seed(text: &str) -> anyhow::Result<zeroize::Zeroizing<[u8; 32]>> {
    let bytes = zeroize::Zeroizing::new(
        hex::decode(text.trim().trim_start_matches("0x")).context("not hex")?,
    );
    let seed: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("expected 32 bytes (64 hex digits), got {}", bytes.len()))?;
    Ok(zeroize::Zeroizing::new(seed))
}

/// Writes `bytes` to `path` whole: a temporary file beside it, then a rename, so a reader never sees half.
fn write_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Resolves on SIGINT or SIGTERM. If the handlers cannot be installed, logs and never resolves
/// (the process can still be killed).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            warn!(%e, "cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
}
