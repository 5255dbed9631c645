//! How the follower learns of new blocks: announced heads over a subscription, polling when there is
//! none, blooms that spare log reads, reorgs, and subscriptions that drop or never answer.

use super::*;

/// Waits up to `within` for wake-ups, ticking the follower at each (at the announced head, or polling),
/// until `done`; returns the wake-ups that came.
async fn wake_until(
    f: &mut Follower,
    wakeups: &mut Wakeups,
    within: Duration,
    done: impl Fn(&Follower, &Wakeups) -> bool,
) -> Vec<Wake> {
    let started = Instant::now();
    let mut seen = Vec::new();
    while !done(f, wakeups) {
        let left = within.saturating_sub(started.elapsed());
        let wake = tokio::time::timeout(left, wakeups.next())
            .await
            .unwrap_or_else(|_| panic!("not done within {within:?}; woken by {seen:?}"));
        let heads = match &wake {
            Wake::Heads(heads) => heads.as_slice(),
            Wake::Timer => &[],
        };
        f.tick_at(Instant::now(), heads).await.unwrap();
        seen.push(wake);
    }
    seen
}

fn subscribing(url: &str, poll: Duration) -> Wakeups {
    Wakeups::new(poll, Some(url.parse().unwrap()))
}

/// Lets `wakeups` run (its timer's wake-ups are dropped) until its subscription is made, for at most 5 s.
async fn until_subscribed(wakeups: &mut Wakeups) {
    let started = Instant::now();
    while !wakeups.subscribed() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no subscription within 5 s"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), wakeups.next()).await;
    }
}

/// Over a subscription each block wakes the follower, which reads its events up to the announced head
/// without polling for it: a join is applied at its block, with no head poll at all.
#[tokio::test(flavor = "multi_thread")]
async fn announced_heads_are_read_at_once_without_polling() {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let c = deploy_cluster(&anvil, a.kms_root).await;
    let mut f = follow(anvil.endpoint().as_str(), *c.address()).await;
    let mut wakeups = subscribing(&anvil.ws_endpoint(), Duration::from_secs(60));
    until_subscribed(&mut wakeups).await;
    let polls = f.head_polls;
    join(&anvil, &c, &a, "192.0.2.1:51820").await;
    let joined = Instant::now();
    let woken = wake_until(&mut f, &mut wakeups, Duration::from_secs(5), |f, _| {
        f.view().records.contains_key(&1)
    })
    .await;
    assert!(
        woken.iter().all(|w| matches!(w, Wake::Heads(_))),
        "heads woke it, not the 60 s timer: {woken:?}"
    );
    assert_eq!(f.head_polls, polls, "the head was announced, not polled");
    assert!(
        joined.elapsed() < Duration::from_secs(1),
        "applied {:?} after the join's receipt",
        joined.elapsed()
    );
}

/// Every request the RPC saw so far, of any method.
fn seen(proxy: &RpcProxy) -> usize {
    proxy.requests().values().sum()
}

/// How many more `method` requests the RPC saw in `after` than in `before`.
fn more(
    before: &std::collections::BTreeMap<String, usize>,
    after: &std::collections::BTreeMap<String, usize>,
    method: &str,
) -> usize {
    after.get(method).copied().unwrap_or(0) - before.get(method).copied().unwrap_or(0)
}

/// Over a subscription, a block with nothing for the cluster costs the RPC no request at all: the heads
/// bring each block's hashes and logs bloom. A join's blocks cost their log reads and are applied at once;
/// idle blocks after it cost nothing again. Counted by the RPC itself (a proxy in front of anvil that the
/// follower reads through), over 20 idle blocks each time.
#[tokio::test(flavor = "multi_thread")]
async fn idle_blocks_cost_the_rpc_no_request_over_a_subscription() {
    const IDLE: u64 = 20;
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let c = deploy_cluster(&anvil, a.kms_root).await;
    let proxy = RpcProxy::start(anvil.endpoint().as_str());
    let mut f = follow(proxy.url(), *c.address()).await;
    let mut wakeups = subscribing(&anvil.ws_endpoint(), Duration::from_secs(60));
    until_subscribed(&mut wakeups).await;
    let head = reader(anvil.endpoint().as_str())
        .get_block_number()
        .await
        .unwrap();
    wake_until(&mut f, &mut wakeups, Duration::from_secs(5), |f, _| {
        f.view().last_block >= head
    })
    .await;

    for round in ["before a join", "after it"] {
        let (before, from) = (seen(&proxy), f.view().last_block);
        let mut woken = Vec::new();
        // One block at a time, as a chain makes them: the subscription's channel holds only so many.
        for i in 1..=IDLE {
            mine(&anvil).await;
            woken.extend(
                wake_until(&mut f, &mut wakeups, Duration::from_secs(5), |f, _| {
                    f.view().last_block >= from + i
                })
                .await,
            );
        }
        let idle = seen(&proxy) - before;
        println!(
            "{IDLE} idle blocks {round}: {idle} requests at the RPC, {} wake-ups",
            woken.len()
        );
        assert!(
            woken.iter().all(|w| matches!(w, Wake::Heads(_))),
            "{woken:?}"
        );
        assert_eq!(idle, 0, "requests for idle blocks: {:?}", proxy.requests());
        if round == "after it" {
            break;
        }
        let before = proxy.requests();
        join(&anvil, &c, &a, "192.0.2.1:51820").await;
        let joined = Instant::now();
        wake_until(&mut f, &mut wakeups, Duration::from_secs(5), |f, _| {
            f.view().records.contains_key(&1)
        })
        .await;
        let after = proxy.requests();
        println!(
            "a join (mint, binding, registration): applied {:?} after its receipt, {} eth_getLogs, {:?} in all",
            joined.elapsed(),
            more(&before, &after, "eth_getLogs"),
            after
        );
        assert!(
            more(&before, &after, "eth_getLogs") >= 1,
            "the join's logs were read"
        );
        assert_eq!(
            more(&before, &after, "eth_blockNumber"),
            0,
            "no head was polled"
        );
        assert_eq!(
            more(&before, &after, "eth_getBlockByNumber"),
            0,
            "the heads gave the hashes"
        );
    }
}

/// Without a subscription, polling a block with nothing for the cluster costs its head poll and its header,
/// whose logs bloom spares the `eth_getLogs`; a block with the cluster's event is read.
#[tokio::test(flavor = "multi_thread")]
async fn polling_skips_the_log_read_of_a_block_whose_bloom_holds_nothing_of_the_cluster() {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let c = deploy_cluster(&anvil, a.kms_root).await;
    let proxy = RpcProxy::start(anvil.endpoint().as_str());
    let mut f = follow(proxy.url(), *c.address()).await;
    f.tick(Instant::now()).await.unwrap();

    let before = proxy.requests();
    mine(&anvil).await;
    f.tick(Instant::now()).await.unwrap();
    let after = proxy.requests();
    assert_eq!(more(&before, &after, "eth_getLogs"), 0, "{after:?}");
    assert_eq!(more(&before, &after, "eth_blockNumber"), 1);
    assert_eq!(more(&before, &after, "eth_getBlockByNumber"), 1);
    assert_eq!(f.log_reads_skipped, 1);

    // One block with the cluster's event: the mint (one transaction, one block).
    mint(&c, anvil.addresses()[1], Some(&a)).await;
    let before = proxy.requests();
    f.tick(Instant::now()).await.unwrap();
    let after = proxy.requests();
    assert_eq!(more(&before, &after, "eth_getLogs"), 1, "{after:?}");
    assert_eq!(f.log_reads_skipped, 1);
}

/// The subscription's socket drops and stays down: the follower falls back to polling at the configured
/// interval and still sees a join; when the socket is back it subscribes again and heads wake it as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_subscription_falls_back_to_polling_and_resumes() {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let b = SimulatedInstance::start("b").await;
    let c = deploy_cluster(&anvil, a.kms_root).await;
    let relay = TcpRelay::start(([127, 0, 0, 1], anvil.port()).into());
    let mut f = follow(anvil.endpoint().as_str(), *c.address()).await;
    let mut wakeups = subscribing(&relay.url("ws"), Duration::from_millis(200));
    until_subscribed(&mut wakeups).await;

    relay.cut();
    // The client redials once, 1 s after the drop, before it gives the subscription up.
    wake_until(&mut f, &mut wakeups, Duration::from_secs(5), |_, w| {
        !w.subscribed()
    })
    .await;
    join(&anvil, &c, &a, "192.0.2.1:51820").await;
    let woken = wake_until(&mut f, &mut wakeups, Duration::from_secs(5), |f, _| {
        f.view().records.contains_key(&1)
    })
    .await;
    assert!(
        woken.iter().all(|w| *w == Wake::Timer),
        "polling found the join: {woken:?}"
    );

    relay.restore();
    wake_until(&mut f, &mut wakeups, Duration::from_secs(20), |_, w| {
        w.subscribed()
    })
    .await;
    let polls = f.head_polls;
    join(&anvil, &c, &b, "192.0.2.2:51820").await;
    let woken = wake_until(&mut f, &mut wakeups, Duration::from_secs(5), |f, _| {
        f.view().records.contains_key(&2)
    })
    .await;
    assert!(
        woken.iter().any(|w| matches!(w, Wake::Heads(_))),
        "a head announced the second join: {woken:?}"
    );
    assert!(
        f.head_polls - polls <= woken.iter().filter(|w| **w == Wake::Timer).count() as u64,
        "heads were not polled for"
    );
}

/// A reorg replaces the block with a join by one at the same height with another: the head that announces
/// it makes a full read at once, so the replaced join is gone and the new one is there, without waiting
/// for a later block.
#[tokio::test(flavor = "multi_thread")]
async fn a_reorg_announced_by_a_new_head_is_sorted_out_at_once() {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let b = SimulatedInstance::start("b").await;
    let c = deploy_cluster(&anvil, a.kms_root).await;
    mint(&c, anvil.addresses()[1], Some(&a)).await;
    mint(&c, anvil.addresses()[1], Some(&b)).await;
    let mut f = follow(anvil.endpoint().as_str(), *c.address()).await;
    let mut wakeups = subscribing(&anvil.ws_endpoint(), Duration::from_secs(60));
    until_subscribed(&mut wakeups).await;
    let p = reader(anvil.endpoint().as_str());
    let snapshot: U256 = p.raw_request("evm_snapshot".into(), ()).await.unwrap();

    a.register(&anvil, *c.address(), "192.0.2.1:51820", "", 2)
        .await;
    wake_until(&mut f, &mut wakeups, Duration::from_secs(5), |f, _| {
        f.view().records.contains_key(&1)
    })
    .await;
    let replaced = f.view().last_block;

    let reverted: bool = p
        .raw_request("evm_revert".into(), (snapshot,))
        .await
        .unwrap();
    assert!(reverted);
    b.register(&anvil, *c.address(), "192.0.2.2:51820", "", 2)
        .await;
    assert_eq!(
        p.get_block_number().await.unwrap(),
        replaced,
        "the new block is at the replaced one's height"
    );
    let woken = wake_until(&mut f, &mut wakeups, Duration::from_secs(5), |f, _| {
        f.view().records.contains_key(&2)
    })
    .await;
    assert!(
        woken.iter().all(|w| matches!(w, Wake::Heads(_))),
        "{woken:?}"
    );
    assert!(
        !f.view().records.contains_key(&1),
        "the replaced join is gone"
    );
    let hash = p
        .get_block_by_number(replaced.into())
        .await
        .unwrap()
        .unwrap()
        .header
        .hash;
    assert_eq!(f.view().last_block_hash, hash, "on the new chain");
}

/// A subscription URL whose server accepts connections and never answers holds no poll up: the timer
/// wakes the follower at its interval while the subscription is being tried.
#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_that_never_answers_holds_no_poll_up() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", silent.local_addr().unwrap());
    let _held = owned_task::Task::spawn("silent-websocket", async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let mut wakeups = subscribing(&url, Duration::from_millis(100));
    let started = Instant::now();
    for _ in 0..5 {
        let wake = tokio::time::timeout(Duration::from_secs(2), wakeups.next())
            .await
            .expect("the timer woke the follower while the subscription hung");
        assert_eq!(wake, Wake::Timer);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "five polls 100 ms apart took {:?}",
        started.elapsed()
    );
    assert!(!wakeups.subscribed());
}
