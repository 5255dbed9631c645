"""The grants between seats as the agent shows them: ``status.policy``, each peer's ``policy``, and
``Peer.may_reach``, read from the shared fixture (sdk/fixtures/snapshot.json)."""

from __future__ import annotations

from typing import Any

import pytest

from dstack_p2p import PeerPolicy, PolicyDrops, PolicyStatus, Ports, ProtocolError, Status
from dstack_p2p.models import peers_from_json
from fake_agent import peer_json, snapshot, status_json


def test_the_status_shows_the_policy_in_force() -> None:
    assert Status.from_json(status_json()).policy == PolicyStatus(
        enforced=True, version=3, grants=2, own_tags=("web",), dropped=PolicyDrops(no_grant=7)
    )


def test_each_peer_shows_what_the_grants_let_pass() -> None:
    seat2, seat3 = peers_from_json(snapshot("peers"))
    assert seat2.policy == PeerPolicy(
        reaches_here=Ports(tcp=("8080",)),
        reachable_there=Ports(tcp=("5432", "6000-6010"), udp=("53",)),
        dropped=PolicyDrops(no_grant=7),
    )
    # No grant names seat 3: it reaches nothing here, and nothing there is reachable.
    assert seat3.policy == PeerPolicy(reaches_here=Ports(), reachable_there=Ports())


def test_may_reach_a_port_a_range_and_by_protocol() -> None:
    seat2, seat3 = peers_from_json(snapshot("peers"))
    assert seat2.may_reach(5432) and seat2.may_reach(5432, "tcp")
    assert seat2.may_reach(6000) and seat2.may_reach(6005) and seat2.may_reach(6010)
    assert not seat2.may_reach(5999) and not seat2.may_reach(6011) and not seat2.may_reach(8080)
    assert seat2.may_reach(53, "udp") and not seat2.may_reach(53) and not seat2.may_reach(5432, "udp")
    assert not any(seat3.may_reach(p, proto) for p in (53, 5432, 6000, 8080) for proto in ("tcp", "udp"))
    # What the peer reaches here is the other way round.
    assert seat2.policy is not None and seat2.policy.reaches_here.allows(8080)
    assert not seat2.policy.reaches_here.allows(5432)


def test_without_a_policy_in_force_every_port_is_reachable() -> None:
    raw = peer_json(2)
    del raw["policy"]
    peer = peers_from_json([raw])[0]
    assert peer.policy is None
    assert peer.may_reach(1) and peer.may_reach(65535, "udp") and peer.may_reach(0)


@pytest.mark.parametrize(
    ("port", "protocol"),
    [(65536, "tcp"), (-1, "tcp"), (True, "tcp"), ("5432", "tcp"), (5432, "icmp"), (5432, "TCP")],
)
def test_may_reach_refuses_what_is_no_port(port: Any, protocol: str) -> None:
    with_policy = peers_from_json(snapshot("peers"))[0]
    raw = peer_json(2)
    del raw["policy"]
    without = peers_from_json([raw])[0]
    for peer in (with_policy, without):
        with pytest.raises(ValueError):
            peer.may_reach(port, protocol)


def test_ports_skip_entries_that_are_neither_a_port_nor_a_range() -> None:
    ports = Ports(tcp=("nonsense", "80-", "22", " 8000 - 8080 "))
    assert ports.allows(22) and ports.allows(8000) and ports.allows(8080)
    assert not ports.allows(80) and not ports.allows(23)


def test_a_version_read_but_not_yet_on_the_interface_is_pending() -> None:
    raw = status_json()
    assert Status.from_json(raw).policy.pending is None
    raw["policy"]["pending"] = 4
    policy = Status.from_json(raw).policy
    assert (policy.version, policy.pending) == (3, 4)


def test_an_agent_older_than_grants_or_that_has_not_read_them() -> None:
    raw = status_json()
    del raw["policy"]
    assert Status.from_json(raw).policy is None
    raw["policy"] = None
    assert Status.from_json(raw).policy is None
    # Positional construction, as code written before the field does it, still works.
    s = Status.from_json(raw)
    assert Status(s.version, s.mode, s.backend, s.node, s.chain, 1, 2, 1).policy is None


def test_fields_a_later_agent_may_leave_out_fall_back() -> None:
    raw = status_json()
    for field in ("ownTags", "dropped"):
        del raw["policy"][field]
    assert Status.from_json(raw).policy == PolicyStatus(enforced=True, version=3, grants=2)
    peer = peer_json(2)
    del peer["policy"]["dropped"]
    del peer["policy"]["reachesHere"]["udp"]
    del peer["policy"]["reachableThere"]["tcp"]
    policy = peers_from_json([peer])[0].policy
    assert policy == PeerPolicy(
        reaches_here=Ports(tcp=("8080",)), reachable_there=Ports(udp=("53",)), dropped=PolicyDrops()
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"enforced": "yes"}, "status.policy has 'enforced' = 'yes', of the wrong type"),
        ({"version": None}, "status.policy has 'version' = None"),
        ({"grants": 1.5}, "status.policy has 'grants' = 1.5"),
        ({"pending": "4"}, "status.policy has 'pending' = '4'"),
        ({"ownTags": ["web", 3]}, "status.policy has 'ownTags' = \\['web', 3\\], not a list of strings"),
        ({"dropped": {"noGrant": "7"}}, "status.policy.dropped has 'noGrant' = '7'"),
    ],
)
def test_a_bad_status_policy_names_the_field(change: dict[str, Any], message: str) -> None:
    raw = status_json()
    raw["policy"].update(change)
    with pytest.raises(ProtocolError, match=message):
        Status.from_json(raw)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reachesHere": None}, "peer.policy has 'reachesHere' = None"),
        ({"reachableThere": {"tcp": [5432]}}, "peer.policy.reachableThere has 'tcp' = \\[5432\\]"),
        ({"dropped": []}, "peer.policy has 'dropped' = \\[\\]"),
    ],
)
def test_a_bad_peer_policy_names_the_field(change: dict[str, Any], message: str) -> None:
    raw = peer_json(2)
    raw["policy"].update(change)
    with pytest.raises(ProtocolError, match=message):
        peers_from_json([raw])


def test_the_policy_is_no_change_of_the_peer() -> None:
    """The agent's definition: what the grants let pass is not in ``change_key``."""
    a = peers_from_json([peer_json(2)])[0]
    raw = peer_json(2)
    raw["policy"]["reachableThere"]["tcp"] = []
    assert peers_from_json([raw])[0].change_key() == a.change_key()
