//! Network namespaces for tests: RAII guards for namespaces and veth pairs, and running code inside one.
//!
//! Every guard cleans up on success, failure and panic; processes are killed by their PID only.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::run::process::{ChildGuard, run_ok, run_timeout};

/// A name unique to this process and call, at most 15 bytes (the UAPI socket directory is shared by all
/// namespaces): `wgt<pid><tag><n>`.
pub fn unique(tag: &str) -> String {
    crate::unique_name(&format!("wgt{tag}"))
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

    /// Stops every process in the namespace with SIGSTOP, as a hung VM whose kernel still answers: its
    /// sockets still accept, nothing answers them. Dropping the guard resumes them (SIGCONT), so a failing
    /// test leaves nothing stopped for the teardown to wait on.
    pub fn freeze(&self) -> Frozen {
        let pids = self.pids();
        assert!(
            !pids.is_empty(),
            "nothing runs in netns {} to freeze",
            self.name
        );
        for pid in &pids {
            // One that exited meanwhile is not frozen, and needs no resuming either.
            let _ = kill(Pid::from_raw(*pid), Signal::SIGSTOP);
        }
        Frozen { pids }
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
        ChildGuard::new(args.join(" "), child)
    }
}

/// Processes stopped by [`NetNs::freeze`]; resumed by [`Frozen::resume`] or on drop.
pub struct Frozen {
    pids: Vec<i32>,
}

impl Frozen {
    /// The processes frozen.
    pub fn pids(&self) -> &[i32] {
        &self.pids
    }

    /// Resumes them (SIGCONT).
    pub fn resume(self) {}
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGCONT);
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

/// Joins `a` and `b` with a veth pair, `a_end` in `a` and `b_end` in `b`, created directly in the two
/// namespaces so nothing appears in the root namespace. The ends are down and have no address.
pub fn link(a: &NetNs, a_end: &str, b: &NetNs, b_end: &str) {
    run_ok(&[
        "ip", "link", "add", "name", a_end, "netns", &a.name, "type", "veth", "peer", "name",
        b_end, "netns", &b.name,
    ]);
}

/// Joins `a` and `b` with a veth pair `veth0` ([`link`]) and gives each end `addrs` (CIDR strings).
pub fn veth_pair(a: &NetNs, a_addrs: &[&str], b: &NetNs, b_addrs: &[&str]) {
    link(a, "veth0", b, "veth0");
    for (ns, addrs) in [(a, a_addrs), (b, b_addrs)] {
        for addr in addrs {
            ns.ip(&["addr", "add", addr, "dev", "veth0"]);
        }
        ns.ip(&["link", "set", "veth0", "up"]);
    }
}

/// Moves the calling thread into the network namespace named `name`, so the sockets, TUN devices and
/// netlink requests it makes from now on belong there.
///
/// # Panics
/// When the namespace cannot be opened or entered.
pub fn enter(name: &str) {
    let path = PathBuf::from("/var/run/netns").join(name);
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
}

/// Runs `f` on a scoped thread that has entered `ns`'s network namespace ([`enter`]); the caller's thread
/// never changes namespace.
pub fn in_netns<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&ns.name);
            f()
        })
        .join()
        .expect("the thread inside the namespace panicked")
    })
}
