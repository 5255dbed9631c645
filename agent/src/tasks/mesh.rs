//! The mesh task: from the chain state to the interface. It works out this node's peers
//! ([`crate::desired`]), creates the interface once the node has an active seat and removes it when the
//! seat goes, plans the changes (`mesh_wg::plan`) and applies them, and publishes [`MeshState`].
//!
//! The interface is behind [`Interfaces`], so the task is tested against an in-memory peer table.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use alloy::primitives::Address;
use anyhow::Context as _;
use mesh_chain::membership::{InvalidRecord, Own};
use mesh_chain::policy::ClusterPolicy;
use mesh_chain::roster::{Members, Moved, Roster};
use mesh_chain::view::ChainView;
use mesh_wg::{BackendChoice, Change, Key, PeerTable};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ModeArg, RunArgs};
use crate::desired;
use crate::state::{ChainState, DeviceInfo, MeshState, PeerStats, SeatState};
use crate::tasks::Shared;

mod interfaces;
mod policy_log;

pub use interfaces::{Interfaces, Relay, RelayParts, WireGuard};

use policy_log::PolicyLog;

/// The longest the mesh task waits between reads of the device, so that the API shows a new handshake
/// soon even when the chain is polled slowly (or followed by subscription).
pub const REFRESH_AT_MOST: Duration = Duration::from_millis(500);

/// How often the device is read while a peer's first handshake is awaited: it comes a round trip or two
/// after the peer is added, and the API should say so then, not at the next refresh.
const AWAIT_REFRESH: Duration = Duration::from_millis(50);

/// How often the device is read while every peer is on the idle bound (nothing watches any, and none carries
/// traffic): their health changes on a 30 s scale, and a read of a thousand peers is most of what an idle
/// agent does. An application's first read of the API is answered from a read at most this old, and makes
/// every peer watched, so that the next read comes at the usual pace.
const IDLE_REFRESH: Duration = Duration::from_secs(2);

/// How long a new peer's first handshake is awaited that closely: two of WireGuard's 5 s retries.
const AWAIT_FOR: Duration = Duration::from_secs(12);

/// How long the first members' tunnels have to come up before the list is published anyway: the time a
/// handshake gets before the relay is tried.
const SETTLE_FOR: Duration = Duration::from_secs(5);

/// Whether the peer list a (re)started node publishes first is settled: each tunnel has had its first
/// handshake, or `by` has passed. Before, a peer whose session is only being made again would be shown
/// unreachable, and an application that reconnected to a restarted agent told that every peer had left.
fn settled(awaiting: &BTreeMap<Key, Instant>, by: Instant, now: Instant) -> bool {
    awaiting.is_empty() || now >= by
}

/// When to read the whole device next: after [`IDLE_REFRESH`] while every peer is on the idle bound
/// (`all_idle`), else after `refresh`. A new peer's first handshake is awaited on a deadline of its own ([`next_await`]).
fn next_refresh(refresh: Duration, all_idle: bool) -> Duration {
    if all_idle {
        IDLE_REFRESH.max(refresh)
    } else {
        refresh
    }
}

/// When to read the awaited peers next: soon while a peer that came within [`AWAIT_FOR`] has had no
/// handshake (`awaiting` holds when each such peer was first seen without one), else not at all. Only those
/// peers are read ([`awaited`]): at 10,000 peers a read of every one took 4.8 ms, and a join had every
/// member read them all every 50 ms for 12 s.
fn next_await(
    awaiting: &BTreeMap<Key, Instant>,
    now: Instant,
    refresh: Duration,
) -> Option<Duration> {
    awaited(awaiting, now)
        .next()
        .map(|_| AWAIT_REFRESH.min(refresh))
}

/// The peers whose first handshake is still awaited closely at `now`.
fn awaited(awaiting: &BTreeMap<Key, Instant>, now: Instant) -> impl Iterator<Item = Key> + '_ {
    (awaiting.iter())
        .filter(move |(_, since)| now.saturating_duration_since(**since) < AWAIT_FOR)
        .map(|(key, _)| *key)
}

/// Whether every peer in `stats` is held to the idle bound: nothing watches any, and none carries traffic.
fn all_idle(stats: &PeerStats) -> bool {
    !stats.is_empty() && (stats.values()).all(|p| p.health_timeout >= mesh_wg::IDLE_TIMEOUT)
}

/// What the mesh task needs to know.
pub struct MeshTask<I> {
    /// `None` in TLS mode: the node has no interface, but its peers are still worked out.
    pub interfaces: Option<I>,
    pub instance_id: String,
    /// The app this node runs: the grants between seats may tag it.
    pub app_id: Address,
    /// Absent in TLS mode.
    pub wg_public_key: Option<Key>,
    /// How often the device is read and reconciled besides on chain changes: handshakes, counters,
    /// endpoints.
    pub refresh: Duration,
    /// The port peers' relays are on; `None` with relays off.
    pub relay_port: Option<u16>,
    /// What decides which peers the device holds to the peer timeout ([`Watchers`]).
    pub watchers: Watchers,
}

/// What makes the agent hold every peer to the peer timeout rather than let idle ones go to the idle bound
/// (`mesh_wg::Watching`): an application reading the API, or a replica port, whose members are judged by
/// their health. Peers that carry traffic (a leader port's, the leader's heartbeats) are held by the
/// device itself.
#[derive(Debug, Default)]
pub struct Watchers {
    pub readers: Option<Arc<mesh_api::Readers>>,
    pub replica_ports: bool,
}

/// How long a read of the API holds every peer to the peer timeout: an application that polls less often
/// than this sees idle peers' health to the idle bound.
pub const READ_WATCHES: Duration = Duration::from_secs(60);

impl Watchers {
    /// Which peers the device holds to the peer timeout now.
    pub fn watching(&self, now: Instant) -> mesh_wg::Watching {
        let reading = (self.readers.as_ref()).is_some_and(|r| r.reading(READ_WATCHES, now));
        if reading || self.replica_ports {
            mesh_wg::Watching::All
        } else {
            mesh_wg::Watching::Only(std::collections::HashSet::new())
        }
    }
}

impl MeshTask<WireGuard> {
    /// The mesh task: an interface in WireGuard mode (none in TLS mode), with the relay on
    /// `--relay-port` unless `--no-relay`, dialling peers' relays with `relay`.
    pub fn from_args(args: &RunArgs, shared: &Shared, relay: Option<RelayParts>) -> Self {
        let wireguard = args.mode == ModeArg::Wireguard;
        let identity = &shared.identity;
        let relay_port = (wireguard && !args.no_relay).then_some(args.relay_port);
        if wireguard && args.backend() != BackendChoice::from(args.wg_backend) {
            info!(
                "no --endpoint: this node takes the userspace WireGuard, whose own socket can punch through NATs to peers (give --wg-backend kernel for the kernel's)"
            );
        }
        Self {
            interfaces: wireguard.then(|| WireGuard {
                ifname: args.interface.clone(),
                listen_port: args.listen_port,
                private_key: identity.wg_private_key().clone(),
                backend: args.backend(),
                offload: mesh_wg::Offload {
                    tun: !args.no_tun_offload,
                    udp: !args.no_udp_offload,
                },
                mtu: args.mtu,
                stun_servers: args.stun_servers(),
                liveness: args.liveness(),
                peer_relay: args.peer_relay.config(),
                relay: relay_port.zip(relay).map(|(port, parts)| Relay {
                    port,
                    dialer: parts.dialer,
                    metrics: parts.metrics,
                    limits: mesh_relay::Limits::default(),
                    reserved: parts.reserved,
                    serving: None,
                }),
            }),
            instance_id: identity.instance_id().to_owned(),
            app_id: identity.app_id(),
            wg_public_key: wireguard.then(|| identity.wg_public_key()),
            // Handshakes are read off the device this often, whatever the chain's poll: a new peer's health
            // reaches the API within this of its handshake.
            refresh: args.poll_interval().min(REFRESH_AT_MOST),
            relay_port,
            watchers: Watchers {
                readers: None,
                replica_ports: !args.replica_ports.is_empty(),
            },
        }
    }
}

struct Running<I: Interfaces> {
    task: MeshTask<I>,
    device: Option<(I::Table, DeviceInfo)>,
    /// The seat the published members were worked out for, and the members carried from view to view
    /// (none while the seat is out): a change reworks only the seats whose records moved.
    members_of: Option<(SeatState, Option<Roster>)>,
    /// The reason each skipped record was skipped, so each is logged once.
    invalid: BTreeMap<u64, String>,
    /// Peers on the device with no handshake yet, since when ([`next_refresh`]).
    awaiting: BTreeMap<Key, Instant>,
    /// When the first members' tunnels count as settled whatever their handshakes ([`settled`]); set with
    /// the first view.
    settle_by: Option<Instant>,
    /// The grants between seats as last read, and this node's seat: what each peer may reach here.
    grants: Option<(Arc<ClusterPolicy>, Option<u64>)>,
    /// What was last logged of the policy: its version, and its drops with when.
    policy_logged: PolicyLog,
    /// When the device is read and reconciled next, whatever the chain does meanwhile ([`next_refresh`]).
    refresh_due: Option<Instant>,
    /// When the peers whose first handshake is awaited are read next ([`next_await`]).
    await_due: Option<Instant>,
    /// Whether the device was last told that something watches every peer.
    watching_all: bool,
    state: MeshState,
}

impl<I: Interfaces> MeshTask<I> {
    /// Runs until `cancel` fires, then removes the interface.
    ///
    /// # Errors
    /// When the interface cannot be created: that needs the operator (privileges, a name in use).
    pub async fn run(
        self,
        mut chain: watch::Receiver<ChainState>,
        out: watch::Sender<MeshState>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut running = Running {
            task: self,
            device: None,
            members_of: None,
            invalid: BTreeMap::new(),
            awaiting: BTreeMap::new(),
            settle_by: None,
            grants: None,
            policy_logged: PolicyLog::default(),
            refresh_due: None,
            await_due: None,
            watching_all: false,
            state: MeshState::default(),
        };
        let readers = running.task.watchers.readers.clone();
        let result = loop {
            let now_chain = chain.borrow_and_update().clone();
            if let Err(e) = running.step(&now_chain).await {
                break Err(e);
            }
            out.send_replace(running.state.clone());
            let due = match (running.refresh_due, running.await_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wait = due.map_or(running.task.refresh, |due| {
                due.saturating_duration_since(Instant::now())
            });
            let reading = async {
                match &readers {
                    Some(r) => r.started_reading().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => break Ok(()),
                changed = chain.changed() => if changed.is_err() { break Ok(()) },
                () = tokio::time::sleep(wait) => {}
                // An application began to read: every peer is held to the peer timeout from now, not from
                // the next refresh.
                () = reading => running.refresh_due = None,
            }
        };
        // The on-chain record stays: peers keep it until this node changes it or the seat is cleared.
        running.leave().await;
        result
    }
}

impl<I: Interfaces> Running<I> {
    async fn step(&mut self, chain: &ChainState) -> anyhow::Result<()> {
        let Some(view) = &chain.view else {
            return Ok(());
        };
        if chain.seat.is_out() && self.device.is_some() {
            // No longer a member: drop the tunnels rather than keep sessions the others have already cut.
            // Should the seat become active again, the interface comes back.
            self.leave().await;
        }
        let moved = self.update_members(view, chain.seat);
        let grants = chain
            .grants
            .as_ref()
            .map(|g| (Arc::clone(g), chain.seat.token()));
        let grants_changed = match (&grants, &self.grants) {
            (Some((new, seat)), Some((old, was))) => !Arc::ptr_eq(new, old) || seat != was,
            (new, old) => new.is_some() != old.is_some(),
        };
        self.grants = grants;
        let had_device = self.device.is_some();
        if let (Some(token), None) = (chain.seat.token(), &self.device)
            && let Some(interfaces) = self.task.interfaces.as_mut()
        {
            let prefix = view.prefix().outside_dstack()?;
            let address = prefix
                .address(token)
                .with_context(|| format!("seat {token} does not fit the mesh prefix {prefix}"))?;
            let (table, info) = interfaces.create(address, prefix.bits()).await?;
            info!(interface = %info.ifname, %address, port = info.listen_port, backend = info.backend, "interface up");
            self.state.device = Some(info.clone());
            self.device = Some((table, info));
        }
        // A block that changed none of this node's peers (a binding, a vote, a new leader) is not worked
        // through a thousand peers again: the device is read at the refresh, as it would have been. One
        // that moved a few seats plans those alone.
        let now = Instant::now();
        let full = matches!(moved, MembersMoved::All)
            || grants_changed
            || had_device != self.device.is_some()
            || self.refresh_due.is_none_or(|due| now >= due);
        let awaited_due = self.await_due.is_some_and(|due| now >= due);
        if full {
            self.reconcile();
            // The statuses were read before the watching was set: peers just watched still show the idle bound.
            let idle = !self.watching_all && all_idle(&self.state.stats);
            self.refresh_due = Some(now + next_refresh(self.task.refresh, idle));
        } else {
            if let MembersMoved::Seats(moved) = moved {
                self.reconcile_seats(&moved);
            }
            if awaited_due {
                self.read_awaited(now);
            }
        }
        // A read just made starts the wait again; a peer added since the last read is read within a wait.
        self.await_due =
            next_await(&self.awaiting, now, self.task.refresh).map(|wait| match self.await_due {
                Some(due) if !full && !awaited_due => due.min(now + wait),
                _ => now + wait,
            });
        if !self.state.known
            && let Some(by) = self.settle_by
        {
            self.state.known = settled(&self.awaiting, by, Instant::now());
        }
        Ok(())
    }

    /// Takes the members of `view` for `seat`: carried from the last view's while the seat is the same,
    /// else worked out from nothing.
    fn update_members(&mut self, view: &Arc<ChainView>, seat: SeatState) -> MembersMoved {
        let carried = match &mut self.members_of {
            // Out: no members, whatever the records say.
            Some((s, None)) if *s == seat => return MembersMoved::Nothing,
            Some((s, Some(roster))) if *s == seat => {
                let (moved, invalid) = roster.update(view);
                Some((moved, invalid, roster.members().clone()))
            }
            _ => None,
        };
        if let Some((moved, invalid, members)) = carried {
            self.note_invalid(invalid);
            if moved.is_empty() {
                return MembersMoved::Nothing;
            }
            wg_key::names::update(
                (moved.iter()).filter_map(|m| m.before.as_ref()?.wg_public_key),
                (moved.iter()).filter_map(|m| m.after.as_ref().and_then(seat_name)),
            );
            self.state.members = members;
            return MembersMoved::Seats(moved);
        }
        let own = Own {
            token_id: seat.token(),
            instance_id: &self.task.instance_id,
            wg_public_key: self.task.wg_public_key,
        };
        let (roster, invalid) = desired::roster(view, seat, own);
        self.note_invalid(invalid);
        let members = roster
            .as_ref()
            .map_or_else(Members::new, |r| r.members().clone());
        // The device logs a peer by its key (its only name in WireGuard); naming each key by its seat makes
        // every such line, the device's included, say which seat it is about.
        wg_key::names::set(members.values().filter_map(seat_name));
        self.state.members = members;
        self.settle_by
            .get_or_insert_with(|| Instant::now() + SETTLE_FOR);
        self.members_of = Some((seat, roster));
        MembersMoved::All
    }

    fn note_invalid(&mut self, invalid: Vec<InvalidRecord>) {
        for e in invalid {
            let text = e.to_string();
            if self.invalid.get(&e.token_id()) != Some(&text) {
                warn!(token = e.token_id(), reason = %text, "skipping a record that fails local checks");
                self.state.invalid_records = self.state.invalid_records.saturating_add(1);
                self.invalid.insert(e.token_id(), text);
            }
        }
    }

    /// The grants as they bear on this node, once read.
    fn grants(&self) -> Option<desired::Grants<'_>> {
        self.grants
            .as_ref()
            .map(|(policy, seat)| desired::Grants::for_node(policy, *seat, Some(self.task.app_id)))
    }

    /// Plans the seats in `moved` alone and applies the plan: their peers are read from the device, not
    /// every peer's, and only their statuses are published again. A peer added is read again every
    /// [`AWAIT_REFRESH`] until its first handshake ([`Running::read_awaited`]).
    fn reconcile_seats(&mut self, moved: &[Moved]) {
        let Some((table, _)) = &self.device else {
            return;
        };
        let (want, keys) = desired::moved_configs(moved, self.task.relay_port, self.grants());
        let mut has = table.peers_of(&keys);
        let changes = mesh_wg::plan(&want, &has, SystemTime::now());
        if !changes.is_empty() {
            if let Some((error, peers)) = apply(table, &changes, &mut self.state) {
                // Tried again at the next refresh, which plans every peer.
                let version = self.grants.as_ref().map(|(p, _)| p.rules.version);
                self.policy_logged
                    .refused(&error, peers, version, Instant::now());
            }
            has = table.peers_of(&keys);
        }
        let now = Instant::now();
        for key in &keys {
            if self.state.stats.remove(key).is_some() && !has.iter().any(|p| p.public_key == *key) {
                self.awaiting.remove(key);
            }
        }
        for p in has {
            if p.last_handshake.is_none() {
                self.awaiting.entry(p.public_key).or_insert(now);
            } else {
                self.awaiting.remove(&p.public_key);
            }
            self.state.stats.insert(p.public_key, p);
        }
    }

    /// Reads the statuses of the peers whose first handshake is awaited, and no other's: a handshake shows in
    /// the API within [`AWAIT_REFRESH`] of it, at the cost of the peers that joined.
    fn read_awaited(&mut self, now: Instant) {
        let Some((table, _)) = &self.device else {
            return;
        };
        let keys: Vec<Key> = awaited(&self.awaiting, now).collect();
        if keys.is_empty() {
            return;
        }
        let has = table.peers_of(&keys);
        for key in &keys {
            // Gone from the device since: the change that took it off said so.
            if !has.iter().any(|p| p.public_key == *key) {
                self.awaiting.remove(key);
            }
        }
        for p in has {
            if p.last_handshake.is_some() {
                self.awaiting.remove(&p.public_key);
            }
            self.state.stats.insert(p.public_key, p);
        }
    }

    fn reconcile(&mut self) {
        // What the API says is enforced moves with the plan that enforces it, not with the chain's read:
        // a user who waits for a version to act on it must find the interface already holding it.
        let read = self.grants.as_ref().map(|(p, _)| Arc::clone(p));
        let Some((table, _)) = &self.device else {
            self.state.policy = read;
            self.state.stats = PeerStats::default();
            return;
        };
        let want = desired::peer_configs(
            self.state.members.values(),
            self.task.relay_port,
            self.grants(),
        );
        let has = table.peers();
        let changes = mesh_wg::plan(&want, &has, SystemTime::now());
        // Read again only when changed: a thousand peers' statuses are most of an idle reconcile.
        // A backend that could not put a reach in force (nftables refused it) still judges by the grants
        // before, and reports the reach before: the next refresh plans the peer again.
        let (has, refused) = if changes.is_empty() {
            (has, None)
        } else {
            let refused = apply(table, &changes, &mut self.state);
            (table.peers(), refused)
        };
        match refused {
            Some((error, peers)) => {
                self.policy_logged.refused(
                    &error,
                    peers,
                    read.as_ref().map(|p| p.rules.version),
                    Instant::now(),
                );
            }
            None => {
                self.policy_logged.in_force();
                self.state.policy = read;
            }
        }
        if let Some(interfaces) = &self.task.interfaces {
            let watching = self.task.watchers.watching(Instant::now());
            self.watching_all = watching == mesh_wg::Watching::All;
            interfaces.set_watching(table, watching);
            self.state.relay = interfaces.relay_counters(table);
            self.state.nat = interfaces.nat(table);
            self.state.peer_relay = interfaces.peer_relay(table);
            self.state.policy_dropped = interfaces.policy_dropped(table);
            self.policy_logged.note(
                self.state.policy.as_deref(),
                self.state.policy_dropped,
                Instant::now(),
            );
        }
        let stats: PeerStats = has.into_iter().map(|p| (p.public_key, p)).collect();
        let now = Instant::now();
        self.awaiting
            .retain(|k, _| stats.get(k).is_some_and(|p| p.last_handshake.is_none()));
        for (key, p) in &stats {
            if p.last_handshake.is_none() {
                self.awaiting.entry(*key).or_insert(now);
            }
        }
        self.state.stats = stats;
    }

    async fn leave(&mut self) {
        let (Some((table, info)), Some(interfaces)) =
            (self.device.take(), self.task.interfaces.as_mut())
        else {
            return;
        };
        self.state.device = None;
        self.state.stats = PeerStats::default();
        self.state.nat = None;
        self.state.peer_relay = None;
        match interfaces.remove(table).await {
            Ok(()) => info!(interface = %info.ifname, "removed the interface"),
            Err(e) => {
                warn!(interface = %info.ifname, error = %format!("{e:#}"), "could not remove the interface cleanly")
            }
        }
    }
}

/// What a new view did to the members.
enum MembersMoved {
    Nothing,
    /// These seats' members changed, and no other's.
    Seats(Vec<Moved>),
    /// They were worked out from nothing: a first view, or another seat.
    All,
}

/// A member's key, named by its seat.
fn seat_name(m: &mesh_chain::membership::Member) -> Option<(Key, String)> {
    Some((m.wg_public_key?, format!("seat {}", m.token_id)))
}

/// Applies `changes` to `table`, each logged, and counts them in `state`; returns the first refusal to put a peer's reach in force (the grants
/// between seats) and how many peers met one, which the caller logs once for all.
fn apply(
    table: &impl PeerTable,
    changes: &[Change],
    state: &mut MeshState,
) -> Option<(mesh_wg::Error, usize)> {
    if changes.is_empty() {
        return None;
    }
    for change in changes {
        info!(%change, "reconcile");
    }
    let began = Instant::now();
    let mut refused: Option<(mesh_wg::Error, usize)> = None;
    for (change, error) in mesh_wg::apply(table, changes) {
        if matches!(error, mesh_wg::Error::Policy { .. }) {
            match &mut refused {
                Some((_, n)) => *n += 1,
                None => refused = Some((error, 1)),
            }
        } else {
            warn!(%change, %error, "could not apply a change");
        }
    }
    state.reconcile_latency.observe(began.elapsed());
    state.reconciles = state.reconciles.saturating_add(1);
    refused
}

#[cfg(test)]
mod tests;
