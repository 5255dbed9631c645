//! A simulated dstack instance served in-process on a socket in a temp dir, as one CVM of the test cluster's
//! app: the agent's real dstack client talks to it, and it keeps its node keys and signs records and bindings
//! exactly as an agent would.

use std::sync::Arc;

use alloy::primitives::{Address, B256, U256};
use dstack_guest::{DstackClient, Endpoint};
use dstack_simulator::{
    keys::KmsRootKey,
    platform::{InstanceChoice, KeySource, Platform, SimulatorConfig},
    server::{UnixSocket, serve},
};
use mesh_chain::record::{NodeBinding, PeerRecord, SignedRegistration};
use owned_task::Task;

/// The test cluster's KMS root private key (a throwaway, never a real key).
pub const KMS_ROOT_KEY: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
/// The test cluster's app id.
pub const APP_ID: &str = "0x00112233445566778899aabbccddeeff00112233";

/// The in-process instances' mock "Intel" seed: every [`SimulatedInstance`] signs its quotes under the one PKI it
/// makes (a throwaway, never a real key).
pub const MOCK_PKI_SEED: [u8; 32] = [0x5e; 32];

/// The mock PKI of [`MOCK_PKI_SEED`].
pub fn mock_pki() -> Arc<tdx_mock::MockPki> {
    Arc::new(tdx_mock::MockPki::from_seed(MOCK_PKI_SEED))
}

/// Writes the mock PKI's root CA and collateral (valid from a day ago for 30 days) into `dir`, and returns the
/// agent flags that verify quotes under them.
///
/// # Panics
/// When the files cannot be written.
pub fn trust_args(dir: &std::path::Path) -> Vec<String> {
    let pki = mock_pki();
    let root = dir.join("tdx-root-ca.pem");
    let collateral = dir.join("tdx-collateral.json");
    std::fs::write(&root, pki.root_ca_pem()).expect("write the mock root CA");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let opts = tdx_mock::CollateralOptions::valid_from(now, 30);
    std::fs::write(&collateral, pki.collateral_json(&opts)).expect("write the mock collateral");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
    vec![
        "--tdx-root-ca".into(),
        path(&root),
        "--tdx-collateral-file".into(),
        path(&collateral),
    ]
}

/// The compose hash and OS image the in-process instances' quotes claim (they all run one image): what the
/// cluster owner allowlists.
///
/// # Panics
/// When the simulated platform cannot be built.
pub fn image() -> (B256, B256) {
    let platform = Platform::new(config("image-probe")).expect("simulated platform");
    let quote = platform.get_quote(&[0; 64]).expect("GetQuote");
    let bytes = alloy::hex::decode(&quote.quote).expect("hex quote");
    let evidence = mesh_attest::Evidence::from_dstack(&bytes, &quote.event_log)
        .expect("the simulator's evidence");
    let claimed = mesh_attest::claimed_measurements(&evidence).expect("claimed measurements");
    (
        B256::from(claimed.compose_hash),
        B256::from(claimed.os_measurement),
    )
}

/// The configuration of the instance called `name` of the test cluster's app.
fn config(name: &str) -> SimulatorConfig {
    SimulatorConfig {
        mock_pki: Some(mock_pki()),
        keys: KeySource::Cluster {
            root: KmsRootKey::from_hex(KMS_ROOT_KEY).expect("root key"),
            app_id: Some(APP_ID.parse().expect("app id")),
        },
        instance: InstanceChoice::Name(name.into()),
        app_name: None,
    }
}

/// One simulated CVM; its server stops when this is dropped.
pub struct SimulatedInstance {
    pub client: DstackClient,
    pub socket: std::path::PathBuf,
    pub instance_id: String,
    pub app_id: Address,
    pub kms_root: Address,
    _dir: tempfile::TempDir,
    _server: Task<()>,
}

impl SimulatedInstance {
    /// Starts the instance called `name` of the test cluster's app. Call inside a tokio runtime.
    ///
    /// # Panics
    /// When the socket cannot be bound.
    pub async fn start(name: &str) -> Self {
        Self::start_with(config(name)).await
    }

    /// Starts the instance `config` describes: of another cluster's app, such as a [`crate::system::cluster::Cluster`]'s
    /// ([`crate::system::cluster::Cluster::instance_config`]). Call inside a tokio runtime.
    ///
    /// # Panics
    /// When the platform cannot be built, or the socket bound.
    pub async fn start_with(config: SimulatorConfig) -> Self {
        let platform = Platform::new(config).expect("simulated platform");
        let kms_root = platform
            .kms_root()
            .expect("a cluster's instance has a KMS root");
        let instance_id = platform.instance_id_hex();
        let app_id = platform.app_id();
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("dstack.sock");
        let unix = UnixSocket::bind(&socket)
            .await
            .expect("bind simulator socket");
        // Dropping the task stops the server, and with it the socket (removed with its file).
        let server = Task::spawn("simulator", async move {
            serve(Arc::new(platform), &unix, None, std::future::pending()).await;
        });
        Self {
            client: DstackClient::new(Endpoint::Unix(socket.clone())),
            socket,
            instance_id,
            app_id,
            kms_root,
            _dir: dir,
            _server: server,
        }
    }

    /// This instance's sealed key file (its "volume"): the agent's, when one runs for it.
    pub fn key_file(&self) -> std::path::PathBuf {
        self._dir.path().join(p2p_agent::keystore::FILE_NAME)
    }

    /// This instance's identity, as its agent has it: node and WireGuard keys (epoch `wg_epoch`) from its key
    /// file, made there on first use.
    ///
    /// # Panics
    /// When the simulator does not answer or the key file does not open.
    pub async fn identity(&self, wg_epoch: u32) -> p2p_agent::node::NodeIdentity {
        p2p_agent::node::NodeIdentity::load(&self.client, &self.key_file(), wg_epoch)
            .await
            .expect("identity")
    }

    /// This instance's binding for `holder`, as `p2p-agent identity --bind-holder` makes it:
    /// its node key, dstack's chain, its quote (report data for this chain, contract and node) and its consent.
    ///
    /// # Panics
    /// When the simulator does not answer.
    pub async fn binding(&self, holder: Address, chain_id: u64, contract: Address) -> NodeBinding {
        let identity = self.identity(0).await;
        self.bind_with(&identity.node, holder, chain_id, contract)
            .await
    }

    /// A binding of `node` for `holder`, with this instance's own quote committing to `node`.
    async fn bind_with(
        &self,
        node: &mesh_chain::node_key::NodeKey,
        holder: Address,
        chain_id: u64,
        contract: Address,
    ) -> NodeBinding {
        let quote = self
            .client
            .get_quote(&mesh_attest::report_data(
                chain_id,
                contract,
                node.address(),
            ))
            .await
            .expect("GetQuote");
        let evidence =
            mesh_attest::Evidence::from_dstack(&quote.quote, &quote.event_log).expect("evidence");
        node.bind(holder, evidence.encode().into(), chain_id, contract)
            .expect("bind")
    }

    /// What this instance, a sibling of `victim`'s app, can make to claim `victim`'s instance id for a seat:
    /// its own node key, with a genuine chain from the app whose purpose names `victim` (dstack's GetKey is per
    /// app), and its own genuine quote, whose event log names this instance. The contract takes it; every
    /// agent refuses it as `instance-mismatch`.
    ///
    /// # Panics
    /// When the simulator does not answer.
    pub async fn sibling_binding(
        &self,
        victim: &str,
        holder: Address,
        chain_id: u64,
        contract: Address,
    ) -> NodeBinding {
        let node = sibling_node_key(&self.client, &self.key_file(), victim).await;
        self.bind_with(&node, holder, chain_id, contract).await
    }

    /// Registers this instance's record for its seat as the agent would: its WireGuard key, `endpoint` and
    /// `gateway_url`, paid by anvil account `payer` (not the owner's: the owner's provider caches its nonce).
    ///
    /// # Panics
    /// When the registration fails.
    pub async fn register(
        &self,
        anvil: &alloy::node_bindings::AnvilInstance,
        contract: Address,
        endpoint: &str,
        gateway_url: &str,
        payer: usize,
    ) -> mesh_chain::registration::Outcome {
        let identity = self.identity(0).await;
        let cluster = mesh_chain::cluster::Cluster::connect(
            mesh_chain::rpc::Rpcs::one(anvil.endpoint_url()).expect("anvil's URL"),
            contract,
        )
        .await
        .expect("connect");
        let desired = mesh_chain::registration::Desired {
            wg_public_key: Some(identity.wg_public_key()),
            endpoint: endpoint.into(),
            gateway_url: gateway_url.into(),
        };
        let key: alloy::signers::local::PrivateKeySigner = anvil.keys()[payer].clone().into();
        let pins = cluster.contract_pins().await.expect("the cluster's pins");
        cluster
            .register(&identity.node, &desired, Some(&key), &pins)
            .await
            .expect("register")
    }

    /// A record for seat `token_id`, proven by this instance's dstack chain and signed by its node key.
    ///
    /// # Panics
    /// When the simulator does not answer.
    pub async fn sign(
        &self,
        token_id: u64,
        wg_key: B256,
        endpoint: &str,
        nonce: u64,
        chain_id: u64,
        contract: Address,
    ) -> SignedRegistration {
        let identity = self.identity(0).await;
        let record = PeerRecord {
            tokenId: U256::from(token_id),
            instanceId: self.instance_id.clone(),
            wgPublicKey: wg_key,
            endpoint: endpoint.into(),
            gatewayUrl: String::new(),
            nonce,
        };
        identity
            .node
            .sign(record, chain_id, contract)
            .expect("sign")
    }
}

/// What the instance behind `client` (its keys in `key_file`) can make for another instance's seat: its own
/// node key, with a genuine chain from the app (GetKey) whose purpose names `victim` and that key. dstack's
/// GetKey is per app, so nothing stops a sibling from asking for that purpose.
///
/// # Panics
/// When the simulator does not answer, or the key file does not open.
pub async fn sibling_node_key(
    client: &DstackClient,
    key_file: &std::path::Path,
    victim: &str,
) -> mesh_chain::node_key::NodeKey {
    let own = p2p_agent::node::NodeIdentity::load(client, key_file, 0)
        .await
        .expect("its own identity");
    let mut info = client.info().await.expect("Info");
    info.instance_id = victim.to_owned();
    let seal = client
        .get_key(
            p2p_agent::keystore::SEAL_KEY_PATH,
            p2p_agent::keystore::SEAL_KEY_PURPOSE,
        )
        .await
        .expect("GetKey");
    let keys = p2p_agent::keystore::open_or_create(
        key_file,
        &p2p_agent::keystore::SealKey::from_bytes(*seal.key.expose_secret()),
        own.instance_id(),
        0,
    )
    .expect("its own keys");
    mesh_chain::node_key::NodeKey::load(client, &info, keys.node_key())
        .await
        .expect("a chain naming the victim's instance")
}
