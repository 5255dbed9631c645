//! What following the chain as a safety net costs a cluster's provider, held to a budget whatever the
//! cluster's size (pure).
//!
//! Besides following new heads and events, every node reads the chain now and then in case it missed
//! something: it polls (its subscription may have fallen silent), reads every record, reads the allowlists
//! and the TCB policy again, and checks its own record. At fixed periods those costs grow with the cluster:
//! at a thousand nodes, a poll every 15 s and a full read a minute came to 66.6 and 133 requests a second at
//! the provider the nodes share, and the minute's rechecks to about 67 more. So each period stretches with
//! the number of nodes, to hold what all of them spend together, at the default periods, to
//! [`POLLS_PER_SECOND`], [`FULL_READ_REQUESTS_PER_SECOND`] and [`RECHECKS_PER_SECOND`]: 5 requests a second
//! in all, whatever the size. A small cluster keeps the configured periods: up to 30 nodes for the poll, and
//! up to 24 for a minute's full read. A period configured shorter than the default is stretched in the same
//! proportion (an operator who asks for reads ten times as often gets them, at ten times the cost); one
//! configured longer is kept where it is longer than the budget's.
//!
//! What the longer periods give up is bounded elsewhere: a subscription that falls silent on a chain that
//! moves is still found within [`SAFETY_POLL`] of its last head (the follower's `heads::Pace`), and a full
//! read is still made at once when a reorg or a removed log calls for one.

use std::time::Duration;

/// Records asked for per `getPeersPage` call: about 9.4M gas of an eth_call at 37,500 gas a record read cold
/// (measured by the contract test `test_APageOfOneHundredRecordsFitsAnRpcsCallGasCap`), under a fifth of geth's
/// default 50M cap, so a full read of 1,000 seats takes four calls.
pub const PAGE_SIZE: u64 = 250;

/// The safety polls of all the cluster's nodes together, a second.
pub const POLLS_PER_SECOND: f64 = 2.0;

/// The requests of all the cluster's nodes' full reads together, a second.
pub const FULL_READ_REQUESTS_PER_SECOND: f64 = 2.0;

/// The requests of all the cluster's nodes' other rechecks together (the allowlists and the TCB policy read
/// again, a node's own record checked), a second.
pub const RECHECKS_PER_SECOND: f64 = 1.0;

/// While subscribed, how often a node of a small cluster still polls: for a subscription that went quiet
/// without closing, and for whatever else runs on the follower's ticks.
pub const SAFETY_POLL: Duration = Duration::from_secs(15);

/// The full read's and the rechecks' default period (the agent's `--full-read-secs`).
pub const DEFAULT_FULL_READ: Duration = Duration::from_secs(60);

/// How often one of `nodes` repeats something that costs `requests`, configured every `floor` where the
/// default is `default`: `floor` times how far all the nodes together would pass `per_second` at the
/// default (at least once), and never shorter than `floor`.
fn stretched(
    floor: Duration,
    default: Duration,
    nodes: usize,
    requests: u64,
    per_second: f64,
) -> Duration {
    let factor = (nodes as f64 * requests as f64 / per_second / default.as_secs_f64()).max(1.0);
    floor.max(floor.min(default).mul_f64(factor))
}

/// Requests one full read of a cluster of `records` makes when nothing changed: a page per [`PAGE_SIZE`]
/// records, and four reads beside them (the head and its header among them); the thousand section of
/// `mesh-bench` counted 8 for 999 records.
pub fn full_read_requests(records: usize) -> u64 {
    4 + (records as u64).div_ceil(PAGE_SIZE).max(1)
}

/// How often one of `nodes` polls as a safety net: `floor`, or longer where the cluster's polls together
/// would pass [`POLLS_PER_SECOND`].
pub fn safety_poll_period(floor: Duration, nodes: usize) -> Duration {
    stretched(floor, SAFETY_POLL, nodes, 1, POLLS_PER_SECOND)
}

/// How often one of `nodes` reads every record: `floor` (`--full-read-secs`), or longer where the
/// cluster's full reads together would pass [`FULL_READ_REQUESTS_PER_SECOND`].
pub fn full_read_period(floor: Duration, nodes: usize) -> Duration {
    stretched(
        floor,
        DEFAULT_FULL_READ,
        nodes,
        full_read_requests(nodes),
        FULL_READ_REQUESTS_PER_SECOND,
    )
}

/// How often one of `nodes` repeats a recheck of `requests` requests that events already cover (the
/// allowlists read again, its own record checked): `floor`, or longer where the cluster's rechecks together
/// would pass [`RECHECKS_PER_SECOND`].
pub fn recheck_period(floor: Duration, nodes: usize, requests: u64) -> Duration {
    stretched(
        floor,
        DEFAULT_FULL_READ,
        nodes,
        requests,
        RECHECKS_PER_SECOND,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAFETY: Duration = Duration::from_secs(15);
    const MINUTE: Duration = Duration::from_secs(60);

    /// What all of a cluster's nodes ask of their provider a second, for the periods one node keeps.
    fn cluster_rate(nodes: usize, per_node: f64, period: Duration) -> f64 {
        nodes as f64 * per_node / period.as_secs_f64()
    }

    #[test]
    fn a_small_cluster_keeps_the_configured_periods() {
        for nodes in [1, 3, 10, 24] {
            assert_eq!(safety_poll_period(SAFETY, nodes), SAFETY, "{nodes} nodes");
            assert_eq!(full_read_period(MINUTE, nodes), MINUTE, "{nodes} nodes");
        }
        assert_eq!(safety_poll_period(SAFETY, 30), SAFETY);
    }

    #[test]
    fn a_thousand_nodes_together_stay_within_the_budget() {
        let nodes = 1000;
        let polls = cluster_rate(nodes, 1.0, safety_poll_period(SAFETY, nodes));
        let reads = cluster_rate(
            nodes,
            full_read_requests(nodes) as f64,
            full_read_period(MINUTE, nodes),
        );
        assert!(polls <= POLLS_PER_SECOND + 1e-9, "{polls} polls a second");
        assert!(
            reads <= FULL_READ_REQUESTS_PER_SECOND + 1e-9,
            "{reads} a second"
        );
        // At the fixed periods, the same cluster asked 66.7 and 133 a second.
        assert!(cluster_rate(nodes, 1.0, SAFETY) > 66.0);
        assert!(cluster_rate(nodes, full_read_requests(nodes) as f64, MINUTE) > 133.0);
    }

    #[test]
    fn once_a_period_stretches_the_cluster_spends_its_budget_and_no_more() {
        for nodes in [1, 25, 31, 100, 254, 1000, 4000, 65_534] {
            let poll = safety_poll_period(SAFETY, nodes);
            let rate = cluster_rate(nodes, 1.0, poll);
            if poll > SAFETY {
                assert!(
                    (rate - POLLS_PER_SECOND).abs() < 1e-6,
                    "{nodes} nodes: {rate}"
                );
            } else {
                assert!(rate <= POLLS_PER_SECOND, "{nodes} nodes: {rate}");
            }
            let read = full_read_period(MINUTE, nodes);
            let rate = cluster_rate(nodes, full_read_requests(nodes) as f64, read);
            if read > MINUTE {
                assert!(
                    (rate - FULL_READ_REQUESTS_PER_SECOND).abs() < 1e-6,
                    "{nodes} nodes: {rate}"
                );
            } else {
                assert!(
                    rate <= FULL_READ_REQUESTS_PER_SECOND,
                    "{nodes} nodes: {rate}"
                );
            }
        }
        let two_hours = Duration::from_secs(7200);
        assert_eq!(
            full_read_period(two_hours, 1000),
            two_hours,
            "a floor above the budget's period is kept"
        );
    }

    /// An operator's shorter period holds in a small cluster, and stretches in proportion in a large one;
    /// a longer one is kept.
    #[test]
    fn a_configured_period_is_kept_small_and_stretched_in_proportion_large() {
        let second = Duration::from_secs(1);
        assert_eq!(full_read_period(second, 2), second);
        let large = full_read_period(second, 1000).as_secs_f64();
        let default = full_read_period(MINUTE, 1000).as_secs_f64();
        assert!(
            (large * 60.0 - default).abs() < 1e-6,
            "{large} s against {default} s"
        );
        let day = Duration::from_secs(86_400);
        assert_eq!(full_read_period(day, 1000), day);
        assert_eq!(
            safety_poll_period(Duration::from_secs(60), 10),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn rechecks_stretch_with_what_they_cost() {
        assert_eq!(recheck_period(MINUTE, 10, 3), MINUTE);
        let (nodes, requests) = (1000, 3);
        let period = recheck_period(MINUTE, nodes, requests);
        assert_eq!(period, Duration::from_secs(3000));
        let rate = cluster_rate(nodes, requests as f64, period);
        assert!((rate - RECHECKS_PER_SECOND).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn a_full_read_costs_a_page_per_250_records_beside_four_reads() {
        assert_eq!(full_read_requests(0), 5);
        assert_eq!(full_read_requests(250), 5);
        assert_eq!(full_read_requests(251), 6);
        assert_eq!(full_read_requests(999), 8);
    }
}
