//! What passes of the packets one peer sends this node, once decrypted: the receiving side's half of the
//! policy. Pure: the device hands it each IPv4 packet and the time, in both directions.
//!
//! - A reply to a flow this node opened passes. A flow is this node's when its first packet the filter sees
//!   leaves this node, unless it answers a flow the peer opened (below): conntrack's rule, so that a flow
//!   open before the policy came into force is picked up by whoever sends next.
//! - A flow the peer opens passes when the policy lets the peer reach its protocol and destination port
//!   here ([`Reach`]). Each of its packets is judged so, so a grant taken away cuts its flows at once; this
//!   node's answers to it are known as answers (the peer's TCP SYN, or its UDP datagrams, are remembered), so
//!   they never make it this node's flow.
//! - Flows are forgotten after [`TCP_IDLE`] or [`UDP_IDLE`] without a packet, at most [`MAX_FLOWS`] of each
//!   kind per peer (the idle longest go first).
//! - ICMP passes (health checks, path MTU), as do UDP datagrams to or from the agents' own ports (their
//!   heartbeats), and fragments after the first, which the kernel cannot reassemble without it.
//! - Everything else is dropped and counted by why.
//!
//! With no policy in force ([`Reach::all`]) every packet passes and nothing is remembered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Protocol, Reach};

/// How long a TCP flow is remembered after its last packet: a pooled database connection may idle for long.
pub const TCP_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
/// How long a UDP flow is remembered after its last datagram, as conntrack keeps a UDP stream.
pub const UDP_IDLE: Duration = Duration::from_secs(180);
/// The most flows of each kind (this node's, the peer's) remembered per peer.
pub const MAX_FLOWS: usize = 4096;

const ICMP: u8 = 1;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

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

impl Dropped {
    /// Every reason, in the order [`DropCounts`] lists them.
    pub const ALL: [Self; 3] = [Self::NoGrant, Self::Protocol, Self::Malformed];

    /// Its place in [`Dropped::ALL`], for a counter array.
    pub fn index(self) -> usize {
        match self {
            Self::NoGrant => 0,
            Self::Protocol => 1,
            Self::Malformed => 2,
        }
    }
}

/// Packets dropped, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DropCounts {
    pub no_grant: u64,
    pub protocol: u64,
    pub malformed: u64,
}

impl DropCounts {
    /// One more dropped for `why`.
    pub fn add(&mut self, why: Dropped) {
        self.add_n(why, 1);
    }

    /// `n` more dropped for `why`.
    pub fn add_n(&mut self, why: Dropped, n: u64) {
        let count = self.get_mut(why);
        *count = count.saturating_add(n);
    }

    pub fn get(&self, why: Dropped) -> u64 {
        match why {
            Dropped::NoGrant => self.no_grant,
            Dropped::Protocol => self.protocol,
            Dropped::Malformed => self.malformed,
        }
    }

    fn get_mut(&mut self, why: Dropped) -> &mut u64 {
        match why {
            Dropped::NoGrant => &mut self.no_grant,
            Dropped::Protocol => &mut self.protocol,
            Dropped::Malformed => &mut self.malformed,
        }
    }

    pub fn total(&self) -> u64 {
        Dropped::ALL
            .iter()
            .fold(0u64, |sum, why| sum.saturating_add(self.get(*why)))
    }

    /// Both counts added, reason by reason.
    pub fn plus(mut self, other: &Self) -> Self {
        for why in Dropped::ALL {
            self.add_n(why, other.get(why));
        }
        self
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

/// Flows by key, each with the time of its last packet.
#[derive(Debug, Clone, Default)]
struct Flows(HashMap<FlowKey, Instant>);

impl Flows {
    /// Whether `key` is remembered and not idle past its time at `now`; if so it is kept alive.
    fn touch(&mut self, key: &FlowKey, now: Instant) -> bool {
        match self.0.get_mut(key) {
            Some(seen) if now.saturating_duration_since(*seen) < idle(key.0) => {
                *seen = now;
                true
            }
            _ => false,
        }
    }

    /// Remembers `key` as of `now`, making room first when full: the flows idle past their time go, or
    /// else the one idle longest.
    fn insert(&mut self, key: FlowKey, now: Instant) {
        if self.0.len() >= MAX_FLOWS && !self.0.contains_key(&key) {
            self.0
                .retain(|k, seen| now.saturating_duration_since(*seen) < idle(k.0));
            if self.0.len() >= MAX_FLOWS
                && let Some(oldest) = self.0.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k)
            {
                self.0.remove(&oldest);
            }
        }
        self.0.insert(key, now);
    }
}

fn idle(protocol: Protocol) -> Duration {
    match protocol {
        Protocol::Tcp => TCP_IDLE,
        Protocol::Udp => UDP_IDLE,
    }
}

/// One peer's filter.
#[derive(Debug, Clone)]
pub struct Filter {
    reach: Reach,
    /// UDP ports whose datagrams always pass, either way: the agents' own.
    own_udp: Vec<u16>,
    /// Flows this node opened.
    ours: Flows,
    /// Flows the peer opened, as far as they are needed to tell this node's answers from its own flows.
    theirs: Flows,
}

/// A packet's protocol and ports, or what else it is.
enum Parsed {
    Ports {
        protocol: Protocol,
        source: u16,
        destination: u16,
        /// A TCP segment that opens a connection (SYN without ACK).
        opens: bool,
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
    let Some(p) = packet.get(header..header + 4) else {
        return Parsed::Malformed;
    };
    let opens = protocol == Protocol::Tcp
        && packet
            .get(header + 13)
            .is_some_and(|flags| flags & (TCP_SYN | TCP_ACK) == TCP_SYN);
    Parsed::Ports {
        protocol,
        source: u16::from_be_bytes([p[0], p[1]]),
        destination: u16::from_be_bytes([p[2], p[3]]),
        opens,
    }
}

impl Filter {
    /// A filter that lets the peer reach `reach` here, and always passes UDP to or from `own_udp`.
    pub fn new(reach: Reach, own_udp: Vec<u16>) -> Self {
        Self {
            reach,
            own_udp,
            ours: Flows::default(),
            theirs: Flows::default(),
        }
    }

    /// The policy changed: from now on the peer reaches `reach`. The flows remembered stay.
    pub fn set_reach(&mut self, reach: Reach) {
        if reach.all {
            self.ours = Flows::default();
            self.theirs = Flows::default();
        }
        self.reach = reach;
    }

    pub fn reach(&self) -> &Reach {
        &self.reach
    }

    /// A packet this node sends the peer: a flow of its own, whose replies pass, unless it answers one of
    /// the peer's.
    pub fn outbound(&mut self, packet: &[u8], now: Instant) {
        if self.reach.all {
            return;
        }
        if let Parsed::Ports {
            protocol,
            source,
            destination,
            ..
        } = parse(packet)
        {
            let key = (protocol, source, destination);
            if !self.ours.touch(&key, now) && !self.theirs.touch(&key, now) {
                self.ours.insert(key, now);
            }
        }
    }

    /// Whether a packet the peer sent passes.
    pub fn inbound(&mut self, packet: &[u8], now: Instant) -> Admit {
        if self.reach.all {
            return Admit::Pass;
        }
        let (protocol, source, destination, opens) = match parse(packet) {
            Parsed::Ports {
                protocol,
                source,
                destination,
                opens,
            } => (protocol, source, destination, opens),
            Parsed::AlwaysPasses => return Admit::Pass,
            Parsed::Other => return Admit::Drop(Dropped::Protocol),
            Parsed::Malformed => return Admit::Drop(Dropped::Malformed),
        };
        if protocol == Protocol::Udp
            && (self.own_udp.contains(&destination) || self.own_udp.contains(&source))
        {
            return Admit::Pass;
        }
        let key = (protocol, destination, source);
        if self.ours.touch(&key, now) {
            return Admit::Pass;
        }
        if !self.reach.allows(protocol, destination) {
            return Admit::Drop(Dropped::NoGrant);
        }
        // Remembered so that this node's answers are known as such: a TCP connection by its SYN, a UDP
        // flow by each datagram (it has no SYN).
        if opens || protocol == Protocol::Udp {
            self.theirs.insert(key, now);
        }
        Admit::Pass
    }

    /// Flows this node opened, remembered now.
    pub fn flows(&self) -> usize {
        self.ours.0.len()
    }
}

#[cfg(test)]
mod tests;
