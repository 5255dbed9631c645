//! Everything simulated sits here: the CVM's identity, its keys, its measurements, its quote and its
//! certificates. The [`server`](crate::server) only speaks the wire protocol on top of [`Platform`].

use alloy_primitives::{Address, keccak256};
use dstack_guest::wire::{
    DeriveK256KeyResponse, DeriveKeyArgs, DeriveKeyResponse, EventLog, GetKeyArgs, GetKeyResponse,
    GetQuoteResponse, GetTlsKeyArgs, GetTlsKeyResponse, InfoResponse, SignArgs, SignResponse,
    TcbInfo, TdxQuoteArgs, TdxQuoteResponse, VerifyArgs, VerifyResponse, VersionResponse,
};
use k256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use k256::ecdsa::signature::{Signer, Verifier};
use serde_json::json;
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::fixture::Fixture;
use crate::keys::{AppKeys, KeyAlgorithm, KeyError, KmsRootKey};
use crate::quote::{REPORT_DATA_OFFSET, event_log, quote_template, replay_rtmr};
use crate::tls::{KmsCa, LeafSpec, TlsError};

/// The guest-agent version the simulator reports: it serves everything up to `Version` (0.5.7).
pub const AGENT_VERSION: &str = "0.5.7";

/// GetKey path and purpose of the `Sign` API's key (dstack ≥ 0.5.6).
pub const SIGN_KEY_PATH: &str = "vms";
/// See [`SIGN_KEY_PATH`].
pub const SIGN_KEY_PURPOSE: &str = "signing";

/// A failed call, before it becomes an HTTP status in the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The request is wrong; HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    /// The simulator cannot honour this call; HTTP 400 naming it.
    #[error("{what} is not supported by dstack-simulator: {why}")]
    Unsupported {
        /// The method or option.
        what: &'static str,
        /// Why.
        why: &'static str,
    },
    /// A key derivation failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Certificate issuance failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Where the app keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// One of dstack's fixtures, value for value.
    Fixture(&'static Fixture),
    /// A fresh cluster: the app key is derived from this root as a KMS would.
    Cluster {
        /// The KMS root key.
        root: KmsRootKey,
        /// The app id; default: the first 20 bytes of the compose hash, as dstack does.
        app_id: Option<Address>,
    },
}

/// Which instance of the app this simulator is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum InstanceChoice {
    /// The fixture's instance id, or for a cluster the one named `default`.
    #[default]
    Default,
    /// This exact id.
    Id([u8; 20]),
    /// The id [`instance_id_for_name`] gives.
    Name(String),
}

/// What a simulator is configured with.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// The app keys.
    pub keys: KeySource,
    /// The instance.
    pub instance: InstanceChoice,
    /// App-compose `name`; default: the fixture's, or `dstack-mesh`.
    pub app_name: Option<String>,
    /// Sign quotes through this mock Intel PKI, so that a verifier given its root (and collateral) accepts
    /// them; without it quotes are unsigned, as dstack's own simulator's are.
    pub mock_pki: Option<std::sync::Arc<tdx_mock::MockPki>>,
}

/// The instance id for a named simulated instance of `app_id`: the first 20 bytes of
/// sha256(`dstack-simulator/instance:` ‖ name ‖ app_id). Real CVMs hash 20 random bytes with the app id.
pub fn instance_id_for_name(name: &str, app_id: Address) -> [u8; 20] {
    let digest = Sha256::new()
        .chain_update(b"dstack-simulator/instance:")
        .chain_update(name.as_bytes())
        .chain_update(app_id.as_slice())
        .finalize();
    let mut id = [0u8; 20];
    id.copy_from_slice(&digest[..20]);
    id
}

/// The simulated CVM.
#[derive(Debug)]
pub struct Platform {
    app_id: Address,
    instance_id: [u8; 20],
    app_name: String,
    compose_hash: [u8; 32],
    device_id: [u8; 32],
    os_image_hash: Vec<u8>,
    app_compose: String,
    keys: AppKeys,
    kms_root: Option<Address>,
    ca: KmsCa,
    /// Seed for Tappd DeriveKey's deterministic P-256 keys.
    tls_seed: zeroize::Zeroizing<[u8; 32]>,
    mrtd: [u8; 48],
    rtmrs: [[u8; 48]; 4],
    mr_aggregated: [u8; 32],
    event_log: Vec<EventLog>,
    key_provider_info: String,
    vm_config: String,
    app_cert: String,
    quote_template: Vec<u8>,
    mock_pki: Option<std::sync::Arc<tdx_mock::MockPki>>,
}

impl Platform {
    /// Builds the simulated CVM.
    ///
    /// # Errors
    /// [`CallError::Key`] or [`CallError::Tls`] for (negligibly unlikely) invalid derived keys.
    pub fn new(config: SimulatorConfig) -> Result<Self, CallError> {
        let (fixture, app_name) = match &config.keys {
            KeySource::Fixture(f) => (Some(*f), config.app_name.unwrap_or(f.app_name.to_owned())),
            KeySource::Cluster { .. } => (
                None,
                config.app_name.unwrap_or_else(|| "dstack-mesh".to_owned()),
            ),
        };
        let app_compose = app_compose(&app_name);
        let compose_hash = match fixture {
            Some(f) => f.compose_hash,
            None => Sha256::digest(app_compose.as_bytes()).into(),
        };
        let (keys, kms_root, app_id, ca_seed) = match &config.keys {
            KeySource::Fixture(f) => {
                let keys = AppKeys::from_parts(&f.app_key, f.kms_signature)?;
                let seed = keys.secret();
                (keys, Some(f.kms_root), Address::from(f.app_id), seed)
            }
            KeySource::Cluster { root, app_id } => {
                let app_id = app_id.unwrap_or_else(|| Address::from_slice(&compose_hash[..20]));
                let keys = AppKeys::issue(root, app_id)?;
                // Every app under one root shares the CA, as under a real KMS.
                (keys, Some(root.address()), app_id, root.ca_seed())
            }
        };
        let instance_id = match (&config.instance, fixture) {
            (InstanceChoice::Id(id), _) => *id,
            (InstanceChoice::Name(name), _) => instance_id_for_name(name, app_id),
            (InstanceChoice::Default, Some(f)) => f.instance_id,
            (InstanceChoice::Default, None) => instance_id_for_name("default", app_id),
        };
        // The quote header's user_data; real device ids are sha256 of it.
        let user_data: [u8; 20] = match fixture {
            Some(_) => [0; 20],
            None => {
                let d = Sha256::new()
                    .chain_update(b"dstack-simulator/device:")
                    .chain_update(instance_id)
                    .finalize();
                d[..20].try_into().unwrap_or([0; 20])
            }
        };
        let device_id = match fixture {
            Some(f) => f.device_id,
            None => Sha256::digest(user_data).into(),
        };
        let os_image_hash = match fixture {
            Some(f) => f.os_image_hash.to_vec(),
            None => Sha256::digest(b"dstack-simulator/os-image").to_vec(),
        };

        let ca = KmsCa::derive(ca_seed.as_slice())?;
        // Under a mock PKI the simulator stands for a production CVM, whose disk key the cluster's KMS released:
        // verifiers require provider `kms`. Otherwise it says what it is.
        let provider = match (&config.mock_pki, fixture) {
            (Some(_), None) => "kms",
            _ => "simulator",
        };
        let key_provider_info = json!({
            "name": provider,
            "id": hex::encode(ca.public_key_der()),
        })
        .to_string();
        let event_log = event_log(app_id, &compose_hash, &instance_id, &key_provider_info);
        let mrtd: [u8; 48] = Sha384::digest(b"dstack-simulator/mrtd").into();
        let rtmrs = [0, 1, 2, 3].map(|imr| replay_rtmr(&event_log, imr));
        let mut agg = Sha256::new().chain_update(mrtd);
        for r in &rtmrs {
            agg.update(r);
        }
        let mr_aggregated: [u8; 32] = agg.finalize().into();
        let vm_config = json!({
            "spec_version": 1,
            "os_image_hash": hex::encode(&os_image_hash),
            "cpu_count": 2,
            "memory_size": 2u64 << 30,
            "simulated": true,
        })
        .to_string();
        let app_cert = ca
            .issue_random(&LeafSpec {
                subject: format!("{app_name} (simulated app cert)"),
                client_auth: true,
                ..LeafSpec::default()
            })?
            .chain
            .concat();
        let quote_template = quote_template(&user_data, &mrtd, &rtmrs);
        let tls_seed = keys.secret();
        Ok(Self {
            app_id,
            instance_id,
            app_name,
            compose_hash,
            device_id,
            os_image_hash,
            app_compose,
            keys,
            kms_root,
            ca,
            tls_seed,
            mrtd,
            rtmrs,
            mr_aggregated,
            event_log,
            key_provider_info,
            vm_config,
            app_cert,
            quote_template,
            mock_pki: config.mock_pki,
        })
    }

    /// The app id.
    pub fn app_id(&self) -> Address {
        self.app_id
    }

    /// The instance id as lowercase hex.
    pub fn instance_id_hex(&self) -> String {
        hex::encode(self.instance_id)
    }

    /// The KMS root that signed the app key.
    pub fn kms_root(&self) -> Option<Address> {
        self.kms_root
    }

    /// The app key's address.
    pub fn app_address(&self) -> Address {
        self.keys.app_address()
    }

    /// `Info` (and Tappd `Info`).
    pub fn info(&self) -> InfoResponse {
        let tcb = TcbInfo {
            mrtd: hex::encode(self.mrtd),
            rtmr0: hex::encode(self.rtmrs[0]),
            rtmr1: hex::encode(self.rtmrs[1]),
            rtmr2: hex::encode(self.rtmrs[2]),
            rtmr3: hex::encode(self.rtmrs[3]),
            mr_aggregated: hex::encode(self.mr_aggregated),
            os_image_hash: hex::encode(&self.os_image_hash),
            compose_hash: hex::encode(self.compose_hash),
            device_id: hex::encode(self.device_id),
            event_log: self.event_log.clone(),
            app_compose: self.app_compose.clone(),
        };
        InfoResponse {
            app_id: hex::encode(self.app_id),
            instance_id: hex::encode(self.instance_id),
            app_cert: self.app_cert.clone(),
            // The agent pretty-prints this document into a string.
            tcb_info: serde_json::to_string_pretty(&tcb).unwrap_or_default(),
            app_name: self.app_name.clone(),
            device_id: hex::encode(self.device_id),
            mr_aggregated: hex::encode(self.mr_aggregated),
            os_image_hash: hex::encode(&self.os_image_hash),
            key_provider_info: self.key_provider_info.clone(),
            compose_hash: hex::encode(self.compose_hash),
            vm_config: self.vm_config.clone(),
            cloud_vendor: String::new(),
            cloud_product: String::new(),
        }
    }

    /// `GetKey`.
    ///
    /// # Errors
    /// [`CallError::BadRequest`] for an unknown algorithm.
    pub fn get_key(&self, args: &GetKeyArgs) -> Result<GetKeyResponse, CallError> {
        let algorithm = KeyAlgorithm::parse(&args.algorithm).ok_or_else(|| {
            CallError::BadRequest(format!(
                "unsupported algorithm {:?}; use secp256k1 or ed25519",
                args.algorithm
            ))
        })?;
        let (key, chain) = self.keys.get_key(&args.path, &args.purpose, algorithm)?;
        Ok(GetKeyResponse {
            key: hex::encode(key.expose_secret()),
            signature_chain: chain.iter().map(hex::encode).collect(),
        })
    }

    /// Tappd `DeriveK256Key`: GetKey under the legacy names.
    ///
    /// # Errors
    /// As for [`Platform::get_key`].
    pub fn derive_k256_key(
        &self,
        path: &str,
        purpose: &str,
    ) -> Result<DeriveK256KeyResponse, CallError> {
        let r = self.get_key(&GetKeyArgs {
            path: path.to_owned(),
            purpose: purpose.to_owned(),
            algorithm: String::new(),
        })?;
        Ok(DeriveK256KeyResponse {
            k256_key: r.key,
            k256_signature_chain: r.signature_chain,
        })
    }

    /// `GetQuote`: a quote-shaped blob with `report_data` at bytes 568..632. Its signature is absent,
    /// so it proves nothing (as with dstack's own simulator, whose patched quote fails verification).
    ///
    /// # Errors
    /// [`CallError::BadRequest`] when `report_data` exceeds 64 bytes.
    pub fn get_quote(&self, report_data: &[u8]) -> Result<GetQuoteResponse, CallError> {
        let padded = pad_report_data(report_data)?;
        Ok(GetQuoteResponse {
            quote: hex::encode(self.quote(&padded)),
            event_log: self.event_log_json(),
            report_data: hex::encode(padded),
            vm_config: self.vm_config.clone(),
        })
    }

    /// Tappd `TdxQuote`: report data = hash(prefix ‖ data), or the data itself with `raw`.
    ///
    /// # Errors
    /// [`CallError::BadRequest`] for an unknown hash or oversized raw data.
    pub fn tdx_quote(&self, args: &TdxQuoteArgs) -> Result<TdxQuoteResponse, CallError> {
        let algorithm = if args.hash_algorithm.is_empty() {
            "sha512"
        } else {
            args.hash_algorithm.as_str()
        };
        let (report_data, prefix) = if algorithm == "raw" {
            (args.report_data.clone(), String::new())
        } else {
            let prefix = if args.prefix.is_empty() {
                "app-data:".to_owned()
            } else {
                args.prefix.clone()
            };
            let input = [prefix.as_bytes(), &args.report_data].concat();
            let digest = match algorithm {
                "sha256" => Sha256::digest(&input).to_vec(),
                "sha384" => Sha384::digest(&input).to_vec(),
                "sha512" => Sha512::digest(&input).to_vec(),
                "keccak256" => keccak256(&input).to_vec(),
                other => {
                    return Err(CallError::BadRequest(format!(
                        "unsupported hash_algorithm {other:?}; use sha256, sha384, sha512, keccak256 or raw"
                    )));
                }
            };
            (digest, prefix)
        };
        let padded = pad_report_data(&report_data)?;
        Ok(TdxQuoteResponse {
            quote: hex::encode(self.quote(&padded)),
            event_log: self.event_log_json(),
            hash_algorithm: Some(algorithm.to_owned()),
            prefix: Some(prefix),
        })
    }

    /// `Sign` with the key at GetKey path `vms`, purpose `signing`.
    ///
    /// # Errors
    /// [`CallError::BadRequest`] for an unknown algorithm or a prehash that is not 32 bytes.
    pub fn sign(&self, args: &SignArgs) -> Result<SignResponse, CallError> {
        let key = self.keys.derive(SIGN_KEY_PATH);
        let (signature, public_key) = match args.algorithm.as_str() {
            "ed25519" => {
                let sk = ed25519_dalek::SigningKey::from_bytes(key.expose_secret());
                let sig: ed25519_dalek::Signature = ed25519_dalek::Signer::sign(&sk, &args.data);
                (
                    sig.to_bytes().to_vec(),
                    sk.verifying_key().to_bytes().to_vec(),
                )
            }
            "secp256k1" | "secp256k1_prehashed" => {
                let sk = key.signing_key().map_err(|_| KeyError::InvalidScalar {
                    what: "the signing key".into(),
                })?;
                let sig: k256::ecdsa::Signature = if args.algorithm == "secp256k1" {
                    sk.sign(&args.data)
                } else {
                    if args.data.len() != 32 {
                        return Err(CallError::BadRequest(format!(
                            "secp256k1_prehashed needs a 32-byte digest, got {} bytes",
                            args.data.len()
                        )));
                    }
                    sk.sign_prehash(&args.data)
                        .map_err(|_| CallError::BadRequest("cannot sign this digest".into()))?
                };
                (
                    sig.to_bytes().to_vec(),
                    dstack_guest::chain::compressed(sk.verifying_key()).to_vec(),
                )
            }
            other => {
                return Err(CallError::BadRequest(format!(
                    "unsupported algorithm {other:?}; use secp256k1, secp256k1_prehashed or ed25519"
                )));
            }
        };
        let app_signature = self.keys.sign_app_message(SIGN_KEY_PURPOSE, &public_key)?;
        Ok(SignResponse {
            signature: hex::encode(&signature),
            signature_chain: vec![
                hex::encode(&signature),
                hex::encode(app_signature),
                hex::encode(self.keys.kms_signature()),
            ],
            public_key: hex::encode(public_key),
        })
    }

    /// `Verify`.
    ///
    /// # Errors
    /// [`CallError::BadRequest`] for an unknown algorithm or malformed key or signature.
    pub fn verify(&self, args: &VerifyArgs) -> Result<VerifyResponse, CallError> {
        let bad =
            |what: &str| CallError::BadRequest(format!("invalid {what} for {}", args.algorithm));
        let valid = match args.algorithm.as_str() {
            "ed25519" => {
                let pk: [u8; 32] = args
                    .public_key
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("public_key"))?;
                let pk =
                    ed25519_dalek::VerifyingKey::from_bytes(&pk).map_err(|_| bad("public_key"))?;
                let sig = ed25519_dalek::Signature::from_slice(&args.signature)
                    .map_err(|_| bad("signature"))?;
                pk.verify_strict(&args.data, &sig).is_ok()
            }
            "secp256k1" | "secp256k1_prehashed" => {
                let pk = k256::ecdsa::VerifyingKey::from_sec1_bytes(&args.public_key)
                    .map_err(|_| bad("public_key"))?;
                let sig = k256::ecdsa::Signature::from_slice(&args.signature)
                    .map_err(|_| bad("signature"))?;
                if args.algorithm == "secp256k1" {
                    pk.verify(&args.data, &sig).is_ok()
                } else {
                    pk.verify_prehash(&args.data, &sig).is_ok()
                }
            }
            other => {
                return Err(CallError::BadRequest(format!(
                    "unsupported algorithm {other:?}; use secp256k1, secp256k1_prehashed or ed25519"
                )));
            }
        };
        Ok(VerifyResponse { valid })
    }

    /// `Version`.
    pub fn version(&self) -> VersionResponse {
        VersionResponse {
            version: AGENT_VERSION.to_owned(),
            rev: concat!("dstack-mesh-simulator-", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }

    /// `GetTlsKey`: a random P-256 key certified by the simulated KMS CA.
    ///
    /// # Errors
    /// [`CallError::Unsupported`] for RA-TLS and app-info extensions; [`CallError::Tls`] for bad names.
    pub fn get_tls_key(&self, args: &GetTlsKeyArgs) -> Result<GetTlsKeyResponse, CallError> {
        if args.usage_ra_tls {
            return Err(CallError::Unsupported {
                what: "GetTlsKey usage_ra_tls",
                why: "the simulator has no real quote to embed",
            });
        }
        if args.with_app_info {
            return Err(CallError::Unsupported {
                what: "GetTlsKey with_app_info",
                why: "the app-info certificate extension is not simulated",
            });
        }
        let issued = self.ca.issue_random(&LeafSpec {
            subject: args.subject.clone(),
            alt_names: args.alt_names.clone(),
            server_auth: args.usage_server_auth,
            client_auth: args.usage_client_auth,
            not_before: args.not_before,
            not_after: args.not_after,
        })?;
        Ok(GetTlsKeyResponse {
            key: issued.key_pem,
            certificate_chain: issued.chain,
        })
    }

    /// Tappd `DeriveKey`: a P-256 key derived from the app key and `path` (random with `random_seed`).
    ///
    /// # Errors
    /// As for [`Platform::get_tls_key`].
    pub fn derive_tls_key(&self, args: &DeriveKeyArgs) -> Result<DeriveKeyResponse, CallError> {
        if args.usage_ra_tls {
            return Err(CallError::Unsupported {
                what: "DeriveKey usage_ra_tls",
                why: "the simulator has no real quote to embed",
            });
        }
        let spec = LeafSpec {
            subject: if args.subject.is_empty() {
                args.path.clone()
            } else {
                args.subject.clone()
            },
            alt_names: args.alt_names.clone(),
            server_auth: args.usage_server_auth,
            client_auth: args.usage_client_auth,
            ..LeafSpec::default()
        };
        let issued = if args.random_seed {
            self.ca.issue_random(&spec)?
        } else {
            self.ca
                .issue_derived(self.tls_seed.as_slice(), &args.path, &spec)?
        };
        Ok(DeriveKeyResponse {
            key: issued.key_pem,
            certificate_chain: issued.chain,
        })
    }

    fn quote(&self, report_data: &[u8; 64]) -> Vec<u8> {
        if let Some(pki) = &self.mock_pki {
            return pki.quote(&tdx_mock::TdInput::new(self.mrtd, self.rtmrs, *report_data));
        }
        let mut quote = self.quote_template.clone();
        quote[REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + 64].copy_from_slice(report_data);
        quote
    }

    fn event_log_json(&self) -> String {
        serde_json::to_string(&self.event_log).unwrap_or_default()
    }
}

fn pad_report_data(data: &[u8]) -> Result<[u8; 64], CallError> {
    if data.len() > 64 {
        return Err(CallError::BadRequest(format!(
            "report_data is {} bytes; at most 64 are allowed",
            data.len()
        )));
    }
    let mut padded = [0u8; 64];
    padded[..data.len()].copy_from_slice(data);
    Ok(padded)
}

/// A minimal app-compose.json, as the agent's `tcb_info.app_compose` carries it.
fn app_compose(name: &str) -> String {
    serde_json::to_string_pretty(&json!({
        "manifest_version": 2,
        "name": name,
        "runner": "docker-compose",
        "docker_compose_file": "",
        "kms_enabled": true,
        "gateway_enabled": false,
        "public_logs": false,
        "public_sysinfo": false,
        "public_tcbinfo": true,
        "local_key_provider_enabled": false,
        "no_instance_id": false,
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::FIXTURE_A;

    fn fixture_a() -> Platform {
        Platform::new(SimulatorConfig {
            keys: KeySource::Fixture(&FIXTURE_A),
            instance: InstanceChoice::Default,
            app_name: None,
            mock_pki: None,
        })
        .unwrap()
    }

    fn cluster(instance: InstanceChoice) -> Platform {
        Platform::new(SimulatorConfig {
            keys: KeySource::Cluster {
                root: KmsRootKey::from_hex(&"07".repeat(32)).unwrap(),
                app_id: None,
            },
            instance,
            app_name: None,
            mock_pki: None,
        })
        .unwrap()
    }

    /// Fixture A's Info carries the fixture's identity values verbatim.
    #[test]
    fn fixture_a_info_has_fixture_values() {
        let info = fixture_a().info();
        assert_eq!(info.app_id, "ea549f02e1a25fabd1cb788380e033ec5461b2ff");
        assert_eq!(info.instance_id, "59df8036b824b0aac54f8998b9e1fb2a0cfc5d3a");
        assert_eq!(info.app_name, "kvin-nb");
        assert_eq!(
            info.compose_hash,
            "ea549f02e1a25fabd1cb788380e033ec5461b2ffe4328d753642cf035452e48b"
        );
        assert_eq!(
            info.device_id,
            "da2d377e04b7133ec1287a18d465fa44ae9dbb08d929166c6bdb414f38a2acd3"
        );
        assert!(info.key_provider_info.contains("\"simulator\""));
    }

    /// tcb_info is a JSON string whose RTMRs are the replay of its own event log.
    #[test]
    fn tcb_info_rtmrs_replay_from_event_log() {
        let info = cluster(InstanceChoice::Default).info();
        let tcb: TcbInfo = serde_json::from_str(&info.tcb_info).unwrap();
        assert_eq!(tcb.rtmr3, hex::encode(replay_rtmr(&tcb.event_log, 3)));
        assert_ne!(tcb.rtmr3, hex::encode([0u8; 48]));
        assert_eq!(
            tcb.compose_hash,
            hex::encode(Sha256::digest(tcb.app_compose.as_bytes()))
        );
        assert_eq!(
            &info.app_id,
            &tcb.compose_hash[..40],
            "app id defaults to the compose hash"
        );
        assert!(
            tcb.event_log
                .iter()
                .any(|e| e.event == "instance-id" && e.event_payload == info.instance_id)
        );
    }

    /// Report data lands at bytes 568..632, zero-padded; more than 64 bytes is refused.
    #[test]
    fn quote_carries_report_data_at_tdx_offset() {
        let p = fixture_a();
        let r = p.get_quote(b"hello").unwrap();
        let quote = hex::decode(&r.quote).unwrap();
        assert_eq!(&quote[568..573], b"hello");
        assert_eq!(&quote[573..632], &[0u8; 59]);
        assert_eq!(u16::from_le_bytes([quote[0], quote[1]]), 4);
        assert!(matches!(
            p.get_quote(&[1u8; 65]),
            Err(CallError::BadRequest(_))
        ));
    }

    /// Named instances of one app differ in id but share the app key and KMS signature.
    #[test]
    fn named_instances_share_app_key() {
        let a = cluster(InstanceChoice::Name("a".into()));
        let b = cluster(InstanceChoice::Name("b".into()));
        assert_ne!(a.instance_id_hex(), b.instance_id_hex());
        assert_eq!(a.app_address(), b.app_address());
        let args = GetKeyArgs {
            path: "p".into(),
            ..GetKeyArgs::default()
        };
        assert_eq!(
            a.get_key(&args).unwrap().signature_chain,
            b.get_key(&args).unwrap().signature_chain
        );
    }

    /// Sign and Verify agree for every algorithm, and a changed message fails verification.
    #[test]
    fn sign_then_verify_round_trips() {
        let p = fixture_a();
        for algorithm in ["secp256k1", "secp256k1_prehashed", "ed25519"] {
            let data = [7u8; 32].to_vec();
            let s = p
                .sign(&SignArgs {
                    algorithm: algorithm.into(),
                    data: data.clone(),
                })
                .unwrap();
            assert_eq!(s.signature_chain.len(), 3);
            let mut args = VerifyArgs {
                algorithm: algorithm.into(),
                data,
                signature: hex::decode(&s.signature).unwrap(),
                public_key: hex::decode(&s.public_key).unwrap(),
            };
            assert!(p.verify(&args).unwrap().valid, "{algorithm}");
            args.data[0] ^= 1;
            assert!(!p.verify(&args).unwrap().valid, "{algorithm} tampered");
        }
    }

    /// Unknown algorithms fail by name.
    #[test]
    fn unknown_algorithms_fail_by_name() {
        let p = fixture_a();
        let err = p
            .get_key(&GetKeyArgs {
                algorithm: "rsa".into(),
                ..GetKeyArgs::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("\"rsa\""), "{err}");
    }
}
