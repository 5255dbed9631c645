//! WireGuard in a namespace for tests: our userspace device driven from a thread inside the namespace
//! ([`NsDevice`]), the reference implementations (`wireguard-go`, `gotatun`, `boringtun-cli`: [`WireguardGo`]),
//! test keys, and `wg show dump` parsed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mesh_wg::{Device, DeviceConfig, Error, Key, PeerConfig, PeerStatus, PrivateKey};

use crate::net::netns::{NetNs, enter, unique};
use crate::run::process::{ChildGuard, run_ok};
use crate::run::wait::wait_until;

/// How long any single device command may take before the test fails.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);

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
    PeerRelay(Reply<Option<mesh_wg::PeerRelayStatus>>),
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
        let ns_name = ns.name.clone();
        let ifname = config.ifname.clone();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(Key, u16), Error>>();
        let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::unbounded_channel::<Cmd>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("dev-{ifname}"))
            .spawn(move || {
                let _done = DoneOnDrop(done_tx);
                enter(&ns_name);
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
                            Cmd::PeerRelay(r) => {
                                let _ = r.send(device.peer_relay());
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

    /// The device as a peer relay ([`mesh_wg::Device::peer_relay`]).
    pub fn peer_relay(&self) -> Option<mesh_wg::PeerRelayStatus> {
        self.call("peer_relay", Cmd::PeerRelay)
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
        relay: None,
        reach: mesh_wg::Reach::everything(),
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

/// A userspace WireGuard implementation other than ours, run as a reference: each creates a TUN interface
/// and answers the UAPI at `/var/run/wireguard/<ifname>.sock`, so `wg set` configures all of them alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// Debian's `wireguard-go`.
    WireguardGo,
    /// Mullvad's `gotatun` (crates.io `gotatun-cli`), at this path.
    Gotatun(std::path::PathBuf),
    /// Cloudflare's `boringtun-cli`, at this path.
    BoringtunCli(std::path::PathBuf),
}

impl Reference {
    pub fn name(&self) -> &'static str {
        match self {
            Self::WireguardGo => "wireguard-go",
            Self::Gotatun(_) => "gotatun",
            Self::BoringtunCli(_) => "boringtun-cli",
        }
    }

    /// The first line of what `<program> --version` prints (`wireguard-go v0.0.20220316`, `gotatun-cli
    /// 0.10.2`, `boringtun 0.7.1`), so a report says which build was measured.
    ///
    /// # Panics
    /// When the program cannot be run or fails.
    pub fn version(&self) -> String {
        let program = self.program();
        let out = run_ok(&[&program, "--version"]);
        let line = out.lines().next().unwrap_or_default().trim();
        assert!(
            !line.is_empty(),
            "{program} --version printed nothing: {out:?}"
        );
        line.to_owned()
    }

    /// The command that runs it in the foreground on `ifname`, keeping root (none of them may drop
    /// privileges inside a test: they would look for a login user).
    fn argv(&self, ifname: &str) -> Vec<String> {
        match self {
            Self::WireguardGo => vec![self.program(), "-f".into(), ifname.into()],
            Self::Gotatun(_) | Self::BoringtunCli(_) => vec![
                self.program(),
                "-f".into(),
                "--disable-drop-privileges".into(),
                ifname.into(),
            ],
        }
    }

    /// The executable: `wireguard-go` from `PATH`, the others at their paths.
    fn program(&self) -> String {
        match self {
            Self::WireguardGo => "wireguard-go".into(),
            Self::Gotatun(p) | Self::BoringtunCli(p) => p.to_str().expect("utf-8 path").to_owned(),
        }
    }
}

/// A reference WireGuard interface in a namespace ([`Reference`]), configured with `wg set` (MTU 1420,
/// one peer), its address assigned and up: what ours is compared with and tested against.
///
/// Dropping it stops the process by its PID, which removes the interface, and then its UAPI socket if the
/// process left it behind (gotatun 0.10.2 does on SIGTERM).
pub struct WireguardGo {
    pub ifname: String,
    pub public_key: Key,
    process: ChildGuard,
    _key_file: tempfile::NamedTempFile,
}

impl WireguardGo {
    /// Starts `reference` in `ns` with `key` on port 51820, address `overlay` (CIDR), and one peer with
    /// `peer_key` at `peer_endpoint` owning `allowed_ips`.
    pub fn start(
        reference: &Reference,
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
        let argv = reference.argv(&ifname);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut process = ns.spawn(&argv);
        let sock = format!("/var/run/wireguard/{ifname}.sock");
        wait_until(
            &format!("{} to create {sock}", reference.name()),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                process.assert_running();
                Path::new(&sock).exists()
            },
            String::new,
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

    /// Panics if the process has exited.
    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }

    /// The process's PID (`ip netns exec` execs in place), to read its CPU time and context switches.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its UAPI socket, where `wg` finds it.
    pub fn uapi_socket(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/wireguard/{}.sock", self.ifname))
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        self.process.stop();
        // The directory is shared by every namespace and the name is ours: a socket left there would
        // outlive the run (`wg show` lists it as an interface that no longer answers).
        let sock = self.uapi_socket();
        if sock.exists()
            && let Err(e) = std::fs::remove_file(&sock)
        {
            eprintln!("warning: could not remove {}: {e}", sock.display());
        }
    }
}
