//! One peer: its boringtun `Tunn` plus the state boringtun does not keep for us (endpoint,
//! keepalive, byte counters, wall-clock handshake time).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use ipnetwork::Ipv4Network;

use super::config::PeerStatus;
use wg_key::{Key, PresharedKey};

const MSG_HANDSHAKE_INIT: u8 = 1;
const MSG_HANDSHAKE_RESP: u8 = 2;
const MSG_DATA: u8 = 4;

/// A peer of the device. Its `Tunn` lives behind a mutex held only for synchronous noise work,
/// never across an `.await`.
pub(crate) struct Peer {
    pub(crate) public_key: Key,
    /// boringtun's peer index (session indices are `index << 8 | n`).
    pub(crate) index: u32,
    inner: Mutex<PeerInner>,
}

struct PeerInner {
    tunn: Tunn,
    endpoint: Option<SocketAddr>,
    keepalive: Option<u16>,
    preshared_key: Option<PresharedKey>,
    /// When we last sent anything to the peer; `None` makes a persistent keepalive due now.
    last_tx: Option<Instant>,
    last_handshake: Option<SystemTime>,
    tx_bytes: u64,
    rx_bytes: u64,
}

/// What the noise layer needs to (re)build a `Tunn`.
pub(crate) struct NoiseKeys {
    pub(crate) secret: x25519::StaticSecret,
    pub(crate) rate_limiter: Arc<RateLimiter>,
}

impl Peer {
    pub(crate) fn new(
        public_key: Key,
        index: u32,
        keys: &NoiseKeys,
        preshared_key: Option<PresharedKey>,
    ) -> Self {
        Self {
            public_key,
            index,
            inner: Mutex::new(PeerInner {
                tunn: new_tunn(public_key, index, keys, preshared_key.as_ref()),
                endpoint: None,
                keepalive: None,
                preshared_key,
                last_tx: None,
                last_handshake: None,
                tx_bytes: 0,
                rx_bytes: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PeerInner> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_endpoint(&self, endpoint: SocketAddr) {
        self.lock().endpoint = Some(endpoint);
    }

    /// Sets the persistent keepalive (0 = off); turning it on or changing it sends one at the
    /// next timer tick, as the kernel does.
    pub(crate) fn set_keepalive(&self, seconds: u16) {
        let mut g = self.lock();
        let new = (seconds != 0).then_some(seconds);
        if g.keepalive != new {
            g.keepalive = new;
            if new.is_some() {
                g.last_tx = None;
            }
        }
    }

    /// Changes the preshared key. boringtun cannot swap it inside a live `Tunn`, so a *changed*
    /// key rebuilds the tunnel (the next packet re-handshakes); an unchanged one does nothing.
    pub(crate) fn set_preshared_key(&self, psk: Option<PresharedKey>, keys: &NoiseKeys) -> bool {
        let mut g = self.lock();
        if g.preshared_key == psk {
            return false;
        }
        g.tunn = new_tunn(self.public_key, self.index, keys, psk.as_ref());
        g.preshared_key = psk;
        true
    }

    pub(crate) fn preshared_key(&self) -> Option<PresharedKey> {
        self.lock().preshared_key.clone()
    }

    /// Switches to a new device private key; boringtun clears the sessions.
    pub(crate) fn set_static_private(&self, keys: &NoiseKeys) {
        let public = x25519::PublicKey::from(&keys.secret);
        self.lock().tunn.set_static_private(
            keys.secret.clone(),
            public,
            Some(keys.rate_limiter.clone()),
        );
    }

    /// Encrypts an IP packet from the TUN. Returns where to send the result.
    pub(crate) fn encapsulate<'a>(
        &self,
        packet: &[u8],
        dst: &'a mut [u8],
    ) -> (Option<SocketAddr>, TunnResult<'a>) {
        let mut g = self.lock();
        let res = g.tunn.encapsulate(packet, dst);
        g.note_tx(&res);
        (g.endpoint, res)
    }

    /// Decrypts a datagram from `from`. When it authenticates (handshake or data), `from`
    /// becomes the endpoint: WireGuard roaming.
    pub(crate) fn decapsulate<'a>(
        &self,
        from: SocketAddr,
        datagram: &[u8],
        dst: &'a mut [u8],
    ) -> TunnResult<'a> {
        let mut g = self.lock();
        let res = g.tunn.decapsulate(Some(from.ip()), datagram, dst);
        let authenticated = match (datagram.first().copied(), &res) {
            (Some(MSG_DATA), TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..)) => {
                true
            }
            (Some(MSG_DATA), TunnResult::Done) => true, // keepalive
            // Only a real handshake response/keepalive counts, not a cookie reply under load.
            (Some(MSG_HANDSHAKE_INIT), TunnResult::WriteToNetwork(out)) => {
                out.first() == Some(&MSG_HANDSHAKE_RESP)
            }
            (Some(MSG_HANDSHAKE_RESP), TunnResult::WriteToNetwork(out)) => {
                out.first() == Some(&MSG_DATA)
            }
            _ => false,
        };
        if authenticated {
            g.rx_bytes += datagram.len() as u64;
            if g.endpoint != Some(from) {
                tracing::debug!(peer = ?self.public_key, old = ?g.endpoint, new = %from, "peer roamed");
                g.endpoint = Some(from);
            }
            g.refresh_handshake();
        }
        if matches!(res, TunnResult::WriteToNetwork(_)) {
            g.note_tx(&res);
        }
        res
    }

    /// Next packet queued behind a handshake (the "call again with an empty datagram" flush).
    pub(crate) fn flush_queued<'a>(
        &self,
        dst: &'a mut [u8],
    ) -> (Option<SocketAddr>, TunnResult<'a>) {
        let mut g = self.lock();
        let res = g.tunn.decapsulate(None, &[], dst);
        g.note_tx(&res);
        (g.endpoint, res)
    }

    /// Runs boringtun's timers, then our persistent keepalive (kept outside boringtun so the
    /// interval can change without rebuilding the `Tunn`). Returns a datagram to send, if any;
    /// timer traffic is a few packets a second, so it is copied out.
    pub(crate) fn tick(&self, dst: &mut [u8]) -> Option<(SocketAddr, Vec<u8>)> {
        let mut g = self.lock();
        g.refresh_handshake();
        let mut out = match g.tunn.update_timers(dst) {
            TunnResult::WriteToNetwork(out) => Some(out.to_vec()),
            _ => None,
        };
        if out.is_none() {
            let due = match (g.keepalive, g.endpoint, g.last_tx) {
                (Some(_), Some(_), None) => true,
                (Some(k), Some(_), Some(t)) => t.elapsed() >= Duration::from_secs(k.into()),
                _ => false,
            };
            if due {
                // Counts as "sent" even while a handshake is pending, so a pending handshake
                // does not queue an empty packet on every tick.
                g.last_tx = Some(Instant::now());
                if let TunnResult::WriteToNetwork(keepalive) = g.tunn.encapsulate(&[], dst) {
                    out = Some(keepalive.to_vec());
                }
            }
        }
        let (out, endpoint) = (out?, g.endpoint?);
        g.last_tx = Some(Instant::now());
        g.tx_bytes += out.len() as u64;
        Some((endpoint, out))
    }

    pub(crate) fn status(&self, allowed_ips: Vec<Ipv4Network>) -> PeerStatus {
        let mut g = self.lock();
        g.refresh_handshake();
        PeerStatus {
            public_key: self.public_key,
            endpoint: g.endpoint,
            allowed_ips,
            last_handshake: g.last_handshake,
            rx_bytes: g.rx_bytes,
            tx_bytes: g.tx_bytes,
            persistent_keepalive: g.keepalive,
        }
    }
}

impl PeerInner {
    fn note_tx(&mut self, res: &TunnResult<'_>) {
        if let (TunnResult::WriteToNetwork(out), Some(_)) = (res, self.endpoint) {
            self.last_tx = Some(Instant::now());
            self.tx_bytes += out.len() as u64;
        }
    }

    /// Converts boringtun's "time since handshake" into a stable wall-clock timestamp.
    fn refresh_handshake(&mut self) {
        let Some(since) = self.tunn.time_since_last_handshake() else {
            return;
        };
        let Some(at) = SystemTime::now().checked_sub(since) else {
            return;
        };
        let moved = match self.last_handshake {
            None => true,
            Some(prev) => {
                let diff = at.duration_since(prev).unwrap_or_else(|e| e.duration());
                diff >= Duration::from_secs(1)
            }
        };
        if moved {
            self.last_handshake = Some(at);
        }
    }
}

fn new_tunn(
    public_key: Key,
    index: u32,
    keys: &NoiseKeys,
    preshared_key: Option<&PresharedKey>,
) -> Tunn {
    Tunn::new(
        keys.secret.clone(),
        x25519::PublicKey::from(*public_key.as_bytes()),
        preshared_key.map(|k| *k.expose_bytes()),
        // Persistent keepalive is ours (see `tick`), so it can change in place.
        None,
        index,
        Some(keys.rate_limiter.clone()),
    )
}
