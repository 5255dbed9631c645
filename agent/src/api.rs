//! The agent's local API: HTTP/1.1 on a unix socket (default [`DEFAULT_SOCKET`], mode 0660), JSON with
//! camelCase fields, for applications inside the TEE and for `meshctl status`.
//!
//! | path | what |
//! |---|---|
//! | `GET /v1/status` | this node, the chain head and the last processed block, the backend, uptime ([`Status`]) |
//! | `GET /v1/peers` | every peer with its connection kind, handshake and transfer ([`Peer`]) |
//! | `GET /v1/peers/watch` | server-sent events: one `peers` event with the full list per peer-set change |
//! | `GET /metrics` | Prometheus text |
//!
//! The server only renders a [`Snapshot`] that the daemon publishes on a `watch` channel, so it never
//! blocks the agent and tests can serve any state they like.

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::primitives::Address;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::debug;

use crate::socket::UnixSocket;

/// Where the agent serves its API unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/p2p-agent/api.sock";

/// How the agent reaches a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionKind {
    /// Over the WireGuard tunnel, at the peer's overlay IP.
    Wireguard,
    /// Over the peer's TLS-gateway URL, because its tunnel is not healthy (or it runs in TLS mode).
    TlsGateway,
    /// Neither: the tunnel is down and the peer registered no gateway URL.
    Unreachable,
}

/// The agent's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A WireGuard interface, with the gateway URL as fallback.
    Wireguard,
    /// No interface: peers are reached through their TLS-gateway URLs.
    Tls,
}

/// One peer as applications see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub token_id: u64,
    pub instance_id: String,
    pub overlay_ip: Ipv4Addr,
    /// Base64, as `wg` prints keys; absent for a TLS-only peer.
    pub wg_public_key: Option<String>,
    pub endpoint: Option<String>,
    pub gateway_url: Option<String>,
    pub connection: ConnectionKind,
    /// What to connect to: the overlay IP over WireGuard, else the gateway URL.
    pub address: Option<String>,
    pub healthy: bool,
    /// Unix seconds of the latest handshake; absent when there has been none.
    pub latest_handshake: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// This node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub instance_id: String,
    pub app_id: Address,
    /// Absent until a seat is bound to this instance.
    pub token_id: Option<u64>,
    pub overlay_ip: Option<Ipv4Addr>,
    pub wg_public_key: Option<String>,
    pub interface: Option<String>,
    pub listen_port: Option<u16>,
    pub endpoint: Option<String>,
    pub gateway_url: Option<String>,
    /// Whether this node's record on-chain is the one it wants.
    pub registered: bool,
}

/// Where the agent is with the chain.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainStatus {
    pub contract: Address,
    pub chain_id: Option<u64>,
    pub rpc_url: String,
    pub head: Option<u64>,
    pub last_processed_block: Option<u64>,
    /// `head - lastProcessedBlock`.
    pub lag: Option<u64>,
    /// The peer set came from the on-disk cache because the RPC has not answered since start.
    pub from_cache: bool,
    pub last_error: Option<String>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: String,
    pub mode: Mode,
    /// `userspace` or `kernel`; absent in TLS mode.
    pub backend: Option<String>,
    pub node: Node,
    pub chain: ChainStatus,
    pub uptime_secs: u64,
    pub peers_configured: usize,
    pub peers_healthy: usize,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub reconciles: u64,
    pub registrations: u64,
    pub rpc_errors: u64,
    pub invalid_records: u64,
    /// JSON-RPC requests made to follow the chain (reads and log queries, not registrations).
    #[serde(default)]
    pub chain_requests: u64,
}

/// What the API serves: the daemon publishes a new one whenever something changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub status: Status,
    pub peers: Vec<Peer>,
    pub counters: Counters,
}

/// Renders the Prometheus text exposition of a snapshot.
pub fn metrics(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    let per_peer = |f: &dyn Fn(&Peer) -> u64| {
        s.peers
            .iter()
            .map(|p| (format!("{{token_id=\"{}\"}}", p.token_id), f(p)))
            .collect::<Vec<_>>()
    };
    metric(
        "dstack_mesh_peers_configured",
        "gauge",
        "Peers in the desired set.",
        one(s.peers.len() as u64),
    );
    metric(
        "dstack_mesh_peers_healthy",
        "gauge",
        "Peers with a recent WireGuard handshake.",
        one(s.peers.iter().filter(|p| p.healthy).count() as u64),
    );
    metric(
        "dstack_mesh_peer_latest_handshake_seconds",
        "gauge",
        "Unix time of each peer's latest handshake (0: never).",
        per_peer(&|p| p.latest_handshake.unwrap_or(0)),
    );
    metric(
        "dstack_mesh_peer_rx_bytes_total",
        "counter",
        "Bytes received from each peer.",
        per_peer(&|p| p.rx_bytes),
    );
    metric(
        "dstack_mesh_peer_tx_bytes_total",
        "counter",
        "Bytes sent to each peer.",
        per_peer(&|p| p.tx_bytes),
    );
    metric(
        "dstack_mesh_reconciles_total",
        "counter",
        "Reconciles that changed the device.",
        one(s.counters.reconciles),
    );
    metric(
        "dstack_mesh_registrations_total",
        "counter",
        "Peer records this node registered.",
        one(s.counters.registrations),
    );
    metric(
        "dstack_mesh_rpc_errors_total",
        "counter",
        "Failed RPC requests.",
        one(s.counters.rpc_errors),
    );
    metric(
        "dstack_mesh_chain_requests_total",
        "counter",
        "JSON-RPC requests made to follow the chain.",
        one(s.counters.chain_requests),
    );
    metric(
        "dstack_mesh_invalid_records_total",
        "counter",
        "On-chain records skipped because they failed local checks.",
        one(s.counters.invalid_records),
    );
    metric(
        "dstack_mesh_chain_lag_blocks",
        "gauge",
        "Chain head minus the last processed block.",
        one(s.status.chain.lag.unwrap_or(0)),
    );
    metric(
        "dstack_mesh_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
        one(s.status.uptime_secs),
    );
    out
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

/// One `peers` server-sent event per change of the peer list, starting with the current list.
fn watch_peers(mut rx: watch::Receiver<Snapshot>) -> Response<Body> {
    let (tx, chan) = tokio::sync::mpsc::channel::<Bytes>(4);
    // Owned by the connection: it ends when the client goes away (send fails) or the agent stops
    // (the watch sender is dropped), so it needs no handle.
    tokio::spawn(async move {
        let mut last: Option<Vec<Peer>> = None;
        loop {
            let peers = rx.borrow_and_update().peers.clone();
            if last.as_ref() != Some(&peers) {
                let data = serde_json::to_string(&peers).unwrap_or_else(|_| "[]".into());
                if tx
                    .send(Bytes::from(format!("event: peers\ndata: {data}\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
                last = Some(peers);
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    let frames =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(chan), |b| {
            Ok::<_, Infallible>(Frame::data(b))
        });
    let mut r = Response::new(StreamBody::new(frames).boxed());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn handle(
    rx: watch::Receiver<Snapshot>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET {
        return Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "the agent API is read-only: use GET",
        ));
    }
    let snapshot = rx.borrow().clone();
    Ok(match req.uri().path() {
        "/v1/status" => json(&snapshot.status),
        "/v1/peers" => json(&snapshot.peers),
        "/v1/peers/watch" => watch_peers(rx),
        "/metrics" => full(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics(&snapshot),
        ),
        other => error(
            StatusCode::NOT_FOUND,
            &format!(
                "no such path {other}: try /v1/status, /v1/peers, /v1/peers/watch or /metrics"
            ),
        ),
    })
}

/// Serves the API on `socket` until `shutdown` resolves.
pub async fn serve(
    socket: UnixSocket,
    rx: watch::Receiver<Snapshot>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = socket.accept() => match accepted {
                Ok(stream) => {
                    let rx = rx.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| handle(rx.clone(), req));
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            debug!(%e, "API connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    debug!(%e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
        while connections.try_join_next().is_some() {}
    }
    // Dropping the set aborts open connections, watch streams included.
}

/// Errors reading the API as a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("no agent API at {}: is p2p-agent running, and is this its --api-socket?", path.display())]
    NoSocket { path: PathBuf },
    #[error("cannot reach the agent API at {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent API at {} did not answer {what} in time", path.display())]
    Timeout { path: PathBuf, what: String },
    #[error("the agent API answered {what} with {status}: {message}")]
    Http {
        what: String,
        status: StatusCode,
        message: String,
    },
    #[error("the agent API's reply to {what} is not what this version expects: {detail}")]
    Malformed { what: String, detail: String },
}

/// `GET path` on the agent API at `socket`, decoded as `T`.
///
/// # Errors
/// [`ClientError`]: no socket, a refused connection, a timeout, an HTTP error or a malformed reply.
pub async fn get<T: serde::de::DeserializeOwned>(
    socket: &Path,
    path: &str,
) -> Result<T, ClientError> {
    let body = get_bytes(socket, path).await?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Malformed {
        what: format!("GET {path}"),
        detail: e.to_string(),
    })
}

/// `GET path` on the agent API at `socket`, as text (for `/metrics`).
///
/// # Errors
/// As [`get`], and a body that is not UTF-8.
pub async fn get_text(socket: &Path, path: &str) -> Result<String, ClientError> {
    let body = get_bytes(socket, path).await?;
    String::from_utf8(body.to_vec()).map_err(|e| ClientError::Malformed {
        what: format!("GET {path}"),
        detail: e.to_string(),
    })
}

async fn get_bytes(socket: &Path, path: &str) -> Result<Bytes, ClientError> {
    let what = format!("GET {path}");
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    ClientError::NoSocket {
                        path: socket.to_owned(),
                    }
                } else {
                    ClientError::Connect {
                        path: socket.to_owned(),
                        source,
                    }
                }
            })?;
        let malformed = |detail: String| ClientError::Malformed {
            what: what.clone(),
            detail,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| malformed(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get(path)
            .header(hyper::header::HOST, "p2p-agent")
            .body(Full::new(Bytes::new()))
            .map_err(|e| malformed(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| malformed(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| malformed(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Http {
                what: what.clone(),
                status,
                message,
            });
        }
        Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| ClientError::Timeout {
            path: socket.to_owned(),
            what: what.clone(),
        })?
}
