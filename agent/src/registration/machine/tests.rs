//! The registrar's decisions, each as the jobs, prints and state a sequence of inputs gives.

use alloy::primitives::{Address, U256};
use mesh_chain::binding::Requested;
use mesh_chain::error::ChainError;
use mesh_chain::registration::{Outcome, RegistrationError};

use super::*;

const RECHECK: Duration = Duration::from_secs(60);

fn holder(n: u8) -> Address {
    Address::repeat_byte(n)
}

fn machine(ask: bool, configured: Option<Address>) -> (Machine, Instant) {
    let now = Instant::now();
    let config = Config {
        node: Address::repeat_byte(0xee),
        instance_id: "ab".repeat(20),
        recheck: RECHECK,
        ask,
        holder: configured,
    };
    (Machine::new(config, now), now)
}

fn following(seat: SeatState) -> Chain {
    Chain {
        pins: Some(mesh_chain::testing::Cluster::new().pins()),
        seat,
        records: 3,
        ..Chain::default()
    }
}

fn jobs(m: &mut Machine) -> Vec<Job> {
    std::iter::from_fn(|| m.poll_job()).collect()
}

fn prints(m: &mut Machine) -> Vec<Print> {
    std::iter::from_fn(|| m.poll_print()).collect()
}

fn up_to_date() -> JobDone {
    JobDone::Registered(Ok(Outcome::UpToDate {
        token_id: U256::from(1),
    }))
}

fn landed(replaced: bool) -> JobDone {
    JobDone::Registered(Ok(Outcome::Registered {
        token_id: U256::from(1),
        nonce: 2,
        tx: Default::default(),
        block: 9,
        from: Address::ZERO,
        replaced_unbelievable: replaced.then(|| "its signature does not verify".to_owned()),
    }))
}

fn needs_relay(nonce: u64) -> JobDone {
    let reg = mesh_chain::testing::believed_record(1, nonce, 7, &"ab".repeat(20));
    JobDone::Registered(Ok(Outcome::NeedsRelay(Box::new(reg))))
}

fn unanswered() -> ChainError {
    ChainError::MissingBlock { number: 1 }
}

fn implausible() -> ChainError {
    ChainError::Implausible {
        detail: "(test) a record that cannot be".into(),
    }
}

fn binding(for_holder: Address) -> NodeBinding {
    let reg = mesh_chain::testing::believed_record(1, 1, 7, &"ab".repeat(20));
    NodeBinding {
        instance_id: reg.instance_id,
        node: Address::repeat_byte(0xee),
        holder: for_holder,
        proof: reg.proof,
        evidence: Default::default(),
        consent: Default::default(),
        chain_id: 31337,
        contract: Address::ZERO,
    }
}

fn image(n: u8) -> ClaimedMeasurements {
    ClaimedMeasurements {
        compose_hash: [n; 32],
        os_measurement: [n; 32],
    }
}

fn register_job() -> Job {
    Job::Register {
        pins: mesh_chain::testing::Cluster::new().pins(),
    }
}

#[test]
fn a_record_the_chain_already_holds_is_not_sent_again_until_the_recheck() {
    let (mut m, now) = machine(true, None);
    m.handle_chain(now, following(SeatState::Active(1)));
    assert_eq!(jobs(&mut m), [register_job()]);
    assert_eq!(m.poll_timeout(), None, "no deadline while the job is out");
    m.handle_job(now, up_to_date());
    assert!(jobs(&mut m).is_empty());
    assert!(prints(&mut m).is_empty());
    assert!(m.state().registered);
    assert_eq!(m.state().registrations, 0);
    let next = now + budget::recheck_period(RECHECK, 3, RECHECK_REQUESTS);
    assert_eq!(m.poll_timeout(), Some(next));
    m.handle_timeout(next - Duration::from_secs(1));
    assert!(jobs(&mut m).is_empty(), "not before it is due");
    m.handle_timeout(next);
    assert_eq!(jobs(&mut m), [register_job()]);
}

#[test]
fn a_registration_that_landed_is_counted_and_checked_again_soon() {
    let (mut m, now) = machine(true, None);
    m.handle_chain(now, following(SeatState::Active(1)));
    jobs(&mut m);
    m.handle_job(now, landed(false));
    assert_eq!(m.state().registrations, 1);
    assert!(m.state().registered);
    assert_eq!(m.state().error, None);
    assert_eq!(m.poll_timeout(), Some(now + AFTER_REGISTERING));
}

/// A lying RPC could make every check replace a record peers would not believe, each one paid for.
#[test]
fn replacing_an_unbelievable_record_is_paced_by_a_growing_backoff() {
    let (mut m, now) = machine(true, None);
    m.handle_chain(now, following(SeatState::Active(1)));
    let mut delays = Vec::new();
    for _ in 0..3 {
        jobs(&mut m);
        m.handle_job(now, landed(true));
        let due = m.poll_timeout().expect("a deadline");
        delays.push(due - now);
        m.handle_timeout(due);
    }
    assert!(delays[0] >= Duration::from_secs(30), "{delays:?}");
    assert!(delays[1] > delays[0] && delays[2] > delays[1], "{delays:?}");
    jobs(&mut m);
    m.handle_job(now, up_to_date());
    m.handle_timeout(m.poll_timeout().expect("a deadline"));
    jobs(&mut m);
    m.handle_job(now, landed(true));
    assert!(
        m.poll_timeout().expect("a deadline") - now <= delays[0] * 2,
        "an up-to-date record resets the backoff"
    );
}

#[test]
fn without_funds_the_signed_registration_is_printed_once_per_nonce() {
    let (mut m, now) = machine(true, None);
    m.handle_chain(now, following(SeatState::Active(1)));
    jobs(&mut m);
    m.handle_job(now, needs_relay(5));
    assert!(matches!(&prints(&mut m)[..], [Print::Registration(r)] if r.nonce == 5));
    assert!(!m.state().registered);
    assert!(matches!(
        m.state().error.as_ref().map(|f| &f.error),
        Some(FaultError::NoFundedSender { .. })
    ));
    assert_eq!(m.poll_timeout(), Some(now + AFTER_FAILING));
    m.handle_timeout(now + AFTER_FAILING);
    jobs(&mut m);
    m.handle_job(now, needs_relay(5));
    assert!(
        prints(&mut m).is_empty(),
        "the same nonce is on stdout already"
    );
    m.handle_timeout(m.poll_timeout().expect("a deadline"));
    jobs(&mut m);
    m.handle_job(now, needs_relay(6));
    assert_eq!(prints(&mut m).len(), 1, "a new nonce is printed");
}

/// An outage of every provider must not make every node unhealthy at once.
#[test]
fn an_unanswered_chain_keeps_what_the_last_answer_showed() {
    let (mut m, now) = machine(true, None);
    m.handle_chain(now, following(SeatState::Active(1)));
    jobs(&mut m);
    m.handle_job(now, up_to_date());
    m.handle_timeout(m.poll_timeout().expect("a deadline"));
    jobs(&mut m);
    m.handle_job(
        now,
        JobDone::Registered(Err(RegistrationError::Chain(unanswered()))),
    );
    assert!(m.state().registered);
    assert_eq!(m.state().rpc_errors, 1);
    assert!(m.state().error.is_some());
    assert_eq!(
        m.poll_fault().map(|f| f.doing),
        Some("registration failed".into())
    );
    m.handle_timeout(m.poll_timeout().expect("a deadline"));
    jobs(&mut m);
    m.handle_job(
        now,
        JobDone::Registered(Err(RegistrationError::Chain(unanswered()))),
    );
    assert!(m.poll_fault().is_none(), "the same failure is logged once");
    m.handle_timeout(m.poll_timeout().expect("a deadline"));
    jobs(&mut m);
    m.handle_job(
        now,
        JobDone::Registered(Err(RegistrationError::Chain(implausible()))),
    );
    assert!(
        !m.state().registered,
        "an answer that fails says the record is not as wanted"
    );
}

#[test]
fn a_cached_view_decides_registered_without_sending() {
    let (mut m, now) = machine(true, None);
    let cached = Chain {
        from_cache: true,
        record_matches: true,
        ..following(SeatState::Active(1))
    };
    m.handle_chain(now, cached.clone());
    assert!(jobs(&mut m).is_empty());
    assert!(m.state().registered);
    m.handle_chain(
        now,
        Chain {
            record_matches: false,
            ..cached
        },
    );
    m.handle_timeout(now + AFTER_FAILING);
    assert!(jobs(&mut m).is_empty());
    assert!(!m.state().registered);
}

#[test]
fn a_seatless_node_asks_its_holder_on_chain_and_then_only_checks_the_request() {
    let (mut m, now) = machine(true, Some(holder(7)));
    m.handle_chain(now, following(SeatState::None));
    assert_eq!(jobs(&mut m), [Job::RequestedHolder]);
    m.handle_job(now, JobDone::RequestedHolder(Ok(None)));
    let chain_id = mesh_chain::testing::Cluster::new().pins().chain_id;
    assert_eq!(
        jobs(&mut m),
        [Job::MakeBinding {
            holder: holder(7),
            chain_id
        }]
    );
    m.handle_job(now, JobDone::Binding(Ok(Box::new(binding(holder(7))))));
    assert_eq!(
        jobs(&mut m),
        [Job::RequestBinding {
            binding: Box::new(binding(holder(7)))
        }]
    );
    m.handle_job(
        now,
        JobDone::Requested(Ok(Requested::Sent {
            tx: Default::default(),
            block: 3,
            from: Address::ZERO,
        })),
    );
    assert_eq!(
        m.state().seat_request,
        Some(SeatRequest {
            holder: holder(7),
            on_chain: true
        })
    );
    assert_eq!(m.poll_timeout(), Some(now + REQUEST_RECHECK));
    m.handle_timeout(now + REQUEST_RECHECK);
    assert_eq!(jobs(&mut m), [Job::RequestedHolder]);
    m.handle_job(now, JobDone::RequestedHolder(Ok(Some(holder(7)))));
    assert!(
        jobs(&mut m).is_empty(),
        "the request stands: nothing is sent again"
    );
    assert_eq!(m.poll_timeout(), Some(now + REQUEST_RECHECK));
}

#[test]
fn without_holder_the_clusters_owner_is_asked() {
    let (mut m, now) = machine(true, None);
    m.handle_chain(now, following(SeatState::None));
    assert_eq!(jobs(&mut m), [Job::Owner]);
    m.handle_job(now, JobDone::Owner(Ok(holder(9))));
    assert_eq!(jobs(&mut m), [Job::RequestedHolder]);
    m.handle_job(now, JobDone::RequestedHolder(Ok(None)));
    assert!(matches!(
        &jobs(&mut m)[..],
        [Job::MakeBinding { holder: h, .. }] if *h == holder(9)
    ));
}

#[test]
fn without_funds_to_ask_the_binding_is_printed_once_and_reused() {
    let (mut m, now) = machine(true, Some(holder(7)));
    m.handle_chain(now, following(SeatState::None));
    jobs(&mut m);
    m.handle_job(now, JobDone::RequestedHolder(Ok(None)));
    jobs(&mut m);
    m.handle_job(now, JobDone::Binding(Ok(Box::new(binding(holder(7))))));
    jobs(&mut m);
    m.handle_job(now, JobDone::Requested(Ok(Requested::NeedsRelay)));
    assert!(matches!(&prints(&mut m)[..], [Print::Binding(b)] if b.holder == holder(7)));
    assert!(matches!(
        m.state().error.as_ref().map(|f| &f.error),
        Some(FaultError::NoFundedRequester { .. })
    ));
    assert_eq!(
        m.state().seat_request,
        Some(SeatRequest {
            holder: holder(7),
            on_chain: false
        })
    );
    m.handle_timeout(now + AFTER_FAILING);
    jobs(&mut m);
    m.handle_job(now, JobDone::RequestedHolder(Ok(None)));
    assert!(
        matches!(&jobs(&mut m)[..], [Job::RequestBinding { .. }]),
        "the binding made before is sent again, not made again"
    );
    m.handle_job(now, JobDone::Requested(Ok(Requested::NeedsRelay)));
    assert!(prints(&mut m).is_empty(), "it is on stdout already");
}

#[test]
fn a_failed_request_backs_off_and_is_tried_again() {
    let (mut m, now) = machine(true, Some(holder(7)));
    m.handle_chain(now, following(SeatState::None));
    jobs(&mut m);
    m.handle_job(now, JobDone::RequestedHolder(Ok(None)));
    jobs(&mut m);
    m.handle_job(now, JobDone::Binding(Ok(Box::new(binding(holder(7))))));
    let mut delays = Vec::new();
    for _ in 0..3 {
        jobs(&mut m);
        m.handle_job(now, JobDone::Requested(Err(implausible())));
        let due = m.poll_timeout().expect("a deadline");
        delays.push(due - now);
        m.handle_timeout(due);
        jobs(&mut m);
        m.handle_job(now, JobDone::RequestedHolder(Ok(None)));
    }
    assert!(delays[0] >= AFTER_FAILING / 2, "{delays:?}");
    assert!(delays[2] > delays[0], "{delays:?}");
}

#[test]
fn a_seat_bound_to_a_lost_key_asks_its_holder_for_a_rebind() {
    let lost = || {
        JobDone::Registered(Err(RegistrationError::BoundToAnotherNode {
            token_id: U256::from(1),
            bound: Address::repeat_byte(1),
            node: Address::repeat_byte(0xee),
            holder: holder(4),
        }))
    };
    let (mut m, now) = machine(true, None);
    m.handle_chain(now, following(SeatState::Active(1)));
    jobs(&mut m);
    m.handle_job(now, lost());
    assert_eq!(jobs(&mut m), [Job::RequestedHolder]);
    m.handle_job(now, JobDone::RequestedHolder(Ok(None)));
    assert!(matches!(
        &jobs(&mut m)[..],
        [Job::MakeBinding { holder: h, .. }] if *h == holder(4)
    ));

    let (mut m, now) = machine(false, None);
    m.handle_chain(now, following(SeatState::Active(1)));
    jobs(&mut m);
    m.handle_job(now, lost());
    assert!(jobs(&mut m).is_empty(), "asking is off");
    assert!(!m.state().registered);
    assert_eq!(
        m.poll_fault().map(|f| f.doing),
        Some("registration failed".into())
    );
}

#[test]
fn an_upgraded_image_asks_the_seats_holder_to_rebind_and_the_image_is_read_once() {
    let (mut m, now) = upgraded();
    m.handle_job(now, JobDone::HolderOf(Ok(holder(3))));
    assert_eq!(jobs(&mut m), [Job::RequestedHolder]);
    m.handle_job(now, JobDone::RequestedHolder(Ok(Some(holder(3)))));
    m.handle_timeout(m.poll_timeout().expect("a deadline"));
    jobs(&mut m);
    m.handle_job(now, up_to_date());
    assert_eq!(
        jobs(&mut m),
        [Job::HolderOf { token: 1 }],
        "the running image is not quoted again"
    );

    let (mut m, now) = machine(true, None);
    m.handle_chain(
        now,
        Chain {
            bound_image: Some(image(0xa)),
            ..following(SeatState::Active(1))
        },
    );
    jobs(&mut m);
    m.handle_job(now, up_to_date());
    jobs(&mut m);
    m.handle_job(now, JobDone::RunningImage(Ok(image(0xa))));
    assert!(jobs(&mut m).is_empty(), "the same image: nothing to ask");
    assert_eq!(m.state().seat_request, None);
}

/// A node that runs image B on a seat bound with a quote of image A, its check as far as reading the seat's
/// holder, to ask for a rebind.
fn upgraded() -> (Machine, Instant) {
    let (mut m, now) = machine(true, None);
    let bound_on_a = Chain {
        bound_image: Some(image(0xa)),
        ..following(SeatState::Active(1))
    };
    m.handle_chain(now, bound_on_a);
    jobs(&mut m);
    m.handle_job(now, up_to_date());
    assert_eq!(jobs(&mut m), [Job::RunningImage]);
    m.handle_job(now, JobDone::RunningImage(Ok(image(0xb))));
    assert_eq!(jobs(&mut m), [Job::HolderOf { token: 1 }]);
    (m, now)
}

/// The holder's rebind answers the request at the block that holds it: the registrar checks at once, finds
/// the seat bound to the image it runs, and the request is gone, without waiting for the recheck.
#[test]
fn a_rebind_to_the_running_image_answers_the_request_at_once() {
    let (mut m, now) = upgraded();
    m.handle_job(now, JobDone::HolderOf(Ok(holder(3))));
    jobs(&mut m);
    m.handle_job(now, JobDone::RequestedHolder(Ok(Some(holder(3)))));
    assert!(m.state().seat_request.is_some(), "the request stands");
    assert_eq!(m.poll_timeout(), Some(now + REQUEST_RECHECK));

    let later = now + Duration::from_secs(1);
    m.handle_chain(
        later,
        Chain {
            bound_image: Some(image(0xb)),
            ..following(SeatState::Active(1))
        },
    );
    assert_eq!(
        jobs(&mut m),
        [register_job()],
        "checked at the rebind's block"
    );
    m.handle_job(later, up_to_date());
    assert!(jobs(&mut m).is_empty(), "the running image is known");
    assert_eq!(m.state().seat_request, None, "the request is answered");
}

/// One job at a time: a registration is sent once, however the chain moves while it waits.
#[test]
fn a_change_of_seat_during_a_check_starts_the_next_as_soon_as_it_ends() {
    let (mut m, now) = machine(true, None);
    m.handle_chain(now, following(SeatState::Active(1)));
    assert_eq!(jobs(&mut m).len(), 1);
    m.handle_chain(now, following(SeatState::Active(2)));
    assert!(jobs(&mut m).is_empty(), "no second job while one is out");
    m.handle_job(now, up_to_date());
    assert_eq!(m.poll_timeout(), Some(now), "due at once");
    m.handle_timeout(now);
    assert_eq!(jobs(&mut m), [register_job()]);
    m.handle_job(now, up_to_date());
    let mut more = following(SeatState::Active(2));
    more.records = 4;
    m.handle_chain(now, more);
    assert!(
        jobs(&mut m).is_empty(),
        "a new record elsewhere is no reason to check"
    );
}

#[test]
fn a_job_that_ends_out_of_turn_is_not_acted_on() {
    let (mut m, now) = machine(true, None);
    m.handle_chain(now, following(SeatState::Active(1)));
    jobs(&mut m);
    m.handle_job(now, JobDone::Lost);
    assert!(jobs(&mut m).is_empty());
    assert_eq!(m.poll_timeout(), Some(now + AFTER_FAILING));
    assert!(!m.state().registered);
}
