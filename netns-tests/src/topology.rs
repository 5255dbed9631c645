//! Whole-system topologies: a LAN of node namespaces behind a bridge with anvil on it ([`Lan`]), a cluster
//! deployed on that chain with one dstack simulator per node ([`Cluster`]), and the real `p2p-agent` daemon
//! running in a node's namespace ([`Agent`]).
//!
//! Everything is addressed from inside the namespaces; nothing is created in the root namespace except
//! the unix sockets of the simulators and agents (in temp dirs), which every namespace can see.
//!
//! The agent, `meshctl` and the simulator are the workspace's own binaries in `target/debug` (or
//! `target/release` for the release benchmark), which
//! `cargo test -p netns-tests` does not build: build them first with
//! `cargo build -p p2p-agent -p meshctl -p dstack-simulator`.
//!
//! Teardown is by guards, in borrow order: an [`Agent`] borrows its [`Cluster`], which borrows its
//! [`Lan`], so agents stop before simulators, and simulators and anvil before the namespaces go.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use alloy::signers::local::PrivateKeySigner;
use mesh_api::{ConnectionKind, Peer, Status};
pub use mesh_wg::Key;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::netns::{ChildGuard, DumpPeer, NetNs, parse_dump, run_command_timeout, run_ok};

/// The switch's address on the LAN, where anvil listens.
pub const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// anvil's port on the switch.
pub const RPC_PORT: u16 = 8545;
/// The NAT router's address on the LAN, which the node behind it is masqueraded to.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
/// The router's side of the private network behind the NAT.
pub const PRIVATE_GW: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
/// The address of the node behind the NAT, on the private network.
pub const PRIVATE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
/// The port every agent's WireGuard listens on (each in its own namespace).
pub const WG_PORT: u16 = 51820;
/// The app id of every test cluster.
pub const APP_ID: &str = "00112233445566778899aabbccddeeff00112233";

/// anvil's well-known development keys (mnemonic `test … junk`): 0 owns the cluster, i holds seat i (see
/// [`account_key`] for i ≥ 5).
pub const ANVIL_KEYS: [&str; 5] = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
];

/// The log targets of the agent's own crates, as they appear after a level and any span prefix.
const OWN_TARGETS: [&str; 6] = [
    " p2p_agent::",
    " mesh_chain::",
    " mesh_wg::",
    " mesh_api::",
    " dstack_guest::",
    " unix_socket::",
];

/// When set to a directory, every [`Agent`]'s log is copied there when it is dropped.
pub const KEEP_LOGS: &str = "DSTACK_MESH_TEST_LOGS";
/// How long a `meshctl` or `p2p-agent` one-shot command may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an agent may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The RPC URL every namespace reaches anvil at.
pub fn rpc_url() -> String {
    format!("http://{SWITCH_IP}:{RPC_PORT}")
}

/// Node `i`'s address on the LAN (1-based).
pub fn lan_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        198,
        51,
        100,
        u8::try_from(i).expect("node index fits a byte"),
    )
}

/// The overlay address of seat `token`.
pub fn overlay_ip(token: u64) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, u8::try_from(token).expect("token id fits a byte"))
}

/// Account `i`'s private key: anvil's development key `i` for the first five, beyond that a key derived
/// from `i` that [`Cluster::deploy`] funds (anvil's other development keys are not in the harness).
pub fn account_key(i: usize) -> String {
    match ANVIL_KEYS.get(i) {
        Some(key) => (*key).to_owned(),
        None => format!(
            "{}",
            alloy::primitives::keccak256(format!("dstack-mesh test account {i}"))
        ),
    }
}

/// The address of account `i` (see [`account_key`]).
pub fn account_address(i: usize) -> String {
    PrivateKeySigner::from_str(&account_key(i))
        .expect("account key parses")
        .address()
        .to_string()
}

/// A workspace binary from the build profile of the running executable: `target/debug` for `cargo test`,
/// `target/release` for the release benchmark (whatever `CARGO_TARGET_DIR` is). This crate's tests do not
/// build those binaries themselves.
///
/// # Panics
/// When it is missing, with the command that builds it.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let mut dir = exe
        .parent()
        .expect("the executable is in a directory")
        .to_owned();
    // Test binaries live in <profile>/deps, binaries in <profile>.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let path = dir.join(name);
    let release = if dir.file_name().is_some_and(|n| n == "release") {
        " --release"
    } else {
        ""
    };
    assert!(
        path.is_file(),
        "{} is missing: run cargo build{release} -p p2p-agent -p meshctl -p dstack-simulator",
        path.display()
    );
    path
}

/// An environment with nothing from ours but `PATH` and logging settings, so a stray `PRIVATE_KEY`,
/// `DSTACK_MESH_RPC_URL` or `RPC_URL` in the caller's shell cannot change what a command does.
fn clean_env(cmd: &mut Command) -> &mut Command {
    cmd.env_clear();
    for var in ["PATH", "RUST_LOG", "RUST_BACKTRACE"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "exit {}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// Parses a command's stdout as JSON, panicking with its whole output otherwise.
fn json_of(what: &str, out: &Output) -> Value {
    assert!(out.status.success(), "{what} failed: {}", text(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what} printed no JSON ({e}): {}", text(out)))
}

/// Waits up to `timeout` for `cond`, polling every `every`; panics with `what` and `context()` (e.g. a
/// log tail) if it never holds.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(every);
    }
}

/// The last `max` bytes of a file (whole lines), for failure messages.
pub fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("<no log at {}>", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let s = String::from_utf8_lossy(&buf).into_owned();
    match (start > 0, s.find('\n')) {
        (true, Some(i)) => format!("…\n{}", &s[i + 1..]),
        _ => s,
    }
}

/// Pings `ip` from `ns` `count` times, `interval` apart (each reply awaited up to 1 s); returns
/// (sent, received). A ping that prints no summary (say, no route) counts as (0, 0).
pub fn ping(ns: &NetNs, ip: Ipv4Addr, count: u32, interval: Duration) -> (u32, u32) {
    let out = ping_output(ns, ip, count, interval);
    let counts = ping_counts(&out);
    if counts.1 < count {
        eprintln!(
            "ping {ip} from {}: {counts:?} of {count}: {}",
            ns.name,
            text(&out)
        );
    }
    counts
}

fn ping_output(ns: &NetNs, ip: Ipv4Addr, count: u32, interval: Duration) -> Output {
    let timeout = interval * count + Duration::from_secs(10);
    ns.exec(
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            &format!("{:.3}", interval.as_secs_f64()),
            "-W",
            "1",
            &ip.to_string(),
        ],
        timeout,
    )
}

/// (sent, received) from ping's summary line; (0, 0) without one.
pub fn ping_counts(out: &Output) -> (u32, u32) {
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find(|l| l.contains("packets transmitted")) else {
        return (0, 0);
    };
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums[..] {
        [sent, received] => (sent, received),
        _ => (0, 0),
    }
}

/// A ping running in the background (`ping -i <interval> -c <count>`), stopped by its PID if dropped.
pub struct BackgroundPing {
    what: String,
    count: u32,
    interval: Duration,
    guard: ChildGuard,
}

impl BackgroundPing {
    pub fn start(ns: &NetNs, ip: Ipv4Addr, count: u32, interval: Duration) -> Self {
        let guard = ns.spawn(&[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            &format!("{:.3}", interval.as_secs_f64()),
            "-W",
            "1",
            &ip.to_string(),
        ]);
        Self {
            what: format!("ping {ip} from {}", ns.name),
            count,
            interval,
            guard,
        }
    }

    /// Whether the ping is still sending (it has not exited).
    pub fn running(&mut self) -> bool {
        !self.guard.has_exited()
    }

    /// Stops the ping early (SIGINT, on which ping prints its summary); returns (sent, received) and
    /// ping's output.
    pub fn interrupt(self) -> (u32, u32, String) {
        let _ = kill(
            Pid::from_raw(i32::try_from(self.guard.pid()).expect("pid fits i32")),
            Signal::SIGINT,
        );
        let out = self.guard.wait_output(Duration::from_secs(10));
        let counts = ping_counts(&out);
        (counts.0, counts.1, format!("{}: {}", self.what, text(&out)))
    }

    /// Waits for the ping to finish (bounded by its own length plus slack); returns (sent, received) and
    /// ping's output.
    pub fn finish(self) -> (u32, u32, String) {
        let out = self
            .guard
            .wait_output(self.interval * self.count + Duration::from_secs(15));
        let counts = ping_counts(&out);
        (counts.0, counts.1, format!("{}: {}", self.what, text(&out)))
    }
}

/// A switch namespace with a bridge and anvil on it at [`SWITCH_IP`], and node namespaces 1..=n, each
/// joined to the bridge by a veth with [`lan_ip`]`(i)/24`.
///
/// With [`Lan::with_nat`], one node sits behind a router namespace instead: the router is on the bridge at
/// [`ROUTER_IP`] and masquerades the node's private network ([`PRIVATE_IP`]/24) to it.
///
/// Dropping it stops anvil and deletes the namespaces, which takes their veths and bridge with them.
pub struct Lan {
    anvil: Option<ChildGuard>,
    anvil_log: PathBuf,
    /// Node namespaces; `nodes[i - 1]` is node i.
    pub nodes: Vec<NetNs>,
    pub switch: NetNs,
    /// The NAT router, with [`Lan::with_nat`].
    pub router: Option<NetNs>,
    _dir: tempfile::TempDir,
}

impl Lan {
    /// Builds the LAN and waits (bounded) until anvil answers and every node reaches the switch.
    pub fn new(n: usize) -> Self {
        Self::build(n, None)
    }

    /// Like [`Lan::new`], but node `behind` reaches the LAN only through a masquerading NAT router.
    pub fn with_nat(n: usize, behind: usize) -> Self {
        assert!(
            (1..=n).contains(&behind),
            "no node {behind} to put behind the NAT"
        );
        Self::build(n, Some(behind))
    }

    fn build(n: usize, nat: Option<usize>) -> Self {
        assert!((1..=250).contains(&n), "1..=250 nodes fit the LAN");
        let dir = tempfile::Builder::new()
            .prefix("dm-lan")
            .tempdir()
            .expect("temp dir");
        let switch = NetNs::new("sw");
        switch.ip(&["link", "add", "br0", "type", "bridge", "stp_state", "0"]);
        switch.ip(&["addr", "add", &format!("{SWITCH_IP}/24"), "dev", "br0"]);
        switch.ip(&["link", "set", "br0", "up"]);
        let mut lan = Self {
            anvil: None,
            anvil_log: dir.path().join("anvil.log"),
            nodes: Vec::new(),
            switch,
            router: None,
            _dir: dir,
        };
        for i in 1..=n {
            let node = NetNs::new(&format!("n{i}"));
            if nat == Some(i) {
                lan.router = Some(lan.nat_router(i, &node));
                lan.nodes.push(node);
                continue;
            }
            let port = format!("p{i}");
            // Created directly in the two namespaces: nothing appears in the root namespace.
            run_ok(&[
                "ip",
                "link",
                "add",
                "name",
                "eth0",
                "netns",
                &node.name,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &lan.switch.name,
            ]);
            lan.switch
                .ip(&["link", "set", &port, "master", "br0", "up"]);
            node.ip(&["addr", "add", &format!("{}/24", lan_ip(i)), "dev", "eth0"]);
            node.ip(&["link", "set", "eth0", "up"]);
            lan.nodes.push(node);
        }
        lan.start_anvil();
        for (i, node) in lan.nodes.iter().enumerate() {
            wait_until(
                &format!(
                    "node {} ({}) to reach the switch at {SWITCH_IP}",
                    i + 1,
                    node.name
                ),
                Duration::from_secs(10),
                Duration::from_millis(100),
                || ping_counts(&ping_output(node, SWITCH_IP, 1, Duration::from_millis(200))).1 == 1,
                || node.ip(&["addr"]),
            );
        }
        lan
    }

    /// The router namespace for node `i`: on the bridge at [`ROUTER_IP`], forwarding and masquerading
    /// the node's private network, which is the node's only way out.
    fn nat_router(&self, i: usize, node: &NetNs) -> NetNs {
        let router = NetNs::new("rt");
        let port = format!("p{i}");
        run_ok(&[
            "ip",
            "link",
            "add",
            "name",
            "eth0",
            "netns",
            &router.name,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.switch.name,
        ]);
        self.switch
            .ip(&["link", "set", &port, "master", "br0", "up"]);
        router.ip(&["addr", "add", &format!("{ROUTER_IP}/24"), "dev", "eth0"]);
        router.ip(&["link", "set", "eth0", "up"]);
        run_ok(&[
            "ip",
            "link",
            "add",
            "name",
            "eth0",
            "netns",
            &node.name,
            "type",
            "veth",
            "peer",
            "name",
            "lan0",
            "netns",
            &router.name,
        ]);
        router.ip(&["addr", "add", &format!("{PRIVATE_GW}/24"), "dev", "lan0"]);
        router.ip(&["link", "set", "lan0", "up"]);
        node.ip(&["addr", "add", &format!("{PRIVATE_IP}/24"), "dev", "eth0"]);
        node.ip(&["link", "set", "eth0", "up"]);
        node.ip(&["route", "add", "default", "via", &PRIVATE_GW.to_string()]);
        router.exec_ok(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        router.exec_ok(&["nft", "add", "table", "ip", "nat"]);
        router.exec_ok(&[
            "nft",
            "add",
            "chain",
            "ip",
            "nat",
            "postrouting",
            "{ type nat hook postrouting priority srcnat; policy accept; }",
        ]);
        router.exec_ok(&[
            "nft",
            "add",
            "rule",
            "ip",
            "nat",
            "postrouting",
            "oifname",
            "eth0",
            "masquerade",
        ]);
        router
    }

    fn start_anvil(&mut self) {
        let log = File::create(&self.anvil_log).expect("anvil log");
        let mut cmd = self.switch.command(&[
            crate::chain::anvil_path()
                .to_str()
                .expect("utf-8 anvil path"),
            "--host",
            &SWITCH_IP.to_string(),
            "--port",
            &RPC_PORT.to_string(),
            "--silent",
        ]);
        clean_env(&mut cmd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start anvil in {}: {e}", self.switch.name));
        self.anvil = Some(ChildGuard::new("anvil", child));
        let port = format!("{SWITCH_IP}:{RPC_PORT}");
        let anvil = self.anvil.as_mut().expect("just set");
        let (switch, log) = (&self.switch, &self.anvil_log);
        wait_until(
            &format!("anvil to listen on {port} in {}", switch.name),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                anvil.assert_running();
                switch.exec_ok(&["ss", "-ltnH"]).contains(&port)
            },
            || format!("anvil log:\n{}", tail(log, 4000)),
        );
    }

    /// Node `i` (1-based).
    pub fn node(&self, i: usize) -> &NetNs {
        &self.nodes[i - 1]
    }

    /// Calls anvil's JSON-RPC `method` with `params` (each a JSON value, as `cast rpc` takes them) and
    /// returns the result; panics with the output unless it succeeds. For anvil's controls, such as
    /// `evm_setAutomine`.
    pub fn anvil_rpc(&self, method: &str, params: &[&str]) -> Value {
        let cast = crate::chain::cast_path();
        let mut cmd = self.switch.command(&[
            cast.to_str().expect("utf-8 path"),
            "rpc",
            "--rpc-url",
            &rpc_url(),
            method,
        ]);
        clean_env(&mut cmd).args(params);
        let out = run_command_timeout(cmd, &format!("cast rpc {method}"), CMD_TIMEOUT);
        json_of(&format!("cast rpc {method} {}", params.join(" ")), &out)
    }

    /// How many transactions wait in anvil's pool (`txpool_status`).
    pub fn pending_transactions(&self) -> u64 {
        let status = self.anvil_rpc("txpool_status", &[]);
        let pending = &status["pending"];
        pending
            .as_u64()
            .or_else(|| {
                pending
                    .as_str()
                    .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok())
            })
            .unwrap_or_else(|| panic!("txpool_status has no pending count: {status}"))
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // anvil first (the guard's SIGTERM reaches the node wrapper, which forwards it); NetNs's drop kills
        // whatever is left in the switch by PID, then the namespaces go with their links.
        self.anvil.take();
    }
}

/// One simulated CVM of the cluster.
pub struct SimNode {
    pub socket: PathBuf,
    pub instance_id: String,
    pub log: PathBuf,
}

/// A cluster on the LAN's chain: a fresh KMS root key, one `dstack-simulator` per node (all of
/// [`APP_ID`]), the contract deployed by account 0 with `meshctl deploy`, and seat i minted to account i
/// and bound to node i's instance.
pub struct Cluster<'a> {
    pub lan: &'a Lan,
    pub contract: String,
    pub kms_root: String,
    /// `sims[i - 1]` is node i's.
    pub sims: Vec<SimNode>,
    guards: Vec<ChildGuard>,
    dir: tempfile::TempDir,
}

impl<'a> Cluster<'a> {
    /// Starts a simulator per node of `lan`, deploys and mints; every step is bounded.
    pub fn deploy(lan: &'a Lan) -> Self {
        Self::deploy_seats(lan, lan.nodes.len())
    }

    /// Like [`Cluster::deploy`], but mints only seats `1..=seats`: nodes above that have a simulator (an
    /// instance) and no seat until [`Cluster::mint`] gives them one.
    pub fn deploy_seats(lan: &'a Lan, seats: usize) -> Self {
        assert!(
            seats <= lan.nodes.len(),
            "{seats} seats for {} nodes",
            lan.nodes.len()
        );
        let simulator = workspace_bin("dstack-simulator");
        let dir = tempfile::Builder::new()
            .prefix("dm-cluster")
            .tempdir()
            .expect("temp dir");
        let root_key = dir.path().join("kms-root.key");
        let mut seed = [0u8; 32];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .expect("read /dev/urandom");
        write_secret(&root_key, &hex(&seed));

        let mut guards = Vec::new();
        let mut sims = Vec::new();
        for i in 1..=lan.nodes.len() {
            let socket = dir.path().join(format!("node-{i}.sock"));
            let log = dir.path().join(format!("node-{i}.sim.log"));
            let logf = File::create(&log).expect("simulator log");
            let mut cmd = Command::new(&simulator);
            clean_env(&mut cmd)
                .arg("--kms-root-key-file")
                .arg(&root_key)
                .args(["--app-id", APP_ID, "--instance-name", &format!("node-{i}")])
                .arg("--socket")
                .arg(&socket)
                .stdin(Stdio::null())
                .stdout(logf.try_clone().expect("dup log"))
                .stderr(logf);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", simulator.display()));
            guards.push(ChildGuard::new(format!("dstack-simulator node-{i}"), child));
            sims.push(SimNode {
                socket,
                instance_id: String::new(),
                log,
            });
        }
        let mut cluster = Self {
            lan,
            contract: String::new(),
            kms_root: String::new(),
            sims,
            guards,
            dir,
        };
        let mut kms_roots = Vec::new();
        for i in 1..=cluster.sims.len() {
            let sim = &cluster.sims[i - 1];
            let guard = &mut cluster.guards[i - 1];
            wait_until(
                &format!(
                    "dstack-simulator node-{i} to serve {}",
                    sim.socket.display()
                ),
                Duration::from_secs(20),
                Duration::from_millis(50),
                || {
                    guard.assert_running();
                    sim.socket.exists()
                },
                || tail(&sim.log, 2000),
            );
            let id = cluster.identity(i);
            let field = |k: &str| {
                id[k]
                    .as_str()
                    .unwrap_or_else(|| panic!("p2p-agent identity has no {k}: {id}"))
                    .to_owned()
            };
            kms_roots.push(field("kms_signer"));
            cluster.sims[i - 1].instance_id = field("instance_id");
        }
        kms_roots.dedup();
        assert_eq!(
            kms_roots.len(),
            1,
            "the simulators disagree on the KMS root: {kms_roots:?}"
        );
        cluster.kms_root = kms_roots.remove(0);

        let deployed = cluster.meshctl(
            0,
            &[
                "deploy",
                "--kms-root",
                &cluster.kms_root.clone(),
                "--app-id",
                &format!("0x{APP_ID}"),
                "--prefix",
                "10.0.1.0/24",
                "--max-nodes",
                &cluster.sims.len().max(10).to_string(),
            ],
        );
        cluster.contract = deployed["contract"]
            .as_str()
            .unwrap_or_else(|| panic!("meshctl deploy printed no contract: {deployed}"))
            .to_owned();
        for i in ANVIL_KEYS.len()..=cluster.sims.len() {
            cluster.meshctl(0, &["fund", &account_address(i), "--amount", "10"]);
        }
        for i in 1..=seats {
            cluster.mint(i);
        }
        cluster
    }

    /// Mints seat `i` to anvil account `i`, bound to node `i`'s instance (seats are minted in order, so
    /// it must become token `i`).
    pub fn mint(&self, i: usize) -> Value {
        assert!(i <= self.sims.len(), "no node for seat {i}");
        let instance = self.sims[i - 1].instance_id.clone();
        let minted = self.meshctl(
            0,
            &["mint", "--to", &account_address(i), "--instance", &instance],
        );
        assert_eq!(
            minted["tokenId"].as_u64(),
            Some(i as u64),
            "seat {i} must be token {i}: {minted}"
        );
        minted
    }

    /// `p2p-agent identity --json` for node `i`'s simulator.
    pub fn identity(&self, i: usize) -> Value {
        let mut cmd = Command::new(workspace_bin("p2p-agent"));
        clean_env(&mut cmd)
            .args(["identity", "--json", "--dstack-endpoint"])
            .arg(&self.sims[i - 1].socket);
        let out = run_command_timeout(cmd, "p2p-agent identity", CMD_TIMEOUT);
        json_of(&format!("p2p-agent identity (node {i})"), &out)
    }

    /// `meshctl --json <args>` in the switch namespace, signed by anvil account `signer`, against this
    /// cluster; panics with its output unless it succeeds and prints JSON.
    pub fn meshctl(&self, signer: usize, args: &[&str]) -> Value {
        let out = self.meshctl_output(signer, args);
        json_of(&format!("meshctl {}", args.join(" ")), &out)
    }

    /// `meshctl --json <args>` in the switch namespace, whatever its exit status.
    pub fn meshctl_output(&self, signer: usize, args: &[&str]) -> Output {
        let bin = workspace_bin("meshctl");
        let mut cmd = self
            .lan
            .switch
            .command(&[bin.to_str().expect("utf-8 path"), "--json"]);
        clean_env(&mut cmd)
            .args(args)
            .env("DSTACK_MESH_RPC_URL", rpc_url())
            .env("DSTACK_MESH_PRIVATE_KEY", account_key(signer));
        if !self.contract.is_empty() {
            cmd.env("DSTACK_MESH_CONTRACT", &self.contract);
        }
        run_command_timeout(cmd, &format!("meshctl {}", args.join(" ")), CMD_TIMEOUT)
    }

    /// The on-chain records (`meshctl peers --json`, every proof re-verified off-chain).
    pub fn peers(&self) -> Vec<Value> {
        let v = self.meshctl(0, &["peers"]);
        v["peers"]
            .as_array()
            .unwrap_or_else(|| panic!("meshctl peers printed no peers: {v}"))
            .clone()
    }

    /// The on-chain WireGuard key of seat `token`, if it has a record.
    pub fn onchain_key(&self, token: u64) -> Option<Key> {
        self.peers()
            .into_iter()
            .find(|p| p["tokenId"].as_u64() == Some(token))
            .and_then(|p| p["wgPublicKey"].as_str().and_then(|k| k.parse().ok()))
    }

    /// Where the cluster keeps its files (key, sockets, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        // Simulators stop (by PID) before their temp dir goes.
        self.guards.clear();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a secret to a new file readable by its owner only.
fn write_secret(path: &Path, contents: &str) {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    writeln!(f, "{contents}").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Where an [`Agent`]'s WireGuard listens and what it registers as its endpoint; change it between
/// [`Agent::stop`] and [`Agent::restart`] to move a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// `--mode`: `wireguard`, or `tls` (no interface; peers by gateway URL).
    pub mode: &'static str,
    pub listen_port: u16,
    /// `None`: the node registers no endpoint (say, behind a NAT it cannot see out of).
    pub endpoint: Option<SocketAddrV4>,
    /// The RPC the agent follows: anvil's [`rpc_url`], or a proxy in front of it.
    pub rpc_url: String,
}

impl AgentConfig {
    /// Node `i` on the LAN: [`WG_PORT`], and its LAN address as endpoint.
    pub fn lan(i: usize) -> Self {
        Self {
            mode: "wireguard",
            listen_port: WG_PORT,
            endpoint: Some(SocketAddrV4::new(lan_ip(i), WG_PORT)),
            rpc_url: rpc_url(),
        }
    }

    /// A `--mode tls` node: no interface and no endpoint (give it a gateway URL with extra flags).
    pub fn tls() -> Self {
        Self {
            mode: "tls",
            listen_port: WG_PORT,
            endpoint: None,
            rpc_url: rpc_url(),
        }
    }
}

/// The real `p2p-agent` daemon (`--mode wireguard` unless its [`AgentConfig`] says otherwise) for node `i`, in node i's namespace, with its own
/// interface, state dir, API socket, tx key (anvil account i) and log (stdout and stderr).
///
/// Dropping it stops the daemon (SIGTERM, then SIGKILL by PID) and removes a UAPI socket left behind.
pub struct Agent<'a> {
    pub cluster: &'a Cluster<'a>,
    /// The node (1-based).
    pub index: usize,
    pub ifname: String,
    pub api_socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    /// Used by the next start; [`Agent::restart`] picks up changes.
    pub config: AgentConfig,
    tx_key: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
    started: Instant,
    _dir: tempfile::TempDir,
}

impl<'a> Agent<'a> {
    /// Starts node `i`'s agent with the standard flags plus `extra`.
    pub fn start(cluster: &'a Cluster<'a>, i: usize, extra: &[&str]) -> Self {
        Self::start_with(cluster, i, AgentConfig::lan(i), extra)
    }

    /// Starts node `i`'s agent with `config` instead of its LAN defaults, plus `extra` flags.
    pub fn start_with(
        cluster: &'a Cluster<'a>,
        i: usize,
        config: AgentConfig,
        extra: &[&str],
    ) -> Self {
        assert!((1..=cluster.sims.len()).contains(&i), "no node {i}");
        let dir = tempfile::Builder::new()
            .prefix(&format!("dm-agent{i}-"))
            .tempdir()
            .expect("temp dir");
        let tx_key = dir.path().join("tx.key");
        write_secret(&tx_key, &account_key(i));
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir).expect("state dir");
        let mut agent = Self {
            cluster,
            index: i,
            ifname: crate::unique_name(&format!("dm{i}")),
            api_socket: dir.path().join("api.sock"),
            state_dir,
            log: dir.path().join("agent.log"),
            config,
            tx_key,
            extra: Vec::new(),
            child: None,
            started: Instant::now(),
            _dir: dir,
        };
        agent.spawn(extra);
        agent
    }

    pub fn ns(&self) -> &'a NetNs {
        self.cluster.lan.node(self.index)
    }

    fn spawn(&mut self, extra: &[&str]) {
        assert!(
            self.child.is_none(),
            "agent {} is already running",
            self.index
        );
        let bin = workspace_bin("p2p-agent");
        self.extra = extra.iter().map(|s| (*s).to_owned()).collect();
        let sim = &self.cluster.sims[self.index - 1];
        let mut cmd = self.ns().command(&[bin.to_str().expect("utf-8 path")]);
        clean_env(&mut cmd)
            .args([
                "--mode",
                self.config.mode,
                "--contract",
                &self.cluster.contract,
            ])
            .args(["--rpc-url", &self.config.rpc_url, "--dstack-endpoint"])
            .arg(&sim.socket)
            .args(["--interface", &self.ifname])
            .args(["--listen-port", &self.config.listen_port.to_string()])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--api-socket")
            .arg(&self.api_socket)
            .arg("--tx-key-file")
            .arg(&self.tx_key)
            .args(["--poll-interval-ms", "200"])
            .args(extra);
        if let Some(endpoint) = self.config.endpoint {
            cmd.args(["--endpoint", &endpoint.to_string()]);
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let _ = writeln!(
            log,
            "=== test: starting agent {} with {:?} and extra flags {extra:?}",
            self.index, self.config
        );
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        self.child = Some(cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start {} in {}: {e}", bin.display(), self.ns().name)
        }));
        self.started = Instant::now();
    }

    /// The last few KB of this agent's log, for failure messages.
    pub fn tail(&self) -> String {
        format!(
            "--- agent {} ({}, {}) log tail ---\n{}",
            self.index,
            self.ifname,
            self.ns().name,
            tail(&self.log, 6000)
        )
    }

    /// The agent's own WARN lines and every ERROR line of its log (every run of it so far). boringtun's
    /// warnings are left out: it warns of every handshake retransmission, which a mesh starting up has.
    pub fn warnings(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            // The agent's own targets, after any span prefix (` WARN register{…}: mesh_chain::…`).
            .filter(|l| {
                (l.contains(" WARN ") && OWN_TARGETS.iter().any(|t| l.contains(t)))
                    || l.contains(" ERROR ")
            })
            .map(str::to_owned)
            .collect()
    }

    /// Panics (with the log tail) if the daemon has exited.
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("agent was started");
        if let Ok(Some(status)) = child.try_wait() {
            self.child = None;
            panic!(
                "agent {} exited unexpectedly with {status}\n{}",
                self.index,
                self.tail()
            );
        }
    }

    /// `p2p-agent wait` against this agent's API; panics with the log tail unless it exits 0.
    pub fn wait_ready(&mut self, timeout_secs: u64) -> Duration {
        let t = Instant::now();
        let bin = workspace_bin("p2p-agent");
        let mut cmd = self
            .ns()
            .command(&[bin.to_str().expect("utf-8 path"), "wait"]);
        clean_env(&mut cmd)
            .arg("--api-socket")
            .arg(&self.api_socket)
            .args(["--timeout-secs", &timeout_secs.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("p2p-agent wait (node {})", self.index);
        let mut waiter = ChildGuard::new(
            what.clone(),
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {what}: {e}")),
        );
        // `wait` prints a line or two, so its pipes cannot fill; if the daemon dies meanwhile, say so at once
        // rather than after the timeout (dropping the waiter stops it).
        let deadline = Instant::now() + Duration::from_secs(timeout_secs + 15);
        loop {
            self.assert_running();
            if waiter.has_exited() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not exit within {timeout_secs} s + 15 s\n{}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = waiter.wait_output(Duration::from_secs(5));
        if !out.status.success() {
            let status = self
                .try_status()
                .map(|v| v.to_string())
                .unwrap_or_else(|e| e);
            panic!(
                "{what} did not succeed within {timeout_secs}s: {}\nstatus: {status}\n{}",
                text(&out),
                self.tail()
            );
        }
        self.assert_running();
        t.elapsed()
    }

    /// `meshctl status --json` as raw JSON, or why it failed.
    pub fn try_status(&self) -> Result<Value, String> {
        let bin = workspace_bin("meshctl");
        let mut cmd = self
            .ns()
            .command(&[bin.to_str().expect("utf-8 path"), "status", "--json"]);
        clean_env(&mut cmd)
            .arg("--api-socket")
            .arg(&self.api_socket);
        let out = run_command_timeout(cmd, "meshctl status", CMD_TIMEOUT);
        if !out.status.success() {
            return Err(format!(
                "meshctl status (node {}): {}",
                self.index,
                text(&out)
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("meshctl status printed no JSON ({e}): {}", text(&out)))
    }

    /// `meshctl status --json`, typed: this node's status and its peers.
    pub fn status(&self) -> (Status, Vec<Peer>) {
        let v = self
            .try_status()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.tail()));
        let status = serde_json::from_value(v["status"].clone())
            .unwrap_or_else(|e| panic!("meshctl status: unexpected status ({e}): {v}"));
        let peers = serde_json::from_value(v["peers"].clone())
            .unwrap_or_else(|e| panic!("meshctl status: unexpected peers ({e}): {v}"));
        (status, peers)
    }

    /// This node's peer `token` as its agent reports it.
    pub fn peer(&self, token: u64) -> Option<Peer> {
        self.status().1.into_iter().find(|p| p.token_id == token)
    }

    /// Whether this node reports seat `token` over WireGuard, healthy, with `key` (false too when
    /// `meshctl status` fails).
    pub fn sees_healthy(&self, token: u64, key: &Key) -> bool {
        self.try_status().is_ok()
            && self.peer(token).is_some_and(|p| {
                p.connection == ConnectionKind::Wireguard
                    && p.healthy
                    && p.wg_public_key.as_ref() == Some(key)
            })
    }

    /// This node's WireGuard public key as its agent reports it.
    pub fn key(&self) -> Key {
        self.status().0.node.wg_public_key.unwrap_or_else(|| {
            panic!(
                "node {} reports no WireGuard key\n{}",
                self.index,
                self.tail()
            )
        })
    }

    /// The peer keys configured on this node's interface, read with `wg show dump` through its UAPI.
    pub fn wg_peer_keys(&self) -> std::collections::BTreeSet<Key> {
        self.wg_dump().1.into_iter().map(|p| p.public_key).collect()
    }

    /// Whether this node reports every other agent of `agents` healthy over WireGuard with its key in
    /// `keys` (`keys[j - 1]` is node j's), with one `meshctl status`.
    pub fn sees_all_healthy(&self, agents: &[Agent<'_>], keys: &[Key]) -> bool {
        let Ok(v) = self.try_status() else {
            return false;
        };
        let Ok(peers) = serde_json::from_value::<Vec<Peer>>(v["peers"].clone()) else {
            return false;
        };
        agents.iter().filter(|b| b.index != self.index).all(|b| {
            peers.iter().any(|p| {
                p.token_id == b.index as u64
                    && p.connection == ConnectionKind::Wireguard
                    && p.healthy
                    && p.wg_public_key == Some(keys[b.index - 1])
            })
        })
    }

    /// The daemon's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `wg show <ifname> dump` in the node's namespace (through the agent's UAPI socket), raw.
    pub fn wg_dump_text(&self) -> String {
        self.ns().exec_ok(&["wg", "show", &self.ifname, "dump"])
    }

    /// `wg show <ifname> dump`, parsed: the interface fields, then one entry per peer.
    pub fn wg_dump(&self) -> (Vec<String>, Vec<DumpPeer>) {
        parse_dump(&self.wg_dump_text())
    }

    /// Stops the daemon with SIGTERM and requires a clean exit (status 0 within a bounded time, the
    /// interface and its UAPI socket gone); returns how long it took.
    pub fn stop(&mut self) -> Duration {
        let t = Instant::now();
        let status = self.terminate();
        let status = match status {
            Ok(s) => s,
            Err(()) => panic!(
                "agent {} did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed)\n{}",
                self.index,
                self.tail()
            ),
        };
        assert!(
            status.success(),
            "agent {} exited with {status} on SIGTERM\n{}",
            self.index,
            self.tail()
        );
        let links = self.ns().ip(&["link", "show"]);
        assert!(
            !links.contains(&self.ifname),
            "agent {} left its interface {} behind: {links}\n{}",
            self.index,
            self.ifname,
            self.tail()
        );
        let sock = self.uapi_socket();
        assert!(
            !sock.exists(),
            "agent {} left its UAPI socket {} behind\n{}",
            self.index,
            sock.display(),
            self.tail()
        );
        t.elapsed()
    }

    /// Stops the daemon (see [`Agent::stop`]) and starts it again with its [`Agent::config`] (which may have
    /// changed) and the standard flags plus `extra`.
    pub fn restart(&mut self, extra: &[&str]) {
        self.stop();
        self.spawn(extra);
    }

    /// The flags the daemon was last started with beyond the standard ones.
    pub fn extra_flags(&self) -> &[String] {
        &self.extra
    }

    /// How long the current daemon process has been running.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn uapi_socket(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/wireguard/{}.sock", self.ifname))
    }

    /// SIGTERM, then a bounded wait; SIGKILL by PID if it does not exit (then `Err`).
    fn terminate(&mut self) -> Result<ExitStatus, ()> {
        let Some(mut child) = self.child.take() else {
            panic!("agent {} is not running", self.index);
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(())
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate();
        }
        // To read the daemons' logs after a run: DSTACK_MESH_TEST_LOGS=<dir>.
        if let Some(dir) = std::env::var_os(KEEP_LOGS) {
            let to = Path::new(&dir).join(format!("agent{}-{}.log", self.index, self.ifname));
            if let Err(e) =
                std::fs::create_dir_all(&dir).and_then(|()| std::fs::copy(&self.log, &to))
            {
                eprintln!("warning: could not keep {}: {e}", self.log.display());
            }
        }
        // A crashed or killed daemon leaves its UAPI socket in the shared directory; the name is ours.
        let _ = std::fs::remove_file(self.uapi_socket());
    }
}

/// Starts the agents of `nodes` (standard flags) and waits (bounded, 60 s each) until each is ready.
pub fn start_agents<'a>(
    cluster: &'a Cluster<'a>,
    nodes: impl IntoIterator<Item = usize>,
) -> Vec<Agent<'a>> {
    let mut agents: Vec<Agent<'a>> = nodes
        .into_iter()
        .map(|i| Agent::start(cluster, i, &[]))
        .collect();
    for a in &mut agents {
        a.wait_ready(60);
    }
    agents
}

/// Every agent's log tail, for failure messages.
pub fn tails(agents: &[Agent<'_>]) -> String {
    agents
        .iter()
        .map(Agent::tail)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every agent's `meshctl status --json` (or why it failed), for failure messages.
pub fn statuses(agents: &[Agent<'_>]) -> String {
    agents
        .iter()
        .map(|a| {
            let s = a.try_status().map(|v| v.to_string()).unwrap_or_else(|e| e);
            format!("--- meshctl status, node {} ---\n{s}", a.index)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Progress lines of one scenario, each stamped with the time since it began (`--nocapture` shows them).
pub struct Steps {
    name: &'static str,
    t0: Instant,
}

impl Steps {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            t0: Instant::now(),
        }
    }

    pub fn step(&self, what: &str) {
        eprintln!(
            "[{} {:>6.2}s] {what}",
            self.name,
            self.t0.elapsed().as_secs_f64()
        );
    }
}

/// What every whole-system scenario needs: root, `/dev/net/tun`, the tools (`ip`, `ss`, `ping`, `wg`,
/// anvil), and the workspace binaries it runs. Fails at once with one message saying what is missing.
pub fn require_mesh_prerequisites() {
    crate::netns::require_root(&["ss"]);
    for bin in ["p2p-agent", "meshctl", "dstack-simulator"] {
        workspace_bin(bin);
    }
}

/// Node `from` pings seat `to`'s overlay address 3 times, 200 ms apart; returns the replies received.
pub fn replies(agents: &[Agent<'_>], from: usize, to: usize) -> u32 {
    ping(
        agents[0].cluster.lan.node(from),
        overlay_ip(to as u64),
        3,
        Duration::from_millis(200),
    )
    .1
}

/// Node `from` reaches seat `to` over the overlay (3 of 3 pings); panics with every status and log tail.
pub fn assert_pings(agents: &[Agent<'_>], from: usize, to: usize) {
    let got = replies(agents, from, to);
    assert_eq!(
        got,
        3,
        "node {from} -> node {to} ({}) over the overlay: {got} of 3 replies\n{}\n{}",
        overlay_ip(to as u64),
        statuses(agents),
        tails(agents)
    );
}

/// Node `from` cannot reach seat `to` over the overlay (0 of 3 pings).
pub fn assert_no_pings(agents: &[Agent<'_>], from: usize, to: usize) {
    let got = replies(agents, from, to);
    assert_eq!(
        got,
        0,
        "node {from} must not reach node {to} ({}) over the overlay, yet {got} of 3 replies came\n{}\n{}",
        overlay_ip(to as u64),
        statuses(agents),
        tails(agents)
    );
}

/// Waits (60 s) until every agent reports every other one healthy over WireGuard with the key in `keys`
/// (`keys[j - 1]` is node j's).
pub fn wait_full_mesh(agents: &[Agent<'_>], keys: &[Key]) {
    wait_until(
        &format!(
            "nodes {:?} to report each other healthy over WireGuard",
            agents.iter().map(|a| a.index).collect::<Vec<_>>()
        ),
        Duration::from_secs(60),
        Duration::from_millis(200),
        || agents.iter().all(|a| a.sees_all_healthy(agents, keys)),
        || format!("{}\n{}", statuses(agents), tails(agents)),
    );
}

/// Panics listing them if any agent logged a warning or an error (see [`Agent::warnings`]): a clean run
/// has nothing to warn about.
pub fn assert_no_warnings(agents: &[Agent<'_>]) {
    let warnings: Vec<String> = agents
        .iter()
        .flat_map(|a| {
            a.warnings()
                .into_iter()
                .map(move |w| format!("agent {}: {w}", a.index))
        })
        .collect();
    assert!(
        warnings.is_empty(),
        "the agents logged warnings or errors:\n{}",
        warnings.join("\n")
    );
}
