//! The real `p2p-agent` daemon in a node's namespace ([`Agent`]), started by [`AgentBuilder`] with the
//! harness's flags and read back through `meshctl status`, `wg show` and its log; and what a test asks of
//! several agents (a full mesh, pings over the overlay, no warnings).
//!
//! The agent, `meshctl` and the simulator are the workspace's own binaries in `target/debug` (or
//! `target/release` for the release benchmark), which `cargo test -p netns-tests` does not build: build them
//! first with `cargo build -p p2p-agent -p meshctl -p dstack-simulator`.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use mesh_api::{ConnectionKind, Peer, Status};
use mesh_wg::Key;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::Value;

use crate::cluster::{Cluster, account_key, write_secret};
use crate::lan::{WG_PORT, lan_ip, rpc_url, ws_url};
use crate::netns::NetNs;
use crate::ping::ping;
use crate::process::{
    CMD_TIMEOUT, ChildGuard, clean_env, run_command_timeout, tail, text, workspace_bin,
};
use crate::runtime::block_on;
use crate::wait::wait_until;
use crate::wg::{DumpPeer, parse_dump};

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

/// One line of an agent's JSON log ([`AgentConfig::json_log`]) that names what happened in its `event`
/// field.
#[derive(Debug, Clone)]
pub struct LogEvent {
    /// When the agent logged it.
    pub at: SystemTime,
    /// What happened: `peer.added`, `handshake.initiated`, … (the agent's crates name them where they log).
    pub event: String,
    /// The line's other fields (its message, the event's own fields, `target`, `spans`).
    pub fields: serde_json::Map<String, Value>,
}

impl LogEvent {
    /// Field `name` when it is a string: `peer` is a key as it prints (`abcdefgh…`).
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    /// A JSON log line, as `tracing_subscriber` writes it with the event's fields at the top level; `None`
    /// for the harness's own lines (text) and the lines that name no event.
    fn parse(line: &str) -> Option<Self> {
        #[derive(Deserialize)]
        struct Line {
            timestamp: String,
            event: Option<String>,
            #[serde(flatten)]
            fields: serde_json::Map<String, Value>,
        }
        let line: Line = serde_json::from_str(line).ok()?;
        Some(Self {
            at: rfc3339(&line.timestamp)?,
            event: line.event?,
            fields: line.fields,
        })
    }
}

/// An RFC 3339 timestamp (the agent logs in UTC, to the microsecond).
fn rfc3339(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
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

    /// The agent's `/metrics`, read on its API socket.
    pub fn metrics(&self) -> String {
        block_on(mesh_api::get_text(self.api_socket.as_path(), "/metrics")).unwrap_or_else(|e| {
            panic!(
                "reading node {}'s metrics: {e}\n{}",
                self.index,
                self.tail()
            )
        })
    }

    /// Where its API is served.
    pub fn api_socket(&self) -> &std::path::Path {
        &self.api_socket
    }

    /// `GET /v1/leader`: the leader as this agent sees it, or why it cannot be read.
    pub fn leader(&self) -> Result<mesh_api::Leader, String> {
        block_on(mesh_api::get(self.api_socket.as_path(), "/v1/leader"))
            .map_err(|e| format!("node {}: {e}", self.index))
    }

    /// `GET /v1/health`: the node's health as this agent judges it (the application's report and its own
    /// check).
    pub fn health(&self) -> mesh_api::HealthSignal {
        block_on(mesh_api::get(self.api_socket.as_path(), "/v1/health")).unwrap_or_else(|e| {
            panic!("reading node {}'s health: {e}\n{}", self.index, self.tail())
        })
    }

    /// `POST /v1/health`: reports the application's health to the agent, as the SDK's `set_healthy` does.
    pub fn set_healthy(&self, healthy: bool, reason: Option<&str>) -> mesh_api::HealthSignal {
        block_on(
            mesh_api::Client::new(self.api_socket.as_path()).set_healthy(healthy, reason, None),
        )
        .unwrap_or_else(|e| {
            panic!(
                "reporting node {}'s health: {e}\n{}",
                self.index,
                self.tail()
            )
        })
    }

    /// The lines of its log that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// When the agent first logged a text line containing `needle` (every run of it so far).
    pub fn first_logged(&self, needle: &str) -> Option<SystemTime> {
        self.first_logged_since(needle, SystemTime::UNIX_EPOCH)
    }

    /// When the agent first logged a text line containing `needle` at or after `since`.
    pub fn first_logged_since(&self, needle: &str, since: SystemTime) -> Option<SystemTime> {
        self.log_lines(needle)
            .iter()
            .filter_map(|l| rfc3339(l.split_whitespace().next()?))
            .find(|t| *t >= since)
    }

    /// The lines of its JSON log that name an event (every run of it so far, with
    /// [`AgentConfig::json_log`]; none otherwise).
    pub fn log_events(&self) -> Vec<LogEvent> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(LogEvent::parse)
            .collect()
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

    /// The seats this node refused for their attestation (`GET /v1/peers/refused`).
    pub fn refused(&self) -> Vec<mesh_api::RefusedPeer> {
        block_on(mesh_api::get(
            self.api_socket.as_path(),
            "/v1/peers/refused",
        ))
        .unwrap_or_else(|e| {
            panic!(
                "reading node {}'s refused seats: {e}\n{}",
                self.index,
                self.tail()
            )
        })
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
                p.token_id == b.token
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

    /// `GET /v1/peers`: the peers as this agent shows them to applications, or why it cannot be read.
    pub fn peers(&self) -> Result<Vec<Peer>, String> {
        block_on(mesh_api::get(self.api_socket.as_path(), "/v1/peers"))
            .map_err(|e| format!("node {}: {e}", self.index))
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

/// How a test starts the agents of a cluster ([`Agent::builder`]): each with its node's config and the
/// standard flags, plus what the test changes. One agent starts with [`AgentBuilder::start`]; several with
/// [`AgentBuilder::start_all`] (ready) or [`AgentBuilder::mesh`] (meshed).
pub struct AgentBuilder<'a> {
    cluster: &'a Cluster<'a>,
    /// Shared with the thread that starts a newcomer while others are watched
    /// ([`crate::convergence::watch_change`]).
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

/// What `a` says of its path to seat `to`: the path and, while relayed, why.
pub fn path_to(a: &Agent<'_>, to: usize) -> Option<(mesh_api::Path, Option<String>)> {
    let p = a.peer(to as u64)?;
    Some((p.path?, p.path_reason))
}

/// Whether every agent sees every other one healthy on `path`.
pub fn all_healthy_on(agents: &[Agent<'_>], path: mesh_api::Path) -> bool {
    agents.iter().all(|a| {
        let Ok(status) = a.try_status() else {
            return false; // Not serving yet.
        };
        let peers: Vec<Peer> = serde_json::from_value(status["peers"].clone()).unwrap_or_default();
        agents.iter().filter(|b| b.index != a.index).all(|b| {
            peers
                .iter()
                .any(|p| p.token_id == b.token && p.healthy && p.path == Some(path))
        })
    })
}

/// Every ordered pair's path and health, and why a relayed one is, for failure messages.
pub fn path_table(agents: &[Agent<'_>]) -> String {
    let mut out = String::new();
    for a in agents {
        for b in agents.iter().filter(|b| b.index != a.index) {
            let seen = match a.peer(b.token) {
                Some(p) => format!(
                    "{:?}, {}{}",
                    p.path,
                    if p.healthy { "healthy" } else { "not healthy" },
                    p.path_reason.map(|r| format!(" ({r})")).unwrap_or_default()
                ),
                None => "absent".to_owned(),
            };
            out.push_str(&format!("{} -> {}: {seen}\n", a.index, b.index));
        }
    }
    out
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

/// Node `from` pings seat `to`'s overlay address 3 times, 200 ms apart; returns the replies received.
pub fn replies(agents: &[Agent<'_>], from: usize, to: usize) -> u32 {
    ping(
        agents[0].cluster.lan().node(from),
        agents[0].cluster.overlay_of(to),
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
        agents[0].cluster.overlay_of(to),
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
        agents[0].cluster.overlay_of(to),
        statuses(agents),
        tails(agents)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A JSON line with an event is read with its time (to the microsecond) and its fields; the harness's
    /// own text lines and lines that name no event are skipped.
    #[test]
    fn log_events_are_read_from_json_lines() {
        let line = r#"{"timestamp":"2026-11-23T06:54:56.179762Z","level":"DEBUG","message":"peer added","event":"peer.added","peer":"abcdefgh…","target":"mesh_wg::device::shared"}"#;
        let e = LogEvent::parse(line).expect("an event");
        assert_eq!(e.event, "peer.added");
        assert_eq!(e.str_field("peer"), Some("abcdefgh…"));
        let unix =
            e.at.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs_f64();
        assert!((unix - 1_795_416_896.179_762).abs() < 1e-5, "{unix}");
        let no_event =
            r#"{"timestamp":"2026-11-23T06:54:56.179762Z","message":"peer records changed"}"#;
        assert!(LogEvent::parse(no_event).is_none());
        assert!(LogEvent::parse("=== test: starting agent 1 with …").is_none());
    }
}
