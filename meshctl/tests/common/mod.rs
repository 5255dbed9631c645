//! Harness for meshctl's tests: a real anvil (killed on drop), the meshctl binary run with a chosen
//! environment, and a simulated dstack instance served in-process on a socket in a temp dir.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::{path::PathBuf, process::Command, sync::Arc};

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::{Address, B256, U256};
use dstack_simulator::{
    keys::KmsRootKey,
    platform::{InstanceChoice, KeySource, Platform, SimulatorConfig},
    server::{UnixSocket, serve},
};
use p2p_agent::{
    dstack::{DstackClient, Endpoint},
    proof::{self, DstackProof, PeerRecord, SignedRegistration},
};
use serde_json::Value;

/// A fixed KMS root for the simulated cluster (never a real key).
pub const KMS_ROOT_KEY: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
/// The simulated cluster's app id.
pub const APP_ID: &str = "0x00112233445566778899aabbccddeeff00112233";

/// anvil from `ANVIL`, else the npm toolchain that `scripts/bootstrap` installs.
pub fn anvil_path() -> PathBuf {
    if let Some(p) = std::env::var_os("ANVIL") {
        return p.into();
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../node_modules/.bin/anvil");
    assert!(
        p.exists(),
        "anvil not found at {}: run scripts/bootstrap (or set ANVIL)",
        p.display()
    );
    p
}

/// A fresh chain on a free loopback port.
pub fn anvil() -> AnvilInstance {
    Anvil::at(anvil_path()).try_spawn().expect("anvil starts")
}

/// The result of one meshctl run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The stdout parsed as JSON; panics with both streams when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "meshctl printed no JSON ({e}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "meshctl failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn failed(self) -> Self {
        assert_ne!(
            self.code, 0,
            "meshctl should have failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// meshctl against one chain, signing with one of anvil's keys (index `signer`), or none.
pub struct Meshctl<'a> {
    pub anvil: &'a AnvilInstance,
    pub contract: Option<Address>,
}

impl Meshctl<'_> {
    pub fn run(&self, signer: Option<usize>, args: &[&str]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshctl"));
        cmd.args(args)
            .env("RPC_URL", self.anvil.endpoint())
            .env_remove("PRIVATE_KEY")
            .env_remove("PRIVATE_KEY_FILE")
            .env_remove("CLUSTER_CONTRACT");
        if let Some(c) = self.contract {
            cmd.env("CLUSTER_CONTRACT", c.to_string());
        }
        if let Some(i) = signer {
            cmd.env(
                "PRIVATE_KEY",
                alloy::hex::encode(self.anvil.keys()[i].to_bytes()),
            );
        }
        let out = cmd.output().expect("run meshctl");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Deploys a cluster for the simulated app, owned by anvil account 0, and remembers its address.
    pub fn deploy(&mut self, kms_root: Address) -> Address {
        let out = self
            .run(
                Some(0),
                &[
                    "deploy",
                    "--kms-root",
                    &kms_root.to_string(),
                    "--app-id",
                    APP_ID,
                    "--json",
                ],
            )
            .ok()
            .json();
        let address: Address = out["contract"]
            .as_str()
            .expect("contract in deploy JSON")
            .parse()
            .expect("address");
        self.contract = Some(address);
        address
    }

    pub fn address(&self, i: usize) -> Address {
        self.anvil.addresses()[i]
    }
}

/// A simulated dstack instance of the test cluster's app, served in-process until dropped.
pub struct Instance {
    pub client: DstackClient,
    pub instance_id: String,
    pub app_id: Address,
    pub kms_root: Address,
    _dir: tempfile::TempDir,
    _server: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Instance {
    pub async fn start(name: &str) -> Self {
        let root = KmsRootKey::from_hex(KMS_ROOT_KEY).expect("root key");
        let kms_root = root.address();
        let platform = Platform::new(SimulatorConfig {
            keys: KeySource::Cluster {
                root,
                app_id: Some(APP_ID.parse().expect("app id")),
            },
            instance: InstanceChoice::Name(name.into()),
            app_name: None,
        })
        .expect("simulated platform");
        let instance_id = platform.instance_id_hex();
        let app_id = platform.app_id();
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("dstack.sock");
        let unix = UnixSocket::bind(&socket)
            .await
            .expect("bind simulator socket");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve(Arc::new(platform), &unix, None, async {
                let _ = stopped.await;
            })
            .await;
        });
        Self {
            client: DstackClient::new(Endpoint::Unix(socket)),
            instance_id,
            app_id,
            kms_root,
            _dir: dir,
            _server: server,
            stop: Some(stop),
        }
    }

    /// What the agent signs for its seat: a record proven by this instance's dstack chain.
    pub async fn sign(
        &self,
        token_id: u64,
        wg_key: B256,
        endpoint: &str,
        nonce: u64,
        chain_id: u64,
        contract: Address,
    ) -> SignedRegistration {
        let purpose = proof::purpose(&self.instance_id);
        let reply = self
            .client
            .get_key(&proof::key_path(&self.instance_id), &purpose)
            .await
            .expect("GetKey");
        let p = DstackProof::from_get_key(&reply, self.app_id, &purpose).expect("proof");
        let record = PeerRecord {
            tokenId: U256::from(token_id),
            instanceId: self.instance_id.clone(),
            wgPublicKey: wg_key,
            endpoint: endpoint.into(),
            gatewayUrl: String::new(),
            nonce,
        };
        SignedRegistration::sign(record, p, &reply.key, chain_id, contract).expect("sign")
    }
}
