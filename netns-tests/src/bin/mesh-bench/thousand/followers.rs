//! The other members' control planes: the agent's own follower, membership and plan code for each member,
//! many in this process, each on anvil's WebSocket as an agent at its defaults follows it (new heads by
//! subscription, a safety poll), with no data plane: a plan is applied to a table in memory, and a member
//! that has applied the newcomer has its simulated WireGuard peer in the swarm initiate toward it.
//!
//! Each member judges the seats' evidence as the agent does ([`Attestor::pass`], then only the admitted
//! seats planned), from a copy of an attestor that has checked every seat already: a member that has run
//! for a while. So a join costs each member the newcomer's evidence checked anew and every other seat's
//! verdict kept, as at a real node; the cold pass over every seat is measured once, beside the fleet.
//!
//! Left out of what an agent does per change: writing the state file and serving the API (each costs the
//! node, not the others, and would be a thousand times on these two cores).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use alloy::primitives::Address;
use alloy::transports::http::reqwest::Url;
use mesh_chain::follow::{Anchors, FollowConfig, Follower};
use mesh_chain::heads::{Wake, Wakeups};
use mesh_chain::membership::Own;
use mesh_chain::roster::{Members, Moved, Roster};
use mesh_chain::view::ChainView;
use mesh_wg::{MemoryTable, PeerTable as _};
use netns_tests::in_process::swarm::Swarm;
use p2p_agent::attestation;
use p2p_agent::state::SeatState;
use p2p_agent::tasks::chain::attest::Attestor;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::members::Member;

/// The agent's defaults: `--confirmations 0`, `--poll-interval-ms 2000`. The full read is an hour apart
/// rather than a minute: a thousand full reads a minute on the bench's one anvil would be what it measures
/// (the cost of one is measured on its own).
const CONFIG: FollowConfig = FollowConfig {
    confirmations: 0,
    full_read_every: Duration::from_secs(3600),
};
const POLL: Duration = Duration::from_secs(2);

/// How many followers start at once: each opens two WebSockets and confirms its view with a full read.
const STARTING_AT_ONCE: usize = 16;

/// What one follower did, as the bench reads it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    /// It confirmed its view (its first full read) and follows heads.
    pub(crate) ready: bool,
    /// When its view first held the watched seat's binding (its mint's block), and when its plan first
    /// held the seat (its record's block).
    pub(crate) bound: Option<Instant>,
    pub(crate) applied: Option<Instant>,
    /// The attestation pass of the change that brought the watched seat's binding (its quote checked), and
    /// of the one that admitted its record; and the evidence each checked anew.
    pub(crate) binding_pass: Option<Duration>,
    pub(crate) binding_checked_anew: u64,
    pub(crate) admitting_pass: Option<Duration>,
    pub(crate) admitting_checked_anew: u64,
    /// What applying the change that first held the watched seat took: who the members are, what the
    /// interface should hold, the plan, applied. One peer added, among all the others.
    pub(crate) apply_took: Option<Duration>,
    /// The same, step by step.
    pub(crate) apply_steps: Option<Steps>,
    /// When the wake-up that led to `applied` came: the head's arrival, for a member woken by one.
    pub(crate) heard: Option<Instant>,
    /// Whether it follows heads by subscription now (else it polls, as the agent does when one drops).
    pub(crate) subscribed: bool,
    /// Its chain requests so far, and of those its head polls ([`Follower::requests`]).
    pub(crate) requests: u64,
    pub(crate) head_polls: u64,
    /// Why it stopped, if it did.
    pub(crate) failed: Option<String>,
    /// Ticks that failed (each retried at the next wake-up, as the agent does), and the last one's error.
    pub(crate) tick_errors: u64,
    pub(crate) last_error: Option<String>,
}

/// The followers, one task each; dropping it stops them.
pub(crate) struct Fleet {
    seen: Arc<Mutex<Vec<Seen>>>,
    watched: Arc<std::sync::atomic::AtomicU64>,
    _tasks: JoinSet<()>,
}

impl Fleet {
    /// Starts a follower per member, each from `view` (as from its state file) and a copy of `attestor`,
    /// and following `ws`. Call on a runtime inside the namespace of the chain.
    pub(crate) fn start(
        members: &[Member],
        view: &ChainView,
        attestor: &Attestor,
        contract: Address,
        ws: &Url,
        swarm: Option<&Arc<Swarm>>,
    ) -> Self {
        let seen = Arc::new(Mutex::new(vec![Seen::default(); members.len()]));
        let watched = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let starting = Arc::new(Semaphore::new(STARTING_AT_ONCE));
        let mut tasks = JoinSet::new();
        for (index, member) in members.iter().enumerate() {
            let one = One {
                index,
                member: member.clone(),
                contract,
                ws: ws.clone(),
                seen: seen.clone(),
                watched: watched.clone(),
                swarm: swarm.cloned(),
            };
            let (view, starting, attestor) = (view.clone(), starting.clone(), attestor.clone());
            tasks.spawn(async move {
                if let Err(e) = one.run(view, attestor, &starting).await {
                    one.update(|s| s.failed = Some(format!("{e:#}")));
                }
            });
        }
        Self {
            seen,
            watched,
            _tasks: tasks,
        }
    }

    /// From now on, each follower notes when its plan first holds seat `token`, and has its peer in the
    /// swarm initiate toward it then.
    pub(crate) fn watch(&self, token: u64) {
        self.watched
            .store(token, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// One follower.
struct One {
    index: usize,
    member: Member,
    contract: Address,
    ws: Url,
    seen: Arc<Mutex<Vec<Seen>>>,
    watched: Arc<std::sync::atomic::AtomicU64>,
    /// The member's simulated WireGuard peer's swarm, when the bench has one.
    swarm: Option<Arc<Swarm>>,
}

impl One {
    fn update(&self, f: impl FnOnce(&mut Seen)) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut seen[self.index]);
    }

    /// As the agent's chain task does it (`tasks::chain`), less the state file: start from the cached view,
    /// then a tick per wake-up, and the attestation pass and the plan for every change.
    async fn run(
        &self,
        view: ChainView,
        mut attestor: Attestor,
        starting: &Semaphore,
    ) -> anyhow::Result<()> {
        let table = MemoryTable::default();
        let mut admitted = None;
        let mut roster = None;
        let (mut follower, mut wakeups) = {
            let _permit = starting.acquire().await?;
            let provider = mesh_chain::rpc::reader(&self.ws).await?;
            let mut follower = Follower::start(
                provider,
                self.contract,
                CONFIG,
                Some(view),
                &Anchors::default(),
            )
            .await?;
            let wakeups = Wakeups::new(POLL, Some(self.ws.clone()));
            follower.tick(Instant::now()).await?;
            let pass = admit(&mut attestor, &mut follower, &mut admitted, &self.member).await;
            self.apply(admitted.as_ref(), &table, &mut roster, pass);
            (follower, wakeups)
        };
        self.update(|s| s.ready = true);
        loop {
            let heads = match wakeups.next().await {
                Wake::Heads(heads) => heads,
                Wake::Timer => Vec::new(),
            };
            let woke = Instant::now();
            let tick = follower.tick_at(woke, &heads).await;
            self.note_binding(&follower);
            match tick {
                Ok(tick) if tick.changed || attestor.due() => {
                    let pass =
                        admit(&mut attestor, &mut follower, &mut admitted, &self.member).await;
                    let watched = self.watched.load(std::sync::atomic::Ordering::SeqCst);
                    if follower.view().bindings.contains_key(&watched) {
                        self.update(|s| {
                            if s.binding_pass.is_none() {
                                s.binding_pass = Some(pass.took);
                                s.binding_checked_anew = pass.checked_anew;
                            }
                        });
                    }
                    self.apply(admitted.as_ref(), &table, &mut roster, pass);
                    self.update(|s| {
                        if s.applied.is_some() {
                            s.heard.get_or_insert(woke);
                        }
                    });
                }
                Ok(_) => {}
                // As the agent: reported, and the next wake-up tries again.
                Err(e) => {
                    let e = e.to_string();
                    self.update(|s| {
                        s.tick_errors += 1;
                        s.last_error = Some(e);
                    });
                }
            }
            wakeups.cluster_of(follower.view().records.len());
            if heads.is_empty()
                && let Some(latest) = follower.latest_head()
            {
                wakeups.polled(latest);
            }
            let (requests, head_polls) = (follower.requests, follower.head_polls);
            let subscribed = wakeups.subscribed();
            self.update(|s| {
                (s.requests, s.head_polls, s.subscribed) = (requests, head_polls, subscribed);
            });
        }
    }

    fn note_binding(&self, follower: &Follower) {
        let watched = self.watched.load(std::sync::atomic::Ordering::SeqCst);
        if follower.view().bindings.contains_key(&watched) {
            let now = Instant::now();
            self.update(|s| {
                s.bound.get_or_insert(now);
            });
        }
    }

    /// The agent's decisions for a new admitted view: who the members are, what the interface should hold,
    /// the plan from what it holds, applied. The watched seat, once planned, is noted (with `pass`, the
    /// attestation pass that admitted it) and initiated toward.
    fn apply(
        &self,
        admitted: Option<&Arc<ChainView>>,
        table: &MemoryTable,
        roster: &mut Option<Roster>,
        pass: Pass,
    ) {
        let Some(view) = admitted.filter(|_| pass.moved) else {
            return;
        };
        let began = Instant::now();
        let (members, steps) = plan_and_apply(view, &self.member, table, roster);
        let took = began.elapsed();
        let watched = self.watched.load(std::sync::atomic::Ordering::SeqCst);
        let Some(newcomer) = members.get(&watched) else {
            return;
        };
        let (Some(key), Some(endpoint)) = (newcomer.wg_public_key, newcomer.endpoint) else {
            return;
        };
        let now = Instant::now();
        let mut first = false;
        self.update(|s| {
            first = s.applied.is_none();
            s.applied.get_or_insert(now);
            if first {
                s.admitting_pass = Some(pass.took);
                s.admitting_checked_anew = pass.checked_anew;
                s.apply_took = Some(took);
                s.apply_steps = Some(steps);
            }
        });
        if first && let Some(swarm) = &self.swarm {
            swarm.initiate(self.index, *key.as_bytes(), endpoint);
        }
    }
}

/// The agent's decisions for a new admitted `view` at `member`: who the members are (carried in `roster`
/// from the last view, as the agent's mesh task carries them), what the interface should hold for the seats
/// that moved, what `table` holds of them, the plan, applied. Returns the members, and how long each step
/// took.
pub(crate) fn plan_and_apply(
    view: &Arc<ChainView>,
    member: &Member,
    table: &MemoryTable,
    roster: &mut Option<Roster>,
) -> (Members, Steps) {
    let mut lap = Lap(Instant::now(), Steps::default());
    let moved = match roster {
        Some(roster) => roster.update(view).0,
        None => {
            let own = Own {
                token_id: Some(member.token),
                instance_id: &member.instance_id,
                wg_public_key: Some(member.wg_key),
            };
            let (fresh, _) = p2p_agent::desired::roster(view, SeatState::Active(member.token), own);
            let fresh = roster.insert(fresh.expect("an active seat has members"));
            (fresh.members().values())
                .map(|m| Moved {
                    token_id: m.token_id,
                    before: None,
                    after: Some(m.clone()),
                })
                .collect()
        }
    };
    lap.step(0);
    let (want, keys) = p2p_agent::desired::moved_configs(&moved, None, None);
    lap.step(1);
    let has = table.peers_of(&keys);
    lap.step(2);
    let changes = mesh_wg::plan(&want, &has, SystemTime::now());
    lap.step(3);
    let failed = mesh_wg::apply(table, &changes);
    lap.step(4);
    debug_assert!(failed.is_empty(), "a table in memory refuses nothing");
    let members = roster.as_ref().map(|r| r.members().clone());
    (members.unwrap_or_default(), lap.1)
}

/// How long each step of [`plan_and_apply`] took, in the order of [`Steps::NAMES`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Steps(pub(crate) [Duration; 5]);

impl Steps {
    pub(crate) const NAMES: [&str; 5] = [
        "the members",
        "the moved seats' peers",
        "their table read",
        "the plan",
        "its application",
    ];
}

/// Times consecutive steps.
struct Lap(Instant, Steps);

impl Lap {
    fn step(&mut self, i: usize) {
        let now = Instant::now();
        self.1.0[i] = now - self.0;
        self.0 = now;
    }
}

/// One attestation pass: how long it took, the evidence it checked anew, and whether the records it admits
/// moved (else, as at the agent, the members and the plan are not worked out again).
#[derive(Clone, Copy)]
struct Pass {
    took: Duration,
    checked_anew: u64,
    moved: bool,
}

/// The agent's attestation pass over the follower's view, and the view it admits (`admitted`, which the
/// next pass starts from, as the agent's does).
async fn admit(
    attestor: &mut Attestor,
    follower: &mut Follower,
    admitted: &mut Option<Arc<ChainView>>,
    member: &Member,
) -> Pass {
    let began = Instant::now();
    let before = attestor.checked_anew();
    let view = follower.view().clone();
    let attestations = attestor.pass(&view, Some(follower)).await;
    let now = attestation::admitted(
        view,
        &attestations,
        &member.instance_id,
        admitted.as_deref(),
    );
    let moved = admitted.as_ref().is_none_or(|was| !was.same_records(&now));
    *admitted = Some(Arc::new(now));
    Pass {
        took: began.elapsed(),
        checked_anew: attestor.checked_anew() - before,
        moved,
    }
}
