//! The UAPI unix socket (`/var/run/wireguard/<ifname>.sock`): framing and dispatch; the text
//! format itself is in `uapi`.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Error;
use super::device::Shared;
use super::uapi::{Operation, parse_operation, parse_set, render_errno, render_get};

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

/// Creates the directory (0755) and binds the socket (0600).
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
    let listener = UnixListener::bind(path).map_err(uapi_err(path, "bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(uapi_err(path, "chmod 0600"))?;
    Ok(listener)
}

/// Serves clients one at a time until aborted.
pub(crate) async fn serve(
    listener: UnixListener,
    path: PathBuf,
    shared: Arc<Shared>,
) -> Result<(), Error> {
    loop {
        let (stream, _) = listener.accept().await.map_err(|source| Error::Uapi {
            path: path.clone(),
            syscall: "accept",
            source,
        })?;
        // One at a time keeps requests strictly ordered; a stalled client is cut off.
        match tokio::time::timeout(CLIENT_TIMEOUT, handle_client(stream, &shared)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(error = %err, "UAPI client I/O failed"),
            Err(_) => tracing::warn!("UAPI client timed out"),
        }
    }
}

async fn read_line(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut String,
) -> io::Result<usize> {
    line.clear();
    let n = reader.read_line(line).await?;
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

async fn handle_client(stream: UnixStream, shared: &Shared) -> io::Result<()> {
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
                render_get(&shared.snapshot())
            }
            Ok(Operation::Set) => {
                let mut body = Vec::new();
                while read_line(&mut reader, &mut line).await? != 0 && !line.is_empty() {
                    body.push(std::mem::take(&mut line));
                }
                // Never log `body`: it may carry the private key.
                match parse_set(body.iter().map(String::as_str))
                    .and_then(|req| shared.apply_set(req))
                {
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
