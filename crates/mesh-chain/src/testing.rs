//! Fixtures for tests of what uses the chain view (feature `testing`). The view only ever holds records
//! that passed `membership::authenticate`, so these stand for believed records without a real proof.

use alloy::primitives::{Address, B256, B512, Bytes, FixedBytes, U256, keccak256};
use dstack_guest::DstackProof;
use dstack_guest::chain::{app_message, compressed, kms_message, sign_dstack_message};
use dstack_guest::client::{DerivedKey, GetKeyReply};
use k256::ecdsa::SigningKey;

use crate::contract::{self, DstackClusterNFT};
use crate::membership::{Pins, Prefix};
use crate::record::{self, SignedRegistration};
use crate::view::ChainView;

/// Seat `token`'s record at `nonce`, for `instance_id`, with the WireGuard key of 32 bytes `wg_key` (none
/// when 0) at `192.0.2.<token>:51820`, and no gateway URL; the proof is all zero.
pub fn believed_record(
    token: u64,
    nonce: u64,
    wg_key: u8,
    instance_id: &str,
) -> SignedRegistration {
    SignedRegistration {
        token_id: U256::from(token),
        instance_id: instance_id.into(),
        wg_public_key: B256::repeat_byte(wg_key),
        endpoint: if wg_key == 0 {
            String::new()
        } else {
            format!("192.0.2.{token}:51820")
        },
        gateway_url: String::new(),
        nonce,
        proof: dstack_guest::DstackProof {
            derived_public_key: B512::ZERO,
            app_public_key: B512::ZERO,
            app_signature: FixedBytes::ZERO,
            kms_signature: FixedBytes::ZERO,
            app_id: Address::ZERO,
            purpose: String::new(),
        },
        record_signature: FixedBytes::ZERO,
        chain_id: 1,
        contract: Address::ZERO,
    }
}

/// An empty view of the zero contract on chain 1, under 10.0.1.0/24 and no trust anchors: where
/// [`believed_record`]s go, since the view takes them as believed already.
pub fn empty_view() -> ChainView {
    ChainView::new(
        Address::ZERO,
        Pins {
            kms_root: Address::ZERO,
            app_ids: Vec::new(),
            chain_id: 1,
            prefix: Prefix::new([10, 0, 1, 0].into(), 24).expect("a valid prefix"),
        },
    )
}

/// A cluster of fixed test keys: a KMS root, an app key it issued, and node keys of one repeated byte each.
/// Unlike [`believed_record`], what it signs verifies against [`Cluster::pins`], so that what decides on
/// records (the view, the follower's events and listings) can be tested with real proofs and real forgeries.
pub struct Cluster {
    kms: SigningKey,
    app: SigningKey,
    pub app_id: Address,
    pub contract: Address,
    pub election: Address,
    pub chain_id: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Cluster {
    pub fn new() -> Self {
        let key = |b: u8| SigningKey::from_slice(&[b; 32]).expect("a valid secp256k1 scalar");
        Self {
            kms: key(0x11),
            app: key(0x22),
            app_id: Address::repeat_byte(0xab),
            contract: Address::repeat_byte(0xc0),
            election: Address::repeat_byte(0xe1),
            chain_id: 31337,
        }
    }

    /// The address of the KMS root key.
    pub fn kms_root(&self) -> Address {
        Address::from_public_key(self.kms.verifying_key())
    }

    /// The address of the app key the KMS issued.
    pub fn app_key_address(&self) -> Address {
        Address::from_public_key(self.app.verifying_key())
    }

    /// The anchors a node of this cluster pins: its KMS root, its app id, its chain and the prefix 10.0.1.0/24.
    pub fn pins(&self) -> Pins {
        Pins {
            kms_root: self.kms_root(),
            app_ids: vec![self.app_id],
            chain_id: self.chain_id,
            prefix: Prefix::new([10, 0, 1, 0].into(), 24).expect("a valid prefix"),
        }
    }

    /// What a node of this cluster knows before its first read.
    pub fn view(&self) -> ChainView {
        ChainView {
            election: self.election,
            ..ChainView::new(self.contract, self.pins())
        }
    }

    /// Node key `node` (a nonzero byte): the key of one CVM, which alone signs for the seat bound to it.
    pub fn node_key(node: u8) -> SigningKey {
        SigningKey::from_slice(&[node; 32]).expect("a nonzero byte makes a valid scalar")
    }

    /// The address of node key `node`.
    pub fn node(node: u8) -> Address {
        record::node_address(&Self::node_key(node))
    }

    /// The instance serving seat `token`.
    pub fn instance(token: u64) -> String {
        format!("{token:040x}")
    }

    /// Seat `token`'s binding to node `node`, as its `InstanceBound` event carries it: the evidence is made up,
    /// and its hash is right.
    pub fn bound(token: u64, node: u8) -> DstackClusterNFT::InstanceBound {
        let evidence = Bytes::from(format!("quote of seat {token} on node {node}").into_bytes());
        DstackClusterNFT::InstanceBound {
            tokenId: U256::from(token),
            instanceId: Self::instance(token),
            node: Self::node(node),
            evidenceHash: keccak256(&evidence),
            evidence,
        }
    }

    /// What any instance of this cluster's app gets from GetKey under `purpose`: the chain from the KMS root
    /// through the app key to a derived key (the same for every purpose; the mesh does not use it).
    pub fn proof(&self, purpose: &str) -> DstackProof {
        let derived = SigningKey::from_slice(&[0x77; 32]).expect("a valid secp256k1 scalar");
        let derived_key = compressed(derived.verifying_key());
        let sign = |key: &SigningKey, message: &[u8]| {
            sign_dstack_message(key, message).expect("k256 signs any digest")
        };
        let reply = GetKeyReply::new(
            DerivedKey::from_bytes([0x77; 32]),
            sign(&self.app, &app_message(purpose, &derived_key)),
            sign(
                &self.kms,
                &kms_message(self.app_id, &compressed(self.app.verifying_key())),
            ),
        );
        DstackProof::from_get_key(&reply, self.app_id, purpose)
            .expect("the app key signed the derived key")
    }

    /// Seat `token`'s record at `nonce`, signed by node `node` with a proof from this cluster's app key naming
    /// the seat's instance and the node.
    pub fn record(&self, token: u64, node: u8, nonce: u64) -> SignedRegistration {
        let key = Self::node_key(node);
        let instance = Self::instance(token);
        let proof = self.proof(&record::purpose(&instance, record::node_address(&key)));
        let peer_record = record::PeerRecord {
            tokenId: U256::from(token),
            instanceId: instance,
            wgPublicKey: B256::repeat_byte(u8::try_from(token % 255).unwrap_or(0).max(1)),
            endpoint: format!("192.0.2.{}:{}", token % 256, 51820 + nonce % 1000),
            gatewayUrl: String::new(),
            nonce,
        };
        SignedRegistration::sign(peer_record, proof, &key, self.chain_id, self.contract)
            .expect("the proof names the node that signs")
    }

    /// The `PeerRegistered` event that registered `reg`.
    pub fn registered(reg: &SignedRegistration) -> DstackClusterNFT::PeerRegistered {
        let (input, proof, signature) = contract::register_peer_args(reg);
        DstackClusterNFT::PeerRegistered {
            tokenId: input.tokenId,
            instanceId: reg.instance_id.clone(),
            wgPublicKey: input.wgPublicKey,
            endpoint: input.endpoint,
            gatewayUrl: input.gatewayUrl,
            nonce: input.nonce,
            proof,
            recordSignature: signature,
        }
    }

    /// Seat `token` as `getPeersPage` lists it: its record `reg` registered at block `registered`, bound to
    /// what `bound` carries at block `bound_block`.
    pub fn listed(
        reg: &SignedRegistration,
        registered: u64,
        bound: &DstackClusterNFT::InstanceBound,
        bound_block: u64,
    ) -> DstackClusterNFT::Peer {
        DstackClusterNFT::Peer {
            tokenId: reg.token_id,
            instanceId: reg.instance_id.clone(),
            wgPublicKey: reg.wg_public_key,
            endpoint: reg.endpoint.clone(),
            gatewayUrl: reg.gateway_url.clone(),
            nonce: reg.nonce,
            registeredBlock: registered,
            overlayAddress: 0,
            node: bound.node,
            evidenceHash: bound.evidenceHash,
            boundBlock: bound_block,
            holder: Self::holder_of(reg.token_id),
        }
    }

    /// The holder the listings of these tests name for seat `token`: an address made of its id.
    pub fn holder_of(token: U256) -> Address {
        Address::left_padding_from(&token.to_be_bytes::<32>()[24..])
    }
}

/// What is logged at warn level and above on this thread while the guard [`Warnings::capture`] returns lives:
/// for tests that a clean run warns of nothing, or of something once.
#[derive(Clone, Default)]
pub struct Warnings(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Warnings {
    /// Starts capturing; it ends when the guard is dropped.
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let warnings = Self::default();
        let sink = warnings.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        (warnings, tracing::subscriber::set_default(subscriber))
    }

    /// What was logged so far.
    pub fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for Warnings {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (self.0.lock())
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
