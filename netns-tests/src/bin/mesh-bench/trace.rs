//! The trace: one join followed through every node's JSON log, by the events its lines name.

use std::str::FromStr as _;
use std::time::{Duration, SystemTime};

use alloy::primitives::Address;
use mesh_api::Peer;
use netns_tests::prelude::*;
use netns_tests::system::convergence::{chain_watch, full_mesh, healthy, watch_change};

use crate::report::{NodeTrace, Stages, Stat, Trace};
use crate::table::fixed;
use crate::{BOUND, Follow, ms};

/// The agents' log filter in the trace: their default, with mesh_wg's handshake events at debug.
const TRACE_FILTER: &str = "warn,boringtun::noise::timers=off,p2p_agent=info,mesh_chain=info,mesh_wg=debug,mesh_api=info,dstack_guest=info,unix_socket=info";

/// The events read, by the `event` field their crates log them with.
mod event {
    /// mesh_chain's follower read blocks that changed the peer records.
    pub(super) const RECORDS_CHANGED: &str = "records.changed";
    /// mesh_chain: this node's own record is on-chain (with its receipt).
    pub(super) const RECORD_REGISTERED: &str = "record.registered";
    /// mesh_wg's device has a new peer.
    pub(super) const PEER_ADDED: &str = "peer.added";
    /// mesh_wg sent an initiation at once, for a new peer, endpoint or relay stream.
    pub(super) const HANDSHAKE_INITIATED: &str = "handshake.initiated";
    /// mesh_wg's initiation was answered: a session.
    pub(super) const HANDSHAKE_COMPLETED: &str = "handshake.completed";
    /// mesh_wg answered a peer's initiation: a session.
    pub(super) const HANDSHAKE_ANSWERED: &str = "handshake.answered";
    /// WireGuard's timers sent an initiation (a retry after REKEY_TIMEOUT, or a rekey).
    pub(super) const INITIATED_BY_TIMERS: &str = "handshake.initiated_by_timers";
    /// mesh_wg dropped an initiation from a key that is not its peer (yet).
    pub(super) const UNKNOWN_PEER: &str = "handshake.unknown_peer";
}

/// How long before the block an event still counts towards the join: the block's time is when the
/// harness, reading the chain every 10 ms, first saw it.
const BEFORE_BLOCK: Duration = Duration::from_secs(1);

/// How long before the block the newcomer's registration receipt is looked for: the newcomer may read its
/// receipt before the harness sees the block.
const RECEIPT_BEFORE_BLOCK: Duration = Duration::from_secs(60);

/// One event of an agent's log, in ms from the block (negative before it).
struct Seen {
    ms: f64,
    event: String,
    /// The key the event names, as it prints (`peer`).
    peer: Option<String>,
}

/// One join at `n` nodes, traced: the block that holds the newcomer's record, and for every other node
/// when it read the block, added the peer, sent its first initiation, got a session (by its own initiation's
/// response, or by answering the newcomer's), and showed the handshake on its API; the initiations the
/// newcomer dropped because they came before it knew the sender, and WireGuard's retries.
pub(crate) fn join(n: usize, follow: Follow) -> anyhow::Result<Trace> {
    let lan = Lan::new(n);
    let cluster = Cluster::deploy_seats(&lan, n);
    let contract = Address::from_str(&cluster.contract)?;
    let config = |i| AgentConfig {
        log_filter: Some(TRACE_FILTER.to_owned()),
        json_log: true,
        ..follow.config(i)
    };
    let traced = Agent::builder(&cluster).config(config).ready_within(300);
    let agents = traced.start_all(1..n);
    let all: Vec<&Agent<'_>> = agents.iter().collect();
    full_mesh(&all, BOUND)
        .map_err(|e| anyhow::anyhow!("the mesh of {} did not form: {e}", n - 1))?;
    std::thread::sleep(Duration::from_secs(2));
    let token = n as u64;
    let handshaken = |p: &[Peer]| healthy(p, token);
    let watch = chain_watch(&lan, contract, token, true, BOUND);
    let (newcomer, times) = watch_change(&all, BOUND, &[("handshaken", &handshaken)], || {
        traced.start(n)
    })
    .map_err(|e| anyhow::anyhow!("node {n}'s join was not applied: {e}"))?;
    let block = watch.join().expect("chain watch");
    let block_at = SystemTime::now() - block.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    // As the agents log a key (`peer = ?key`).
    let key = format!("{:?}", newcomer.key());

    // An agent's events from `before` the block on.
    let seen = |a: &Agent<'_>, before: Duration| -> Vec<Seen> {
        a.log_events()
            .into_iter()
            .filter(|e| e.at + before >= block_at)
            .map(|e| Seen {
                ms: match e.at.duration_since(block_at) {
                    Ok(after) => ms(after),
                    Err(before) => -ms(before.duration()),
                },
                peer: e.str_field("peer").map(str::to_owned),
                event: e.event,
            })
            .collect()
    };
    let mut rows = Vec::new();
    for (a, api) in agents.iter().zip(&times[0]) {
        let events = seen(a, BEFORE_BLOCK);
        let of_newcomer = |e: &Seen| e.peer.as_deref() == Some(key.as_str());
        // The first of `event`; for the newcomer where it names a peer.
        let first = |event: &str, keyed: bool| {
            events
                .iter()
                .find(|e| e.event == event && (!keyed || of_newcomer(e)))
                .map(|e| e.ms)
        };
        rows.push(NodeTrace {
            node: a.index,
            chain: first(event::RECORDS_CHANGED, false),
            added: first(event::PEER_ADDED, true),
            initiated: first(event::HANDSHAKE_INITIATED, true),
            session: first(event::HANDSHAKE_COMPLETED, true),
            answered: first(event::HANDSHAKE_ANSWERED, true),
            timer_retries: events
                .iter()
                .filter(|e| e.ms >= 0.0 && e.event == event::INITIATED_BY_TIMERS && of_newcomer(e))
                .count(),
            api: ms(api.saturating_duration_since(block)),
        });
    }
    let events = seen(&newcomer, RECEIPT_BEFORE_BLOCK);
    let near = |event: &str| -> Vec<f64> {
        events
            .iter()
            .filter(|e| e.ms >= -ms(BEFORE_BLOCK) && e.event == event)
            .map(|e| e.ms)
            .collect()
    };
    let dropped = near(event::UNKNOWN_PEER);
    let added = near(event::PEER_ADDED);
    let registered = events
        .iter()
        .find(|e| e.event == event::RECORD_REGISTERED)
        .map(|e| e.ms);
    let newcomer_retries = events
        .iter()
        .filter(|e| e.ms >= 0.0 && e.event == event::INITIATED_BY_TIMERS)
        .count();

    let stat = |stage: fn(&NodeTrace) -> Option<f64>| Stat::of(rows.iter().map(stage));
    let stages = Stages {
        chain: stat(|r| r.chain),
        added: stat(|r| r.added),
        initiated: stat(|r| r.initiated),
        session: stat(|r| r.session),
        answered: stat(|r| r.answered),
        api: stat(|r| Some(r.api)),
    };
    let retries: usize = rows.iter().map(|r| r.timer_retries).sum();
    eprintln!(
        "   trace of node {n}'s join (ms after the block that holds its record; over the {} other nodes):",
        n - 1
    );
    eprintln!(
        "     the newcomer's registration receipt: {}",
        fixed(registered, 0)
    );
    for (name, s) in stages.named() {
        eprintln!(
            "     {name:<10} median {:>6} p90 {:>6} max {:>6}  ({} nodes)",
            fixed(s.median_ms, 0),
            fixed(s.p90_ms, 0),
            fixed(s.max_ms, 0),
            s.nodes
        );
    }
    eprintln!(
        "     the newcomer added its {} peers from {} to {} ms; dropped {} initiations from keys it did not know yet (the last at {} ms); WireGuard retries: {retries} by the others, {newcomer_retries} by the newcomer",
        added.len(),
        fixed(added.first().copied(), 0),
        fixed(added.last().copied(), 0),
        dropped.len(),
        fixed(dropped.last().copied(), 0),
    );
    Ok(Trace {
        nodes: n,
        follow: follow.describe(),
        registration_receipt_ms: registered,
        stages,
        newcomer_peers_added: added.len(),
        newcomer_first_add_ms: added.first().copied(),
        newcomer_last_add_ms: added.last().copied(),
        initiations_dropped_by_newcomer: dropped.len(),
        timer_retries_by_others: retries,
        timer_retries_by_newcomer: newcomer_retries,
        per_node: rows,
    })
}
