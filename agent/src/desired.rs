//! The peers this node should have: from what it believes of the chain to what the interface should hold.
//! Pure, so it is tested without a chain or an interface.

use std::sync::Arc;

use mesh_chain::membership::{InvalidRecord, Member, Own};
use mesh_chain::policy::ClusterPolicy;
use mesh_chain::roster::{Moved, Roster};
use mesh_chain::view::ChainView;
use mesh_wg::{Ipv4Network, Key, PeerConfig, Reach, RelayTarget};

use crate::state::SeatState;

/// WireGuard keepalive towards every peer: keeps NAT mappings open and handshakes fresh.
pub const KEEPALIVE_SECS: u16 = 25;

/// This node's peers, carried from view to view, and why the other believed records are not: none at all
/// while the chain says this node has no active seat, since it is then no member. (Before the chain has
/// answered, the cached view is served.)
pub fn roster(
    view: &Arc<ChainView>,
    seat: SeatState,
    own: Own<'_>,
) -> (Option<Roster>, Vec<InvalidRecord>) {
    if seat.is_out() {
        return (None, Vec::new());
    }
    let (roster, invalid) = Roster::new(Arc::clone(view), own);
    (Some(roster), invalid)
}

/// The members of [`roster`], as a list.
pub fn members(
    view: &ChainView,
    seat: SeatState,
    own: Own<'_>,
) -> (Vec<Member>, Vec<InvalidRecord>) {
    let (roster, invalid) = roster(&Arc::new(view.clone()), seat, own);
    let members = roster.map_or_else(Vec::new, |r| r.members().values().cloned().collect());
    (members, invalid)
}

/// The grants between seats as they bear on this node: the cluster's policy, and this node's own tags (its
/// seat's and its app's).
#[derive(Debug, Clone, Copy)]
pub struct Grants<'a> {
    pub policy: &'a ClusterPolicy,
    pub own_tags: u32,
}

impl<'a> Grants<'a> {
    /// The grants for the node of seat `seat` (none yet: untagged), whose app is `app`.
    pub fn for_node(
        policy: &'a ClusterPolicy,
        seat: Option<u64>,
        app: Option<alloy::primitives::Address>,
    ) -> Self {
        let own_tags = seat.map_or(0, |seat| policy.tags_of(seat, app));
        Self { policy, own_tags }
    }

    /// The ports `member` may reach on this node.
    pub fn reach_here(&self, member: &Member) -> Reach {
        let theirs = self.policy.tags_of(member.token_id, Some(member.app_id));
        self.policy.rules.reach(theirs, self.own_tags)
    }

    /// The ports this node may reach on `member`.
    pub fn reach_there(&self, member: &Member) -> Reach {
        let theirs = self.policy.tags_of(member.token_id, Some(member.app_id));
        self.policy.rules.reach(self.own_tags, theirs)
    }
}

/// What the interface should hold for `members`: each one with a WireGuard key, at its overlay address, with
/// its relay on `relay_port` when relays are on and its gateway URL is a dstack gateway name, and reaching
/// here what `grants` allow it (everything before the grants are read, as with no policy).
pub fn peer_configs<'a>(
    members: impl IntoIterator<Item = &'a Member>,
    relay_port: Option<u16>,
    grants: Option<Grants<'_>>,
) -> Vec<PeerConfig> {
    members
        .into_iter()
        .filter_map(|m| {
            Some(PeerConfig {
                public_key: m.wg_public_key?,
                endpoint: m.endpoint,
                allowed_ips: vec![
                    Ipv4Network::new(m.overlay_ip, 32).expect("a /32 is always a valid prefix"),
                ],
                persistent_keepalive: Some(KEEPALIVE_SECS),
                relay: relay_port.and_then(|port| relay_of(m, port)),
                reach: grants.map_or_else(Reach::everything, |g| g.reach_here(m)),
            })
        })
        .collect()
}

/// What the interface should hold for the seats in `moved` alone, as [`peer_configs`] gives it, and every
/// key those seats had or have: a plan for them compares the one with the interface's peers of the other.
pub fn moved_configs(
    moved: &[Moved],
    relay_port: Option<u16>,
    grants: Option<Grants<'_>>,
) -> (Vec<PeerConfig>, Vec<Key>) {
    let want = peer_configs(
        moved.iter().filter_map(|m| m.after.as_ref()),
        relay_port,
        grants,
    );
    let mut keys: Vec<Key> = (moved.iter())
        .flat_map(|m| [&m.before, &m.after])
        .filter_map(|m| m.as_ref()?.wg_public_key)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    (want, keys)
}

/// A member's relay: its gateway URL with the relay port. A URL that is not a dstack gateway name gives
/// none: the peer is then direct only.
pub fn relay_of(member: &Member, relay_port: u16) -> Option<RelayTarget> {
    let url = member.gateway_url.as_deref()?;
    match mesh_relay::relay_target(url, relay_port) {
        Ok(target) => Some(target),
        Err(e) => {
            tracing::debug!(token = member.token_id, error = %e, "no relay for this peer");
            None
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloy::primitives::Address;
    use mesh_chain::record::SignedRegistration;
    use mesh_wg::Key;

    /// Seat `token`'s believed record with WireGuard key `key` (none when 0) and gateway URL `url`.
    pub(crate) fn record(token: u64, key: u8, url: &str) -> SignedRegistration {
        let mut r = mesh_chain::testing::believed_record(token, 1, key, &format!("{token:040x}"));
        r.gateway_url = url.to_owned();
        r
    }

    pub(crate) fn view(records: &[SignedRegistration]) -> ChainView {
        let mut v = mesh_chain::testing::empty_view();
        for r in records {
            v.records
                .insert(u64::try_from(r.token_id).unwrap(), r.clone().into());
        }
        v
    }

    pub(crate) fn own(token: Option<u64>) -> Own<'static> {
        Own {
            token_id: token,
            instance_id: "own",
            wg_public_key: Some(Key::from_bytes([0xee; 32])),
        }
    }

    /// A node whose seat is gone or inactive has no peers; one whose seat is not known yet serves its view.
    #[test]
    fn a_node_without_an_active_seat_has_no_peers() {
        let v = view(&[record(2, 0x22, ""), record(3, 0x33, "")]);
        for seat in [SeatState::None, SeatState::Inactive(1)] {
            assert!(members(&v, seat, own(None)).0.is_empty(), "{seat:?}");
        }
        assert_eq!(members(&v, SeatState::Unknown, own(None)).0.len(), 2);
        assert_eq!(members(&v, SeatState::Active(2), own(Some(2))).0.len(), 1);
    }

    /// Every member with a key is a /32 peer with keepalive; a TLS-only member is no WireGuard peer.
    #[test]
    fn members_with_keys_become_peers_at_their_overlay_address() {
        let v = view(&[record(2, 0x22, ""), record(3, 0, "https://x.example")]);
        let (m, _) = members(&v, SeatState::Active(1), own(Some(1)));
        assert_eq!(m.len(), 2, "the TLS node is a member");
        let peers = peer_configs(&m, None, None);
        assert_eq!(peers.len(), 1, "but no WireGuard peer");
        assert_eq!(peers[0].public_key, Key::from_bytes([0x22; 32]));
        assert_eq!(peers[0].allowed_ips[0].to_string(), "10.0.1.2/32");
        assert_eq!(peers[0].persistent_keepalive, Some(KEEPALIVE_SECS));
        assert_eq!(peers[0].endpoint.unwrap().to_string(), "192.0.2.2:51820");
        assert_eq!(peers[0].relay, None, "relays off");
        assert_eq!(peers[0].reach, Reach::everything(), "no grants read yet");
    }

    /// With a policy in force, each peer reaches here what the grants from its tags (its seat's and its
    /// app's) to this node's allow, and nothing when none does; this node's reach there is the other way.
    #[test]
    fn each_peer_reaches_here_what_the_grants_between_their_tags_allow() {
        use mesh_policy::{Grant, Policy, Protocol};
        const WEB: u32 = 1;
        const DB: u32 = 2;
        let web_app = Address::repeat_byte(0xa1);
        let mut web = record(2, 0x22, "");
        web.proof.app_id = web_app;
        let v = view(&[web, record(3, 0x33, "")]);
        let (m, _) = members(&v, SeatState::Active(1), own(Some(1)));
        let policy = ClusterPolicy {
            rules: Policy {
                enforced: true,
                version: 3,
                tag_names: vec!["web".into(), "db".into()],
                grants: vec![Grant {
                    from: WEB,
                    to: DB,
                    protocol: Some(Protocol::Tcp),
                    ports: 5432..=5432,
                }],
            },
            // Seat 2 is web by its app, seat 3 by its seat alone is neither; this node (seat 1) is db.
            seat_tags: [(1, DB)].into(),
            app_tags: [(web_app, WEB)].into(),
        };
        let grants = Grants::for_node(&policy, Some(1), None);
        assert_eq!(grants.own_tags, DB);
        let reach: Vec<Reach> = peer_configs(&m, None, Some(grants))
            .into_iter()
            .map(|p| p.reach)
            .collect();
        let postgres = Reach {
            all: false,
            tcp: vec![5432..=5432],
            udp: Vec::new(),
        };
        assert_eq!(reach[0], postgres, "the web seat reaches Postgres here");
        assert_eq!(
            reach[1],
            Reach::default(),
            "an untagged seat reaches nothing"
        );
        assert_eq!(
            grants.reach_there(&m[0]),
            Reach::default(),
            "no grant from db to web"
        );
        let unenforced = ClusterPolicy {
            rules: Policy {
                enforced: false,
                ..policy.rules.clone()
            },
            ..policy.clone()
        };
        let all = peer_configs(&m, None, Some(Grants::for_node(&unenforced, Some(1), None)));
        assert!(
            all.iter().all(|p| p.reach == Reach::everything()),
            "a policy not in force"
        );
    }

    /// With relays on, a peer whose gateway URL is a dstack gateway name gets its relay on the relay port;
    /// one with another URL or none stays direct only.
    #[test]
    fn a_peers_relay_is_its_gateway_name_on_the_relay_port() {
        let v = view(&[
            record(2, 0x22, "https://0123456789abcdef-8080.mesh.test"),
            record(3, 0x33, "https://db.example.com"),
            record(4, 0x44, ""),
        ]);
        let (m, _) = members(&v, SeatState::Active(1), own(Some(1)));
        let relays: Vec<Option<String>> = peer_configs(&m, Some(51820), None)
            .into_iter()
            .map(|p| p.relay.map(|r| r.to_string()))
            .collect();
        assert_eq!(
            relays,
            [
                Some("https://0123456789abcdef-51820.mesh.test".to_owned()),
                None,
                None
            ]
        );
    }
}
