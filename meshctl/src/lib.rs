//! `meshctl`: the operator CLI of a dstack-mesh cluster. This is its library, package `meshctl-lib`; the
//! binary (`meshctl/bin`, package `meshctl`) only stamps the commit into `--version` and calls [`main`], so
//! that a new commit recompiles that small crate alone.
//!
//! Layout:
//! - `cluster`: connecting to the chain and the contract, signing, sending and reporting transactions;
//! - `output`: what a command prints, as text or as `--json`;
//! - `cmd/*`: one module per subcommand.

mod attest;
mod binding;
mod cluster;
mod cmd;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli_env::Alias;

/// Operate a dstack-mesh cluster: node status, and the cluster owner's and the node operator's tools.
///
/// Every command that touches the chain takes --contract (DSTACK_MESH_CONTRACT) and --rpc-url
/// (DSTACK_MESH_RPC_URL). Commands that send transactions sign with --private-key-file or the
/// DSTACK_MESH_PRIVATE_KEY environment variable; never put a key on the command line.
#[derive(Debug, Parser)]
#[command(name = "meshctl", about, long_about = None)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show this node and its mesh, from the local agent's API.
    Status(cmd::status::Args),
    /// Deploy a new cluster contract from the committed artifact, and print its address.
    Deploy(cmd::deploy::Args),
    /// Mint the next seat, optionally bound to a dstack instance.
    Mint(cmd::seat::MintArgs),
    /// Give a node a seat: find its request on-chain (--instance) or read its binding (--binding), verify it
    /// as every agent will, and mint a seat bound to it, or bind (or rebind) seat --token to it.
    Bind(cmd::seat::BindArgs),
    /// List the seats nodes asked for while they had none, newest first, each verified, with the command
    /// that binds it.
    Requests(cmd::requests::Args),
    /// Revoke (burn) a seat; its id and overlay address are never reissued. Owner only.
    Revoke(cmd::seat::RevokeArgs),
    /// Take a seat out of the mesh; it stops counting towards max nodes.
    Deactivate(cmd::seat::TokenArgs),
    /// Bring a deactivated seat back.
    Activate(cmd::seat::TokenArgs),
    /// Let a seat serve another dstack app than the one its first record came from. Owner only.
    ResetSeatApp(cmd::seat::TokenArgs),
    /// Show the cluster's configuration, or change it (owner only).
    Config(cmd::config::Args),
    /// Move the cluster's ownership in two steps (offer, accept), to a multisig for instance.
    Owner(cmd::owner::Args),
    /// Manage the compose-hash and device allowlists that dstack's KMS consults, or check a boot.
    AppAuth(cmd::app_auth::Args),
    /// List the on-chain peer records, and whether each one's proof verifies off-chain.
    Peers(cmd::peers::Args),
    /// Send ETH to an address, e.g. an agent's node address so it can pay for its own registration.
    Fund(cmd::fund::Args),
    /// Submit a signed registration that an agent printed (a file, or - for stdin).
    Relay(cmd::relay::Args),
    /// Show the leader and the votes, elect, vote and withdraw a vote, or hand the lead to another seat.
    Leader(cmd::leader::Args),
    /// Drain a seat for maintenance (or --undo): its node hands its term off if it leads (leader ports then
    /// reach the successor, and the SDKs' follow_leader demotes it and promotes the successor), no leader is
    /// handed to or elected from it while another seat can lead, and replica ports leave it out; every node's
    /// API and the SDKs show it `draining`. Its tunnel and its leader port stay up; it stays drained until
    /// undone, across restarts.
    Drain(cmd::drain::Args),
    /// Who may reach whom: tags on seats and apps, grants between tags, and which rule decides a flow.
    Policy(cmd::policy::Args),
    /// Dispute, from one of your seats, another seat's binding whose quote does not show what it claims
    /// (another instance or node): f + 1 disputes release it and free the instance it claims.
    Dispute(cmd::dispute::Args),
    /// As the cluster's owner, let a seat claim an instance again after disputes released that claim
    /// (`ClusterClaimDisputed`): for a genuine node whose evidence looked forged, once you have checked it.
    ClearClaim(cmd::dispute::ClearArgs),
}

/// The older names of meshctl's environment variables, still read (see `cli_env`).
const ENV_ALIASES: &[Alias] = &[
    Alias::new("DSTACK_MESH_CONTRACT", "CLUSTER_CONTRACT"),
    Alias::new("DSTACK_MESH_RPC_URL", "RPC_URL"),
    Alias::new(cluster::PRIVATE_KEY_ENV, "PRIVATE_KEY"),
    Alias::new("DSTACK_MESH_PRIVATE_KEY_FILE", "PRIVATE_KEY_FILE"),
    Alias::new("DSTACK_MESH_KMS_ROOT", "KMS_ROOT"),
    Alias::new("DSTACK_MESH_APP_IDS", "APP_IDS"),
    Alias::new("DSTACK_MESH_PREFIX", "MESH_CIDR"),
    Alias::new("DSTACK_MESH_MAX_NODES", "MAX_NODES"),
    Alias::new("DSTACK_MESH_CLUSTER_OWNER", "CLUSTER_OWNER"),
    Alias::new("DSTACK_MESH_API_SOCKET", "P2P_AGENT_API_SOCKET"),
];

/// Runs meshctl with the command line and environment; `version` is what `--version` prints.
///
/// # Safety
/// It changes the environment (the older variable names): call it first in `main`, before any other thread.
#[allow(unsafe_code)]
pub unsafe fn main(version: &'static str) -> ExitCode {
    // SAFETY: passed on to the caller.
    let cli: Cli = unsafe { cli_env::parse_versioned(ENV_ALIASES, version) };
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let out = output::Output::new(cli.json);
    let result = match cli.command {
        Command::Status(a) => cmd::status::run(a, &out).await,
        Command::Deploy(a) => cmd::deploy::run(a, &out).await,
        Command::Mint(a) => cmd::seat::mint(a, &out).await,
        Command::Bind(a) => cmd::seat::bind(a, &out).await,
        Command::Requests(a) => cmd::requests::run(a, &out).await,
        Command::Owner(a) => cmd::owner::run(a, &out).await,
        Command::Revoke(a) => cmd::seat::revoke(a, &out).await,
        Command::Deactivate(a) => cmd::seat::set_active(a, false, &out).await,
        Command::Activate(a) => cmd::seat::set_active(a, true, &out).await,
        Command::ResetSeatApp(a) => cmd::seat::reset_seat_app(a, &out).await,
        Command::Config(a) => cmd::config::run(a, &out).await,
        Command::AppAuth(a) => cmd::app_auth::run(a, &out).await,
        Command::Peers(a) => cmd::peers::run(a, &out).await,
        Command::Fund(a) => cmd::fund::run(a, &out).await,
        Command::Relay(a) => cmd::relay::run(a, &out).await,
        Command::Leader(a) => cmd::leader::run(a, &out).await,
        Command::Drain(a) => cmd::drain::run(a, &out).await,
        Command::Policy(a) => cmd::policy::run(a, &out).await,
        Command::Dispute(a) => cmd::dispute::run(a, &out).await,
        Command::ClearClaim(a) => cmd::dispute::clear(a, &out).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            out.error(&e);
            ExitCode::FAILURE
        }
    }
}
