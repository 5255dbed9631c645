//! The real `p2p-agent` daemon in a node's namespace ([`Agent`]): its process, started by [`AgentBuilder`]
//! with the harness's flags, stopped, killed and restarted. What a test reads of it (its API, `meshctl
//! status`, `wg show`, its log) is in `reads`; what a test asks of several agents (a full mesh, pings over
//! the overlay, no warnings) in `fleet`.
//!
//! The agent, `meshctl` and the simulator are the workspace's own binaries in `target/debug` (or
//! `target/release` for the release benchmark), which `cargo test -p netns-tests` does not build: build them
//! first with `cargo build -p p2p-agent -p meshctl -p dstack-simulator`.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use mesh_wg::Key;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::net::netns::NetNs;
use crate::net::uplink::lan_ip;
use crate::run::process::{ChildGuard, clean_env, text, workspace_bin};
use crate::system::cluster::{Cluster, account_key, write_secret};
use crate::system::lan::{WG_PORT, rpc_url, ws_url};

mod fleet;
mod reads;

pub use fleet::*;
pub use reads::LogEvent;

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

/// How long an agent may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// `--poll-interval-ms`: 200 on the LAN, where anvil mines only on demand; `None` for the agent's own
    /// default.
    pub poll_ms: Option<u64>,
    /// `RUST_LOG` for this agent, instead of the test's own (or the agent's default).
    pub log_filter: Option<String>,
    /// `--log-format json`, for a reader of [`Agent::log_events`]; [`Agent::warnings`] and
    /// [`Agent::log_lines`] read text lines.
    pub json_log: bool,
}

impl AgentConfig {
    /// Node `i` on the LAN: [`WG_PORT`], and its LAN address as endpoint.
    pub fn lan(i: usize) -> Self {
        Self {
            mode: "wireguard",
            listen_port: WG_PORT,
            endpoint: Some(SocketAddrV4::new(lan_ip(i), WG_PORT)),
            rpc_url: rpc_url(),
            poll_ms: Some(200),
            log_filter: None,
            json_log: false,
        }
    }

    /// Node `i` on the LAN at the agent's defaults, following anvil over its WebSocket ([`ws_url`]).
    pub fn lan_ws(i: usize) -> Self {
        Self {
            rpc_url: ws_url(),
            poll_ms: None,
            ..Self::lan(i)
        }
    }

    /// A `--mode tls` node: no interface and no endpoint (give it a gateway URL with extra flags).
    pub fn tls() -> Self {
        Self {
            mode: "tls",
            listen_port: WG_PORT,
            endpoint: None,
            rpc_url: rpc_url(),
            poll_ms: Some(200),
            log_filter: None,
            json_log: false,
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
    /// Its seat: the node's number unless the cluster's layout says otherwise.
    pub token: u64,
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
    /// How node agents of `cluster` start: node i's [`AgentConfig::lan`] and the standard flags, unless the
    /// test says otherwise (see [`AgentBuilder`]).
    pub fn builder(cluster: &'a Cluster<'a>) -> AgentBuilder<'a> {
        AgentBuilder {
            cluster,
            config: Box::new(AgentConfig::lan),
            flags: Vec::new(),
            ready_within: 60,
        }
    }

    fn launch(cluster: &'a Cluster<'a>, i: usize, config: AgentConfig, extra: Vec<String>) -> Self {
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
            token: cluster.token_of(i),
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
        self.cluster.lan().node(self.index)
    }

    fn spawn(&mut self, extra: Vec<String>) {
        assert!(
            self.child.is_none(),
            "agent {} is already running",
            self.index
        );
        let bin = workspace_bin("p2p-agent");
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
            .arg("--node-key-file")
            .arg(&sim.key_file)
            .arg("--api-socket")
            .arg(&self.api_socket)
            .arg("--tx-key-file")
            .arg(&self.tx_key)
            .args(self.cluster.trust_args())
            .args(&extra);
        if !extra
            .iter()
            .any(|f| f == "--stun-server" || f == "--no-stun")
        {
            // The agent's default STUN servers are on the internet, which tests never reach: a test that wants
            // STUN gives its own servers.
            cmd.arg("--no-stun");
        }
        if let Some(endpoint) = self.config.endpoint {
            cmd.args(["--endpoint", &endpoint.to_string()]);
        }
        if let Some(ms) = self.config.poll_ms {
            cmd.args(["--poll-interval-ms", &ms.to_string()]);
        }
        if let Some(filter) = &self.config.log_filter {
            cmd.env("RUST_LOG", filter);
        }
        if self.config.json_log {
            cmd.args(["--log-format", "json"]);
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
        self.extra = extra;
        self.started = Instant::now();
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

    /// Starts `p2p-agent wait` against this agent's API, as a compose file's `mesh-ready` runs it, without
    /// waiting for it: the guard stops it when dropped.
    pub fn start_wait(&self, timeout_secs: u64) -> ChildGuard {
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
        ChildGuard::new(
            what.clone(),
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {what}: {e}")),
        )
    }

    /// `p2p-agent wait` against this agent's API; panics with the log tail unless it exits 0.
    pub fn wait_ready(&mut self, timeout_secs: u64) -> Duration {
        let t = Instant::now();
        let what = format!("p2p-agent wait (node {})", self.index);
        let waiter = self.start_wait(timeout_secs);
        let out = self.outlive(waiter, Duration::from_secs(timeout_secs + 15));
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

    /// Waits for `waiter` (a `p2p-agent wait` of this agent) to exit within `within`, and returns what it
    /// printed; panics with the log tail if the daemon dies meanwhile, or the waiter outlasts `within`.
    pub fn outlive(&mut self, mut waiter: ChildGuard, within: Duration) -> Output {
        // `wait` prints a line or two every 30 s at most, so its pipes cannot fill; if the daemon dies
        // meanwhile, say so at once rather than after the timeout (dropping the waiter stops it).
        let deadline = Instant::now() + within;
        loop {
            self.assert_running();
            if waiter.has_exited() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "p2p-agent wait (node {}) did not exit within {within:?}\n{}",
                self.index,
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        waiter.wait_output(Duration::from_secs(5))
    }

    /// The daemon's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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

    /// Kills the daemon outright (SIGKILL, by PID), as a crash would, and reaps it: nothing of it runs its
    /// shutdown, so its UAPI socket stays behind until [`Agent::start_again`] (or the drop) replaces it.
    pub fn kill(&mut self) {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("agent {} is not running", self.index));
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
    }

    /// Starts the daemon again, as it was last started, after [`Agent::kill`].
    pub fn start_again(&mut self) {
        let extra = self.extra.clone();
        self.spawn(extra);
    }

    /// Stops the daemon (see [`Agent::stop`]) and starts it again with its [`Agent::config`] (which may have
    /// changed) and the standard flags plus `extra`.
    pub fn restart(&mut self, extra: &[&str]) {
        self.stop();
        self.spawn(extra.iter().map(|f| (*f).to_owned()).collect());
    }

    /// The flags the daemon was last started with beyond the standard ones.
    pub fn extra_flags(&self) -> &[String] {
        &self.extra
    }

    /// How long the current daemon process has been running.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
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

/// How a test starts the agents of a cluster ([`Agent::builder`]): each with its node's config and the
/// standard flags, plus what the test changes. One agent starts with [`AgentBuilder::start`]; several with
/// [`AgentBuilder::start_all`] (ready) or [`AgentBuilder::mesh`] (meshed).
pub struct AgentBuilder<'a> {
    cluster: &'a Cluster<'a>,
    /// Shared with the thread that starts a newcomer while others are watched
    /// ([`crate::system::convergence::watch_change`]).
    config: Box<dyn Fn(usize) -> AgentConfig + Send + Sync + 'a>,
    flags: Vec<String>,
    ready_within: u64,
}

impl<'a> AgentBuilder<'a> {
    /// Node i's agent runs with `config(i)` instead of [`AgentConfig::lan`]`(i)`.
    pub fn config(mut self, config: impl Fn(usize) -> AgentConfig + Send + Sync + 'a) -> Self {
        self.config = Box::new(config);
        self
    }

    /// Flags beyond the standard ones, after any given before.
    pub fn flags(mut self, flags: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        self.flags
            .extend(flags.into_iter().map(|f| f.as_ref().to_owned()));
        self
    }

    /// How long (in seconds) [`AgentBuilder::start_all`] and [`AgentBuilder::mesh`] wait for each agent to
    /// be ready: 60 unless set.
    pub fn ready_within(mut self, secs: u64) -> Self {
        self.ready_within = secs;
        self
    }

    /// Starts node `i`'s agent, without waiting for it to be ready.
    pub fn start(&self, i: usize) -> Agent<'a> {
        Agent::launch(self.cluster, i, (self.config)(i), self.flags.clone())
    }

    /// Starts the agents of `nodes`, then waits until each is ready (`p2p-agent wait`).
    pub fn start_all(&self, nodes: impl IntoIterator<Item = usize>) -> Vec<Agent<'a>> {
        // Every agent starts before the first is waited for, so that their start-ups overlap.
        let mut agents: Vec<Agent<'a>> = nodes.into_iter().map(|i| self.start(i)).collect();
        for a in &mut agents {
            a.wait_ready(self.ready_within);
        }
        agents
    }

    /// [`AgentBuilder::start_all`], then waits until they form a full mesh ([`wait_full_mesh`]); returns
    /// them with their WireGuard keys (`keys[j]` is `agents[j]`'s).
    pub fn mesh(&self, nodes: impl IntoIterator<Item = usize>) -> (Vec<Agent<'a>>, Vec<Key>) {
        let agents = self.start_all(nodes);
        let keys: Vec<Key> = agents.iter().map(Agent::key).collect();
        wait_full_mesh(&agents, &keys);
        (agents, keys)
    }
}
