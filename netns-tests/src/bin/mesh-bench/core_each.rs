//! A core per node, for one measurement: every thread in each node's namespace runs on a CPU of its own, as
//! two machines would run them, instead of both nodes (both WireGuard sides, both iperf3 ends, the pings)
//! sharing all of this machine's cores. What a bulk stream's neighbour waits for on a real pair of nodes is
//! then told apart from the wait for a core that only a bench of both nodes on one machine has.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use netns_tests::net::netns::NetNs;
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// How often what starts in the namespaces (a ping, an iperf3 client) is looked for and pinned.
const EVERY: Duration = Duration::from_millis(10);

/// The pinning, until dropped: then every thread in the namespaces may run on any CPU again.
pub(crate) struct CoreEach {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    nodes: Vec<(u64, CpuSet)>,
    all: CpuSet,
}

impl CoreEach {
    /// Pins each of `nodes` to its CPU, and goes on pinning the processes that start in them; `None` on a
    /// machine of one CPU.
    pub(crate) fn pin(nodes: &[(&NetNs, usize)]) -> Option<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        if cpus < 2 {
            return None;
        }
        let all = sched_getaffinity(Pid::from_raw(0))
            .unwrap_or_else(|e| panic!("reading the bench's CPU affinity: {e}"));
        let nodes: Vec<(u64, CpuSet)> = nodes
            .iter()
            .map(|(ns, cpu)| {
                let mut set = CpuSet::new();
                set.set(cpu % cpus)
                    .unwrap_or_else(|e| panic!("CPU {cpu} in a CPU set: {e}"));
                (inode_of(ns), set)
            })
            .collect();
        let own = netns_of(std::process::id() as i32);
        assert!(
            nodes.iter().all(|(ns, _)| Some(*ns) != own),
            "a core per node pins the nodes' namespaces, never the bench's own (the machine's processes)"
        );
        let mut pinned = HashSet::new();
        pin_new(&nodes, &mut pinned);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, nodes) = (stop.clone(), nodes.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(EVERY);
                    pin_new(&nodes, &mut pinned);
                }
            })
        };
        Some(Self {
            stop,
            thread: Some(thread),
            nodes,
            all,
        })
    }
}

impl Drop for CoreEach {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let everywhere: Vec<(u64, CpuSet)> =
            self.nodes.iter().map(|(ns, _)| (*ns, self.all)).collect();
        pin_new(&everywhere, &mut HashSet::new());
    }
}

/// The inode of `ns`'s namespace, as `/proc/<pid>/ns/net` names it (`net:[<inode>]`).
fn inode_of(ns: &NetNs) -> u64 {
    let path = format!("/run/netns/{}", ns.name);
    std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
        .ino()
}

/// Gives every thread of every process in one of `nodes`' namespaces the node's CPUs, once each (`pinned`
/// holds the threads done). A process that ends meanwhile is passed over.
fn pin_new(nodes: &[(u64, CpuSet)], pinned: &mut HashSet<i32>) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for pid in procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Some(ns) = netns_of(pid) else { continue };
        let Some((_, cpus)) = nodes.iter().find(|(n, _)| *n == ns) else {
            continue;
        };
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for tid in tasks
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        {
            if pinned.insert(tid) {
                let _ = sched_setaffinity(Pid::from_raw(tid), cpus);
            }
        }
    }
}

/// The inode of `pid`'s network namespace.
fn netns_of(pid: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_found_in_its_own_network_namespace() {
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(netns_of(std::process::id() as i32), Some(own));
        assert_eq!(netns_of(0), None, "no process has PID 0");
    }
}
