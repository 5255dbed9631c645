//! The relay for a WireGuard the agent only configures (the kernel's, or `wireguard-go`): as wstunnel does,
//! each relay stream gets a local UDP socket, its *bridge*, that forwards between the stream and
//! WireGuard's listen port on loopback. A relayed peer's endpoint is the bridge of our stream to its relay;
//! a stream a peer opened to us gets a bridge too, and WireGuard's roaming points the peer at it once a
//! datagram from it authenticates. WireGuard's encryption runs inside, so the bridge sees only ciphertext.
//!
//! Which path each peer takes is decided by [`TrialState`] from what the WireGuard reports.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use mesh_relay::{Dialer, Inbound, Link, RelayTarget};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use mesh_path::path::{Observed, Step, TrialState};
use mesh_path::redial::Redial;

use crate::task::Task;
use wg_key::Key;

/// Relayed datagrams waiting for a bridge.
const INBOUND: usize = 1024;

/// One stream's bridge.
struct Bridge {
    link: Link,
    local: SocketAddr,
    sock: Arc<UdpSocket>,
    _task: Task,
}

/// A peer's relay as the shim keeps it.
pub(crate) struct ShimPeer {
    pub(crate) relay: RelayTarget,
    /// Where the peer is reached directly (its record's endpoint).
    pub(crate) direct: Option<SocketAddr>,
    /// Our stream to its relay, by link id.
    dialled: Option<u64>,
    dial: Redial,
    pub(crate) state: TrialState,
}

/// The bridges and each relayed peer's state.
pub(crate) struct Shim {
    wg: SocketAddr,
    dialer: Dialer,
    inbound: mpsc::Sender<Inbound>,
    bridges: Mutex<HashMap<u64, Bridge>>,
    pub(crate) peers: Mutex<HashMap<Key, ShimPeer>>,
    /// Dials under way; they stop with the shim.
    dials: Mutex<JoinSet<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shim {
    /// A shim in front of the WireGuard listening on `listen_port`, and the task that takes datagrams
    /// from every stream (ours and those the endpoint accepts: see [`Shim::inbound`]).
    pub(crate) fn start(listen_port: u16, dialer: Dialer) -> (Arc<Self>, Task) {
        let (inbound, mut rx) = mpsc::channel(INBOUND);
        let shim = Arc::new(Self {
            wg: SocketAddr::from((Ipv4Addr::LOCALHOST, listen_port)),
            dialer,
            inbound,
            bridges: Mutex::default(),
            peers: Mutex::default(),
            dials: Mutex::default(),
        });
        let me = Arc::clone(&shim);
        let task = Task::spawn("relay-bridges", tracing::info_span!("shim"), async move {
            while let Some(Inbound { link, datagram }) = rx.recv().await {
                match me.bridge(&link).await {
                    Ok(sock) => {
                        if let Err(e) = sock.send_to(&datagram, me.wg).await {
                            tracing::debug!(error = %e, "bridge could not hand a datagram to WireGuard");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot open a relay bridge"),
                }
            }
            Ok(())
        });
        (shim, task)
    }

    /// Where the relay endpoint hands the datagrams it accepts.
    pub(crate) fn inbound(&self) -> mpsc::Sender<Inbound> {
        self.inbound.clone()
    }

    /// The bridge of `link`, opened on first use.
    async fn bridge(self: &Arc<Self>, link: &Link) -> std::io::Result<Arc<UdpSocket>> {
        if let Some(b) = lock(&self.bridges).get(&link.id()) {
            return Ok(Arc::clone(&b.sock));
        }
        let sock = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?);
        let local = sock.local_addr()?;
        let (reader, out, wg) = (Arc::clone(&sock), link.clone(), self.wg);
        // Only WireGuard's own datagrams go onto the stream: nothing else on loopback can use the bridge.
        let task =
            Task::spawn(
                "relay-bridge",
                tracing::debug_span!("bridge", link = link.id(), %local),
                async move {
                    let mut buf = vec![0u8; mesh_relay::frame::MAX_DATAGRAM];
                    loop {
                        let (n, from) = reader.recv_from(&mut buf).await.map_err(|source| {
                            crate::Error::Relay {
                                what: "bridge receive",
                                source,
                            }
                        })?;
                        if from == wg {
                            out.send(&buf[..n]);
                        }
                    }
                },
            );
        tracing::debug!(link = link.id(), %local, "relay bridge open");
        lock(&self.bridges).insert(
            link.id(),
            Bridge {
                link: link.clone(),
                local,
                sock: Arc::clone(&sock),
                _task: task,
            },
        );
        Ok(sock)
    }

    /// Whether `addr` is one of our bridges.
    pub(crate) fn is_bridge(&self, addr: Option<SocketAddr>) -> bool {
        addr.is_some_and(|a| lock(&self.bridges).values().any(|b| b.local == a))
    }

    /// Sets (or clears) a peer's relay and direct endpoint.
    pub(crate) fn set_peer(
        &self,
        key: Key,
        relay: Option<RelayTarget>,
        direct: Option<SocketAddr>,
    ) {
        let mut peers = lock(&self.peers);
        match relay {
            None => {
                peers.remove(&key);
            }
            Some(relay) => {
                let p = peers.entry(key).or_insert_with(|| ShimPeer {
                    relay: relay.clone(),
                    direct,
                    dialled: None,
                    dial: Redial::default(),
                    state: TrialState::new(Instant::now()),
                });
                if p.relay != relay {
                    p.relay = relay;
                    p.dialled = None;
                }
                if direct.is_some() {
                    p.direct = direct;
                }
            }
        }
    }

    /// The bridge address of our live stream to `key`'s relay.
    fn dialled_bridge(&self, key: &Key) -> Option<SocketAddr> {
        let id = lock(&self.peers).get(key)?.dialled?;
        lock(&self.bridges)
            .get(&id)
            .filter(|b| !b.link.is_closed())
            .map(|b| b.local)
    }

    /// One decision for `key`, from what its WireGuard reports.
    pub(crate) fn step(
        self: &Arc<Self>,
        key: &Key,
        endpoint: Option<SocketAddr>,
        handshake_fresh: bool,
        silent: bool,
        rx_bytes: u64,
    ) -> Action {
        let bridge = self.dialled_bridge(key);
        let on_bridge = self.is_bridge(endpoint);
        let now = Instant::now();
        let mut peers = lock(&self.peers);
        let Some(p) = peers.get_mut(key) else {
            return Action::None;
        };
        let observed = Observed {
            now,
            on_bridge,
            handshake_fresh,
            silent,
            rx_bytes,
            relay_ready: bridge.is_some(),
            relay_available: true,
            direct_known: p.direct.is_some(),
        };
        match p.state.step(&observed) {
            Step::Stay => Action::None,
            Step::Dial => {
                if !p.dial.start(now) {
                    return Action::None;
                }
                let target = p.relay.clone();
                drop(peers);
                self.dial(*key, target);
                Action::None
            }
            Step::ToRelay => bridge.map_or(Action::None, |b| {
                tracing::info!(peer = ?key, relay = %p.relay, "path: relay");
                Action::SetEndpoint(b)
            }),
            Step::TryDirect => p.direct.map_or(Action::None, |d| {
                tracing::debug!(peer = ?key, direct = %d, "trying the direct path");
                Action::TryDirect(d)
            }),
        }
    }

    /// Dials `target` for `key` in the background. The dial holds the shim weakly: the shim owns it, and
    /// a shim that is dropped meanwhile aborts it rather than being kept alive by it.
    fn dial(self: &Arc<Self>, key: Key, target: RelayTarget) {
        let (me, dialer, inbound) = (Arc::downgrade(self), self.dialer.clone(), self.inbound());
        let mut dials = lock(&self.dials);
        while dials.try_join_next().is_some() {}
        dials.spawn(
            async move {
                let result = dialer.dial(&target, inbound).await;
                let Some(me) = me.upgrade() else { return };
                let link = match result {
                    Ok(link) => match me.bridge(&link).await {
                        Ok(_) => Some(link),
                        Err(e) => {
                            tracing::warn!(peer = ?key, error = %e, "cannot open a relay bridge");
                            None
                        }
                    },
                    Err(e) => {
                        tracing::warn!(peer = ?key, relay = %target, error = %e, "could not reach the peer's relay");
                        None
                    }
                };
                let mut peers = lock(&me.peers);
                let Some(p) = peers.get_mut(&key) else { return };
                match link {
                    Some(link) if p.relay == target => {
                        tracing::info!(peer = ?key, relay = %target, link = link.id(), "relay stream up");
                        p.dialled = Some(link.id());
                        p.dial.finished(true, Instant::now());
                    }
                    Some(_) => p.dial.abandoned(),
                    None => {
                        p.dial.finished(false, Instant::now());
                    }
                }
            }
            .in_current_span(),
        );
    }

    /// Closes bridges whose stream has ended.
    pub(crate) fn sweep(&self) {
        lock(&self.bridges).retain(|_, b| !b.link.is_closed());
    }

    /// The direct endpoint of a relayed peer, to report instead of its bridge.
    pub(crate) fn direct_of(&self, key: &Key) -> Option<SocketAddr> {
        lock(&self.peers).get(key).and_then(|p| p.direct)
    }

    pub(crate) fn relay_of(&self, key: &Key) -> Option<RelayTarget> {
        lock(&self.peers).get(key).map(|p| p.relay.clone())
    }
}

/// What the device should do to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    None,
    SetEndpoint(SocketAddr),
    /// Set this endpoint and send a keepalive to it.
    TryDirect(SocketAddr),
}
