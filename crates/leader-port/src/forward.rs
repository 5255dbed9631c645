//! A forwarded port's I/O: it accepts on its listeners, routes each connection by the [`gate`], and copies
//! bytes both ways until either side closes or the route stops holding, which it checks at every change of
//! the view and every [`RECHECK`] (a lease runs out without any change being published).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mesh_api::{ForwardCounts, ForwardedPort, PortRole, RouteCounts};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::gate::{self, Ports, Refusal, Route, View};

/// How often an open connection checks that its route still holds, besides at each change of the view.
pub const RECHECK: Duration = Duration::from_millis(200);

/// How long a connection to the service may take before the client's connection is closed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The terms a leader port's status keeps, newest first; older ones stay in the total.
pub const TERMS_KEPT: usize = 16;

/// Each direction's copy buffer: big enough that a bulk transfer is not cut into small writes.
const BUFFER: usize = 64 * 1024;

/// One forwarded port: what it does and where it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub role: PortRole,
    /// The port clients connect to.
    pub listen: u16,
    pub ports: Ports,
}

/// The counters of a running port, shared with whoever reports them. They decide nothing: what routes a
/// connection is [`Load`], which the routing task alone holds.
#[derive(Debug, Clone)]
pub struct Stats(Arc<Mutex<Counters>>);

#[derive(Debug)]
struct Counters {
    report: ForwardedPort,
    /// Per route: the term's (leader) or the seat's (replica).
    routes: BTreeMap<(Option<u64>, u64), ForwardCounts>,
}

/// What a replica port spreads its connections by: how many are open to each seat, and a turn that breaks
/// ties. [`forward`] holds it; each connection's task hands its route back when it ends.
#[derive(Debug, Default)]
struct Load {
    open_by_seat: BTreeMap<u64, u64>,
    turn: u64,
}

impl Load {
    /// The route for a connection arriving now.
    fn route(&mut self, port: &Port, view: &View) -> Result<Route, Refusal> {
        self.turn = self.turn.wrapping_add(1);
        gate::route(port.role, view, &port.ports, &self.open_by_seat, self.turn)
    }

    fn opened(&mut self, route: Route) {
        *self.open_by_seat.entry(route.seat).or_default() += 1;
    }

    fn closed(&mut self, route: Route) {
        if let Some(n) = self.open_by_seat.get_mut(&route.seat) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open_by_seat.remove(&route.seat);
            }
        }
    }
}

impl Stats {
    pub fn new(port: &Port) -> Self {
        Self(Arc::new(Mutex::new(Counters {
            report: ForwardedPort {
                role: port.role,
                listen: port.listen,
                target: port.ports.port,
                bound: Vec::new(),
                open: 0,
                total: ForwardCounts::default(),
                refused: BTreeMap::new(),
                routes: Vec::new(),
            },
            routes: BTreeMap::new(),
        })))
    }

    /// The port as `/v1/status` shows it.
    pub fn snapshot(&self) -> ForwardedPort {
        let c = self.lock();
        let mut report = c.report.clone();
        report.routes = c
            .routes
            .iter()
            .rev()
            .map(|(&(term, seat), &counts)| RouteCounts { term, seat, counts })
            .collect();
        report
    }

    /// Records where the port listens now.
    pub fn set_bound(&self, bound: Vec<SocketAddr>) {
        self.lock().report.bound = bound;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, route: Route, f: impl Fn(&mut ForwardCounts)) {
        let mut c = self.lock();
        f(&mut c.report.total);
        f(c.routes.entry((route.term, route.seat)).or_default());
        // A leader port keeps its latest terms; a replica port has one route per member.
        while c.routes.len() > TERMS_KEPT {
            c.routes.pop_first();
        }
    }

    fn opened(&self, route: Route) {
        self.count(route, |t| t.opened += 1);
        self.lock().report.open += 1;
    }

    fn closed(&self) {
        let mut c = self.lock();
        c.report.open = c.report.open.saturating_sub(1);
    }

    fn refused(&self, refusal: Refusal) {
        *self
            .lock()
            .report
            .refused
            .entry(refusal.as_str().to_owned())
            .or_default() += 1;
    }
}

/// Serves `port` on `listeners` until `cancel` fires: [`accept`] on each, and [`forward`] what they accept.
pub async fn serve(
    listeners: Vec<TcpListener>,
    port: Port,
    view: watch::Receiver<View>,
    stats: Stats,
    cancel: CancellationToken,
) {
    let (tx, rx) = mpsc::channel(64);
    let mut accepting = JoinSet::new();
    for listener in listeners {
        accepting.spawn(accept(listener, tx.clone(), cancel.clone()));
    }
    drop(tx);
    forward(rx, port, view, stats, cancel).await;
}

/// Accepts connections on `listener` and hands them to `to` until `cancel` fires or `to` closes.
pub async fn accept(listener: TcpListener, to: mpsc::Sender<TcpStream>, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                if to.send(stream).await.is_err() {
                    return;
                }
            }
            // A client that reset before it was accepted, or a full file table: the next accept is tried
            // after a breath.
            Err(e) => {
                debug!(error = %e, "a forwarded port could not accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Routes each connection from `accepted` as of its arrival, and carries it while [`gate::holds`] does.
pub async fn forward(
    mut accepted: mpsc::Receiver<TcpStream>,
    port: Port,
    view: watch::Receiver<View>,
    stats: Stats,
    cancel: CancellationToken,
) {
    let mut connections = JoinSet::new();
    let mut load = Load::default();
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            Some(stream) = accepted.recv() => stream,
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Ok(route) = ended {
                    load.closed(route);
                }
                continue;
            }
            else => return,
        };
        let now = as_of_now(&view.borrow());
        match load.route(&port, &now) {
            Err(refusal) => {
                stats.refused(refusal);
                debug!(
                    port = port.listen,
                    reason = refusal.as_str(),
                    "refused a connection"
                );
                refuse(stream).await;
            }
            Ok(route) => {
                load.opened(route);
                stats.opened(route);
                connections.spawn(carry(
                    stream,
                    route,
                    port,
                    view.clone(),
                    stats.clone(),
                    cancel.clone(),
                ));
            }
        }
    }
}

fn as_of_now(view: &View) -> View {
    View {
        leader: view.leader.as_of(Instant::now()),
        ..view.clone()
    }
}

/// Closes `stream` at once: never sent to a guess.
async fn refuse(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
}

/// Carries one connection along `route` until either side closes, the route stops holding, or `cancel`;
/// then gives the route back, for [`Load`].
async fn carry(
    client: TcpStream,
    route: Route,
    port: Port,
    mut view: watch::Receiver<View>,
    stats: Stats,
    cancel: CancellationToken,
) -> Route {
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(route.to)).await {
        Ok(Ok(s)) => s,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {CONNECT_TIMEOUT:?}"),
            };
            debug!(to = %route.to, error = %why, "the service did not accept the connection");
            stats.count(route, |t| t.unreachable += 1);
            stats.closed();
            return route;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let to_service = Arc::new(AtomicU64::new(0));
    let from_service = Arc::new(AtomicU64::new(0));
    let mut client = Counted(client, Arc::clone(&to_service));
    let mut upstream = Counted(upstream, Arc::clone(&from_service));
    let flush = || {
        let (to, from) = (
            to_service.swap(0, Ordering::Relaxed),
            from_service.swap(0, Ordering::Relaxed),
        );
        if to + from > 0 {
            stats.count(route, |t| {
                t.bytes_to_service += to;
                t.bytes_from_service += from;
            });
        }
    };
    let fenced = async {
        let mut tick = tokio::time::interval(RECHECK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = view.changed() => if changed.is_err() { return },
            }
            flush();
            let now = as_of_now(&view.borrow_and_update());
            if !gate::holds(port.role, route, &now, &port.ports) {
                return;
            }
        }
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        () = fenced => {
            info!(port = port.listen, role = port.role.as_str(), term = route.term, seat = route.seat, to = %route.to, "closed a forwarded connection: its route no longer holds");
            stats.count(route, |t| t.fenced += 1);
        }
        _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER) => {}
    }
    flush();
    stats.closed();
    route
}

/// A stream that counts the bytes read from it.
struct Counted(TcpStream, Arc<AtomicU64>);

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.0).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.1.fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
