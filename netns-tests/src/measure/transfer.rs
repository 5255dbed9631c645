//! A bulk TCP transfer between namespaces whose every byte is checked at the far end: what proves that a data
//! path which splits, coalesces and re-checksums packets (TUN and UDP offloads) delivers a stream intact.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::net::netns::{NetNs, in_netns};

/// The port the receiving end listens on.
const PORT: u16 = 5301;
/// How long the whole transfer may take before the test fails.
const BOUND: Duration = Duration::from_secs(60);

/// The byte at `offset` of the stream: a position-dependent pattern, so a lost, duplicated, reordered or
/// corrupted segment shows as a mismatch at a known offset.
fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// Sends `bytes` over TCP from `from` to `to_ip` (an address of `to`), and checks every byte on arrival.
/// Returns how long it took. Panics, naming the first bad offset, if the stream arrives altered or short.
pub fn tcp_transfer(from: &NetNs, to: &NetNs, to_ip: Ipv4Addr, bytes: u64) -> Duration {
    tcp_transfer_within(from, to, to_ip, bytes, BOUND).unwrap_or_else(|e| panic!("{e}"))
}

/// [`tcp_transfer`], with a stream that stalls for `bound` (or is cut) as an `Err` saying how far it got,
/// rather than a failure: for a path expected to stall. A stream that arrives altered still panics.
pub fn tcp_transfer_within(
    from: &NetNs,
    to: &NetNs,
    to_ip: Ipv4Addr,
    bytes: u64,
    bound: Duration,
) -> Result<Duration, String> {
    let addr = SocketAddr::from((to_ip, PORT));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let receiver = s.spawn(move || {
            in_netns(to, move || {
                let listener = TcpListener::bind(addr)
                    .unwrap_or_else(|e| panic!("listening on {addr} in {}: {e}", to.name));
                ready_tx.send(()).expect("the sender waits");
                let (mut stream, _) = listener.accept().expect("accept the transfer");
                stream.set_read_timeout(Some(bound)).expect("read timeout");
                let mut buf = vec![0u8; 256 * 1024];
                let mut offset = 0u64;
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) => {
                            return Err(format!(
                                "the transfer to {addr} stalled: {offset} of {bytes} bytes arrived, then nothing for {bound:?} ({e})"
                            ));
                        }
                    };
                    if let Some(bad) = (0..n).find(|&i| buf[i] != pattern(offset + i as u64)) {
                        panic!(
                            "the stream to {addr} differs at byte {}: {:#04x}, expected {:#04x}",
                            offset + bad as u64,
                            buf[bad],
                            pattern(offset + bad as u64)
                        );
                    }
                    offset += n as u64;
                }
                if offset == bytes {
                    Ok(())
                } else {
                    Err(format!(
                        "the stream to {addr} ended early: {offset} of {bytes} bytes"
                    ))
                }
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the receiver to listen");
        let started = Instant::now();
        in_netns(from, || {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connecting to {addr} from {}: {e}", from.name));
            stream
                .set_write_timeout(Some(bound))
                .expect("write timeout");
            let mut chunk = vec![0u8; 256 * 1024];
            let mut offset = 0u64;
            while offset < bytes {
                let n = chunk.len().min((bytes - offset) as usize);
                for (i, b) in chunk[..n].iter_mut().enumerate() {
                    *b = pattern(offset + i as u64);
                }
                if stream.write_all(&chunk[..n]).is_err() {
                    // Stalled: the receiver says how far it got.
                    return;
                }
                offset += n as u64;
            }
        });
        receiver.join().expect("the receiver thread")?;
        Ok(started.elapsed())
    })
}
