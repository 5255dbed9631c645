//! `meshctl`: the operator CLI of a dstack-mesh cluster.
//!
//! Layout:
//! - `cluster`: connecting to the chain and the contract, signing, sending and reporting transactions;
//! - `output`: what a command prints, as text or as `--json`;
//! - `cmd/*`: one module per subcommand.

mod cluster;
mod cmd;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Operate a dstack-mesh cluster: node status, and the cluster owner's and the node operator's tools.
///
/// Every command that touches the chain takes --contract (CLUSTER_CONTRACT) and --rpc-url (RPC_URL).
/// Commands that send transactions sign with --private-key-file or the PRIVATE_KEY environment variable;
/// never put a key on the command line.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
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
    /// Bind a seat to a dstack instance id, or rebind it (clears the seat's peer record); a holder other
    /// than the owner passes the instance's consent.
    Bind(cmd::seat::BindArgs),
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
    /// Manage the compose-hash and device allowlists that dstack's KMS consults, or check a boot.
    AppAuth(cmd::app_auth::Args),
    /// List the on-chain peer records, and whether each one's proof verifies off-chain.
    Peers(cmd::peers::Args),
    /// Send ETH to an address, e.g. an agent's derived address so it can pay for its own registration.
    Fund(cmd::fund::Args),
    /// Submit a signed registration that an agent printed (a file, or - for stdin).
    Relay(cmd::relay::Args),
    /// Show the leader and the votes, or elect, vote and withdraw a vote.
    Leader(cmd::leader::Args),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = output::Output::new(cli.json);
    let result = match cli.command {
        Command::Status(a) => cmd::status::run(a, &out).await,
        Command::Deploy(a) => cmd::deploy::run(a, &out).await,
        Command::Mint(a) => cmd::seat::mint(a, &out).await,
        Command::Bind(a) => cmd::seat::bind(a, &out).await,
        Command::Revoke(a) => cmd::seat::revoke(a, &out).await,
        Command::Deactivate(a) => cmd::seat::deactivate(a, &out).await,
        Command::Activate(a) => cmd::seat::activate(a, &out).await,
        Command::ResetSeatApp(a) => cmd::seat::reset_seat_app(a, &out).await,
        Command::Config(a) => cmd::config::run(a, &out).await,
        Command::AppAuth(a) => cmd::app_auth::run(a, &out).await,
        Command::Peers(a) => cmd::peers::run(a, &out).await,
        Command::Fund(a) => cmd::fund::run(a, &out).await,
        Command::Relay(a) => cmd::relay::run(a, &out).await,
        Command::Leader(a) => cmd::leader::run(a, &out).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            out.error(&e);
            ExitCode::FAILURE
        }
    }
}
