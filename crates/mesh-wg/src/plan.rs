//! The one plan: the peers an interface should have against the peers it has, as the minimal list of
//! changes, and applying them to a [`PeerTable`]. [`plan`] is pure, so it is tested without a device.
//!
//! Rules, after innernet's `PeerDiff` and Tailscale's `ToUAPI(prev)`:
//! - a peer whose key, endpoint, allowed IPs and keepalive are unchanged gets no change at all, so its
//!   session is never disturbed, and planning again after applying gives nothing;
//! - a new key is a new peer (WireGuard names peers by key): the old one is removed, the new added;
//! - an endpoint is not overwritten while the peer's handshake is fresh: the peer may have roamed (NAT), and
//!   the address WireGuard learnt from its authenticated packets is better than the registered one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::config::{PeerConfig, PeerStatus};
use crate::error::Error;
use wg_key::Key;

/// A handshake younger than this means a live session: a session key is valid for REJECT_AFTER_TIME
/// (180 s) after its handshake, and with a 25 s keepalive a live peer renews it every two minutes.
pub const FRESH_HANDSHAKE: Duration = Duration::from_secs(180);

/// Whether a peer whose latest handshake was at `last` has a live session at `now`.
pub fn handshake_is_fresh(last: Option<SystemTime>, now: SystemTime) -> bool {
    last.is_some_and(|t| {
        now.duration_since(t)
            .map(|age| age < FRESH_HANDSHAKE)
            .unwrap_or(true)
    })
}

/// One minimal operation on an interface's peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A peer the interface lacks.
    Add(PeerConfig),
    /// A peer the interface has, set again in place: its allowed IPs or keepalive changed, or its endpoint
    /// (an endpoint of `None` keeps the current one, which may have roamed).
    Update(PeerConfig),
    /// A peer the interface should no longer have.
    Remove(Key),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ips = |p: &PeerConfig| {
            p.allowed_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Change::Add(p) => {
                write!(f, "add peer {:?} at {}", p.public_key, ips(p))?;
                match p.endpoint {
                    Some(e) => write!(f, " via {e}"),
                    None => f.write_str(" with no endpoint"),
                }
            }
            Change::Update(p) => {
                write!(f, "update peer {:?}: allowed IPs {}", p.public_key, ips(p))?;
                if let Some(e) = p.endpoint {
                    write!(f, ", endpoint {e}")?;
                }
                write!(f, ", keepalive {:?}", p.persistent_keepalive)
            }
            Change::Remove(key) => write!(f, "remove peer {key:?}"),
        }
    }
}

/// Keepalive 0 and none are the same to WireGuard.
fn keepalive(k: Option<u16>) -> Option<u16> {
    k.filter(|&s| s != 0)
}

/// The minimal changes that turn the peers an interface `has` into those it should have (`want`), at `now`.
pub fn plan(want: &[PeerConfig], has: &[PeerStatus], now: SystemTime) -> Vec<Change> {
    // Both sides sorted by key and walked together: no map is built for a thousand peers.
    let has = by_key(has, |p| p.public_key);
    let want = by_key(want, |p| p.public_key);
    let mut changes = Vec::new();
    // Removals first: a rotated key frees its allowed IP before the new key claims it.
    let mut wanted_keys = want.iter().map(|w| w.public_key).peekable();
    for current in &has {
        while wanted_keys.next_if(|k| *k < current.public_key).is_some() {}
        if wanted_keys.peek() != Some(&current.public_key) {
            changes.push(Change::Remove(current.public_key));
        }
    }
    let mut had = has.iter().peekable();
    for wanted in want {
        while had.next_if(|h| h.public_key < wanted.public_key).is_some() {}
        let Some(current) = had.next_if(|h| h.public_key == wanted.public_key) else {
            changes.push(Change::Add(wanted.clone()));
            continue;
        };
        let endpoint = match wanted.endpoint {
            Some(e)
                if current.endpoint != Some(e)
                    && !handshake_is_fresh(current.last_handshake, now) =>
            {
                Some(e)
            }
            _ => None,
        };
        // Sorted copies only when the lists differ as they are: a plan of a thousand unchanged peers
        // allocates nothing for them.
        let allowed_changed = current.allowed_ips != wanted.allowed_ips && {
            let mut allowed_now = current.allowed_ips.clone();
            let mut allowed_wanted = wanted.allowed_ips.clone();
            allowed_now.sort();
            allowed_wanted.sort();
            allowed_now != allowed_wanted
        };
        let keepalive_changed =
            keepalive(current.persistent_keepalive) != keepalive(wanted.persistent_keepalive);
        let relay_changed = current.relay != wanted.relay;
        let reach_changed = current.reach != wanted.reach;
        if endpoint.is_some()
            || allowed_changed
            || keepalive_changed
            || relay_changed
            || reach_changed
        {
            changes.push(Change::Update(PeerConfig {
                endpoint,
                ..wanted.clone()
            }));
        }
    }
    changes
}

/// `items` sorted by `key`, the last of any that share a key taken (as a map built from them would).
fn by_key<T>(items: &[T], key: impl Fn(&T) -> Key) -> Vec<&T> {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by_key(|t| key(t));
    sorted
        .chunk_by(|a, b| key(a) == key(b))
        .filter_map(|run| run.last().copied())
        .collect()
}

/// An interface's peers, as [`plan`]'s changes are applied to them: the userspace device, the kernel's,
/// or a [`MemoryTable`].
pub trait PeerTable {
    /// The peers the interface has now, with their handshakes and counters.
    fn peers(&self) -> Vec<PeerStatus>;
    /// Those of [`PeerTable::peers`] whose keys are among `keys`: what a plan for a few seats compares
    /// against, without reading a thousand peers' statuses.
    fn peers_of(&self, keys: &[Key]) -> Vec<PeerStatus> {
        let mut peers = self.peers();
        peers.retain(|p| keys.contains(&p.public_key));
        peers
    }
    /// Adds the peer, or sets an existing one in place without disturbing its session.
    ///
    /// # Errors
    /// The interface's error when the peer cannot be set.
    fn set_peer(&self, peer: PeerConfig) -> Result<(), Error>;
    /// Removes the peer; whether it was there.
    fn remove_peer(&self, key: &Key) -> bool;
}

impl<T: PeerTable + ?Sized> PeerTable for std::sync::Arc<T> {
    fn peers(&self) -> Vec<PeerStatus> {
        (**self).peers()
    }

    fn peers_of(&self, keys: &[Key]) -> Vec<PeerStatus> {
        (**self).peers_of(keys)
    }

    fn set_peer(&self, peer: PeerConfig) -> Result<(), Error> {
        (**self).set_peer(peer)
    }

    fn remove_peer(&self, key: &Key) -> bool {
        (**self).remove_peer(key)
    }
}

/// Applies `changes` in order; every one is tried, and those that failed come back with their error.
pub fn apply(table: &impl PeerTable, changes: &[Change]) -> Vec<(Change, Error)> {
    let mut failed = Vec::new();
    for change in changes {
        let result = match change {
            Change::Add(p) | Change::Update(p) => table.set_peer(p.clone()),
            Change::Remove(key) => {
                table.remove_peer(key);
                Ok(())
            }
        };
        if let Err(e) = result {
            failed.push((change.clone(), e));
        }
    }
    failed
}

/// Peers in memory, as an interface would hold them: for testing what drives an interface without one.
/// Setting a peer keeps its handshake and counters, as a device does; [`MemoryTable::handshake`] makes one.
#[derive(Debug, Default)]
pub struct MemoryTable {
    peers: Mutex<BTreeMap<Key, PeerStatus>>,
}

impl MemoryTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, PeerStatus>> {
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a completed handshake with `key` at `at`, as if the peer had answered.
    pub fn handshake(&self, key: &Key, at: SystemTime) {
        if let Some(p) = self.lock().get_mut(key) {
            p.last_handshake = Some(at);
        }
    }

    /// Records that `key` was heard from at `at`, as if it had answered a probe.
    pub fn heard(&self, key: &Key, at: std::time::Instant) {
        if let Some(p) = self.lock().get_mut(key) {
            p.last_heard = Some(at);
        }
    }
}

impl PeerTable for MemoryTable {
    fn peers(&self) -> Vec<PeerStatus> {
        self.lock().values().cloned().collect()
    }

    fn peers_of(&self, keys: &[Key]) -> Vec<PeerStatus> {
        let peers = self.lock();
        keys.iter().filter_map(|k| peers.get(k).cloned()).collect()
    }

    fn set_peer(&self, peer: PeerConfig) -> Result<(), Error> {
        let mut peers = self.lock();
        let entry = peers.entry(peer.public_key).or_insert_with(|| PeerStatus {
            peer_relay: None,
            health_timeout: crate::DEFAULT_PEER_TIMEOUT,
            public_key: peer.public_key,
            endpoint: None,
            relay: None,
            path: mesh_path::path::PathKind::Direct,
            punch: crate::config::PunchStatus::default(),
            allowed_ips: Vec::new(),
            last_handshake: None,
            last_heard: None,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: None,
            relay_error: None,
            reach: crate::Reach::everything(),
            policy_dropped: crate::DropCounts::default(),
        });
        if peer.endpoint.is_some() {
            entry.endpoint = peer.endpoint;
        }
        entry.relay = peer.relay;
        entry.reach = peer.reach;
        entry.allowed_ips = peer.allowed_ips;
        entry.persistent_keepalive = keepalive(peer.persistent_keepalive);
        Ok(())
    }

    fn remove_peer(&self, key: &Key) -> bool {
        self.lock().remove(key).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnetwork::Ipv4Network;
    use std::net::{Ipv4Addr, SocketAddr};

    const NOW: Duration = Duration::from_secs(1_000_000);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + NOW
    }

    fn key(k: u8) -> Key {
        Key::from_bytes([k; 32])
    }

    fn want(k: u8, ip: u8, port: u16) -> PeerConfig {
        PeerConfig {
            public_key: key(k),
            endpoint: Some(SocketAddr::from(([192, 0, 2, ip], port))),
            allowed_ips: vec![Ipv4Network::new(Ipv4Addr::new(10, 0, 1, ip), 32).unwrap()],
            persistent_keepalive: Some(25),
            relay: None,
            reach: crate::Reach::everything(),
        }
    }

    fn applied(d: &PeerConfig, handshake_age: Option<u64>) -> PeerStatus {
        PeerStatus {
            peer_relay: None,
            health_timeout: crate::DEFAULT_PEER_TIMEOUT,
            public_key: d.public_key,
            endpoint: d.endpoint,
            relay: d.relay.clone(),
            path: mesh_path::path::PathKind::Direct,
            punch: crate::config::PunchStatus::default(),
            allowed_ips: d.allowed_ips.clone(),
            persistent_keepalive: d.persistent_keepalive,
            relay_error: None,
            last_handshake: handshake_age.map(|a| now() - Duration::from_secs(a)),
            last_heard: None,
            rx_bytes: 0,
            tx_bytes: 0,
            reach: d.reach.clone(),
            policy_dropped: crate::DropCounts::default(),
        }
    }

    /// The same allowed IPs in another order are no change; another set of them is an update in place.
    #[test]
    fn allowed_ips_are_compared_as_a_set() {
        let mut a = want(1, 1, 51820);
        a.allowed_ips
            .push(Ipv4Network::new(Ipv4Addr::new(10, 9, 0, 0), 16).unwrap());
        let mut has = applied(&a, Some(5));
        has.allowed_ips.reverse();
        assert!(plan(std::slice::from_ref(&a), &[has.clone()], now()).is_empty());
        has.allowed_ips.pop();
        assert_eq!(
            plan(std::slice::from_ref(&a), &[has], now()),
            vec![Change::Update(PeerConfig {
                endpoint: None,
                ..a.clone()
            })]
        );
    }

    /// A peer whose reach here changes (a grant added or taken away) is set again in place, even with a
    /// live session; the same reach is no change.
    #[test]
    fn a_changed_reach_is_an_update_in_place() {
        let a = want(1, 1, 51820);
        let has = [applied(&a, Some(5))];
        assert!(plan(std::slice::from_ref(&a), &has, now()).is_empty());
        let b = PeerConfig {
            reach: crate::Reach {
                all: false,
                tcp: vec![5432..=5432],
                udp: Vec::new(),
            },
            ..a.clone()
        };
        assert_eq!(
            plan(std::slice::from_ref(&b), &has, now()),
            vec![Change::Update(PeerConfig {
                endpoint: None,
                ..b.clone()
            })]
        );
    }

    /// A peer whose relay appears, changes or goes is set again in place, even with a live session; an
    /// unchanged relay is no change.
    #[test]
    fn a_changed_relay_is_an_update_in_place() {
        let relay = |host: &str| {
            Some(crate::RelayTarget {
                host: host.into(),
                port: 443,
            })
        };
        let mut a = want(1, 1, 51820);
        a.relay = relay("ab-51820.mesh.test");
        let has = [applied(&a, Some(5))];
        assert!(plan(std::slice::from_ref(&a), &has, now()).is_empty());
        for changed in [relay("cd-51820.mesh.test"), None] {
            let b = PeerConfig {
                relay: changed,
                ..a.clone()
            };
            assert_eq!(
                plan(std::slice::from_ref(&b), &has, now()),
                vec![Change::Update(PeerConfig {
                    endpoint: None,
                    ..b.clone()
                })]
            );
        }
    }

    /// A new peer is added, a peer no longer wanted is removed.
    #[test]
    fn adds_new_peers_and_removes_departed_ones() {
        let a = want(1, 1, 51820);
        let b = want(2, 2, 51820);
        let gone = applied(&want(3, 3, 51820), Some(5));
        let changes = plan(
            &[a.clone(), b.clone()],
            &[applied(&a, Some(5)), gone],
            now(),
        );
        assert_eq!(changes, vec![Change::Remove(key(3)), Change::Add(b)]);
    }

    /// Planning again after applying changes nothing.
    #[test]
    fn unchanged_peers_get_no_change_so_planning_again_is_a_no_op() {
        let peers = [want(1, 1, 51820), want(2, 2, 51820)];
        let has: Vec<_> = peers.iter().map(|p| applied(p, Some(3))).collect();
        assert!(plan(&peers, &has, now()).is_empty());
        assert!(plan(&[], &[], now()).is_empty());
        let table = MemoryTable::default();
        assert!(apply(&table, &plan(&peers, &table.peers(), now())).is_empty());
        assert!(
            plan(&peers, &table.peers(), now()).is_empty(),
            "applied once is enough"
        );
    }

    /// A rotated key is a remove of the old peer and an add of the new one, with the same overlay address.
    #[test]
    fn a_key_change_replaces_the_peer() {
        let old = want(1, 1, 51820);
        let new = PeerConfig {
            public_key: key(9),
            ..old.clone()
        };
        let changes = plan(std::slice::from_ref(&new), &[applied(&old, Some(3))], now());
        assert_eq!(changes, vec![Change::Remove(key(1)), Change::Add(new)]);
    }

    /// A moved endpoint is updated in place when the session is stale, and left alone while it is fresh
    /// (the peer may have roamed).
    #[test]
    fn endpoint_changes_respect_fresh_handshakes() {
        let old = want(1, 1, 51820);
        let moved = want(1, 1, 4000);
        let stale = plan(
            std::slice::from_ref(&moved),
            &[applied(&old, Some(600))],
            now(),
        );
        assert_eq!(stale, vec![Change::Update(moved.clone())]);
        let never = plan(std::slice::from_ref(&moved), &[applied(&old, None)], now());
        assert_eq!(
            never.len(),
            1,
            "no handshake yet: the registered endpoint is the best we know"
        );
        assert!(
            plan(&[moved], &[applied(&old, Some(30))], now()).is_empty(),
            "fresh handshake: keep the roamed endpoint"
        );
    }

    /// Allowed IPs and keepalive are corrected in place, keeping the endpoint.
    #[test]
    fn allowed_ips_and_keepalive_are_fixed_in_place() {
        let d = want(1, 1, 51820);
        let mut has = applied(&d, Some(3));
        has.allowed_ips
            .push(Ipv4Network::new(Ipv4Addr::new(10, 0, 1, 99), 32).unwrap());
        has.persistent_keepalive = None;
        assert_eq!(
            plan(std::slice::from_ref(&d), &[has], now()),
            vec![Change::Update(PeerConfig {
                endpoint: None,
                ..d
            })]
        );
    }

    /// A handshake is fresh for 180 s, and one from the future (a clock step) counts as fresh.
    #[test]
    fn handshakes_are_fresh_for_180_seconds() {
        let at = |age: u64| Some(now() - Duration::from_secs(age));
        assert!(handshake_is_fresh(at(179), now()));
        assert!(!handshake_is_fresh(at(180), now()));
        assert!(!handshake_is_fresh(None, now()));
        assert!(handshake_is_fresh(
            Some(now() + Duration::from_secs(5)),
            now()
        ));
    }

    /// Changes read well in logs and never print a whole key.
    #[test]
    fn changes_display_short_keys() {
        assert_eq!(Change::Remove(key(1)).to_string(), "remove peer AQEBAQEB…");
        assert_eq!(
            Change::Add(want(1, 1, 51820)).to_string(),
            "add peer AQEBAQEB… at 10.0.1.1/32 via 192.0.2.1:51820"
        );
    }

    proptest::proptest! {
        /// Whatever peers the interface has and whichever it should, in any order: the plan removes before it
        /// adds, names each key once, and applied leaves the interface with exactly the peers wanted, the
        /// last of a key listed twice winning; planning again then gives nothing.
        #[test]
        fn any_plan_applied_leaves_exactly_the_peers_wanted(
            has in proptest::collection::vec((0u8..24, 1u8..4), 0..20),
            want_keys in proptest::collection::vec((0u8..24, 1u8..4), 0..20),
        ) {
            let table = MemoryTable::default();
            for (k, ip) in &has {
                table.set_peer(want(*k, *ip, 51820)).unwrap();
            }
            let wanted: Vec<PeerConfig> = want_keys.iter().map(|(k, ip)| want(*k, *ip, 51820)).collect();
            let changes = plan(&wanted, &table.peers(), now());
            let first_add = changes.iter().position(|c| !matches!(c, Change::Remove(_)));
            let last_remove = changes.iter().rposition(|c| matches!(c, Change::Remove(_)));
            proptest::prop_assert!(last_remove.is_none() || first_add.is_none() || last_remove < first_add);
            let keys: Vec<Key> = (changes.iter())
                .map(|c| match c {
                    Change::Add(p) | Change::Update(p) => p.public_key,
                    Change::Remove(k) => *k,
                })
                .collect();
            let unique: std::collections::BTreeSet<Key> = keys.iter().copied().collect();
            proptest::prop_assert_eq!(unique.len(), keys.len());
            proptest::prop_assert!(apply(&table, &changes).is_empty());
            let last: BTreeMap<Key, &PeerConfig> = wanted.iter().map(|p| (p.public_key, p)).collect();
            let now_has = table.peers();
            proptest::prop_assert_eq!(now_has.len(), last.len());
            for p in &now_has {
                proptest::prop_assert_eq!(&p.allowed_ips, &last[&p.public_key].allowed_ips);
            }
            proptest::prop_assert!(plan(&wanted, &now_has, now()).is_empty());
        }
    }
}
