//! The leader port's I/O: it accepts on its listeners, routes each connection by the [`gate`], and copies
//! bytes both ways until either side closes or the route stops holding, which it checks at every change of
//! the leader and every [`RECHECK`] (a lease runs out without any change being published).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mesh_api::Leader;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::gate::{self, Ports, Refusal, Route};

/// How often an open connection checks that its route still holds, besides at each change of the leader.
pub const RECHECK: Duration = Duration::from_millis(200);

/// How long a connection to the leader's service may take before the client's connection is closed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What happened to the connections of one term.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TermStats {
    /// Connections forwarded under the term.
    pub opened: u64,
    /// Of those, the ones closed by the fence: the term, the lease or this node's role changed.
    pub fenced: u64,
    /// Of those, the ones whose leader's service did not accept them.
    pub unreachable: u64,
    /// Bytes from clients to the service, and back, of connections that ended.
    pub bytes_to_leader: u64,
    pub bytes_from_leader: u64,
}

/// The port's counters, shared with whoever reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortStats {
    pub by_term: BTreeMap<u64, TermStats>,
    pub refused: BTreeMap<&'static str, u64>,
    /// Connections open now.
    pub open: u64,
}

/// The counters of a running port.
#[derive(Debug, Clone, Default)]
pub struct Stats(Arc<Mutex<PortStats>>);

impl Stats {
    pub fn snapshot(&self) -> PortStats {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PortStats> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn term(&self, term: u64, f: impl FnOnce(&mut TermStats)) {
        f(self.lock().by_term.entry(term).or_default());
    }
}

/// Serves the leader port on `listeners` until `cancel` fires: each connection goes where [`gate::route`]
/// says as of its arrival, and ends when [`gate::holds`] no longer does.
pub async fn serve(
    listeners: Vec<TcpListener>,
    ports: Ports,
    leader: watch::Receiver<Leader>,
    stats: Stats,
    cancel: CancellationToken,
) {
    let mut accepting = JoinSet::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<TcpStream>(64);
    for listener in listeners {
        let tx = tx.clone();
        let cancel = cancel.clone();
        accepting.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = cancel.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, _)) => {
                        if tx.send(stream).await.is_err() {
                            return;
                        }
                    }
                    // A client that reset before it was accepted, or a full file table: the next accept
                    // is tried after a breath.
                    Err(e) => {
                        debug!(error = %e, "the leader port could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    drop(tx);
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            Some(stream) = rx.recv() => stream,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            else => return,
        };
        let now = leader.borrow().as_of(Instant::now());
        match gate::route(&now, &ports) {
            Err(refusal) => refuse(stream, refusal, &stats).await,
            Ok(route) => {
                stats.term(route.term, |t| t.opened += 1);
                stats.lock().open += 1;
                connections.spawn(carry(
                    stream,
                    route,
                    ports,
                    leader.clone(),
                    stats.clone(),
                    cancel.clone(),
                ));
            }
        }
    }
}

/// Closes `stream` at once: never sent to a guess.
async fn refuse(mut stream: TcpStream, refusal: Refusal, stats: &Stats) {
    *stats.lock().refused.entry(refusal.as_str()).or_default() += 1;
    debug!(
        reason = refusal.as_str(),
        "refused a leader-port connection"
    );
    let _ = stream.shutdown().await;
}

/// Carries one connection along `route` until either side closes, the route stops holding, or `cancel`.
async fn carry(
    mut client: TcpStream,
    route: Route,
    ports: Ports,
    mut leader: watch::Receiver<Leader>,
    stats: Stats,
    cancel: CancellationToken,
) {
    let mut upstream =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(route.to)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(to = %route.to, error = %e, "the leader's service refused the connection");
                stats.term(route.term, |t| t.unreachable += 1);
                stats.lock().open -= 1;
                return;
            }
            Err(_) => {
                debug!(to = %route.to, "the leader's service did not answer in time");
                stats.term(route.term, |t| t.unreachable += 1);
                stats.lock().open -= 1;
                return;
            }
        };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let fenced = async {
        let mut tick = tokio::time::interval(RECHECK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = leader.changed() => if changed.is_err() { return },
            }
            let now = leader.borrow_and_update().as_of(Instant::now());
            if !gate::holds(route, &now, &ports) {
                return;
            }
        }
    };
    let copied = tokio::select! {
        () = cancel.cancelled() => None,
        () = fenced => {
            info!(term = route.term, to = %route.to, "closed a leader-port connection: the leader changed, or its lease ran out");
            stats.term(route.term, |t| t.fenced += 1);
            None
        }
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => copied.ok(),
    };
    if let Some((to, from)) = copied {
        stats.term(route.term, |t| {
            t.bytes_to_leader += to;
            t.bytes_from_leader += from;
        });
    }
    stats.lock().open -= 1;
}
