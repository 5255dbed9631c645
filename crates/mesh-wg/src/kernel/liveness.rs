//! Whether peers answer, on a WireGuard the agent only configures ([`mesh_path::liveness`]). Such a WireGuard
//! tells no one when a datagram arrives, so a peer counts as heard when its received bytes have grown since
//! the last read, or when it answers a probe: an ICMP echo request sent from a raw socket bound to the
//! interface, which the kernel routes through the tunnel like any packet. The peer's kernel, or this
//! project's device, answers it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, SockFlag, SockProtocol, SockType, setsockopt, socket, sockopt,
};
use tokio::net::UdpSocket;

use mesh_path::ipv4;
use mesh_path::liveness::{self, Liveness, Prober};

use crate::Error;
use crate::probe::{self, Echo};
use wg_key::Key;

/// How often the prober looks at the peers, as the userspace device's timer does.
const TICK: Duration = Duration::from_millis(100);

/// What each peer last sent, as far as this backend can tell.
#[derive(Debug, Default)]
pub(crate) struct Heard {
    peers: Mutex<HashMap<Key, PeerHeard>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct PeerHeard {
    rx_bytes: u64,
    at: Option<Instant>,
    /// A session was up at the last read: a probe can be answered.
    session: bool,
    prober: Prober,
    seq: u16,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Heard {
    /// Takes a read of the peer at `now`: its received bytes, and whether a session is up. Returns when it
    /// was last heard.
    pub(crate) fn read(
        &self,
        key: Key,
        rx_bytes: u64,
        session: bool,
        now: Instant,
    ) -> Option<Instant> {
        let mut peers = lock(&self.peers);
        let p = peers.entry(key).or_default();
        p.session = session;
        // Only on a session: the bytes of the peer's handshake initiations alone say it can send to us, not
        // that it hears us.
        if session && rx_bytes > p.rx_bytes {
            p.at = Some(p.at.map_or(now, |t| t.max(now)));
        }
        p.rx_bytes = rx_bytes;
        p.at
    }

    /// The peer answered (or sent) something at `now`.
    fn answered(&self, key: Key, now: Instant) {
        let mut peers = lock(&self.peers);
        let p = peers.entry(key).or_default();
        p.at = Some(p.at.map_or(now, |t| t.max(now)));
    }

    /// Forgets the peers not in `keep`.
    pub(crate) fn retain(&self, keep: impl Fn(&Key) -> bool) {
        lock(&self.peers).retain(|k, _| keep(k));
    }

    /// The sequence number of a probe due at `now` to the peer, if one is.
    fn probe_due(&self, key: Key, liveness: &Liveness, now: Instant, first: bool) -> Option<u16> {
        let mut peers = lock(&self.peers);
        let p = peers.get_mut(&key)?;
        let s = liveness::Situation {
            now,
            last_heard: p.at,
            session: p.session,
            first,
            // The kernel's peers are all held to the timeout: nothing here knows which carry traffic.
            watched: true,
        };
        p.prober.due(liveness, s).then(|| {
            p.seq = p.seq.wrapping_add(1);
            p.seq
        })
    }
}

/// An ICMP socket bound to the interface. Kept as tokio's UDP socket: a raw IPv4 socket takes the same
/// `sendto` and `recvfrom` with an IPv4 address (its port unused), and so gets tokio's readiness without
/// unsafe registration.
struct Icmp {
    socket: UdpSocket,
}

impl Icmp {
    fn open(ifname: &str) -> Result<Self, Error> {
        let err = |syscall: &'static str| {
            let ifname = ifname.to_owned();
            move |e: nix::Error| Error::Probe {
                ifname,
                syscall,
                source: e.into(),
            }
        };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::Icmp,
        )
        .map_err(err("socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)"))?;
        setsockopt(
            &fd,
            sockopt::BindToDevice,
            &std::ffi::OsString::from(ifname),
        )
        .map_err(err("setsockopt SO_BINDTODEVICE"))?;
        let socket =
            UdpSocket::from_std(std::net::UdpSocket::from(fd)).map_err(|source| Error::Probe {
                ifname: ifname.to_owned(),
                syscall: "epoll_ctl",
                source,
            })?;
        Ok(Self { socket })
    }

    fn send(&self, to: Ipv4Addr, seq: u16) {
        let message = probe::message(false, seq);
        // A full buffer or a route not there yet: the next tick tries again.
        if let Err(e) = self
            .socket
            .try_send_to(&message, SocketAddr::V4(SocketAddrV4::new(to, 0)))
        {
            tracing::trace!(%to, error = %e, "a probe could not be sent");
        }
    }

    /// The next ICMP packet, if it is a probe or the answer to one: who sent it.
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<Option<Ipv4Addr>> {
        let (n, from) = self.socket.recv_from(buf).await?;
        let (IpAddr::V4(_), Some(own)) = (from.ip(), buf.get(16..20)) else {
            return Ok(None);
        };
        // The raw socket sees every ICMP packet on the interface: ours are those addressed to this node.
        let own = Ipv4Addr::new(own[0], own[1], own[2], own[3]);
        Ok(match probe::parse(&buf[..n], own) {
            Some(Echo::Reply { from, .. } | Echo::Request { from, .. }) => Some(from),
            None => None,
        })
    }
}

/// Probes the peers `targets` gives (each key with its overlay address), every [`TICK`], as
/// [`mesh_path::liveness`] says, and takes note in `heard` of every probe and answer that arrives. Runs until
/// dropped.
pub(crate) async fn run(
    ifname: String,
    own_key: Key,
    liveness: Liveness,
    heard: Arc<Heard>,
    targets: impl Fn() -> Vec<(Key, Ipv4Addr)> + Send + 'static,
) -> Result<(), Error> {
    let icmp = Icmp::open(&ifname)?;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; ipv4::HEADER + 1500];
    let mut by_ip: HashMap<Ipv4Addr, Key> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                by_ip = targets().into_iter().map(|(key, ip)| (ip, key)).collect();
                for (ip, key) in &by_ip {
                    let first = liveness::probes_first(own_key.as_bytes(), key.as_bytes());
                    if let Some(seq) = heard.probe_due(*key, &liveness, now, first) {
                        icmp.send(*ip, seq);
                    }
                }
            }
            got = icmp.recv(&mut buf) => match got {
                Ok(Some(from)) => {
                    if let Some(key) = by_ip.get(&from) {
                        heard.answered(*key, Instant::now());
                    }
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(Error::Probe { ifname, syscall: "recvfrom", source });
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_heard_when_its_received_bytes_grow_or_it_answers() {
        let heard = Heard::default();
        let key = Key::from_bytes([1; 32]);
        let t0 = Instant::now();
        assert_eq!(heard.read(key, 0, false, t0), None, "nothing received yet");
        assert_eq!(
            heard.read(key, 148, false, t0),
            None,
            "an initiation, with no session: a question, not an answer"
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(heard.read(key, 240, true, t1), Some(t1));
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(heard.read(key, 240, true, t2), Some(t1), "no new bytes");
        let t3 = t2 + Duration::from_millis(10);
        heard.answered(key, t3);
        assert_eq!(
            heard.read(key, 240, true, t2),
            Some(t3),
            "an older read never moves it back"
        );
        heard.retain(|_| false);
        assert_eq!(heard.read(key, 0, true, t3), None, "forgotten");
    }

    #[test]
    fn a_silent_peer_with_a_session_is_probed_with_a_new_sequence_number() {
        let heard = Heard::default();
        let key = Key::from_bytes([1; 32]);
        let t0 = Instant::now();
        let l = Liveness {
            timeout: Duration::from_secs(3),
        };
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(heard.probe_due(key, &l, at(0), true), None, "never read");
        heard.read(key, 148, false, t0);
        assert_eq!(
            heard.probe_due(key, &l, at(1_000), true),
            None,
            "no session"
        );
        heard.read(key, 240, true, t0);
        assert_eq!(heard.probe_due(key, &l, at(500), true), None);
        assert_eq!(heard.probe_due(key, &l, at(1_000), true), Some(1));
        assert_eq!(heard.probe_due(key, &l, at(1_500), true), Some(2));
    }
}
