//! The stream's framing: each WireGuard datagram as a 2-byte big-endian length and the datagram. A frame
//! must hold one well-formed WireGuard message, so the stream cannot be used to carry anything else to the
//! node's WireGuard, and a peer speaking anything else is found out at its first frame.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest datagram a frame holds: what the 2-byte length can say. A WireGuard data message is the
/// inner packet plus 32 bytes, so this covers any MTU an interface can have.
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

/// Sizes of WireGuard's messages (the whitepaper's §5.4): initiation, response, cookie reply, and the
/// smallest data message (a keepalive: 16-byte header, empty payload, 16-byte tag).
const HANDSHAKE_INIT_LEN: usize = 148;
const HANDSHAKE_RESP_LEN: usize = 92;
const COOKIE_REPLY_LEN: usize = 64;
const MIN_DATA_LEN: usize = 32;

/// Why a frame was refused. The stream it came on is closed; nothing else is affected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("an empty frame")]
    Empty,
    #[error("message type {0} is not WireGuard's (1-4)")]
    NotWireGuard(u8),
    #[error("the reserved bytes of a WireGuard message are not zero")]
    Reserved,
    #[error("a WireGuard message of type {kind} must be {expected} bytes, not {len}")]
    Size {
        kind: u8,
        len: usize,
        expected: &'static str,
    },
}

/// Checks that `datagram` is shaped as one WireGuard message. Its cryptography is WireGuard's to check.
///
/// # Errors
/// [`FrameError`] naming what is wrong.
pub fn check(datagram: &[u8]) -> Result<(), FrameError> {
    let (&kind, rest) = datagram.split_first().ok_or(FrameError::Empty)?;
    let size = |ok: bool, expected| {
        if ok {
            Ok(())
        } else {
            Err(FrameError::Size {
                kind,
                len: datagram.len(),
                expected,
            })
        }
    };
    match kind {
        1 => size(datagram.len() == HANDSHAKE_INIT_LEN, "148")?,
        2 => size(datagram.len() == HANDSHAKE_RESP_LEN, "92")?,
        3 => size(datagram.len() == COOKIE_REPLY_LEN, "64")?,
        4 => size(datagram.len() >= MIN_DATA_LEN, "at least 32")?,
        other => return Err(FrameError::NotWireGuard(other)),
    }
    if rest[..3] != [0, 0, 0] {
        return Err(FrameError::Reserved);
    }
    Ok(())
}

/// Appends `datagram` as one frame. Callers hold datagrams of at most [`MAX_DATAGRAM`] bytes (WireGuard's
/// own output); a longer one is a bug.
pub fn encode(datagram: &[u8], out: &mut BytesMut) {
    let len = u16::try_from(datagram.len()).expect("a WireGuard datagram fits a frame");
    out.reserve(2 + datagram.len());
    out.put_u16(len);
    out.put_slice(datagram);
}

/// What reading a frame gave.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the stream closed")]
    Closed,
    #[error(transparent)]
    Malformed(#[from] FrameError),
    #[error("reading the stream: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the next frame, checked. A stream that ends between frames is [`ReadError::Closed`].
///
/// # Errors
/// [`ReadError`].
pub async fn read<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Bytes, ReadError> {
    let mut len = [0u8; 2];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ReadError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 {
        return Err(FrameError::Empty.into());
    }
    let mut datagram = vec![0u8; len];
    reader.read_exact(&mut datagram).await?;
    check(&datagram)?;
    Ok(Bytes::from(datagram))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, len: usize) -> Vec<u8> {
        let mut m = vec![0xaa; len];
        m[..4].copy_from_slice(&[kind, 0, 0, 0]);
        m
    }

    #[test]
    fn each_wireguard_message_passes_at_its_size() {
        for (kind, len) in [
            (1, 148),
            (2, 92),
            (3, 64),
            (4, 32),
            (4, 1452),
            (4, MAX_DATAGRAM),
        ] {
            assert_eq!(
                check(&message(kind, len)),
                Ok(()),
                "type {kind}, {len} bytes"
            );
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        assert_eq!(check(&[]), Err(FrameError::Empty));
        assert_eq!(
            check(b"GET / HTTP/1.1\r\n"),
            Err(FrameError::NotWireGuard(b'G'))
        );
        assert_eq!(check(&message(0, 148)), Err(FrameError::NotWireGuard(0)));
        assert!(matches!(
            check(&message(1, 147)),
            Err(FrameError::Size {
                kind: 1,
                len: 147,
                ..
            })
        ));
        assert!(matches!(
            check(&message(2, 148)),
            Err(FrameError::Size { kind: 2, .. })
        ));
        assert!(matches!(
            check(&message(4, 31)),
            Err(FrameError::Size { kind: 4, .. })
        ));
        let mut reserved = message(4, 64);
        reserved[2] = 1;
        assert_eq!(check(&reserved), Err(FrameError::Reserved));
    }

    #[tokio::test]
    async fn frames_round_trip_and_a_bad_one_is_named() {
        let mut wire = BytesMut::new();
        encode(&message(1, 148), &mut wire);
        encode(&message(4, 1000), &mut wire);
        wire.put_u16(3);
        wire.put_slice(b"abc");
        let mut r = &wire[..];
        assert_eq!(read(&mut r).await.unwrap().len(), 148);
        assert_eq!(read(&mut r).await.unwrap().len(), 1000);
        assert!(matches!(
            read(&mut r).await,
            Err(ReadError::Malformed(FrameError::NotWireGuard(b'a')))
        ));
        assert!(matches!(read(&mut r).await, Err(ReadError::Closed)));
    }

    #[tokio::test]
    async fn a_zero_length_or_truncated_frame_is_refused() {
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read(&mut r).await,
            Err(ReadError::Malformed(FrameError::Empty))
        ));
        let mut r: &[u8] = &[0, 148, 1, 0, 0];
        assert!(matches!(read(&mut r).await, Err(ReadError::Io(_))));
    }
}
