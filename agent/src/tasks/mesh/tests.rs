use super::interfaces::accepting;
use super::*;
use crate::desired::tests::{record, view};
use mesh_wg::MemoryTable;
use owned_task::Task;
use std::net::Ipv4Addr;
use std::sync::Mutex;

#[test]
fn the_relay_port_is_held_from_the_start_and_serves_one_interface_after_another() {
    let reserved = RelayParts::reserve(0).expect("a free port");
    let port = reserved.local_addr().unwrap().port();
    let taken = std::net::TcpListener::bind(("127.0.0.1", port))
        .expect_err("no other socket can take the held port, not even one bound to loopback");
    assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async {
        drop(accepting(&reserved).expect("the first interface's endpoint"));
        let next = accepting(&reserved).expect("the next interface's endpoint");
        let dialled = tokio::net::TcpStream::connect(("127.0.0.1", port));
        let (dialled, accepted) = tokio::join!(dialled, next.accept());
        assert!(
            dialled.is_ok() && accepted.is_ok(),
            "{dialled:?} {accepted:?}"
        );
    });
}

#[test]
fn the_first_list_is_settled_once_every_tunnel_has_handshaken_or_its_time_is_up() {
    let t0 = Instant::now();
    let by = t0 + SETTLE_FOR;
    let mut awaiting = BTreeMap::new();
    assert!(settled(&awaiting, by, t0), "no tunnel to wait for");
    awaiting.insert(Key::from_bytes([1; 32]), t0);
    assert!(
        !settled(&awaiting, by, t0),
        "a first handshake still to come"
    );
    assert!(
        !settled(&awaiting, by, by - Duration::from_millis(1)),
        "within its time"
    );
    assert!(
        settled(&awaiting, by, by),
        "a peer that is down holds nothing up"
    );
}

/// A peer added less than 12 s ago with no handshake is read every 50 ms, so that the API shows its tunnel up
/// within 50 ms of the handshake; a peer absent for longer is not. The whole device is read at the usual
/// refresh, and less often while every peer is on the idle bound.
#[test]
fn a_new_peers_first_handshake_is_watched_closely_for_a_while() {
    let t0 = Instant::now();
    let refresh = Duration::from_millis(500);
    let mut awaiting = BTreeMap::new();
    assert_eq!(next_await(&awaiting, t0, refresh), None, "nothing awaited");
    awaiting.insert(Key::from_bytes([1; 32]), t0);
    assert_eq!(next_await(&awaiting, t0, refresh), Some(AWAIT_REFRESH));
    assert_eq!(
        next_await(&awaiting, t0 + Duration::from_secs(11), refresh),
        Some(AWAIT_REFRESH)
    );
    assert_eq!(
        next_await(&awaiting, t0 + AWAIT_FOR, refresh),
        None,
        "an absent peer is not watched for ever"
    );
    assert_eq!(
        next_await(&awaiting, t0, Duration::from_millis(20)),
        Some(Duration::from_millis(20)),
        "never slower than asked"
    );
    assert_eq!(next_refresh(refresh, false), refresh);
    assert_eq!(
        next_refresh(refresh, true),
        IDLE_REFRESH,
        "every peer on the idle bound: read less often"
    );
}

/// Interfaces in memory: what was created and removed, and the table of the current one.
#[derive(Default, Clone)]
struct Memory {
    log: Arc<Mutex<Vec<String>>>,
    table: Arc<Mutex<Option<Arc<MemoryTable>>>>,
    /// What the task last told the interface it watches.
    watching: Arc<Mutex<Option<mesh_wg::Watching>>>,
    /// What the task asked of the table, in order.
    calls: Arc<Mutex<Vec<String>>>,
    refuse_policy: Arc<std::sync::atomic::AtomicBool>,
}

/// A table in memory that notes each call: `peers` (every peer read), `peers_of` (some), `set`, `remove`.
struct Recorded {
    table: Arc<MemoryTable>,
    calls: Arc<Mutex<Vec<String>>>,
    /// While set, a peer held to a reach is refused as nftables refuses a table: it keeps the reach before.
    refuse_policy: Arc<std::sync::atomic::AtomicBool>,
}

impl Recorded {
    fn note(&self, call: &str, key: Option<&Key>) {
        let call = match key {
            Some(k) => format!("{call} {:02x}", k.as_bytes()[0]),
            None => call.to_owned(),
        };
        self.calls.lock().unwrap().push(call);
    }
}

impl PeerTable for Recorded {
    fn peers(&self) -> Vec<mesh_wg::PeerStatus> {
        self.note("peers", None);
        self.table.peers()
    }

    fn peers_of(&self, keys: &[Key]) -> Vec<mesh_wg::PeerStatus> {
        self.note("peers_of", None);
        self.table.peers_of(keys)
    }

    fn set_peer(&self, peer: mesh_wg::PeerConfig) -> Result<(), mesh_wg::Error> {
        self.note("set", Some(&peer.public_key));
        if !peer.reach.all && self.refuse_policy.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(mesh_wg::Error::Policy {
                ifname: "mem0".into(),
                detail: "nft: refused".into(),
            });
        }
        self.table.set_peer(peer)
    }

    fn remove_peer(&self, key: &Key) -> bool {
        self.note("remove", Some(key));
        self.table.remove_peer(key)
    }
}

impl Memory {
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
    fn keys(&self) -> Vec<Key> {
        let table = self.table.lock().unwrap().clone().expect("an interface");
        table.peers().into_iter().map(|p| p.public_key).collect()
    }
}

impl Interfaces for Memory {
    type Table = Recorded;

    async fn create(
        &mut self,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> anyhow::Result<(Recorded, DeviceInfo)> {
        self.log
            .lock()
            .unwrap()
            .push(format!("create {address}/{prefix_len}"));
        let table = Arc::new(MemoryTable::default());
        *self.table.lock().unwrap() = Some(Arc::clone(&table));
        let info = DeviceInfo {
            ifname: "mem0".into(),
            listen_port: 1,
            backend: "memory",
        };
        let calls = Arc::clone(&self.calls);
        let refuse_policy = Arc::clone(&self.refuse_policy);
        Ok((
            Recorded {
                table,
                calls,
                refuse_policy,
            },
            info,
        ))
    }

    fn set_watching(&self, _: &Recorded, watching: mesh_wg::Watching) {
        *self.watching.lock().unwrap() = Some(watching);
    }

    async fn remove(&mut self, _: Recorded) -> anyhow::Result<()> {
        self.log.lock().unwrap().push("remove".into());
        *self.table.lock().unwrap() = None;
        Ok(())
    }
}

fn chain(records: &[mesh_chain::record::SignedRegistration], seat: SeatState) -> ChainState {
    ChainState {
        view: Some(Arc::new(view(records))),
        seat,
        ..ChainState::default()
    }
}

fn task(memory: &Memory) -> MeshTask<Memory> {
    MeshTask {
        interfaces: Some(memory.clone()),
        instance_id: "own".into(),
        app_id: Address::ZERO,
        wg_public_key: Some(Key::from_bytes([0xee; 32])),
        refresh: Duration::from_secs(3600),
        relay_port: None,
        watchers: super::Watchers::default(),
    }
}

/// Waits until the task has published a state `ok` accepts, for at most 5 s.
async fn until(rx: &mut watch::Receiver<MeshState>, ok: impl Fn(&MeshState) -> bool) -> MeshState {
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| ok(s)))
        .await
        .expect("the mesh task published in time")
        .expect("the mesh task is running")
        .clone()
}

/// The interface comes up with the seat's address, holds every member with a key, follows the records
/// as they change, goes when the seat goes, and is removed at shutdown.
#[tokio::test]
async fn the_interface_follows_the_seat_and_the_records() {
    let memory = Memory::default();
    let (chain_tx, chain_rx) = watch::channel(ChainState::default());
    let (out, mut rx) = watch::channel(MeshState::default());
    let cancel = CancellationToken::new();
    let running = Task::spawn("mesh", task(&memory).run(chain_rx, out, cancel.clone()));

    // No seat known: peers from the view are offered, but there is no interface to put them on.
    chain_tx.send_replace(chain(&[record(2, 0x22, "")], SeatState::Unknown));
    let s = until(&mut rx, |s| s.members.len() == 1).await;
    assert!(s.device.is_none());
    assert!(memory.log().is_empty());

    chain_tx.send_replace(chain(
        &[record(2, 0x22, ""), record(3, 0x33, "")],
        SeatState::Active(5),
    ));
    let s = until(&mut rx, |s| s.device.is_some() && s.members.len() == 2).await;
    assert_eq!(memory.log(), ["create 10.0.1.5/24"]);
    assert_eq!(
        memory.keys(),
        [Key::from_bytes([0x22; 32]), Key::from_bytes([0x33; 32])]
    );
    assert_eq!(s.stats.len(), 2, "the interface's peers are published");
    assert_eq!(s.reconciles, 1);
    assert_eq!(s.reconcile_latency.count, 1, "its time is measured");

    // Seat 2 is revoked: its peer goes.
    chain_tx.send_replace(chain(&[record(3, 0x33, "")], SeatState::Active(5)));
    until(&mut rx, |s| s.members.len() == 1).await;
    assert_eq!(memory.keys(), [Key::from_bytes([0x33; 32])]);

    // This node's seat is revoked: no members, no interface.
    chain_tx.send_replace(chain(&[record(3, 0x33, "")], SeatState::None));
    let s = until(&mut rx, |s| s.device.is_none()).await;
    assert!(s.members.is_empty() && s.stats.is_empty());
    assert_eq!(memory.log(), ["create 10.0.1.5/24", "remove"]);

    // A seat again: the interface comes back.
    chain_tx.send_replace(chain(&[record(3, 0x33, "")], SeatState::Active(6)));
    until(&mut rx, |s| s.device.is_some()).await;
    cancel.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(
        memory.log(),
        [
            "create 10.0.1.5/24",
            "remove",
            "create 10.0.1.6/24",
            "remove"
        ],
        "removed at shutdown"
    );
}

/// A mesh task running on an interface in memory, for seat 5 with the records of seats 2 and 3.
struct TwoPeers {
    memory: Memory,
    first: ChainState,
    chain_tx: watch::Sender<ChainState>,
    rx: watch::Receiver<MeshState>,
    cancel: CancellationToken,
    running: Task<anyhow::Result<()>>,
}

fn two_peers() -> TwoPeers {
    // As `task`: an hour, so that only the chain moves the task.
    two_peers_refreshing(Duration::from_secs(3600))
}

/// [`two_peers`], with the device read every `refresh` whatever the chain does.
fn two_peers_refreshing(refresh: Duration) -> TwoPeers {
    let memory = Memory::default();
    let first = chain(
        &[record(2, 0x22, ""), record(3, 0x33, "")],
        SeatState::Active(5),
    );
    let (chain_tx, chain_rx) = watch::channel(first.clone());
    let (out, rx) = watch::channel(MeshState::default());
    let cancel = CancellationToken::new();
    let t = MeshTask {
        refresh,
        ..task(&memory)
    };
    let running = Task::spawn("mesh", t.run(chain_rx, out, cancel.clone()));
    TwoPeers {
        memory,
        first,
        chain_tx,
        rx,
        cancel,
        running,
    }
}

impl TwoPeers {
    /// Once both peers are on the device, has them handshake and waits until that is published: no longer
    /// awaited, nothing reads the device until the refresh, an hour away. Returns the device's table.
    async fn handshaken(&mut self) -> Arc<MemoryTable> {
        until(&mut self.rx, |s| s.stats.len() == 2).await;
        let table = (self.memory.table.lock().unwrap().clone()).expect("an interface");
        for key in [0x22, 0x33] {
            table.handshake(&Key::from_bytes([key; 32]), std::time::SystemTime::now());
        }
        until(&mut self.rx, |s| {
            s.stats.values().all(|p| p.last_handshake.is_some())
        })
        .await;
        table
    }

    /// Seat 4 (key 0x44) registers beside the first two; returns the first state that has its peer.
    async fn seat_4_joins(&mut self) -> MeshState {
        let mut joined = (**self.first.view.as_ref().unwrap()).clone();
        joined.records.insert(4, Arc::new(record(4, 0x44, "")));
        self.chain_tx.send_replace(ChainState {
            view: Some(Arc::new(joined)),
            ..self.first.clone()
        });
        until(&mut self.rx, |s| s.stats.len() == 3).await
    }
}

/// A block that moves none of this node's peers (here a new leader) is not worked through them: the
/// device waits for its refresh. One that moves a peer is applied at once.
#[tokio::test]
async fn a_block_that_moves_no_peer_waits_for_the_refresh() {
    let mut t = two_peers();
    let before = until(&mut t.rx, |s| s.stats.len() == 2).await;

    let mut led = (**t.first.view.as_ref().unwrap()).clone();
    led.leader = Some(2);
    t.rx.mark_unchanged();
    t.chain_tx.send_replace(ChainState {
        view: Some(Arc::new(led.clone())),
        ..t.first.clone()
    });
    tokio::time::timeout(Duration::from_secs(5), t.rx.changed())
        .await
        .expect("the mesh task published in time")
        .unwrap();
    let after = t.rx.borrow_and_update().clone();
    assert!(
        before.stats.ptr_eq(&after.stats),
        "the device was not read again for a new leader"
    );
    assert!(before.members.ptr_eq(&after.members));

    led.records.remove(&3);
    t.chain_tx.send_replace(ChainState {
        view: Some(Arc::new(led)),
        ..t.first.clone()
    });
    until(&mut t.rx, |s| s.stats.len() == 1).await;
    assert_eq!(t.memory.keys(), [Key::from_bytes([0x22; 32])]);
    t.cancel.cancel();
    t.running.await.unwrap().unwrap();
}

/// A block that moves one seat is planned for that seat alone: its peer is read from the device, set, and
/// read again for its status, and no other peer is read until the refresh. The others keep their statuses.
#[tokio::test]
async fn a_peer_change_reads_the_seats_that_moved_not_every_peer() {
    let mut t = two_peers();
    let _table = t.handshaken().await;
    let before = t.rx.borrow().clone();
    t.memory.calls.lock().unwrap().clear();

    let after = t.seat_4_joins().await;
    let calls = t.memory.calls.lock().unwrap().clone();
    assert_eq!(
        calls.get(..3),
        Some(
            &[
                "peers_of".to_owned(),
                "set 44".to_owned(),
                "peers_of".to_owned()
            ][..]
        ),
        "{calls:?}"
    );
    let new = &after.stats[&Key::from_bytes([0x44; 32])];
    assert!(new.last_handshake.is_none(), "the newcomer's status");
    let two = Key::from_bytes([0x22; 32]);
    assert_eq!(after.stats[&two], before.stats[&two], "the others' kept");
    assert_eq!(after.members.len(), 3);
    t.cancel.cancel();
    t.running.await.unwrap().unwrap();
}

/// While a newcomer's first handshake is awaited, only its peer is read, every 50 ms, not the whole device:
/// the handshake shows once it comes, and then the reads stop until the refresh (an hour away here).
#[tokio::test]
async fn a_newcomers_handshake_is_awaited_by_reading_its_peer_alone() {
    let mut t = two_peers();
    let table = t.handshaken().await;

    t.memory.calls.lock().unwrap().clear();
    t.seat_4_joins().await;
    // The change reads the newcomer's peer twice (before and after setting it); then the awaited reads.
    let reads = || {
        let calls = t.memory.calls.lock().unwrap().clone();
        (calls.iter().filter(|c| *c == "peers_of").count(), calls)
    };
    let waited = tokio::time::timeout(Duration::from_secs(5), async {
        while reads().0 < 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert!(
        waited.await.is_ok(),
        "the newcomer read again while awaited: {:?}",
        reads().1
    );
    let calls = reads().1;
    assert!(
        !calls.iter().any(|c| c == "peers"),
        "no read of every peer: {calls:?}"
    );

    let newcomer = Key::from_bytes([0x44; 32]);
    table.handshake(&newcomer, std::time::SystemTime::now());
    until(&mut t.rx, |s| s.stats[&newcomer].last_handshake.is_some()).await;
    tokio::time::sleep(AWAIT_REFRESH * 2).await;
    let settled = t.memory.calls.lock().unwrap().len();
    tokio::time::sleep(AWAIT_REFRESH * 4).await;
    assert_eq!(
        t.memory.calls.lock().unwrap().len(),
        settled,
        "no read once the handshake is seen"
    );
    t.cancel.cancel();
    t.running.await.unwrap().unwrap();
}

/// An application that begins to read the API has every peer watched at once, not at the next refresh (an
/// hour away here).
#[tokio::test]
async fn a_first_read_of_the_api_has_every_peer_watched_at_once() {
    let memory = Memory::default();
    let readers = Arc::new(mesh_api::Readers::default());
    let mut t = task(&memory);
    t.watchers.readers = Some(Arc::clone(&readers));
    let (_chain_tx, chain_rx) = watch::channel(chain(&[record(2, 0x22, "")], SeatState::Active(5)));
    let (out, mut rx) = watch::channel(MeshState::default());
    let cancel = CancellationToken::new();
    let running = Task::spawn("mesh", t.run(chain_rx, out, cancel.clone()));
    until(&mut rx, |s| s.stats.len() == 1).await;
    // Handshaken: no longer awaited closely, so the next refresh is the task's, an hour away.
    let table = memory.table.lock().unwrap().clone().expect("an interface");
    table.handshake(&Key::from_bytes([0x22; 32]), std::time::SystemTime::now());
    until(&mut rx, |s| {
        s.stats.values().all(|p| p.last_handshake.is_some())
    })
    .await;
    let unwatched = mesh_wg::Watching::Only(Default::default());
    assert_eq!(*memory.watching.lock().unwrap(), Some(unwatched));

    readers.read(Instant::now());
    let watched = async {
        while *memory.watching.lock().unwrap() != Some(mesh_wg::Watching::All) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), watched)
        .await
        .expect("every peer watched within 5 s of the first read");
    cancel.cancel();
    running.await.unwrap().unwrap();
}

/// A record that fails local checks is counted once, not on every pass.
#[tokio::test]
async fn a_record_that_fails_local_checks_is_counted_once() {
    let memory = Memory::default();
    let mut bad = record(3, 0x33, "");
    bad.endpoint = "not-an-endpoint".into();
    let (chain_tx, chain_rx) = watch::channel(chain(
        &[record(2, 0x22, ""), bad.clone()],
        SeatState::Active(1),
    ));
    let (out, mut rx) = watch::channel(MeshState::default());
    let cancel = CancellationToken::new();
    let running = Task::spawn("mesh", task(&memory).run(chain_rx, out, cancel.clone()));
    until(&mut rx, |s| s.device.is_some()).await;
    // A newer view that still holds it: worked out again, but the reason is the same.
    chain_tx.send_replace(chain(
        &[record(2, 0x22, ""), bad, record(4, 0x44, "")],
        SeatState::Active(1),
    ));
    let s = until(&mut rx, |s| s.members.len() == 2).await;
    assert_eq!(s.invalid_records, 1);
    assert_eq!(
        memory.keys(),
        [Key::from_bytes([0x22; 32]), Key::from_bytes([0x44; 32])]
    );
    cancel.cancel();
    running.await.unwrap().unwrap();
}

/// Grants that let seat 2 (tagged web) reach TCP 5432 on seat 5 (tagged db), at `version`.
fn web_reaches_db(version: u64) -> Arc<ClusterPolicy> {
    let (web, db) = (1, 2);
    Arc::new(ClusterPolicy {
        rules: mesh_policy::Policy {
            enforced: true,
            version,
            tag_names: vec!["web".into(), "db".into()],
            grants: vec![mesh_policy::Grant {
                from: web,
                to: db,
                protocol: Some(mesh_policy::Protocol::Tcp),
                ports: 5432..=5432,
            }],
        },
        seat_tags: [(2, web), (5, db)].into(),
        app_tags: BTreeMap::new(),
    })
}

/// What the peer of key `key` (all bytes alike) may reach, as `table` holds it.
fn reach_on(table: &MemoryTable, key: u8) -> mesh_wg::Reach {
    table
        .peers_of(&[Key::from_bytes([key; 32])])
        .pop()
        .expect("a peer")
        .reach
}

/// The policy the task publishes is the one its interface holds: every state that names a version comes
/// after the plan that put that version's reach on the peers, so a user who waits for it may act on it.
#[tokio::test]
async fn the_policy_published_is_the_one_on_the_interface() {
    let mut t = two_peers();
    until(&mut t.rx, |s| s.stats.len() == 2).await;
    assert!(
        t.rx.borrow().policy.is_none(),
        "no grants read: none applied"
    );
    let table = (t.memory.table.lock().unwrap().clone()).expect("an interface");
    let reach_of = |key: u8| reach_on(&table, key);
    assert!(reach_of(0x22).all, "no policy: every port");

    t.chain_tx.send_replace(ChainState {
        grants: Some(web_reaches_db(1)),
        ..t.first.clone()
    });
    let s = until(&mut t.rx, |s| s.policy.is_some()).await;
    assert_eq!(s.policy.as_ref().unwrap().rules.version, 1);
    let web = reach_of(0x22);
    assert!(
        !web.all && web.tcp == [5432..=5432],
        "published with version 1, enforced: {web:?}"
    );
    assert!(!reach_of(0x33).all && reach_of(0x33).tcp.is_empty());

    // A grant removed: version 2 is named only once web reaches nothing here.
    let mut none = (*web_reaches_db(2)).clone();
    none.rules.grants.clear();
    t.chain_tx.send_replace(ChainState {
        grants: Some(Arc::new(none)),
        ..t.first.clone()
    });
    let s = until(&mut t.rx, |s| {
        s.policy.as_ref().is_some_and(|p| p.rules.version == 2)
    })
    .await;
    assert!(s.policy.as_ref().unwrap().rules.grants.is_empty());
    assert!(
        reach_of(0x22).tcp.is_empty(),
        "version 2 is on the interface"
    );
    t.cancel.cancel();
    t.running.await.unwrap().unwrap();
}

/// A change of grants the backend could not put in force is not published as in force: the grants before
/// stay the ones shown, and the change is planned again at the next refresh until the backend takes it.
#[tokio::test]
async fn grants_the_backend_refused_are_not_shown_in_force_and_are_tried_again() {
    let mut t = two_peers_refreshing(Duration::from_millis(50));
    until(&mut t.rx, |s| s.stats.len() == 2).await;

    t.memory
        .refuse_policy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    t.chain_tx.send_replace(ChainState {
        grants: Some(web_reaches_db(1)),
        ..t.first.clone()
    });
    let before = t.memory.calls.lock().unwrap().len();
    // Planned, refused, and planned again at a refresh: the grants are not shown meanwhile.
    tokio::time::timeout(Duration::from_secs(5), async {
        while t.memory.calls.lock().unwrap()[before..]
            .iter()
            .filter(|c| *c == "set 22")
            .count()
            < 2
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the refused peer is set again at a refresh");
    assert!(t.rx.borrow().policy.is_none(), "not in force: not shown");
    let table = (t.memory.table.lock().unwrap().clone()).expect("an interface");
    assert!(reach_on(&table, 0x22).all, "the interface judges as before");

    t.memory
        .refuse_policy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let s = until(&mut t.rx, |s| s.policy.is_some()).await;
    assert_eq!(s.policy.unwrap().rules.version, 1);
    assert_eq!(reach_on(&table, 0x22).tcp, [5432..=5432]);
    t.cancel.cancel();
    t.running.await.unwrap().unwrap();
}

/// In TLS mode there is never an interface, but the members are worked out.
#[tokio::test]
async fn a_tls_node_has_members_but_no_interface() {
    let (chain_tx, chain_rx) = watch::channel(chain(&[record(2, 0x22, "")], SeatState::Active(1)));
    let (out, mut rx) = watch::channel(MeshState::default());
    let cancel = CancellationToken::new();
    let t = MeshTask::<Memory> {
        interfaces: None,
        instance_id: "own".into(),
        app_id: Address::ZERO,
        wg_public_key: None,
        refresh: Duration::from_secs(3600),
        relay_port: None,
        watchers: super::Watchers::default(),
    };
    let running = Task::spawn("mesh", t.run(chain_rx, out, cancel.clone()));
    let s = until(&mut rx, |s| s.members.len() == 1).await;
    assert!(s.device.is_none());
    // No interface to plan: the grants read are those this node goes by (its forwarded ports).
    chain_tx.send_replace(ChainState {
        grants: Some(web_reaches_db(3)),
        ..chain(&[record(2, 0x22, "")], SeatState::Active(1))
    });
    let s = until(&mut rx, |s| s.policy.is_some()).await;
    assert_eq!(s.policy.unwrap().rules.version, 3);
    cancel.cancel();
    running.await.unwrap().unwrap();
}

/// Every peer is held to the peer timeout while an application reads the API or a replica port judges
/// members by their health; otherwise only those that carry traffic, which the device tells itself.
#[test]
fn every_peer_is_watched_while_the_api_is_read_or_a_replica_port_forwards() {
    use mesh_wg::Watching;
    let now = Instant::now();
    let readers = Arc::new(mesh_api::Readers::default());
    let w = super::Watchers {
        readers: Some(Arc::clone(&readers)),
        replica_ports: false,
    };
    assert_eq!(w.watching(now), Watching::Only(Default::default()));
    readers.read(now);
    assert_eq!(w.watching(now + super::READ_WATCHES / 2), Watching::All);
    assert_eq!(
        w.watching(now + super::READ_WATCHES),
        Watching::Only(Default::default())
    );
    let ports = super::Watchers {
        readers: None,
        replica_ports: true,
    };
    assert_eq!(ports.watching(now), Watching::All);
}
