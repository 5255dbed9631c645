//! The two halves of a peer relay together, on a virtual clock: two seats' choice of relay
//! (`mesh_path::relays`) against two relays' allocation tables (`mesh_peer_relay`), over a network that
//! carries their control messages and the pair's probes through each relay, until one is killed.

// The simulation starts its virtual clock from std's.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_path::Liveness;
use mesh_path::relays::{Ask, Candidate, PeerRelays};
use mesh_peer_relay::{Control, Dropped, Limits, Table};
use wg_key::Key;

const LIVENESS: Liveness = Liveness {
    timeout: Duration::from_millis(2500),
};
const TICK: Duration = Duration::from_millis(50);

fn key(k: u8) -> Key {
    Key::from_bytes([k; 32])
}

fn addr(k: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, k], 51820))
}

/// A relay: its table, the round trip through it, and whether it runs.
struct Relay {
    key: Key,
    table: Table,
    rtt: Duration,
    up: bool,
}

/// Seats A (1) and B (2), each choosing among the relays for the other.
struct Sim {
    now: Instant,
    relays: Vec<Relay>,
    seats: [(Key, PeerRelays); 2],
    /// Probe answers on their way: when, to which side, through which relay, its seq.
    answers: Vec<(Instant, usize, Key, u16)>,
}

impl Sim {
    fn new(rtts: &[(u8, u64)]) -> Self {
        let candidates: Vec<Candidate> = rtts
            .iter()
            .map(|(k, _)| Candidate {
                relay: key(*k),
                endpoint: addr(*k),
            })
            .collect();
        let side = || {
            let mut r = PeerRelays::default();
            r.set_candidates(&candidates);
            r
        };
        Self {
            now: Instant::now(),
            relays: rtts
                .iter()
                .map(|(k, ms)| Relay {
                    key: key(*k),
                    table: Table::new(key(*k), Limits::default()),
                    rtt: Duration::from_millis(*ms),
                    up: true,
                })
                .collect(),
            seats: [(key(1), side()), (key(2), side())],
            answers: Vec::new(),
        }
    }

    /// Each relay's peers: both seats, on UDP at their addresses.
    fn peers() -> HashMap<Key, Option<SocketAddr>> {
        [(key(1), Some(addr(1))), (key(2), Some(addr(2)))].into()
    }

    fn relay(&mut self, k: Key) -> Option<&mut Relay> {
        self.relays.iter_mut().find(|r| r.key == k && r.up)
    }

    /// Delivers what a relay sent to the seats; an invited seat asks at once.
    fn deliver(&mut self, relay: Key, messages: Vec<(Key, Control)>) {
        for (to, message) in messages {
            let side = usize::from(to == key(2));
            match message {
                Control::Granted { vni, ready, .. } => {
                    self.seats[side].1.granted(&relay, vni, ready, self.now)
                }
                Control::Refused { .. } => self.seats[side].1.refused(&relay, self.now),
                Control::Invite { peer, .. } => {
                    let now = self.now;
                    let answer = self
                        .relay(relay)
                        .map(|r| r.table.request(to, peer, &Self::peers(), now));
                    if let Some(answer) = answer {
                        self.deliver(relay, answer);
                    }
                }
                Control::Offer { .. } | Control::Request { .. } => {}
            }
        }
    }

    /// The probe `seq` from `side` through `relay`: forwarded both ways by the relay's table, it comes back
    /// after the relay's round trip.
    fn probe(&mut self, side: usize, relay: Key, seq: u16) {
        let now = self.now;
        let (from, to) = if side == 0 { (1, 2) } else { (2, 1) };
        let Some(vni) = self.seats[side].1.ready_vni(&relay) else {
            return;
        };
        let Some(r) = self.relay(relay) else {
            return;
        };
        let there = r.table.forward(vni, addr(from), 148, now);
        let back = r.table.forward(vni, addr(to), 148, now);
        if there == Ok(addr(to)) && back == Ok(addr(from)) {
            let at = now + r.rtt;
            self.answers.push((at, side, relay, seq));
        }
    }

    fn run(&mut self, secs: f64) {
        let until = self.now + Duration::from_secs_f64(secs);
        while self.now < until {
            self.now += TICK;
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) =
                self.answers.drain(..).partition(|(at, ..)| *at <= now);
            self.answers = later;
            for (at, side, relay, seq) in due {
                if self.relays.iter().any(|r| r.key == relay && r.up) {
                    self.seats[side].1.probe_answered(&relay, seq, at);
                }
            }
            for side in 0..2 {
                let tick = self.seats[side].1.tick(now, true, true, LIVENESS);
                let (me, peer) = (self.seats[side].0, self.seats[1 - side].0);
                for (relay, ask) in tick.asks {
                    let answer = self.relay(relay).map(|r| match ask {
                        Ask::Allocate => r.table.request(me, peer, &Self::peers(), now),
                        Ask::Release => r.table.release(me, peer),
                    });
                    if let Some(answer) = answer {
                        self.deliver(relay, answer);
                    }
                }
                for (relay, seq) in tick.probes {
                    self.probe(side, relay, seq);
                }
            }
        }
    }

    /// The relay each side uses, by its key's byte, and the vnis.
    fn using(&self) -> [Option<(u8, u32)>; 2] {
        [0, 1].map(|s| {
            self.seats[s]
                .1
                .current()
                .map(|c| (c.relay.as_bytes()[0], c.vni))
        })
    }
}

#[test]
fn both_seats_use_the_faster_relay_and_move_to_the_other_then_to_none_as_each_dies() {
    let mut sim = Sim::new(&[(10, 30), (11, 8)]);
    sim.run(3.0);
    let [a, b] = sim.using();
    let (relay, vni) = a.expect("A uses a peer relay");
    assert_eq!(relay, 11, "the faster one");
    assert_eq!(
        b,
        Some((11, vni)),
        "B uses it too, with the same allocation"
    );

    sim.relays[1].up = false;
    let killed = sim.now;
    while sim.using().iter().any(|u| u.is_some_and(|(r, _)| r == 11)) {
        sim.run(TICK.as_secs_f64());
        assert!(
            sim.now - killed <= LIVENESS.timeout + TICK * 2,
            "still on the dead relay {:?} after it died",
            sim.now - killed
        );
    }
    assert!(
        sim.using().iter().all(|u| u.is_some_and(|(r, _)| r == 10)),
        "both moved to the other relay: {:?}",
        sim.using()
    );

    sim.relays[0].up = false;
    sim.run(LIVENESS.timeout.as_secs_f64() + 0.2);
    assert_eq!(
        sim.using(),
        [None, None],
        "no peer relay answers: the gateway's"
    );
}

#[test]
fn a_relay_forwards_nothing_from_an_address_that_is_no_seats() {
    let mut sim = Sim::new(&[(10, 8)]);
    sim.run(2.0);
    let (_, vni) = sim.using()[0].expect("a peer relay");
    let stranger = SocketAddr::from(([198, 51, 100, 7], 40000));
    let now = sim.now;
    let r = &mut sim.relays[0];
    assert_eq!(
        r.table.forward(vni, stranger, 148, now),
        Err(Dropped::Stranger)
    );
    assert_eq!(r.table.stats().dropped(Dropped::Stranger), 1);
}
