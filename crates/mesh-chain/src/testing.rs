//! Fixtures for tests of what uses the chain view (feature `testing`). The view only ever holds records
//! that passed `membership::authenticate`, so these stand for believed records without a real proof.

use alloy::primitives::{Address, B256, B512, FixedBytes, U256};

use crate::record::SignedRegistration;

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
