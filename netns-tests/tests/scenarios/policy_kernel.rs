//! The grants between seats on the kernel backend, enforced with nftables: two namespaces joined by a veth,
//! a `wireguard-go` device in each (the kernel backend's path on a host without the module), each the
//! other's peer. A lets B reach only TCP 5432 on it.
//!
//! Run as root: `cargo nextest run -p netns-tests --profile scenarios -E 'test(policy_kernel)'` (needs
//! /dev/net/tun, iproute2, iputils-ping, wireguard-go, nftables).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use mesh_wg::{BackendChoice, DeviceConfig, Key, MeshDevice, PeerConfig, PeerTable as _, Reach};
use netns_tests::net::netns::{NetNs, enter, in_netns, unique, veth_pair};
use netns_tests::net::ping::assert_five_replies;
use netns_tests::net::wg::device_config;
use netns_tests::run::process::require_root;

const A_OVERLAY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const B_OVERLAY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
/// How long any call on a device may take before the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection the policy drops is given before it counts as dropped: SYNs are not answered,
/// and a refused or routed-nowhere connect fails at once.
const DROPPED_WITHIN: Duration = Duration::from_millis(1500);

type Job = Box<dyn FnOnce(&MeshDevice) + Send>;

/// A [`MeshDevice`] on `wireguard-go`, on a thread inside a namespace: its `nft` and netlink calls act on
/// that namespace. Dropped, it shuts the device down (its table and its `wireguard-go` go with it).
struct NsMesh {
    ifname: String,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl NsMesh {
    fn start(ns: &NetNs, config: DeviceConfig) -> Self {
        let ifname = config.ifname.clone();
        let ns_name = ns.name.clone();
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            enter(&ns_name);
            // Built after setns, so its workers (and wireguard-go, started from one) are in the namespace.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            let device = match rt.block_on(MeshDevice::create(config, BackendChoice::WireguardGo)) {
                Ok(d) => d,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            {
                let _context = rt.enter();
                while let Ok(job) = jobs_rx.recv() {
                    job(&device);
                }
            }
            if let Err(e) = rt.block_on(device.shutdown()) {
                eprintln!("warning: shutdown of the device: {e}");
            }
        });
        match ready_rx.recv_timeout(CALL_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("creating {ifname} on wireguard-go in {}: {e}", ns.name),
            Err(e) => panic!("{ifname} did not come up within {CALL_TIMEOUT:?}: {e}"),
        }
        Self {
            ifname,
            jobs: Some(jobs_tx),
            thread: Some(thread),
        }
    }

    fn call<T: Send + 'static>(&self, f: impl FnOnce(&MeshDevice) -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .expect("running")
            .send(Box::new(move |d| {
                let _ = tx.send(f(d));
            }))
            .unwrap_or_else(|_| panic!("the thread of {} is gone", self.ifname));
        rx.recv_timeout(CALL_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "{} did not answer within {CALL_TIMEOUT:?}: {e}",
                self.ifname
            )
        })
    }

    fn set_peer(&self, peer: PeerConfig) {
        let ifname = self.ifname.clone();
        self.call(move |d| d.set_peer(peer))
            .unwrap_or_else(|e| panic!("set_peer on {ifname}: {e}"));
    }
}

impl Drop for NsMesh {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn peer(key: Key, endpoint: SocketAddr, overlay: Ipv4Addr, reach: Reach) -> PeerConfig {
    PeerConfig {
        public_key: key,
        endpoint: Some(endpoint),
        allowed_ips: vec![mesh_wg::Ipv4Network::new(overlay, 32).expect("a /32")],
        persistent_keepalive: None,
        relay: None,
        reach,
    }
}

fn postgres_only() -> Reach {
    Reach {
        all: false,
        tcp: vec![5432..=5432],
        udp: Vec::new(),
    }
}

fn listen(ns: &NetNs, ip: Ipv4Addr, port: u16) -> TcpListener {
    in_netns(ns, || TcpListener::bind((ip, port)))
        .unwrap_or_else(|e| panic!("listen on {ip}:{port} in {}: {e}", ns.name))
}

fn connect(ns: &NetNs, ip: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    let to = SocketAddr::V4(SocketAddrV4::new(ip, port));
    in_netns(ns, || TcpStream::connect_timeout(&to, DROPPED_WITHIN))
}

/// A connection from `ns` to `listener` at `ip:port`: opened, and a message each way.
#[track_caller]
fn exchange(ns: &NetNs, listener: &TcpListener, ip: Ipv4Addr, port: u16, what: &str) {
    let mut client = connect(ns, ip, port).unwrap_or_else(|e| panic!("{what}: connect: {e}"));
    let (mut server, _) = listener
        .accept()
        .unwrap_or_else(|e| panic!("{what}: accept: {e}"));
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("read timeout");
    }
    let mut buf = [0u8; 4];
    client.write_all(b"ping").expect("client writes");
    server
        .read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: the listener reads: {e}"));
    assert_eq!(&buf, b"ping", "{what}");
    server.write_all(b"pong").expect("listener writes");
    client
        .read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: the connecting side reads: {e}"));
    assert_eq!(&buf, b"pong", "{what}");
}

fn tables(ns: &NetNs) -> String {
    ns.exec_ok(&["nft", "list", "tables"])
}

/// B may reach only TCP 5432 on A: its connect to 5432 goes through, one to 22 is dropped and counted as
/// no-grant for B, while a connection A opens to B's 22 works both ways and pings pass. Once B may reach
/// everything, A's table is gone and its 22 answers, and the count stays.
#[test]
fn a_peer_reaches_only_its_granted_ports_on_the_kernel_backend() {
    require_root(&["nft", "wireguard-go"]);
    let ns_a = NetNs::new("pa");
    let ns_b = NetNs::new("pb");
    veth_pair(&ns_a, &["192.0.2.1/24"], &ns_b, &["192.0.2.2/24"]);
    let a = NsMesh::start(&ns_a, device_config(&unique("A"), 1, A_OVERLAY));
    let b = NsMesh::start(&ns_b, device_config(&unique("B"), 2, B_OVERLAY));
    let (a_key, a_port) = a.call(|d| (d.public_key(), d.listen_port()));
    let (b_key, b_port) = b.call(|d| (d.public_key(), d.listen_port()));
    assert_eq!(a.call(|d| d.backend()), "wireguard-go");

    let b_endpoint = SocketAddr::from(([192, 0, 2, 2], b_port));
    a.set_peer(peer(b_key, b_endpoint, B_OVERLAY, postgres_only()));
    b.set_peer(peer(
        a_key,
        SocketAddr::from(([192, 0, 2, 1], a_port)),
        A_OVERLAY,
        Reach::everything(),
    ));
    let table = format!("table ip dstack_mesh_{}", a.ifname);
    assert!(tables(&ns_a).contains(&table), "{}", tables(&ns_a));
    assert!(
        !tables(&ns_b).contains("dstack_mesh_"),
        "B restricts no one, so it has no table: {}",
        tables(&ns_b)
    );

    assert_five_replies(&ns_b, A_OVERLAY, "B pings A: ICMP always passes");
    let a_postgres = listen(&ns_a, A_OVERLAY, 5432);
    let a_ssh = listen(&ns_a, A_OVERLAY, 22);
    let b_ssh = listen(&ns_b, B_OVERLAY, 22);
    exchange(&ns_b, &a_postgres, A_OVERLAY, 5432, "B to A:5432 (granted)");
    let refused = connect(&ns_b, A_OVERLAY, 22);
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "B to A:22 must be dropped (no answer), got {refused:?}"
    );
    exchange(&ns_a, &b_ssh, B_OVERLAY, 22, "A to B:22 (its replies pass)");

    let dropped = a.call(|d| d.policy_dropped());
    assert!(
        dropped.no_grant >= 1 && dropped.protocol == 0 && dropped.malformed == 0,
        "A's drops: {dropped:?}"
    );
    let status = a.call(move |d| d.peers().into_iter().find(|p| p.public_key == b_key));
    let status = status.expect("A has B as a peer");
    assert_eq!(status.reach.tcp, vec![5432..=5432]);
    assert_eq!(
        status.policy_dropped, dropped,
        "every drop is B's, the only peer"
    );

    a.set_peer(peer(b_key, b_endpoint, B_OVERLAY, Reach::everything()));
    assert!(
        !tables(&ns_a).contains("dstack_mesh_"),
        "no policy in force, so no table: {}",
        tables(&ns_a)
    );
    exchange(
        &ns_b,
        &a_ssh,
        A_OVERLAY,
        22,
        "B to A:22 once it may reach everything",
    );
    let after = a.call(|d| d.policy_dropped());
    assert_eq!(
        after, dropped,
        "the drops of the deleted table stay counted"
    );

    // Restricted again, then shut down: the device takes its table with it.
    a.set_peer(peer(b_key, b_endpoint, B_OVERLAY, postgres_only()));
    assert!(tables(&ns_a).contains(&table), "{}", tables(&ns_a));
    drop(a);
    assert!(
        !tables(&ns_a).contains("dstack_mesh_"),
        "shutdown must delete the table: {}",
        tables(&ns_a)
    );
}
