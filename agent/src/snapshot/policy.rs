//! The grants between seats as the API shows them: the policy in `/v1/status`, and between this node and
//! each peer in `/v1/peers`.

use mesh_api::{PeerPolicy, PolicyDrops, PolicyStatus, Ports};
use mesh_chain::membership::Member;
use mesh_wg::{DropCounts, PeerStatus, Reach};

use crate::desired::Grants;

/// The policy the interface enforces (`applied`) and what it dropped here, with the version `read` from
/// the chain while the interface does not hold it yet; none before the grants are applied.
pub(super) fn status(
    applied: Option<Grants<'_>>,
    read: Option<Grants<'_>>,
    dropped: &DropCounts,
) -> Option<PolicyStatus> {
    let g = applied?;
    let version = g.policy.rules.version;
    Some(PolicyStatus {
        enforced: g.policy.rules.enforced,
        version,
        pending: read
            .map(|r| r.policy.rules.version)
            .filter(|&read| read != version),
        grants: g.policy.rules.grants.len(),
        own_tags: g.policy.rules.tag_names(g.own_tags),
        dropped: drops(dropped),
    })
}

/// What passes between this node and `member`; none while no policy is in force. What it reaches here is
/// what the interface enforces (`stat`), once its peer is set.
pub(super) fn peer(
    grants: Option<Grants<'_>>,
    member: &Member,
    stat: Option<&PeerStatus>,
) -> Option<PeerPolicy> {
    let g = grants.filter(|g| g.policy.rules.enforced)?;
    let here = stat.map_or_else(|| g.reach_here(member), |s| s.reach.clone());
    Some(PeerPolicy {
        reaches_here: ports(&here),
        reachable_there: ports(&g.reach_there(member)),
        dropped: stat.map_or_else(PolicyDrops::default, |s| drops(&s.policy_dropped)),
    })
}

fn ports(reach: &Reach) -> Ports {
    if reach.all {
        return Ports {
            tcp: vec!["1-65535".into()],
            udp: vec!["1-65535".into()],
        };
    }
    Ports {
        tcp: Ports::render(&reach.tcp),
        udp: Ports::render(&reach.udp),
    }
}

fn drops(d: &DropCounts) -> PolicyDrops {
    PolicyDrops {
        no_grant: d.no_grant,
        protocol: d.protocol,
        malformed: d.malformed,
    }
}
