//! A revert put into words: the cluster's, the election's or the app auth's custom error, with the next step
//! where there is an obvious one.

use alloy::primitives::U256;

use crate::contract::{DstackClusterAppAuth, DstackClusterElection, DstackClusterNFT, ipv4};
use crate::error::{ChainError, Revert};

use DstackClusterAppAuth::DstackClusterAppAuthErrors as AppAuthE;
use DstackClusterElection::DstackClusterElectionErrors as ElectionE;
use DstackClusterNFT::DstackClusterNFTErrors as E;

impl ChainError {
    /// Wraps a failed contract call, decoding a revert into [`ChainError::Reverted`] when there is one.
    pub fn from_call(what: &'static str, source: alloy::contract::Error) -> Self {
        match explain_revert(&source) {
            Some(revert) => ChainError::Reverted(revert),
            None => ChainError::Call { what, source },
        }
    }
}

/// Decodes the cluster's, the election's or the app auth's custom error out of a failed call or transaction,
/// if the node returned one.
pub fn explain_revert(error: &alloy::contract::Error) -> Option<Revert> {
    let data = error.as_revert_data()?;
    let decoded = <E as alloy::sol_types::SolInterface>::abi_decode(&data).ok();
    let election = || <ElectionE as alloy::sol_types::SolInterface>::abi_decode(&data).ok();
    let app_auth = <AppAuthE as alloy::sol_types::SolInterface>::abi_decode(&data).ok();
    Some(match (decoded, election()) {
        (Some(e), _) => describe(&e),
        (None, Some(e)) => describe_election(&e),
        (None, None) if let Some(e) = app_auth => describe_app_auth(&e),
        (None, None) => Revert {
            name: "unknown".into(),
            message: format!(
                "revert data 0x{} matches no error of this contract",
                alloy::hex::encode(&data)
            ),
            hint: Some("is the contract address a DstackClusterNFT of this version?".into()),
        },
    })
}

fn revert(name: &str, message: String, hint: Option<String>) -> Revert {
    Revert {
        name: name.into(),
        message,
        hint,
    }
}

fn describe(e: &E) -> Revert {
    let seat = |id: &U256| format!("seat {id}");
    match e {
        E::ClusterSeatNotBound(x) => revert(
            "ClusterSeatNotBound",
            format!("{} has no bound instance", seat(&x.tokenId)),
            Some(format!("its holder binds it to a node that asked for a seat: `meshctl bind --token {} --instance <instance id>`", x.tokenId)),
        ),
        E::ClusterSeatInactive(x) => revert(
            "ClusterSeatInactive",
            format!("{} is not active", seat(&x.tokenId)),
            Some(format!("its holder can run `meshctl activate --token {}`", x.tokenId)),
        ),
        E::ClusterSeatAlreadyActive(x) => {
            revert("ClusterSeatAlreadyActive", format!("{} is already active", seat(&x.tokenId)), None)
        }
        E::ClusterNotSeatHolder(x) => revert(
            "ClusterNotSeatHolder",
            format!("{} does not hold {} and is not approved for it", x.caller, seat(&x.tokenId)),
            Some("sign with the key of the seat's holder; a vote or an election may also come from the seat's node key while its record stands".into()),
        ),
        E::ClusterInstanceAlreadyBound(x) => revert(
            "ClusterInstanceAlreadyBound",
            format!("instance {} is already bound to {}", x.instanceId, seat(&x.tokenId)),
            Some("an instance can hold one seat; unbind it there first (rebind or deactivate that seat). A binding whose quote does not show that instance is released once f + 1 seats dispute it (DstackClusterElection.disputeBinding)".into()),
        ),
        E::ClusterClaimDisputed(x) => revert(
            "ClusterClaimDisputed",
            format!("{}'s binding to instance {} was disputed away by the cluster's members", seat(&x.tokenId), x.instanceId),
            Some(format!("that seat may not claim that instance again: bind it to an instance whose quote shows it runs there, or bind the instance to another seat; if the node is genuine (its evidence only looked forged), the cluster's owner lets the seat claim it again with `meshctl clear-claim --token {} --instance {}`", x.tokenId, x.instanceId)),
        ),
        E::ClusterOnlyElection(x) => revert(
            "ClusterOnlyElection",
            format!("{} is not the cluster's election: only the election releases a disputed binding", x.caller),
            None,
        ),
        E::ClusterInvalidHolder(_) => revert(
            "ClusterInvalidHolder",
            "a request for a seat names no holder".into(),
            Some("the node asks its --holder, or the cluster's owner when that is empty".into()),
        ),
        E::ClusterInvalidInstanceId(x) => revert(
            "ClusterInvalidInstanceId",
            format!("{:?} is not an instance id", x.instanceId),
            Some("use the 40 lowercase hex characters of dstack's Info.instance_id, without 0x".into()),
        ),
        E::ClusterMaxNodesReached(x) => revert(
            "ClusterMaxNodesReached",
            format!("the cluster already has its maximum of {} active seats", x.maxNodes),
            Some("raise it with `meshctl config set --max-nodes N`, or deactivate a seat".into()),
        ),
        E::ClusterPrefixExhausted(x) => revert(
            "ClusterPrefixExhausted",
            format!("seat id {} does not fit the mesh prefix, which holds {} seats", x.tokenId, x.capacity),
            Some("deploy a cluster with a wider prefix".into()),
        ),
        E::ClusterMintNotAllowed(x) => revert(
            "ClusterMintNotAllowed",
            format!("{} may not mint: only the owner mints while public minting is off", x.caller),
            Some("sign with the owner's key, or have the owner run `meshctl config set --public-minting true`".into()),
        ),
        E::ClusterWrongPayment(x) => revert(
            "ClusterWrongPayment",
            format!("minting costs {} wei, {} wei was sent", x.expected, x.sent),
            None,
        ),
        E::ClusterInvalidPrefix(x) => revert(
            "ClusterInvalidPrefix",
            format!("{}/{} is not a usable mesh prefix", ipv4(x.network), x.prefixLength),
            Some("use a network address with its host bits zero and a length from 8 to 30".into()),
        ),
        E::ClusterInvalidKmsRoot(_) => revert("ClusterInvalidKmsRoot", "the KMS root must not be zero".into(), None),
        E::ClusterInvalidAppId(_) => revert("ClusterInvalidAppId", "an app id must not be zero".into(), None),
        E::ClusterWithdrawFailed(x) => revert(
            "ClusterWithdrawFailed",
            format!("sending {} wei to {} failed", x.amount, x.to),
            None,
        ),
        E::RegistryStaleNonce(x) => revert(
            "RegistryStaleNonce",
            format!("nonce {} is not above {}'s last nonce {}", x.nonce, seat(&x.tokenId), x.lastNonce),
            Some("this registration is old or a replay; the agent signs a fresh one".into()),
        ),
        E::RegistryEmptyRecord(x) => revert(
            "RegistryEmptyRecord",
            format!("the record for {} has neither a WireGuard key nor a gateway URL", seat(&x.tokenId)),
            None,
        ),
        E::RegistryEndpointWithoutKey(x) => revert(
            "RegistryEndpointWithoutKey",
            format!("the record for {} has an endpoint but no WireGuard key", seat(&x.tokenId)),
            None,
        ),
        E::RegistryInvalidEndpoint(x) => revert(
            "RegistryInvalidEndpoint",
            format!("{:?} is not a host:port endpoint", x.endpoint),
            Some("use host:port, e.g. 203.0.113.5:51820 or [2001:db8::1]:51820".into()),
        ),
        E::RegistryInvalidGatewayUrl(x) => revert(
            "RegistryInvalidGatewayUrl",
            format!("{:?} is not an acceptable gateway URL", x.gatewayUrl),
            Some("use http(s)://host[:port][/path] with a lowercase host, at most 128 bytes".into()),
        ),
        E::RegistryGatewayUrlNotHttps(x) => revert(
            "RegistryGatewayUrlNotHttps",
            format!("{:?} is not https, which production mode requires", x.gatewayUrl),
            None,
        ),
        E::RegistryGatewayDomainNotAllowed(x) => revert(
            "RegistryGatewayDomainNotAllowed",
            format!("{:?} is not under an allowed base domain", x.gatewayUrl),
            Some("the owner adds one with `meshctl config set --add-base-domain DOMAIN`".into()),
        ),
        E::RegistryInvalidKeyLength(x) => revert(
            "RegistryInvalidKeyLength",
            format!("a public key in the proof has {} bytes instead of 64", x.length),
            None,
        ),
        E::RegistryAppIdNotAllowed(x) => revert(
            "RegistryAppIdNotAllowed",
            format!("dstack app id {} is not allowed in this cluster", x.appId),
            Some(format!("the owner allows it with `meshctl config set --allow-app-id {}`", x.appId)),
        ),
        E::RegistryPurposeMismatch(x) => revert(
            "RegistryPurposeMismatch",
            format!("the proof's purpose {:?} is not the seat's {:?}", x.purpose, x.expected),
            Some("the proof names another instance or node key than the seat is bound to: a sibling instance of the app, or this instance after losing its key store (its holder re-binds the seat to the new key)".into()),
        ),
        E::RegistryAppSignatureInvalid(x) => revert(
            "RegistryAppSignatureInvalid",
            format!("the app signature recovers {}, not the supplied app key {}", x.recovered, x.appKey),
            None,
        ),
        E::RegistryKmsSignatureInvalid(x) => revert(
            "RegistryKmsSignatureInvalid",
            format!("the KMS signature recovers {}, not the cluster's KMS root {}", x.recovered, x.kmsRoot),
            Some("the instance runs under another KMS than the one this cluster pins".into()),
        ),
        E::RegistryRecordSignatureInvalid(x) => revert(
            "RegistryRecordSignatureInvalid",
            format!("the record signature recovers {}, not the seat's node key {}", x.recovered, x.node),
            Some("the record was changed after signing, or signed for another seat, contract or chain".into()),
        ),
        E::RegistryMalformedSignature(x) => revert(
            "RegistryMalformedSignature",
            format!(
                "{} is not a 65-byte signature in its one accepted encoding (v 0/1 for dstack's chain, 27/28 for EIP-712; low s)",
                x.field
            ),
            Some("a re-encoded copy of a genuine signature is refused on purpose; the node's own registration is unaffected".into()),
        ),
        E::RegistrySeatAppMismatch(x) => revert(
            "RegistrySeatAppMismatch",
            format!("{} serves dstack app {}, and this proof comes from app {}", seat(&x.tokenId), x.seatAppId, x.appId),
            Some(format!("if the seat should serve the other app, the owner runs `meshctl reset-seat-app --token {}`", x.tokenId)),
        ),
        E::ClusterBindNeedsEvidence(x) => revert(
            "ClusterBindNeedsEvidence",
            format!("the binding of instance {} carries no attestation evidence", x.instanceId),
            Some("use the binding the node asked with (`meshctl bind --instance`), or the one `p2p-agent identity --bind-holder` prints in the instance: it carries the instance's TDX quote".into()),
        ),
        E::ClusterBindConsentInvalid(x) => revert(
            "ClusterBindConsentInvalid",
            format!("the binding's consent signature recovers {}, not its node key {}", x.recovered, x.node),
            Some("the binding was made for another holder, contract or chain: the node asks the holder its --holder names (by default the cluster's owner), or make one with `p2p-agent identity --bind-holder <holder>`".into()),
        ),
        E::RegistryWireGuardKeyInUse(x) => revert(
            "RegistryWireGuardKeyInUse",
            format!("WireGuard key 0x{} is already used by {}", alloy::hex::encode(x.wgPublicKey), seat(&x.tokenId)),
            None,
        ),
        E::OwnableUnauthorizedAccount(x) => revert(
            "OwnableUnauthorizedAccount",
            format!("{} is not the cluster owner", x.account),
            Some("sign with the owner's key (--private-key-file or PRIVATE_KEY)".into()),
        ),
        E::ERC721NonexistentToken(x) => revert(
            "ERC721NonexistentToken",
            format!("{} does not exist (never minted, or revoked)", seat(&x.tokenId)),
            None,
        ),
        other => {
            let text = format!("{other:?}");
            let name = text.split(['(', ' ', '{']).next().unwrap_or("unknown").to_string();
            revert(&name, text, None)
        }
    }
}

fn describe_election(e: &ElectionE) -> Revert {
    let seat = |id: &U256| format!("seat {id}");
    match e {
        ElectionE::LeaderAlreadyElected(x) => revert(
            "LeaderAlreadyElected",
            format!("{} is already the leader", seat(&x.tokenId)),
            None,
        ),
        ElectionE::LeaderNoEligibleSeat(_) => revert(
            "LeaderNoEligibleSeat",
            "no active seat is under the no-confidence threshold".into(),
            None,
        ),
        ElectionE::LeaderCannotVoteForSelf(x) => revert(
            "LeaderCannotVoteForSelf",
            format!("{} cannot vote against itself", seat(&x.tokenId)),
            None,
        ),
        ElectionE::LeaderNoVote(x) => revert(
            "LeaderNoVote",
            format!("{} has no vote to withdraw", seat(&x.tokenId)),
            None,
        ),
        ElectionE::LeaderNotSeatAgent(x) => revert(
            "LeaderNotSeatAgent",
            format!(
                "{} may not vote for {}: only its holder (or whoever the holder approved) and its node while its record stands may",
                x.caller,
                seat(&x.tokenId)
            ),
            Some("sign with the seat holder's key (--private-key-file or PRIVATE_KEY)".into()),
        ),
        ElectionE::LeaderSeatInactive(x) => revert(
            "LeaderSeatInactive",
            format!(
                "{} is not active (deactivated or revoked)",
                seat(&x.tokenId)
            ),
            Some(format!(
                "its holder activates it with `meshctl activate --token {}`",
                x.tokenId
            )),
        ),
        ElectionE::DisputeBindingChanged(x) => revert(
            "DisputeBindingChanged",
            format!(
                "{} was bound again at block {} since the binding of block {} was checked: that binding is gone",
                seat(&x.tokenId),
                x.current,
                x.disputed
            ),
            Some("check the seat's new binding; dispute it only if its quote does not show what it claims".into()),
        ),
        ElectionE::DisputeSeatNotBound(x) => revert(
            "DisputeSeatNotBound",
            format!(
                "{} is bound to no instance: there is no binding to dispute",
                seat(&x.tokenId)
            ),
            None,
        ),
        ElectionE::LeaderNotLeader(x) => revert(
            "LeaderNotLeader",
            if x.leaderTokenId.is_zero() {
                format!("{} cannot hand off: no seat leads", seat(&x.tokenId))
            } else {
                format!(
                    "{} cannot hand off: {} leads",
                    seat(&x.tokenId),
                    seat(&x.leaderTokenId)
                )
            },
            Some("only the leader hands off; see `meshctl leader show`".into()),
        ),
        ElectionE::LeaderHandOffIneligible(x) => revert(
            "LeaderHandOffIneligible",
            format!(
                "{} cannot take the lead: it is the leader itself, inactive, draining, or at the no-confidence threshold",
                seat(&x.tokenId)
            ),
            Some("pick another seat with --to, or leave --to out to let the leader choose".into()),
        ),
        ElectionE::LeaderOnlyCluster(x) => revert(
            "LeaderOnlyCluster",
            format!(
                "{} is not the cluster: only the cluster tells the election a seat left",
                x.caller
            ),
            None,
        ),
    }
}

fn describe_app_auth(e: &AppAuthE) -> Revert {
    match e {
        AppAuthE::AppAuthNotClusterOwner(x) => revert(
            "AppAuthNotClusterOwner",
            format!("{} is not the cluster owner", x.caller),
            Some(
                "the app-auth allowlists and the TCB policy are the cluster owner's: sign with the owner's key"
                    .into(),
            ),
        ),
        AppAuthE::AppAuthTcbStatusesWithoutUpToDate(x) => revert(
            "AppAuthTcbStatusesWithoutUpToDate",
            format!(
                "TCB status mask {:#010b} leaves out UpToDate (bit 0)",
                x.statuses
            ),
            Some("a TCB policy always accepts UpToDate: set bit 0, or 0 for no policy".into()),
        ),
        AppAuthE::AppAuthInvalidAdvisoryId(x) => revert(
            "AppAuthInvalidAdvisoryId",
            format!(
                "{:?} is not an advisory id: 1 to 32 capital letters, digits and dashes",
                x.advisoryId
            ),
            Some("write it as Intel's TCB info does, e.g. INTEL-SA-00837".into()),
        ),
        AppAuthE::AppAuthInvalidDomain(x) => revert(
            "AppAuthInvalidDomain",
            format!("{:?} is not a lowercase DNS name", x.domain),
            Some("give the domain alone, lowercase, without a scheme or a leading dot: phala.network".into()),
        ),
        AppAuthE::AppAuthUnknownDomain(x) => revert(
            "AppAuthUnknownDomain",
            format!("{:?} is not an allowed base domain", x.domain),
            Some("`meshctl config show` lists them".into()),
        ),
        AppAuthE::PolicyTooManyTags(x) => revert(
            "PolicyTooManyTags",
            format!("{} tags, more than the 32 a policy names", x.count),
            Some("merge tags, or tag apps rather than seats".into()),
        ),
        AppAuthE::PolicyInvalidTagName(x) => revert(
            "PolicyInvalidTagName",
            format!("{:?} is not a tag name: 1 to 32 lowercase letters, digits and dashes", x.name),
            None,
        ),
        AppAuthE::PolicyTooManyGrants(x) => revert(
            "PolicyTooManyGrants",
            format!("{} grants, more than the 256 a policy holds", x.count),
            Some("merge grants of the same tags into port ranges".into()),
        ),
        AppAuthE::PolicyInvalidGrant(x) => revert(
            "PolicyInvalidGrant",
            format!(
                "grant {} names no tag on a side, a protocol other than tcp or udp, or ports that run backwards (or there is no grant {0})",
                x.index
            ),
            Some("`meshctl policy show` lists the grants, from 0".into()),
        ),
        AppAuthE::StringsInsufficientHexLength(_) => revert(
            "StringsInsufficientHexLength",
            "the app auth could not write an instance id as hex".into(),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::sol_types::SolError;

    #[test]
    fn unbound_seat_revert_names_the_bind_command() {
        let e = E::ClusterSeatNotBound(DstackClusterNFT::ClusterSeatNotBound {
            tokenId: U256::from(3),
        });
        let r = describe(&e);
        assert_eq!(r.name, "ClusterSeatNotBound");
        assert_eq!(r.message, "seat 3 has no bound instance");
        assert_eq!(
            r.hint.as_deref(),
            Some(
                "its holder binds it to a node that asked for a seat: `meshctl bind --token 3 --instance <instance id>`"
            )
        );
    }

    /// The generated error selectors are the contract's, so revert data decodes to the right variant.
    #[test]
    fn revert_data_decodes_to_the_contract_error() {
        let err = DstackClusterNFT::RegistryStaleNonce {
            tokenId: U256::from(2),
            lastNonce: 5,
            nonce: 4,
        };
        let data = err.abi_encode();
        let decoded = <E as alloy::sol_types::SolInterface>::abi_decode(&data).expect("decodes");
        let r = describe(&decoded);
        assert_eq!(r.message, "nonce 4 is not above seat 2's last nonce 5");
    }
}
