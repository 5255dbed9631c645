//! What passes of the packets one peer sends this node, once decrypted: the receiving side's half of the
//! policy. Pure: the device hands it each IPv4 packet and the time, in both directions.
//!
//! - A flow the peer opens passes when the policy lets the peer reach its protocol and destination port
//!   here ([`Reach`]). Each of its packets is judged so, so a grant taken away cuts its flows at once.
//! - A reply to a flow this node opened passes: the flows this node sends are remembered, for
//!   [`FLOW_IDLE`] after their last packet, at most [`MAX_FLOWS`] per peer (the oldest go first).
//! - ICMP passes (health checks, path MTU), as do UDP datagrams to or from the agents' own ports (their
//!   heartbeats), and fragments after the first, which the kernel cannot reassemble without it.
//! - Everything else is dropped and counted by why.
//!
//! With no policy in force ([`Reach::all`]) every packet passes and nothing is remembered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::{Protocol, Reach};

/// How long a flow this node opened is remembered after its last packet.
pub const FLOW_IDLE: Duration = Duration::from_secs(180);
/// The most flows remembered per peer.
pub const MAX_FLOWS: usize = 4096;

const ICMP: u8 = 1;

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dropped {
    /// No grant lets the peer reach this protocol and port here.
    NoGrant,
    /// A protocol the policy has no word for (neither ICMP, TCP nor UDP).
    Protocol,
    /// Not a whole IPv4 header with its ports.
    Malformed,
}

impl Dropped {
    /// Its name in the metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoGrant => "no-grant",
            Self::Protocol => "protocol",
            Self::Malformed => "malformed",
        }
    }
}

/// The verdict on one inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Pass,
    Drop(Dropped),
}

/// (protocol, this node's port, the peer's port).
type FlowKey = (Protocol, u16, u16);

/// One peer's filter.
#[derive(Debug, Clone)]
pub struct Filter {
    reach: Reach,
    /// UDP ports whose datagrams always pass, either way: the agents' own.
    own_udp: Vec<u16>,
    flows: HashMap<FlowKey, Instant>,
}

/// A packet's protocol and ports, or what else it is.
enum Parsed {
    Ports {
        protocol: Protocol,
        source: u16,
        destination: u16,
    },
    /// ICMP, or a fragment after the first.
    AlwaysPasses,
    Other,
    Malformed,
}

fn parse(packet: &[u8]) -> Parsed {
    let Some(&first) = packet.first() else {
        return Parsed::Malformed;
    };
    let header = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || header < 20 || packet.len() < header {
        return Parsed::Malformed;
    }
    let fragment_offset = u16::from_be_bytes([packet[6] & 0x1f, packet[7]]);
    if fragment_offset != 0 {
        return Parsed::AlwaysPasses;
    }
    let protocol = match packet[9] {
        ICMP => return Parsed::AlwaysPasses,
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return Parsed::Other,
    };
    match packet.get(header..header + 4) {
        Some(p) => Parsed::Ports {
            protocol,
            source: u16::from_be_bytes([p[0], p[1]]),
            destination: u16::from_be_bytes([p[2], p[3]]),
        },
        None => Parsed::Malformed,
    }
}

impl Filter {
    /// A filter that lets the peer reach `reach` here, and always passes UDP to or from `own_udp`.
    pub fn new(reach: Reach, own_udp: Vec<u16>) -> Self {
        Self {
            reach,
            own_udp,
            flows: HashMap::new(),
        }
    }

    /// The policy changed: from now on the peer reaches `reach`. The flows this node opened stay.
    pub fn set_reach(&mut self, reach: Reach) {
        if reach.all {
            self.flows.clear();
        }
        self.reach = reach;
    }

    pub fn reach(&self) -> &Reach {
        &self.reach
    }

    /// A packet this node sends the peer: its flow's replies pass.
    pub fn outbound(&mut self, packet: &[u8], now: Instant) {
        if self.reach.all {
            return;
        }
        if let Parsed::Ports {
            protocol,
            source,
            destination,
        } = parse(packet)
        {
            let key = (protocol, source, destination);
            if self.flows.len() >= MAX_FLOWS && !self.flows.contains_key(&key) {
                self.forget_oldest(now);
            }
            self.flows.insert(key, now);
        }
    }

    /// Whether a packet the peer sent passes.
    pub fn inbound(&mut self, packet: &[u8], now: Instant) -> Admit {
        if self.reach.all {
            return Admit::Pass;
        }
        let (protocol, source, destination) = match parse(packet) {
            Parsed::Ports {
                protocol,
                source,
                destination,
            } => (protocol, source, destination),
            Parsed::AlwaysPasses => return Admit::Pass,
            Parsed::Other => return Admit::Drop(Dropped::Protocol),
            Parsed::Malformed => return Admit::Drop(Dropped::Malformed),
        };
        let own = protocol == Protocol::Udp
            && (self.own_udp.contains(&destination) || self.own_udp.contains(&source));
        if own || self.reach.allows(protocol, destination) {
            return Admit::Pass;
        }
        match self.flows.get_mut(&(protocol, destination, source)) {
            Some(seen) if now.saturating_duration_since(*seen) < FLOW_IDLE => {
                *seen = now;
                Admit::Pass
            }
            _ => Admit::Drop(Dropped::NoGrant),
        }
    }

    /// Flows remembered now.
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Makes room: the flows idle past [`FLOW_IDLE`] go, or else the one idle longest.
    fn forget_oldest(&mut self, now: Instant) {
        self.flows
            .retain(|_, seen| now.saturating_duration_since(*seen) < FLOW_IDLE);
        if self.flows.len() >= MAX_FLOWS
            && let Some(oldest) = self.flows.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k)
        {
            self.flows.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests;
