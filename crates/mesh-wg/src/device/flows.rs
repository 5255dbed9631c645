//! A queue per flow between the TUN and the encryption, so that a bulk flow's backlog does not stand in front
//! of every other flow through the device.
//!
//! A bulk sender (a backup, a replica catching up) keeps as much data in flight as its congestion control
//! allows, and BBR, which this kind of machine runs, does not back off for a dropped packet. That data waits
//! wherever the path is slowest, here in front of the encryption: in the TUN's ring, which the kernel fills
//! in order, so a ping, a commit's request or an acknowledgement of another flow waited behind milliseconds
//! of the transfer (`docs/benchmarks.md`). The device therefore reads the ring ahead into a queue of its own
//! and sends a sparse flow's packets first, as fq_codel's new-flow list does: a flow with nothing waiting in
//! the bulk queue puts up to a [`QUANTUM`] in the sparse queue, which every batch takes first; beyond that,
//! or while it has packets in the bulk queue, its packets go to the bulk queue, in order. A flow's packets
//! therefore leave in the order they came, and the bulk flow's own round trip is what it was.
//!
//! Flows are told apart by a hash of their addresses, protocol and ports into [`BUCKETS`] buckets: two
//! flows in one bucket are one flow here, which costs the sparse one its place and nothing else.

use std::collections::VecDeque;

/// Buckets flows are hashed into.
pub(crate) const BUCKETS: usize = 1024;
/// What a flow may have in the sparse queue at once: a request of a few segments, a burst of
/// acknowledgements. A bulk flow that starts, or restarts after its backlog drained, sends this much first.
pub(crate) const QUANTUM: usize = 16 << 10;

/// The bucket of `packet`'s flow: its IP version, addresses, protocol and, for TCP and UDP, its ports. A
/// packet too short to say is in bucket 0.
pub(crate) fn bucket(packet: &[u8]) -> u16 {
    let tuple = match packet.first().map(|b| b >> 4) {
        Some(4) => ipv4_flow(packet),
        Some(6) => ipv6_flow(packet),
        _ => None,
    };
    let Some((addresses, protocol, ports)) = tuple else {
        return 0;
    };
    // FNV-1a: a few dozen bytes, per packet, on the packet thread.
    let mut hash: u32 = 0x811c_9dc5;
    for byte in addresses.iter().chain(&[protocol]).chain(ports) {
        hash = (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193);
    }
    ((hash ^ (hash >> 16)) as usize % BUCKETS) as u16
}

/// An IPv4 packet's addresses, protocol and ports (none for a fragment after the first, or another protocol).
fn ipv4_flow(packet: &[u8]) -> Option<(&[u8], u8, &[u8])> {
    let header = usize::from(packet.first()? & 0x0f) * 4;
    let protocol = *packet.get(9)?;
    let addresses = packet.get(12..20)?;
    let offset = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x1fff;
    let ports = match protocol {
        6 | 17 if offset == 0 => packet.get(header..header + 4).unwrap_or(&[]),
        _ => &[],
    };
    Some((addresses, protocol, ports))
}

/// An IPv6 packet's addresses, next header and ports (none behind extension headers).
fn ipv6_flow(packet: &[u8]) -> Option<(&[u8], u8, &[u8])> {
    let protocol = *packet.get(6)?;
    let addresses = packet.get(8..40)?;
    let ports = match protocol {
        6 | 17 => packet.get(40..44).unwrap_or(&[]),
        _ => &[],
    };
    Some((addresses, protocol, ports))
}

/// Packets waiting for the encryption, by flow: the sparse queue first, then the bulk one.
pub(crate) struct FlowQueue<P> {
    sparse: VecDeque<(P, u16)>,
    bulk: VecDeque<(P, u16)>,
    /// Per bucket: its packets in the bulk queue, and its bytes in the sparse one.
    in_bulk: Vec<u32>,
    sparse_bytes: Vec<u32>,
}

impl<P: AsRef<[u8]>> Default for FlowQueue<P> {
    fn default() -> Self {
        Self {
            sparse: VecDeque::new(),
            bulk: VecDeque::new(),
            in_bulk: vec![0; BUCKETS],
            sparse_bytes: vec![0; BUCKETS],
        }
    }
}

impl<P: AsRef<[u8]>> FlowQueue<P> {
    /// Queues `packet` behind its flow's: in the sparse queue while its flow has nothing in the bulk queue
    /// and less than a [`QUANTUM`] in the sparse one, else in the bulk queue.
    pub(crate) fn push(&mut self, packet: P) {
        let flow = bucket(packet.as_ref());
        let at = usize::from(flow);
        let len = byte_len(&packet);
        if self.in_bulk[at] == 0 && (self.sparse_bytes[at] as usize) < QUANTUM {
            self.sparse_bytes[at] = self.sparse_bytes[at].saturating_add(len);
            self.sparse.push_back((packet, flow));
        } else {
            self.in_bulk[at] += 1;
            self.bulk.push_back((packet, flow));
        }
    }

    /// The next packet to encrypt: the sparse queue's first, else the bulk queue's.
    pub(crate) fn pop(&mut self) -> Option<P> {
        if let Some((packet, flow)) = self.sparse.pop_front() {
            let at = usize::from(flow);
            self.sparse_bytes[at] = self.sparse_bytes[at].saturating_sub(byte_len(&packet));
            return Some(packet);
        }
        let (packet, flow) = self.bulk.pop_front()?;
        self.in_bulk[usize::from(flow)] -= 1;
        Some(packet)
    }

    /// Packets waiting in the sparse queue: the next ones [`FlowQueue::pop`] gives.
    pub(crate) fn sparse_len(&self) -> usize {
        self.sparse.len()
    }

    /// Packets waiting.
    pub(crate) fn len(&self) -> usize {
        self.sparse.len() + self.bulk.len()
    }
}

/// A packet's length as the per-bucket byte counts hold it.
fn byte_len(packet: &impl AsRef<[u8]>) -> u32 {
    u32::try_from(packet.as_ref().len()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// An IPv4 TCP packet of `len` bytes from port `sport` to 10.0.1.2:5201, carrying `seq` in its payload.
    fn tcp(sport: u16, len: usize, seq: u32) -> Vec<u8> {
        let mut p = vec![0u8; len.max(28)];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 1, 1]);
        p[16..20].copy_from_slice(&[10, 0, 1, 2]);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p
    }

    fn ping(seq: u32) -> Vec<u8> {
        let mut p = vec![0u8; 84];
        p[0] = 0x45;
        p[9] = 1;
        p[12..16].copy_from_slice(&[10, 0, 1, 1]);
        p[16..20].copy_from_slice(&[10, 0, 1, 2]);
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p
    }

    fn seq(p: &[u8]) -> u32 {
        u32::from_be_bytes([p[24], p[25], p[26], p[27]])
    }

    #[test]
    fn a_ping_behind_a_bulk_flows_backlog_leaves_first() {
        let mut q = FlowQueue::default();
        for i in 0..2_000 {
            q.push(tcp(40_000, 1_420, i));
        }
        q.push(ping(7));
        assert_eq!(q.len(), 2_001);
        assert_eq!(
            q.sparse_len(),
            QUANTUM.div_ceil(1_420) + 1,
            "a quantum of the flow, and the ping"
        );
        let first = q.pop().unwrap();
        assert_eq!(
            first[..12],
            tcp(40_000, 1_420, 0)[..12],
            "the bulk flow's first quantum went before anything queued behind it"
        );
        let order: Vec<Vec<u8>> = std::iter::from_fn(|| q.pop()).collect();
        let at = order.iter().position(|p| p[9] == 1).unwrap();
        assert!(
            at < QUANTUM / 1_420 + 1,
            "the ping left after the bulk flow's quantum, not after its {} packets: at {at}",
            order.len()
        );
    }

    #[test]
    fn a_flow_whose_backlog_drained_is_sparse_again() {
        let mut q = FlowQueue::default();
        for i in 0..100 {
            q.push(tcp(40_000, 1_420, i));
        }
        while q.pop().is_some() {}
        q.push(tcp(40_001, 1_420, 0));
        for i in 0..100 {
            q.push(tcp(40_001, 1_420, i + 1));
        }
        q.push(tcp(40_000, 1_420, 100));
        let order: Vec<Vec<u8>> = std::iter::from_fn(|| q.pop()).collect();
        let at = order
            .iter()
            .position(|p| p[20..22] == 40_000u16.to_be_bytes());
        assert!(at.unwrap() < 20, "{at:?}");
    }

    #[test]
    fn the_bucket_is_the_flows_and_a_short_packet_is_bucket_zero() {
        assert_eq!(bucket(&tcp(40_000, 60, 1)), bucket(&tcp(40_000, 1_420, 2)));
        let buckets: std::collections::BTreeSet<u16> = (40_000..40_100)
            .map(|port| bucket(&tcp(port, 60, 0)))
            .collect();
        assert!(
            buckets.len() > 90,
            "ports spread over buckets: {}",
            buckets.len()
        );
        assert_eq!(bucket(&[0x45, 0, 0]), 0);
        assert_eq!(bucket(&[]), 0);
    }

    proptest! {
        /// Whatever the mix of flows, sizes, pushes and pops, each flow's packets leave in the order they came,
        /// and every packet leaves once.
        #[test]
        fn each_flows_packets_leave_in_order(
            steps in proptest::collection::vec((0u16..6, 40usize..1_500, any::<bool>()), 1..600),
        ) {
            let mut q = FlowQueue::default();
            let mut next = [0u32; 6];
            let mut seen = [0u32; 6];
            let mut pushed = 0;
            let mut popped = 0;
            let take = |p: Vec<u8>, seen: &mut [u32; 6]| {
                let flow = usize::from(u16::from_be_bytes([p[20], p[21]]) - 40_000);
                prop_assert_eq!(seq(&p), seen[flow], "flow {}", flow);
                seen[flow] += 1;
                Ok(())
            };
            for (flow, len, pop) in steps {
                if pop {
                    if let Some(p) = q.pop() {
                        take(p, &mut seen)?;
                        popped += 1;
                    }
                } else {
                    let f = usize::from(flow);
                    q.push(tcp(40_000 + flow, len, next[f]));
                    next[f] += 1;
                    pushed += 1;
                }
            }
            while let Some(p) = q.pop() {
                take(p, &mut seen)?;
                popped += 1;
            }
            prop_assert_eq!(pushed, popped);
            prop_assert_eq!(seen, next);
            prop_assert!(q.in_bulk.iter().all(|n| *n == 0));
            prop_assert!(q.sparse_bytes.iter().all(|n| *n == 0));
        }
    }
}
