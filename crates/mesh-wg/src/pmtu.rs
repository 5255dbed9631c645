//! Whether each peer's path carries the tunnel's datagrams whole. WireGuard's datagrams may not be
//! fragmented (the userspace device sends them with DF set, as the kernel's does), so on a path that carries
//! fewer bytes than the tunnel's MTU plus WireGuard's overlay, every packet above the difference is lost,
//! and TCP inside the tunnel stalls without ever learning why: the ICMP "fragmentation needed" goes to this
//! node, not to the application. The kernel keeps what it learns of a path's MTU (from that ICMP, or the
//! MTU of the interface toward the peer) in its routing table; every [`CHECK_EVERY`] (longer with many
//! peers: [`check_period`]) the route to each peer on UDP is read, and a path too small is logged once, with
//! the `--mtu` that would fit.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::Error;
use crate::netlink::{Netlink, RouteMtu};
use wg_key::Key;

/// What WireGuard adds to each packet over IPv4: a 20-byte IP header, 8 bytes of UDP and 32 of WireGuard.
pub(crate) const OVERHEAD_V4: u32 = 60;
/// How often the peers' paths are read, at most.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(5);
/// The route reads a second the checks average at most. Each is a netlink round trip: at 999 peers, reading
/// every path every 5 s (with the link of each, 400 round trips a second) was a fifth of an idle agent's CPU.
pub(crate) const READS_PER_SECOND: u32 = 50;

/// How long from one check of `peers` paths to the next: [`CHECK_EVERY`], stretched so that the reads stay
/// under [`READS_PER_SECOND`]. A path's MTU the kernel learnt from an ICMP stays on its route for ten
/// minutes (`net.ipv4.route.mtu_expires`), so a check every 20 s at a thousand peers still finds it.
pub(crate) fn check_period(peers: usize) -> Duration {
    let peers = u32::try_from(peers).unwrap_or(u32::MAX);
    CHECK_EVERY.max(Duration::from_secs(1) * peers.div_ceil(READS_PER_SECOND))
}

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

    /// Reads the path to each peer's UDP endpoint, and logs those too small for the tunnel. Each interface's
    /// MTU is read once a check, however many routes leave by it.
    pub(crate) async fn check(&mut self, peers: Vec<(Key, SocketAddr)>) {
        let keys: HashSet<Key> = peers.iter().map(|(k, _)| *k).collect();
        self.logged.retain(|k, _| keys.contains(k));
        let mut links: HashMap<u32, Option<u32>> = HashMap::new();
        for (key, endpoint) in peers {
            let IpAddr::V4(ip) = endpoint.ip() else {
                continue;
            };
            if ip.is_loopback() {
                // A relay bridge of the kernel backend's: its path is the relay's TCP.
                continue;
            }
            let route = match self.netlink.route_mtu(ip).await {
                Ok(Some(route)) => route,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(peer = ?key, %endpoint, error = %e, "cannot read the route to the peer");
                    continue;
                }
            };
            let path_mtu = match route {
                RouteMtu::Learnt(mtu) => mtu,
                RouteMtu::Interface(index) => {
                    let link = match links.get(&index) {
                        Some(link) => *link,
                        None => {
                            let link = self.netlink.link_mtu(index).await.unwrap_or_else(|e| {
                                tracing::debug!(index, error = %e, "cannot read the interface toward a peer");
                                None
                            });
                            *links.entry(index).or_insert(link)
                        }
                    };
                    let Some(mtu) = link else { continue };
                    mtu
                }
            };
            let Some(fits) = too_small(path_mtu, self.mtu) else {
                self.logged.remove(&key);
                continue;
            };
            if self.logged.insert(key, path_mtu) == Some(path_mtu) {
                continue;
            }
            let learnt = if matches!(route, RouteMtu::Learnt(_)) {
                "learnt from an ICMP 'fragmentation needed' on the way"
            } else {
                "the MTU of the interface toward it"
            };
            tracing::warn!(
                event = "path.mtu_too_small",
                peer = ?key,
                %endpoint,
                path_mtu,
                mtu = self.mtu,
                "the path to this peer carries at most {} bytes a packet ({learnt}), but the tunnel's MTU of {} needs {}: \
                 packets over {fits} bytes to it are lost, and TCP through the tunnel stalls. Start every agent with \
                 --mtu {fits} or less (DSTACK_MESH_MTU)",
                path_mtu,
                self.mtu,
                u32::from(self.mtu) + OVERHEAD_V4,
            );
        }
    }
}

/// Reads the path to each of `peers()` every [`check_period`], and warns of one too small.
pub(crate) async fn run(
    mut check: PathCheck,
    peers: impl Fn() -> Vec<(Key, SocketAddr)> + Send,
) -> Result<(), Error> {
    loop {
        let peers = peers();
        let period = check_period(peers.len());
        check.check(peers).await;
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_peers_stretch_the_period_so_the_reads_stay_under_the_rate() {
        assert_eq!(check_period(0), CHECK_EVERY);
        assert_eq!(check_period(250), CHECK_EVERY, "a /24 is read every 5 s");
        assert_eq!(check_period(999), Duration::from_secs(20));
        assert_eq!(check_period(10_000), Duration::from_secs(200));
        for peers in [1, 250, 251, 999, 10_000, 65_534] {
            let rate = peers as f64 / check_period(peers).as_secs_f64();
            assert!(
                rate <= f64::from(READS_PER_SECOND),
                "{peers} peers: {rate} reads a second"
            );
        }
    }

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
