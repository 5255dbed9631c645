//! Processes for tests: bounded command runs, children killed by their PID when their guard drops, the
//! workspace's own binaries and Foundry's (anvil, cast), and what the tests read back from them (log tails,
//! JSON output).

use std::fs::File;
use std::io::{Read, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mesh_wg::NEEDS_NET_ADMIN;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// How long a one-shot command (`meshctl`, `p2p-agent identity`, `cast rpc`) may take.
pub(crate) const CMD_TIMEOUT: Duration = Duration::from_secs(60);

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
pub(crate) fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
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

    /// Stops the process now as dropping the guard would (SIGTERM, up to 3 s, then SIGKILL, by its PID) and
    /// reaps it, for owners with cleanup of their own to do once it is gone. Does nothing the second time.
    pub fn stop(&mut self) {
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

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
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

/// anvil from `ANVIL`, else `node_modules/.bin/anvil` at the workspace root.
///
/// # Panics
/// When neither exists, with the command that installs it.
pub fn anvil_path() -> PathBuf {
    npm_tool("ANVIL", "anvil")
}

/// cast from `CAST`, else `node_modules/.bin/cast` at the workspace root.
///
/// # Panics
/// When neither exists, with the command that installs it.
pub fn cast_path() -> PathBuf {
    npm_tool("CAST", "cast")
}

/// A Foundry tool from the environment variable `var`, else from the npm toolchain of `scripts/bootstrap`.
fn npm_tool(var: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return p.into();
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../node_modules/.bin")
        .join(name);
    assert!(
        p.exists(),
        "{name} not found at {}: run scripts/bootstrap (or set {var})",
        p.display()
    );
    p
}

/// An environment with nothing from ours but `PATH` and logging settings, so a stray `PRIVATE_KEY`,
/// `DSTACK_MESH_RPC_URL` or `RPC_URL` in the caller's shell cannot change what a command does.
pub(crate) fn clean_env(cmd: &mut Command) -> &mut Command {
    cmd.env_clear();
    for var in ["PATH", "RUST_LOG", "RUST_BACKTRACE"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd
}

pub(crate) fn text(out: &Output) -> String {
    format!(
        "exit {}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// Parses a command's stdout as JSON, panicking with its whole output otherwise.
pub(crate) fn json_of(what: &str, out: &Output) -> Value {
    assert!(out.status.success(), "{what} failed: {}", text(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what} printed no JSON ({e}): {}", text(out)))
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
