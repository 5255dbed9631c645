//! `p2p-agent`: the dstack-mesh agent binary: the daemon, and one-shot tools (identity, register, wait).
//! Only the arguments, logging, signals and exit codes live here; the rest is in the `p2p_agent` library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use p2p_agent::commands::{identity, register, wait};
use p2p_agent::config::{self, RunArgs};
use tokio_util::sync::CancellationToken;

/// dstack-mesh agent: proves this CVM's WireGuard key on-chain and keeps its mesh in step.
///
/// Without a subcommand it runs the daemon: `p2p-agent --mode wireguard --contract 0x… --rpc-url …`.
#[derive(Debug, Parser)]
#[command(version = build_commit::version!(), about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// How log lines are written to stderr: text for people, json (one object per line, with the node's
    /// instance and token in its spans once known) for log collectors.
    #[arg(
        long,
        env = "DSTACK_MESH_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon, as with no subcommand: the same flags and variables (`p2p-agent run --help` lists
    /// them).
    Run(Box<RunArgs>),
    /// Show this CVM's identity: instance id, app id, the node key's address (made and sealed in the state
    /// directory on first use), and whether dstack's signature chain for it verifies; with --bind-holder, print
    /// the binding (with this instance's TDX quote) that `meshctl bind` sends. Never prints private keys.
    Identity(identity::IdentityArgs),
    /// Register this node's peer record for its seat once, if the on-chain one differs: WireGuard key
    /// (made in this CVM), endpoint and gateway URL. Sends from the node's address when it is funded,
    /// else with --tx-key-file; otherwise prints the signed registration as JSON for
    /// `meshctl relay`.
    Register(register::RegisterArgs),
    /// Wait until this node's record is on-chain and at least one tunnel is up (or there is no WireGuard
    /// peer to have one with, or this node runs --mode tls): exits 0 then, non-zero after --timeout-secs. For docker-compose `depends_on:
    /// service_completed_successfully`.
    Wait(wait::WaitArgs),
    /// Hold a network namespace and do nothing else until SIGTERM, as Kubernetes' pause container does: the
    /// agent and the application both join it (compose `network_mode: service:<this>`), so a restart of
    /// the agent keeps the application's network.
    Hold,
}

#[allow(unsafe_code)]
fn main() -> ExitCode {
    // glibc gives each thread that allocates an arena of its own, up to eight per core, and an idle agent's
    // memory is mostly what those arenas hold free: two are enough for its few busy threads.
    //
    // A block of 256 KiB or more is a mapping of its own, unmapped when freed. glibc otherwise raises that
    // threshold to the largest such block freed (up to 32 MiB), and later large transients (a status of 999
    // peers rendered, a batch of logs decoded) land in an arena, where their pages stay resident: an agent
    // of 999 peers settled 13 MiB higher in some runs than in others (docs/benchmarks.md).
    // SAFETY: before any other thread exists; mallopt only sets a tunable of the allocator.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
    // SAFETY: first in `main`, before the runtime or any other thread exists.
    let cli: Cli = unsafe { cli_env::parse(config::ENV_ALIASES) };
    init_logging(cli.log_format);
    if matches!(
        cli.command,
        None | Some(Command::Run(_) | Command::Register(_))
    ) && let Err(e) = config::refuse_key_in_environment(|name| std::env::var_os(name))
    {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
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
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// boringtun logs WireGuard's expected timer events (a retried handshake every 5 s, giving up on an absent
/// peer) as warnings and errors, naming no peer; mesh_wg logs them at debug instead, with the peer. They stay
/// off under a RUST_LOG that does not name boringtun, so that `RUST_LOG=info` does not bring them back.
const BORINGTUN_TIMERS_OFF: &str = "boringtun::noise::timers=off";

/// The log filter: `rust_log` (RUST_LOG) when set, else the agent's own events (registrations, peers added
/// and removed) and others' warnings; boringtun's timer logs off unless RUST_LOG names boringtun.
fn log_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    let directives = match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(user) if user.contains("boringtun") => user.to_owned(),
        Some(user) => format!("{user},{BORINGTUN_TIMERS_OFF}"),
        None => format!(
            "warn,{BORINGTUN_TIMERS_OFF},p2p_agent=info,mesh_chain=info,mesh_wg=info,mesh_api=info,dstack_guest=info,unix_socket=info"
        ),
    };
    tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("warning: RUST_LOG={directives:?} is not a log filter ({e}); using the default");
        tracing_subscriber::EnvFilter::new(format!("warn,{BORINGTUN_TIMERS_OFF}"))
    })
}

fn init_logging(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(log_filter(std::env::var("RUST_LOG").ok().as_deref()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Spans as a list, root first: `.spans[0]` is the node, with its instance and token.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => daemon(cli.run).await,
        Some(Command::Run(args)) => daemon(*args).await,
        Some(Command::Identity(args)) => identity::run(args).await,
        Some(Command::Register(args)) => register::run(args).await,
        Some(Command::Wait(args)) => wait::run(args).await,
        Some(Command::Hold) => {
            wait_for_signal().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The daemon, until SIGINT or SIGTERM.
async fn daemon(args: RunArgs) -> anyhow::Result<ExitCode> {
    let tx_key = config::tx_signer(args.tx_key_file.as_deref())?;
    let cancel = CancellationToken::new();
    let stop = CancellationToken::new();
    let (on_signal, now) = (stop.clone(), cancel.clone());
    // The first signal drains the node before it stops; a second stops it at once.
    let _signals = owned_task::Task::spawn("signals", async move {
        wait_for_signal().await;
        on_signal.cancel();
        wait_for_signal().await;
        now.cancel();
    });
    p2p_agent::run::run(args, tx_key, env!("DSTACK_MESH_COMMIT"), cancel, stop).await?;
    Ok(ExitCode::SUCCESS)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boringtuns_timer_logs_stay_off_unless_rust_log_names_boringtun() {
        for user in [None, Some("info"), Some("debug,p2p_agent=trace")] {
            let f = log_filter(user).to_string();
            assert!(f.contains(BORINGTUN_TIMERS_OFF), "{user:?}: {f}");
        }
        let asked = log_filter(Some("boringtun=debug")).to_string();
        assert!(!asked.contains(BORINGTUN_TIMERS_OFF), "{asked}");
    }
}
