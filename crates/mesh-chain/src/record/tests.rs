use super::*;
use crate::testing::Cluster;
use alloy::primitives::address;
use dstack_guest::chain::{
    app_message, compressed, public_key_from_xy, sign_dstack_message, uncompressed_xy,
};

// dstack simulator fixture A (Aug 2025), reference §2.7: an app id and KMS root these tests do not use.
const A_APP_ID: Address = address!("ea549f02e1a25fabd1cb788380e033ec5461b2ff");
const A_KMS_ROOT: Address = address!("8f2cF602C9695b23130367ed78d8F557554de7C5");

fn sk(bytes: [u8; 32]) -> SigningKey {
    SigningKey::from_slice(&bytes).unwrap()
}

const INSTANCE: &str = "1111111111111111111111111111111111111111";
const OTHER_INSTANCE: &str = "2222222222222222222222222222222222222222";
/// The node key most tests sign with (as [`Cluster::node_key`]).
const NODE: u8 = 0x33;

/// Seat 7's record for `instance` ([`record`]) with `proof`, signed by node key `node` in `c`'s domain.
fn sign(
    c: &Cluster,
    node: u8,
    instance: &str,
    proof: DstackProof,
) -> Result<SignedRegistration, RecordError> {
    let key = Cluster::node_key(node);
    SignedRegistration::sign(record(instance), proof, &key, c.chain_id, c.contract)
}

/// Node key `node`'s registration of seat 7 for `instance`, with the chain `c`'s app gives for that
/// instance and node.
fn registration(c: &Cluster, node: u8, instance: &str) -> SignedRegistration {
    let proof = c.proof(&purpose(instance, Cluster::node(node)));
    sign(c, node, instance, proof).unwrap()
}

/// Node key `node`'s binding to a seat of `c` for `instance`, held by `holder`.
fn binding(c: &Cluster, node: u8, instance: &str, holder: Address) -> NodeBinding {
    let key = Cluster::node_key(node);
    let proof = c.proof(&purpose(instance, Cluster::node(node)));
    NodeBinding::sign(
        instance.into(),
        holder,
        proof,
        Bytes::from_static(b"evidence"),
        &key,
        c.chain_id,
        c.contract,
    )
    .unwrap()
}

fn record(instance: &str) -> PeerRecord {
    PeerRecord {
        tokenId: U256::from(7),
        instanceId: instance.to_owned(),
        wgPublicKey: B256::repeat_byte(0x42),
        endpoint: "203.0.113.7:51820".into(),
        gatewayUrl: String::new(),
        nonce: 1,
    }
}

fn resign(reg: &mut SignedRegistration, key: &SigningKey) {
    reg.record_signature = sign_eip712(key, reg.signing_hash()).unwrap();
}

/// Signs `proof`'s derived key under its purpose with `app_key` in place of the app key that signed it.
fn app_sign(proof: &mut DstackProof, app_key: &SigningKey) {
    let derived = public_key_from_xy("d", &proof.derived_public_key).unwrap();
    proof.app_signature =
        sign_dstack_message(app_key, &app_message(&proof.purpose, &compressed(&derived)))
            .unwrap()
            .into();
}

/// The sol! structs hash the exact type strings the contract uses.
#[test]
fn eip712_type_strings_are_the_contracts() {
    assert_eq!(PeerRecord::eip712_encode_type(), PEER_RECORD_TYPE);
    assert_eq!(BindConsent::eip712_encode_type(), BIND_CONSENT_TYPE);
}

/// A node's binding verifies; moved to another holder, instance or node, or re-encoded, it does not.
#[test]
fn binding_verifies_only_as_signed() {
    let c = Cluster::new();
    let holder = Address::repeat_byte(0x0a);
    let good = binding(&c, NODE, INSTANCE, holder);
    let back: NodeBinding = serde_json::from_str(&serde_json::to_string(&good).unwrap()).unwrap();
    assert_eq!(
        back, good,
        "JSON round trip (what meshctl bind --binding reads)"
    );
    verify_binding(&good, c.kms_root(), &[c.app_id]).unwrap();

    let mut other_holder = good.clone();
    other_holder.holder = Address::repeat_byte(0x0b);
    let err = verify_binding(&other_holder, c.kms_root(), &[c.app_id]).unwrap_err();
    assert!(
        matches!(err, RecordError::RecordSignatureMismatch { .. }),
        "{err}"
    );

    let mut other_instance = good.clone();
    other_instance.instance_id = OTHER_INSTANCE.into();
    let err = verify_binding(&other_instance, c.kms_root(), &[c.app_id]).unwrap_err();
    assert!(matches!(err, RecordError::PurposeMismatch { .. }), "{err}");

    // A sibling's chain names its own node: it cannot pass for this one.
    let mut other_node = good.clone();
    other_node.node = Address::repeat_byte(0x0c);
    let err = verify_binding(&other_node, c.kms_root(), &[c.app_id]).unwrap_err();
    assert!(matches!(err, RecordError::PurposeMismatch { .. }), "{err}");

    let mut re_encoded = good;
    re_encoded.consent.0[64] -= 27;
    let err = verify_binding(&re_encoded, c.kms_root(), &[c.app_id]).unwrap_err();
    assert!(
        matches!(
            err,
            RecordError::Chain(ProofError::InvalidSignature {
                field: "consent",
                ..
            })
        ),
        "{err}"
    );
}

/// An honest registration verifies, and survives a JSON round trip (the relay format).
#[test]
fn honest_registration_verifies_after_json_round_trip() {
    let c = Cluster::new();
    let reg = registration(&c, NODE, INSTANCE);
    let json = serde_json::to_string(&reg).unwrap();
    assert!(json.contains("\"record_signature\":\"0x"), "{json}");
    let back: SignedRegistration = serde_json::from_str(&json).unwrap();
    assert_eq!(back, reg);
    let node = Cluster::node(NODE);
    let v = verify_registration(&back, c.kms_root(), &[c.app_id], INSTANCE, Some(node)).unwrap();
    assert_eq!(v.node, node);
    assert_eq!(v.chain.app_id, c.app_id);
    assert!(matches!(reg.record_signature[64], 27 | 28));
}

/// The sibling attack: another instance of the app gets a genuine chain for its own node key naming this
/// instance (dstack gives every instance the same app key) and signs a record for this seat. Against the
/// seat's binding it is refused; and a chain naming the bound node does not let another key sign.
#[test]
fn a_siblings_record_is_refused_against_the_binding() {
    let c = Cluster::new();
    let bound = Cluster::node(NODE);
    let sibling = registration(&c, 0x55, INSTANCE);
    let err = verify_registration(&sibling, c.kms_root(), &[c.app_id], INSTANCE, Some(bound))
        .unwrap_err();
    assert_eq!(
        err,
        RecordError::RecordSignatureMismatch {
            node: bound,
            recovered: Cluster::node(0x55),
        }
    );

    let mut borrowed = registration(&c, NODE, INSTANCE);
    resign(&mut borrowed, &Cluster::node_key(0x55));
    let err =
        verify_registration(&borrowed, c.kms_root(), &[c.app_id], INSTANCE, None).unwrap_err();
    assert!(
        matches!(err, RecordError::RecordSignatureMismatch { node, .. } if node == bound),
        "{err}"
    );
}

/// A chain checked against another KMS root fails with the recovered root named.
#[test]
fn wrong_kms_root_is_rejected() {
    let c = Cluster::new();
    let reg = registration(&c, NODE, INSTANCE);
    let err = verify_registration(&reg, A_KMS_ROOT, &[c.app_id], INSTANCE, None).unwrap_err();
    assert_eq!(
        err,
        RecordError::Chain(ProofError::KmsRootMismatch {
            expected: A_KMS_ROOT,
            recovered: c.kms_root()
        })
    );
}

/// An app id outside the allowed list is rejected even though its chain is genuine.
#[test]
fn disallowed_app_id_is_rejected() {
    let c = Cluster::new();
    let reg = registration(&c, NODE, INSTANCE);
    let err = verify_registration(&reg, c.kms_root(), &[A_APP_ID], INSTANCE, None).unwrap_err();
    assert_eq!(
        err,
        RecordError::Chain(ProofError::AppIdNotAllowed(c.app_id))
    );
}

/// Claiming an allowed app id that the KMS did not sign for breaks the KMS signature.
#[test]
fn swapped_app_id_breaks_kms_signature() {
    let c = Cluster::new();
    let mut reg = registration(&c, NODE, INSTANCE);
    reg.proof.app_id = A_APP_ID;
    let err = verify_registration(&reg, c.kms_root(), &[A_APP_ID], INSTANCE, None).unwrap_err();
    assert!(
        matches!(err, RecordError::Chain(ProofError::KmsRootMismatch { expected, .. }) if expected == c.kms_root()),
        "{err}"
    );
}

/// An app signature made by a key other than the supplied app key is rejected, naming both.
#[test]
fn app_signature_by_another_key_is_rejected() {
    let c = Cluster::new();
    let mut reg = registration(&c, NODE, INSTANCE);
    let impostor = sk([0x44; 32]);
    app_sign(&mut reg.proof, &impostor);
    let err = verify_registration(&reg, c.kms_root(), &[c.app_id], INSTANCE, None).unwrap_err();
    assert_eq!(
        err,
        RecordError::Chain(ProofError::AppSignatureMismatch {
            app_key_address: c.app_key_address(),
            recovered: Address::from_public_key(impostor.verifying_key()),
        })
    );
}

/// Passing off an impostor app key (which did sign) fails at the KMS, which never issued it.
#[test]
fn impostor_app_key_fails_at_kms() {
    let c = Cluster::new();
    let mut reg = registration(&c, NODE, INSTANCE);
    let impostor = sk([0x44; 32]);
    reg.proof.app_public_key = uncompressed_xy(impostor.verifying_key());
    app_sign(&mut reg.proof, &impostor);
    let err = verify_registration(&reg, c.kms_root(), &[c.app_id], INSTANCE, None).unwrap_err();
    assert!(
        matches!(err, RecordError::Chain(ProofError::KmsRootMismatch { .. })),
        "{err}"
    );
}

/// A genuine proof made for another instance cannot register this one.
#[test]
fn proof_for_another_instance_is_rejected() {
    let c = Cluster::new();
    let other = registration(&c, NODE, OTHER_INSTANCE);
    let err = sign(&c, NODE, INSTANCE, other.proof.clone()).unwrap_err();
    assert!(matches!(err, RecordError::PurposeMismatch { .. }), "{err}");

    let mut forged = registration(&c, NODE, INSTANCE);
    forged.proof = other.proof.clone();
    let err = verify_registration(&forged, c.kms_root(), &[c.app_id], INSTANCE, None).unwrap_err();
    assert_eq!(
        err,
        RecordError::PurposeMismatch {
            expected: purpose(INSTANCE, Cluster::node(NODE)),
            actual: purpose(OTHER_INSTANCE, Cluster::node(NODE))
        }
    );
    let err = verify_registration(&other, c.kms_root(), &[c.app_id], INSTANCE, None).unwrap_err();
    assert!(
        matches!(err, RecordError::InstanceIdMismatch { .. }),
        "{err}"
    );
}

/// Changing any record field after signing breaks the record signature.
#[test]
fn tampered_record_is_rejected() {
    let c = Cluster::new();
    let mut reg = registration(&c, NODE, INSTANCE);
    reg.endpoint = "198.51.100.1:51820".into();
    let err = verify_registration(&reg, c.kms_root(), &[c.app_id], INSTANCE, None).unwrap_err();
    assert!(
        matches!(err, RecordError::RecordSignatureMismatch { .. }),
        "{err}"
    );
}

/// Signing with a node key that the proof does not name is refused up front.
#[test]
fn signing_with_the_wrong_key_is_refused() {
    let c = Cluster::new();
    let reg = registration(&c, NODE, INSTANCE);
    let err = sign(&c, 0x66, INSTANCE, reg.proof).unwrap_err();
    assert!(matches!(err, RecordError::PurposeMismatch { .. }), "{err}");
}

/// The purpose names the instance and the node in the one spelling the contract builds.
#[test]
fn purpose_names_the_instance_and_the_node() {
    let node = address!("00000000000000000000000000000000000000Ab");
    assert_eq!(
        purpose(INSTANCE, node),
        format!("dstack-mesh-node:{INSTANCE}:00000000000000000000000000000000000000ab")
    );
    assert_eq!(
        node_in_purpose(&purpose(INSTANCE, node), INSTANCE),
        Some(node)
    );
    assert_eq!(
        node_in_purpose(&purpose(INSTANCE, node), OTHER_INSTANCE),
        None
    );
    assert_eq!(KEY_PATH, "dstack-mesh/node");
}
