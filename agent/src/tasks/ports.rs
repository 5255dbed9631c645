//! The forwarded ports (`--leader-port`, `--replica-port`): each listens on `127.0.0.1` from the start, and on
//! this node's overlay address once the interface has it, and forwards as [`leader_port`] decides from what
//! the API serves. It reads the published snapshot, as applications do, so that the port never routes by a
//! leader the API would not show.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use leader_port::{Port, Ports, Stats, View};
use mesh_api::{PortRole, Snapshot};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use crate::config::{Forward, RunArgs};

/// How often binding the overlay address is tried again while the interface does not have it yet.
const REBIND: Duration = Duration::from_secs(1);

/// The ports the flags name, and their counters (which the publisher reports).
pub struct ForwardedPorts {
    ports: Vec<Port>,
    pub stats: Vec<Stats>,
}

impl ForwardedPorts {
    pub fn from_args(args: &RunArgs) -> Self {
        let port = |role, f: &Forward| Port {
            role,
            listen: f.listen,
            ports: Ports {
                port: f.target,
                local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), f.target),
            },
        };
        let ports: Vec<Port> = args
            .leader_ports
            .iter()
            .map(|f| port(PortRole::Leader, f))
            .chain(
                args.replica_ports
                    .iter()
                    .map(|f| port(PortRole::Replica, f)),
            )
            .collect();
        let stats = ports.iter().map(Stats::new).collect();
        Self { ports, stats }
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// Serves every port until `cancel` fires.
    ///
    /// # Errors
    /// A loopback port that cannot be bound (taken by another process): the operator must choose another.
    pub async fn run(
        self,
        mut snapshot: watch::Receiver<Snapshot>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let (view_tx, view_rx) = watch::channel(View::of(&snapshot.borrow_and_update()));
        let mut tasks = JoinSet::new();
        let mut senders = Vec::new();
        for (port, stats) in self.ports.iter().zip(&self.stats) {
            let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port.listen);
            let listener = TcpListener::bind(loopback).await.with_context(|| {
                format!(
                    "binding {loopback} (--{}-port {}): another process listens there; choose another port",
                    port.role.as_str(),
                    port.listen
                )
            })?;
            info!(
                port = port.listen,
                target = port.ports.port,
                role = port.role.as_str(),
                "forwarding {loopback} to the {}'s service",
                port.role.as_str()
            );
            stats.set_bound(vec![loopback]);
            let (tx, rx) = mpsc::channel(64);
            tasks
                .spawn(leader_port::accept(listener, tx.clone(), cancel.clone()).in_current_span());
            tasks.spawn(
                leader_port::forward(rx, *port, view_rx.clone(), stats.clone(), cancel.clone())
                    .in_current_span(),
            );
            senders.push(tx);
        }
        // The overlay address's listeners, which go when the address does.
        let mut overlay: Option<(Ipv4Addr, CancellationToken)> = None;
        let mut retry = tokio::time::interval(REBIND);
        loop {
            let own = snapshot.borrow().status.node.overlay_ip;
            if overlay.as_ref().map(|(ip, _)| *ip) != own {
                if let Some((ip, stop)) = overlay.take() {
                    info!(%ip, "this node's overlay address went; the forwarded ports stop listening on it");
                    stop.cancel();
                    for (port, stats) in self.ports.iter().zip(&self.stats) {
                        stats.set_bound(vec![SocketAddr::new(
                            IpAddr::V4(Ipv4Addr::LOCALHOST),
                            port.listen,
                        )]);
                    }
                }
                if let Some(ip) = own {
                    overlay = self.bind_overlay(ip, &senders, &mut tasks, &cancel).await;
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = snapshot.changed() => if changed.is_err() { break },
                _ = retry.tick() => {}
            }
            let view = View::of(&snapshot.borrow_and_update());
            view_tx.send_if_modified(|v| {
                let changed = *v != view;
                *v = view;
                changed
            });
        }
        drop(senders);
        tasks.join_all().await;
        Ok(())
    }

    /// Listens on `ip` for every port, once the interface has the address; `None` while it does not (tried
    /// again at the next change or [`REBIND`]).
    async fn bind_overlay(
        &self,
        ip: Ipv4Addr,
        senders: &[mpsc::Sender<TcpStream>],
        tasks: &mut JoinSet<()>,
        cancel: &CancellationToken,
    ) -> Option<(Ipv4Addr, CancellationToken)> {
        let mut listeners = Vec::new();
        for port in &self.ports {
            let addr = SocketAddr::new(IpAddr::V4(ip), port.listen);
            match TcpListener::bind(addr).await {
                Ok(l) => listeners.push(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    debug!(%addr, "the interface does not have this node's overlay address yet");
                    return None;
                }
                Err(e) => {
                    warn!(%addr, error = %e, "cannot listen on the overlay address; the port is served on 127.0.0.1 only until this is fixed");
                    return None;
                }
            }
        }
        let stop = cancel.child_token();
        for ((listener, tx), (port, stats)) in listeners
            .into_iter()
            .zip(senders)
            .zip(self.ports.iter().zip(&self.stats))
        {
            let addr = SocketAddr::new(IpAddr::V4(ip), port.listen);
            info!(%addr, role = port.role.as_str(), "the forwarded port listens on the overlay address");
            stats.set_bound(vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port.listen),
                addr,
            ]);
            tasks.spawn(leader_port::accept(listener, tx.clone(), stop.clone()).in_current_span());
        }
        Some((ip, stop))
    }
}
