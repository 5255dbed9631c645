//! What stands between a node and the LAN's switch, the tests' "internet": nothing (the node is on the
//! switch), a NAT router of one of four kinds (nftables), or slirp4netns, the user-mode NAT of QEMU that
//! dstack's CVMs sit behind. Whatever it is, node i's public address is [`lan_ip`]`(i)`: its own, its
//! router's or its host's. The relay port (TCP 51820) is forwarded to the node, as dstack's gateway reaches
//! a CVM's ports through its own tunnel; UDP is left to the NAT.
//!
//! The four NAT kinds, as each was measured here with a STUN client and a stranger's datagrams:
//!
//! | kind | mapping | who may send in |
//! |---|---|---|
//! | full cone | the node's port 51820 on the router's 51820, for every destination | anyone |
//! | address-restricted | the same | addresses the node has sent to |
//! | port-restricted | the same (masquerade keeps the port) | the exact address and port the node sent to |
//! | symmetric | a random port for each destination (`masquerade random`) | the exact address and port |
//!
//! slirp4netns maps a guest socket to one random host port for every destination and lets anyone send to
//! it: a full cone whose port nobody can guess, which STUN reveals.
//!
//! Every router drops unsolicited datagrams in its input chain: one that reached the router's own stack
//! would leave a confirmed conntrack entry on the public port, and the node's next outgoing mapping would
//! then be moved to another port, as a careless NAT's would.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::net::netns::{NetNs, link};
use crate::run::process::{ChildGuard, require_root, tail};
use crate::run::wait::wait_until;

/// The node's WireGuard and relay port, which routers forward.
const NODE_PORT: u16 = 51820;
/// A slirp4netns guest's address and its gateway.
pub const SLIRP_GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

/// How a NAT router maps and filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    FullCone,
    AddressRestricted,
    PortRestricted,
    Symmetric,
}

impl NatKind {
    pub const ALL: [NatKind; 4] = [
        Self::FullCone,
        Self::AddressRestricted,
        Self::PortRestricted,
        Self::Symmetric,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::FullCone => "full-cone",
            Self::AddressRestricted => "address-restricted",
            Self::PortRestricted => "port-restricted",
            Self::Symmetric => "symmetric",
        }
    }
}

/// Whether two nodes behind NATs of kinds `a` and `b` can punch a hole to each other by sending at once.
/// Measured here with plain UDP sockets before the agent was: a symmetric NAT's port toward a peer is
/// unknown to it, so it works only when the other side lets in whoever it sent to at that address, any port
/// (full cone, address-restricted); two symmetric NATs never.
pub fn expected_to_punch(a: NatKind, b: NatKind) -> bool {
    use NatKind::{PortRestricted, Symmetric};
    !matches!(
        (a, b),
        (Symmetric, Symmetric) | (Symmetric, PortRestricted) | (PortRestricted, Symmetric)
    )
}

/// What stands between a node and the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uplink {
    /// A port on the switch: the node holds its public address itself.
    Switch,
    /// A router namespace that NATs the node's private network (`192.168.i.0/24`), whose link to the node
    /// carries at most `mtu` bytes.
    Nat { kind: NatKind, mtu: u16 },
    /// A host namespace that runs slirp4netns for the node ([`SLIRP_GUEST`]).
    Slirp,
}

impl Uplink {
    /// A NAT of `kind` on an Ethernet-sized link.
    pub fn nat(kind: NatKind) -> Self {
        Self::Nat { kind, mtu: 1500 }
    }
}

/// The namespace in front of a node, on the switch at the node's public address.
pub enum Front {
    Router(NetNs),
    Slirp(SlirpHost),
}

impl Front {
    /// The namespace whose `eth0` is on the switch.
    pub fn ns(&self) -> &NetNs {
        match self {
            Self::Router(ns) => ns,
            Self::Slirp(host) => &host.ns,
        }
    }
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

/// Node `i`'s address on its private network behind a router.
pub fn private_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        192,
        168,
        u8::try_from(i).expect("node index fits a byte"),
        2,
    )
}

fn router_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        192,
        168,
        u8::try_from(i).expect("node index fits a byte"),
        1,
    )
}

/// The router for node `i` (namespace `node`) of `kind`: its `eth0` is on the switch port `port` at
/// [`lan_ip`]`(i)`, its `lan0` links to the node, `mtu` bytes at most.
pub fn router(
    i: usize,
    node: &NetNs,
    switch: &NetNs,
    port: &str,
    kind: NatKind,
    mtu: u16,
) -> NetNs {
    require_root(&["nft"]);
    let router = NetNs::new("rt");
    let (public, private) = (lan_ip(i), private_ip(i));
    link(&router, "eth0", switch, port);
    switch.ip(&["link", "set", port, "master", "br0", "up"]);
    router.ip(&["addr", "add", &format!("{public}/24"), "dev", "eth0"]);
    router.ip(&["link", "set", "eth0", "up"]);
    link(node, "eth0", &router, "lan0");
    for (ns, dev) in [(&router, "lan0"), (node, "eth0")] {
        ns.ip(&["link", "set", dev, "mtu", &mtu.to_string()]);
    }
    router.ip(&[
        "addr",
        "add",
        &format!("{}/24", router_ip(i)),
        "dev",
        "lan0",
    ]);
    router.ip(&["link", "set", "lan0", "up"]);
    node.ip(&["addr", "add", &format!("{private}/24"), "dev", "eth0"]);
    node.ip(&["link", "set", "eth0", "up"]);
    node.ip(&["route", "add", "default", "via", &router_ip(i).to_string()]);
    router.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    router.exec_ok(&["nft", &nat_rules(kind, public, private)]);
    router
}

/// The router's ruleset: the relay port forwarded, the kind's UDP mapping and filtering, and unsolicited
/// datagrams to the router itself dropped.
fn nat_rules(kind: NatKind, public: Ipv4Addr, private: Ipv4Addr) -> String {
    let p = NODE_PORT;
    let fixed = format!("ip saddr {private} udp sport {p}");
    let mut set = "";
    let mut forward = String::new();
    let mut prerouting = vec![format!("iifname eth0 tcp dport {p} dnat to {private}:{p}")];
    let mut postrouting = Vec::new();
    match kind {
        NatKind::FullCone => {
            postrouting.push(format!("{fixed} snat to {public}:{p}"));
            prerouting.push(format!("iifname eth0 udp dport {p} dnat to {private}:{p}"));
        }
        NatKind::AddressRestricted => {
            set = "set contacted { type ipv4_addr; flags timeout; timeout 120s; };";
            postrouting.push(format!("{fixed} snat to {public}:{p}"));
            prerouting.push(format!(
                "iifname eth0 udp dport {p} ip saddr @contacted dnat to {private}:{p}"
            ));
            // In the forward chain, which sees every packet (the nat chains see only a connection's first),
            // so that traffic keeps an address in the set as a NAT's filter stays open while used.
            forward = format!("{fixed} update @contacted {{ ip daddr }}");
        }
        NatKind::PortRestricted => {}
        NatKind::Symmetric => postrouting.push("oifname eth0 masquerade random".to_owned()),
    }
    postrouting.push("oifname eth0 masquerade".to_owned());
    format!(
        "add table ip nat {{ {set} \
           chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; {}; }}; \
           chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; {}; }}; \
           chain forward {{ type filter hook forward priority filter; policy accept; {forward}; }}; }}; \
         add table ip filter {{ \
           chain input {{ type filter hook input priority filter; policy accept; \
             iifname eth0 ct state established,related accept; iifname eth0 icmp type echo-request accept; \
             iifname eth0 drop; }}; }}",
        prerouting.join("; "),
        postrouting.join("; ")
    )
}

/// A host namespace on the switch at node `i`'s public address, running slirp4netns for the node: the
/// node's `tap0` is [`SLIRP_GUEST`]/24 with its default route through slirp, and the relay port is
/// forwarded to it. Dropping it stops slirp4netns (by PID); the node's `tap0` goes with it.
pub struct SlirpHost {
    /// The running slirp4netns, and how many were started (each gets its own API socket). Dropped first, so
    /// that it is stopped before its namespace goes.
    slirp: Mutex<(Option<ChildGuard>, u32)>,
    node: String,
    dir: tempfile::TempDir,
    pub ns: NetNs,
}

impl SlirpHost {
    pub fn new(i: usize, node: &NetNs, switch: &NetNs, port: &str) -> Self {
        require_root(&["slirp4netns"]);
        let ns = NetNs::new("h");
        link(&ns, "eth0", switch, port);
        switch.ip(&["link", "set", port, "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{}/24", lan_ip(i)), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        let dir = tempfile::Builder::new()
            .prefix("dm-slirp")
            .tempdir()
            .expect("temp dir");
        let host = Self {
            slirp: Mutex::new((None, 0)),
            node: node.name.clone(),
            dir,
            ns,
        };
        host.start(node);
        host
    }

    fn running(&self) -> MutexGuard<'_, (Option<ChildGuard>, u32)> {
        self.slirp.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn api_socket(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("api-{}.sock", self.running().1))
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("slirp4netns.log")
    }

    fn start(&self, node: &NetNs) {
        self.running().1 += 1;
        let api = self.api_socket();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("slirp4netns log");
        let netns = format!("/var/run/netns/{}", self.node);
        let child = self
            .ns
            .command(&[
                "slirp4netns",
                "--configure",
                "--mtu",
                "1500",
                "--disable-host-loopback",
                "--api-socket",
                api.to_str().expect("utf-8 temp path"),
                "--netns-type=path",
                &netns,
                "tap0",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start slirp4netns");
        self.running().0 = Some(ChildGuard::new("slirp4netns", child));
        wait_until(
            "slirp4netns to give the node its tap0 and default route",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || node.ip(&["route", "show", "default"]).contains("tap0") && api.exists(),
            || tail(&self.log(), 2000),
        );
        self.forward_relay_port();
    }

    /// The relay port, TCP, from the host's public address to the node (slirp4netns's `add_hostfwd`).
    fn forward_relay_port(&self) {
        let request = format!(
            r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"0.0.0.0","host_port":{NODE_PORT},"guest_addr":"{SLIRP_GUEST}","guest_port":{NODE_PORT}}}}}"#
        );
        let socket = self.api_socket();
        let answer = self.ns.exec_ok(&[
            "python3",
            "-c",
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); \
             s.sendall(sys.argv[2].encode()); s.shutdown(socket.SHUT_WR); print(s.recv(4096).decode())",
            socket.to_str().expect("utf-8 temp path"),
            &request,
        ]);
        assert!(
            answer.contains("return"),
            "slirp4netns refused the relay port's forward: {answer}"
        );
    }

    /// Stops slirp4netns and starts it again, as a NAT that restarts: the node's `tap0` goes and comes back,
    /// and its sockets get new host ports (a new mapping).
    pub fn restart(&self, node: &NetNs) {
        let old = self.running().0.take();
        if let Some(mut old) = old {
            old.stop();
        }
        wait_until(
            "the node's tap0 to go with slirp4netns",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || !node.ip(&["link", "show"]).contains("tap0"),
            || node.ip(&["link", "show"]),
        );
        self.start(node);
    }
}

/// coturn (Debian's `turnserver`) answering STUN only, on two more addresses of the switch's bridge, each on
/// port 3478 and the RFC 5780 alternate port 3479: a client that asks all four tells an endpoint-independent
/// mapping from an address- or port-dependent one. Dropping it stops turnserver by PID.
pub struct StunServer {
    pub addresses: [Ipv4Addr; 2],
    _server: ChildGuard,
    _dir: tempfile::TempDir,
}

impl StunServer {
    /// The addresses coturn listens on, added to `dev` in `ns` (the switch's bridge).
    pub const ADDRESSES: [Ipv4Addr; 2] = [
        Ipv4Addr::new(198, 51, 100, 250),
        Ipv4Addr::new(198, 51, 100, 251),
    ];
    pub const PORT: u16 = 3478;

    pub fn start(ns: &NetNs, dev: &str) -> Self {
        require_root(&["turnserver"]);
        let dir = tempfile::Builder::new()
            .prefix("dm-stun")
            .tempdir()
            .expect("temp dir");
        let log = dir.path().join("turnserver.log");
        for a in Self::ADDRESSES {
            ns.ip(&["addr", "add", &format!("{a}/24"), "dev", dev]);
        }
        let [a, b] = Self::ADDRESSES.map(|a| a.to_string());
        let child = ns
            .command(&[
                "turnserver",
                "-n",
                "--no-cli",
                "--stun-only",
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                "-L",
                &a,
                "-L",
                &b,
                "--listening-port",
                &Self::PORT.to_string(),
                "--simple-log",
                "--log-file",
                log.to_str().expect("utf-8 temp path"),
                // Its own files, not /var/run/turnserver.pid and /var/lib/turn/turndb, which every coturn on
                // the machine would share.
                "--pidfile",
                dir.path()
                    .join("turnserver.pid")
                    .to_str()
                    .expect("utf-8 temp path"),
                "--userdb",
                dir.path().join("turndb").to_str().expect("utf-8 temp path"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        let server = ChildGuard::new("turnserver (STUN)", child);
        wait_until(
            "coturn to listen on its four STUN addresses",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let listening = ns.exec_ok(&["ss", "-ulnH"]);
                Self::ADDRESSES.iter().all(|a| {
                    listening.contains(&format!("{a}:{}", Self::PORT))
                        && listening.contains(&format!("{a}:{}", Self::PORT + 1))
                })
            },
            || tail(&log, 3000),
        );
        Self {
            addresses: Self::ADDRESSES,
            _server: server,
            _dir: dir,
        }
    }

    /// The servers to give an agent: both addresses on the main port, and the first on the alternate port.
    pub fn servers(&self) -> Vec<SocketAddrV4> {
        vec![
            SocketAddrV4::new(self.addresses[0], Self::PORT),
            SocketAddrV4::new(self.addresses[1], Self::PORT),
            SocketAddrV4::new(self.addresses[0], Self::PORT + 1),
        ]
    }

    /// `--stun-server` for each of [`StunServer::servers`].
    pub fn agent_flags(&self) -> Vec<String> {
        self.servers()
            .iter()
            .flat_map(|s| ["--stun-server".to_owned(), s.to_string()])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pairs measured to punch, and the two that did not, whichever side is which.
    #[test]
    fn only_symmetric_against_symmetric_or_port_restricted_cannot_punch() {
        use NatKind::*;
        let fails: Vec<(NatKind, NatKind)> = NatKind::ALL
            .iter()
            .flat_map(|&a| NatKind::ALL.iter().map(move |&b| (a, b)))
            .filter(|&(a, b)| !expected_to_punch(a, b))
            .collect();
        assert_eq!(
            fails,
            [
                (PortRestricted, Symmetric),
                (Symmetric, PortRestricted),
                (Symmetric, Symmetric)
            ]
        );
    }

    #[test]
    fn every_kind_has_rules_that_name_its_addresses() {
        for kind in NatKind::ALL {
            let rules = nat_rules(kind, lan_ip(4), private_ip(4));
            assert!(rules.contains("dnat to 192.168.4.2:51820"), "{rules}");
            assert!(rules.contains("iifname eth0 drop"), "{rules}");
        }
        assert!(
            nat_rules(NatKind::Symmetric, lan_ip(4), private_ip(4)).contains("masquerade random")
        );
    }
}
