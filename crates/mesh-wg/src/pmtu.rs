//! Whether each peer's path carries the tunnel's datagrams whole. WireGuard's datagrams may not be
//! fragmented (the userspace device sends them with DF set, as the kernel's does), so on a path that carries
//! fewer bytes than the tunnel's MTU plus WireGuard's overlay, every packet above the difference is lost,
//! and TCP inside the tunnel stalls without ever learning why: the ICMP "fragmentation needed" goes to this
//! node, not to the application. The kernel keeps what it learns of a path's MTU (from that ICMP, or the
//! MTU of the interface toward the peer) in its routing table; every [`CHECK_EVERY`] the route to each
//! peer on UDP is read, and a path too small is logged once, with the `--mtu` that would fit.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::Error;
use crate::netlink::Netlink;
use wg_key::Key;

/// What WireGuard adds to each packet over IPv4: a 20-byte IP header, 8 bytes of UDP and 32 of WireGuard.
pub(crate) const OVERHEAD_V4: u32 = 60;
/// How often the peers' paths are read.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The largest tunnel MTU that fits a path of `path_mtu` bytes, when the tunnel's `mtu` does not.
pub(crate) fn too_small(path_mtu: u32, mtu: u16) -> Option<u32> {
    (path_mtu < u32::from(mtu) + OVERHEAD_V4).then(|| path_mtu.saturating_sub(OVERHEAD_V4))
}

/// The checks of one interface: what was logged already, so each path is logged once per MTU.
pub(crate) struct PathCheck {
    netlink: Netlink,
    mtu: u16,
    logged: HashMap<Key, u32>,
}

impl PathCheck {
    pub(crate) fn new(netlink: Netlink, mtu: u16) -> Self {
        Self {
            netlink,
            mtu,
            logged: HashMap::new(),
        }
    }

    /// Reads the path to each peer's UDP endpoint, and logs those too small for the tunnel.
    pub(crate) async fn check(&mut self, peers: Vec<(Key, SocketAddr)>) {
        self.logged.retain(|k, _| peers.iter().any(|(p, _)| p == k));
        for (key, endpoint) in peers {
            let IpAddr::V4(ip) = endpoint.ip() else {
                continue;
            };
            if ip.is_loopback() {
                // A relay bridge of the kernel backend's: its path is the relay's TCP.
                continue;
            }
            let path = match self.netlink.path_mtu(ip).await {
                Ok(Some(path)) => path,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(peer = ?key, %endpoint, error = %e, "cannot read the route to the peer");
                    continue;
                }
            };
            let Some(fits) = too_small(path.mtu, self.mtu) else {
                self.logged.remove(&key);
                continue;
            };
            if self.logged.insert(key, path.mtu) == Some(path.mtu) {
                continue;
            }
            let learnt = if path.from_icmp {
                "learnt from an ICMP 'fragmentation needed' on the way"
            } else {
                "the MTU of the interface toward it"
            };
            tracing::warn!(
                event = "path.mtu_too_small",
                peer = ?key,
                %endpoint,
                path_mtu = path.mtu,
                mtu = self.mtu,
                "the path to this peer carries at most {} bytes a packet ({learnt}), but the tunnel's MTU of {} needs {}: \
                 packets over {fits} bytes to it are lost, and TCP through the tunnel stalls. Start every agent with \
                 --mtu {fits} or less (DSTACK_MESH_MTU)",
                path.mtu,
                self.mtu,
                u32::from(self.mtu) + OVERHEAD_V4,
            );
        }
    }
}

/// Reads the path to each of `peers()` every [`CHECK_EVERY`], and warns of one too small.
pub(crate) async fn run(
    mut check: PathCheck,
    peers: impl Fn() -> Vec<(Key, SocketAddr)> + Send,
) -> Result<(), Error> {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        check.check(peers()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_too_small_when_it_cannot_carry_the_mtu_and_wireguards_headers() {
        assert_eq!(too_small(1500, 1420), None, "the default fits Ethernet");
        assert_eq!(too_small(1480, 1420), None, "exactly");
        assert_eq!(too_small(1479, 1420), Some(1419));
        assert_eq!(too_small(1280, 1420), Some(1220));
        assert_eq!(
            too_small(1280, 1200),
            None,
            "--mtu 1200 on a 1,280-byte path"
        );
        assert_eq!(too_small(40, 1420), Some(0));
    }
}
