use super::*;

/// A failed full read is retried with backoff, not on every tick; a success returns to the interval,
/// and a reorg makes one due at once unless it is backing off.
#[test]
fn full_reads_back_off_after_failures() {
    let t0 = Instant::now();
    let s = |secs: u64| t0 + Duration::from_secs(secs);
    let mut sched = FullReadSchedule::new(Duration::from_secs(60), t0);
    assert!(sched.due(t0));
    sched.failed(t0);
    assert!(!sched.due(t0), "not retried on the next tick");
    assert!(sched.due(s(1)));
    sched.failed(s(1));
    assert!(!sched.due(s(2)) && sched.due(s(3)), "then 2 s later");
    sched.request(s(2));
    assert!(!sched.due(s(2)), "a reorg does not cut a backoff short");
    sched.succeeded(s(3), 3);
    assert!(!sched.due(s(62)) && sched.due(s(63)), "back to every 60 s");
    sched.request(s(10));
    assert!(sched.due(s(10)), "a reorg makes one due at once");
}

/// In a cluster of a thousand, a node reads every record about once an hour, not once a minute: the
/// cluster's full reads together stay within the budget; a reorg still makes one due at once.
#[test]
fn a_large_cluster_reads_every_record_less_often() {
    let t0 = Instant::now();
    let mut sched = FullReadSchedule::new(Duration::from_secs(60), t0);
    sched.succeeded(t0, 1000);
    let every = budget::full_read_period(Duration::from_secs(60), 1000);
    assert_eq!(every, Duration::from_secs(4000));
    assert!(!sched.due(t0 + every - Duration::from_secs(1)) && sched.due(t0 + every));
    sched.request(t0 + Duration::from_secs(10));
    assert!(
        sched.due(t0 + Duration::from_secs(10)),
        "a reorg makes one due at once"
    );
}

fn pinned() -> ChainView {
    ChainView {
        election: Address::repeat_byte(0xe1),
        ..ChainView::new(
            Address::repeat_byte(0xc1),
            Pins {
                kms_root: Address::repeat_byte(0x01),
                app_ids: vec![Address::repeat_byte(0xa1)],
                chain_id: 31337,
                prefix: Prefix::new("10.0.1.0".parse().unwrap(), 24).unwrap(),
            },
        )
    }
}

fn refusal(e: ChainError) -> (&'static str, String, String) {
    match e {
        ChainError::PinMismatch { what, pinned, rpc } => (what, pinned, rpc),
        other => panic!("not a pin mismatch: {other}"),
    }
}

/// An RPC that agrees with every pin passes; one that names another chain, another election contract
/// or another prefix is refused with both values, the chain id first.
#[test]
fn an_rpc_that_disagrees_with_a_pin_is_refused_naming_both_values() {
    let v = pinned();
    let (chain, election, prefix) = (v.pins.chain_id, v.election, v.pins.prefix);
    let other_prefix = Prefix::new("10.9.0.0".parse().unwrap(), 16).unwrap();
    let other_election = Address::repeat_byte(0xe2);
    assert!(pin_mismatch(&v, chain, election, prefix).is_none());

    let (what, pinned, rpc) = refusal(pin_mismatch(&v, 1, election, prefix).unwrap());
    assert_eq!(
        (what, pinned.as_str(), rpc.as_str()),
        ("chain id", "31337", "1")
    );
    let (what, pinned, rpc) = refusal(pin_mismatch(&v, chain, other_election, prefix).unwrap());
    assert_eq!(what, "election contract");
    assert_eq!(
        (pinned, rpc),
        (election.to_string(), other_election.to_string())
    );
    let (what, pinned, rpc) = refusal(pin_mismatch(&v, chain, election, other_prefix).unwrap());
    assert_eq!(
        (what, pinned.as_str(), rpc.as_str()),
        ("mesh prefix", "10.0.1.0/24", "10.9.0.0/16")
    );
    let (what, ..) = refusal(pin_mismatch(&v, 1, other_election, other_prefix).unwrap());
    assert_eq!(what, "chain id", "the first difference is named");

    let message = pin_mismatch(&v, 1, election, prefix).unwrap().to_string();
    assert!(message.contains("--repin"), "{message}");
}

/// A state file written before clusters had an election holds none: the RPC's is taken, not refused.
#[test]
fn a_state_file_from_before_the_election_takes_the_rpcs() {
    let v = ChainView {
        election: Address::ZERO,
        ..pinned()
    };
    assert!(pin_mismatch(&v, 31337, Address::repeat_byte(0xe9), v.pins.prefix).is_none());
}

/// `Follower::start` on an RPC that answers like the cluster but on another chain: refused before it
/// reads any record, as the state file pinned chain 31337. The RPC is a mock that answers in order.
#[tokio::test]
async fn start_refuses_an_rpc_on_another_chain_before_reading_a_record() {
    use alloy::primitives::{Bytes, U64};
    use alloy::providers::{Provider, ProviderBuilder};
    use alloy::sol_types::SolCall;
    use alloy::transports::mock::Asserter;

    let v = pinned();
    let rpc = Asserter::new();
    rpc.push_success(&Bytes::from_static(&[0x60, 0x80])); // eth_getCode: code is there
    let purpose = DstackClusterNFT::PURPOSE_PREFIXCall::abi_encode_returns(
        &crate::record::PURPOSE_PREFIX.to_owned(),
    );
    rpc.push_success(&Bytes::from(purpose));
    rpc.push_success(&U64::from(1)); // eth_chainId: not the pinned 31337
    let prefix =
        DstackClusterNFT::meshPrefixCall::abi_encode_returns(&DstackClusterNFT::meshPrefixReturn {
            _0: u32::from_be_bytes([10, 0, 1, 0]),
            _1: 24,
        });
    rpc.push_success(&Bytes::from(prefix));
    let election = DstackClusterNFT::electionCall::abi_encode_returns(&v.election);
    rpc.push_success(&Bytes::from(election));

    let provider = ProviderBuilder::new()
        .connect_mocked_client(rpc.clone())
        .erased();
    let config = FollowConfig {
        confirmations: 0,
        full_read_every: Duration::from_secs(60),
    };
    let err = Follower::start(provider, v.contract, config, Some(v), &Anchors::default())
        .await
        .err()
        .expect("refused");
    let (what, pinned, rpc_says) = refusal(err);
    assert_eq!(
        (what, pinned.as_str(), rpc_says.as_str()),
        ("chain id", "31337", "1")
    );
    assert!(
        rpc.read_q().is_empty(),
        "it asked what it was expected to, no more and no less"
    );
}
