//! The leader port on loopback: two "nodes" run a service that answers with its name (at 127.0.0.2 and
//! 127.0.0.3, standing in for overlay addresses), and the port forwards to whichever the leader is. A
//! connection reaches the leader of its term; a new term closes it and new ones reach the new leader; a lease
//! that runs out closes it with no change published; with no current leader a connection is closed at once.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use leader_port::{Member, Port, Ports, Stats, View, serve};
use mesh_api::{Leader, LeaderClock, PortRole};
use owned_task::Task;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A service at `ip` (any port) that answers each read with `name: ` and what it read; it stops with its task.
async fn service(ip: Ipv4Addr, name: &'static str) -> (SocketAddr, Task<()>) {
    service_on(ip, 0, name).await
}

fn leader(seat: u64, term: u64, lease: Duration) -> View {
    View {
        leader: lead(seat, term, lease),
        ..View::default()
    }
}

fn lead(seat: u64, term: u64, lease: Duration) -> Leader {
    Leader {
        token_id: Some(seat),
        overlay_ip: Some(Ipv4Addr::new(127, 0, 0, seat as u8)),
        is_self: false,
        term: Some(term),
        clock: LeaderClock {
            lease,
            confirmed_at: Some(Instant::now()),
            claim_until: None,
        },
        ..Leader::default()
    }
}

/// Sends `line` and reads the answer; `None` when the port closed the connection instead.
async fn ask(s: &mut TcpStream, line: &str) -> Option<String> {
    s.write_all(line.as_bytes()).await.ok()?;
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => None,
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(_) => panic!("no answer and no close within 5 s"),
    }
}

/// Waits for the port to close `s`: a read that ends.
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A forwarded port serving on loopback, following the views sent on its channel.
struct Serving {
    at: SocketAddr,
    stats: Stats,
    cancel: CancellationToken,
    task: Task<()>,
}

impl Serving {
    async fn start(port: Port, views: watch::Receiver<View>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let stats = Stats::new(&port);
        let cancel = CancellationToken::new();
        let task = Task::spawn(
            "forwarded-port",
            serve(vec![listener], port, views, stats.clone(), cancel.clone()),
        );
        Self {
            at,
            stats,
            cancel,
            task,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_reach_the_leader_of_their_term_and_end_with_it() {
    // Both services on one port number, as on a real cluster.
    let (two, _two) = service(Ipv4Addr::new(127, 0, 0, 2), "seat 2").await;
    let (three, _three) = service_on(Ipv4Addr::new(127, 0, 0, 3), two.port(), "seat 3").await;
    let port = leader_port(two.port(), three);
    let (tx, rx) = watch::channel(leader(2, 7, Duration::from_secs(60)));
    let served = Serving::start(port, rx).await;
    let at = served.at;

    let mut first = TcpStream::connect(at).await.unwrap();
    assert_eq!(
        ask(&mut first, "hello").await.as_deref(),
        Some("seat 2: hello")
    );

    // A failover: seat 3 leads under term 8. The old connection is closed; a new one reaches seat 3.
    tx.send(leader(3, 8, Duration::from_secs(60))).unwrap();
    assert!(
        closed(&mut first).await,
        "the term-7 connection outlived its term"
    );
    let mut second = TcpStream::connect(at).await.unwrap();
    assert_eq!(
        ask(&mut second, "again").await.as_deref(),
        Some("seat 3: again")
    );

    // The lease runs out with nothing published: the fence closes the connection all the same, and a new
    // connection is refused.
    tx.send(leader(3, 8, Duration::from_millis(300))).unwrap();
    assert!(closed(&mut second).await, "a connection outlived its lease");
    let mut third = TcpStream::connect(at).await.unwrap();
    assert_eq!(
        ask(&mut third, "anyone?").await,
        None,
        "no current leader, no forward"
    );

    // No leader at all: refused too.
    tx.send(View::default()).unwrap();
    let mut fourth = TcpStream::connect(at).await.unwrap();
    assert_eq!(ask(&mut fourth, "anyone?").await, None);

    let s = served.stats.snapshot();
    let term = |t: u64| {
        let r = s.routes.iter().find(|r| r.term == Some(t)).unwrap();
        (
            r.seat,
            r.counts.opened,
            r.counts.fenced,
            r.counts.bytes_to_service > 0,
            r.counts.bytes_from_service > 0,
        )
    };
    assert_eq!(term(7), (2, 1, 1, true, true), "{s:?}");
    assert_eq!(term(8), (3, 1, 1, true, true), "{s:?}");
    assert_eq!(s.routes[0].term, Some(8), "newest first: {s:?}");
    assert_eq!(s.refused.get("not-current"), Some(&1), "{s:?}");
    assert_eq!(s.refused.get("no-leader"), Some(&1), "{s:?}");
    assert_eq!(s.open, 0, "{s:?}");
    served.stop().await;
}

/// When this node leads, the port forwards to its own service.
#[tokio::test(flavor = "multi_thread")]
async fn the_leader_forwards_to_its_own_service() {
    let (local, _local) = service(Ipv4Addr::LOCALHOST, "this node").await;
    let port = leader_port(1, local);
    let mut me = leader(1, 3, Duration::from_secs(60));
    me.leader.is_self = true;
    me.leader.clock.claim_until = Some(Instant::now() + Duration::from_secs(60));
    let (_tx, rx) = watch::channel(me);
    let served = Serving::start(port, rx).await;
    let at = served.at;
    let mut s = TcpStream::connect(at).await.unwrap();
    assert_eq!(ask(&mut s, "hi").await.as_deref(), Some("this node: hi"));
    served.stop().await;
}

/// A leader whose port the grants between seats do not let this node reach: the connection is closed at
/// once and counted as not-granted, not left to wait out a connect timeout; a connection opened under a
/// grant ends when the grant is taken away.
#[tokio::test(flavor = "multi_thread")]
async fn a_port_not_granted_on_the_leader_is_refused_at_once_and_a_grant_taken_away_ends_its_connections()
 {
    let (two, _two) = service(Ipv4Addr::new(127, 0, 0, 2), "seat 2").await;
    let port = leader_port(two.port(), two);
    let mut granted = leader(2, 7, Duration::from_secs(60));
    granted.granted.insert(2, vec![two.port()..=two.port()]);
    let (tx, rx) = watch::channel(granted.clone());
    let served = Serving::start(port, rx).await;
    let at = served.at;
    let mut open = TcpStream::connect(at).await.unwrap();
    assert_eq!(ask(&mut open, "hi").await.as_deref(), Some("seat 2: hi"));

    granted.granted.insert(2, Vec::new());
    tx.send(granted).unwrap();
    assert!(closed(&mut open).await, "the grant was taken away");
    let began = Instant::now();
    let mut refused = TcpStream::connect(at).await.unwrap();
    assert!(closed(&mut refused).await, "not granted: closed");
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "closed at once, not after a connect timeout: {:?}",
        began.elapsed()
    );
    let s = served.stats.snapshot();
    assert_eq!(s.refused.get("not-granted"), Some(&1), "{s:?}");
    served.stop().await;
}

fn leader_port(port: u16, local: SocketAddr) -> Port {
    Port {
        role: PortRole::Leader,
        listen: 0,
        ports: Ports { port, local },
    }
}

/// A replica port spreads its connections over the members that do not lead, and closes one whose member
/// stops answering; with none left it reaches the leader.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_port_spreads_over_the_healthy_members_that_do_not_lead() {
    let (two, _two) = service(Ipv4Addr::new(127, 0, 0, 2), "seat 2").await;
    let (_three, _three_task) = service_on(Ipv4Addr::new(127, 0, 0, 3), two.port(), "seat 3").await;
    let (_four, _four_task) = service_on(Ipv4Addr::new(127, 0, 0, 4), two.port(), "seat 4").await;
    let member = |seat: u8, healthy| Member {
        seat: u64::from(seat),
        overlay_ip: Ipv4Addr::new(127, 0, 0, seat),
        is_self: false,
        healthy,
        draining: false,
    };
    let mut view = leader(2, 7, Duration::from_secs(60));
    view.members = vec![member(2, true), member(3, true), member(4, true)];
    let port = Port {
        role: PortRole::Replica,
        listen: 0,
        ports: Ports {
            port: two.port(),
            local: two,
        },
    };
    let (tx, rx) = watch::channel(view.clone());
    let served = Serving::start(port, rx).await;
    let at = served.at;
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(at).await.unwrap();
        let answer = ask(&mut s, "read").await.unwrap();
        open.push((answer, s));
    }
    let mut reached: Vec<&str> = open.iter().map(|(a, _)| a.as_str()).collect();
    reached.sort();
    assert_eq!(
        reached,
        [
            "seat 3: read",
            "seat 3: read",
            "seat 4: read",
            "seat 4: read"
        ],
        "two each, never the leader"
    );

    // Seat 3 stops answering: its connections close (once the port has taken the view, which it does in
    // its own time), and seat 4's stay.
    view.members[1].healthy = false;
    tx.send(view.clone()).unwrap();
    for (answer, s) in &mut open {
        if answer.starts_with("seat 3") {
            assert!(closed(s).await, "a connection to seat 3 stayed open");
        } else {
            assert_eq!(ask(s, "still?").await.as_deref(), Some("seat 4: still?"));
        }
    }
    let mut s = TcpStream::connect(at).await.unwrap();
    assert_eq!(ask(&mut s, "read").await.as_deref(), Some("seat 4: read"));

    // Seat 3 answers again. The connections it lost no longer count against it: seat 4 has three open and
    // seat 3 none, so the next three all go to seat 3.
    view.members[1].healthy = true;
    tx.send(view.clone()).unwrap();
    let mut back = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(at).await.unwrap();
        assert_eq!(ask(&mut s, "read").await.as_deref(), Some("seat 3: read"));
        back.push(s);
    }
    assert_eq!(served.stats.snapshot().open, 6);

    // No replica left: the leader serves.
    view.members[1].healthy = false;
    view.members[2].healthy = false;
    tx.send(view).unwrap();
    let mut s = TcpStream::connect(at).await.unwrap();
    assert_eq!(ask(&mut s, "read").await.as_deref(), Some("seat 2: read"));
    served.stop().await;
}

/// A service at `ip`:`port` that answers each read with `name: ` and what it read; it stops with its task.
async fn service_on(ip: Ipv4Addr, port: u16, name: &'static str) -> (SocketAddr, Task<()>) {
    let listener = TcpListener::bind((ip, port)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = Task::spawn("service", async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            connections.spawn(async move {
                let mut buf = [0u8; 256];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let reply = format!("{name}: {}", String::from_utf8_lossy(&buf[..n]));
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}
