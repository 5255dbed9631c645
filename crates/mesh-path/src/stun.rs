//! STUN (RFC 8489) as the device uses it, to learn which public address and port the NATs in front of it
//! map its WireGuard socket to: Binding requests sent from that very socket (a request from any other
//! socket would learn another socket's mapping), their answers told apart from WireGuard's datagrams
//! ([`is_stun`]), and one [`Round`] of requests to every server with its retransmits, as a sans-IO state
//! machine. Messages are built and read with the `stun-types` codec.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun_types::attribute::{MappedSocketAddr, XorMappedAddress};
use stun_types::message::{
    BINDING, Message, MessageClass, MessageWriteExt as _, MessageWriteVec, TransactionId,
};
use stun_types::prelude::*;

/// STUN's magic cookie, at bytes 4..8 of every RFC 5389/8489 message.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// The legacy MAPPED-ADDRESS attribute, which RFC 3489 servers send instead of XOR-MAPPED-ADDRESS.
const MAPPED_ADDRESS: u16 = 0x0001;

/// When each request of a round is sent, after the round starts: RFC 8489's 500 ms RTO, doubled, cut at
/// three transmissions so that a round ends in [`ROUND_TIMEOUT`] (a mapping is worth little after that).
const RETRANSMITS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(500),
    Duration::from_millis(1500),
];
/// How long a round waits for answers: the last transmission gets a second, more than a STUN server is worth
/// waiting for (an answer that late says little of a mapping that punching must use within seconds), and a
/// node whose servers all stopped answering says so within this and a round's interval.
pub const ROUND_TIMEOUT: Duration = Duration::from_millis(2_500);

/// Whether a datagram that came to the WireGuard socket is a STUN message rather than WireGuard's.
/// WireGuard's first four bytes are a type of 1 to 4 and three zero bytes; a STUN message starts with
/// two zero bits, a length that is a multiple of 4 and matches the datagram, and the magic cookie. A
/// Binding response's first byte is 1, as an initiation's is, so the second to fourth bytes decide:
/// STUN's message type and length are never all zero there.
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= 20
        && datagram[0] & 0xc0 == 0
        && datagram[4..8] == MAGIC_COOKIE
        && datagram[1..4] != [0, 0, 0]
        && usize::from(u16::from_be_bytes([datagram[2], datagram[3]])) + 20 == datagram.len()
}

/// A Binding request (with a FINGERPRINT, so servers and middleboxes can tell it from other protocols)
/// and its transaction id.
pub fn binding_request() -> (TransactionId, Vec<u8>) {
    let mut msg = Message::builder_request(BINDING, MessageWriteVec::new());
    let transaction = msg.transaction_id();
    msg.add_fingerprint()
        .expect("a fresh request has room for its fingerprint");
    (transaction, msg.finish())
}

/// Why a datagram that looked like STUN gives no mapped address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("not a STUN message: {0}")]
    Parse(String),
    #[error("a STUN message, but not a Binding success response")]
    NotBindingSuccess,
    #[error("a Binding response with neither XOR-MAPPED-ADDRESS nor MAPPED-ADDRESS")]
    NoAddress,
}

/// The transaction and the mapped address of a Binding success response.
pub fn mapped_address(datagram: &[u8]) -> Result<(TransactionId, SocketAddr), StunError> {
    let msg = Message::from_bytes(datagram).map_err(|e| StunError::Parse(e.to_string()))?;
    if !msg.has_class(MessageClass::Success) || !msg.has_method(BINDING) {
        return Err(StunError::NotBindingSuccess);
    }
    let transaction = msg.transaction_id();
    if let Ok(xor) = msg.attribute::<XorMappedAddress>() {
        return Ok((transaction, xor.addr(transaction)));
    }
    let raw = msg
        .raw_attribute(MAPPED_ADDRESS.into())
        .ok_or(StunError::NoAddress)?;
    let mapped = MappedSocketAddr::from_raw(&raw).map_err(|e| StunError::Parse(e.to_string()))?;
    Ok((transaction, mapped.addr()))
}

/// What one server said in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerResult {
    pub server: SocketAddr,
    /// The address and port it saw the request come from; `None` when it did not answer in time.
    pub mapped: Option<SocketAddr>,
    /// From the request's first transmission to the answer.
    pub rtt: Option<Duration>,
}

struct Pending {
    server: SocketAddr,
    transaction: TransactionId,
    request: Vec<u8>,
    sent: usize,
    answer: Option<(SocketAddr, Duration)>,
}

/// One round: a Binding request to each server, retransmitted until it is answered or the round times out.
pub struct Round {
    started: Instant,
    pending: Vec<Pending>,
}

impl Round {
    pub fn new(servers: &[SocketAddr], now: Instant) -> Self {
        let pending = servers
            .iter()
            .map(|&server| {
                let (transaction, request) = binding_request();
                Pending {
                    server,
                    transaction,
                    request,
                    sent: 0,
                    answer: None,
                }
            })
            .collect();
        Self {
            started: now,
            pending,
        }
    }

    /// The requests due at `now`, each to send once.
    pub fn due(&mut self, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
        let elapsed = now.saturating_duration_since(self.started);
        let mut out = Vec::new();
        for p in self.pending.iter_mut().filter(|p| p.answer.is_none()) {
            while p.sent < RETRANSMITS.len() && RETRANSMITS[p.sent] <= elapsed {
                p.sent += 1;
                if out.last().is_none_or(|(to, _)| *to != p.server) {
                    out.push((p.server, p.request.clone()));
                }
            }
        }
        out
    }

    /// When [`Round::due`] has something next, or the round ends.
    pub fn next_wake(&self) -> Instant {
        self.pending
            .iter()
            .filter(|p| p.answer.is_none() && p.sent < RETRANSMITS.len())
            .map(|p| self.started + RETRANSMITS[p.sent])
            .min()
            .unwrap_or(self.started + ROUND_TIMEOUT)
            .min(self.started + ROUND_TIMEOUT)
    }

    /// Takes a datagram that came `from`; returns whether it answered one of this round's requests. An answer
    /// counts only from the server it was asked of, for the transaction asked.
    pub fn receive(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) -> bool {
        let Ok((transaction, mapped)) = mapped_address(datagram) else {
            return false;
        };
        let Some(p) = self
            .pending
            .iter_mut()
            .find(|p| p.transaction == transaction && p.server == from && p.answer.is_none())
        else {
            return false;
        };
        p.answer = Some((mapped, now.saturating_duration_since(self.started)));
        true
    }

    /// Whether every server has answered, or the round has timed out.
    pub fn is_done(&self, now: Instant) -> bool {
        self.pending.iter().all(|p| p.answer.is_some())
            || now.saturating_duration_since(self.started) >= ROUND_TIMEOUT
    }

    pub fn results(&self) -> Vec<ServerResult> {
        self.pending
            .iter()
            .map(|p| ServerResult {
                server: p.server,
                mapped: p.answer.map(|(m, _)| m),
                rtt: p.answer.map(|(_, rtt)| rtt),
            })
            .collect()
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A server's Binding success response to `request`, saying it came from `mapped`.
    pub fn answer(request: &[u8], mapped: SocketAddr) -> Vec<u8> {
        let req = Message::from_bytes(request).expect("a request");
        let mut resp = Message::builder_success(&req, MessageWriteVec::new());
        resp.add_attribute(&XorMappedAddress::new(mapped, req.transaction_id()))
            .expect("room for the address");
        resp.add_fingerprint().expect("room for the fingerprint");
        resp.finish()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_request_is_stun_and_its_answer_names_the_mapped_address() {
        let (transaction, request) = binding_request();
        assert!(is_stun(&request), "{request:02x?}");
        let response = answer(&request, addr("203.0.113.7:40001"));
        assert!(is_stun(&response));
        assert_eq!(
            mapped_address(&response),
            Ok((transaction, addr("203.0.113.7:40001")))
        );
        assert_eq!(
            mapped_address(&request),
            Err(StunError::NotBindingSuccess),
            "a request is no answer"
        );
    }

    /// WireGuard's four message types, at their real sizes and with any bytes after the header, are never
    /// taken for STUN, not even when a sender index happens to spell the magic cookie.
    #[test]
    fn wireguard_datagrams_are_never_taken_for_stun() {
        for (kind, len) in [(1u8, 148usize), (2, 92), (3, 64), (4, 32), (4, 1452)] {
            let mut d = vec![0xabu8; len];
            d[0] = kind;
            d[1..4].fill(0);
            d[4..8].copy_from_slice(&MAGIC_COOKIE);
            assert!(!is_stun(&d), "type {kind}, {len} bytes");
        }
        assert!(!is_stun(&[]));
        let (_, mut request) = binding_request();
        request.push(0);
        assert!(!is_stun(&request), "a length that does not match");
    }

    #[test]
    fn a_legacy_mapped_address_is_read_too() {
        let (transaction, request) = binding_request();
        let req = Message::from_bytes(&request).unwrap();
        let mut resp = Message::builder_success(&req, MessageWriteVec::new());
        let legacy = MappedSocketAddr::new(addr("198.51.100.9:3478"));
        let mut value = vec![0u8; usize::from(legacy.length())];
        legacy.write_into_unchecked(&mut value);
        resp.add_attribute(&stun_types::attribute::RawAttribute::new(
            MAPPED_ADDRESS.into(),
            &value,
        ))
        .unwrap();
        let resp = resp.finish();
        assert_eq!(
            mapped_address(&resp),
            Ok((transaction, addr("198.51.100.9:3478")))
        );
    }

    /// Each request goes out at 0, 0.5 and 1.5 s until answered; answers count only from the server asked,
    /// for the transaction asked; the round ends when all answered or at the timeout.
    #[test]
    fn a_round_retransmits_until_answered_and_takes_answers_only_from_the_server_asked() {
        let t0 = Instant::now();
        let (a, b) = (addr("192.0.2.1:3478"), addr("192.0.2.2:3478"));
        let mut round = Round::new(&[a, b], t0);
        let first = round.due(t0);
        assert_eq!(first.iter().map(|(to, _)| *to).collect::<Vec<_>>(), [a, b]);
        assert!(round.due(t0 + Duration::from_millis(499)).is_empty());
        assert_eq!(round.next_wake(), t0 + Duration::from_millis(500));
        let answer_a = answer(&first[0].1, addr("203.0.113.1:1000"));
        assert!(
            !round.receive(b, &answer_a, t0),
            "not from the server asked"
        );
        assert!(round.receive(a, &answer_a, t0 + Duration::from_millis(20)));
        assert!(!round.receive(a, &answer_a, t0), "answered once");
        let again = round.due(t0 + Duration::from_millis(500));
        assert_eq!(again.len(), 1, "only the unanswered one is sent again");
        assert_eq!(again[0].0, b);
        assert!(!round.is_done(t0 + Duration::from_secs(2)));
        assert!(round.is_done(t0 + ROUND_TIMEOUT));
        let results = round.results();
        assert_eq!(results[0].mapped, Some(addr("203.0.113.1:1000")));
        assert_eq!(results[0].rtt, Some(Duration::from_millis(20)));
        assert_eq!(results[1].mapped, None);
    }
}
