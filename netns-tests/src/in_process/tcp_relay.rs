//! A TCP relay in front of a service on loopback that tests cut and restore: a WebSocket to anvil that drops
//! and stays down for a while, then comes back.
//!
//! It serves on `127.0.0.1` of the current network namespace, on its own thread, and stops when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use owned_task::Task;
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Shared {
    /// Connections are refused (accepted and closed at once) while set.
    cut: AtomicBool,
    /// The relayed connections, closed by [`TcpRelay::cut`] (which drops them).
    open: Mutex<Vec<Task<()>>>,
}

/// The relay; it stops when dropped, closing every connection.
pub struct TcpRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpRelay {
    /// A relay to `upstream`.
    ///
    /// # Panics
    /// When it cannot bind.
    pub fn start(upstream: SocketAddr) -> Self {
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let relay = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("relay runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay binds");
                bound_tx
                    .send(listener.local_addr().expect("relay address"))
                    .expect("the test waits for the relay");
                tokio::select! {
                    () = accept(listener, upstream, &relay) => {}
                    _ = stopped => {}
                }
                relay.close_all();
            });
        });
        let addr = bound_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the TCP relay binds within 10 s");
        Self {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `scheme://` and the relay's address, e.g. `ws://127.0.0.1:40123`.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// Closes every relayed connection, and refuses new ones until [`TcpRelay::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Shared {
    fn close_all(&self) {
        for conn in self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            drop(conn);
        }
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, shared: &Shared) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        if shared.cut.load(Ordering::SeqCst) {
            drop(inbound);
            continue;
        }
        let conn = Task::spawn("relayed-connection", async move {
            if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
        let mut open = shared.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|c| !c.is_finished());
        open.push(conn);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
