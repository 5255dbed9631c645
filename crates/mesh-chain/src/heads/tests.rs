use super::*;

use futures::{SinkExt as _, StreamExt as _};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket JSON-RPC endpoint that grants every `eth_subscribe` and announces nothing; it serves
/// until the task is dropped.
async fn granting_subscriptions() -> (Url, Task<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let serving = Task::spawn("granting-subscriptions", async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            connections.spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(Message::Text(request))) = ws.next().await {
                    let request: serde_json::Value = serde_json::from_str(&request).unwrap();
                    let answer =
                        serde_json::json!({"jsonrpc": "2.0", "id": request["id"], "result": "0x1"});
                    if ws.send(Message::text(answer.to_string())).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url.parse().unwrap(), serving)
}

/// The follower reads and checks between wake-ups, for seconds at a time when many seats come in at
/// once. A subscription asked for before that work is made meanwhile, and is not failed for the time
/// the follower spent elsewhere.
#[tokio::test]
async fn a_subscription_is_made_while_the_follower_is_busy_elsewhere() {
    let (url, _endpoint) = granting_subscriptions().await;
    let mut wakeups = Wakeups::new(Duration::from_secs(60), Some(url));
    wakeups.subscribe_timeout = Duration::from_millis(300);
    let _ = tokio::time::timeout(Duration::from_millis(20), wakeups.next()).await;
    // Busy elsewhere, for longer than a subscription may take to be made.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _ = tokio::time::timeout(Duration::from_millis(200), wakeups.next()).await;
    assert!(
        wakeups.subscribed(),
        "the subscription, answered at once, must be followed"
    );
}

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

/// Without a subscription the timer polls at the configured interval; with one only as a safety net,
/// and never faster than configured.
#[test]
fn a_subscription_slows_the_timer_to_a_safety_net() {
    let t0 = Instant::now();
    let mut pace = Pace::new(Duration::from_secs(2), true, t0);
    assert_eq!(pace.period(), Duration::from_secs(2));
    assert!(
        pace.subscribe_due(t0),
        "the first subscription is tried at once"
    );
    pace.subscribe_succeeded(t0);
    assert_eq!(pace.period(), SAFETY_POLL);
    assert_eq!(pace.next_timer(), t0, "the first poll is not put off");
    pace.timer_fired(t0);
    assert_eq!(pace.next_timer(), t0 + SAFETY_POLL);
    let slow = Pace::new(Duration::from_secs(60), true, t0);
    assert_eq!(slow.period(), Duration::from_secs(60));
    let http = Pace::new(Duration::from_secs(2), false, t0);
    assert!(
        !http.subscribe_due(at(t0, 100_000)),
        "no URL, no subscription"
    );
}

/// A lost subscription makes the timer poll at once and at the configured interval, and is tried
/// again after a backoff that grows while it keeps failing and starts over once it works.
#[test]
fn a_lost_subscription_falls_back_to_polling_and_is_retried_with_backoff() {
    let t0 = Instant::now();
    let mut pace = Pace::new(Duration::from_secs(2), true, t0);
    pace.subscribe_succeeded(t0);
    pace.subscription_lost(at(t0, 5_000));
    assert!(!pace.subscribed());
    assert_eq!(pace.next_timer(), at(t0, 5_000), "a poll at once");
    assert_eq!(pace.period(), Duration::from_secs(2));
    assert!(!pace.subscribe_due(at(t0, 5_999)));
    assert!(pace.subscribe_due(at(t0, 6_000)), "1 s later");
    pace.subscription_lost(at(t0, 6_000));
    assert!(!pace.subscribe_due(at(t0, 7_999)) && pace.subscribe_due(at(t0, 8_000)));
    pace.subscribe_succeeded(at(t0, 8_000));
    pace.subscription_lost(at(t0, 9_000));
    assert!(
        pace.subscribe_due(at(t0, 10_000)),
        "the backoff started over"
    );
}

/// A poll finding the chain two blocks past the last announced head, a whole safety period after it
/// came, means the subscription stalled; one block may still be on its way, and a busy follower takes
/// heads late.
#[test]
fn a_subscription_that_falls_behind_the_chain_is_stalled() {
    let t0 = Instant::now();
    let mut pace = Pace::new(Duration::from_secs(2), true, t0);
    pace.subscribe_succeeded(t0);
    pace.head_announced(10, t0);
    assert!(
        !pace.polled(11, at(t0, 20_000)),
        "one block may be in flight"
    );
    assert!(
        !pace.polled(12, at(t0, 14_000)),
        "not within a safety period of a head"
    );
    assert!(pace.polled(12, at(t0, 15_000)));
    pace.subscription_lost(at(t0, 15_000));
    assert!(!pace.polled(50, at(t0, 9_000)), "not subscribed");
}

/// A leader polls at least every renewal period whatever the subscription, starting at once, and a
/// subscription's silence is still measured in whole safety periods.
#[test]
fn a_cap_polls_at_least_that_often_from_now_on() {
    let t0 = Instant::now();
    let mut pace = Pace::new(Duration::from_secs(2), true, t0);
    pace.subscribe_succeeded(t0);
    pace.timer_fired(t0);
    assert_eq!(pace.next_timer(), t0 + SAFETY_POLL);
    pace.poll_at_least_every(Some(Duration::from_millis(600)), at(t0, 1_000));
    assert_eq!(pace.next_timer(), at(t0, 1_000), "a poll at once");
    pace.timer_fired(at(t0, 1_000));
    assert_eq!(pace.next_timer(), at(t0, 1_600));
    pace.poll_at_least_every(Some(Duration::from_millis(600)), at(t0, 1_100));
    assert_eq!(
        pace.next_timer(),
        at(t0, 1_600),
        "no extra poll while it stays on"
    );
    pace.head_announced(10, at(t0, 1_000));
    assert!(
        !pace.polled(12, at(t0, 2_000)),
        "a capped period is not a whole safety period of silence"
    );
    pace.poll_at_least_every(None, at(t0, 2_000));
    pace.timer_fired(at(t0, 2_000));
    assert_eq!(
        pace.next_timer(),
        at(t0, 2_000) + SAFETY_POLL,
        "back to the safety net"
    );
}

/// Seeds `pace` so that its first stretched poll falls in the latter four fifths of its period, past the
/// silences a test looks into (drawn anywhere, it fell among them once in fifteen runs).
fn late_first_poll(pace: &mut Pace) {
    for seed in 1u64.. {
        pace.spread = seed;
        if pace.next_fraction() >= 0.2 {
            pace.spread = seed;
            return;
        }
    }
}

/// A node of a cluster of `nodes`, subscribed at `t0`, whose first poll (at once) has fired.
fn subscribed_in(nodes: usize, t0: Instant) -> Pace {
    let mut pace = Pace::new(Duration::from_secs(2), true, t0);
    pace.cluster_of(nodes);
    pace.subscribe_succeeded(t0);
    pace.timer_fired(t0);
    pace
}

/// In a cluster of a thousand, a subscribed node polls as a safety net every 500 s, so that the cluster's
/// polls together are 2 a second, not 66.7; but a silence of 15 s after a head is still looked into, once:
/// a subscription that stalls while the chain moves on is found as soon as in a small cluster, and a quiet
/// chain costs one poll per silence.
#[test]
fn a_large_cluster_polls_seldom_but_looks_into_each_silence_once() {
    let t0 = Instant::now();
    let mut pace = Pace::new(Duration::from_secs(2), true, t0);
    late_first_poll(&mut pace);
    pace.cluster_of(1000);
    pace.subscribe_succeeded(t0);
    assert_eq!(pace.period(), Duration::from_secs(500));
    pace.timer_fired(t0);
    let next = pace.next_timer() - t0;
    assert!(
        next < Duration::from_secs(500),
        "the first anywhere within a period: {next:?}"
    );

    // Heads every 2 s push the silence check on; no poll while they come.
    for n in 0..10u64 {
        pace.head_announced(100 + n, at(t0, 2_000 * n));
    }
    let last = at(t0, 18_000);
    assert_eq!(
        pace.next_timer(),
        last + SAFETY_POLL,
        "15 s after the last head"
    );
    pace.timer_fired(last + SAFETY_POLL);
    assert!(
        pace.polled(111, last + SAFETY_POLL),
        "the chain moved on two blocks in the silence: stalled"
    );

    // A quiet chain: the silence is looked into once, then the safety poll comes when it was due.
    let mut quiet = subscribed_in(1000, t0);
    quiet.timer_fired(quiet.next_timer());
    let t1 = quiet.next_timer() - Duration::from_secs(200);
    let scheduled = quiet.next_timer();
    quiet.head_announced(7, t1);
    assert_eq!(quiet.next_timer(), t1 + SAFETY_POLL);
    quiet.timer_fired(t1 + SAFETY_POLL);
    assert!(!quiet.polled(7, t1 + SAFETY_POLL), "the chain did not move");
    assert_eq!(
        quiet.next_timer(),
        scheduled,
        "then the safety poll as it was scheduled"
    );
    quiet.head_announced(8, t1 + Duration::from_secs(100));
    assert_eq!(
        quiet.next_timer(),
        t1 + Duration::from_secs(115),
        "a new head, a new silence to look into"
    );
}

/// The nodes of a large cluster that start together poll as the cluster's budget says from the start:
/// each one's first stretched period falls anywhere within it, so that they do not all wait half a
/// period and then poll within one.
#[test]
fn nodes_that_start_together_spread_their_first_polls_over_one_period() {
    let t0 = Instant::now();
    let firsts: Vec<f64> = (0..400)
        .map(|_| {
            let pace = subscribed_in(1000, t0);
            (pace.next_timer() - t0).as_secs_f64()
        })
        .collect();
    assert!(firsts.iter().all(|s| (0.0..500.0).contains(s)));
    let within = |from: f64, to: f64| firsts.iter().filter(|s| (from..to).contains(*s)).count();
    for quarter in 0..4 {
        let from = f64::from(quarter) * 125.0;
        let n = within(from, from + 125.0);
        assert!(
            (60..140).contains(&n),
            "{n} of 400 first polls in {from}..{} s",
            from + 125.0
        );
    }
}

/// The nodes of a large cluster that looked into the same silence at the same moment do not poll in step
/// from then on: each stretched period falls between half and one and a half of it, averaging it.
#[test]
fn stretched_periods_spread_the_nodes_polls_over_time() {
    let t0 = Instant::now();
    let nexts: Vec<Duration> = (0..200)
        .map(|_| {
            let mut pace = subscribed_in(1000, t0);
            let first = pace.next_timer();
            pace.timer_fired(first);
            pace.next_timer() - first
        })
        .collect();
    let distinct: std::collections::BTreeSet<_> = nexts.iter().collect();
    assert!(distinct.len() > 190, "{} distinct of 200", distinct.len());
    assert!(nexts.iter().all(|d| (250..750).contains(&d.as_secs())));
    let mean = nexts.iter().map(Duration::as_secs_f64).sum::<f64>() / nexts.len() as f64;
    assert!((450.0..550.0).contains(&mean), "mean {mean}");

    let mut one = Pace::new(Duration::from_secs(2), true, t0);
    one.cluster_of(1000);
    one.subscribe_succeeded(t0);
    let mut at_ = t0;
    let mut total = Duration::ZERO;
    for _ in 0..400 {
        one.timer_fired(at_);
        let step = one.next_timer() - at_;
        total += step;
        at_ += step;
    }
    let mean = total.as_secs_f64() / 400.0;
    assert!(
        (470.0..530.0).contains(&mean),
        "one node's mean period {mean}"
    );
}

/// A small cluster keeps the 15 s safety net and no extra poll for a silence: the period covers it.
#[test]
fn a_small_cluster_polls_every_safety_period_and_no_more() {
    let t0 = Instant::now();
    let mut pace = subscribed_in(10, t0);
    pace.head_announced(5, at(t0, 3_000));
    assert_eq!(pace.period(), SAFETY_POLL);
    assert_eq!(pace.next_timer(), t0 + SAFETY_POLL);
}

/// A subscription that never announced anything is measured from the first poll after it was made.
#[test]
fn a_subscription_that_never_announced_is_measured_from_the_first_poll() {
    let t0 = Instant::now();
    let mut pace = Pace::new(Duration::from_secs(2), true, t0);
    pace.subscribe_succeeded(t0);
    assert!(!pace.polled(100, at(t0, 15_000)), "the mark");
    assert!(!pace.polled(101, at(t0, 30_000)));
    assert!(pace.polled(102, at(t0, 45_000)));
}
