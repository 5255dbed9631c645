//! `meshctl` run against an in-process anvil ([`crate::in_process::chain`]) with a chosen signer and only
//! `DSTACK_MESH_*` variables, for the CLI's tests that need no namespace.

use std::process::Command;

use alloy::node_bindings::AnvilInstance;
use alloy::primitives::Address;
use serde_json::Value;

pub use crate::in_process::chain::anvil;
pub use crate::in_process::node::{APP_ID, SimulatedInstance as Instance};
use crate::run::process::workspace_bin;

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

    /// Panics with stderr unless it contains `text`.
    pub fn stderr_says(&self, text: &str) -> &Self {
        assert!(
            self.stderr.contains(text),
            "stderr lacks {text:?}: {}",
            self.stderr
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
    /// The in-process instances' mock root CA and collateral ([`crate::in_process::node::trust_args`]), which `mint` and
    /// `bind` verify bindings under.
    trust: Vec<String>,
    _trust_dir: tempfile::TempDir,
}

impl<'a> Meshctl<'a> {
    /// meshctl against `anvil`, with no cluster yet.
    pub fn new(anvil: &'a AnvilInstance) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self {
            anvil,
            contract: None,
            trust: crate::in_process::node::trust_args(dir.path()),
            _trust_dir: dir,
        }
    }

    pub fn run(&self, signer: Option<usize>, args: &[&str]) -> Run {
        self.run_via(&self.anvil.endpoint(), signer, args)
    }

    /// Like [`Meshctl::run`], through another RPC URL (a lying proxy, say).
    pub fn run_via(&self, rpc_url: &str, signer: Option<usize>, args: &[&str]) -> Run {
        self.run_with(rpc_url, signer, args, &[])
    }

    /// Like [`Meshctl::run_via`], with the variables in `env` set (`Some`) or unset (`None`) last.
    pub fn run_with(
        &self,
        rpc_url: &str,
        signer: Option<usize>,
        args: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> Run {
        let mut cmd = Command::new(workspace_bin("meshctl"));
        cmd.args(args).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.env("DSTACK_MESH_RPC_URL", rpc_url);
        // `--tdx-root-ca FILE --tdx-collateral-file FILE`, given by their variables so that any command
        // takes them (only `mint` and `bind` read them).
        for pair in self.trust.chunks(2) {
            let name = format!(
                "DSTACK_MESH_{}",
                pair[0]
                    .trim_start_matches("--")
                    .replace('-', "_")
                    .to_uppercase()
            );
            cmd.env(name, &pair[1]);
        }
        if let Some(c) = self.contract {
            cmd.env("DSTACK_MESH_CONTRACT", c.to_string());
        }
        if let Some(i) = signer {
            cmd.env(
                "DSTACK_MESH_PRIVATE_KEY",
                alloy::hex::encode(self.anvil.keys()[i].to_bytes()),
            );
        }
        for (name, value) in env {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
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
        // The owner allows the image the instances run, as for a new release.
        let (compose, os) = crate::in_process::node::image();
        self.run(
            Some(0),
            &["app-auth", "allow-compose", &compose.to_string()],
        )
        .ok();
        self.run(Some(0), &["app-auth", "allow-os", &os.to_string()])
            .ok();
        address
    }

    /// Deploys a cluster for `node`'s KMS root ([`Meshctl::deploy`]) and mints seat 1 to account 1, bound
    /// to `node`'s instance.
    pub async fn deploy_with_seat(&mut self, node: &Instance) -> Address {
        let contract = self.deploy(node.kms_root);
        let binding = self.binding_file(node, self.address(1)).await;
        self.run(
            Some(0),
            &[
                "mint",
                "--to",
                &self.address(1).to_string(),
                "--binding",
                binding.to_str().expect("utf-8 path"),
            ],
        )
        .ok();
        contract
    }

    /// `node`'s binding to a seat of this cluster for `holder`, in a file for `--binding` (removed when
    /// dropped).
    pub async fn binding_file(&self, node: &Instance, holder: Address) -> tempfile::TempPath {
        let contract = self.contract.expect("deploy first");
        let binding = node.binding(holder, self.anvil.chain_id(), contract).await;
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(
            file.path(),
            serde_json::to_string_pretty(&binding).expect("json"),
        )
        .expect("write the binding");
        file.into_temp_path()
    }

    pub fn address(&self, i: usize) -> Address {
        self.anvil.addresses()[i]
    }
}
