//! The cluster's policy of who may reach whom, as its app auth holds it (`DstackClusterGrants`): the rules
//! ([`mesh_policy::Policy`]) and the tags of each seat and app, whose union is a seat's tags.

use std::collections::BTreeMap;

use alloy::eips::BlockId;
use alloy::primitives::Address;
use alloy::providers::Provider;

use crate::contract::DstackClusterAppAuth;
use crate::error::ChainError;

/// The policy as of a block.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPolicy {
    pub rules: mesh_policy::Policy,
    /// Each tagged seat's own tags.
    pub seat_tags: BTreeMap<u64, u32>,
    /// The tags of every seat that serves each tagged app.
    pub app_tags: BTreeMap<Address, u32>,
}

impl ClusterPolicy {
    /// Seat `seat`'s tags: its own, and those of `app`, the app its record serves.
    pub fn tags_of(&self, seat: u64, app: Option<Address>) -> u32 {
        let own = self.seat_tags.get(&seat).copied().unwrap_or(0);
        own | app
            .and_then(|a| self.app_tags.get(&a))
            .copied()
            .unwrap_or(0)
    }
}

/// Reads the whole policy from the app auth at `auth`, at block `at`, in one call.
///
/// # Errors
/// [`ChainError`] when the call fails, or when what it returns cannot be a policy the contract holds (a
/// lying RPC): lists of different lengths, a grant of a protocol it never accepts.
pub async fn read<P: Provider>(
    auth: &DstackClusterAppAuth::DstackClusterAppAuthInstance<P>,
    at: BlockId,
) -> Result<ClusterPolicy, ChainError> {
    let p = auth
        .policy()
        .block(at)
        .call()
        .await
        .map_err(|e| ChainError::from_call("policy", e))?;
    let implausible = |detail: String| ChainError::Implausible { detail };
    if p.seats.len() != p.seatTags.len() || p.apps.len() != p.appTags.len() {
        return Err(implausible(format!(
            "policy() returned {} seats with {} tag sets and {} apps with {}",
            p.seats.len(),
            p.seatTags.len(),
            p.apps.len(),
            p.appTags.len()
        )));
    }
    let grants = p
        .grants
        .iter()
        .enumerate()
        .map(|(i, g)| {
            mesh_policy::Grant::from_contract(g.from, g.to, g.protocol, g.firstPort, g.lastPort)
                .filter(|g| g.ports.start() <= g.ports.end())
                .ok_or_else(|| {
                    format!(
                        "policy() returned grant {i} of protocol {} and ports {}-{}, which the contract never holds",
                        g.protocol, g.firstPort, g.lastPort
                    )
                })
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(implausible)?;
    let seat_tags = p
        .seats
        .iter()
        .zip(&p.seatTags)
        .map(|(s, t)| {
            u64::try_from(*s)
                .map(|s| (s, *t))
                .map_err(|_| format!("policy() returned seat {s}"))
        })
        .collect::<Result<_, String>>()
        .map_err(implausible)?;
    Ok(ClusterPolicy {
        rules: mesh_policy::Policy {
            enforced: p.enforced,
            version: p.version,
            tag_names: p.tagNames,
            grants,
        },
        seat_tags,
        app_tags: p.apps.into_iter().zip(p.appTags).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seats_tags_are_its_own_and_its_apps() {
        let app = Address::repeat_byte(7);
        let p = ClusterPolicy {
            seat_tags: [(1, 0b01)].into(),
            app_tags: [(app, 0b10)].into(),
            ..ClusterPolicy::default()
        };
        assert_eq!(p.tags_of(1, Some(app)), 0b11);
        assert_eq!(p.tags_of(1, None), 0b01);
        assert_eq!(p.tags_of(2, Some(app)), 0b10);
        assert_eq!(p.tags_of(2, Some(Address::ZERO)), 0);
    }
}
