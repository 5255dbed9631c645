//! Reading the API, on the socket or on a TCP address: [`get`] for `meshctl status` and `p2p-agent wait`,
//! and [`Client`], the operations a Rust application uses (the Python SDK's, in Rust).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy_primitives::Address;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use owned_task::Task;

use crate::events::Event;
use crate::signal::HealthSignal;
use crate::{Leader, Mode, Peer, Status};

/// Where the agent's API is: its unix socket, or the TCP address it serves with `--api-listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for ApiAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "{}", path.display()),
            Self::Tcp(addr) => write!(f, "http://{addr}"),
        }
    }
}

impl From<&Path> for ApiAddr {
    fn from(path: &Path) -> Self {
        Self::Unix(path.to_owned())
    }
}

impl From<&PathBuf> for ApiAddr {
    fn from(path: &PathBuf) -> Self {
        Self::Unix(path.clone())
    }
}

impl From<SocketAddr> for ApiAddr {
    fn from(addr: SocketAddr) -> Self {
        Self::Tcp(addr)
    }
}

impl From<&ApiAddr> for ApiAddr {
    fn from(addr: &ApiAddr) -> Self {
        addr.clone()
    }
}

/// The flags of a command that reads the API: the socket, or the TCP address, which wins when given.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The agent's API socket.
    #[arg(long, env = "DSTACK_MESH_API_SOCKET", default_value = crate::DEFAULT_SOCKET)]
    pub api_socket: PathBuf,
    /// The agent's API on TCP, as its --api-listen serves it (e.g. 127.0.0.1:8000 from a container in its
    /// network namespace); used instead of the socket when given.
    #[arg(
        long = "api-listen",
        env = "DSTACK_MESH_API_LISTEN",
        value_name = "ADDR"
    )]
    pub api_listen: Option<SocketAddr>,
}

impl ApiArgs {
    /// Where to read the API.
    pub fn addr(&self) -> ApiAddr {
        match self.api_listen {
            Some(addr) => ApiAddr::Tcp(addr),
            None => ApiAddr::Unix(self.api_socket.clone()),
        }
    }
}

/// Errors reading the API as a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("no agent API at {api}: is p2p-agent running, and is this its --api-socket?")]
    NoSocket { api: ApiAddr },
    #[error(
        "cannot reach the agent API at {api}: is p2p-agent running, and is this its --api-listen?"
    )]
    Connect {
        api: ApiAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent API at {api} did not answer {what} in time")]
    Timeout { api: ApiAddr, what: String },
    #[error("the agent API answered {what} with {status}: {message}")]
    Http {
        what: String,
        status: StatusCode,
        message: String,
    },
    #[error("the agent API's reply to {what} is not what this version expects: {detail}")]
    Malformed { what: String, detail: String },
    #[error(
        "the agent at {api} serves {what} {agent}, not {wanted}: point the client at this cluster's agent, or fix the agent's DSTACK_MESH_CONTRACT / --mode"
    )]
    Mismatch {
        api: ApiAddr,
        what: &'static str,
        agent: String,
        wanted: String,
    },
    #[error("the agent cannot register this node: {reason}")]
    Registration { reason: String },
    #[error(transparent)]
    Event(#[from] crate::events::BadEvent),
}

/// The API's operations for a Rust application: what the Python SDK (`dstack_p2p`) offers, over the
/// same HTTP.
#[derive(Debug, Clone)]
pub struct Client {
    api: ApiAddr,
}

/// How long a reconnecting stream waits after its first failure, and at most.
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// How often [`Client::register`] asks.
const REGISTER_POLL: Duration = Duration::from_millis(500);

impl Client {
    /// A client of the agent at `api`; nothing is checked until it is used.
    pub fn new(api: impl Into<ApiAddr>) -> Self {
        Self { api: api.into() }
    }

    /// A client of the agent at `api`, after checking that the agent serves `contract` in `mode` (either
    /// may be left out).
    ///
    /// # Errors
    /// [`ClientError::Mismatch`] when it serves another; as [`get`] when it cannot be read.
    pub async fn connect(
        api: impl Into<ApiAddr>,
        contract: Option<Address>,
        mode: Option<Mode>,
    ) -> Result<Self, ClientError> {
        let client = Self::new(api);
        let status = client.status().await?;
        let mismatch = |what, agent: String, wanted: String| ClientError::Mismatch {
            api: client.api.clone(),
            what,
            agent,
            wanted,
        };
        if let Some(c) = contract
            && c != status.chain.contract
        {
            return Err(mismatch(
                "cluster",
                status.chain.contract.to_string(),
                c.to_string(),
            ));
        }
        if let Some(m) = mode
            && m != status.mode
        {
            return Err(mismatch(
                "mode",
                format!("{:?}", status.mode),
                format!("{m:?}"),
            ));
        }
        Ok(client)
    }

    pub fn api(&self) -> &ApiAddr {
        &self.api
    }

    /// `GET /v1/status`.
    ///
    /// # Errors
    /// As [`get`].
    pub async fn status(&self) -> Result<Status, ClientError> {
        get(&self.api, "/v1/status").await
    }

    /// `GET /v1/peers`: every peer, with its connection and counters.
    ///
    /// # Errors
    /// As [`get`].
    pub async fn peers(&self) -> Result<Vec<Peer>, ClientError> {
        get(&self.api, "/v1/peers").await
    }

    /// What to connect to for each peer that can be reached: its overlay IP while the tunnel is up, else
    /// its gateway URL.
    ///
    /// # Errors
    /// As [`get`].
    pub async fn peer_addresses(&self) -> Result<Vec<String>, ClientError> {
        Ok(addresses(&self.peers().await?))
    }

    /// `GET /v1/leader`.
    ///
    /// # Errors
    /// As [`get`].
    pub async fn leader(&self) -> Result<Leader, ClientError> {
        get(&self.api, "/v1/leader").await
    }

    /// `GET /v1/health`: whether this node is fit to lead, by the application's report and the agent's
    /// check.
    ///
    /// # Errors
    /// As [`get`].
    pub async fn health(&self) -> Result<HealthSignal, ClientError> {
        get(&self.api, "/v1/health").await
    }

    /// `POST /v1/health`: the application reports its health. An unhealthy node stops leading and is voted
    /// out; with `ttl`, the report lapses into unhealthy unless renewed within it (a crashed application
    /// then stops its node from leading too).
    ///
    /// # Errors
    /// As [`get`]; [`ClientError::Http`] with the agent's reason for a report it refuses.
    pub async fn set_healthy(
        &self,
        healthy: bool,
        reason: Option<&str>,
        ttl: Option<Duration>,
    ) -> Result<HealthSignal, ClientError> {
        let body = serde_json::json!({
            "healthy": healthy,
            "reason": reason,
            "ttlSecs": ttl.map(|t| t.as_secs_f64()),
        });
        post(&self.api, "/v1/health", &body).await
    }

    /// Waits up to `timeout` for this node's record to be on-chain (the agent registers by itself): true
    /// once it is, false if the time runs out while the agent is still at it.
    ///
    /// # Errors
    /// [`ClientError::Registration`] with the agent's reason as soon as it reports one (no seat, no
    /// funds, the RPC down); as [`get`].
    pub async fn register(&self, timeout: Duration) -> Result<bool, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status().await?;
            if status.node.registered {
                return Ok(true);
            }
            if let Some(reason) = status.node.registration_error.or(status.chain.last_error) {
                return Err(ClientError::Registration { reason });
            }
            if tokio::time::Instant::now() + REGISTER_POLL > deadline {
                return Ok(false);
            }
            tokio::time::sleep(REGISTER_POLL).await;
        }
    }

    /// `GET /v1/events`: the current peer list and leader, then each change.
    ///
    /// # Errors
    /// As [`get`], for the request.
    pub async fn events(&self) -> Result<EventStream, ClientError> {
        let what = "GET /v1/events".to_owned();
        let answer = tokio::time::timeout(Duration::from_secs(10), open(&self.api, "/v1/events"))
            .await
            .map_err(|_| ClientError::Timeout {
                api: self.api.clone(),
                what: what.clone(),
            })??;
        Ok(EventStream {
            body: answer.body,
            _connection: answer.connection,
            parser: crate::events::EventParser::default(),
            ready: std::collections::VecDeque::new(),
            what,
        })
    }

    /// Follows the peer list and the leader for as long as it is polled, reconnecting with backoff when
    /// the agent goes away (a restart). `on_peers` gets the addresses (as [`Client::peer_addresses`]) at
    /// first and whenever that list of addresses changes (a change of a peer's health or path alone
    /// changes no address; [`Client::events`] has every change [`crate::Peer::change_key`] defines).
    /// `on_leader` gets the leader at first and whenever what an application acts on changes
    /// ([`Leader::key`]): its seat, address and reachability, whether this node leads and why not, the
    /// term, whether it is confirmed, this node's health. A reconnection that finds nothing changed calls
    /// neither.
    ///
    /// # Errors
    /// Only an event this version cannot read: an agent of another version.
    pub async fn monitor(
        &self,
        mut on_peers: impl FnMut(&[String]),
        mut on_leader: impl FnMut(&Leader),
    ) -> Result<std::convert::Infallible, ClientError> {
        let mut peers: Option<Vec<String>> = None;
        let mut leader = None;
        let mut reconnect = backoff::Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
        loop {
            match self.events().await {
                Ok(mut stream) => {
                    reconnect.reset();
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok(Event::Peers(list)) => {
                                // The addresses are what is called back: a change of a peer's health or
                                // path that leaves them as they were is no news to this callback.
                                let now = addresses(&list);
                                if peers.as_ref() != Some(&now) {
                                    on_peers(&now);
                                    peers = Some(now);
                                }
                            }
                            Ok(Event::Leader(l)) => {
                                let key = l.key();
                                if leader.as_ref() != Some(&key) {
                                    on_leader(&l);
                                    leader = Some(key);
                                }
                            }
                            Err(e @ ClientError::Event(_)) => return Err(e),
                            Err(e) => {
                                tracing::debug!(error = %e, "the event stream broke; reconnecting");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot open the event stream; retrying")
                }
            }
            tokio::time::sleep(reconnect.next_delay()).await;
        }
    }
}

/// Each reachable peer's address, in seat order.
fn addresses(peers: &[Peer]) -> Vec<String> {
    peers.iter().filter_map(|p| p.address.clone()).collect()
}

/// `/v1/events` as it arrives.
pub struct EventStream {
    body: hyper::body::Incoming,
    /// Drives the connection the body arrives on; dropping the stream closes it.
    _connection: Task<()>,
    parser: crate::events::EventParser,
    ready: std::collections::VecDeque<Result<Event, crate::events::BadEvent>>,
    what: String,
}

impl EventStream {
    /// The next event; none once the agent closed the stream.
    pub async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event.map_err(ClientError::from));
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        self.ready.extend(self.parser.push(data));
                    }
                }
                Err(e) => {
                    return Some(Err(ClientError::Malformed {
                        what: self.what.clone(),
                        detail: e.to_string(),
                    }));
                }
            }
        }
    }
}

/// `GET path` on the agent API at `api`, decoded as `T`.
///
/// # Errors
/// [`ClientError`]: no socket, a refused connection, a timeout, an HTTP error or a malformed reply.
pub async fn get<T: serde::de::DeserializeOwned>(
    api: impl Into<ApiAddr>,
    path: &str,
) -> Result<T, ClientError> {
    let body = get_bytes(&api.into(), path).await?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Malformed {
        what: format!("GET {path}"),
        detail: e.to_string(),
    })
}

/// `GET path` on the agent API at `api`, as text (for `/metrics`).
///
/// # Errors
/// As [`get`], and a body that is not UTF-8.
pub async fn get_text(api: impl Into<ApiAddr>, path: &str) -> Result<String, ClientError> {
    let body = get_bytes(&api.into(), path).await?;
    String::from_utf8(body.to_vec()).map_err(|e| ClientError::Malformed {
        what: format!("GET {path}"),
        detail: e.to_string(),
    })
}

/// `POST path` with `body` as JSON on the agent API at `api`, the reply decoded as `T`.
///
/// # Errors
/// As [`get`].
pub async fn post<T: serde::de::DeserializeOwned>(
    api: impl Into<ApiAddr>,
    path: &str,
    body: &serde_json::Value,
) -> Result<T, ClientError> {
    let api = api.into();
    let reply = exchange(&api, Method::Post, path, Bytes::from(body.to_string())).await?;
    let what = format!("POST {path}");
    serde_json::from_slice(&reply).map_err(|e| ClientError::Malformed {
        what,
        detail: e.to_string(),
    })
}

/// A connection to the API, on either transport.
enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn connect(api: &ApiAddr) -> Result<Stream, ClientError> {
    let failed = |source: std::io::Error| {
        if matches!(api, ApiAddr::Unix(_)) && source.kind() == std::io::ErrorKind::NotFound {
            ClientError::NoSocket { api: api.clone() }
        } else {
            ClientError::Connect {
                api: api.clone(),
                source,
            }
        }
    };
    match api {
        ApiAddr::Unix(path) => tokio::net::UnixStream::connect(path)
            .await
            .map(Stream::Unix)
            .map_err(failed),
        ApiAddr::Tcp(addr) => tokio::net::TcpStream::connect(addr)
            .await
            .map(Stream::Tcp)
            .map_err(failed),
    }
}

/// A successful answer's body, unread, and the task that drives its connection: the body arrives for as
/// long as both are kept.
struct Answer {
    body: hyper::body::Incoming,
    connection: Task<()>,
}

impl Answer {
    /// The whole body, read on the connection kept until then.
    async fn whole(self) -> Result<Bytes, hyper::Error> {
        let Self { body, connection } = self;
        let whole = body
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes);
        drop(connection);
        whole
    }
}

/// Sends `GET path` and returns the body of a successful answer, unread.
async fn open(api: &ApiAddr, path: &str) -> Result<Answer, ClientError> {
    send(api, Method::Get, path, Bytes::new()).await
}

/// The methods the client sends.
#[derive(Debug, Clone, Copy)]
enum Method {
    Get,
    Post,
}

impl Method {
    fn verb(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
        }
    }
}

/// Sends `method path` with `body` (JSON for a POST) and returns the body of a successful answer, unread.
async fn send(
    api: &ApiAddr,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<Answer, ClientError> {
    let builder = match method {
        Method::Get => Request::get(path),
        Method::Post => Request::post(path).header(hyper::header::CONTENT_TYPE, "application/json"),
    };
    let what = format!("{} {path}", method.verb());
    let malformed = |detail: String| ClientError::Malformed {
        what: what.clone(),
        detail,
    };
    let (mut sender, conn) = match connect(api).await? {
        Stream::Unix(s) => handshake(s).await,
        Stream::Tcp(s) => handshake(s).await,
    }
    .map_err(|e| malformed(e.to_string()))?;
    let connection = Task::spawn("api-connection", conn);
    let req = builder
        .header(hyper::header::HOST, "p2p-agent")
        .body(Full::new(body))
        .map_err(|e| malformed(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| malformed(e.to_string()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(Answer {
            body: resp.into_body(),
            connection,
        });
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| malformed(e.to_string()))?
        .to_bytes();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Err(ClientError::Http {
        what,
        status,
        message,
    })
}

async fn get_bytes(api: &ApiAddr, path: &str) -> Result<Bytes, ClientError> {
    exchange(api, Method::Get, path, Bytes::new()).await
}

/// Sends `method path` with `body` and reads the whole answer, within 10 s.
async fn exchange(
    api: &ApiAddr,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<Bytes, ClientError> {
    let what = format!("{} {path}", method.verb());
    let whole = async {
        send(api, method, path, body)
            .await?
            .whole()
            .await
            .map_err(|e| ClientError::Malformed {
                what: what.clone(),
                detail: e.to_string(),
            })
    };
    tokio::time::timeout(Duration::from_secs(10), whole)
        .await
        .map_err(|_| ClientError::Timeout {
            api: api.clone(),
            what: what.clone(),
        })?
}

/// An HTTP/1 client connection on `stream`, with its driver as a future to spawn.
async fn handshake<S>(
    stream: S,
) -> hyper::Result<(
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    Ok((
        sender,
        Box::pin(async move {
            let _ = conn.await;
        }),
    ))
}
