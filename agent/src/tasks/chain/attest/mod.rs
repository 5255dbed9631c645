//! The chain task's attestation pass: each seat's evidence checked ([`crate::attestation::Checker`]) under the
//! collateral for its platform, then under the cluster's allowlists as the app auth answers them. The I/O
//! (collateral from a PCCS, the allowlist reads) is here; the decisions are in [`crate::attestation`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, B256};
use mesh_attest::collateral::{CollateralSource, Platform, quote_platform};
use mesh_attest::tcb::TcbPolicy;
use mesh_attest::{CollateralInfo, Evidence, QuoteCollateralV3, Refusal, TcbStatus, Verdict};
use mesh_chain::budget;
use mesh_chain::follow::Follower;
use mesh_chain::policy::ClusterPolicy;
use mesh_chain::redact::RedactedUrl;
use mesh_chain::view::{Binding, ChainView};
use tracing::{info, warn};

use crate::attestation::{self, Allowlisted, Attestations, Attested, Checker};
use crate::tcb_stages::{BelowSince, Staging};
use inputs::Inputs;

mod inputs;

/// One allowlist answer, and when it was read (none: from the state file, to be read again).
#[derive(Clone, Copy)]
struct Answer {
    allowed: Allowlisted,
    read_at: Option<Instant>,
}

/// The cluster's TCB policy as last read (none: the owner set none, and the flags' statuses apply), and when.
#[derive(Clone)]
struct PolicyAnswer {
    policy: Option<TcbPolicy>,
    read_at: Option<Instant>,
}

/// A seat's verdict as a pass reached it, with everything it was reached on: while the seat's binding, the
/// collateral for its platform and the accepted TCB statuses stay as they were, the next pass takes it
/// as it is, without decoding the evidence, so that a change in one seat costs the verification of that
/// seat only.
#[derive(Clone)]
struct Checked {
    evidence_hash: B256,
    instance_id: String,
    node: Address,
    /// The cluster the evidence must commit to: its app ids, chain id and contract.
    apps: Vec<Address>,
    chain: (u64, Address),
    platform: Platform,
    collateral: Arc<QuoteCollateralV3>,
    statuses: std::collections::BTreeSet<TcbStatus>,
    verdict: Result<Verdict, Refusal>,
    /// The collateral's TCB evaluation data number, which the cluster's TCB policy judges.
    evaluation: u32,
}

impl Checked {
    /// Whether this verdict still answers for `binding` in `view`'s cluster under `collateral` and
    /// `statuses` at `now`: a verdict lapses when its collateral's next update is past, as in the checker's
    /// cache.
    fn answers(
        &self,
        binding: &Binding,
        view: &ChainView,
        collateral: &Arc<QuoteCollateralV3>,
        statuses: &std::collections::BTreeSet<TcbStatus>,
        now: u64,
    ) -> bool {
        self.evidence_hash == binding.evidence_hash
            && self.instance_id == binding.instance_id
            && self.node == binding.node
            && self.apps == view.pins.app_ids
            && self.chain == (view.chain_id(), view.contract)
            && Arc::ptr_eq(&self.collateral, collateral)
            && self.statuses == *statuses
            && !matches!(&self.verdict, Ok(v) if now > v.collateral_next_update)
    }
}

/// What the pass keeps between runs. A copy goes on from where this one is, as another node that had
/// checked the same seats would.
#[derive(Clone)]
pub struct Attestor {
    checker: Checker,
    /// Each seat's last verdict, while it answers ([`Checked::answers`]).
    checked: BTreeMap<u64, Checked>,
    /// Evidence decoded and checked anew (not answered from `checked`), since the start.
    checked_anew: u64,
    /// Seats judged (each a look at its verdict, allowlists and TCB standing), since the start.
    judged: u64,
    collateral: CollateralSource,
    allowlists: BTreeMap<(B256, B256), Answer>,
    /// None until first read: until then each agent's flags decide, as with no policy.
    tcb: Option<PolicyAnswer>,
    /// The cluster's grants between seats as last read, and when; none until first read.
    grants: Option<(Arc<ClusterPolicy>, Option<Instant>)>,
    /// Since when each seat below the TCB policy has been.
    staging: Staging,
    /// A pass runs at least this often, so that fresh collateral (a revoked TCB) takes effect without a new
    /// record; allowlist answers and the TCB policy older than this are read again, or older than the
    /// cluster's budget allows ([`Attestor::reread_after`]).
    refresh: Duration,
    /// The cluster's nodes, as of the last pass.
    nodes: usize,
    last_pass: Option<Instant>,
    /// The last pass's inputs and verdicts, while they may answer for the next pass ([`inputs`]).
    last: Option<(Inputs, Arc<Attestations>)>,
    /// Scrubs the RPC's credentials from read errors.
    rpc: RedactedUrl,
}

/// The shortest wait before a PCCS that failed is asked again.
const PCCS_RETRY: Duration = Duration::from_secs(2);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Attestor {
    /// Starts from the allowlist answers the state file kept (and, with [`Attestor::with_tcb_below`], from
    /// when each seat below the TCB policy fell below).
    pub fn new(
        checker: Checker,
        collateral: CollateralSource,
        refresh: Duration,
        saved: Vec<Allowlisted>,
        rpc: RedactedUrl,
    ) -> Self {
        Self {
            checker,
            checked: BTreeMap::new(),
            checked_anew: 0,
            judged: 0,
            collateral,
            allowlists: saved
                .into_iter()
                .map(|a| {
                    let answer = Answer {
                        allowed: a,
                        read_at: None,
                    };
                    ((a.compose_hash, a.os_measurement), answer)
                })
                .collect(),
            tcb: None,
            grants: None,
            staging: Staging::default(),
            refresh,
            nodes: 1,
            last_pass: None,
            last: None,
            rpc,
        }
    }

    /// Starts from the grants between seats the state file kept: enforced until the first read replaces
    /// them, which comes at the first pass the RPC answers.
    pub fn with_grants(mut self, saved: Option<ClusterPolicy>) -> Self {
        self.grants = saved.map(|g| (Arc::new(g), None));
        self
    }

    /// Starts the TCB stages from what the state file kept.
    pub fn with_tcb_below(mut self, saved: &[BelowSince]) -> Self {
        self.staging = Staging::from_saved(saved);
        self
    }

    /// When each seat below the TCB policy fell below, for the state file.
    pub fn tcb_below(&self) -> Vec<BelowSince> {
        self.staging.saved()
    }

    /// Whether a seat fell below the TCB policy or came back since the last call: the state file is due.
    pub fn tcb_below_changed(&mut self) -> bool {
        self.staging.take_changed()
    }

    /// Whether a pass is due although the view did not change: every refresh interval, and when a seat below
    /// the TCB policy changes stage.
    pub fn due(&self) -> bool {
        let stage_changes = self.stage_change_due();
        // While the PCCS fails, the pass that asks it again comes as soon as it may be asked.
        let pccs_retry = self.collateral.failing().is_some()
            && self
                .last_pass
                .is_none_or(|t| t.elapsed() >= self.pccs_retry());
        stage_changes || pccs_retry || self.last_pass.is_none_or(|t| t.elapsed() >= self.refresh)
    }

    /// Whether a seat below the TCB policy changes stage now.
    fn stage_change_due(&self) -> bool {
        self.policy()
            .and_then(|p| self.staging.next_change(p, unix_now()))
            .is_some_and(|at| unix_now() >= at)
    }

    /// The next pass walks every seat, whatever its inputs: what a bench measures a walk with.
    pub fn walk_next_pass(&mut self) {
        self.last = None;
    }

    /// Whether the PCCS's last fetch failed: when, and why (it serves the cached collateral meanwhile, until
    /// that expires).
    pub fn collateral_failing(&self) -> Option<(u64, String)> {
        self.collateral
            .failing()
            .map(|(at, why)| (at, why.to_string()))
    }

    /// How soon a PCCS that failed is asked again: within seconds in a small cluster, so that one back up is
    /// seen at once, and as seldom as the cluster's budget says in a large one, so that its nodes together ask
    /// it about once a second.
    fn pccs_retry(&self) -> Duration {
        budget::recheck_period(PCCS_RETRY, self.nodes, 1)
    }

    /// The cluster's allowlists or TCB policy changed on-chain: every answer is read again, at a pass that is
    /// due now.
    pub fn allowlists_changed(&mut self) {
        for answer in self.allowlists.values_mut() {
            answer.read_at = None;
        }
        if let Some(t) = self.tcb.as_mut() {
            t.read_at = None;
        }
        if let Some((_, read_at)) = self.grants.as_mut() {
            *read_at = None;
        }
        self.last_pass = None;
    }

    /// How old an allowlist answer or the TCB policy may be before it is read again: `refresh`, stretched
    /// in a large cluster so that the nodes' rereads together stay within [`budget::RECHECKS_PER_SECOND`].
    /// A change on-chain does not wait for it: the follower reports it at its block
    /// ([`Attestor::allowlists_changed`]); this is the safety net for an event missed.
    fn reread_after(&self) -> Duration {
        // Two calls per allowlist answer (the compose hash, the OS image), the TCB policy's and the grants'.
        let requests = 2 * self.allowlists.len().max(1) as u64 + 3;
        budget::recheck_period(self.refresh, self.nodes, requests)
    }

    /// The cluster's grants between seats, once read.
    pub fn grants(&self) -> Option<Arc<ClusterPolicy>> {
        self.grants.as_ref().map(|(p, _)| Arc::clone(p))
    }

    /// Reads the grants again when they were never read, an app-auth event said they may have changed, or
    /// the last read is older than the refresh interval; on failure, the ones read before serve.
    async fn read_grants(&mut self, follower: Option<&mut Follower>) {
        let fresh = self.grants.as_ref().is_some_and(|(_, read_at)| {
            read_at.is_some_and(|at| at.elapsed() < self.reread_after())
        });
        let Some(f) = follower.filter(|_| !fresh) else {
            return;
        };
        match f.grants().await {
            Ok(read) => {
                if self.grants.as_ref().is_none_or(|(p, _)| **p != read) {
                    let rules = &read.rules;
                    info!(
                        enforced = rules.enforced,
                        version = rules.version,
                        grants = rules.grants.len(),
                        tagged_seats = read.seat_tags.len(),
                        tagged_apps = read.app_tags.len(),
                        "read the cluster's grants between seats"
                    );
                }
                self.grants = Some((Arc::new(read), Some(Instant::now())));
            }
            Err(e) => {
                let error = self.rpc.scrub(&e.to_string());
                warn!(%error, "cannot read the cluster's grants between seats; keeping the ones read before");
            }
        }
    }

    fn policy(&self) -> Option<&TcbPolicy> {
        self.tcb.as_ref().and_then(|t| t.policy.as_ref())
    }

    /// Reads the TCB policy again when the last read is older than the refresh interval; on failure, the one
    /// read before serves.
    async fn read_policy(&mut self, follower: Option<&mut Follower>) {
        if self.tcb.as_ref().is_some_and(|t| {
            t.read_at
                .is_some_and(|at| at.elapsed() < self.reread_after())
        }) {
            return;
        }
        let Some(f) = follower else {
            return;
        };
        match f.tcb_policy().await {
            Ok(read) => {
                let policy = read.and_then(|r| {
                    TcbPolicy::from_chain(
                        r.statuses,
                        r.min_evaluation_data_number,
                        r.grace_secs,
                        r.drop_secs,
                        r.advisories,
                    )
                });
                if self.tcb.as_ref().is_none_or(|t| t.policy != policy) {
                    match &policy {
                        Some(p) => info!(
                            statuses = ?p.statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                            min_evaluation_data_number = p.min_evaluation_data_number,
                            advisories = ?p.advisories,
                            grace_secs = p.grace.as_secs(),
                            drop_secs = p.drop.as_secs(),
                            "read the cluster's TCB policy"
                        ),
                        None => info!(
                            "the cluster sets no TCB policy: this agent's --allow-tcb-status flags decide"
                        ),
                    }
                }
                self.tcb = Some(PolicyAnswer {
                    policy,
                    read_at: Some(Instant::now()),
                });
            }
            Err(e) => {
                let error = self.rpc.scrub(&e.to_string());
                warn!(%error, "cannot read the cluster's TCB policy; keeping the one read before");
            }
        }
    }

    /// The allowlist answers, for the state file.
    pub fn allowlists(&self) -> Vec<Allowlisted> {
        self.allowlists.values().map(|a| a.allowed).collect()
    }

    /// Every seat with a record or a binding in `view`, attested or refused: a bound seat with no record is
    /// checked too, so that a binding whose quote shows another instance is disputed
    /// ([`crate::disputes`]) before it ever registers. The allowlists are read through `follower`; without
    /// one (the RPC has not answered yet), the answers kept from before serve.
    pub async fn pass(
        &mut self,
        view: &ChainView,
        mut follower: Option<&mut Follower>,
    ) -> Arc<Attestations> {
        let now = unix_now();
        let began = Instant::now();
        self.nodes = view.records.len();
        self.collateral.set_retry_after(self.pccs_retry());
        self.read_policy(follower.as_deref_mut()).await;
        self.read_grants(follower.as_deref_mut()).await;
        let policy = self.policy().cloned();
        // Under an on-chain policy every status but Revoked verifies, and the policy judges it after.
        let statuses = policy.as_ref().map(|_| {
            mesh_attest::TcbStatus::ALL
                .into_iter()
                .filter(|s| *s != mesh_attest::TcbStatus::Revoked)
                .collect::<std::collections::BTreeSet<_>>()
        });
        // Cloned once a pass, not once a seat: a seat whose verdict is kept needs only to compare with them.
        let statuses = statuses.unwrap_or_else(|| self.checker.tcb_statuses().clone());
        // The last pass's verdicts, while the cluster's part of their inputs holds and no pass is due: all of
        // them when every binding holds too, else those of the seats whose binding does.
        let mut last = (self.last.take())
            .filter(|(inputs, _)| inputs.cluster_holds(view, policy.as_ref(), &statuses));
        // A pass due for the time's sake looks at every seat only when something time changes moved: fresh
        // collateral, an allowlist answer read again, a verdict's collateral past its next update, a TCB stage.
        let due = self.due();
        if due {
            let holds = match &last {
                Some((inputs, _)) if !self.stage_change_due() => {
                    self.still_timely(inputs, now, follower.as_deref_mut())
                        .await
                }
                _ => false,
            };
            if !holds {
                last = None;
            }
        }
        if let Some((inputs, out)) = &last
            && inputs.hold_for(view, policy.as_ref(), &statuses)
        {
            let out = Arc::clone(out);
            self.last = last;
            if due {
                self.last_pass = Some(Instant::now());
            }
            return out;
        }
        let mut out = Attestations::new();
        let mut cold = 0usize;
        let mut kept_any = false;
        let seats: std::collections::BTreeSet<u64> = view
            .records
            .keys()
            .chain(view.bindings.keys())
            .copied()
            .collect();
        for token in &seats {
            let Some(binding) = view.bindings.get(token) else {
                out.insert(*token, Arc::new(attestation::unbound()));
                continue;
            };
            if let Some((inputs, kept)) = &last
                && inputs.binding_holds(*token, binding)
                && let Some(verdict) = kept.get(token)
            {
                out.insert(*token, Arc::clone(verdict));
                kept_any = true;
                continue;
            }
            self.judged += 1;
            let cached = self.checker.cached_len();
            let attested = self
                .judge(
                    *token,
                    binding,
                    view,
                    (&statuses, policy.as_ref()),
                    now,
                    follower.as_deref_mut(),
                )
                .await;
            cold += usize::from(self.checker.cached_len() != cached);
            out.insert(*token, Arc::new(attested));
        }
        // Kept for the next pass only when every verdict rests on its inputs alone: none waits on a read
        // that failed (the allowlists, the collateral), which the next pass must try again.
        let settled = (out.iter()).all(|(seat, a)| {
            !a.is_refused_as(attestation::ALLOWLIST_UNREAD)
                && (!view.bindings.contains_key(seat) || self.checked.contains_key(seat))
        });
        let out = Arc::new(out);
        self.checked.retain(|seat, _| seats.contains(seat));
        self.last = settled.then(|| {
            let mut inputs = Inputs::of(view, policy.as_ref(), &statuses);
            // A verdict kept from the last pass rests on what that pass's did.
            let kept = (last.as_ref()).and_then(|(inputs, _)| inputs.timely.as_ref());
            inputs.timely = match (self.timely(), kept_any) {
                (Some(t), false) => Some(t),
                (Some(t), true) => kept.and_then(|kept| t.with_kept(kept)),
                (None, _) => None,
            };
            (inputs, Arc::clone(&out))
        });
        // A seat gone, or bound to other evidence, starts afresh if it ever falls below again.
        self.staging.retain(|seat, evidence| {
            view.bindings
                .get(&seat)
                .is_some_and(|b| b.evidence_hash.0 == *evidence)
        });
        if cold > 0 {
            info!(
                seats = out.len(),
                verified_now = cold,
                elapsed_ms = began.elapsed().as_millis() as u64,
                "checked the seats' attestation evidence"
            );
        }
        self.last_pass = Some(Instant::now());
        out
    }

    /// Seat `token` judged on `binding`: its evidence (kept or checked anew), the allowlists, then the TCB
    /// `policy`, if the cluster sets one, under which `statuses` are accepted.
    async fn judge(
        &mut self,
        token: u64,
        binding: &Binding,
        view: &ChainView,
        (statuses, policy): (&std::collections::BTreeSet<TcbStatus>, Option<&TcbPolicy>),
        now: u64,
        follower: Option<&mut Follower>,
    ) -> Attested {
        let (verdict, evaluation) = self.verdict_for(token, binding, view, statuses, now).await;
        let attested = match verdict {
            Ok(v) => match self.allowed(&v, follower).await {
                Ok(a) => attestation::attested(Ok(v), a.compose_allowed, a.os_allowed),
                Err(refused) => refused,
            },
            Err(r) => attestation::attested(Err(r), true, true),
        };
        match (attested, policy) {
            (Attested::Verified(v), Some(p)) => {
                let judged = p.judge(&v, evaluation);
                let standing = self.staging.observe(token, v.evidence_hash, judged, p, now);
                attestation::under_tcb_policy(v, standing)
            }
            (other, _) => other,
        }
    }

    /// Seat `token`'s verdict on `binding`, with its collateral's TCB evaluation data number: the last pass's
    /// while it answers, else checked anew. `statuses` are the TCB statuses accepted (under an on-chain
    /// policy, or the flags').
    async fn verdict_for(
        &mut self,
        token: u64,
        binding: &Binding,
        view: &ChainView,
        statuses: &std::collections::BTreeSet<TcbStatus>,
        now: u64,
    ) -> (Result<Verdict, Refusal>, u32) {
        if let Some(last) = self.checked.get(&token)
            && let Ok(collateral) = self.collateral.for_platform(last.platform, now).await
            && last.answers(binding, view, &collateral, statuses, now)
        {
            return (last.verdict.clone(), last.evaluation);
        }
        self.checked.remove(&token);
        self.checked_anew += 1;
        // A quote that names no platform is refused as `malformed`, not `collateral` (`Refusal`'s
        // `From<CollateralError>`).
        let platform = match Evidence::decode(&binding.evidence) {
            Ok(evidence) => quote_platform(&evidence.quote).map_err(Refusal::from),
            Err(e) => Err(Refusal::Malformed(e.to_string())),
        };
        let platform = match platform {
            Ok(p) => p,
            Err(refusal) => return (Err(refusal), 0),
        };
        let collateral = match self.collateral.for_platform(platform, now).await {
            Ok(c) => c,
            // Not kept: the PCCS may answer at the next pass.
            Err(e) => return (Err(Refusal::from(e)), 0),
        };
        let evaluation =
            CollateralInfo::of(&collateral).map_or(0, |i| i.tcb_evaluation_data_number);
        let verdict = self.checker.check_with(
            binding,
            &view.pins.app_ids,
            view.chain_id(),
            view.contract,
            &collateral,
            now,
            statuses.clone(),
        );
        if !verdict.as_ref().is_err_and(Refusal::depends_on_time) {
            self.checked.insert(
                token,
                Checked {
                    evidence_hash: binding.evidence_hash,
                    instance_id: binding.instance_id.clone(),
                    node: binding.node,
                    apps: view.pins.app_ids.clone(),
                    chain: (view.chain_id(), view.contract),
                    platform,
                    collateral,
                    statuses: statuses.clone(),
                    verdict: verdict.clone(),
                    evaluation,
                },
            );
        }
        (verdict, evaluation)
    }

    /// What the kept verdicts rest on that time may change ([`inputs::Timely`]); none when one platform's
    /// verdicts were reached under two fetches of its collateral.
    fn timely(&self) -> Option<inputs::Timely> {
        let mut collateral: Vec<(Platform, Arc<QuoteCollateralV3>)> = Vec::new();
        let mut allowed: Vec<Allowlisted> = Vec::new();
        let mut lapses_at = u64::MAX;
        for c in self.checked.values() {
            match collateral.iter().find(|(p, _)| *p == c.platform) {
                Some((_, fetched)) if !Arc::ptr_eq(fetched, &c.collateral) => return None,
                Some(_) => {}
                None => collateral.push((c.platform, Arc::clone(&c.collateral))),
            }
            if let Ok(v) = &c.verdict {
                lapses_at = lapses_at.min(v.collateral_next_update);
                let key = (B256::from(v.compose_hash), B256::from(v.os_measurement));
                if !allowed
                    .iter()
                    .any(|a| (a.compose_hash, a.os_measurement) == key)
                {
                    allowed.push(self.allowlists.get(&key)?.allowed);
                }
            }
        }
        Some(inputs::Timely {
            collateral,
            allowed,
            lapses_at,
        })
    }

    /// Whether what `inputs`' verdicts rest on still holds at `now`: each platform's collateral is the same
    /// fetch (asked for again, so that a PCCS's fresh collateral is taken), each allowlist answer the same
    /// (read again when old), and no verdict past its collateral's next update.
    async fn still_timely(
        &mut self,
        inputs: &Inputs,
        now: u64,
        mut follower: Option<&mut Follower>,
    ) -> bool {
        let Some(timely) = &inputs.timely else {
            return false;
        };
        if now > timely.lapses_at {
            return false;
        }
        for (platform, fetched) in &timely.collateral {
            match self.collateral.for_platform(*platform, now).await {
                Ok(c) if Arc::ptr_eq(&c, fetched) => {}
                _ => return false,
            }
        }
        for answer in &timely.allowed {
            let key = (answer.compose_hash, answer.os_measurement);
            match self.allowed_for(key, follower.as_deref_mut()).await {
                Ok(now_allowed) if now_allowed == *answer => {}
                _ => return false,
            }
        }
        true
    }

    /// Seats judged since the start: a pass that keeps the last one's verdicts judges none.
    pub fn judged(&self) -> u64 {
        self.judged
    }

    /// Evidence decoded and checked anew since the start: a pass over seats whose bindings and collateral
    /// did not change adds nothing.
    pub fn checked_anew(&self) -> u64 {
        self.checked_anew
    }

    /// The allowlists' answer for the verdict's compose hash and OS image: as read within the refresh
    /// interval, else read now, else (the RPC failing) as last read.
    async fn allowed(
        &mut self,
        verdict: &Verdict,
        follower: Option<&mut Follower>,
    ) -> Result<Allowlisted, Attested> {
        let key = (
            B256::from(verdict.compose_hash),
            B256::from(verdict.os_measurement),
        );
        self.allowed_for(key, follower).await
    }

    /// The allowlists' answer for `key`, a compose hash and an OS image, as [`Attestor::allowed`] gives it.
    async fn allowed_for(
        &mut self,
        key: (B256, B256),
        follower: Option<&mut Follower>,
    ) -> Result<Allowlisted, Attested> {
        let known = self.allowlists.get(&key).copied();
        if let Some(a) = known
            && a.read_at.is_some_and(|t| t.elapsed() < self.reread_after())
        {
            return Ok(a.allowed);
        }
        let read = match follower {
            Some(f) => Some(
                f.allowlisted(key.0, key.1)
                    .await
                    .map_err(|e| self.rpc.scrub(&e.to_string())),
            ),
            None => None,
        };
        match (read, known) {
            (Some(Ok((compose_allowed, os_allowed))), _) => {
                let allowed = Allowlisted {
                    compose_hash: key.0,
                    os_measurement: key.1,
                    compose_allowed,
                    os_allowed,
                };
                if known.is_none_or(|k| k.allowed != allowed) {
                    info!(compose_hash = %key.0, os_measurement = %key.1, compose_allowed, os_allowed, "read the cluster's allowlists");
                }
                self.allowlists.insert(
                    key,
                    Answer {
                        allowed,
                        read_at: Some(Instant::now()),
                    },
                );
                Ok(allowed)
            }
            (Some(Err(e)), Some(k)) => {
                warn!(error = %e, "cannot read the cluster's allowlists; using the answer read before");
                Ok(k.allowed)
            }
            (None, Some(k)) => Ok(k.allowed),
            (Some(Err(e)), None) => Err(Attested::Refused {
                kind: attestation::ALLOWLIST_UNREAD,
                reason: format!(
                    "the cluster's allowlists could not be read for compose hash {} and OS image {}: {e}",
                    key.0, key.1
                ),
            }),
            (None, None) => Err(Attested::Refused {
                kind: attestation::ALLOWLIST_UNREAD,
                reason: format!(
                    "the cluster's allowlists for compose hash {} and OS image {} are not known until the RPC answers",
                    key.0, key.1
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
