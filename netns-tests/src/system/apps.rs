//! Applications on the mesh: the SDKs' scripts (Python and Node.js), the browser tests and the examples (`examples/`: the counter,
//! hello-p2p, the Redis recipe), run in a node's namespace against its agent's API, and HTTP to them.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::net::netns::NetNs;
use crate::run::process::{ChildGuard, clean_env, require_root, run_command_timeout, tail, text};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("netns-tests sits in the repository")
        .to_owned()
}

/// The Python that has the SDK and the examples' packages: `DSTACK_MESH_PYTHON`, else the venv
/// `scripts/bootstrap` makes. Fails, naming what to run, when it lacks them.
pub fn python() -> PathBuf {
    let python = std::env::var_os("DSTACK_MESH_PYTHON").map_or_else(
        || repo_root().join(".toolchain/venv/bin/python"),
        PathBuf::from,
    );
    let mut cmd = std::process::Command::new(&python);
    cmd.args(["-c", "import dstack_p2p, aiohttp, redis"]);
    let out = run_command_timeout(cmd, "python (checking the SDK)", Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{} cannot import dstack_p2p, aiohttp and redis: run scripts/bootstrap (it installs sdk/python and \
         examples/requirements.txt into .toolchain/venv), or set DSTACK_MESH_PYTHON\n{}",
        python.display(),
        text(&out)
    );
    python
}

/// Node.js, for the TypeScript SDK's scripts and the browser tests: `DSTACK_MESH_NODE`, else `node` on
/// `PATH`. Fails, naming what to install, when it is missing or older than 20 (the SDK's floor).
pub fn node() -> PathBuf {
    let node =
        std::env::var_os("DSTACK_MESH_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from);
    let mut cmd = std::process::Command::new(&node);
    cmd.arg("--version");
    let out = run_command_timeout(cmd, "node --version", Duration::from_secs(30));
    let version = String::from_utf8_lossy(&out.stdout);
    let major = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    assert!(
        out.status.success() && major.is_some_and(|m| m >= 20),
        "{} is not Node.js 20 or newer ({}): install Node.js 20+, or set DSTACK_MESH_NODE to it\n{}",
        node.display(),
        version.trim(),
        text(&out)
    );
    node
}

/// The headless browser the status page is read in (Debian's Chromium, or `CHROMIUM`), or why it cannot
/// be: call before deploying anything.
pub fn require_chromium() {
    require_root(&["chromium", "curl"]);
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (scripts/bootstrap does), or set CHROMIUM"
    );
}

/// `<interpreter> <script> <args>` (the script relative to the repository; Python for `.py`, Node.js for
/// `.mjs` and `.js`) in `ns`, with nothing of this process's environment but `PATH`, and the agent's API at
/// `api` (`DSTACK_MESH_API`).
fn script_command(ns: &NetNs, script: &str, args: &[&str], api: &Path) -> std::process::Command {
    let interpreter = match Path::new(script).extension().and_then(|e| e.to_str()) {
        Some("py") => python(),
        Some("mjs" | "js") => node(),
        _ => panic!("{script}: no interpreter for it; scripts are .py (Python) or .mjs (Node.js)"),
    };
    let path = repo_root().join(script);
    let mut cmd = ns.command(&[
        interpreter.to_str().expect("utf-8 path"),
        path.to_str().expect("utf-8 path"),
    ]);
    clean_env(&mut cmd)
        .args(args)
        .env("DSTACK_MESH_API", api)
        .env("PYTHONUNBUFFERED", "1");
    cmd
}

/// One program (Python, or Node.js for a `.mjs` script) in a node's namespace, its output in a log file; stopped (by PID) on drop.
pub struct App {
    what: String,
    child: ChildGuard,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl App {
    /// Starts `python <script> <args>` (or `node`, for a `.mjs` script; the script relative to the
    /// repository) in `ns`, with the agent's API at `api` (`DSTACK_MESH_API`) and `env`.
    pub fn start(
        ns: &NetNs,
        script: &str,
        args: &[&str],
        api: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("dm-app-")
            .tempdir()
            .expect("temp dir");
        let log = dir.path().join("app.log");
        let what = format!("{script} in {}", ns.name);
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("app log");
        let _ = writeln!(out, "=== test: starting {what} {args:?}");
        let mut cmd = script_command(ns, script, args, api);
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Self {
            child: ChildGuard::new(what.clone(), child),
            what,
            log,
            _dir: dir,
        }
    }

    /// Waits (bounded) until a line of its output contains `needle`; panics with the tail otherwise, or at
    /// once if it exits.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.lines().iter().any(|l| l.contains(needle)) {
                return;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} printed no {needle:?} within {timeout:?}\n{}",
                self.what,
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Panics with the tail if it has exited.
    pub fn assert_running(&mut self) {
        assert!(
            !self.child.has_exited(),
            "{} exited\n{}",
            self.what,
            self.tail()
        );
    }

    /// Its output so far, line by line.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The lines of its output that are JSON objects, parsed.
    pub fn json_lines(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The peer lists an SDK's `monitor` script has printed so far (its `{"kind": "peers", "peers": [...]}`
    /// lines), in order.
    pub fn peer_lists(&self) -> Vec<Vec<String>> {
        self.json_lines()
            .iter()
            .filter(|v| v["kind"] == "peers")
            .map(|v| {
                v["peers"]
                    .as_array()
                    .expect("a list")
                    .iter()
                    .map(|p| p.as_str().expect("an address").to_owned())
                    .collect()
            })
            .collect()
    }

    pub fn tail(&self) -> String {
        format!("--- {} output ---\n{}", self.what, tail(&self.log, 6000))
    }
}

/// Runs `python <script> <args>` (or `node`, for a `.mjs` script) in `ns` to completion (bounded) and returns its exit success and the JSON
/// objects it printed, one per line.
pub fn run_script(
    ns: &NetNs,
    script: &str,
    args: &[&str],
    api: &Path,
    timeout: Duration,
) -> (bool, Vec<Value>, String) {
    let out = run_command_timeout(script_command(ns, script, args, api), script, timeout);
    let objects = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.success(), objects, text(&out))
}

/// `method url` (with a JSON `body`) from inside `ns`, with curl: the status and the JSON reply (`Null`
/// when the reply is not JSON), or why no answer came.
pub fn http(
    ns: &NetNs,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> Result<(u16, Value), String> {
    require_root(&["curl"]);
    let mut args = vec![
        "curl",
        "-sS",
        "-m",
        "5",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        url,
    ];
    if let Some(body) = body {
        args.extend(["-H", "content-type: application/json", "--data", body]);
    }
    let out = ns.exec(&args, Duration::from_secs(10));
    if !out.status.success() {
        return Err(format!("{method} {url}: {}", text(&out)));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (reply, code) = stdout.trim_end().rsplit_once('\n').unwrap_or(("", &stdout));
    let code = code
        .trim()
        .parse()
        .map_err(|_| format!("{method} {url}: no status in {stdout:?}"))?;
    Ok((code, serde_json::from_str(reply).unwrap_or(Value::Null)))
}
