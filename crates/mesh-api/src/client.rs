//! Reading the API: what `meshctl status` and `p2p-agent wait` use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

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
