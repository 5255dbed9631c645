//! The UAPI unix socket (`/var/run/wireguard/<ifname>.sock`): framing and dispatch to whatever serves
//! [`Uapi`]; the text format itself is in `uapi`.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use unix_socket::{UnixSocket, UnixSocketError};

use super::Error;
use super::uapi::{Operation, SetRequest, parse_operation, parse_set, render_errno};

/// What the socket serves: a device's state for `get`, and changes for `set`.
pub(crate) trait Uapi: Send + Sync + 'static {
    /// The reply to `get=1`, rendered.
    fn get(&self) -> String;
    /// Applies a parsed `set=1`.
    fn set(&self, request: SetRequest) -> Result<(), Error>;
}

/// A client gets this long to send its request and read the reply.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest accepted request line.
const MAX_LINE: usize = 4096;

/// Claims the UAPI socket at `path` for interface `ifname`: creates the directory (0755) and binds the socket
/// owner-only from its creation (it shows the private key to whoever connects), replacing a stale file and
/// refusing a live socket (an interface of the same name, perhaps in another network namespace). The
/// socket file goes when the returned socket drops, unless a successor has replaced it.
pub(crate) async fn claim(path: &Path, ifname: &str) -> Result<UnixSocket, Error> {
    let uapi_err = |path: &Path, syscall: &'static str| {
        let path = path.to_owned();
        move |source: io::Error| Error::Uapi {
            path,
            syscall,
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(uapi_err(dir, "mkdir"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(uapi_err(dir, "chmod 0755"))?;
    }
    UnixSocket::bind(path).await.map_err(|e| match e {
        UnixSocketError::InUse { .. } => Error::InterfaceExists {
            ifname: ifname.to_owned(),
            what: "a live UAPI socket has this name (maybe in another network namespace)",
        },
        other => Error::Uapi {
            path: path.to_owned(),
            syscall: "bind",
            source: io::Error::other(other),
        },
    })
}

/// Serves clients one at a time until aborted.
pub(crate) async fn serve(socket: UnixSocket, device: Arc<impl Uapi>) -> Result<(), Error> {
    loop {
        let stream = socket.accept().await.map_err(|source| Error::Uapi {
            path: socket.path().to_owned(),
            syscall: "accept",
            source,
        })?;
        // One at a time keeps requests strictly ordered; a stalled client is cut off.
        match tokio::time::timeout(CLIENT_TIMEOUT, handle_client(stream, &*device)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(error = %err, "UAPI client I/O failed"),
            Err(_) => tracing::warn!("UAPI client timed out"),
        }
    }
}

/// Reads one line, refusing it as soon as it runs past [`MAX_LINE`] rather than once it is all in memory.
async fn read_line(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut String,
) -> io::Result<usize> {
    line.clear();
    let n = reader.take(MAX_LINE as u64 + 1).read_line(line).await?;
    if line.len() > MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "UAPI line too long",
        ));
    }
    if line.ends_with('\n') {
        line.pop();
    }
    Ok(n)
}

async fn handle_client(stream: UnixStream, device: &impl Uapi) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    loop {
        if read_line(&mut reader, &mut line).await? == 0 {
            return Ok(());
        }
        if line.is_empty() {
            continue;
        }
        let reply = match parse_operation(&line) {
            Ok(Operation::Get) => {
                // The request ends with a blank line.
                while read_line(&mut reader, &mut line).await? != 0 && !line.is_empty() {}
                device.get()
            }
            Ok(Operation::Set) => {
                let mut body = Vec::new();
                while read_line(&mut reader, &mut line).await? != 0 && !line.is_empty() {
                    body.push(std::mem::take(&mut line));
                }
                // Never log `body`: it may carry the private key.
                match parse_set(body.iter().map(String::as_str)).and_then(|req| device.set(req)) {
                    Ok(()) => render_errno(0),
                    Err(err) => {
                        tracing::warn!(error = %err, "UAPI set rejected");
                        render_errno(err.uapi_errno())
                    }
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "UAPI request rejected");
                write
                    .write_all(render_errno(err.uapi_errno()).as_bytes())
                    .await?;
                return Ok(());
            }
        };
        write.write_all(reply.as_bytes()).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Uapi for Fixed {
        fn get(&self) -> String {
            "listen_port=51820\nerrno=0\n\n".into()
        }
        fn set(&self, _: SetRequest) -> Result<(), Error> {
            Ok(())
        }
    }

    async fn serve_fixed(path: &Path) -> owned_task::Task<Result<(), Error>> {
        let socket = claim(path, "wg0").await.unwrap();
        owned_task::Task::spawn("uapi", serve(socket, Arc::new(Fixed)))
    }

    /// A request line over the limit is refused as soon as it passes the limit, not once it has all been
    /// read: the connection closes at once, with the sender still sending.
    #[tokio::test]
    async fn an_overlong_line_is_refused_before_it_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg0.sock");
        let _server = serve_fixed(&path).await;
        let mut client = UnixStream::connect(&path).await.unwrap();
        let (mut read, mut write) = client.split();
        let flood = async {
            let chunk = vec![b'a'; 64 * 1024];
            let mut sent = 0usize;
            // Never a newline: an unbounded reader would wait for more until its client timeout.
            while sent < 64 * 1024 * 1024 {
                if write.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            sent
        };
        let closed = async {
            let mut buf = [0u8; 64];
            read.read(&mut buf).await
        };
        let (sent, closed) = tokio::time::timeout(Duration::from_secs(2), async {
            tokio::join!(flood, closed)
        })
        .await
        .expect("the server closed the connection within 2 s");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        assert!(sent < 64 * 1024 * 1024, "the server kept reading");
        // The server itself goes on: a well-formed request still works.
        let mut again = UnixStream::connect(&path).await.unwrap();
        again.write_all(b"get=1\n\n").await.unwrap();
        let mut reply = String::new();
        again.read_to_string(&mut reply).await.unwrap_or_default();
        assert!(reply.starts_with("listen_port=51820"), "{reply:?}");
    }

    /// The socket is created owner-only, and never chmodded afterwards: inotify sees its creation and no
    /// attribute change. A live one is refused as an interface that exists; the file goes with the socket.
    #[tokio::test]
    async fn the_socket_is_created_private_and_never_chmodded() {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg0.sock");
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
        inotify
            .add_watch(
                dir.path(),
                AddWatchFlags::IN_CREATE | AddWatchFlags::IN_ATTRIB,
            )
            .unwrap();
        let socket = claim(&path, "wg0").await.unwrap();
        let events = inotify.read_events().unwrap_or_default();
        let on_socket: Vec<AddWatchFlags> = events
            .iter()
            .filter(|e| e.name.as_deref() == Some(std::ffi::OsStr::new("wg0.sock")))
            .map(|e| e.mask)
            .collect();
        assert_eq!(on_socket, vec![AddWatchFlags::IN_CREATE], "{events:?}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "owner only: {mode:o}");
        let err = claim(&path, "wg0").await.unwrap_err();
        assert!(matches!(err, Error::InterfaceExists { .. }), "{err}");
        drop(socket);
        assert!(!path.exists(), "the socket file goes with the socket");
    }
}
