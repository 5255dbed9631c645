//! `p2p-agent wait`: blocks until this node is a working member, for docker-compose's
//! `depends_on: service_completed_successfully`.

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The agent's API socket.
    #[arg(long, env = "DSTACK_MESH_API_SOCKET", default_value = mesh_api::DEFAULT_SOCKET)]
    pub api_socket: std::path::PathBuf,
    /// Give up after this many seconds.
    #[arg(long, env = "DSTACK_MESH_WAIT_TIMEOUT_SECS", default_value_t = 120)]
    pub timeout_secs: u64,
}

/// Polls the API until the node is ready or the timeout passes.
///
/// # Errors
/// None: not being ready in time is the failure exit code.
pub async fn run(args: WaitArgs) -> anyhow::Result<ExitCode> {
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
