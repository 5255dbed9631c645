//! The one reconcile function: the desired peers (from the chain) against the device's actual peers, as the
//! minimal list of changes. Pure, so it is tested without a device; the caller applies the changes.
//!
//! Rules, after innernet's `PeerDiff` and Tailscale's `ToUAPI(prev)`:
//! - a peer whose key, endpoint, allowed IPs and keepalive are unchanged gets no change at all, so its
//!   session is never disturbed, and applying the result twice is a no-op;
//! - a new key is a new peer (WireGuard identifies peers by key): the old one is removed, the new added;
//! - an endpoint is not overwritten while the peer's handshake is fresh: the peer may have roamed (NAT), and
//!   the address WireGuard learnt from its authenticated packets is better than the registered one.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

/// A handshake younger than this means a live session (WireGuard's REJECT_AFTER_TIME).
pub const FRESH_HANDSHAKE: Duration = Duration::from_secs(180);

/// A peer as the mesh wants it on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPeer {
    pub public_key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub allowed_ip: Ipv4Addr,
    pub persistent_keepalive: Option<u16>,
}

/// A peer as the device has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActualPeer {
    pub public_key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<(Ipv4Addr, u8)>,
    pub persistent_keepalive: Option<u16>,
    pub last_handshake: Option<SystemTime>,
}

/// One minimal operation on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add(DesiredPeer),
    Remove {
        public_key: [u8; 32],
    },
    /// Update an existing peer in place; `None` fields stay as they are.
    Update {
        public_key: [u8; 32],
        endpoint: Option<SocketAddr>,
        allowed_ip: Option<Ipv4Addr>,
        persistent_keepalive: Option<Option<u16>>,
    },
}

fn short(key: &[u8; 32]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(key);
    format!("{}…", &b[..8])
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Add(p) => write!(
                f,
                "add peer {} at {} via {:?}",
                short(&p.public_key),
                p.allowed_ip,
                p.endpoint
            ),
            Change::Remove { public_key } => write!(f, "remove peer {}", short(public_key)),
            Change::Update {
                public_key,
                endpoint,
                allowed_ip,
                persistent_keepalive,
            } => {
                write!(f, "update peer {}:", short(public_key))?;
                if let Some(e) = endpoint {
                    write!(f, " endpoint {e}")?;
                }
                if let Some(ip) = allowed_ip {
                    write!(f, " allowed ip {ip}/32")?;
                }
                if let Some(k) = persistent_keepalive {
                    write!(f, " keepalive {k:?}")?;
                }
                Ok(())
            }
        }
    }
}

fn fresh(handshake: Option<SystemTime>, now: SystemTime) -> bool {
    handshake.is_some_and(|t| {
        now.duration_since(t)
            .map(|age| age < FRESH_HANDSHAKE)
            .unwrap_or(true)
    })
}

/// The minimal changes that turn `actual` into `desired`.
pub fn diff(desired: &[DesiredPeer], actual: &[ActualPeer], now: SystemTime) -> Vec<Change> {
    let actual: BTreeMap<[u8; 32], &ActualPeer> =
        actual.iter().map(|p| (p.public_key, p)).collect();
    let wanted: BTreeMap<[u8; 32], &DesiredPeer> =
        desired.iter().map(|p| (p.public_key, p)).collect();
    let mut changes = Vec::new();
    // Removals first: a rotated key frees its allowed IP before the new key claims it.
    for key in actual.keys() {
        if !wanted.contains_key(key) {
            changes.push(Change::Remove { public_key: *key });
        }
    }
    for (key, want) in &wanted {
        let Some(have) = actual.get(key) else {
            changes.push(Change::Add((*want).clone()));
            continue;
        };
        let endpoint = match want.endpoint {
            Some(e) if have.endpoint != Some(e) && !fresh(have.last_handshake, now) => Some(e),
            _ => None,
        };
        let allowed_ip = (have.allowed_ips != [(want.allowed_ip, 32)]).then_some(want.allowed_ip);
        let persistent_keepalive = (have.persistent_keepalive != want.persistent_keepalive)
            .then_some(want.persistent_keepalive);
        if endpoint.is_some() || allowed_ip.is_some() || persistent_keepalive.is_some() {
            changes.push(Change::Update {
                public_key: *key,
                endpoint,
                allowed_ip,
                persistent_keepalive,
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::from_secs(1_000_000);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + NOW
    }

    fn want(k: u8, ip: u8, port: u16) -> DesiredPeer {
        DesiredPeer {
            public_key: [k; 32],
            endpoint: Some(SocketAddr::from(([192, 0, 2, ip], port))),
            allowed_ip: Ipv4Addr::new(10, 0, 1, ip),
            persistent_keepalive: Some(25),
        }
    }

    fn applied(d: &DesiredPeer, handshake_age: Option<u64>) -> ActualPeer {
        ActualPeer {
            public_key: d.public_key,
            endpoint: d.endpoint,
            allowed_ips: vec![(d.allowed_ip, 32)],
            persistent_keepalive: d.persistent_keepalive,
            last_handshake: handshake_age.map(|a| now() - Duration::from_secs(a)),
        }
    }

    /// A new peer is added, a peer no longer on-chain is removed.
    #[test]
    fn adds_new_peers_and_removes_departed_ones() {
        let a = want(1, 1, 51820);
        let b = want(2, 2, 51820);
        let gone = applied(&want(3, 3, 51820), Some(5));
        let changes = diff(
            &[a.clone(), b.clone()],
            &[applied(&a, Some(5)), gone],
            now(),
        );
        assert_eq!(
            changes,
            vec![
                Change::Remove {
                    public_key: [3; 32]
                },
                Change::Add(b)
            ]
        );
    }

    /// Applying the desired state twice changes nothing the second time.
    #[test]
    fn unchanged_peers_get_no_change_so_applying_twice_is_a_no_op() {
        let peers = [want(1, 1, 51820), want(2, 2, 51820)];
        let actual: Vec<_> = peers.iter().map(|p| applied(p, Some(3))).collect();
        assert!(diff(&peers, &actual, now()).is_empty());
        assert!(diff(&[], &[], now()).is_empty());
    }

    /// A rotated key is a remove of the old peer and an add of the new one, with the same overlay address.
    #[test]
    fn a_key_change_replaces_the_peer() {
        let old = want(1, 1, 51820);
        let mut new = old.clone();
        new.public_key = [9; 32];
        let changes = diff(&[new.clone()], &[applied(&old, Some(3))], now());
        assert_eq!(
            changes,
            vec![
                Change::Remove {
                    public_key: [1; 32]
                },
                Change::Add(new)
            ]
        );
    }

    /// A moved endpoint is updated in place when the session is stale, and left alone while it is fresh
    /// (the peer may have roamed).
    #[test]
    fn endpoint_changes_respect_fresh_handshakes() {
        let old = want(1, 1, 51820);
        let moved = want(1, 1, 4000);
        let stale = diff(
            std::slice::from_ref(&moved),
            &[applied(&old, Some(600))],
            now(),
        );
        assert_eq!(
            stale,
            vec![Change::Update {
                public_key: [1; 32],
                endpoint: moved.endpoint,
                allowed_ip: None,
                persistent_keepalive: None
            }]
        );
        let never = diff(std::slice::from_ref(&moved), &[applied(&old, None)], now());
        assert_eq!(
            never.len(),
            1,
            "no handshake yet: the registered endpoint is the best we know"
        );
        assert!(
            diff(&[moved], &[applied(&old, Some(30))], now()).is_empty(),
            "fresh handshake: keep the roamed endpoint"
        );
    }

    /// Allowed IPs and keepalive are corrected in place without touching the endpoint.
    #[test]
    fn allowed_ips_and_keepalive_are_fixed_in_place() {
        let d = want(1, 1, 51820);
        let mut have = applied(&d, Some(3));
        have.allowed_ips = vec![(Ipv4Addr::new(10, 0, 1, 99), 32), (d.allowed_ip, 32)];
        have.persistent_keepalive = None;
        assert_eq!(
            diff(std::slice::from_ref(&d), &[have], now()),
            vec![Change::Update {
                public_key: [1; 32],
                endpoint: None,
                allowed_ip: Some(d.allowed_ip),
                persistent_keepalive: Some(Some(25))
            }]
        );
    }

    /// Changes read well in logs and never print a whole key.
    #[test]
    fn changes_display_short_keys() {
        let text = Change::Remove {
            public_key: [1; 32],
        }
        .to_string();
        assert_eq!(text, "remove peer AQEBAQEB…");
    }
}
