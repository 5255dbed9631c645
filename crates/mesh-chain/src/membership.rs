//! Who is in the mesh. Two questions, each a pure function:
//!
//! 1. **Is a record believed?** ([`authenticate`], [`admit`]) It must be signed by the node key its seat is
//!    bound to, with a chain that vouches for that node serving the seat's instance, for this cluster,
//!    checked against the trust anchors this node pins, from its own copy of the events, so a lying or
//!    compromised RPC cannot inject a peer without a binding (the analogue of Tailscale's Tailnet Lock); the
//!    binding's evidence ties the node key to the instance's CVM. And it must not be older than a record of that seat this node already believed, so the
//!    RPC cannot undo a change either. The follower keeps only believed records.
//! 2. **Is a believed record a peer this node configures?** ([`members`]) Its overlay address must fit the
//!    prefix, its endpoint must be an `IP:port`, it must not be this node, and no other seat may claim its
//!    WireGuard key. A record that fails is skipped with a reason; the rest go on.

#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use alloy::primitives::Address;
use serde::{Deserialize, Serialize};

use crate::record::{self, RecordError, SignedRegistration};
use wg_key::Key;

/// Everything that decides whom this node trusts, fixed at its first start and kept in its state file:
/// a later RPC that disagrees is refused rather than believed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pins {
    pub kms_root: Address,
    pub app_ids: Vec<Address>,
    /// Records are signed for one chain: a record from another chain where the same contract address
    /// exists (deterministic deployments make that common) must not pass.
    pub chain_id: u64,
    /// Overlay addresses come from it.
    pub prefix: Prefix,
}

/// The mesh prefix: seat N gets `network + N`. Always valid: 8 to 30 bits, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PrefixParts", into = "PrefixParts")]
pub struct Prefix {
    network: Ipv4Addr,
    len: u8,
}

#[derive(Serialize, Deserialize)]
struct PrefixParts {
    network: Ipv4Addr,
    len: u8,
}

/// A mesh prefix that no cluster contract accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{network}/{len} is not a usable mesh prefix: it needs a length from 8 to 30 and its host bits zero"
)]
pub struct PrefixError {
    pub network: Ipv4Addr,
    pub len: u8,
}

impl Prefix {
    /// The prefix `network/len`, as the contract allows it.
    ///
    /// # Errors
    /// [`PrefixError`] for a length outside 8..=30 or a network with host bits set.
    pub fn new(network: Ipv4Addr, len: u8) -> Result<Self, PrefixError> {
        let invalid = PrefixError { network, len };
        if !(8..=30).contains(&len) {
            return Err(invalid);
        }
        let host_mask = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
        if u32::from(network) & host_mask != 0 {
            return Err(invalid);
        }
        Ok(Self { network, len })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length, 8 to 30.
    pub fn bits(&self) -> u8 {
        self.len
    }

    /// How many seat ids fit: every host address but the network and broadcast ones.
    pub fn capacity(&self) -> u64 {
        let hosts = 32u32.saturating_sub(u32::from(self.len));
        1u64.checked_shl(hosts).unwrap_or(0).saturating_sub(2)
    }

    /// The overlay address of seat `token_id`, if it fits the prefix.
    pub fn address(&self, token_id: u64) -> Option<Ipv4Addr> {
        if token_id == 0 || token_id > self.capacity() {
            return None;
        }
        let offset = u32::try_from(token_id).ok()?;
        u32::from(self.network)
            .checked_add(offset)
            .map(Ipv4Addr::from)
    }
}

/// dstack's own WireGuard network, between its gateway and each CVM (`dstack-wg0`, 10.0.0.0/24 in the
/// gateway's sample configuration and Phala's): a mesh prefix that overlaps it would send some seats'
/// traffic into the gateway's tunnel, or the gateway's into the mesh.
pub const DSTACK_GATEWAY_NET: Prefix = Prefix {
    network: Ipv4Addr::new(10, 0, 0, 0),
    len: 24,
};

/// A mesh prefix that overlaps [`DSTACK_GATEWAY_NET`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the mesh prefix {prefix} overlaps {DSTACK_GATEWAY_NET}, the network of dstack's own WireGuard interface (dstack-wg0) between the gateway and each CVM: deploy the cluster with a prefix outside it, such as the default 10.0.1.0/24"
)]
pub struct OverlapsDstack {
    pub prefix: Prefix,
}

impl Prefix {
    /// Whether the two prefixes share an address: one holds the other's network.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        let shorter = self.len.min(other.len);
        let mask = u32::MAX
            .checked_shl(32u32.saturating_sub(u32::from(shorter)))
            .unwrap_or(0);
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }

    /// The prefix, unless it overlaps dstack's gateway network.
    ///
    /// # Errors
    /// [`OverlapsDstack`] naming the clash and the way out.
    pub fn outside_dstack(self) -> Result<Self, OverlapsDstack> {
        if self.overlaps(&DSTACK_GATEWAY_NET) {
            return Err(OverlapsDstack { prefix: self });
        }
        Ok(self)
    }
}

impl TryFrom<PrefixParts> for Prefix {
    type Error = PrefixError;
    fn try_from(p: PrefixParts) -> Result<Self, PrefixError> {
        Self::new(p.network, p.len)
    }
}

impl From<Prefix> for PrefixParts {
    fn from(p: Prefix) -> Self {
        Self {
            network: p.network,
            len: p.len,
        }
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

/// Why a record is not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    #[error("a record for seat {token_id} is filed under seat {filed_under}")]
    WrongSeat { token_id: u64, filed_under: u64 },
    #[error("seat {token_id}: the record is signed for another cluster or chain")]
    WrongDomain { token_id: u64 },
    #[error(
        "seat {token_id}: its proof does not verify against the pinned KMS root and app ids: {source}"
    )]
    Proof {
        token_id: u64,
        #[source]
        source: RecordError,
    },
    #[error(
        "seat {token_id}: no binding of the seat is known, so no node key may sign for it (a full read fetches it)"
    )]
    Unbound { token_id: u64 },
    #[error("seat {token_id}: the binding's evidence does not hash to the evidence hash it names")]
    Evidence { token_id: u64 },
    #[error(
        "seat {token_id}: record nonce {nonce} is not newer than nonce {high_water}, which this node already saw; the RPC serves an old state (if this is a dev chain that was reset, restart the agent with --repin)"
    )]
    Rollback {
        token_id: u64,
        nonce: u64,
        high_water: u64,
    },
}

impl Rejected {
    /// The seat whose record this is.
    pub fn token_id(&self) -> u64 {
        match self {
            Rejected::WrongSeat { filed_under, .. } => *filed_under,
            Rejected::WrongDomain { token_id }
            | Rejected::Unbound { token_id }
            | Rejected::Evidence { token_id }
            | Rejected::Proof { token_id, .. }
            | Rejected::Rollback { token_id, .. } => *token_id,
        }
    }
}

/// The seat's binding, as far as believing its records goes: the instance, and the node key that alone signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound<'a> {
    pub instance_id: &'a str,
    pub node: Address,
}

/// Checks that `reg`, filed under seat `filed_under`, was made by the seat's node for this cluster: the seat
/// matches, it is signed for this chain and contract by the node `bound` names, for its instance, and its
/// proof verifies against the pins.
///
/// # Errors
/// [`Rejected`] naming the first check that fails.
pub fn authenticate(
    reg: &SignedRegistration,
    filed_under: u64,
    pins: &Pins,
    contract: Address,
    bound: Bound<'_>,
) -> Result<(), Rejected> {
    let token_id = u64::try_from(reg.token_id).unwrap_or(u64::MAX);
    if token_id != filed_under {
        return Err(Rejected::WrongSeat {
            token_id,
            filed_under,
        });
    }
    if reg.chain_id != pins.chain_id || reg.contract != contract {
        return Err(Rejected::WrongDomain { token_id });
    }
    record::verify_registration(
        reg,
        pins.kms_root,
        &pins.app_ids,
        bound.instance_id,
        Some(bound.node),
    )
    .map(|_| ())
    .map_err(|source| Rejected::Proof { token_id, source })
}

/// Whether an authentic record may replace what this node believes of its seat: only a newer one may. Its
/// nonce must be above the seat's high-water mark (the highest nonce this node ever believed for it, kept
/// through clears, full reads and restarts), or be the very record already held.
///
/// # Errors
/// [`Rejected::Rollback`].
pub fn admit(
    reg: &SignedRegistration,
    held: Option<&SignedRegistration>,
    high_water: Option<u64>,
) -> Result<(), Rejected> {
    let Some(high_water) = high_water else {
        return Ok(());
    };
    if reg.nonce > high_water || (reg.nonce == high_water && held == Some(reg)) {
        return Ok(());
    }
    Err(Rejected::Rollback {
        token_id: u64::try_from(reg.token_id).unwrap_or(u64::MAX),
        nonce: reg.nonce,
        high_water,
    })
}

/// A peer this node will configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub token_id: u64,
    pub instance_id: String,
    pub overlay_ip: Ipv4Addr,
    /// Absent for a TLS-gateway-only node.
    pub wg_public_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    pub gateway_url: Option<String>,
    pub nonce: u64,
    /// The app its record's proof was issued to: the grants between seats tag seats by it.
    pub app_id: alloy_primitives::Address,
}

/// Why a believed record is not configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRecord {
    #[error("seat {token_id}: its overlay address falls outside the mesh prefix {prefix}")]
    OutsidePrefix { token_id: u64, prefix: Prefix },
    #[error(
        "seat {token_id}: endpoint {endpoint:?} is not an IP:port (hostnames are not resolved)"
    )]
    Endpoint { token_id: u64, endpoint: String },
    #[error("seat {token_id}: the record has neither a WireGuard key nor a gateway URL")]
    Empty { token_id: u64 },
    #[error(
        "seat {token_id}: its WireGuard key is also seat {other}'s; neither is configured until one of them changes"
    )]
    DuplicateKey { token_id: u64, other: u64 },
    #[error("seat {token_id}: the record is this node's own (its instance or its WireGuard key)")]
    Itself { token_id: u64 },
}

impl InvalidRecord {
    /// The seat whose record this is.
    pub fn token_id(&self) -> u64 {
        match self {
            InvalidRecord::OutsidePrefix { token_id, .. }
            | InvalidRecord::Endpoint { token_id, .. }
            | InvalidRecord::Empty { token_id }
            | InvalidRecord::DuplicateKey { token_id, .. }
            | InvalidRecord::Itself { token_id } => *token_id,
        }
    }
}

/// This node, as far as telling its own records apart goes.
#[derive(Debug, Clone, Copy)]
pub struct Own<'a> {
    /// Its seat, once known.
    pub token_id: Option<u64>,
    pub instance_id: &'a str,
    /// Absent in TLS mode.
    pub wg_public_key: Option<Key>,
}

impl Own<'_> {
    /// Whether `reg`, filed under seat `token`, is this node's own: its seat, its instance or its key.
    pub fn is(&self, token: u64, reg: &SignedRegistration) -> bool {
        Some(token) == self.token_id
            || reg.instance_id == self.instance_id
            || self
                .wg_public_key
                .is_some_and(|k| *k.as_bytes() == reg.wg_public_key.0)
    }
}

/// One believed record as a peer, if it is usable.
///
/// # Errors
/// [`InvalidRecord`] naming the first check that fails.
pub fn member(reg: &SignedRegistration, prefix: Prefix) -> Result<Member, InvalidRecord> {
    let token_id = u64::try_from(reg.token_id).unwrap_or(u64::MAX);
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
    let wg_public_key =
        (!reg.wg_public_key.is_zero()).then_some(Key::from_bytes(reg.wg_public_key.0));
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
        app_id: reg.proof.app_id,
    })
}

/// The peers among the believed `records`, and the reasons for the rest. This node's own records are
/// never peers, whatever seat they are filed under; seats that claim the same WireGuard key are both left
/// out, since a key can only be one peer.
pub fn members<'a, R: std::borrow::Borrow<SignedRegistration> + 'a>(
    records: impl IntoIterator<Item = (&'a u64, &'a R)>,
    own: Own<'_>,
    prefix: Prefix,
) -> (Vec<Member>, Vec<InvalidRecord>) {
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    for (token, reg) in records {
        let reg: &SignedRegistration = reg.borrow();
        if own.is(*token, reg) {
            if Some(*token) != own.token_id {
                invalid.push(InvalidRecord::Itself { token_id: *token });
            }
            continue;
        }
        match member(reg, prefix) {
            Ok(m) => valid.push(m),
            Err(e) => invalid.push(e),
        }
    }
    // Sorted by key, then seat: each run of one key longer than one is a duplicate, named by the first
    // other seat of the run. Rare, so the common case allocates nothing beyond the sort.
    let mut keyed: Vec<(Key, u64)> = (valid.iter())
        .filter_map(|m| Some((m.wg_public_key?, m.token_id)))
        .collect();
    keyed.sort_unstable();
    let mut other_of: BTreeMap<u64, u64> = BTreeMap::new();
    for run in keyed
        .chunk_by(|a, b| a.0 == b.0)
        .filter(|run| run.len() > 1)
    {
        for (i, (_, token)) in run.iter().enumerate() {
            other_of.insert(*token, run[usize::from(i == 0)].1);
        }
    }
    if !other_of.is_empty() {
        valid.retain(|m| match other_of.get(&m.token_id) {
            Some(&other) => {
                invalid.push(InvalidRecord::DuplicateKey {
                    token_id: m.token_id,
                    other,
                });
                false
            }
            None => true,
        });
    }
    (valid, invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(network: [u8; 4], len: u8) -> Prefix {
        Prefix::new(Ipv4Addr::from(network), len).unwrap()
    }

    /// Every prefix length from 8 to 30 puts seat N at network + N, and nothing beyond the broadcast address.
    #[test]
    fn addresses_cover_each_prefix_length_up_to_the_broadcast() {
        for len in 8u8..=30 {
            let network = Ipv4Addr::new(10, 0, 0, 0);
            let p = prefix([10, 0, 0, 0], len);
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
            assert_eq!(p.address(u64::MAX), None, "/{len}: huge token id");
        }
        assert_eq!(
            prefix([10, 0, 1, 0], 24).address(254),
            Some(Ipv4Addr::new(10, 0, 1, 254))
        );
    }

    /// Only what the contract accepts is a prefix, wherever it comes from: flags, the RPC or the state file.
    #[test]
    fn prefixes_are_validated_wherever_they_are_read() {
        for (network, len) in [
            ([10, 0, 1, 0], 7),
            ([10, 0, 1, 0], 31),
            ([10, 0, 1, 0], 32),
            ([10, 0, 1, 1], 24),
            ([255, 255, 255, 0], 16),
        ] {
            let err = Prefix::new(Ipv4Addr::from(network), len).unwrap_err();
            assert!(err.to_string().contains("host bits zero"), "{err}");
        }
        assert_eq!(prefix([10, 0, 0, 0], 8).capacity(), (1 << 24) - 2);
        let bad: Result<Prefix, _> = serde_json::from_str(r#"{"network":"10.0.1.7","len":24}"#);
        assert!(bad.is_err(), "a state file cannot smuggle in a bad prefix");
        let good: Prefix = serde_json::from_str(r#"{"network":"10.0.1.0","len":24}"#).unwrap();
        assert_eq!(good, prefix([10, 0, 1, 0], 24));
    }

    /// A prefix that shares any address with dstack's gateway network is refused, whichever holds the
    /// other; a neighbour of it is not.
    #[test]
    fn prefixes_overlapping_dstacks_gateway_network_are_refused() {
        for (network, len) in [
            ([10, 0, 0, 0], 24),
            ([10, 0, 0, 128], 25),
            ([10, 0, 0, 0], 16),
            ([10, 0, 0, 0], 8),
            ([10, 0, 0, 252], 30),
        ] {
            let p = prefix(network, len);
            let err = p.outside_dstack().unwrap_err();
            assert!(
                err.to_string().contains("dstack-wg0") && err.to_string().contains("10.0.1.0/24"),
                "{p}: {err}"
            );
        }
        for (network, len) in [
            ([10, 0, 1, 0], 24),
            ([10, 1, 0, 0], 16),
            ([10, 0, 1, 0], 30),
            ([192, 168, 0, 0], 16),
            ([11, 0, 0, 0], 8),
        ] {
            let p = prefix(network, len);
            assert_eq!(p.outside_dstack(), Ok(p), "{p}");
        }
    }

    fn record(token: u64, nonce: u64, key: u8, instance: &str) -> SignedRegistration {
        crate::testing::believed_record(token, nonce, key, instance)
    }

    /// Nothing at or below a seat's high-water mark is admitted, except the very record already held:
    /// after a clear, a replay of the old record stays out.
    #[test]
    fn records_at_or_below_the_high_water_mark_are_refused() {
        let old = record(3, 2, 0x33, "i3");
        let new = record(3, 3, 0x34, "i3");
        assert_eq!(admit(&old, None, None), Ok(()), "nothing known yet");
        assert_eq!(admit(&new, Some(&old), Some(2)), Ok(()), "a newer nonce");
        assert_eq!(
            admit(&new, Some(&new), Some(3)),
            Ok(()),
            "the same record again"
        );
        assert_eq!(
            admit(&old, Some(&new), Some(3)),
            Err(Rejected::Rollback {
                token_id: 3,
                nonce: 2,
                high_water: 3
            })
        );
        let mut forged_same_nonce = new.clone();
        forged_same_nonce.endpoint = "203.0.113.9:1".into();
        assert!(admit(&forged_same_nonce, Some(&new), Some(3)).is_err());
        // Cleared: nothing held, the mark stays, and the last record cannot come back.
        assert!(
            admit(&new, None, Some(3)).is_err(),
            "replayed after a clear"
        );
    }

    /// A record is authentic only for the seat it names, and the chain and contract it was signed for.
    #[test]
    fn a_record_filed_under_another_seat_or_domain_is_not_believed() {
        let pins = Pins {
            kms_root: Address::ZERO,
            app_ids: Vec::new(),
            chain_id: 1,
            prefix: prefix([10, 0, 1, 0], 24),
        };
        let reg = record(3, 1, 0x33, "i3");
        let bound = Bound {
            instance_id: "i3",
            node: Address::ZERO,
        };
        assert_eq!(
            authenticate(&reg, 4, &pins, Address::ZERO, bound),
            Err(Rejected::WrongSeat {
                token_id: 3,
                filed_under: 4
            })
        );
        assert_eq!(
            authenticate(&reg, 3, &pins, Address::repeat_byte(1), bound),
            Err(Rejected::WrongDomain { token_id: 3 })
        );
        let other_chain = Pins {
            chain_id: 2,
            ..pins
        };
        assert_eq!(
            authenticate(&reg, 3, &other_chain, Address::ZERO, bound),
            Err(Rejected::WrongDomain { token_id: 3 })
        );
    }

    const OWN: &str = "0000000000000000000000000000000000000001";

    fn own(token: Option<u64>, key: Option<u8>) -> Own<'static> {
        Own {
            token_id: token,
            instance_id: OWN,
            wg_public_key: key.map(|k| Key::from_bytes([k; 32])),
        }
    }

    /// The seats of `records` that node `own` takes for peers in 10.0.1.0/24, and why it leaves out the
    /// others.
    fn peers_of(
        records: &BTreeMap<u64, SignedRegistration>,
        own: Own<'_>,
    ) -> (Vec<u64>, Vec<InvalidRecord>) {
        let (valid, invalid) = members(records, own, prefix([10, 0, 1, 0], 24));
        (valid.iter().map(|m| m.token_id).collect(), invalid)
    }

    /// Two seats claiming one key: neither is configured, each with a reason, and the others go on.
    #[test]
    fn two_seats_with_one_key_are_both_left_out() {
        let records: BTreeMap<u64, SignedRegistration> = [
            (2, record(2, 1, 0x22, "i2")),
            (3, record(3, 1, 0x77, "i3")),
            (4, record(4, 1, 0x77, "i4")),
        ]
        .into();
        let (peers, invalid) = peers_of(&records, own(Some(1), Some(0x11)));
        assert_eq!(peers, vec![2]);
        assert_eq!(
            invalid,
            vec![
                InvalidRecord::DuplicateKey {
                    token_id: 3,
                    other: 4
                },
                InvalidRecord::DuplicateKey {
                    token_id: 4,
                    other: 3
                },
            ]
        );
    }

    /// Three seats claiming one key each name the first other seat of the three, and a seat between them
    /// with its own key stays.
    #[test]
    fn three_seats_with_one_key_each_name_the_first_other() {
        let records: BTreeMap<u64, SignedRegistration> = [
            (7, record(7, 1, 0x77, "i7")),
            (8, record(8, 1, 0x88, "i8")),
            (3, record(3, 1, 0x77, "i3")),
            (9, record(9, 1, 0x77, "i9")),
        ]
        .into();
        let (peers, invalid) = peers_of(&records, own(Some(1), Some(0x11)));
        assert_eq!(peers, vec![8]);
        let named: Vec<(u64, u64)> = (invalid.iter())
            .map(|e| match e {
                InvalidRecord::DuplicateKey { token_id, other } => (*token_id, *other),
                e => panic!("not a duplicate: {e}"),
            })
            .collect();
        assert_eq!(named, vec![(3, 7), (7, 3), (9, 3)]);
    }

    /// This node's own records are never peers, whichever seat they are filed under.
    #[test]
    fn own_records_are_never_peers() {
        let records: BTreeMap<u64, SignedRegistration> = [
            (1, record(1, 1, 0x11, OWN)),
            (2, record(2, 1, 0x22, "i2")),
            (5, record(5, 1, 0x55, OWN)), // an old seat of this instance
            (6, record(6, 1, 0x11, "impostor")), // this node's key under another seat
        ]
        .into();
        let (peers, invalid) = peers_of(&records, own(Some(1), Some(0x11)));
        assert_eq!(peers, vec![2]);
        assert_eq!(
            invalid,
            vec![
                InvalidRecord::Itself { token_id: 5 },
                InvalidRecord::Itself { token_id: 6 }
            ]
        );
        // Before the node knows its seat, its own record is still not a peer.
        let (peers, _) = peers_of(&records, own(None, Some(0x11)));
        assert_eq!(peers, vec![2]);
    }
}
