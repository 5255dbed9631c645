//! Network namespaces for tests: RAII guards for namespaces, veth pairs, child processes and WireGuard
//! devices running inside a namespace, and bounded command runs.
//!
//! Every guard cleans up on success, failure and panic; processes are killed by their PID only.

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mesh_wg::{
    Device, DeviceConfig, Error, Key, NEEDS_NET_ADMIN, PeerConfig, PeerStatus, PrivateKey,
};
use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long any single device command may take before the test fails.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);

/// Fails the test (never skips) unless we can create namespaces and TUN devices and the
/// needed tools exist.
pub fn require_root(tools: &[&str]) {
    let euid = nix::unistd::geteuid();
    let tun = Path::new("/dev/net/tun").exists();
    assert!(
        euid.is_root() && tun,
        "netns tests need root and /dev/net/tun ({NEEDS_NET_ADMIN}); euid={euid}, \
         /dev/net/tun present={tun}; run: sudo -E cargo test"
    );
    for tool in ["ip", "ping", "wg"].iter().chain(tools) {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "netns tests need `{tool}` on PATH: apt-get install -y wireguard-tools wireguard-go \
             iproute2 iputils-ping iperf3 nftables (or run scripts/bootstrap)"
        );
    }
}

/// A name unique to this process and call, at most 15 bytes (the UAPI socket directory is shared by all
/// namespaces): `wgt<pid><tag><n>`.
pub fn unique(tag: &str) -> String {
    crate::unique_name(&format!("wgt{tag}"))
}

/// Runs a command to completion within `timeout`; panics naming the command if it cannot be
/// started or does not finish in time (the child is killed by its PID).
pub fn run_timeout(args: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    run_command_timeout(cmd, &format!("{args:?}"), timeout)
}

/// Runs a prepared command (its environment and arguments as the caller set them) to completion within
/// `timeout`, capturing stdout and stderr; panics naming `what` if it cannot be started or does not
/// finish in time (the child is killed by its PID).
///
/// Both pipes are drained while the command runs, so a chatty command cannot block on a full pipe.
pub fn run_command_timeout(mut cmd: Command, what: &str, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {timeout:?}");
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    // The pipes close when the child exits (unless it left a grandchild holding them: then give up
    // on the output rather than wait for it).
    let collect = |h: JoinHandle<Vec<u8>>| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if h.is_finished() {
            h.join().unwrap_or_default()
        } else {
            b"<output not collected: a descendant still holds the pipe>".to_vec()
        }
    };
    Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    }
}

/// Runs a command and requires success; returns stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = run_timeout(args, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{args:?} failed with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads a pipe to its end on a thread of its own.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        run_ok(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`, required to succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run_ok(&full)
    }

    /// `ip netns exec <ns> <args>` within `timeout` (status not checked).
    pub fn exec(&self, args: &[&str], timeout: Duration) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run_timeout(&full, timeout)
    }

    /// `ip netns exec <ns> <args>`, required to succeed; returns stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run_ok(&full)
    }

    /// `ip netns exec <ns> <args>` as a [`Command`] to adjust (environment, stdio) before running it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// The PIDs of the processes running in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        let out = run_timeout(
            &["ip", "netns", "pids", &self.name],
            Duration::from_secs(10),
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Starts a long-running process inside the namespace (`ip netns exec` execs in place, so
    /// the PID is the process itself).
    pub fn spawn(&self, args: &[&str]) -> ChildGuard {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        let child = Command::new("ip")
            .args(&full)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in {}: {e}", self.name));
        ChildGuard {
            what: args.join(" "),
            child: Some(child),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Whatever still runs here was started by this test (a guard's grandchild, or a process whose
        // guard could not stop it): kill it by PID, or the namespace outlives its name.
        let leftovers = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in leftovers
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            eprintln!("warning: killing leftover pid {pid} in netns {}", self.name);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("warning: could not delete netns {}: {out:?}", self.name);
        }
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL) by its PID on drop.
pub struct ChildGuard {
    what: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// Guards a child started elsewhere; `what` names it in messages.
    pub fn new(what: impl Into<String>, child: Child) -> Self {
        Self {
            what: what.into(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child present").id()
    }

    /// Whether the process has exited (its output can still be collected with [`ChildGuard::wait_output`]).
    pub fn has_exited(&mut self) -> bool {
        let child = self.child.as_mut().expect("child present");
        !matches!(child.try_wait(), Ok(None))
    }

    /// Fails unless the process is still running.
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("child present");
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(e) = child.stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("{} exited early with {status}: {err}", self.what);
        }
    }

    /// Waits for the process to exit within `timeout`; returns its output.
    pub fn wait_output(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("child present");
        let deadline = Instant::now() + timeout;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not finish within {timeout:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("collect child output")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Joins `a` and `b` with a veth pair `veth0` and gives each end `addrs` (CIDR strings).
pub fn veth_pair(a: &NetNs, a_addrs: &[&str], b: &NetNs, b_addrs: &[&str]) {
    run_ok(&[
        "ip", "link", "add", "name", "veth0", "netns", &a.name, "type", "veth", "peer", "name",
        "veth0", "netns", &b.name,
    ]);
    for (ns, addrs) in [(a, a_addrs), (b, b_addrs)] {
        for addr in addrs {
            ns.ip(&["addr", "add", addr, "dev", "veth0"]);
        }
        ns.ip(&["link", "set", "veth0", "up"]);
    }
}

/// A private key as `wg` reads it from files (`wg set … private-key`, `PrivateKey =`): base64. For the
/// tests' throwaway keys only.
pub fn private_key_base64(key: &PrivateKey) -> String {
    BASE64.encode(key.expose_bytes())
}

/// A deterministic test key.
pub fn test_key(seed: u8) -> PrivateKey {
    let mut bytes = [seed; 32];
    bytes[0] = 0x40 ^ seed;
    PrivateKey::from_bytes(bytes)
}

type Reply<T> = mpsc::Sender<T>;

enum Cmd {
    SetPeer(PeerConfig, Reply<Result<(), String>>),
    RemovePeer(Key, Reply<bool>),
    Peers(Reply<Vec<PeerStatus>>),
    Shutdown(Reply<Result<(), String>>),
}

/// Which tokio runtime the device thread runs.
#[derive(Clone, Copy, Debug)]
pub enum Flavor {
    CurrentThread,
    MultiThread,
}

/// A [`Device`] running on a dedicated thread that `setns()`ed into a namespace (its sockets,
/// TUN and netlink socket are created there).
pub struct NsDevice {
    pub ifname: String,
    pub public_key: Key,
    pub listen_port: u16,
    cmds: tokio::sync::mpsc::UnboundedSender<Cmd>,
    thread: Option<JoinHandle<()>>,
    done: mpsc::Receiver<()>,
    stopped: bool,
}

impl NsDevice {
    /// Creates the device in `ns`; the error is returned as-is for tests that expect one.
    pub fn try_start(ns: &NetNs, config: DeviceConfig, flavor: Flavor) -> Result<Self, Error> {
        let ns_path = PathBuf::from("/var/run/netns").join(&ns.name);
        let ifname = config.ifname.clone();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(Key, u16), Error>>();
        let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::unbounded_channel::<Cmd>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("dev-{ifname}"))
            .spawn(move || {
                let _done = DoneOnDrop(done_tx);
                let ns_file = File::open(&ns_path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", ns_path.display()));
                nix::sched::setns(&ns_file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {}: {e}", ns_path.display()));
                // Built after setns, so every runtime thread starts in the namespace.
                let rt = match flavor {
                    Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
                    Flavor::MultiThread => {
                        let mut b = tokio::runtime::Builder::new_multi_thread();
                        b.worker_threads(2);
                        b
                    }
                }
                .enable_all()
                .build()
                .expect("tokio runtime");
                rt.block_on(async move {
                    let device = match Device::create(config).await {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok((device.public_key(), device.listen_port())));
                    let mut shutdown_reply = None;
                    while let Some(cmd) = cmd_rx.recv().await {
                        match cmd {
                            Cmd::SetPeer(p, r) => {
                                let _ = r.send(device.set_peer(p).map_err(|e| e.to_string()));
                            }
                            Cmd::RemovePeer(k, r) => {
                                let _ = r.send(device.remove_peer(&k));
                            }
                            Cmd::Peers(r) => {
                                let _ = r.send(device.peers());
                            }
                            Cmd::Shutdown(r) => {
                                shutdown_reply = Some(r);
                                break;
                            }
                        }
                    }
                    let result = device.shutdown().await.map_err(|e| e.to_string());
                    if let Some(r) = shutdown_reply {
                        let _ = r.send(result);
                    }
                });
            })
            .expect("spawn device thread");
        let (public_key, listen_port) = match ready_rx.recv_timeout(DEVICE_TIMEOUT) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(e) => panic!("device {ifname} did not come up within {DEVICE_TIMEOUT:?}: {e}"),
        };
        Ok(Self {
            ifname,
            public_key,
            listen_port,
            cmds: cmd_tx,
            thread: Some(thread),
            done: done_rx,
            stopped: false,
        })
    }

    pub fn start(ns: &NetNs, config: DeviceConfig) -> Self {
        let name = config.ifname.clone();
        Self::try_start(ns, config, Flavor::CurrentThread)
            .unwrap_or_else(|e| panic!("creating device {name} in {}: {e}", ns.name))
    }

    fn call<T>(&self, what: &str, make: impl FnOnce(Reply<T>) -> Cmd) -> T {
        let (tx, rx) = mpsc::channel();
        self.cmds
            .send(make(tx))
            .unwrap_or_else(|_| panic!("device thread {} is gone ({what})", self.ifname));
        rx.recv_timeout(DEVICE_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "device {} did not answer {what} within {DEVICE_TIMEOUT:?}: {e}",
                self.ifname
            )
        })
    }

    pub fn set_peer(&self, peer: PeerConfig) {
        self.call("set_peer", |r| Cmd::SetPeer(peer, r))
            .unwrap_or_else(|e| panic!("set_peer on {}: {e}", self.ifname));
    }

    pub fn remove_peer(&self, key: Key) -> bool {
        self.call("remove_peer", |r| Cmd::RemovePeer(key, r))
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        self.call("peers", Cmd::Peers)
    }

    pub fn peer(&self, key: Key) -> PeerStatus {
        self.peers()
            .into_iter()
            .find(|p| p.public_key == key)
            .unwrap_or_else(|| panic!("{} has no peer {key}", self.ifname))
    }

    /// Shuts the device down, requiring success.
    pub fn shutdown(mut self) {
        self.stopped = true;
        let result = self.call("shutdown", Cmd::Shutdown);
        self.join();
        result.unwrap_or_else(|e| panic!("shutdown of {}: {e}", self.ifname));
    }

    fn join(&mut self) {
        // Bounded: the thread signals `done` when it ends (even by panic).
        if self.done.recv_timeout(DEVICE_TIMEOUT).is_ok()
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
        }
    }
}

impl Drop for NsDevice {
    fn drop(&mut self) {
        if !self.stopped {
            let (tx, _rx) = mpsc::channel();
            let _ = self.cmds.send(Cmd::Shutdown(tx));
            self.join();
        }
    }
}

struct DoneOnDrop(mpsc::Sender<()>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// A device config for tests: unique name, fixed key, kernel-picked port.
pub fn device_config(ifname: &str, seed: u8, overlay: Ipv4Addr) -> DeviceConfig {
    DeviceConfig::new(ifname, test_key(seed), overlay, 24)
}

pub fn peer_config(key: Key, endpoint: SocketAddr, allowed: &str) -> PeerConfig {
    PeerConfig {
        public_key: key,
        endpoint: Some(endpoint),
        allowed_ips: vec![allowed.parse().expect("allowed ip")],
        persistent_keepalive: None,
    }
}

/// One peer line of `wg show <if> dump`.
#[derive(Debug)]
pub struct DumpPeer {
    pub public_key: Key,
    pub endpoint: String,
    pub allowed_ips: String,
    pub latest_handshake: u64,
    pub rx: u64,
    pub tx: u64,
    pub keepalive: String,
}

/// Parses `wg show <if> dump`: the interface line (private, public, port, fwmark), then peers.
pub fn parse_dump(text: &str) -> (Vec<String>, Vec<DumpPeer>) {
    let mut lines = text.lines();
    let iface = lines
        .next()
        .unwrap_or_else(|| panic!("empty wg dump"))
        .split('\t')
        .map(str::to_owned)
        .collect();
    let peers = lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 8, "unexpected wg dump peer line {l:?}");
            DumpPeer {
                public_key: f[0]
                    .parse()
                    .unwrap_or_else(|e| panic!("wg dump peer line {l:?}: {e}")),
                endpoint: f[2].to_owned(),
                allowed_ips: f[3].to_owned(),
                latest_handshake: f[4].parse().expect("handshake"),
                rx: f[5].parse().expect("rx"),
                tx: f[6].parse().expect("tx"),
                keepalive: f[7].to_owned(),
            }
        })
        .collect();
    (iface, peers)
}

/// Packets received according to ping's summary line.
pub fn ping_received(out: &Output) -> (u32, u32) {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {text:?}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().expect("number"))
        .collect();
    (nums[0], nums[1])
}

/// Waits up to `timeout` for `cond`; panics with `what` if it never holds.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` on a scoped thread that has entered `ns`'s network namespace, so sockets, TUN devices and
/// netlink requests it makes belong to that namespace; the caller's thread never changes namespace.
pub fn in_netns<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> T {
    let path = PathBuf::from("/var/run/netns").join(&ns.name);
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
            f()
        })
        .join()
        .expect("the thread inside the namespace panicked")
    })
}

/// A `wireguard-go` interface in a namespace, configured with `wg set` (MTU 1420, one peer), its address
/// assigned and up: the reference implementation that ours is compared with and tested against.
///
/// Dropping it stops `wireguard-go` by its PID, which removes the interface and its UAPI socket.
pub struct WireguardGo {
    pub ifname: String,
    pub public_key: Key,
    process: ChildGuard,
    _key_file: tempfile::NamedTempFile,
}

impl WireguardGo {
    /// Starts `wireguard-go` in `ns` with `key` on port 51820, address `overlay` (CIDR), and one peer with
    /// `peer_key` at `peer_endpoint` owning `allowed_ips`.
    pub fn start(
        ns: &NetNs,
        key: &PrivateKey,
        overlay: &str,
        peer_key: &Key,
        peer_endpoint: &str,
        allowed_ips: &str,
    ) -> Self {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt as _;
        let ifname = unique("G");
        let mut process = ns.spawn(&["wireguard-go", "-f", &ifname]);
        let sock = format!("/var/run/wireguard/{ifname}.sock");
        wait_for(
            &format!("wireguard-go to create {sock}"),
            Duration::from_secs(10),
            || {
                process.assert_running();
                Path::new(&sock).exists()
            },
        );
        // `wg set` reads private keys from files only; this one is the test's own throwaway.
        let mut key_file = tempfile::NamedTempFile::new().expect("temp key file");
        key_file
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .expect("chmod key file");
        writeln!(key_file, "{}", private_key_base64(key)).expect("write key file");
        let path = key_file
            .path()
            .to_str()
            .expect("utf-8 temp path")
            .to_owned();
        ns.exec_ok(&[
            "wg",
            "set",
            &ifname,
            "private-key",
            &path,
            "listen-port",
            "51820",
            "peer",
            &peer_key.to_string(),
            "endpoint",
            peer_endpoint,
            "allowed-ips",
            allowed_ips,
        ]);
        ns.ip(&["addr", "add", overlay, "dev", &ifname]);
        ns.ip(&["link", "set", &ifname, "mtu", "1420", "up"]);
        Self {
            ifname,
            public_key: key.public_key(),
            process,
            _key_file: key_file,
        }
    }

    /// Panics if `wireguard-go` has exited.
    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }
}

/// TCP throughput from `client` to `server_addr` (an address of `server`) with iperf3: `streams` parallel
/// streams for `secs` seconds; returns the receiver's rate in Gbit/s.
pub fn iperf3(client: &NetNs, server: &NetNs, server_addr: &str, streams: u32, secs: u32) -> f64 {
    let _server = server.spawn(&["iperf3", "-s", "-1", "-B", server_addr]);
    wait_for(
        &format!("iperf3 to listen on {server_addr}:5201 in {}", server.name),
        Duration::from_secs(10),
        || {
            server
                .exec_ok(&["ss", "-ltnH"])
                .contains(&format!("{server_addr}:5201"))
        },
    );
    let out = client.exec(
        &[
            "iperf3",
            "-c",
            server_addr,
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ],
        Duration::from_secs(u64::from(secs) + 30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "iperf3 -c {server_addr} from {} failed: {text}{}",
        client.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("iperf3 printed no JSON ({e}): {text}"));
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no end.sum_received.bits_per_second in iperf3's report: {text}"))
        / 1e9
}

/// The average round-trip time in milliseconds of `count` pings from `ns` to `ip`, `interval` apart
/// (from ping's `rtt min/avg/max/mdev` line); panics if any reply is lost.
pub fn ping_avg_ms(ns: &NetNs, ip: &str, count: u32, interval: Duration) -> f64 {
    let out = ns.exec(
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            &format!("{:.3}", interval.as_secs_f64()),
            ip,
        ],
        interval * count + Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        ping_received(&out),
        (count, count),
        "ping {ip} from {} lost replies: {text}",
        ns.name
    );
    text.lines()
        .find_map(|l| l.strip_prefix("rtt min/avg/max/mdev = "))
        .and_then(|rest| rest.split('/').nth(1))
        .and_then(|avg| avg.parse().ok())
        .unwrap_or_else(|| panic!("no rtt line in ping's output: {text}"))
}
