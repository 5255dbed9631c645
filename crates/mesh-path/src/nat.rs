//! What a node knows of the NAT in front of it, from what STUN servers saw ([`classify`]), and whether two
//! nodes' NATs let a hole be punched between them ([`can_punch`]). Pure.
//!
//! A NAT's **mapping** (RFC 4787 §4.1) is what matters to a peer: with an endpoint-independent mapping the
//! socket keeps one public address and port whatever it sends to, so the address one STUN server saw is the
//! one a peer can send to. With a mapping that depends on the destination ("symmetric"), every new peer sees
//! a port nobody can tell in advance. Filtering (which senders may come in) is not told apart here: it needs
//! servers that answer from another address (RFC 5780), and a punch sends from both sides at once, which
//! opens every filter except a port-restricted one toward a symmetric peer; that pair is tried, fails,
//! and stays relayed.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::stun::ServerResult;

/// How a NAT maps the device's socket, as far as the STUN servers could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Mapping {
    /// No server answered, or only one did (one answer gives the address, not the behaviour).
    #[default]
    Unknown,
    /// The servers saw the socket's own address: no NAT in front of it.
    NoNat,
    /// Every server saw the same address and port.
    EndpointIndependent,
    /// Servers on one IP address saw the same mapping, servers on different ones did not.
    AddressDependent,
    /// Two ports of one server's address saw different mappings: "symmetric".
    AddressAndPortDependent,
    /// Servers on different addresses saw different mappings, and no server was asked on two ports to tell
    /// which of the two dependent kinds this is.
    EndpointDependent,
}

impl Mapping {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::NoNat => "none",
            Self::EndpointIndependent => "endpoint-independent",
            Self::AddressDependent => "address-dependent",
            Self::AddressAndPortDependent => "address-and-port-dependent",
            Self::EndpointDependent => "endpoint-dependent",
        }
    }

    /// Whether each destination gets its own mapping, so that the address a server saw is of no use to a peer.
    pub fn depends_on_destination(self) -> bool {
        matches!(
            self,
            Self::AddressDependent | Self::AddressAndPortDependent | Self::EndpointDependent
        )
    }

    /// The byte it travels as in candidate messages.
    pub fn to_wire(self) -> u8 {
        match self {
            Self::Unknown => 0,
            Self::NoNat => 1,
            Self::EndpointIndependent => 2,
            Self::AddressDependent => 3,
            Self::AddressAndPortDependent => 4,
            Self::EndpointDependent => 5,
        }
    }

    pub fn from_wire(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Unknown,
            1 => Self::NoNat,
            2 => Self::EndpointIndependent,
            3 => Self::AddressDependent,
            4 => Self::AddressAndPortDependent,
            5 => Self::EndpointDependent,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the device learnt of its NAT in its latest round of STUN requests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NatReport {
    pub mapping: Mapping,
    /// The distinct public addresses the servers saw, in the servers' order.
    pub mapped: Vec<SocketAddr>,
    /// Each server asked, and its answer.
    pub servers: Vec<ServerResult>,
    /// When the round ended.
    pub checked_at: Option<SystemTime>,
}

impl NatReport {
    /// The report of a round whose `results` came in by `checked_at`, for a socket bound at `local` (its
    /// interface addresses with the listen port).
    pub fn new(results: Vec<ServerResult>, local: &[SocketAddr], checked_at: SystemTime) -> Self {
        let mut mapped: Vec<SocketAddr> = Vec::new();
        for m in results.iter().filter_map(|r| r.mapped) {
            if !mapped.contains(&m) {
                mapped.push(m);
            }
        }
        Self {
            mapping: classify(&results, local),
            mapped,
            servers: results,
            checked_at: Some(checked_at),
        }
    }

    /// The fastest answer, for the log.
    pub fn best_rtt(&self) -> Option<Duration> {
        self.servers.iter().filter_map(|s| s.rtt).min()
    }
}

/// The mapping behaviour the `results` show, for a socket whose own addresses are `local`.
pub fn classify(results: &[ServerResult], local: &[SocketAddr]) -> Mapping {
    let answered: Vec<(SocketAddr, SocketAddr)> = results
        .iter()
        .filter_map(|r| Some((r.server, r.mapped?)))
        .collect();
    if answered.iter().any(|(_, m)| local.contains(m)) {
        return Mapping::NoNat;
    }
    if answered.len() < 2 {
        return Mapping::Unknown;
    }
    let mut same_ip_differs = false;
    let mut same_ip_agrees = false;
    let mut other_ip_differs = false;
    for (i, (server_a, mapped_a)) in answered.iter().enumerate() {
        for (server_b, mapped_b) in &answered[i + 1..] {
            let same_ip = server_a.ip() == server_b.ip();
            match (same_ip, mapped_a == mapped_b) {
                (true, false) => same_ip_differs = true,
                (true, true) => same_ip_agrees = true,
                (false, false) => other_ip_differs = true,
                (false, true) => {}
            }
        }
    }
    match (same_ip_differs, other_ip_differs, same_ip_agrees) {
        (true, _, _) => Mapping::AddressAndPortDependent,
        (false, true, true) => Mapping::AddressDependent,
        (false, true, false) => Mapping::EndpointDependent,
        (false, false, _) => Mapping::EndpointIndependent,
    }
}

/// Whether a hole can be punched between a node whose NAT maps as `ours` and one whose NAT maps as
/// `theirs`; if not, why, for the peer's status.
///
/// # Errors
/// When both map per destination: each side's packets come from a port the other cannot know, and neither
/// side's filter opens for them.
pub fn can_punch(ours: Mapping, theirs: Mapping) -> Result<(), &'static str> {
    if ours.depends_on_destination() && theirs.depends_on_destination() {
        return Err(
            "both nodes' NATs map each destination to a new port (symmetric): no candidate can work",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(server: &str, mapped: Option<&str>) -> ServerResult {
        ServerResult {
            server: server.parse().unwrap(),
            mapped: mapped.map(|m| m.parse().unwrap()),
            rtt: mapped.map(|_| Duration::from_millis(1)),
        }
    }

    const LOCAL: &str = "10.0.2.100:51820";

    fn classified(results: &[ServerResult]) -> Mapping {
        classify(results, &[LOCAL.parse().unwrap()])
    }

    /// Three servers, two of them on one address: what each pattern of answers says of the mapping.
    #[test]
    fn the_mapping_is_told_from_which_servers_saw_the_same_port() {
        let (a, a_alt, b) = ("192.0.2.1:3478", "192.0.2.1:3479", "192.0.2.2:3478");
        let cases = [
            (
                "one port for all",
                [40000, 40000, 40000],
                Mapping::EndpointIndependent,
            ),
            (
                "a new port for another port of one server: symmetric",
                [40000, 40001, 40002],
                Mapping::AddressAndPortDependent,
            ),
            (
                "one port per server address",
                [40000, 40000, 40002],
                Mapping::AddressDependent,
            ),
        ];
        for (what, ports, want) in cases {
            let r: Vec<ServerResult> = [a, a_alt, b]
                .iter()
                .zip(ports)
                .map(|(server, port)| result(server, Some(&format!("203.0.113.5:{port}"))))
                .collect();
            assert_eq!(classified(&r), want, "{what}");
        }
        let two_addresses = [
            result(a, Some("203.0.113.5:40000")),
            result(b, Some("203.0.113.5:40002")),
        ];
        assert_eq!(
            classified(&two_addresses),
            Mapping::EndpointDependent,
            "servers on two addresses only cannot tell which dependent kind"
        );
    }

    #[test]
    fn one_answer_or_none_tells_no_behaviour_and_the_own_address_means_no_nat() {
        let one = [
            result("192.0.2.1:3478", Some("203.0.113.5:40000")),
            result("192.0.2.2:3478", None),
        ];
        assert_eq!(classified(&one), Mapping::Unknown);
        assert_eq!(classified(&[]), Mapping::Unknown);
        let public = [result("192.0.2.1:3478", Some(LOCAL))];
        assert_eq!(classified(&public), Mapping::NoNat);
        let report = NatReport::new(one.to_vec(), &[], SystemTime::UNIX_EPOCH);
        assert_eq!(report.mapped, ["203.0.113.5:40000".parse().unwrap()]);
    }

    #[test]
    fn only_two_destination_dependent_mappings_cannot_punch() {
        use Mapping::*;
        let all = [
            Unknown,
            NoNat,
            EndpointIndependent,
            AddressDependent,
            AddressAndPortDependent,
            EndpointDependent,
        ];
        for a in all {
            for b in all {
                let both = a.depends_on_destination() && b.depends_on_destination();
                assert_eq!(can_punch(a, b).is_err(), both, "{a} with {b}");
            }
            assert_eq!(Mapping::from_wire(a.to_wire()), Some(a));
        }
        assert_eq!(Mapping::from_wire(6), None);
    }
}
