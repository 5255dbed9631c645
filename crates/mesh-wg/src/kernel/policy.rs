//! The grants between seats on the kernel backend: the verdicts of [`mesh_policy::filter`], enforced by
//! nftables on the interface. Kernel WireGuard routes by key (a decrypted packet's inner source must be in
//! its peer's allowed IPs), so a packet arriving on the interface from a peer's prefixes is that peer's.
//!
//! One table, `ip dstack_mesh_<ifname>`, holds one chain at `prerouting` priority -150: after conntrack
//! (-200), so a reply of a flow this node opened is known as one, and before DNAT (-100), so the port
//! judged is the one the peer sent to, as the userspace device judges it. What passes: ICMP, fragments
//! after the first, UDP to or from the agents' own ports, replies (`ct direction reply`: not `established`,
//! which would let a flow the peer opened outlive its grant), and what the peer's [`Reach`] allows. The rest
//! of a restricted peer's packets are dropped and counted in named counters, one per peer and reason.
//!
//! The table is replaced whole in one `nft -f -` transaction at each change, and exists only while a
//! policy is in force: with none, the interface is left as without this module.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::process::{Command, Stdio};

use ipnetwork::Ipv4Network;
use mesh_policy::Reach;
use mesh_policy::filter::{DropCounts, Dropped};

use crate::config::PeerConfig;
use crate::error::Error;

/// The chain's name in the table.
const CHAIN: &str = "inbound";

/// The counter prefix of each reason the rules can drop for (the kernel drops malformed packets itself).
const COUNTED: [(Dropped, &str); 2] = [
    (Dropped::NoGrant, "no_grant_"),
    (Dropped::Protocol, "protocol_"),
];

/// One peer as the rules see it.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerRules<'a> {
    /// Its overlay address (its /32): names its counters.
    pub(super) address: Ipv4Addr,
    /// Every prefix WireGuard routes to it: the inner sources its packets may carry.
    pub(super) sources: &'a [Ipv4Network],
    pub(super) reach: &'a Reach,
}

impl<'a> PeerRules<'a> {
    /// The peer's rules, named by its /32 (else its first prefix); `None` without allowed IPs, when nothing
    /// it sends can arrive.
    pub(super) fn of(config: &'a PeerConfig) -> Option<Self> {
        let named = config
            .allowed_ips
            .iter()
            .find(|n| n.prefix() == 32)
            .or_else(|| config.allowed_ips.first())?;
        Some(Self {
            address: named.ip(),
            sources: &config.allowed_ips,
            reach: &config.reach,
        })
    }
}

/// The reach of each peer held to one, by address; none when no policy is in force.
fn restricted(peers: &[PeerRules<'_>]) -> BTreeMap<Ipv4Addr, Reach> {
    peers
        .iter()
        .filter(|p| !p.reach.all)
        .map(|p| (p.address, p.reach.clone()))
        .collect()
}

/// Whether any peer is held to its reach: else no table is wanted.
pub(super) fn in_force(peers: &[PeerRules<'_>]) -> bool {
    peers.iter().any(|p| !p.reach.all)
}

/// The table's name: `dstack_mesh_` and the interface name with each byte other than an ASCII letter or
/// digit written `_xx` in hex, so two interfaces never share a table and nft takes it unquoted.
pub(super) fn table_name(ifname: &str) -> String {
    let mut name = String::from("dstack_mesh_");
    for b in ifname.bytes() {
        if b.is_ascii_alphanumeric() {
            name.push(char::from(b));
        } else {
            let _ = write!(name, "_{b:02x}");
        }
    }
    name
}

/// The script that replaces this interface's table with `peers`' rules, or deletes it when no policy is in
/// force. Creating the table before deleting it makes the delete succeed whether it existed or not, and
/// nft applies the whole script or none of it.
///
/// # Errors
/// [`Error::Policy`] for an interface name nft cannot quote (a `"`, a `\` or a control character).
pub(super) fn render(
    ifname: &str,
    exempt_udp: &[u16],
    peers: &[PeerRules<'_>],
) -> Result<String, Error> {
    let table = table_name(ifname);
    let mut s = format!("table ip {table} {{}}\ndelete table ip {table}\n");
    if !in_force(peers) {
        return Ok(s);
    }
    if ifname
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        return Err(Error::Policy {
            ifname: ifname.to_owned(),
            detail: "its name cannot be written in an nft rule".into(),
        });
    }
    let mut peers = peers.to_vec();
    // A HashMap hands them over: in order, an unchanged policy renders the same script, and nft is spared.
    peers.sort_by_key(|p| p.address);
    let _ = writeln!(s, "table ip {table} {{");
    for p in peers.iter().filter(|p| !p.reach.all) {
        for (_, prefix) in COUNTED {
            let _ = writeln!(s, "\tcounter {} {{}}", counter_name(prefix, p.address));
        }
    }
    let _ = writeln!(s, "\tchain {CHAIN} {{");
    let _ = writeln!(
        s,
        "\t\ttype filter hook prerouting priority -150; policy accept;"
    );
    let _ = writeln!(s, "\t\tiifname != \"{ifname}\" accept");
    s.push_str("\t\tip protocol icmp accept\n");
    s.push_str("\t\tip frag-off & 0x1fff != 0 accept\n");
    let mut exempt = exempt_udp.to_vec();
    exempt.sort_unstable();
    exempt.dedup();
    if !exempt.is_empty() {
        let ports = exempt.iter().map(u16::to_string).collect::<Vec<_>>();
        let ports = ports.join(", ");
        let _ = writeln!(s, "\t\tudp dport {{ {ports} }} accept");
        let _ = writeln!(s, "\t\tudp sport {{ {ports} }} accept");
    }
    s.push_str("\t\tct direction reply accept\n");
    // Unrestricted peers first: a prefix routed to two peers (a stale config) errs on letting through.
    for p in peers.iter().filter(|p| p.reach.all) {
        let _ = writeln!(s, "\t\tip saddr {} accept", sources(p));
    }
    for p in peers.iter().filter(|p| !p.reach.all) {
        let from = sources(p);
        for (protocol, ranges) in [("tcp", &p.reach.tcp), ("udp", &p.reach.udp)] {
            if let Some(ports) = port_set(ranges) {
                let _ = writeln!(s, "\t\tip saddr {from} {protocol} dport {ports} accept");
            }
        }
        let _ = writeln!(
            s,
            "\t\tip saddr {from} meta l4proto != {{ tcp, udp }} counter name \"{}\" drop",
            counter_name("protocol_", p.address)
        );
        let _ = writeln!(
            s,
            "\t\tip saddr {from} counter name \"{}\" drop",
            counter_name("no_grant_", p.address)
        );
    }
    s.push_str("\t}\n}\n");
    Ok(s)
}

fn counter_name(prefix: &str, address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("{prefix}{a}_{b}_{c}_{d}")
}

/// The peer's source prefixes as an nft expression: one address, one prefix, or a set of them without
/// those another contains (nft refuses overlapping intervals in a set).
fn sources(p: &PeerRules<'_>) -> String {
    let mut nets: Vec<Ipv4Network> = p
        .sources
        .iter()
        .map(|n| Ipv4Network::new(n.network(), n.prefix()).unwrap_or(*n))
        .collect();
    nets.sort_by_key(|n| (n.prefix(), n.network()));
    nets.dedup();
    let mut kept: Vec<Ipv4Network> = Vec::new();
    for n in nets {
        if !kept.iter().any(|k| k.contains(n.network())) {
            kept.push(n);
        }
    }
    kept.sort_by_key(|n| n.network());
    let shown: Vec<String> = kept
        .iter()
        .map(|n| {
            if n.prefix() == 32 {
                n.ip().to_string()
            } else {
                n.to_string()
            }
        })
        .collect();
    match shown.as_slice() {
        [] => p.address.to_string(),
        [one] => one.clone(),
        _ => format!("{{ {} }}", shown.join(", ")),
    }
}

/// The ranges as an nft set (`{ 22, 8000-8100 }`), merged where they touch; `None` for none.
fn port_set(ranges: &[RangeInclusive<u16>]) -> Option<String> {
    let mut sorted: Vec<(u16, u16)> = ranges
        .iter()
        .filter(|r| r.start() <= r.end())
        .map(|r| (*r.start(), *r.end()))
        .collect();
    sorted.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (first, last) in sorted {
        match merged.last_mut() {
            Some((_, end)) if u32::from(first) <= u32::from(*end) + 1 => *end = (*end).max(last),
            _ => merged.push((first, last)),
        }
    }
    if merged.is_empty() {
        return None;
    }
    let items: Vec<String> = merged
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    Some(format!("{{ {} }}", items.join(", ")))
}

/// Each peer's drops, from the named counters in what `nft -j list table` prints.
///
/// # Errors
/// What is wrong with the text, when it is not nft's JSON.
pub(super) fn parse_counters(json: &str) -> Result<BTreeMap<Ipv4Addr, DropCounts>, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let items = value
        .get("nftables")
        .and_then(serde_json::Value::as_array)
        .ok_or("no \"nftables\" array")?;
    let mut counts: BTreeMap<Ipv4Addr, DropCounts> = BTreeMap::new();
    for counter in items.iter().filter_map(|i| i.get("counter")) {
        let Some(name) = counter.get("name").and_then(serde_json::Value::as_str) else {
            continue;
        };
        let packets = counter
            .get("packets")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        for (why, prefix) in COUNTED {
            let address = name
                .strip_prefix(prefix)
                .and_then(|rest| rest.replace('_', ".").parse::<Ipv4Addr>().ok());
            if let Some(address) = address {
                counts.entry(address).or_default().add_n(why, packets);
            }
        }
    }
    Ok(counts)
}

/// The table of one interface as this device last put it, and the drops of the tables it replaced.
///
/// The counters start at zero with each table, so before one is replaced (or deleted) its counts are read
/// and added to `base`: per peer for the peers still there, and to `base_total` for all, so that neither a
/// peer's count nor the device's goes backwards. A packet dropped between that read and the replacement
/// (a few milliseconds, at a change of policy) goes uncounted.
#[derive(Debug)]
pub(super) struct Enforcer {
    ifname: String,
    table: String,
    exempt_udp: Vec<u16>,
    /// The script of the table in place; `None` while there is none.
    applied: Option<String>,
    /// What each restricted peer, by address, may reach under the table in place. A peer not in it is not
    /// restricted. Reported as the peer's reach, so that a change nft refused shows as not in force, and
    /// the next plan sets the peer again (which tries the table again).
    in_force: BTreeMap<Ipv4Addr, Reach>,
    base: BTreeMap<Ipv4Addr, DropCounts>,
    base_total: DropCounts,
}

impl Enforcer {
    pub(super) fn new(ifname: &str, exempt_udp: &[u16]) -> Self {
        Self {
            ifname: ifname.to_owned(),
            table: table_name(ifname),
            exempt_udp: exempt_udp.to_vec(),
            applied: None,
            in_force: BTreeMap::new(),
            base: BTreeMap::new(),
            base_total: DropCounts::default(),
        }
    }

    /// Puts `peers`' rules in place, if they changed; deletes the table when no policy is in force and
    /// this device had installed one. Without a policy nft is not needed.
    ///
    /// # Errors
    /// [`Error::Policy`] when nft is missing or refuses the script: the table as it was stays.
    pub(super) fn apply(&mut self, peers: &[PeerRules<'_>]) -> Result<(), Error> {
        let script = render(&self.ifname, &self.exempt_udp, peers)?;
        let wanted = in_force(peers).then(|| script.clone());
        if wanted == self.applied {
            self.carry(BTreeMap::new(), peers);
            self.in_force = restricted(peers);
            return Ok(());
        }
        let counted = self.current();
        nft(&["-f", "-"], Some(&script)).map_err(|detail| Error::Policy {
            ifname: self.ifname.clone(),
            detail,
        })?;
        self.carry(counted, peers);
        match (&self.applied, &wanted) {
            (None, Some(_)) => {
                tracing::info!(ifname = %self.ifname, table = %self.table, "grants between seats enforced with nftables");
            }
            (Some(_), None) => {
                tracing::info!(ifname = %self.ifname, table = %self.table, "no policy in force; nftables table deleted");
            }
            _ => {
                tracing::debug!(ifname = %self.ifname, table = %self.table, "nftables table replaced")
            }
        }
        self.applied = wanted;
        self.in_force = restricted(peers);
        Ok(())
    }

    /// What the peer at `address` may reach here under the table in place: everything when it is not held
    /// to a reach, or no table is.
    pub(super) fn reach_of(&self, address: Ipv4Addr) -> Reach {
        self.in_force
            .get(&address)
            .cloned()
            .unwrap_or_else(Reach::everything)
    }

    /// Keeps the counts of a table that is gone: per peer for `peers`, and in the device's total for all.
    fn carry(&mut self, counted: BTreeMap<Ipv4Addr, DropCounts>, peers: &[PeerRules<'_>]) {
        for (address, counts) in counted {
            self.base_total = self.base_total.plus(&counts);
            let base = self.base.entry(address).or_default();
            *base = base.plus(&counts);
        }
        self.base
            .retain(|a, _| peers.iter().any(|p| p.address == *a));
    }

    /// Each peer's drops since the device was made (while it has been a peer).
    pub(super) fn per_peer(&self) -> BTreeMap<Ipv4Addr, DropCounts> {
        let mut counts = self.base.clone();
        for (address, now) in self.current() {
            let c = counts.entry(address).or_default();
            *c = c.plus(&now);
        }
        counts
    }

    /// Every peer's drops since the device was made, those of peers gone included.
    pub(super) fn total(&self) -> DropCounts {
        self.current()
            .values()
            .fold(self.base_total, |sum, c| sum.plus(c))
    }

    /// Deletes the table, if this device installed one.
    pub(super) fn remove(&mut self) {
        if self.applied.is_none() {
            return;
        }
        match render(&self.ifname, &self.exempt_udp, &[]) {
            Ok(script) => match nft(&["-f", "-"], Some(&script)) {
                Ok(_) => {
                    self.applied = None;
                    self.in_force.clear();
                }
                Err(detail) => {
                    tracing::warn!(ifname = %self.ifname, table = %self.table, %detail, "cannot delete the nftables table")
                }
            },
            Err(e) => {
                tracing::warn!(ifname = %self.ifname, error = %e, "cannot delete the nftables table")
            }
        }
    }

    /// The counters of the table in place; none without one, or when they cannot be read.
    fn current(&self) -> BTreeMap<Ipv4Addr, DropCounts> {
        if self.applied.is_none() {
            return BTreeMap::new();
        }
        match nft(&["-j", "list", "table", "ip", &self.table], None)
            .and_then(|out| parse_counters(&out))
        {
            Ok(counts) => counts,
            Err(detail) => {
                tracing::debug!(ifname = %self.ifname, table = %self.table, %detail, "cannot read the policy's counters");
                BTreeMap::new()
            }
        }
    }
}

/// Runs `nft` with `args`, `input` on its stdin; its stdout, or what went wrong.
fn nft(args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = Command::new("nft")
        .args(args)
        .env_clear()
        .env("PATH", super::SYSTEM_PATH)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    // nft reads its whole script before it answers, so this cannot block on its output. The child is
    // waited for whatever the write did.
    let written = match (input, child.stdin.take()) {
        (Some(text), Some(mut stdin)) => stdin.write_all(text.as_bytes()),
        _ => Ok(()),
    };
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if let Err(e) = written {
        return Err(format!(
            "cannot write the script to nft ({}): {e}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "nft {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests;
