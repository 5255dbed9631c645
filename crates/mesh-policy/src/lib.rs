//! Who may reach whom in a dstack-mesh cluster: the owner's grants between tags (`DstackClusterGrants` on
//! the cluster's app auth), and what they decide for a flow. Pure: a seat's tags are resolved by the caller
//! (its own and its app's), and nothing here reads a chain or a packet.
//!
//! With no policy in force every seat reaches every port of every other, as without one. In force, a flow
//! from seat A to port P of seat B passes when a grant's `from` shares a tag with A's, its `to` one with
//! B's, its protocol matches and P is in its range. What always passes (ICMP, the agents' own probes and
//! heartbeats, replies of an allowed flow) is the enforcer's to let through: it is not a grant. The
//! receiving side's [`filter`] does that for one peer.

pub mod filter;

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// The protocols a grant names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// One grant: seats with any tag of `from` reach seats with any tag of `to`, over `protocol` (`None`: TCP
/// and UDP), on destination ports `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grant {
    pub from: u32,
    pub to: u32,
    pub protocol: Option<Protocol>,
    pub ports: RangeInclusive<u16>,
}

impl Grant {
    /// The grant as the contract holds it, `protocol` 0, 6 or 17; `None` for a protocol it never accepts.
    pub fn from_contract(from: u32, to: u32, protocol: u8, first: u16, last: u16) -> Option<Self> {
        let protocol = match protocol {
            0 => None,
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => return None,
        };
        Some(Self {
            from,
            to,
            protocol,
            ports: first..=last,
        })
    }

    fn covers(&self, from: u32, to: u32, protocol: Protocol, port: u16) -> bool {
        self.from & from != 0
            && self.to & to != 0
            && self.protocol.is_none_or(|p| p == protocol)
            && self.ports.contains(&port)
    }
}

/// The owner's policy, as of a block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// In force: only what a grant allows passes.
    pub enforced: bool,
    /// The contract's `policyVersion`: one more at every change.
    pub version: u64,
    /// Each tag's name, bit 0 first.
    pub tag_names: Vec<String>,
    pub grants: Vec<Grant>,
}

/// What decides a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No policy is in force.
    NotEnforced,
    /// Grant number `.0` (from 0, as `policy()` lists them) allows it: the first that does.
    Grant(usize),
    /// The policy is in force and no grant allows it.
    NoGrant,
}

/// A verdict and what decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub why: Why,
}

/// The ports one seat may reach on another, per protocol, merged and in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    /// Every port of every protocol: no policy is in force.
    pub all: bool,
    pub tcp: Vec<RangeInclusive<u16>>,
    pub udp: Vec<RangeInclusive<u16>>,
}

impl Reach {
    /// Every port of every protocol: what a peer reaches with no policy in force.
    pub fn everything() -> Self {
        Self {
            all: true,
            ..Self::default()
        }
    }

    /// Whether `port` over `protocol` is in reach. The ranges are merged and in order ([`Policy::reach`]), so
    /// a binary search finds the one that could hold it: the device asks this of every packet.
    pub fn allows(&self, protocol: Protocol, port: u16) -> bool {
        if self.all {
            return true;
        }
        let ranges = match protocol {
            Protocol::Tcp => &self.tcp,
            Protocol::Udp => &self.udp,
        };
        let after = ranges.partition_point(|r| *r.start() <= port);
        after > 0 && ranges[after - 1].contains(&port)
    }
}

impl Policy {
    /// Whether a seat tagged `from` may open a flow to port `port` of a seat tagged `to`, and why.
    pub fn decide(&self, from: u32, to: u32, protocol: Protocol, port: u16) -> Verdict {
        if !self.enforced {
            return Verdict {
                allowed: true,
                why: Why::NotEnforced,
            };
        }
        match self
            .grants
            .iter()
            .position(|g| g.covers(from, to, protocol, port))
        {
            Some(i) => Verdict {
                allowed: true,
                why: Why::Grant(i),
            },
            None => Verdict {
                allowed: false,
                why: Why::NoGrant,
            },
        }
    }

    /// Every port a seat tagged `from` may reach on a seat tagged `to`.
    pub fn reach(&self, from: u32, to: u32) -> Reach {
        if !self.enforced {
            return Reach::everything();
        }
        let ranges = |protocol: Protocol| {
            merged(
                self.grants
                    .iter()
                    .filter(|g| g.from & from != 0 && g.to & to != 0)
                    .filter(|g| g.protocol.is_none_or(|p| p == protocol))
                    .map(|g| g.ports.clone())
                    .collect(),
            )
        };
        Reach {
            all: false,
            tcp: ranges(Protocol::Tcp),
            udp: ranges(Protocol::Udp),
        }
    }

    /// The names of the tags set in `tags`, in bit order; a bit with no name shows as `tag<N>`.
    pub fn tag_names(&self, tags: u32) -> Vec<String> {
        (0..32)
            .filter(|bit| tags & (1 << bit) != 0)
            .map(|bit| {
                self.tag_names
                    .get(bit)
                    .cloned()
                    .unwrap_or_else(|| format!("tag{bit}"))
            })
            .collect()
    }

    /// The bit of the tag named `name`.
    pub fn tag_bit(&self, name: &str) -> Option<u32> {
        let i = self.tag_names.iter().position(|n| n == name)?;
        u32::try_from(i).ok().filter(|i| *i < 32).map(|i| 1 << i)
    }
}

/// `ranges` in order, the ones that overlap or touch made one.
fn merged(mut ranges: Vec<RangeInclusive<u16>>) -> Vec<RangeInclusive<u16>> {
    ranges.sort_by_key(|r| (*r.start(), *r.end()));
    let mut out: Vec<RangeInclusive<u16>> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if u32::from(*r.start()) <= u32::from(*last.end()) + 1 => {
                let end = (*last.end()).max(*r.end());
                *last = *last.start()..=end;
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests;
