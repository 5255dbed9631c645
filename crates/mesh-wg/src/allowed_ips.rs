//! Cryptokey routing table: longest-prefix match from an IPv4 address to the owning peer.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// Maps IPv4 prefixes to a value (the owning peer's public key); each prefix has one owner.
///
/// Lookup walks the distinct prefix lengths present, longest first, doing one hash lookup per
/// length, so it costs at most 33 probes however many peers there are.
#[derive(Debug, Clone)]
pub(crate) struct AllowedIps<V> {
    /// Index = prefix length; key = masked network address.
    by_len: Vec<HashMap<u32, V>>,
}

impl<V> Default for AllowedIps<V> {
    fn default() -> Self {
        Self {
            by_len: (0..=32).map(|_| HashMap::new()).collect(),
        }
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// The prefix with its host bits cleared (the kernel stores allowed IPs this way).
pub(crate) fn normalize(net: Ipv4Network) -> Ipv4Network {
    let prefix = net.prefix();
    let addr = Ipv4Addr::from(u32::from(net.ip()) & mask(prefix));
    Ipv4Network::new(addr, prefix).expect("prefix came from a valid network")
}

impl<V: Clone + PartialEq> AllowedIps<V> {
    /// Assigns `net` to `value`, taking it away from any previous owner. Returns the previous owner.
    pub(crate) fn insert(&mut self, net: Ipv4Network, value: V) -> Option<V> {
        let net = normalize(net);
        self.by_len[usize::from(net.prefix())].insert(u32::from(net.ip()), value)
    }

    /// The value owning the longest prefix that contains `addr`.
    pub(crate) fn lookup(&self, addr: Ipv4Addr) -> Option<&V> {
        let addr = u32::from(addr);
        (0..=32u8).rev().find_map(|len| {
            let table = &self.by_len[usize::from(len)];
            if table.is_empty() {
                None
            } else {
                table.get(&(addr & mask(len)))
            }
        })
    }

    /// Removes every prefix owned by `value`.
    pub(crate) fn remove_value(&mut self, value: &V) {
        for table in &mut self.by_len {
            table.retain(|_, v| v != value);
        }
    }

    /// The prefixes of each owner that `keep` takes, longest first then by address, in one pass over the
    /// table: asking for each owner's in turn would go through every prefix once per owner.
    pub(crate) fn prefixes_by_value(
        &self,
        keep: impl Fn(&V) -> bool,
    ) -> HashMap<V, Vec<Ipv4Network>>
    where
        V: Eq + std::hash::Hash,
    {
        let mut out: HashMap<V, Vec<Ipv4Network>> = HashMap::new();
        for (len, table) in self.by_len.iter().enumerate().rev() {
            for (addr, v) in table.iter().filter(|(_, v)| keep(v)) {
                let net = Ipv4Network::new(Ipv4Addr::from(*addr), len as u8).expect("len <= 32");
                out.entry(v.clone()).or_default().push(net);
            }
        }
        for nets in out.values_mut() {
            nets.sort_by_key(|n| (std::cmp::Reverse(n.prefix()), u32::from(n.ip())));
        }
        out
    }

    /// All prefixes owned by `value`, longest first then by address.
    #[cfg(test)]
    pub(crate) fn prefixes_of(&self, value: &V) -> Vec<Ipv4Network>
    where
        V: Eq + std::hash::Hash,
    {
        self.prefixes_by_value(|v| v == value)
            .remove(value)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    /// The most specific prefix wins over a covering one.
    #[test]
    fn longest_prefix_wins() {
        let mut t = AllowedIps::default();
        t.insert(net("10.0.0.0/8"), 'a');
        t.insert(net("10.0.1.0/24"), 'b');
        t.insert(net("10.0.1.7/32"), 'c');
        assert_eq!(t.lookup("10.0.1.7".parse().unwrap()), Some(&'c'));
        assert_eq!(t.lookup("10.0.1.8".parse().unwrap()), Some(&'b'));
        assert_eq!(t.lookup("10.9.9.9".parse().unwrap()), Some(&'a'));
        assert_eq!(t.lookup("11.0.0.1".parse().unwrap()), None);
    }

    /// A default route (0.0.0.0/0) matches everything not matched by something longer.
    #[test]
    fn default_route_matches_all() {
        let mut t = AllowedIps::default();
        t.insert(net("0.0.0.0/0"), 1);
        t.insert(net("192.0.2.0/24"), 2);
        assert_eq!(t.lookup("203.0.113.1".parse().unwrap()), Some(&1));
        assert_eq!(t.lookup("192.0.2.9".parse().unwrap()), Some(&2));
    }

    /// Inserting a prefix already owned by another value moves it, as WireGuard does.
    #[test]
    fn insert_moves_ownership() {
        let mut t = AllowedIps::default();
        assert_eq!(t.insert(net("10.0.1.2/32"), 'a'), None);
        assert_eq!(t.insert(net("10.0.1.2/32"), 'b'), Some('a'));
        assert_eq!(t.lookup("10.0.1.2".parse().unwrap()), Some(&'b'));
        assert!(t.prefixes_of(&'a').is_empty());
    }

    /// Host bits are masked off on insert, so 10.0.1.5/24 is stored as 10.0.1.0/24.
    #[test]
    fn host_bits_are_masked() {
        let mut t = AllowedIps::default();
        t.insert(net("10.0.1.5/24"), 'a');
        assert_eq!(t.prefixes_of(&'a'), vec![net("10.0.1.0/24")]);
        assert_eq!(t.lookup("10.0.1.200".parse().unwrap()), Some(&'a'));
    }

    /// Each owner's prefixes from one pass, longest first then by address.
    #[test]
    fn every_owners_prefixes_come_from_one_pass() {
        let mut t = AllowedIps::default();
        for (n, v) in [
            ("10.0.9.0/24", 'a'),
            ("10.0.1.1/32", 'a'),
            ("10.0.2.0/24", 'a'),
            ("10.0.1.2/32", 'b'),
        ] {
            t.insert(net(n), v);
        }
        let all = t.prefixes_by_value(|_| true);
        assert_eq!(
            all[&'a'],
            [net("10.0.1.1/32"), net("10.0.2.0/24"), net("10.0.9.0/24")]
        );
        assert_eq!(all[&'b'], [net("10.0.1.2/32")]);
        assert_eq!(all.len(), 2);
    }

    /// Removing a value drops all of its prefixes and leaves the others.
    #[test]
    fn remove_value_drops_only_its_prefixes() {
        let mut t = AllowedIps::default();
        t.insert(net("10.0.1.1/32"), 'a');
        t.insert(net("10.0.2.0/24"), 'a');
        t.insert(net("10.0.1.2/32"), 'b');
        t.remove_value(&'a');
        assert_eq!(t.lookup("10.0.1.1".parse().unwrap()), None);
        assert_eq!(t.lookup("10.0.2.1".parse().unwrap()), None);
        assert_eq!(t.lookup("10.0.1.2".parse().unwrap()), Some(&'b'));
    }
}
