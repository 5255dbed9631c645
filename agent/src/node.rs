//! Who this node is: its instance and app as dstack reports them, its node key (which signs its records, its
//! binding and its ballots, [`NodeKey`]) and its WireGuard key.
//!
//! Both keys are made inside the CVM from randomness and kept sealed on its own volume ([`keystore`]); dstack's
//! GetKey is used only for what every instance of the app may share: the chain in which the app vouches for
//! the node key, and the key that seals the file. So a restart keeps both keys and needs no transaction, and a
//! sibling instance of the app cannot obtain either. Rotating the WireGuard key means moving to the next epoch
//! (`--wg-key-epoch`), which makes a new random key, and registering its public key.
//!
//! [`keystore`]: crate::keystore

use std::path::Path;

use dstack_guest::{DstackClient, DstackError};
use mesh_chain::node_key::{NodeKey, NodeKeyError};
use mesh_wg::{Key, PrivateKey};

use crate::keystore::{self, KeyStoreError, SealKey};

/// Errors establishing the node's identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("dstack {call} failed: {source}")]
    Dstack {
        call: &'static str,
        #[source]
        source: DstackError,
    },
    #[error(transparent)]
    NodeKey(#[from] NodeKeyError),
    #[error(transparent)]
    KeyStore(#[from] KeyStoreError),
    #[error(
        "this CVM has no instance id (its app-compose sets no_instance_id): dstack-mesh binds seats to instance ids"
    )]
    NoInstanceId,
}

/// This node's identity.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The node key, with the instance and app it belongs to.
    pub node: NodeKey,
    pub app_name: String,
    wg_private_key: PrivateKey,
}

impl NodeIdentity {
    /// Reads Info, opens (or makes) the node's keys at `key_file` with a WireGuard key for `wg_epoch`, and asks
    /// dstack for the chain that vouches for the node key.
    ///
    /// # Errors
    /// [`IdentityError`] naming the dstack call that failed, a key file that does not open, or a missing
    /// instance id.
    pub async fn load(
        client: &DstackClient,
        key_file: &Path,
        wg_epoch: u32,
    ) -> Result<Self, IdentityError> {
        let info = client
            .info()
            .await
            .map_err(|source| IdentityError::Dstack {
                call: "Info",
                source,
            })?;
        if info.instance_id.is_empty() {
            return Err(IdentityError::NoInstanceId);
        }
        let seal = client
            .get_key(keystore::SEAL_KEY_PATH, keystore::SEAL_KEY_PURPOSE)
            .await
            .map_err(|source| IdentityError::Dstack {
                call: "GetKey",
                source,
            })?;
        let seal = SealKey::from_bytes(*seal.key.expose_secret());
        let file = key_file.to_owned();
        let instance = info.instance_id.clone();
        // File I/O and fsync: off the runtime's worker.
        let keys = tokio::task::spawn_blocking(move || {
            keystore::open_or_create(&file, &seal, &instance, wg_epoch)
        })
        .await
        .expect("the key store does not panic")?;
        let wg_private_key = keys
            .wireguard(wg_epoch)
            .expect("open_or_create makes the epoch's key");
        let node = NodeKey::load(client, &info, keys.node_key()).await?;
        Ok(Self {
            node,
            app_name: info.app_name,
            wg_private_key,
        })
    }

    /// 40 lowercase hex characters.
    pub fn instance_id(&self) -> &str {
        &self.node.instance_id
    }

    /// The app this instance runs, as dstack names it.
    pub fn app_id(&self) -> alloy::primitives::Address {
        self.node.app_id
    }

    /// The WireGuard public key.
    pub fn wg_public_key(&self) -> Key {
        self.wg_private_key.public_key()
    }

    /// The WireGuard private key, for the data plane. Callers must not log or persist it.
    pub fn wg_private_key(&self) -> &PrivateKey {
        &self.wg_private_key
    }
}

/// Why this node's binding could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindingError {
    #[error("dstack GetQuote failed: {0}")]
    Quote(#[source] DstackError),
    #[error("dstack's quote and event log do not make evidence: {0}")]
    Evidence(#[source] mesh_attest::EvidenceError),
    #[error("signing the binding failed: {0}")]
    Sign(#[source] mesh_chain::record::RecordError),
    #[error("this node's quote names no image: {0}")]
    Measurements(#[source] mesh_attest::MeasurementsError),
}

/// The compose hash and OS image this node runs now, as a fresh quote of it claims them.
///
/// # Errors
/// [`BindingError`]: dstack gives no quote, or one whose image cannot be read.
pub async fn running_image(
    client: &DstackClient,
) -> Result<mesh_attest::ClaimedMeasurements, BindingError> {
    let quote = client
        .get_quote(&[0; 64])
        .await
        .map_err(BindingError::Quote)?;
    let evidence = mesh_attest::Evidence::from_dstack(&quote.quote, &quote.event_log)
        .map_err(BindingError::Evidence)?;
    mesh_attest::claimed_measurements(&evidence).map_err(BindingError::Measurements)
}

/// This node's binding for `holder` on cluster `contract` of chain `chain_id`: its node key's consent, with
/// this instance's TDX quote, whose report data commits to the chain, the contract and the node key.
///
/// # Errors
/// [`BindingError`]: dstack gives no quote, or one that does not make evidence.
pub async fn binding(
    client: &DstackClient,
    node: &NodeKey,
    holder: alloy::primitives::Address,
    chain_id: u64,
    contract: alloy::primitives::Address,
) -> Result<mesh_chain::record::NodeBinding, BindingError> {
    let report_data = mesh_attest::report_data(chain_id, contract, node.address());
    let quote = client
        .get_quote(&report_data)
        .await
        .map_err(BindingError::Quote)?;
    let evidence = mesh_attest::Evidence::from_dstack(&quote.quote, &quote.event_log)
        .map_err(BindingError::Evidence)?;
    node.bind(
        holder,
        alloy::primitives::Bytes::from(evidence.encode()),
        chain_id,
        contract,
    )
    .map_err(BindingError::Sign)
}
