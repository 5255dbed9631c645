//! The relay endpoint every node serves on its relay port, behind the gateway's TLS termination. It is not
//! an open relay: every datagram it takes goes to this node's own WireGuard (through `inbound`), and only
//! WireGuard's answers go back. It bounds streams, frames and queued bytes, and closes idle streams.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::Metrics;
use crate::link::{Direction, Inbound, Link, StreamEnd, pump};
use crate::upgrade::{self, UpgradeError};

/// Bounds of the endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Streams open at once; one more is refused with 503.
    pub max_streams: usize,
    /// A stream with no frame for this long is closed. WireGuard's keepalive (25 s) keeps a live one busy.
    pub idle: Duration,
    /// Time allowed for the upgrade request.
    pub upgrade: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_streams: 256,
            idle: Duration::from_secs(90),
            upgrade: Duration::from_secs(10),
        }
    }
}

/// Serves relay streams on `listener` until `cancel`, handing every datagram to `inbound`.
pub async fn serve(
    listener: TcpListener,
    inbound: mpsc::Sender<Inbound>,
    limits: Limits,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_streams));
    // Every stream's task; returning drops the set, which ends them all.
    let mut streams = JoinSet::new();
    loop {
        let (stream, from) = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like pass; back off rather than spin.
                    tracing::warn!(error = %e, "accepting a relay stream failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while streams.try_join_next().is_some() {}
        let slot = Arc::clone(&slots).try_acquire_owned().ok();
        let (inbound, metrics) = (inbound.clone(), Arc::clone(&metrics));
        let span = tracing::debug_span!("relay_stream", %from);
        streams.spawn(
            async move {
                let Some(_slot) = slot else {
                    metrics.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        max = limits.max_streams,
                        "refused a relay stream: too many open"
                    );
                    refuse(stream, 503, "too many relay streams").await;
                    return;
                };
                accept(stream, inbound, limits, metrics).await;
            }
            .instrument(span),
        );
    }
}

async fn refuse(mut stream: TcpStream, status: u16, reason: &str) {
    let _ = stream
        .write_all(upgrade::refusal(status, reason).as_bytes())
        .await;
    let _ = stream.shutdown().await;
}

async fn accept(
    mut stream: TcpStream,
    inbound: mpsc::Sender<Inbound>,
    limits: Limits,
    metrics: Arc<Metrics>,
) {
    let _ = stream.set_nodelay(true);
    let head = match tokio::time::timeout(limits.upgrade, upgrade::read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "relay stream closed before its upgrade");
            return;
        }
        Err(_) => {
            tracing::debug!(timeout = ?limits.upgrade, "relay stream sent no upgrade in time");
            return;
        }
    };
    match upgrade::check_request(&head) {
        Ok(()) => {}
        Err(UpgradeError::Refused { status, reason }) => {
            tracing::debug!(status, %reason, "refused a request that is not a relay upgrade");
            refuse(stream, status, &reason).await;
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "refused a request that is not HTTP");
            refuse(stream, 400, &e.to_string()).await;
            return;
        }
    }
    if let Err(e) = stream.write_all(upgrade::accepted().as_bytes()).await {
        tracing::debug!(error = %e, "relay stream closed during its upgrade");
        return;
    }
    let (link, queue) = Link::new(Direction::Accepted);
    metrics.accepted.fetch_add(1, Ordering::Relaxed);
    let open = OpenStream::new(Arc::clone(&metrics));
    tracing::debug!(link = link.id(), "relay stream accepted");
    open.ended(pump(stream, queue, Some(link), inbound, limits.idle, metrics).await);
}

/// A stream counted as open until its pump ends, or is dropped with the task that owns it (the endpoint
/// stopping, or a dialled stream's last link going); logs why it ended.
pub(crate) struct OpenStream {
    metrics: Arc<Metrics>,
    end: Option<StreamEnd>,
}

impl OpenStream {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        metrics.open.fetch_add(1, Ordering::Relaxed);
        Self { metrics, end: None }
    }

    /// The pump returned `end`.
    pub(crate) fn ended(mut self, end: StreamEnd) {
        self.end = Some(end);
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.metrics.open.fetch_sub(1, Ordering::Relaxed);
        log_end(self.end.as_ref().unwrap_or(&StreamEnd::Dropped));
    }
}

/// A malformed frame is the other side's fault and worth a warning; the rest is the ordinary end of a stream.
fn log_end(end: &StreamEnd) {
    match end {
        StreamEnd::Malformed(_) => tracing::warn!(reason = %end, "closed a relay stream"),
        _ => tracing::debug!(reason = %end, "relay stream ended"),
    }
}
