//! The grants between seats, as `/v1/status` and `/v1/peers` show them.

use serde::{Deserialize, Serialize};

/// The cluster's policy as this node's interface enforces it, and what it dropped here (`/v1/status`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// In force: a peer reaches only what a grant allows it. Not in force: every seat reaches every port.
    pub enforced: bool,
    /// The contract's policy version that the interface enforces: one more at every change.
    pub version: u64,
    /// The version last read from the chain, while the interface enforces another; absent once it holds it.
    /// A change is in force here when `version` names it and this is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// How many grants it holds.
    pub grants: usize,
    /// This node's tags (its seat's and its app's), by name.
    #[serde(default)]
    pub own_tags: Vec<String>,
    /// Peers' packets dropped here since the agent started, by why.
    #[serde(default)]
    pub dropped: PolicyDrops,
}

/// Packets dropped by the policy, by why: no grant lets the peer reach the port (`noGrant`), a protocol no
/// grant can name (`protocol`: neither ICMP, TCP nor UDP), or too short to judge (`malformed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDrops {
    #[serde(default)]
    pub no_grant: u64,
    #[serde(default)]
    pub protocol: u64,
    #[serde(default)]
    pub malformed: u64,
}

impl PolicyDrops {
    /// Each count with its rule's name, as the metrics label it.
    pub fn by_rule(&self) -> [(&'static str, u64); 3] {
        [
            ("no-grant", self.no_grant),
            ("protocol", self.protocol),
            ("malformed", self.malformed),
        ]
    }
}

/// What the policy lets pass between this node and one peer (`/v1/peers`, while a policy is in force).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerPolicy {
    /// The ports the peer may open flows to here, as in force on this node's interface.
    pub reaches_here: Ports,
    /// The ports this node may open flows to on the peer, by the grants (the peer enforces them).
    pub reachable_there: Ports,
    /// The peer's packets dropped here, by why.
    #[serde(default)]
    pub dropped: PolicyDrops,
}

/// Destination ports by protocol, each a port (`"5432"`) or a range (`"8000-8080"`), in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ports {
    #[serde(default)]
    pub tcp: Vec<String>,
    #[serde(default)]
    pub udp: Vec<String>,
}

impl Ports {
    /// The TCP ports, as ranges; an entry that is neither a port nor a range is left out.
    pub fn tcp_ranges(&self) -> Vec<std::ops::RangeInclusive<u16>> {
        self.tcp.iter().filter_map(|p| parse_range(p)).collect()
    }

    /// `ranges` as the API writes them.
    pub fn render(ranges: &[std::ops::RangeInclusive<u16>]) -> Vec<String> {
        ranges
            .iter()
            .map(|r| {
                if r.start() == r.end() {
                    r.start().to_string()
                } else {
                    format!("{}-{}", r.start(), r.end())
                }
            })
            .collect()
    }
}

/// `"5432"` or `"8000-8080"`.
fn parse_range(text: &str) -> Option<std::ops::RangeInclusive<u16>> {
    match text.split_once('-') {
        Some((a, b)) => Some(a.trim().parse().ok()?..=b.trim().parse().ok()?),
        None => {
            let p = text.trim().parse().ok()?;
            Some(p..=p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_written_as_ports_and_ranges_and_read_back() {
        let tcp = Ports::render(&[22..=22, 8000..=8080]);
        assert_eq!(tcp, ["22".to_owned(), "8000-8080".to_owned()]);
        let ports = Ports {
            tcp: [tcp, vec!["nonsense".into()]].concat(),
            udp: Vec::new(),
        };
        assert_eq!(ports.tcp_ranges(), [22..=22, 8000..=8080]);
    }

    #[test]
    fn a_peer_policy_reads_back_as_written() {
        let p = PeerPolicy {
            reaches_here: Ports {
                tcp: vec!["5432".into()],
                udp: Vec::new(),
            },
            reachable_there: Ports::default(),
            dropped: PolicyDrops {
                no_grant: 3,
                ..PolicyDrops::default()
            },
        };
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["reachesHere"]["tcp"][0], "5432");
        assert_eq!(json["dropped"]["noGrant"], 3);
        assert_eq!(serde_json::from_value::<PeerPolicy>(json).unwrap(), p);
    }
}
