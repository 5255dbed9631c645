//! The UAPI unix socket (`/var/run/wireguard/<ifname>.sock`): framing and dispatch to whatever serves
//! [`Uapi`]; the text format itself is in `uapi`.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

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

/// Fails if a live UAPI socket already answers at `path` (an interface of the same name, perhaps
/// in another network namespace); removes a stale socket file.
pub(crate) fn claim_path(path: &Path, ifname: &str) -> Result<(), Error> {
    if !path.exists() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::InterfaceExists {
            ifname: ifname.to_owned(),
            what: "a live UAPI socket has this name (maybe in another network namespace)",
        });
    }
    std::fs::remove_file(path).map_err(|source| Error::Uapi {
        path: path.to_owned(),
        syscall: "unlink stale socket",
        source,
    })
}

/// Creates the directory (0755) and binds the socket under a 0077 umask, owner-only from its creation (as
/// wireguard-go does): it shows the private key to whoever connects, so it must never exist with wider
/// permissions, not even until a chmod.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, Error> {
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
    crate::socket::with_umask(0o077, || UnixListener::bind(path)).map_err(uapi_err(path, "bind"))
}

/// Serves clients one at a time until aborted.
pub(crate) async fn serve(
    listener: UnixListener,
    path: PathBuf,
    device: Arc<impl Uapi>,
) -> Result<(), Error> {
    loop {
        let (stream, _) = listener.accept().await.map_err(|source| Error::Uapi {
            path: path.clone(),
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

    fn serve_fixed(path: &Path) -> tokio::task::JoinHandle<Result<(), Error>> {
        let listener = bind(path).unwrap();
        tokio::spawn(serve(listener, path.to_owned(), Arc::new(Fixed)))
    }

    /// A request line over the limit is refused as soon as it passes the limit, not once it has all been
    /// read: the connection closes at once, with the sender still sending.
    #[tokio::test]
    async fn an_overlong_line_is_refused_before_it_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg0.sock");
        let server = serve_fixed(&path);
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
        server.abort();
    }

    /// The socket is created owner-only under a 0077 umask, and never chmodded afterwards: inotify sees its
    /// creation and no attribute change.
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
        let listener = bind(&path).unwrap();
        let events = inotify.read_events().unwrap_or_default();
        let on_socket: Vec<AddWatchFlags> = events
            .iter()
            .filter(|e| e.name.as_deref() == Some(std::ffi::OsStr::new("wg0.sock")))
            .map(|e| e.mask)
            .collect();
        assert_eq!(on_socket, vec![AddWatchFlags::IN_CREATE], "{events:?}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o700,
            "owner only, as wireguard-go's sockets are"
        );
        drop(listener);
    }
}
