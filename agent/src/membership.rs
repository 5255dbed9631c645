//! Who is in the mesh: the on-chain records that pass this node's own checks, mapped to overlay addresses.
//!
//! Every record is re-verified here against the KMS root and app ids this node pins, from its own copy of the
//! registration event, so a lying or compromised RPC cannot inject a peer (the analogue of Tailscale's
//! Tailnet Lock). A record that fails is skipped with a reason and never configured; the rest go on.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use alloy::primitives::Address;
use serde::{Deserialize, Serialize};

use crate::proof::{self, ProofError, SignedRegistration};

/// The trust anchors a node checks every record against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pins {
    pub kms_root: Address,
    pub app_ids: Vec<Address>,
}

/// The mesh prefix: seat N gets `network + N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Prefix {
    pub network: Ipv4Addr,
    pub len: u8,
}

impl Prefix {
    /// How many seat ids fit: every host address but the network and broadcast ones.
    pub fn capacity(&self) -> u64 {
        if self.len >= 31 {
            0
        } else {
            (1u64 << (32 - u32::from(self.len))) - 2
        }
    }

    /// The overlay address of seat `token_id`, if it fits the prefix.
    pub fn address(&self, token_id: u64) -> Option<Ipv4Addr> {
        (token_id >= 1 && token_id <= self.capacity()).then(|| {
            Ipv4Addr::from(u32::from(self.network) + u32::try_from(token_id).unwrap_or(u32::MAX))
        })
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

/// A peer this node will configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub token_id: u64,
    pub instance_id: String,
    pub overlay_ip: Ipv4Addr,
    /// Absent for a TLS-gateway-only node.
    pub wg_public_key: Option<[u8; 32]>,
    pub endpoint: Option<SocketAddr>,
    pub gateway_url: Option<String>,
    pub nonce: u64,
}

/// Why a record is not configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRecord {
    #[error(
        "seat {token_id}: its proof does not verify against the pinned KMS root and app ids: {source}"
    )]
    Proof {
        token_id: u64,
        #[source]
        source: ProofError,
    },
    #[error("seat {token_id}: the record is signed for another cluster or chain")]
    WrongDomain { token_id: u64 },
    #[error("seat {token_id}: its overlay address falls outside the mesh prefix {prefix}")]
    OutsidePrefix { token_id: u64, prefix: Prefix },
    #[error(
        "seat {token_id}: endpoint {endpoint:?} is not an IP:port (hostnames are not resolved)"
    )]
    Endpoint { token_id: u64, endpoint: String },
    #[error("seat {token_id}: the record has neither a WireGuard key nor a gateway URL")]
    Empty { token_id: u64 },
}

impl InvalidRecord {
    /// The seat whose record this is.
    pub fn token_id(&self) -> u64 {
        match self {
            InvalidRecord::Proof { token_id, .. }
            | InvalidRecord::WrongDomain { token_id }
            | InvalidRecord::OutsidePrefix { token_id, .. }
            | InvalidRecord::Endpoint { token_id, .. }
            | InvalidRecord::Empty { token_id } => *token_id,
        }
    }
}

/// Checks one record, as registered, for seat `reg.token_id`.
///
/// # Errors
/// [`InvalidRecord`] naming the first check that fails.
pub fn validate(
    reg: &SignedRegistration,
    pins: &Pins,
    prefix: Prefix,
    chain_id: u64,
    contract: Address,
) -> Result<Member, InvalidRecord> {
    let token_id = u64::try_from(reg.token_id).unwrap_or(u64::MAX);
    if reg.chain_id != chain_id || reg.contract != contract {
        return Err(InvalidRecord::WrongDomain { token_id });
    }
    proof::verify_registration(reg, pins.kms_root, &pins.app_ids, &reg.instance_id)
        .map_err(|source| InvalidRecord::Proof { token_id, source })?;
    let overlay_ip = prefix
        .address(token_id)
        .ok_or(InvalidRecord::OutsidePrefix { token_id, prefix })?;
    let endpoint = match reg.endpoint.as_str() {
        "" => None,
        e => Some(
            e.parse::<SocketAddr>()
                .map_err(|_| InvalidRecord::Endpoint {
                    token_id,
                    endpoint: e.into(),
                })?,
        ),
    };
    let wg_public_key = (!reg.wg_public_key.is_zero()).then_some(reg.wg_public_key.0);
    let gateway_url = (!reg.gateway_url.is_empty()).then(|| reg.gateway_url.clone());
    if wg_public_key.is_none() && gateway_url.is_none() {
        return Err(InvalidRecord::Empty { token_id });
    }
    Ok(Member {
        token_id,
        instance_id: reg.instance_id.clone(),
        overlay_ip,
        wg_public_key,
        endpoint,
        gateway_url,
        nonce: reg.nonce,
    })
}

/// The valid members among `records`, minus this node's own seat, and the reasons for the rest.
pub fn members(
    records: &BTreeMap<u64, SignedRegistration>,
    own_token: Option<u64>,
    pins: &Pins,
    prefix: Prefix,
    chain_id: u64,
    contract: Address,
) -> (Vec<Member>, Vec<InvalidRecord>) {
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    for (token, reg) in records {
        if Some(*token) == own_token {
            continue;
        }
        match validate(reg, pins, prefix, chain_id, contract) {
            Ok(m) => valid.push(m),
            Err(e) => invalid.push(e),
        }
    }
    (valid, invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every prefix length from 8 to 30 puts seat N at network + N, and nothing beyond the broadcast address.
    #[test]
    fn addresses_cover_each_prefix_length_up_to_the_broadcast() {
        for len in 8u8..=30 {
            let network = Ipv4Addr::new(10, 0, 0, 0);
            let p = Prefix { network, len };
            let cap = (1u64 << (32 - len)) - 2;
            assert_eq!(p.capacity(), cap, "/{len}");
            assert_eq!(p.address(1), Some(Ipv4Addr::new(10, 0, 0, 1)), "/{len}");
            assert_eq!(
                p.address(cap),
                Some(Ipv4Addr::from(u32::from(network) + cap as u32)),
                "/{len}"
            );
            assert_eq!(p.address(cap + 1), None, "/{len}: broadcast");
            assert_eq!(p.address(0), None, "/{len}: network address");
        }
        assert_eq!(
            Prefix {
                network: Ipv4Addr::new(10, 0, 1, 0),
                len: 24
            }
            .address(254),
            Some(Ipv4Addr::new(10, 0, 1, 254))
        );
        assert_eq!(
            Prefix {
                network: Ipv4Addr::new(10, 0, 1, 0),
                len: 31
            }
            .capacity(),
            0
        );
    }
}
