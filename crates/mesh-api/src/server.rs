//! The API server: it only renders the [`Snapshot`] that the agent publishes on a `watch` channel, so it
//! never blocks the agent, and tests can serve any state they like. One server serves a unix socket or a
//! TCP address ([`Listener`]), the whole API or the metrics alone ([`Routes`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue, RETRY_AFTER,
    X_CONTENT_TYPE_OPTIONS,
};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::debug;
use unix_socket::UnixSocket;

use crate::health::assess;
use crate::metrics::metrics;
use crate::signal::{AppReport, HealthSignal};
use crate::types::Snapshot;

/// The largest `POST /v1/health` body read.
const MAX_BODY: usize = 4096;

/// Event streams (`/v1/events`, `/v1/peers/watch`) one listener serves at once; one more is answered 503.
/// Each holds a connection and a buffer for as long as the client stays, so a client that opens them
/// without end (a bug, or a stranger on `--api-listen`) must not take the agent's memory and descriptors.
/// Each listener has a bound of its own: a flood on `--api-listen` leaves the socket's applications their
/// streams.
pub const MAX_STREAMS: usize = 64;

/// What a server serves: the snapshot the agent publishes, and where the application's health reports
/// go (none: `POST /v1/health` is refused, and `/v1/health` shows no report).
#[derive(Debug, Clone)]
pub struct Source {
    pub snapshot: watch::Receiver<Snapshot>,
    pub app_health: Option<watch::Sender<Option<AppReport>>>,
    /// Where `POST /v1/leader/handoff` and `POST /v1/drain` go (none: they are refused).
    pub commands: Option<mpsc::Sender<Command>>,
    /// Told of every read of the API but `/metrics`, and of each event stream while it is open: whether
    /// an application watches the peers' health ([`crate::Readers`]).
    pub readers: Option<Arc<crate::Readers>>,
}

impl From<watch::Receiver<Snapshot>> for Source {
    fn from(snapshot: watch::Receiver<Snapshot>) -> Self {
        Self {
            snapshot,
            app_health: None,
            commands: None,
            readers: None,
        }
    }
}

/// What an application on this node asks the agent to do, and where the answer goes: what was done, or why
/// it cannot be.
#[derive(Debug)]
pub enum Command {
    /// `POST /v1/leader/handoff`: this node, leading, gives its term to seat `to` or the best-placed one.
    HandOff {
        to: Option<u64>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// `POST /v1/drain`: this node is drained (or no longer): it hands off if it leads, and replica ports
    /// leave it out.
    Drain {
        on: bool,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// The agent's own, on SIGTERM: drain, and answer once this node can stop without costing a failover.
    Stop { reply: oneshot::Sender<()> },
}

/// The body of `POST /v1/leader/handoff`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HandOffBody {
    to: Option<u64>,
}

/// The body of `POST /v1/drain`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    #[serde(default = "on")]
    drain: bool,
}

fn on() -> bool {
    true
}

/// Who is on the other end of a connection: on the socket or loopback, a process of this CVM, which may
/// report the application's health; elsewhere, anyone, who may only read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Local,
    Remote,
}
/// Where a server accepts connections.
#[derive(Debug)]
pub enum Listener {
    /// The API socket, whose file permissions say who may connect.
    Unix(UnixSocket),
    /// A TCP address: loopback for applications that share the agent's network namespace, or any
    /// address for a metrics scraper outside it.
    Tcp(TcpListener),
}

impl From<UnixSocket> for Listener {
    fn from(socket: UnixSocket) -> Self {
        Self::Unix(socket)
    }
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Self::Tcp(listener)
    }
}

/// What a server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// The whole API: status, peers, the watch stream, health and metrics.
    Api,
    /// `/metrics` alone, for `--metrics-listen`.
    Metrics,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => full(StatusCode::OK, "application/json", body),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the reply: {e}"),
        ),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    full(status, "application/json", body)
}

/// What a server-sent-event stream sends, rendered from a snapshot: each event's name, what decides whether
/// it changed, and its data.
type Events = fn(&Snapshot) -> Vec<(&'static str, String, String)>;

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// Every change of the list, counters and handshake times included: `/v1/peers/watch` as it always was.
fn peers_event(snapshot: &Snapshot) -> Vec<(&'static str, String, String)> {
    let data = to_json(&snapshot.peers);
    vec![("peers", data.clone(), data)]
}

/// What applications act on: the peer list as [`crate::Peer::change_key`] defines a change of it (the same
/// definition the `--on-change` hook follows), and who leads. Counters and handshake times move every
/// second and are no event here.
fn app_events(snapshot: &Snapshot) -> Vec<(&'static str, String, String)> {
    let l = &snapshot.leader;
    // The age and what is left of the lease move all the time: no event for those alone.
    vec![
        (
            "peers",
            peers_key(&snapshot.peers),
            to_json(&snapshot.peers),
        ),
        ("leader", format!("{:?}", l.key()), to_json(l)),
    ]
}

/// What decides whether `/v1/events` sends a `peers` event: the list's [`crate::Peer::change_key`]s.
fn peers_key(peers: &[crate::Peer]) -> String {
    let keys: Vec<_> = peers.iter().map(crate::Peer::change_key).collect();
    format!("{keys:?}")
}

/// Server-sent events: each kind's current value first, then one event whenever what decides a change of
/// it changes; 503 when [`MAX_STREAMS`] are open already.
///
/// No task is spawned per client: the body is a stream that hyper polls while it writes it, holding the
/// receiver and the client's slot, and dropping both when the client goes away or the agent stops (the
/// watch sender dropped).
fn watch(
    rx: watch::Receiver<Snapshot>,
    events: Events,
    slots: &Arc<Semaphore>,
    following: Option<crate::readers::Following>,
) -> Response<Body> {
    let Ok(slot) = Arc::clone(slots).try_acquire_owned() else {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "{MAX_STREAMS} event streams are open on this listener, the most it serves at once: close one, or retry later; an application that only needs the current state can GET /v1/peers and /v1/leader instead"
            ),
        );
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    let watching = Watching {
        rx,
        events,
        last: Vec::new(),
        first: true,
        _slot: slot,
        _following: following,
    };
    let frames = futures::stream::unfold(watching, |mut s| async move {
        let frame = s.next().await?;
        Some((Ok::<_, Infallible>(Frame::data(frame)), s))
    });
    let mut r = Response::new(StreamBody::new(frames).boxed());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// One client's event stream.
struct Watching {
    rx: watch::Receiver<Snapshot>,
    events: Events,
    /// What decided each kind's last event.
    last: Vec<String>,
    first: bool,
    /// Released when hyper drops the body.
    _slot: OwnedSemaphorePermit,
    /// The stream counts as reading the API while it is open.
    _following: Option<crate::readers::Following>,
}

impl Watching {
    /// The events of the next render that changed something; none once the agent has stopped.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if !std::mem::take(&mut self.first) && self.rx.changed().await.is_err() {
                return None;
            }
            let snapshot = self.rx.borrow_and_update().as_of(Instant::now());
            if !snapshot.peers_known {
                continue;
            }
            let now = (self.events)(&snapshot);
            let mut frame = String::new();
            for (i, (name, key, data)) in now.iter().enumerate() {
                if self.last.get(i) != Some(key) {
                    frame.push_str(&format!("event: {name}\ndata: {data}\n\n"));
                }
            }
            self.last = now.into_iter().map(|(_, key, _)| key).collect();
            if !frame.is_empty() {
                return Some(Bytes::from(frame));
            }
        }
    }
}

/// The read-only status page, under a policy that lets it run its own script and reach this origin alone.
fn status_page() -> Response<Body> {
    let mut r = full(
        StatusCode::OK,
        "text/html; charset=utf-8",
        crate::page::STATUS_PAGE,
    );
    if let Ok(csp) = HeaderValue::from_str(&crate::page::CONTENT_SECURITY_POLICY) {
        r.headers_mut().insert(CONTENT_SECURITY_POLICY, csp);
    }
    r.headers_mut()
        .insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// 200 when healthy, 503 with the reasons otherwise: what a compose `healthcheck` or a probe wants.
fn healthz(snapshot: &Snapshot) -> Response<Body> {
    let health = assess(&snapshot.status, &snapshot.peers);
    let mut r = json(&health);
    if !health.healthy && r.status() == StatusCode::OK {
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    r
}

async fn handle(
    source: Source,
    routes: Routes,
    peer: Peer,
    streams: Arc<Semaphore>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let now = Instant::now();
    let path = req.uri().path().to_owned();
    if routes == Routes::Api && path == "/v1/health" {
        return Ok(health(&source, peer, req, now).await);
    }
    if routes == Routes::Api
        && req.method() == Method::POST
        && matches!(path.as_str(), "/v1/leader/handoff" | "/v1/drain")
    {
        return Ok(command(&source, peer, req, &path).await);
    }
    if req.method() != Method::GET {
        return Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "the agent API is read-only but for POST /v1/health, /v1/leader/handoff and /v1/drain: use GET",
        ));
    }
    if path != "/metrics"
        && let Some(readers) = &source.readers
    {
        readers.read(now);
    }
    let following = || source.readers.as_ref().map(crate::Readers::follow);
    let rx = source.snapshot.clone();
    // Worked out as of now, not as of the last render: a node that was frozen answers from its lease as
    // it stands when it resumes.
    let snapshot = rx.borrow().as_of(now);
    Ok(match (routes, path.as_str()) {
        (_, "/metrics") => full(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics(&snapshot),
        ),
        (Routes::Api, "/v1/status") => json(&snapshot.status),
        (Routes::Api, "/v1/peers") => json(&snapshot.peers),
        (Routes::Api, "/v1/peers/watch") => watch(rx, peers_event, &streams, following()),
        (Routes::Api, "/v1/peers/refused") => json(&snapshot.refused),
        (Routes::Api, "/v1/leader") => json(&snapshot.leader),
        (Routes::Api, "/v1/events") => watch(rx, app_events, &streams, following()),
        (Routes::Api, "/healthz") => healthz(&snapshot),
        (Routes::Api, "/") => status_page(),
        (Routes::Api, other) => error(
            StatusCode::NOT_FOUND,
            &format!(
                "no such path {other}: try / (the status page), /v1/status, /v1/peers, /v1/peers/refused, /v1/leader, /v1/events, /v1/health, /v1/peers/watch, /healthz or /metrics"
            ),
        ),
        (Routes::Metrics, other) => error(
            StatusCode::NOT_FOUND,
            &format!("no such path {other}: this address serves /metrics only"),
        ),
    })
}

/// `GET /v1/health`, and `POST /v1/health` with the application's report.
async fn health(
    source: &Source,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
    now: Instant,
) -> Response<Body> {
    let signal = |source: &Source| {
        let app = source
            .app_health
            .as_ref()
            .and_then(|tx| tx.borrow().clone());
        let check = source.snapshot.borrow().check.clone();
        HealthSignal::of(app.as_ref(), check.as_ref(), now)
    };
    match *req.method() {
        Method::GET => return json(&signal(source)),
        Method::POST => {}
        _ => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "/v1/health takes GET (the node's health) or POST (the application's report)",
            );
        }
    }
    if peer == Peer::Remote {
        return error(
            StatusCode::FORBIDDEN,
            "POST /v1/health is taken on the API socket and on loopback only: a report from outside the CVM could make this node step down",
        );
    }
    let Some(tx) = &source.app_health else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server takes no health reports",
        );
    };
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    match AppReport::from_body(&body, now) {
        Ok(report) => {
            tx.send_replace(Some(report));
            json(&signal(source))
        }
        Err(why) => error(StatusCode::BAD_REQUEST, &why),
    }
}

/// A request's body, at most [`MAX_BODY`] bytes, or the 400 that says why it cannot be read.
async fn read_body(req: Request<hyper::body::Incoming>) -> Result<Bytes, Response<Body>> {
    match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the body (at most {MAX_BODY} bytes): {e}"),
        )),
    }
}

/// `POST /v1/leader/handoff` and `POST /v1/drain`: passed to the agent, whose answer is the response.
async fn command(
    source: &Source,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
    path: &str,
) -> Response<Body> {
    if peer == Peer::Remote {
        return error(
            StatusCode::FORBIDDEN,
            &format!(
                "POST {path} is taken on the API socket and on loopback only: it moves the cluster's leader"
            ),
        );
    }
    let Some(tx) = &source.commands else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server takes no commands",
        );
    };
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let parse = |example: &'static str, e: serde_json::Error| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("the body is not what {path} takes ({e}): send {example}, or nothing"),
        )
    };
    let empty = body.iter().all(u8::is_ascii_whitespace);
    let (reply, answer) = oneshot::channel();
    let cmd = if path == "/v1/drain" {
        let on = match empty {
            true => true,
            false => match serde_json::from_slice::<DrainBody>(&body) {
                Ok(b) => b.drain,
                Err(e) => return parse(r#"{"drain": true} or {"drain": false}"#, e),
            },
        };
        Command::Drain { on, reply }
    } else {
        let to = match empty {
            true => None,
            false => match serde_json::from_slice::<HandOffBody>(&body) {
                Ok(b) => b.to,
                Err(e) => return parse(r#"{"to": <seat>}"#, e),
            },
        };
        Command::HandOff { to, reply }
    };
    let stopped = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is not running its leadership yet (or is stopping): try again shortly",
        )
    };
    if tx.send(cmd).await.is_err() {
        return stopped();
    }
    match answer.await {
        Ok(Ok(done)) => json(&serde_json::json!({ "done": done })),
        Ok(Err(why)) => error(StatusCode::CONFLICT, &why),
        Err(_) => stopped(),
    }
}

/// Serves one connection in `connections`; dropping the set aborts it. `streams` holds a permit per open
/// event stream of the listener, of [`MAX_STREAMS`].
fn spawn_connection<S>(
    connections: &mut JoinSet<()>,
    stream: S,
    source: &Source,
    routes: Routes,
    streams: &Arc<Semaphore>,
    peer: Peer,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (source, streams) = (source.clone(), Arc::clone(streams));
    connections.spawn(async move {
        let service =
            service_fn(move |req| handle(source.clone(), routes, peer, Arc::clone(&streams), req));
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            debug!(%e, "API connection ended with an error");
        }
    });
}

/// Serves `routes` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: impl Into<Listener>,
    routes: Routes,
    source: impl Into<Source>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let listener = listener.into();
    let source = source.into();
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    let streams = Arc::new(Semaphore::new(MAX_STREAMS));
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &mut connections, &source, routes, &streams) => accepted,
        };
        if let Err(e) = accepted {
            debug!(%e, "API accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while connections.try_join_next().is_some() {}
    }
    // Dropping the set aborts open connections, watch streams included.
}

async fn accept(
    listener: &Listener,
    connections: &mut JoinSet<()>,
    source: &Source,
    routes: Routes,
    streams: &Arc<Semaphore>,
) -> std::io::Result<()> {
    match listener {
        Listener::Unix(socket) => {
            spawn_connection(
                connections,
                socket.accept().await?,
                source,
                routes,
                streams,
                Peer::Local,
            );
        }
        Listener::Tcp(tcp) => {
            let (stream, from) = tcp.accept().await?;
            let peer = match from.ip().is_loopback() {
                true => Peer::Local,
                false => Peer::Remote,
            };
            spawn_connection(connections, stream, source, routes, streams, peer);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::tests::peer;
    use crate::{ConnectionKind, Path, peers_changed};

    /// One sequence of changes, each applied to the list before: the `--on-change` hook (which follows
    /// [`peers_changed`]) and `/v1/events` fire on exactly the same ones, and on nothing else.
    #[test]
    fn the_hook_and_the_event_fire_on_the_same_changes() {
        let start = vec![peer(2, ConnectionKind::Wireguard, Some(10))];
        type Change = fn(&mut Vec<crate::Peer>);
        let steps: Vec<(&str, bool, Change)> = vec![
            ("a join", true, |p| {
                p.push(peer(3, ConnectionKind::Wireguard, Some(10)))
            }),
            ("counters and a handshake", false, |p| {
                p[0].rx_bytes += 1_000;
                p[0].latest_handshake = Some(20);
            }),
            ("a roam", true, |p| {
                p[1].endpoint = Some("192.0.2.9:51820".into())
            }),
            ("a path flip to the relay", true, |p| {
                p[1].path = Some(Path::Relay)
            }),
            ("a health change", true, |p| p[1].healthy = false),
            ("a leader change", true, |p| p[0].leader = true),
            ("a revocation", true, |p| {
                p.pop();
            }),
            ("nothing", false, |_| {}),
        ];
        let mut list = start;
        let mut last_key = peers_key(&list);
        for (what, expected, change) in steps {
            let before = list.clone();
            change(&mut list);
            let hook = peers_changed(&before, &list);
            let key = peers_key(&list);
            let event = key != last_key;
            last_key = key;
            assert_eq!((hook, event), (expected, expected), "{what}: (hook, event)");
        }
    }
}
