//! Unix sockets that the agent and the simulator serve on: a stale socket file left by a process that is
//! gone is replaced, a live one is refused, and the file is removed on drop, unless a successor has already
//! replaced it.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

/// How long probing an existing socket may take before we call it stale.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The umask is one per process: this keeps two [`with_umask`] calls from interleaving and leaving the
/// wrong one in place.
static UMASK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` with the process umask set to `mask`, so that what it creates is never more open than that, not
/// even for the moment between its creation and a chmod.
pub fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    use nix::sys::stat::{Mode, umask};
    let _serial = UMASK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let previous = umask(Mode::from_bits_truncate(mask));
    let out = f();
    umask(previous);
    out
}

/// Why a unix socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnixSocketError {
    /// Another process answers on the socket.
    #[error("{} is in use by another running process; stop it or choose another socket path", path.display())]
    InUse { path: PathBuf },
    /// Something other than a socket is at the path; we never delete it.
    #[error("{} exists and is not a unix socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    /// An I/O error on the path.
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A bound unix socket that removes its file on drop, unless someone else has replaced it since.
#[derive(Debug)]
pub struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
    inode: u64,
}

impl UnixSocket {
    /// Binds `path`, replacing a stale socket file (nobody accepting) and refusing a live one.
    ///
    /// # Errors
    /// [`UnixSocketError`] naming the path.
    pub async fn bind(path: &Path) -> Result<Self, UnixSocketError> {
        let io = |action, source| UnixSocketError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(UnixSocketError::NotASocket {
                    path: path.to_owned(),
                });
            }
            Ok(_) => match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
                Ok(Ok(_)) => {
                    return Err(UnixSocketError::InUse {
                        path: path.to_owned(),
                    });
                }
                // Refused (or hung past the timeout): a leftover of a process that is gone.
                Ok(Err(_)) | Err(_) => {
                    info!(path = %path.display(), "replacing stale socket");
                    std::fs::remove_file(path).map_err(|e| io("remove stale socket", e))?;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("inspect", e)),
        }
        // Owner-only from the start; set_mode may open it to a group afterwards.
        let listener = with_umask(0o177, || bind_listening(path)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                UnixSocketError::InUse {
                    path: path.to_owned(),
                }
            } else {
                io("bind", e)
            }
        })?;
        let inode = std::fs::metadata(path).map_err(|e| io("inspect", e))?.ino();
        Ok(Self {
            listener,
            path: path.to_owned(),
            inode,
        })
    }

    /// Restricts who may connect, e.g. 0o660 for owner and group.
    ///
    /// # Errors
    /// When the mode cannot be set.
    pub fn set_mode(&self, mode: u32) -> Result<(), UnixSocketError> {
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode)).map_err(
            |source| UnixSocketError::Io {
                action: "set the mode of",
                path: self.path.clone(),
                source,
            },
        )
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the next connection.
    ///
    /// # Errors
    /// The OS error of `accept`.
    pub async fn accept(&self) -> std::io::Result<UnixStream> {
        self.listener.accept().await.map(|(stream, _)| stream)
    }
}

/// The most bytes a socket path may have (`sun_path` less its terminating NUL).
const SUN_PATH_MAX: usize = 107;

/// Binds `path` so that the file appears only once the socket listens. A plain `bind` creates the file a
/// moment before `listen`, and a client that connects in that moment (one that waits for the file to
/// appear, as clients do) is refused. So the socket is bound and listening under a private name in the same
/// directory first, then linked to `path`; the link also refuses to replace a socket someone else bound
/// there since we looked (`AlreadyExists`).
fn bind_listening(path: &Path) -> std::io::Result<UnixListener> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let staging = path.with_file_name(format!(".{}-{seq}.binding", std::process::id()));
    if staging.as_os_str().len() > SUN_PATH_MAX {
        // No room for a longer name: bind in place, and a client may be refused for that moment.
        return UnixListener::bind(path);
    }
    let listener = UnixListener::bind(&staging)?;
    let linked = std::fs::hard_link(&staging, path);
    if let Err(e) = std::fs::remove_file(&staging) {
        warn!(path = %staging.display(), %e, "cannot remove the socket's staging name");
    }
    linked.map(|()| listener)
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        // Only our own file: a successor may already have replaced a socket it thought stale.
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode)
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            warn!(path = %self.path.display(), %e, "cannot remove socket");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stale socket file is replaced, a live socket is refused, and the file goes when the socket drops.
    #[tokio::test]
    async fn stale_is_replaced_live_is_refused_and_drop_removes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // stale: nobody accepts
        let live = UnixSocket::bind(&path).await.unwrap();
        let err = UnixSocket::bind(&path).await.unwrap_err();
        assert!(matches!(err, UnixSocketError::InUse { .. }), "{err}");
        drop(live);
        assert!(!path.exists(), "socket file removed on drop");
    }

    /// A regular file in the way is never deleted.
    #[tokio::test]
    async fn a_regular_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        std::fs::write(&path, "keep me").unwrap();
        let err = UnixSocket::bind(&path).await.unwrap_err();
        assert!(matches!(err, UnixSocketError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }

    /// A client that connects as soon as the socket file appears is always accepted: the file is never
    /// visible before the socket listens, which is how a client (or a test harness) knows the server is up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_file_appears_only_once_the_socket_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        for round in 0..300 {
            let watcher = {
                let path = path.clone();
                std::thread::spawn(move || {
                    let deadline = std::time::Instant::now() + Duration::from_secs(5);
                    while !path.exists() {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "the socket never appeared"
                        );
                    }
                    std::os::unix::net::UnixStream::connect(&path)
                })
            };
            let socket = UnixSocket::bind(&path).await.unwrap();
            let connected = watcher.join().unwrap();
            assert!(
                connected.is_ok(),
                "round {round}: the file was there but refused: {connected:?}"
            );
            drop(socket);
        }
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "nothing left beside the socket: {left:?}");
    }
}
