//! The registrar as a sans-IO machine: `handle_*` in, [`Job`]s, [`Print`]s and faults out.
//!
//! One check at a time, each a chain of jobs: read and (if it differs) send this node's record; while the
//! seat's binding is a quote of another image than this node runs, or while the node has no seat (or its
//! seat is bound to a key it lost), ask a holder for one on-chain, once per holder. A check starts when it
//! is due, or at once when the seat or whether the view follows the chain changes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use alloy::primitives::Address;
use backoff::Backoff;
use mesh_attest::ClaimedMeasurements;
use mesh_chain::binding::Requested;
use mesh_chain::budget;
use mesh_chain::error::ChainError;
use mesh_chain::membership::Pins;
use mesh_chain::record::{NodeBinding, SignedRegistration};
use mesh_chain::registration::{Desired, Outcome, RegistrationError};
use tracing::{info, warn};

use crate::node::BindingError;
use crate::state::{ChainState, Fault, FaultError, RegState, SeatRequest, SeatState};

/// After a registration that landed: soon, to see that peers believe it.
pub const AFTER_REGISTERING: Duration = Duration::from_secs(2);
/// After a failure: the RPC, the seat or the funds may come right any time.
pub const AFTER_FAILING: Duration = Duration::from_secs(3);
/// The shortest pause between checks of a record that is up to date (a full read also shows a cleared one).
pub const MIN_RECHECK: Duration = Duration::from_secs(10);
/// Reads one check of an up-to-date record makes (the seat's owner and binding, the chain id, the record).
const RECHECK_REQUESTS: u64 = 4;
/// How often a node that asked for a seat checks that its request still stands (a binding clears it).
pub const REQUEST_RECHECK: Duration = Duration::from_secs(30);

/// What the machine is given once.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's key's address: what a relay or a funder is told.
    pub node: Address,
    pub instance_id: String,
    /// How long an up-to-date record goes unchecked (`--full-read-secs`).
    pub recheck: Duration,
    /// Whether to ask for a seat while the node has none (not `--no-seat-request`).
    pub ask: bool,
    /// Whom to ask (`--holder`); the cluster's owner when `None`.
    pub holder: Option<Address>,
}

/// What the registrar needs of the chain task's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// The view's pins, while there is a view.
    pub pins: Option<Pins>,
    /// The view is the state file's: no RPC has answered yet.
    pub from_cache: bool,
    pub seat: SeatState,
    /// The view's record of this node's seat is the one it wants.
    pub record_matches: bool,
    /// The image the seat's binding was quoted on, when its evidence decodes.
    pub bound_image: Option<ClaimedMeasurements>,
    /// Records in the view: what the recheck's budget is shared by.
    pub records: usize,
}

impl Chain {
    /// What `state` says, for a node that wants `desired`.
    pub fn of(state: &ChainState, desired: &Desired) -> Self {
        let Some(view) = state.view.as_deref() else {
            return Self {
                seat: state.seat,
                from_cache: state.from_cache,
                ..Self::default()
            };
        };
        let token = state.seat.token();
        let bound_image = token
            .and_then(|t| view.bindings.get(&t))
            .and_then(|b| mesh_attest::Evidence::decode(&b.evidence).ok())
            .and_then(|e| mesh_attest::claimed_measurements(&e).ok());
        Self {
            pins: Some(view.pins.clone()),
            from_cache: state.from_cache,
            seat: state.seat,
            record_matches: token
                .and_then(|t| view.records.get(&t))
                .is_some_and(|r| desired.matches(r)),
            bound_image,
            records: view.records.len(),
        }
    }
}

/// Chain and dstack work for the driver to do, one at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Read this node's record and send it if it differs (`Cluster::register`).
    Register {
        pins: Pins,
    },
    /// Quote this node, for the image it runs.
    RunningImage,
    HolderOf {
        token: u64,
    },
    Owner,
    /// The holder this node's standing request names, if any.
    RequestedHolder,
    /// Quote this node for a binding for `holder`.
    MakeBinding {
        holder: Address,
        chain_id: u64,
    },
    RequestBinding {
        binding: Box<NodeBinding>,
    },
}

/// A job's result.
#[derive(Debug)]
pub enum JobDone {
    Registered(Result<Outcome, RegistrationError>),
    RunningImage(Result<ClaimedMeasurements, BindingError>),
    HolderOf(Result<Address, ChainError>),
    Owner(Result<Address, ChainError>),
    RequestedHolder(Result<Option<Address>, ChainError>),
    Binding(Result<Box<NodeBinding>, BindingError>),
    Requested(Result<Requested, ChainError>),
    /// It panicked or was aborted.
    Lost,
}

/// What to put on stdout, for a relay: the node has no funds to send it itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Print {
    Registration(Box<SignedRegistration>),
    Binding(Box<NodeBinding>),
}

/// The part of a check whose job is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Register { token: u64 },
    RunningImage { token: u64 },
    HolderOf { token: u64 },
    Owner,
    Requested { holder: Address },
    Binding { holder: Address },
    Sending { holder: Address },
}

/// What a change of is worth a check now: the seat, whether the chain is followed, and this seat's record and
/// binding. A holder's rebind answers a request at the block that holds it, not at the next recheck (30 s on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Trigger {
    seat: SeatState,
    following: bool,
    record_matches: bool,
    bound_image: Option<ClaimedMeasurements>,
}

impl Trigger {
    fn of(chain: &Chain) -> Self {
        Self {
            seat: chain.seat,
            following: chain.pins.is_some() && !chain.from_cache,
            record_matches: chain.record_matches,
            bound_image: chain.bound_image,
        }
    }
}

/// The registrar's decisions.
pub struct Machine {
    config: Config,
    state: RegState,
    chain: Chain,
    last: Option<Trigger>,
    due: Instant,
    step: Option<Step>,
    /// The trigger changed during a check: the next starts as soon as it ends.
    again: bool,
    /// Paces registrations that replaced a stored record peers would not believe: a lying RPC could
    /// otherwise make the node pay for one on every check.
    rereg: Backoff,
    /// Paces requests that fail: each one that reaches the chain costs gas.
    ask_backoff: Backoff,
    relay_printed_for: Option<u64>,
    /// This node's binding, made once per holder (a quote is slow).
    binding: Option<NodeBinding>,
    /// The image this node runs, from a fresh quote, read once (an upgrade restarts the agent).
    running_image: Option<ClaimedMeasurements>,
    jobs: VecDeque<Job>,
    prints: VecDeque<Print>,
    /// Failures to log, each once while it reads the same: the driver renders them with the RPC scrubbed.
    faults: VecDeque<Fault>,
}

impl Machine {
    /// A machine whose first check is due at `now`.
    pub fn new(config: Config, now: Instant) -> Self {
        Self {
            config,
            state: RegState::default(),
            chain: Chain::default(),
            last: None,
            due: now,
            step: None,
            again: false,
            rereg: Backoff::new(Duration::from_secs(60), Duration::from_secs(3600)),
            ask_backoff: Backoff::new(AFTER_FAILING, Duration::from_secs(600)),
            relay_printed_for: None,
            binding: None,
            running_image: None,
            jobs: VecDeque::new(),
            prints: VecDeque::new(),
            faults: VecDeque::new(),
        }
    }

    pub fn state(&self) -> &RegState {
        &self.state
    }

    pub fn poll_job(&mut self) -> Option<Job> {
        self.jobs.pop_front()
    }

    pub fn poll_print(&mut self) -> Option<Print> {
        self.prints.pop_front()
    }

    /// The next failure to log (at warn level).
    pub fn poll_fault(&mut self) -> Option<Fault> {
        self.faults.pop_front()
    }

    /// When the next check is due; none while one is under way (its job's end wakes the driver).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.step.is_none().then_some(self.due)
    }

    /// A new state of the chain task.
    pub fn handle_chain(&mut self, now: Instant, chain: Chain) {
        let trigger = Trigger::of(&chain);
        self.chain = chain;
        if self.last != Some(trigger) {
            self.last = Some(trigger);
            match self.step {
                None => self.due = now,
                Some(_) => self.again = true,
            }
        }
        self.check_if_due(now);
    }

    /// A deadline from [`Machine::poll_timeout`] passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.check_if_due(now);
    }

    /// A job ended.
    pub fn handle_job(&mut self, now: Instant, done: JobDone) {
        match (self.step.take(), done) {
            (Some(Step::Register { token }), JobDone::Registered(outcome)) => {
                self.registered(now, token, outcome);
            }
            (Some(Step::RunningImage { token }), JobDone::RunningImage(read)) => match read {
                Ok(image) => {
                    self.running_image = Some(image);
                    self.check_image(now, token);
                }
                Err(e) => {
                    warn!(error = %crate::causes::Causes(&e), "cannot read the image this node runs, to compare it with its seat's binding");
                    self.up_to_date(now);
                }
            },
            (Some(Step::HolderOf { token }), JobDone::HolderOf(read)) => match read {
                Ok(holder) => {
                    if self.state.seat_request.is_none() {
                        info!(seat = token, %holder, "this node runs another image than the quote its seat was bound with (an upgrade): asking the holder to rebind it, with `meshctl bind --instance {} --token {token}`", self.config.instance_id);
                    }
                    self.ask(now, Some(holder));
                }
                Err(e) => {
                    self.report("reading the seat's holder, to ask for a rebind", e);
                    self.up_to_date(now);
                }
            },
            (Some(Step::Owner), JobDone::Owner(read)) => match read {
                Ok(owner) => self.read_request(owner),
                Err(e) => {
                    self.report("reading the cluster's owner, whom to ask for a seat", e);
                    self.finish(now, AFTER_FAILING);
                }
            },
            (Some(Step::Requested { holder }), JobDone::RequestedHolder(read)) => {
                self.request_read(now, holder, read);
            }
            (Some(Step::Binding { holder }), JobDone::Binding(made)) => match made {
                Ok(binding) => {
                    self.binding = Some(*binding);
                    self.send_request(now, holder);
                }
                Err(e) => {
                    self.report("making this node's binding, to ask for a seat", e);
                    let delay = self.ask_backoff.next_delay();
                    self.finish(now, delay);
                }
            },
            (Some(Step::Sending { holder }), JobDone::Requested(sent)) => {
                self.request_sent(now, holder, sent);
            }
            (step, _) => {
                warn!(
                    ?step,
                    "a registrar job ended abnormally, or out of turn; checking again shortly"
                );
                self.finish(now, AFTER_FAILING);
            }
        }
    }

    fn check_if_due(&mut self, now: Instant) {
        if self.step.is_none() && now >= self.due {
            self.start_check(now);
        }
    }

    fn start_check(&mut self, now: Instant) {
        let Some(pins) = self.chain.pins.clone() else {
            return self.finish(now, AFTER_FAILING);
        };
        let token = match self.chain.seat {
            SeatState::Active(t) => t,
            // The chain task reported why; a node with no seat asks for one.
            SeatState::None if !self.chain.from_cache => {
                self.state.registered = false;
                self.relay_printed_for = None;
                return self.ask(now, None);
            }
            SeatState::None | SeatState::Inactive(_) | SeatState::Unknown => {
                self.state.registered = false;
                self.relay_printed_for = None;
                return self.finish(now, AFTER_FAILING);
            }
        };
        if self.chain.from_cache {
            // No RPC yet: the cached record is the best knowledge of whether peers have the right one.
            self.state.registered = self.chain.record_matches;
            return self.finish(now, AFTER_FAILING);
        }
        self.start(Step::Register { token }, Job::Register { pins });
    }

    fn start(&mut self, step: Step, job: Job) {
        self.step = Some(step);
        self.jobs.push_back(job);
    }

    /// The check is over: the next is due after `delay`, or at once if the trigger changed meanwhile.
    fn finish(&mut self, now: Instant, delay: Duration) {
        self.step = None;
        self.due = match std::mem::take(&mut self.again) {
            true => now,
            false => now + delay,
        };
    }

    fn registered(
        &mut self,
        now: Instant,
        token: u64,
        outcome: Result<Outcome, RegistrationError>,
    ) {
        match outcome {
            Ok(Outcome::UpToDate { .. }) => {
                self.state.registered = true;
                self.state.error = None;
                self.rereg.reset();
                self.check_image(now, token);
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
                let delay = match replaced_unbelievable {
                    Some(_) => self.rereg.next_delay(),
                    None => AFTER_REGISTERING,
                };
                self.finish(now, delay);
            }
            Ok(Outcome::NeedsRelay(reg)) => {
                self.state.registered = false;
                let node = self.config.node;
                self.state.error = Some(Fault::new(
                    "registering this node's record",
                    FaultError::NoFundedSender { node },
                ));
                if self.relay_printed_for != Some(reg.nonce) {
                    self.relay_printed_for = Some(reg.nonce);
                    self.prints.push_back(Print::Registration(reg));
                    warn!(
                        node = %node,
                        "no funded sender: the signed registration is on stdout; relay it with `meshctl relay -`, or fund the node's address with `meshctl fund`"
                    );
                }
                self.finish(now, AFTER_FAILING);
            }
            Err(RegistrationError::BoundToAnotherNode { holder, .. }) if self.config.ask => {
                // The seat's holder rebinds it to this node's new key with the request.
                self.state.registered = false;
                self.ask(now, Some(holder));
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
                self.finish(now, AFTER_FAILING);
            }
        }
    }

    /// Asks the seat's holder for a rebind when the seat's binding is a quote of another image than this
    /// node runs now (it was upgraded in place): peers judge the seat by the bound quote, so the owner could
    /// not disallow the old image without refusing this node.
    fn check_image(&mut self, now: Instant, token: u64) {
        let Some(bound) = self.chain.bound_image.filter(|_| self.config.ask) else {
            return self.up_to_date(now);
        };
        match self.running_image {
            None => self.start(Step::RunningImage { token }, Job::RunningImage),
            Some(running) if running == bound => self.up_to_date(now),
            Some(_) => self.start(Step::HolderOf { token }, Job::HolderOf { token }),
        }
    }

    /// The record is as wanted and there is nothing to ask: the next check is the safety net (a change to
    /// the record comes with the view at its block), held to the cluster's budget.
    fn up_to_date(&mut self, now: Instant) {
        self.state.seat_request = None;
        let delay = budget::recheck_period(
            self.config.recheck.max(MIN_RECHECK),
            self.chain.records,
            RECHECK_REQUESTS,
        );
        self.finish(now, delay);
    }

    /// Asks `holder` (else `--holder`, else the cluster's owner) for a seat, unless this node's request to
    /// that holder stands already: on-chain from a funded sender, or on stdout for a relay.
    fn ask(&mut self, now: Instant, holder: Option<Address>) {
        if !self.config.ask {
            return self.finish(now, AFTER_FAILING);
        }
        match holder.or(self.config.holder) {
            Some(holder) => self.read_request(holder),
            None => self.start(Step::Owner, Job::Owner),
        }
    }

    fn read_request(&mut self, holder: Address) {
        self.start(Step::Requested { holder }, Job::RequestedHolder);
    }

    fn request_read(
        &mut self,
        now: Instant,
        holder: Address,
        read: Result<Option<Address>, ChainError>,
    ) {
        match read {
            Ok(Some(h)) if h == holder => self.request_stands(now, holder),
            Ok(_) => match (&self.binding, &self.chain.pins) {
                (Some(b), _) if b.holder == holder => self.send_request(now, holder),
                (_, Some(pins)) => {
                    let chain_id = pins.chain_id;
                    self.start(
                        Step::Binding { holder },
                        Job::MakeBinding { holder, chain_id },
                    );
                }
                (_, None) => self.finish(now, AFTER_FAILING),
            },
            Err(e) => {
                self.report("reading this node's request for a seat", e);
                self.finish(now, AFTER_FAILING);
            }
        }
    }

    /// This node's request to `holder` is on-chain: only checked again, at [`REQUEST_RECHECK`].
    fn request_stands(&mut self, now: Instant, holder: Address) {
        self.state.seat_request = Some(SeatRequest {
            holder,
            on_chain: true,
        });
        self.state.error = None;
        self.ask_backoff.reset();
        self.finish(now, REQUEST_RECHECK);
    }

    fn send_request(&mut self, now: Instant, holder: Address) {
        match self.binding.clone() {
            Some(binding) => self.start(
                Step::Sending { holder },
                Job::RequestBinding {
                    binding: Box::new(binding),
                },
            ),
            None => self.finish(now, AFTER_FAILING),
        }
    }

    fn request_sent(&mut self, now: Instant, holder: Address, sent: Result<Requested, ChainError>) {
        let printed = self.state.seat_request
            == Some(SeatRequest {
                holder,
                on_chain: false,
            });
        match sent {
            Ok(Requested::Sent { .. }) => {
                info!(%holder, instance = %self.config.instance_id, "asked for a seat on-chain: the holder runs `meshctl bind --instance {}`", self.config.instance_id);
                self.request_stands(now, holder);
            }
            Ok(Requested::NeedsRelay) => {
                if let Some(binding) = self.binding.clone().filter(|_| !printed) {
                    self.prints.push_back(Print::Binding(Box::new(binding)));
                }
                self.state.seat_request = Some(SeatRequest {
                    holder,
                    on_chain: false,
                });
                let node = self.config.node;
                self.report(
                    "asking for a seat",
                    FaultError::NoFundedRequester { node, holder },
                );
                self.finish(now, AFTER_FAILING);
            }
            Err(e) => {
                self.report("asking for a seat on-chain", e);
                let delay = self.ask_backoff.next_delay();
                self.finish(now, delay);
            }
        }
    }

    /// Shows `e` as what fails now; it is logged only when it reads differently from the last, so a
    /// failure that repeats on every check is logged once.
    fn report(&mut self, doing: &'static str, e: impl Into<FaultError>) {
        let fault = Fault::new(doing, e);
        if self.state.error.as_ref() != Some(&fault) {
            self.faults.push_back(fault.clone());
        }
        self.state.error = Some(fault);
    }
}

#[cfg(test)]
mod tests;
