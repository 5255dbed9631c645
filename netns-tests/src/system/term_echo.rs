//! A TCP service that says which seat it runs on and under which term, for the forwarded ports: each node
//! runs one, in its namespace, and a client opened in another namespace sees where its connection landed.
//!
//! Every connection is answered, line by line, with `seat S term T: LINE`, where `T` is the term this node's
//! agent says it leads under as the connection is accepted (`-` when it does not lead).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::net::netns::{NetNs, in_netns};
use crate::run::runtime::block_on;

/// One node's service; it stops when dropped.
pub struct TermEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TermEcho {
    /// Serves on every address of `ns` at `port`, as seat `seat`, asking the agent at `api` for its term.
    pub fn start(ns: &NetNs, port: u16, seat: u64, api: PathBuf) -> Self {
        let listener = in_netns(ns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
            .unwrap_or_else(|e| {
                panic!(
                    "the echo service cannot listen on {port} in {}: {e}",
                    ns.name
                )
            });
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut served = Vec::new();
            // Bounded by the stop flag, which drop sets.
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let term = own_term(&api);
                        let flag = Arc::clone(&flag);
                        served.push(std::thread::spawn(move || echo(s, seat, &term, &flag)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for s in served {
                let _ = s.join();
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TermEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn own_term(api: &std::path::Path) -> String {
    match block_on(mesh_api::get::<mesh_api::Leader>(api, "/v1/leader")) {
        Ok(l) if l.is_self => l.term.map_or_else(|| "-".to_owned(), |t| t.to_string()),
        _ => "-".to_owned(),
    }
}

fn echo(s: TcpStream, seat: u64, term: &str, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    // Each answer in one segment, at once: round trips are measured through it.
    let _ = s.set_nodelay(true);
    let mut out = s.try_clone().expect("clone");
    let mut lines = BufReader::new(s);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        // A read that times out keeps what it read of a line: the rest comes with the next.
        match lines.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                let answer = format!("seat {seat} term {term}: {}\n", line.trim_end());
                line.clear();
                if out.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
    let _ = out.shutdown(Shutdown::Both);
}

/// A line-at-a-time client connection opened from a namespace.
pub struct LineClient {
    out: TcpStream,
    lines: BufReader<TcpStream>,
}

impl LineClient {
    /// Connects from `ns` to `to`.
    ///
    /// # Errors
    /// The connection's error.
    pub fn connect(ns: &NetNs, to: SocketAddr) -> std::io::Result<Self> {
        let s = in_netns(ns, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(5))
        })?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Self {
            out: s.try_clone()?,
            lines: BufReader::new(s),
        })
    }

    /// Sends `line` and reads the answer; `None` when the connection was closed instead (or no answer came
    /// within 10 s).
    pub fn ask(&mut self, line: &str) -> Option<String> {
        self.out.write_all(format!("{line}\n").as_bytes()).ok()?;
        let mut answer = String::new();
        match self.lines.read_line(&mut answer) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(answer.trim_end().to_owned()),
        }
    }

    /// Whether the other end closed the connection within `within`: a read that ends.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let _ = self.out.set_read_timeout(Some(within));
        let mut answer = String::new();
        match self.lines.read_line(&mut answer) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// What a connection to `to` from `ns` reaches: the first answer, or `None` when the connection is refused
/// or closed without one.
pub fn reaches(ns: &NetNs, to: SocketAddr) -> Option<String> {
    LineClient::connect(ns, to).ok()?.ask("who")
}
