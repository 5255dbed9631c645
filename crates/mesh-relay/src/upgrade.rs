//! The HTTP/1.1 upgrade that opens a relay stream. The gateway forwards plain TCP after its TLS, so any
//! protocol would pass; an upgrade makes the endpoint answer a stray browser or `curl` with a status that
//! says what it is, and leaves room for a version change.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The path a relay stream is opened on.
pub const PATH: &str = "/dstack-mesh/relay";
/// The protocol named in `Upgrade:`.
pub const PROTOCOL: &str = "dstack-mesh-relay/1";
/// Longest request or response head accepted.
const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// Why an upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("the HTTP head is over {MAX_HEAD} bytes")]
    TooLong,
    #[error("the stream closed before the HTTP head ended")]
    Closed,
    #[error("not HTTP/1.1: {0}")]
    Parse(#[from] httparse::Error),
    #[error("{status} {reason}")]
    Refused { status: u16, reason: String },
    #[error("reading the HTTP head: {0}")]
    Io(#[from] std::io::Error),
}

/// The client's request for `host` (the name the gateway routes by).
pub fn request(host: &str) -> String {
    format!(
        "GET {PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {PROTOCOL}\r\nUser-Agent: dstack-mesh\r\n\r\n"
    )
}

/// The server's acceptance.
pub fn accepted() -> &'static str {
    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: dstack-mesh-relay/1\r\n\r\n"
}

/// A refusal, with the reason as its body so that whoever probed the port learns what it is.
pub fn refusal(status: u16, reason: &str) -> String {
    let text = match status {
        400 => "Bad Request",
        404 => "Not Found",
        426 => "Upgrade Required",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let body = format!("{reason}\n");
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\nUpgrade: {PROTOCOL}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads one HTTP head (up to and including the blank line), and nothing after it: frames may follow at
/// once.
///
/// # Errors
/// [`UpgradeError::TooLong`], [`UpgradeError::Closed`] or [`UpgradeError::Io`].
pub async fn read_head<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, UpgradeError> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    // Byte by byte: heads are a few hundred bytes once per stream, and nothing past the head is consumed.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(UpgradeError::TooLong);
        }
        if reader.read(&mut byte).await? == 0 {
            return Err(UpgradeError::Closed);
        }
        head.push(byte[0]);
    }
    Ok(head)
}

fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

fn names_upgrade(headers: &[httparse::Header<'_>]) -> bool {
    let connection = header(headers, "connection").unwrap_or("");
    let upgrade = header(headers, "upgrade").unwrap_or("");
    connection
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        && upgrade.trim().eq_ignore_ascii_case(PROTOCOL)
}

/// Checks a client's request head. A refusal carries the status and reason to send back.
///
/// # Errors
/// [`UpgradeError::Parse`] or [`UpgradeError::Refused`].
pub fn check_request(head: &[u8]) -> Result<(), UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(head)?;
    let refuse = |status, reason: &str| {
        Err(UpgradeError::Refused {
            status,
            reason: reason.to_owned(),
        })
    };
    if req.path != Some(PATH) {
        return refuse(
            404,
            "this is a dstack-mesh relay endpoint; streams open at /dstack-mesh/relay",
        );
    }
    if req.method != Some("GET") {
        return refuse(400, "a relay stream opens with GET");
    }
    if !names_upgrade(req.headers) {
        return refuse(
            426,
            "a relay stream needs Connection: Upgrade and Upgrade: dstack-mesh-relay/1",
        );
    }
    Ok(())
}

/// Checks the server's response head.
///
/// # Errors
/// [`UpgradeError::Parse`] or [`UpgradeError::Refused`] with the server's status.
pub fn check_response(head: &[u8]) -> Result<(), UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    res.parse(head)?;
    let status = res.code.unwrap_or(0);
    if status != 101 || !names_upgrade(res.headers) {
        return Err(UpgradeError::Refused {
            status,
            reason: res.reason.unwrap_or("").to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_request_and_acceptance_pass_each_others_checks() {
        check_request(request("ab-51820.example").as_bytes()).unwrap();
        check_response(accepted().as_bytes()).unwrap();
    }

    #[test]
    fn a_plain_get_is_told_what_the_port_is() {
        let err = check_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap_err();
        assert!(
            matches!(&err, UpgradeError::Refused { status: 404, reason } if reason.contains("relay endpoint")),
            "{err}"
        );
        let err = check_request(format!("GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap_err();
        assert!(
            matches!(err, UpgradeError::Refused { status: 426, .. }),
            "{err}"
        );
        let other = format!(
            "GET {PATH} HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
        );
        assert!(check_request(other.as_bytes()).is_err());
    }

    #[test]
    fn a_refusing_server_is_reported_with_its_status() {
        let err = check_response(refusal(503, "too many relay streams").as_bytes()).unwrap_err();
        assert!(
            matches!(err, UpgradeError::Refused { status: 503, .. }),
            "{err}"
        );
        let err = check_response(b"HTTP/1.1 200 OK\r\n\r\n").unwrap_err();
        assert!(
            matches!(err, UpgradeError::Refused { status: 200, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_head_is_read_without_the_bytes_after_it() {
        let mut wire: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x00\x20";
        let head = read_head(&mut wire).await.unwrap();
        assert!(head.ends_with(b"\r\n\r\n"));
        assert_eq!(wire, b"\x00\x20");
        let long = vec![b'a'; MAX_HEAD + 1];
        assert!(matches!(
            read_head(&mut &long[..]).await,
            Err(UpgradeError::TooLong)
        ));
        assert!(matches!(
            read_head(&mut &b"GET / HTTP/1.1\r\n"[..]).await,
            Err(UpgradeError::Closed)
        ));
    }
}
