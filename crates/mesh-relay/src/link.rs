//! One open relay stream as the WireGuard side sees it: a [`Link`] to send datagrams on, and [`Inbound`]
//! datagrams that arrived on it. [`pump`] moves frames between the stream and these, bounded in memory and
//! in idle time.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::Metrics;
use crate::frame::{self, ReadError};

/// Bytes queued for one stream before further datagrams are dropped, as a full socket buffer drops UDP.
pub const QUEUE_BYTES: usize = 1 << 20;
/// Datagrams queued for one stream.
const QUEUE_LEN: usize = 1024;
/// Frames gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// Which side opened the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We dialled the peer's relay.
    Dialled,
    /// A peer dialled ours.
    Accepted,
}

/// The sending end of one relay stream. Cheap to clone; the stream closes when its last clone is dropped
/// (so a stream whose datagrams nobody keeps a link for, such as one from a stranger, closes at once) or
/// when the stream fails. A dialled stream's pump is owned by its link, and aborted with the last clone.
#[derive(Clone)]
pub struct Link {
    inner: Arc<LinkInner>,
}

struct LinkInner {
    id: u64,
    direction: Direction,
    tx: mpsc::Sender<Bytes>,
    state: Arc<QueueState>,
    /// The pump of a dialled stream, which has nobody else to own it.
    pump: OnceLock<owned_task::Task<()>>,
}

/// What the sending and the receiving ends share; the receiver must not hold the sender, or the queue
/// would never close.
#[derive(Default)]
struct QueueState {
    queued: AtomicUsize,
    closed: AtomicBool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("id", &self.inner.id)
            .field("direction", &self.inner.direction)
            .finish()
    }
}

impl PartialEq for Link {
    fn eq(&self, other: &Self) -> bool {
        self.inner.id == other.inner.id
    }
}

impl Eq for Link {}

impl Link {
    /// A link, and the receiving end that [`pump`] drains.
    pub(crate) fn new(direction: Direction) -> (Self, LinkReceiver) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        let state = Arc::new(QueueState::default());
        let link = Self {
            inner: Arc::new(LinkInner {
                id: NEXT.fetch_add(1, Ordering::Relaxed),
                direction,
                tx,
                state: Arc::clone(&state),
                pump: OnceLock::new(),
            }),
        };
        let receiver = LinkReceiver {
            rx,
            state,
            link: Arc::downgrade(&link.inner),
        };
        (link, receiver)
    }

    /// Keeps `pump` until the last clone of this link is dropped. The pump holds the link only weakly, so
    /// this makes no cycle.
    pub(crate) fn own(&self, pump: owned_task::Task<()>) {
        let _ = self.inner.pump.set(pump);
    }

    /// Unique within the process.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn direction(&self) -> Direction {
        self.inner.direction
    }

    /// Whether the stream is gone; a closed link takes no more datagrams.
    pub fn is_closed(&self) -> bool {
        self.inner.state.closed.load(Ordering::Relaxed) || self.inner.tx.is_closed()
    }

    /// Queues `datagram`; false when it was dropped because the stream is closed or its queue is full.
    pub fn send(&self, datagram: &[u8]) -> bool {
        if datagram.len() > frame::MAX_DATAGRAM || self.is_closed() {
            return false;
        }
        let queued = self
            .inner
            .state
            .queued
            .fetch_add(datagram.len(), Ordering::Relaxed);
        if queued + datagram.len() > QUEUE_BYTES
            || self
                .inner
                .tx
                .try_send(Bytes::copy_from_slice(datagram))
                .is_err()
        {
            self.inner
                .state
                .queued
                .fetch_sub(datagram.len(), Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// The receiving end of a [`Link`]'s queue.
pub(crate) struct LinkReceiver {
    rx: mpsc::Receiver<Bytes>,
    state: Arc<QueueState>,
    link: Weak<LinkInner>,
}

/// A datagram that arrived on a stream, with the link to answer on.
#[derive(Debug)]
pub struct Inbound {
    pub link: Link,
    pub datagram: Bytes,
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamEnd {
    #[error("the peer closed it")]
    Closed,
    #[error("no frame for {0:?}")]
    Idle(Duration),
    #[error("malformed frame: {0}")]
    Malformed(#[from] frame::FrameError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("this side is done with it")]
    Dropped,
}

/// Moves frames both ways until the stream ends: from the stream to `inbound` (waiting when the consumer is
/// slow, so TCP pushes back), and from the link's queue to the stream. No frame for `idle` ends it, and so
/// does the last [`Link`] going. `hold` keeps an accepted stream's link alive until its first datagram is
/// handed over; from then on whoever takes the datagram decides.
pub(crate) async fn pump<S>(
    stream: S,
    mut queue: LinkReceiver,
    mut hold: Option<Link>,
    inbound: mpsc::Sender<Inbound>,
    idle: Duration,
    metrics: Arc<Metrics>,
) -> StreamEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let state = Arc::clone(&queue.state);
    let link = queue.link.clone();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let read = async {
        loop {
            let datagram = match tokio::time::timeout(idle, frame::read(&mut reader)).await {
                Err(_) => return StreamEnd::Idle(idle),
                Ok(Err(ReadError::Closed)) => return StreamEnd::Closed,
                Ok(Err(ReadError::Malformed(e))) => {
                    metrics.malformed.fetch_add(1, Ordering::Relaxed);
                    return StreamEnd::Malformed(e);
                }
                Ok(Err(ReadError::Io(e))) => return StreamEnd::Io(e),
                Ok(Ok(d)) => d,
            };
            metrics.frames_in.fetch_add(1, Ordering::Relaxed);
            metrics
                .bytes_in
                .fetch_add(datagram.len() as u64, Ordering::Relaxed);
            let Some(inner) = link.upgrade() else {
                return StreamEnd::Dropped;
            };
            let message = Inbound {
                link: Link { inner },
                datagram,
            };
            if inbound.send(message).await.is_err() {
                return StreamEnd::Dropped;
            }
            hold = None;
        }
    };
    let write = async {
        let mut out = BytesMut::with_capacity(WRITE_BATCH);
        loop {
            let Some(first) = queue.rx.recv().await else {
                return StreamEnd::Dropped;
            };
            let mut next = Some(first);
            // Gather what is already queued into one write: one syscall and one TLS record for a burst.
            while let Some(datagram) = next {
                queue
                    .state
                    .queued
                    .fetch_sub(datagram.len(), Ordering::Relaxed);
                frame::encode(&datagram, &mut out);
                metrics.frames_out.fetch_add(1, Ordering::Relaxed);
                metrics
                    .bytes_out
                    .fetch_add(datagram.len() as u64, Ordering::Relaxed);
                next = if out.len() < WRITE_BATCH {
                    queue.rx.try_recv().ok()
                } else {
                    None
                };
            }
            if let Err(e) = writer.write_all(&out).await {
                return StreamEnd::Io(e);
            }
            if let Err(e) = writer.flush().await {
                return StreamEnd::Io(e);
            }
            out.clear();
        }
    };
    let end = tokio::select! {
        end = read => end,
        end = write => end,
    };
    state.closed.store(true, Ordering::Relaxed);
    end
}
