//! A cluster deployed on a [`Lan`]'s chain, with one `dstack-simulator` per node ([`Cluster`]), and the
//! accounts that own it and hold its seats. `meshctl` runs in the switch namespace, with `DSTACK_MESH_*`
//! variables only.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::str::FromStr as _;
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use mesh_wg::Key;
use serde_json::Value;

use crate::run::process::{
    CMD_TIMEOUT, ChildGuard, clean_env, json_of, run_command_timeout, tail, workspace_bin,
};
use crate::run::wait::wait_until;
use crate::system::lan::{Lan, rpc_url};

/// The app id of every test cluster.
pub const APP_ID: &str = "00112233445566778899aabbccddeeff00112233";

/// anvil's well-known development keys (mnemonic `test … junk`): 0 owns the cluster, i holds seat i (see
/// [`account_key`] for i ≥ 5).
pub const ANVIL_KEYS: [&str; 5] = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
];

/// The overlay address of seat `token` in the default prefix, 10.0.1.0/24 (see [`Cluster::overlay_of`] for
/// a cluster deployed with another).
pub fn overlay_ip(token: u64) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, u8::try_from(token).expect("token id fits a byte"))
}

/// Account `i`'s private key: anvil's development key `i` for the first five, beyond that a key derived
/// from `i` that [`Cluster::deploy`] funds (anvil's other development keys are not in the harness).
pub fn account_key(i: usize) -> String {
    match ANVIL_KEYS.get(i) {
        Some(key) => (*key).to_owned(),
        None => format!(
            "{}",
            alloy::primitives::keccak256(format!("dstack-mesh test account {i}"))
        ),
    }
}

/// The address of account `i` (see [`account_key`]).
pub fn account_address(i: usize) -> String {
    PrivateKeySigner::from_str(&account_key(i))
        .expect("account key parses")
        .address()
        .to_string()
}

/// The default prefix of test clusters, as `meshctl deploy` has it.
pub const DEFAULT_PREFIX: &str = "10.0.1.0/24";

/// Where a cluster's seats are: its mesh prefix, and the seat each node gets (`tokens[i - 1]` is node i's).
/// Seats between them are minted unbound and deactivated, so that only the nodes' seats are active.
#[derive(Debug, Clone)]
pub struct Layout {
    pub prefix: &'static str,
    pub tokens: Vec<u64>,
    /// Nodes that run another release of the app (node i → its app name): the same app id, another
    /// `app-compose.json`, so another compose hash, which the cluster allows beside the first.
    pub releases: Vec<(usize, &'static str)>,
    /// Nodes that run another app than [`APP_ID`] (node i → its app id, 40 hex digits): the cluster allows
    /// every app its nodes run.
    pub apps: Vec<(usize, &'static str)>,
}

impl Layout {
    /// Seat i for node i, in 10.0.1.0/24, all on one release.
    pub fn default_for(nodes: usize) -> Self {
        Self {
            prefix: DEFAULT_PREFIX,
            tokens: (1..=nodes as u64).collect(),
            releases: Vec::new(),
            apps: Vec::new(),
        }
    }

    /// The app node `i` runs.
    fn app_of(&self, i: usize) -> &'static str {
        self.apps
            .iter()
            .find(|(node, _)| *node == i)
            .map_or(APP_ID, |(_, app)| *app)
    }

    /// Every app the nodes run, [`APP_ID`] first.
    fn app_ids(&self) -> Vec<&'static str> {
        let mut apps = vec![APP_ID];
        for (_, app) in &self.apps {
            if !apps.contains(app) {
                apps.push(app);
            }
        }
        apps
    }

    fn prefix(&self) -> mesh_chain::membership::Prefix {
        let (network, len) = self
            .prefix
            .split_once('/')
            .unwrap_or_else(|| panic!("{} is not network/length", self.prefix));
        mesh_chain::membership::Prefix::new(
            network.parse().expect("the prefix's network"),
            len.parse().expect("the prefix's length"),
        )
        .expect("a prefix the contract accepts")
    }
}

/// One simulated CVM of the cluster.
pub struct SimNode {
    /// The app it runs, 40 hex digits.
    pub app_id: &'static str,
    pub socket: PathBuf,
    pub instance_id: String,
    pub log: PathBuf,
    /// The node's sealed keys: on the CVM's volume, so they outlive any one agent process (every agent of the
    /// node uses this file, as `p2p-agent identity` does when the seat is minted).
    pub key_file: PathBuf,
}

impl SimNode {
    /// Waits (bounded) until node `i`'s simulator, run by `guard`, serves its socket.
    fn wait_serving(&self, i: usize, guard: &mut ChildGuard) {
        wait_until(
            &format!(
                "dstack-simulator node-{i} to serve {}",
                self.socket.display()
            ),
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                guard.assert_running();
                self.socket.exists()
            },
            || tail(&self.log, 2000),
        );
    }
}

/// A cluster on the LAN's chain (or any chain, [`Cluster::deploy_at`]): a fresh KMS root key, one
/// `dstack-simulator` per node (all of [`APP_ID`]), the contract deployed by account 0 with `meshctl
/// deploy`, and seat i minted to account i and bound to node i's instance.
pub struct Cluster<'a> {
    /// The LAN whose switch namespace runs `meshctl`; none when the chain is reached from here.
    lan: Option<&'a Lan>,
    rpc_url: String,
    pub contract: String,
    pub kms_root: String,
    /// `sims[i - 1]` is node i's.
    pub sims: Vec<SimNode>,
    /// The simulators, node i's at i - 1; behind a lock so that a node can be upgraded while agents borrow
    /// the cluster.
    guards: std::sync::Mutex<Vec<ChildGuard>>,
    /// The mock PKI's root CA (PEM) and collateral, as the first simulator wrote them: what every agent
    /// verifies its peers' quotes under.
    pub tdx_root_ca: PathBuf,
    pub tdx_collateral: PathBuf,
    /// Where agents started from now on fetch collateral, instead of the pinned file
    /// ([`Cluster::fetch_collateral_from`]).
    pccs_url: std::sync::Mutex<Option<String>>,
    /// The (compose hash, OS measurement) pairs the nodes run.
    images: Vec<(String, String)>,
    /// Node i's seat is `tokens[i - 1]`.
    tokens: Vec<u64>,
    prefix: mesh_chain::membership::Prefix,
    dir: tempfile::TempDir,
}

impl<'a> Cluster<'a> {
    /// Starts a simulator per node of `lan`, deploys and mints; every step is bounded.
    pub fn deploy(lan: &'a Lan) -> Self {
        Self::deploy_seats(lan, lan.nodes.len())
    }

    /// Like [`Cluster::deploy`], but mints only seats `1..=seats`: nodes above that have a simulator (an
    /// instance) and no seat until [`Cluster::mint`] gives them one.
    pub fn deploy_seats(lan: &'a Lan, seats: usize) -> Self {
        let layout = Layout::default_for(lan.nodes.len());
        Self::start(Some(lan), rpc_url(), lan.nodes.len(), seats, &layout)
    }

    /// Like [`Cluster::deploy`], with the prefix and the nodes' seats of `layout`.
    pub fn deploy_layout(lan: &'a Lan, layout: &Layout) -> Self {
        assert_eq!(layout.tokens.len(), lan.nodes.len(), "one seat per node");
        Self::start(
            Some(lan),
            rpc_url(),
            lan.nodes.len(),
            lan.nodes.len(),
            layout,
        )
    }

    /// Like [`Cluster::deploy_layout`], but mints no seat: the nodes' seats are minted later ([`Cluster::mint`]),
    /// after others minted from this process (a benchmark's simulated members).
    pub fn deploy_unminted(lan: &'a Lan, layout: &Layout) -> Self {
        assert_eq!(layout.tokens.len(), lan.nodes.len(), "one seat per node");
        Self::start(Some(lan), rpc_url(), lan.nodes.len(), 0, layout)
    }

    /// What a `dstack-simulator` of this cluster serves, for an instance called `name` simulated in this
    /// process ([`crate::in_process::node::SimulatedInstance::start_with`]): the cluster's KMS root and mock PKI, the test
    /// app, and so the nodes' image.
    ///
    /// # Panics
    /// When the cluster's key files cannot be read.
    pub fn instance_config(&self, name: &str) -> dstack_simulator::platform::SimulatorConfig {
        let read = |file: &str| {
            std::fs::read_to_string(self.dir.path().join(file))
                .unwrap_or_else(|e| panic!("cannot read the cluster's {file}: {e}"))
        };
        let seed: [u8; 32] = alloy::hex::decode(read("mock-pki.seed").trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .expect("the mock PKI seed is 32 bytes of hex");
        dstack_simulator::platform::SimulatorConfig {
            keys: dstack_simulator::platform::KeySource::Cluster {
                root: dstack_simulator::keys::KmsRootKey::from_hex(&read("kms-root.key"))
                    .expect("the cluster's KMS root key"),
                app_id: Some(APP_ID.parse().expect("the app id")),
            },
            instance: dstack_simulator::platform::InstanceChoice::Name(name.to_owned()),
            app_name: None,
            mock_pki: Some(std::sync::Arc::new(tdx_mock::MockPki::from_seed(seed))),
        }
    }

    /// Node `i`'s seat.
    pub fn token_of(&self, i: usize) -> u64 {
        self.tokens[i - 1]
    }

    /// The overlay address of node `i`'s seat in this cluster's prefix.
    pub fn overlay_of(&self, i: usize) -> Ipv4Addr {
        let token = self.token_of(i);
        self.prefix
            .address(token)
            .unwrap_or_else(|| panic!("seat {token} is outside the prefix"))
    }

    /// The lan this cluster's chain is on.
    ///
    /// # Panics
    /// For a cluster made with [`Cluster::deploy_at`].
    pub fn lan(&self) -> &'a Lan {
        self.lan
            .expect("this cluster's chain is not on a Lan (Cluster::deploy_at)")
    }

    /// The chain's JSON-RPC URL.
    pub fn rpc_url(&self) -> &str {
        &self.rpc_url
    }

    /// Upgrades node `i` in place to `release` (an app-compose name, and so another compose hash): its
    /// simulator restarts with the same instance, volume and keys, as a CVM does on `phala deploy --cvm-id`.
    /// Stop its agent first. Returns the new image's compose hash, for the owner to allow.
    pub fn upgrade(&self, i: usize, release: &str) -> String {
        let sim = &self.sims[i - 1];
        let mut guards = self.guards.lock().expect("not poisoned");
        // The old simulator stops (by its PID) before the new one takes the socket.
        guards[i - 1].stop();
        let _ = std::fs::remove_file(&sim.socket);
        guards[i - 1] = spawn_simulator(
            self.dir.path(),
            i,
            sim.app_id,
            Some(release),
            &sim.socket,
            &sim.log,
            None,
        );
        sim.wait_serving(i, &mut guards[i - 1]);
        drop(guards);
        let id = self.identity(i);
        id["compose_hash"]
            .as_str()
            .unwrap_or_else(|| panic!("p2p-agent identity has no compose_hash: {id}"))
            .to_owned()
    }

    /// Stops node `i`'s simulator (by its PID) and removes its socket: dstack's guest agent gone, as the
    /// agent sees it. [`Cluster::start_simulator`] brings it back, the same instance.
    pub fn stop_simulator(&self, i: usize) {
        let sim = &self.sims[i - 1];
        let mut guards = self.guards.lock().expect("not poisoned");
        guards[i - 1].stop();
        let _ = std::fs::remove_file(&sim.socket);
    }

    /// Starts node `i`'s simulator again (its default release), and waits until it serves.
    pub fn start_simulator(&self, i: usize) {
        let sim = &self.sims[i - 1];
        let mut guards = self.guards.lock().expect("not poisoned");
        guards[i - 1] = spawn_simulator(
            self.dir.path(),
            i,
            sim.app_id,
            None,
            &sim.socket,
            &sim.log,
            None,
        );
        sim.wait_serving(i, &mut guards[i - 1]);
    }

    fn start(
        lan: Option<&'a Lan>,
        rpc_url: String,
        nodes: usize,
        seats: usize,
        layout: &Layout,
    ) -> Self {
        assert!(seats <= nodes, "{seats} seats for {nodes} nodes");
        let dir = tempfile::Builder::new()
            .prefix("dm-cluster")
            .tempdir()
            .expect("temp dir");
        let root_key = dir.path().join("kms-root.key");
        let mut seed = [0u8; 32];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .expect("read /dev/urandom");
        write_secret(&root_key, &hex(&seed));
        // One mock "Intel" per cluster: every simulator signs its quotes under it, and every agent trusts its
        // root (the first simulator writes it and the collateral).
        let pki_seed = dir.path().join("mock-pki.seed");
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .expect("read /dev/urandom");
        write_secret(&pki_seed, &hex(&seed));
        let tdx_root_ca = dir.path().join("tdx-root-ca.pem");
        let tdx_collateral = dir.path().join("tdx-collateral.json");

        let mut guards = Vec::new();
        let mut sims = Vec::new();
        for i in 1..=nodes {
            let socket = dir.path().join(format!("node-{i}.sock"));
            let log = dir.path().join(format!("node-{i}.sim.log"));
            let release = layout
                .releases
                .iter()
                .find(|(node, _)| *node == i)
                .map(|(_, name)| *name);
            let writes = (i == 1).then_some((tdx_root_ca.as_path(), tdx_collateral.as_path()));
            guards.push(spawn_simulator(
                dir.path(),
                i,
                layout.app_of(i),
                release,
                &socket,
                &log,
                writes,
            ));
            sims.push(SimNode {
                app_id: layout.app_of(i),
                socket,
                instance_id: String::new(),
                log,
                key_file: dir
                    .path()
                    .join(format!("node-{i}-volume"))
                    .join(p2p_agent::keystore::FILE_NAME),
            });
        }
        let mut cluster = Self {
            lan,
            rpc_url,
            contract: String::new(),
            kms_root: String::new(),
            sims,
            guards: std::sync::Mutex::new(guards),
            tdx_root_ca,
            tdx_collateral,
            pccs_url: std::sync::Mutex::new(None),
            images: Vec::new(),
            tokens: layout.tokens.clone(),
            prefix: layout.prefix(),
            dir,
        };
        let mut kms_roots = Vec::new();
        let mut images = Vec::new();
        for i in 1..=cluster.sims.len() {
            let sim = &cluster.sims[i - 1];
            sim.wait_serving(i, &mut cluster.guards.lock().expect("not poisoned")[i - 1]);
            let id = cluster.identity(i);
            let field = |k: &str| {
                id[k]
                    .as_str()
                    .unwrap_or_else(|| panic!("p2p-agent identity has no {k}: {id}"))
                    .to_owned()
            };
            kms_roots.push(field("kms_signer"));
            images.push((field("compose_hash"), field("os_measurement")));
            cluster.sims[i - 1].instance_id = field("instance_id");
        }
        images.sort();
        images.dedup();
        kms_roots.dedup();
        assert_eq!(
            kms_roots.len(),
            1,
            "the simulators disagree on the KMS root: {kms_roots:?}"
        );
        cluster.kms_root = kms_roots.remove(0);

        // Room for every node's seat, and for the seats minted below them.
        let max_nodes = layout
            .tokens
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(cluster.sims.len() as u64)
            .max(10);
        let deployed = cluster.meshctl(
            0,
            &[
                "deploy",
                "--kms-root",
                &cluster.kms_root.clone(),
                "--app-id",
                &layout
                    .app_ids()
                    .iter()
                    .map(|a| format!("0x{a}"))
                    .collect::<Vec<_>>()
                    .join(","),
                "--prefix",
                layout.prefix,
                "--max-nodes",
                &max_nodes.to_string(),
            ],
        );
        cluster.contract = deployed["contract"]
            .as_str()
            .unwrap_or_else(|| panic!("meshctl deploy printed no contract: {deployed}"))
            .to_owned();
        cluster.images = images;
        cluster.allow_images_at(&cluster.contract.clone());
        for i in ANVIL_KEYS.len()..=cluster.sims.len() {
            cluster.meshctl(0, &["fund", &account_address(i), "--amount", "10"]);
        }
        for i in 1..=seats {
            cluster.mint_inactive_below(cluster.token_of(i));
            cluster.mint(i);
        }
        cluster
    }

    /// Mints unbound seats to account 0, deactivating each, until the next seat is `token`: the seats below
    /// those the layout gives nodes. Sent from this process (from inside the switch's namespace, where the
    /// chain is), not by `meshctl`: a /16 cluster's test mints hundreds.
    fn mint_inactive_below(&self, token: u64) {
        let (rpc, contract, switch) = (
            self.rpc_url.clone(),
            self.contract.clone(),
            self.lan.map(|l| l.switch.name.clone()),
        );
        let minting = std::thread::spawn(move || {
            if let Some(ns) = switch {
                crate::net::netns::enter(&ns);
            }
            crate::run::runtime::block_on(async move {
                let holder = PrivateKeySigner::from_str(&account_key(0))
                    .expect("account 0's key")
                    .address();
                let provider = crate::in_process::chain::signing_provider(&rpc, &account_key(0));
                let c = mesh_chain::contract::DstackClusterNFT::new(
                    contract.parse().expect("the contract address"),
                    provider,
                );
                let last = || async { c.lastTokenId().call().await.expect("lastTokenId") };
                // Bounded: one seat more each time, up to `token`.
                while last().await.to::<u64>().saturating_add(1) < token {
                    crate::in_process::chain::mined(
                        c.mintNodeAccess(holder, mesh_chain::contract::no_binding()),
                    )
                    .await;
                    crate::in_process::chain::mined(c.deactivate(last().await)).await;
                }
            });
        });
        minting
            .join()
            .expect("minting the seats below the nodes' panicked");
    }

    /// A cluster of `nodes` simulated instances and no seat yet, on the chain at `rpc_url`, which this process
    /// reaches (anvil in a container, say): `meshctl` runs here rather than in a namespace. The agents run
    /// elsewhere (in containers) with keys of their own, so their seats are minted and bound from there.
    pub fn deploy_at(rpc_url: String, nodes: usize) -> Cluster<'static> {
        Cluster::start(None, rpc_url, nodes, 0, &Layout::default_for(nodes))
    }

    /// Mints node `i`'s seat (token `i` unless the layout says otherwise) to anvil account `i`, bound to node
    /// `i` with the binding `p2p-agent identity` prints in it (seats are minted in order, so it must be the
    /// next token).
    pub fn mint(&self, i: usize) -> Value {
        assert!(i <= self.sims.len(), "no node for seat {i}");
        let token = self.token_of(i);
        let binding = self.binding_file(i, &account_address(i));
        let minted = self.meshctl(
            0,
            &[
                "mint",
                "--to",
                &account_address(i),
                "--binding",
                binding.to_str().expect("utf-8 path"),
            ],
        );
        assert_eq!(
            minted["tokenId"].as_u64(),
            Some(token),
            "node {i}'s seat must be token {token}: {minted}"
        );
        minted
    }

    /// The binding of node `i` for `holder`, as `p2p-agent identity --bind-holder` prints it in the node (its
    /// key file, its simulator), in a file for `meshctl --binding`.
    pub fn binding_file(&self, i: usize, holder: &str) -> PathBuf {
        self.binding_file_at(&self.contract, i, holder)
    }

    /// Like [`Cluster::binding_file`], for the cluster at `contract` (another one on the same chain).
    pub fn binding_file_at(&self, contract: &str, i: usize, holder: &str) -> PathBuf {
        let sim = &self.sims[i - 1];
        let mut cmd = Command::new(workspace_bin("p2p-agent"));
        clean_env(&mut cmd)
            .args(["identity", "--dstack-endpoint"])
            .arg(&sim.socket)
            .arg("--node-key-file")
            .arg(&sim.key_file)
            .args(["--bind-holder", holder])
            // Every test chain is anvil, chain id 31337 (the node need not reach the RPC to bind).
            .args(["--contract", contract, "--chain-id", "31337"]);
        let out = run_command_timeout(cmd, "p2p-agent identity --bind-holder", CMD_TIMEOUT);
        assert!(
            out.status.success(),
            "p2p-agent identity --bind-holder {holder} (node {i}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = self
            .dir
            .path()
            .join(format!("binding-{contract}-{i}-for-{holder}.json"));
        std::fs::write(&file, &out.stdout).expect("write the binding");
        file
    }

    /// As the owner of the cluster at `contract` (this one, or another deployed on the same chain), allows the
    /// images the nodes run, as it would a new release: agents and `meshctl` accept no other.
    pub fn allow_images_at(&self, contract: &str) {
        for (compose, os) in &self.images {
            self.meshctl(
                0,
                &["app-auth", "allow-compose", compose, "--contract", contract],
            );
            self.meshctl(0, &["app-auth", "allow-os", os, "--contract", contract]);
        }
    }

    /// The agent flags that make it verify quotes under this cluster's mock PKI, with the pinned collateral
    /// or from the PCCS set by [`Cluster::fetch_collateral_from`].
    pub fn trust_args(&self) -> Vec<String> {
        let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
        let collateral = match self
            .pccs_url
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            Some(url) => ["--pccs-url".into(), url],
            None => ["--tdx-collateral-file".into(), path(&self.tdx_collateral)],
        };
        let mut args = vec!["--tdx-root-ca".into(), path(&self.tdx_root_ca)];
        args.extend(collateral);
        args
    }

    /// Agents started from now on fetch collateral from the PCCS at `url` (a mock one the test publishes
    /// to), not the pinned file.
    pub fn fetch_collateral_from(&self, url: &str) {
        *self
            .pccs_url
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(url.to_owned());
    }

    /// The mock PKI every simulator of this cluster signs under, for a test to make collateral with.
    pub fn mock_pki(&self) -> tdx_mock::MockPki {
        let seed =
            std::fs::read_to_string(self.dir().join("mock-pki.seed")).expect("mock-pki.seed");
        let bytes: [u8; 32] = alloy::hex::decode(seed.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .expect("32 bytes of hex in mock-pki.seed");
        tdx_mock::MockPki::from_seed(bytes)
    }

    /// `p2p-agent identity --json` for node `i`'s simulator.
    pub fn identity(&self, i: usize) -> Value {
        let mut cmd = Command::new(workspace_bin("p2p-agent"));
        clean_env(&mut cmd)
            .args(["identity", "--json", "--dstack-endpoint"])
            .arg(&self.sims[i - 1].socket)
            .arg("--node-key-file")
            .arg(&self.sims[i - 1].key_file);
        let out = run_command_timeout(cmd, "p2p-agent identity", CMD_TIMEOUT);
        json_of(&format!("p2p-agent identity (node {i})"), &out)
    }

    /// `meshctl --json <args>` in the switch namespace, signed by anvil account `signer`, against this
    /// cluster; panics with its output unless it succeeds and prints JSON.
    pub fn meshctl(&self, signer: usize, args: &[&str]) -> Value {
        let out = self.meshctl_output(signer, args);
        json_of(&format!("meshctl {}", args.join(" ")), &out)
    }

    /// `meshctl --json <args>` in the switch namespace (or here), whatever its exit status.
    pub fn meshctl_output(&self, signer: usize, args: &[&str]) -> Output {
        let bin = workspace_bin("meshctl");
        let mut cmd = match self.lan {
            Some(lan) => lan
                .switch
                .command(&[bin.to_str().expect("utf-8 path"), "--json"]),
            None => {
                let mut cmd = Command::new(&bin);
                cmd.arg("--json");
                cmd
            }
        };
        clean_env(&mut cmd)
            .args(args)
            .env("DSTACK_MESH_RPC_URL", &self.rpc_url)
            .env("DSTACK_MESH_PRIVATE_KEY", account_key(signer))
            // `mint` and `bind` verify a binding's quote as the agents do.
            .env("DSTACK_MESH_TDX_ROOT_CA", &self.tdx_root_ca)
            .env("DSTACK_MESH_TDX_COLLATERAL_FILE", &self.tdx_collateral);
        if !self.contract.is_empty() {
            cmd.env("DSTACK_MESH_CONTRACT", &self.contract);
        }
        run_command_timeout(cmd, &format!("meshctl {}", args.join(" ")), CMD_TIMEOUT)
    }

    /// The on-chain records (`meshctl peers --json`, every proof re-verified off-chain).
    pub fn peers(&self) -> Vec<Value> {
        let v = self.meshctl(0, &["peers"]);
        v["peers"]
            .as_array()
            .unwrap_or_else(|| panic!("meshctl peers printed no peers: {v}"))
            .clone()
    }

    /// The on-chain WireGuard key of seat `token`, if it has a record.
    pub fn onchain_key(&self, token: u64) -> Option<Key> {
        self.peers()
            .into_iter()
            .find(|p| p["tokenId"].as_u64() == Some(token))
            .and_then(|p| p["wgPublicKey"].as_str().and_then(|k| k.parse().ok()))
    }

    /// Where the cluster keeps its files (key, sockets, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        // Simulators stop (by PID) before their temp dir goes.
        self.guards.lock().map(|mut g| g.clear()).ok();
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a secret to a new file readable by its owner only.
pub(crate) fn write_secret(path: &Path, contents: &str) {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    writeln!(f, "{contents}").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Starts node `i`'s dstack simulator in the cluster's directory `dir` (its KMS root and mock PKI), on
/// `release` (another app-compose name) if given; the first also writes the PKI's root and collateral.
fn spawn_simulator(
    dir: &Path,
    i: usize,
    app_id: &str,
    release: Option<&str>,
    socket: &Path,
    log: &Path,
    writes: Option<(&Path, &Path)>,
) -> ChildGuard {
    let simulator = workspace_bin("dstack-simulator");
    let logf = File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("simulator log");
    let mut cmd = Command::new(&simulator);
    clean_env(&mut cmd)
        .arg("--kms-root-key-file")
        .arg(dir.join("kms-root.key"))
        .args(["--app-id", app_id, "--instance-name", &format!("node-{i}")])
        .args(release.into_iter().flat_map(|name| ["--app-name", name]))
        .arg("--mock-pki-seed-file")
        .arg(dir.join("mock-pki.seed"))
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().expect("dup log"))
        .stderr(logf);
    if let Some((root_ca, collateral)) = writes {
        cmd.arg("--write-tdx-root-ca")
            .arg(root_ca)
            .arg("--write-collateral")
            .arg(collateral);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", simulator.display()));
    ChildGuard::new(format!("dstack-simulator node-{i}"), child)
}
