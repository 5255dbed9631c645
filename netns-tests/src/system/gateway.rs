//! A stand-in for the dstack gateway: nginx's stream module in the switch namespace terminates TLS for
//! `*.<domain>` with a test CA's certificate and forwards plain TCP by SNI `<instance>-<port>` to that node's
//! port, as dstack's gateway does. Nodes resolve the names to the switch through `/etc/netns/<ns>/hosts`,
//! which `ip netns exec` mounts over `/etc/hosts`; the agents trust the test CA with `--relay-ca-file`.
//!
//! Dropping it stops nginx (by PID) and removes the hosts files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::net::SocketAddr;
use std::sync::Arc;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use mesh_relay::{Dialer, RelayTarget};
use mesh_wg::Key;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::net::netns::{NetNs, in_netns};
use crate::net::uplink::lan_ip;
use crate::run::process::{ChildGuard, require_root, tail};
use crate::run::wait::wait_until;
use crate::system::cluster::Cluster;
use crate::system::lan::{Lan, SWITCH_IP};

/// The gateway's base domain in tests.
pub const TEST_DOMAIN: &str = "mesh.test";
/// The port the gateway listens on, as dstack's does.
pub const GATEWAY_PORT: u16 = 443;
/// Where Debian's nginx keeps its stream module.
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// The running stand-in gateway.
pub struct Gateway {
    nginx: Option<ChildGuard>,
    hosts_dirs: Vec<PathBuf>,
    pub ca_file: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Every name the gateway routes: `<instance>-<port>.<domain>` to node `i`'s `port`.
pub struct Route {
    pub instance_id: String,
    pub node: usize,
    pub port: u16,
}

impl Route {
    pub fn host(&self) -> String {
        format!("{}-{}.{TEST_DOMAIN}", self.instance_id, self.port)
    }
}

impl Gateway {
    /// Starts nginx in `lan`'s switch namespace with `routes`, and points every node's resolver at it.
    pub fn start(lan: &Lan, routes: &[Route]) -> Self {
        require_root(&["nginx"]);
        assert!(
            Path::new(STREAM_MODULE).exists(),
            "nginx's stream module is missing at {STREAM_MODULE}: apt-get install libnginx-mod-stream"
        );
        let dir = tempfile::Builder::new()
            .prefix("dm-gateway")
            .tempdir()
            .expect("temp dir");
        let (ca_pem, cert_pem, key_pem) = test_pki();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).expect("write the CA");
        std::fs::write(dir.path().join("gateway.pem"), cert_pem).expect("write the certificate");
        std::fs::write(dir.path().join("gateway.key"), key_pem).expect("write the key");
        let log = dir.path().join("error.log");
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, nginx_conf(dir.path(), routes)).expect("write nginx.conf");

        let mut gateway = Self {
            nginx: None,
            hosts_dirs: Vec::new(),
            ca_file,
            log: log.clone(),
            _dir: dir,
        };
        let child = lan
            .switch
            .command(&[
                "nginx",
                "-e",
                &log.display().to_string(),
                "-c",
                &conf.display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nginx");
        gateway.nginx = Some(ChildGuard::new("nginx (the stand-in gateway)", child));
        for node in &lan.nodes {
            gateway.hosts_dirs.push(write_hosts(node, routes));
        }
        let probe = |ns: &NetNs| {
            ns.exec(
                &[
                    "bash",
                    "-c",
                    &format!("exec 3<>/dev/tcp/{SWITCH_IP}/{GATEWAY_PORT}"),
                ],
                Duration::from_secs(2),
            )
            .status
            .success()
        };
        let first = &lan.nodes[0];
        wait_until(
            "the gateway to listen",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || probe(first),
            || gateway.log_tail(),
        );
        gateway
    }

    /// The gateway for every node of `cluster`, routing `<instance>-<port>.<domain>` to each node's `port`.
    pub fn for_cluster(cluster: &Cluster<'_>, port: u16) -> Self {
        let instances: Vec<String> = cluster.sims.iter().map(|s| s.instance_id.clone()).collect();
        Self::start(cluster.lan(), &relay_routes(&instances, port))
    }

    /// The flags that give an agent its gateway URL under this gateway's domain and make it trust the test CA.
    pub fn agent_flags(&self) -> Vec<String> {
        [
            "--gateway-domain",
            TEST_DOMAIN,
            "--gateway-port",
            "8080",
            "--relay-ca-file",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([self.ca_file.display().to_string()])
        .collect()
    }

    /// A stranger (a WireGuard key that holds no seat) sends a handshake initiation for `to` (a node's
    /// public key) through `target`'s relay, from inside `from`. Returns whether the endpoint closed the
    /// stream within 5 s, as it does when the node's WireGuard keeps no link for what came on it.
    pub fn stranger_handshake(&self, from: &NetNs, target: &RelayTarget, to: &Key) -> bool {
        let ca = self.ca_file.clone();
        let target = target.clone();
        let to = *to;
        in_netns(from, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let dialer = Dialer::new(
                    Some(&ca),
                    Duration::from_secs(30),
                    Arc::new(mesh_relay::Metrics::default()),
                )
                .expect("trust the test CA");
                let (tx, _rx) = tokio::sync::mpsc::channel(8);
                let gateway = SocketAddr::from((SWITCH_IP, GATEWAY_PORT));
                let link = dialer
                    .dial_via(&target, Some(gateway), tx)
                    .await
                    .expect("dial the relay through the gateway");
                // No seat was ever bound to this key.
                let stranger = StaticSecret::from([0x5a; 32]);
                let mut tunn = Tunn::new(
                    stranger,
                    PublicKey::from(*to.as_bytes()),
                    None,
                    None,
                    1,
                    None,
                );
                let mut buf = vec![0u8; 256];
                let TunnResult::WriteToNetwork(init) =
                    tunn.format_handshake_initiation(&mut buf, false)
                else {
                    panic!("boringtun made no initiation");
                };
                assert!(link.send(init), "the stream takes the initiation");
                for _ in 0..50 {
                    if link.is_closed() {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                false
            })
        })
    }

    pub fn log_tail(&self) -> String {
        format!("nginx error log:\n{}", tail(&self.log, 4000))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // The guard kills nginx by PID; then the hosts files go, whatever happened.
        self.nginx.take();
        for dir in &self.hosts_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Drops every UDP datagram the switch's bridge forwards between nodes (nftables, bridge family); TCP (anvil,
/// the gateway) passes. Dropping it, or [`UdpBlock::off`], lets UDP through again.
pub struct UdpBlock<'a> {
    lan: &'a Lan,
}

impl<'a> UdpBlock<'a> {
    pub fn on(lan: &'a Lan) -> Self {
        require_root(&["nft"]);
        lan.switch.exec_ok(&[
            "nft",
            "add table bridge dm_relay_test { chain forward { type filter hook forward priority 0; meta l4proto udp counter drop; }; }",
        ]);
        Self { lan }
    }

    pub fn off(self) {}
}

impl Drop for UdpBlock<'_> {
    fn drop(&mut self) {
        let _ = self.lan.switch.exec(
            &["nft", "delete", "table", "bridge", "dm_relay_test"],
            Duration::from_secs(5),
        );
    }
}

/// The relay routes of `instances` (node i's instance at index i - 1) on `port`.
pub fn relay_routes(instances: &[String], port: u16) -> Vec<Route> {
    instances
        .iter()
        .enumerate()
        .map(|(i, instance_id)| Route {
            instance_id: instance_id.clone(),
            node: i + 1,
            port,
        })
        .collect()
}

/// A CA, and a wildcard certificate for `*.<TEST_DOMAIN>` it signed: (CA PEM, certificate chain PEM, key PEM).
fn test_pki() -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "dstack-mesh test gateway CA");
    let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().expect("gateway key");
    let leaf = CertificateParams::new(vec![format!("*.{TEST_DOMAIN}")]).expect("gateway params");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .expect("sign the gateway");
    (
        ca_cert.pem(),
        format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        leaf_key.serialize_pem(),
    )
}

fn nginx_conf(dir: &Path, routes: &[Route]) -> String {
    let d = dir.display();
    let mut map = String::new();
    for r in routes {
        let _ = writeln!(map, "        {} {}:{};", r.host(), lan_ip(r.node), r.port);
    }
    format!(
        "load_module {STREAM_MODULE};
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
stream {{
    # Routed by the name the client asked for, as dstack's gateway routes <instance>-<port>.<domain>;
    # the names are long (40-hex instance ids).
    map_hash_bucket_size 256;
    map $ssl_server_name $backend {{
{map}        default 127.0.0.1:9;
    }}
    server {{
        listen {SWITCH_IP}:{GATEWAY_PORT} ssl;
        ssl_certificate {d}/gateway.pem;
        ssl_certificate_key {d}/gateway.key;
        proxy_pass $backend;
        proxy_connect_timeout 5s;
        proxy_timeout 10m;
    }}
}}
"
    )
}

/// `/etc/netns/<ns>/hosts`: the routes' names at the switch, and localhost.
fn write_hosts(ns: &NetNs, routes: &[Route]) -> PathBuf {
    let dir = Path::new("/etc/netns").join(&ns.name);
    std::fs::create_dir_all(&dir).expect("create /etc/netns/<ns>");
    let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for r in routes {
        let _ = writeln!(hosts, "{SWITCH_IP} {}", r.host());
    }
    std::fs::write(dir.join("hosts"), hosts).expect("write the namespace's hosts file");
    dir
}
