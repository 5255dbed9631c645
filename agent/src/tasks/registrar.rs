//! The registrar: keeps this node's record on-chain the one it wants, and publishes [`RegState`]. While the
//! node has no seat (or its seat is bound to a key it lost), it asks for one on-chain instead, once per
//! holder: the holder binds it with `meshctl bind --instance`, and the chain task finds the seat.
//!
//! A registration can wait minutes for its receipt; it is awaited here and nowhere else, so the chain task
//! keeps following (revocations included) and a shutdown interrupts it at once.

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use backoff::Backoff;
use mesh_chain::binding::Requested;
use mesh_chain::budget;
use mesh_chain::cluster::Cluster;
use mesh_chain::redact::RedactedUrl;
use mesh_chain::registration::{Desired, Outcome, RegistrationError};
use mesh_chain::view::ChainView;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{ModeArg, RunArgs};
use crate::node::NodeIdentity;
use crate::state::{ChainState, Fault, FaultError, RegState, SeatRequest, SeatState};
use crate::tasks::Shared;

/// After a registration that landed: soon, to see that peers believe it.
const AFTER_REGISTERING: Duration = Duration::from_secs(2);
/// After a failure: the RPC, the seat or the funds may come right any time.
const AFTER_FAILING: Duration = Duration::from_secs(3);
/// The shortest pause between checks of a record that is up to date (a full read also shows a cleared one).
const MIN_RECHECK: Duration = Duration::from_secs(10);
/// Reads one check of an up-to-date record makes (the seat's owner and binding, the chain id, the record).
const RECHECK_REQUESTS: u64 = 4;
/// How often a node that asked for a seat checks that its request still stands (a binding clears it).
const REQUEST_RECHECK: Duration = Duration::from_secs(30);

/// What the registrar needs to know.
pub struct Registrar {
    /// Where the record, the seat and requests are read and sent: through every provider.
    pub cluster: Cluster,
    pub rpc: RedactedUrl,
    pub identity: Arc<NodeIdentity>,
    pub desired: Desired,
    pub tx_key: Option<PrivateKeySigner>,
    /// How long an up-to-date record goes unchecked.
    pub recheck: Duration,
    /// Whom to ask for a seat (`--holder`; the cluster's owner when `None`), unless asking is off.
    pub ask: Option<Ask>,
}

/// Asking for a seat while the node has none.
pub struct Ask {
    pub holder: Option<Address>,
    /// For the quote in the binding.
    pub dstack: dstack_guest::DstackClient,
}

impl Registrar {
    /// The registrar: the record it keeps names this node's WireGuard key and `--endpoint` in
    /// WireGuard mode (neither in TLS mode), and its gateway URL.
    pub fn from_args(args: &RunArgs, shared: &Shared) -> Self {
        let wireguard = args.mode == ModeArg::Wireguard;
        let identity = &shared.identity;
        let desired = Desired {
            wg_public_key: wireguard.then(|| identity.wg_public_key()),
            endpoint: match (wireguard, args.endpoint) {
                (true, Some(e)) => e.to_string(),
                _ => String::new(),
            },
            gateway_url: args.gateway_url(identity.instance_id()).unwrap_or_default(),
        };
        Self {
            cluster: shared.cluster.clone(),
            rpc: shared.rpc.clone(),
            identity: Arc::clone(identity),
            desired,
            tx_key: shared.tx_key.clone(),
            recheck: Duration::from_secs(args.full_read_secs),
            ask: (!args.no_seat_request).then(|| Ask {
                holder: args.holder,
                dstack: shared.dstack.clone(),
            }),
        }
    }
}

/// What the registrar acts on, of all the chain task publishes: a change of it is worth a check now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Trigger {
    seat: SeatState,
    following: bool,
}

impl Trigger {
    fn of(chain: &ChainState) -> Self {
        Self {
            seat: chain.seat,
            following: chain.view.is_some() && !chain.from_cache,
        }
    }
}

struct Running {
    task: Registrar,
    state: RegState,
    /// Paces registrations that replaced a stored record peers would not believe: a lying RPC could
    /// otherwise make the node pay for one on every check.
    rereg: Backoff,
    relay_printed_for: Option<u64>,
    /// This node's binding, made once per holder (a quote is slow).
    binding: Option<mesh_chain::record::NodeBinding>,
    /// Paces requests that fail: each one that reaches the chain costs gas.
    ask_backoff: Backoff,
    /// The image this node runs, from a fresh quote, read once (an upgrade restarts the agent).
    running_image: Option<mesh_attest::ClaimedMeasurements>,
}

impl Registrar {
    /// Runs until `cancel` fires.
    ///
    /// # Errors
    /// None yet: every failure is reported in the state and retried.
    pub async fn run(
        self,
        mut chain: watch::Receiver<ChainState>,
        out: watch::Sender<RegState>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut running = Running {
            task: self,
            state: RegState::default(),
            rereg: Backoff::new(Duration::from_secs(60), Duration::from_secs(3600)),
            relay_printed_for: None,
            binding: None,
            ask_backoff: Backoff::new(AFTER_FAILING, Duration::from_secs(600)),
            running_image: None,
        };
        let mut last: Option<Trigger> = None;
        let mut due = Instant::now();
        loop {
            let now_chain = chain.borrow_and_update().clone();
            let trigger = Trigger::of(&now_chain);
            if last != Some(trigger) {
                due = Instant::now();
                last = Some(trigger);
            }
            if Instant::now() >= due {
                let step = running.step(&now_chain);
                let Some(next) = cancel.run_until_cancelled(step).await else {
                    return Ok(());
                };
                due = Instant::now() + next;
                out.send_replace(running.state.clone());
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                changed = chain.changed() => {
                    if changed.is_err() {
                        // The chain task ended: the agent is stopping.
                        return Ok(());
                    }
                }
                () = tokio::time::sleep_until(due) => {}
            }
        }
    }
}

impl Running {
    /// One check; returns when the next is due.
    async fn step(&mut self, chain: &ChainState) -> Duration {
        let Some(view) = chain.view.as_deref() else {
            return AFTER_FAILING;
        };
        let token = match chain.seat {
            SeatState::Active(t) => t,
            // The chain task reported why; a node with no seat asks for one.
            SeatState::None if !chain.from_cache => {
                self.state.registered = false;
                self.relay_printed_for = None;
                return self.ask_for_seat(view, None).await;
            }
            SeatState::None | SeatState::Inactive(_) | SeatState::Unknown => {
                self.state.registered = false;
                self.relay_printed_for = None;
                return AFTER_FAILING;
            }
        };
        if chain.from_cache {
            // No RPC yet: the cached record is the best knowledge of whether peers have the right one.
            self.state.registered = view
                .records
                .get(&token)
                .is_some_and(|r| self.task.desired.matches(r));
            return AFTER_FAILING;
        }
        let outcome = self
            .task
            .cluster
            .register(
                &self.task.identity.node,
                &self.task.desired,
                self.task.tx_key.as_ref(),
                &view.pins,
            )
            .await;
        match outcome {
            Ok(Outcome::UpToDate { .. }) => {
                self.state.registered = true;
                self.state.error = None;
                self.rereg.reset();
                match self.check_image(view, token).await {
                    Some(next) => next,
                    None => {
                        self.state.seat_request = None;
                        // A change to the record comes with the view at its block; this is the safety net,
                        // held to the cluster's budget.
                        budget::recheck_period(
                            self.task.recheck.max(MIN_RECHECK),
                            view.records.len(),
                            RECHECK_REQUESTS,
                        )
                    }
                }
            }
            Ok(Outcome::Registered {
                replaced_unbelievable,
                ..
            }) => {
                // Cluster::register logged it, with the sender and, for a replacement, the reason.
                self.state.registered = true;
                self.state.error = None;
                self.state.seat_request = None;
                self.state.registrations = self.state.registrations.saturating_add(1);
                match replaced_unbelievable {
                    Some(_) => self.rereg.next_delay(),
                    None => AFTER_REGISTERING,
                }
            }
            Ok(Outcome::NeedsRelay(reg)) => {
                self.state.registered = false;
                let node = self.task.identity.node.address();
                self.state.error = Some(Fault::new(
                    "registering this node's record",
                    FaultError::NoFundedSender { node },
                ));
                if self.relay_printed_for != Some(reg.nonce) {
                    self.relay_printed_for = Some(reg.nonce);
                    match serde_json::to_string(&reg) {
                        Ok(json) => println!("{json}"),
                        Err(e) => error!(error = %e, "cannot encode the registration"),
                    }
                    warn!(
                        node = %self.task.identity.node.address(),
                        "no funded sender: the signed registration is on stdout; relay it with `meshctl relay -`, or fund the node's address with `meshctl fund`"
                    );
                }
                AFTER_FAILING
            }
            Err(RegistrationError::BoundToAnotherNode { holder, .. })
                if self.task.ask.is_some() =>
            {
                // The seat's holder rebinds it to this node's new key with the request.
                self.state.registered = false;
                self.ask_for_seat(view, Some(holder)).await
            }
            Err(e) => {
                // The chain not answering says nothing of the record: what the last answer showed holds, so
                // that an outage of every provider does not make every node unhealthy at once.
                let unanswered = matches!(&e, RegistrationError::Chain(c) if c.is_unanswered());
                if unanswered {
                    self.state.rpc_errors = self.state.rpc_errors.saturating_add(1);
                } else {
                    self.state.registered = false;
                }
                self.report("registration failed", e);
                AFTER_FAILING
            }
        }
    }

    /// Asks the seat's holder for a rebind when the seat's binding is a quote of another image than this node
    /// runs now (it was upgraded in place): peers judge the seat by the bound quote, so the owner could not
    /// disallow the old image without refusing this node. `None` when there is nothing to ask.
    async fn check_image(&mut self, view: &ChainView, token: u64) -> Option<Duration> {
        let ask = self.task.ask.as_ref()?;
        let bound = view.bindings.get(&token)?;
        let bound = mesh_attest::Evidence::decode(&bound.evidence)
            .ok()
            .and_then(|e| mesh_attest::claimed_measurements(&e).ok())?;
        if self.running_image.is_none() {
            match crate::node::running_image(&ask.dstack).await {
                Ok(m) => self.running_image = Some(m),
                Err(e) => {
                    warn!(error = %crate::causes::Causes(&e), "cannot read the image this node runs, to compare it with its seat's binding");
                    return None;
                }
            }
        }
        if self.running_image? == bound {
            return None;
        }
        let holder = match self.task.cluster.holder_of(token).await {
            Ok(h) => h,
            Err(e) => {
                self.report("reading the seat's holder, to ask for a rebind", e);
                return None;
            }
        };
        if self.state.seat_request.is_none() {
            info!(seat = token, %holder, "this node runs another image than the quote its seat was bound with (an upgrade): asking the holder to rebind it, with `meshctl bind --instance {} --token {token}`", self.task.identity.instance_id());
        }
        Some(self.ask_for_seat(view, Some(holder)).await)
    }

    /// Asks `holder` (else `--holder`, else the cluster's owner) for a seat, unless this node's request to
    /// that holder stands already: on-chain from a funded sender, or on stdout for a relay.
    async fn ask_for_seat(&mut self, view: &ChainView, holder: Option<Address>) -> Duration {
        let Some(ask) = &self.task.ask else {
            return AFTER_FAILING;
        };
        let (configured, dstack) = (ask.holder, ask.dstack.clone());
        let identity = Arc::clone(&self.task.identity);
        let node = &identity.node;
        let cluster = self.task.cluster.clone();
        let holder = match holder.or(configured) {
            Some(h) => h,
            None => match cluster.owner().await {
                Ok(owner) => owner,
                Err(e) => {
                    self.report("reading the cluster's owner, whom to ask for a seat", e);
                    return AFTER_FAILING;
                }
            },
        };
        match cluster.requested_holder(node.address()).await {
            Ok(Some(h)) if h == holder => {
                self.state.seat_request = Some(SeatRequest {
                    holder,
                    on_chain: true,
                });
                self.state.error = None;
                self.ask_backoff.reset();
                return REQUEST_RECHECK;
            }
            Ok(_) => {}
            Err(e) => {
                self.report("reading this node's request for a seat", e);
                return AFTER_FAILING;
            }
        }
        let binding = match self.binding.take() {
            Some(b) if b.holder == holder => b,
            _ => {
                let made = crate::node::binding(
                    &dstack,
                    node,
                    holder,
                    view.pins.chain_id,
                    cluster.address(),
                )
                .await;
                match made {
                    Ok(b) => b,
                    Err(e) => {
                        self.report("making this node's binding, to ask for a seat", e);
                        return self.ask_backoff.next_delay();
                    }
                }
            }
        };
        let sent = cluster
            .request_binding(node, &binding, self.task.tx_key.as_ref())
            .await;
        let printed = self.state.seat_request
            == Some(SeatRequest {
                holder,
                on_chain: false,
            });
        let next = match sent {
            Ok(Requested::Sent { .. }) => {
                info!(%holder, instance = %node.instance_id, "asked for a seat on-chain: the holder runs `meshctl bind --instance {}`", node.instance_id);
                self.state.seat_request = Some(SeatRequest {
                    holder,
                    on_chain: true,
                });
                self.state.error = None;
                self.ask_backoff.reset();
                REQUEST_RECHECK
            }
            Ok(Requested::NeedsRelay) => {
                if !printed {
                    match serde_json::to_string(&binding) {
                        Ok(json) => println!("{json}"),
                        Err(e) => error!(error = %e, "cannot encode the binding"),
                    }
                }
                self.state.seat_request = Some(SeatRequest {
                    holder,
                    on_chain: false,
                });
                self.report(
                    "asking for a seat",
                    FaultError::NoFundedRequester {
                        node: node.address(),
                        holder,
                    },
                );
                AFTER_FAILING
            }
            Err(e) => {
                self.report("asking for a seat on-chain", e);
                self.ask_backoff.next_delay()
            }
        };
        self.binding = Some(binding);
        next
    }

    fn report(&mut self, doing: &'static str, e: impl Into<FaultError>) {
        super::show_fault(&mut self.state.error, &self.task.rpc, Fault::new(doing, e));
    }
}
