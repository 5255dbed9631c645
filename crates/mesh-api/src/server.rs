//! The API server: it only renders the [`Snapshot`] that the agent publishes on a `watch` channel, so it
//! never blocks the agent, and tests can serve any state they like.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::watch;
use tracing::debug;
use unix_socket::UnixSocket;

use crate::metrics::metrics;
use crate::types::{Peer, Snapshot};

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
