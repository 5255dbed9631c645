//! A LAN of node namespaces behind a bridge, with anvil on it ([`Lan`]); each node on the bridge itself, or
//! behind a NAT router or slirp4netns ([`Uplink`]). Everything is addressed from inside the namespaces;
//! nothing is created in the root namespace.
//!
//! Teardown is by guards, in borrow order: an [`crate::system::agent::Agent`] borrows its
//! [`crate::system::cluster::Cluster`], which borrows its [`Lan`], so agents stop before simulators, and simulators
//! and anvil before the namespaces go.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::net::netns::{NetNs, link};
use crate::net::ping::{ping_counts, ping_output};
use crate::net::uplink::{Front, SlirpHost, Uplink, lan_ip, router};
use crate::run::process::{
    CMD_TIMEOUT, ChildGuard, anvil_path, cast_path, clean_env, json_of, require_root,
    run_command_timeout, tail, workspace_bin,
};
use crate::run::wait::wait_until;

/// The switch's address on the LAN, where anvil listens.
pub const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);

/// anvil's port on the switch.
pub const RPC_PORT: u16 = 8545;

/// The port every agent's WireGuard listens on (each in its own namespace).
pub const WG_PORT: u16 = 51820;

/// From this many nodes on, the LAN's addresses are static neighbour entries. Every namespace shares the
/// kernel's one IPv4 neighbour table, whose hard limit (`gc_thresh3`, 1024 by default, global) a full mesh
/// of 50 nodes overflows with its ~2,500 ARP entries: the kernel drops packets and logs "neighbor table
/// overflow". Permanent entries are exempt from that limit, and nothing global is changed.
pub const STATIC_NEIGHBOURS_FROM: usize = 30;

/// The RPC URL every namespace reaches anvil at.
pub fn rpc_url() -> String {
    format!("http://{SWITCH_IP}:{RPC_PORT}")
}

/// anvil's WebSocket, at the same address.
pub fn ws_url() -> String {
    format!("ws://{SWITCH_IP}:{RPC_PORT}")
}

/// A switch namespace with a bridge and anvil on it at [`SWITCH_IP`], and node namespaces 1..=n, each
/// joined to the bridge by a veth with [`lan_ip`]`(i)/24`, or behind a namespace that is, at that address
/// ([`Lan::with_uplinks`]): a NAT router, or a host running slirp4netns.
///
/// Dropping it stops anvil and slirp4netns and deletes the namespaces, which takes their veths and bridge
/// with them.
pub struct Lan {
    anvil: Option<ChildGuard>,
    anvil_log: PathBuf,
    /// anvil's arguments beyond its address ([`Lan::with_anvil_args`]).
    anvil_args: Vec<String>,
    /// Node namespaces; `nodes[i - 1]` is node i.
    pub nodes: Vec<NetNs>,
    pub switch: NetNs,
    /// What stands in front of each node (`fronts[i - 1]`); `None` for a node on the switch.
    pub fronts: Vec<Option<Front>>,
    _dir: tempfile::TempDir,
}

impl Lan {
    /// Builds the LAN and waits (bounded) until anvil answers and every node reaches the switch.
    pub fn new(n: usize) -> Self {
        Self::with_uplinks(&vec![Uplink::Switch; n])
    }

    /// Like [`Lan::new`], but node `behind` reaches the LAN only through a masquerading (port-restricted)
    /// NAT router at its public address.
    pub fn with_nat(n: usize, behind: usize) -> Self {
        assert!(
            (1..=n).contains(&behind),
            "no node {behind} to put behind the NAT"
        );
        let mut uplinks = vec![Uplink::Switch; n];
        uplinks[behind - 1] = Uplink::nat(crate::net::uplink::NatKind::PortRestricted);
        Self::with_uplinks(&uplinks)
    }

    /// Like [`Lan::new`], with `args` added to anvil's: e.g. `--prune-history 64` for a chain of ten
    /// thousand seats, whose states anvil would otherwise write to disk as JSON at every block.
    pub fn with_anvil_args(n: usize, args: &[&str]) -> Self {
        Self::build(&vec![Uplink::Switch; n], args)
    }

    /// A LAN of `uplinks.len()` nodes, node i behind `uplinks[i - 1]`.
    pub fn with_uplinks(uplinks: &[Uplink]) -> Self {
        Self::build(uplinks, &[])
    }

    fn build(uplinks: &[Uplink], anvil_args: &[&str]) -> Self {
        let n = uplinks.len();
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
            anvil_args: anvil_args.iter().map(|a| (*a).to_owned()).collect(),
            nodes: Vec::new(),
            switch,
            fronts: Vec::new(),
            _dir: dir,
        };
        for (i, uplink) in (1..=n).zip(uplinks) {
            let node = NetNs::new(&format!("n{i}"));
            let port = format!("p{i}");
            let front = match *uplink {
                Uplink::Switch => {
                    link(&node, "eth0", &lan.switch, &port);
                    lan.switch
                        .ip(&["link", "set", &port, "master", "br0", "up"]);
                    node.ip(&["addr", "add", &format!("{}/24", lan_ip(i)), "dev", "eth0"]);
                    node.ip(&["link", "set", "eth0", "up"]);
                    None
                }
                Uplink::Nat { kind, mtu } => Some(Front::Router(router(
                    i,
                    &node,
                    &lan.switch,
                    &port,
                    kind,
                    mtu,
                ))),
                Uplink::Slirp => Some(Front::Slirp(SlirpHost::new(i, &node, &lan.switch, &port))),
            };
            lan.nodes.push(node);
            lan.fronts.push(front);
        }
        if n >= STATIC_NEIGHBOURS_FROM {
            lan.add_static_neighbours();
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

    /// Every address on the bridge as a permanent neighbour entry in every namespace on it: the switch, and
    /// each node or the namespace in front of it (see [`STATIC_NEIGHBOURS_FROM`]).
    fn add_static_neighbours(&self) {
        let mut on_bridge: Vec<(&NetNs, &str, Ipv4Addr)> = vec![(&self.switch, "br0", SWITCH_IP)];
        for (i, (node, front)) in (1..).zip(self.nodes.iter().zip(&self.fronts)) {
            on_bridge.push((front.as_ref().map_or(node, Front::ns), "eth0", lan_ip(i)));
        }
        let macs: Vec<(Ipv4Addr, String)> = on_bridge
            .iter()
            .map(|(ns, dev, ip)| {
                let shown = ns.ip(&["-j", "link", "show", dev]);
                let link: Value = serde_json::from_str(&shown)
                    .unwrap_or_else(|e| panic!("ip -j link printed no JSON ({e}): {shown}"));
                let mac = link[0]["address"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no MAC address on {dev} in {}", ns.name));
                (*ip, mac.to_owned())
            })
            .collect();
        for (ns, dev, own) in &on_bridge {
            let batch: String = macs
                .iter()
                .filter(|(ip, _)| ip != own)
                .map(|(ip, mac)| {
                    format!("neigh replace {ip} lladdr {mac} dev {dev} nud permanent\n")
                })
                .collect();
            let file = self._dir.path().join(format!("neigh-{}", ns.name));
            std::fs::write(&file, batch).expect("neighbour batch file");
            ns.ip(&["-batch", file.to_str().expect("utf-8 temp path")]);
        }
    }

    /// JSON-RPC requests anvil has served so far, over HTTP and WebSocket: it logs each one's method.
    pub fn rpc_requests(&self) -> u64 {
        let log = std::fs::read_to_string(&self.anvil_log).unwrap_or_default();
        let is_method = |l: &str| {
            l.split_once('_').is_some_and(|(ns, name)| {
                !ns.is_empty()
                    && !name.is_empty()
                    && ns.bytes().all(|b| b.is_ascii_lowercase())
                    && name.bytes().all(|b| b.is_ascii_alphanumeric())
            })
        };
        log.lines().filter(|l| is_method(l)).count() as u64
    }

    fn start_anvil(&mut self) {
        let log = File::create(&self.anvil_log).expect("anvil log");
        let mut args = vec![
            anvil_path().to_str().expect("utf-8 anvil path").to_owned(),
            "--host".into(),
            SWITCH_IP.to_string(),
            "--port".into(),
            RPC_PORT.to_string(),
        ];
        // Blocks at a real chain's pace rather than on demand, for measurements (hand-off and failover).
        if let Ok(secs) = std::env::var("DSTACK_MESH_TEST_BLOCK_TIME") {
            args.extend(["--block-time".into(), secs]);
        }
        args.extend(self.anvil_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = self.switch.command(&args);
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

    /// Forgets every connection node `i`'s NAT router tracks (`conntrack -F`), as a router that restarted
    /// or expired its state would: its mappings are made anew by the next datagram out.
    pub fn flush_nat(&self, i: usize) {
        require_root(&["conntrack"]);
        match &self.fronts[i - 1] {
            Some(Front::Router(router)) => {
                router.exec_ok(&["conntrack", "-F"]);
            }
            _ => panic!("node {i} is not behind a NAT router"),
        }
    }

    /// Restarts the slirp4netns in front of node `i`: a NAT that restarts and maps the node anew.
    pub fn restart_slirp(&self, i: usize) {
        let node = &self.nodes[i - 1];
        match &self.fronts[i - 1] {
            Some(Front::Slirp(host)) => host.restart(node),
            _ => panic!("node {i} is not behind slirp4netns"),
        }
    }

    /// Calls anvil's JSON-RPC `method` with `params` (each a JSON value, as `cast rpc` takes them) and
    /// returns the result; panics with the output unless it succeeds. For anvil's controls, such as
    /// `evm_setAutomine`.
    pub fn anvil_rpc(&self, method: &str, params: &[&str]) -> Value {
        let cast = cast_path();
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

/// Node `i` cut off the LAN with nftables on the switch's bridge: every frame from or to its port is
/// dropped, to the other nodes and to anvil alike, as a host that lost its network. Dropping it (or
/// [`Cut::restore`]) lets them through again.
pub struct Cut<'a> {
    lan: &'a Lan,
    table: String,
}

impl Lan {
    /// Cuts node `i` off (see [`Cut`]).
    pub fn cut_off(&self, i: usize) -> Cut<'_> {
        require_root(&["nft"]);
        assert!((1..=self.nodes.len()).contains(&i), "no node {i}");
        let table = format!("dm_cut_{i}");
        let port = format!("p{i}");
        self.switch.exec_ok(&[
            "nft",
            &format!(
                "add table bridge {table} {{ \
                 chain forward {{ type filter hook forward priority 0; iifname \"{port}\" drop; oifname \"{port}\" drop; }}; \
                 chain input {{ type filter hook input priority 0; iifname \"{port}\" drop; }}; \
                 chain output {{ type filter hook output priority 0; oifname \"{port}\" drop; }}; }}"
            ),
        ]);
        Cut { lan: self, table }
    }
}

impl Cut<'_> {
    pub fn restore(self) {}
}

/// Every UDP datagram to or from node `i` dropped by nftables in its own namespace, its WireGuard's
/// included, while TCP (the RPC, the gateway) gets through; dropping it (or [`UdpDrop::restore`]) lets UDP
/// through again.
pub struct UdpDrop<'a> {
    ns: &'a NetNs,
    table: String,
}

impl Lan {
    /// Drops node `i`'s UDP (see [`UdpDrop`]).
    pub fn drop_udp(&self, i: usize) -> UdpDrop<'_> {
        require_root(&["nft"]);
        let ns = self.node(i);
        let table = format!("dm_udp_{i}");
        ns.exec_ok(&[
            "nft",
            &format!(
                "add table inet {table} {{ \
                 chain input {{ type filter hook input priority 0; meta l4proto udp drop; }}; \
                 chain output {{ type filter hook output priority 0; meta l4proto udp drop; }}; }}"
            ),
        ]);
        UdpDrop { ns, table }
    }
}

impl UdpDrop<'_> {
    pub fn restore(self) {}
}

impl Drop for UdpDrop<'_> {
    fn drop(&mut self) {
        let _ = self.ns.exec(
            &["nft", "delete", "table", "inet", &self.table],
            Duration::from_secs(5),
        );
    }
}

/// Node `i`'s way to the RPC (anvil on the switch) blocked by nftables in its own namespace, while the
/// rest of the LAN (its peers, its WireGuard) still gets through; dropping it (or [`RpcCut::restore`])
/// opens it again. Connections are dropped, not refused, as a firewall or a dead route would.
pub struct RpcCut<'a> {
    ns: &'a NetNs,
    table: String,
}

impl Lan {
    /// Blocks node `i`'s RPC (see [`RpcCut`]).
    pub fn cut_rpc(&self, i: usize) -> RpcCut<'_> {
        require_root(&["nft"]);
        let ns = self.node(i);
        let table = format!("dm_rpc_{i}");
        ns.exec_ok(&[
            "nft",
            &format!(
                "add table inet {table} {{ chain output {{ type filter hook output priority 0; \
                 ip daddr {SWITCH_IP} tcp dport {RPC_PORT} drop; }}; }}"
            ),
        ]);
        RpcCut { ns, table }
    }
}

impl RpcCut<'_> {
    pub fn restore(self) {}
}

impl Drop for RpcCut<'_> {
    fn drop(&mut self) {
        let _ = self.ns.exec(
            &["nft", "delete", "table", "inet", &self.table],
            Duration::from_secs(5),
        );
    }
}

impl Drop for Cut<'_> {
    fn drop(&mut self) {
        let _ = self.lan.switch.exec(
            &["nft", "delete", "table", "bridge", &self.table],
            Duration::from_secs(5),
        );
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // anvil first (the guard's SIGTERM reaches the node wrapper, which forwards it), then what stands in
        // front of the nodes; NetNs's drop kills whatever is left in the switch by PID, then the namespaces
        // go with their links.
        self.anvil.take();
        self.fronts.clear();
    }
}

/// What every whole-system scenario needs: root, `/dev/net/tun`, the tools (`ip`, `ss`, `ping`, `wg`,
/// anvil), and the workspace binaries it runs. Fails at once with one message saying what is missing.
pub fn require_mesh_prerequisites() {
    require_root(&["ss"]);
    for bin in ["p2p-agent", "meshctl", "dstack-simulator"] {
        workspace_bin(bin);
    }
}
