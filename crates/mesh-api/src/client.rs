//! Reading the API: what `meshctl status` and `p2p-agent wait` use, on the socket or on a TCP address.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

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

async fn get_bytes(api: &ApiAddr, path: &str) -> Result<Bytes, ClientError> {
    let what = format!("GET {path}");
    let exchange = async {
        let malformed = |detail: String| ClientError::Malformed {
            what: what.clone(),
            detail,
        };
        let (mut sender, conn) = match connect(api).await? {
            Stream::Unix(s) => handshake(s).await,
            Stream::Tcp(s) => handshake(s).await,
        }
        .map_err(|e| malformed(e.to_string()))?;
        tokio::spawn(conn);
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
