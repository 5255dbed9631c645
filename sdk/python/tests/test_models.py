from __future__ import annotations

from typing import Any

import pytest

from dstack_p2p import (
    AppHealth,
    Health,
    HealthCheck,
    Leader,
    Peer,
    PeerPolicy,
    PolicyDrops,
    Ports,
    ProtocolError,
    Status,
)
from dstack_p2p.models import addresses, peers_from_json
from fake_agent import LEADER_LEASE_FIELDS, leader_json, peer_json, snapshot, status_json


def test_peer_every_field_and_unknown_ones_ignored() -> None:
    raw = peer_json(2, leader=True, futureField={"x": 1}, path="relay", relayUrl="https://r")
    p = Peer.from_json(raw)
    assert p == Peer(
        token_id=2,
        instance_id="inst2",
        overlay_ip="10.0.1.2",
        wg_public_key="Ii" * 21 + "I=",
        endpoint="192.0.2.2:51820",
        gateway_url=None,
        connection="wireguard",
        path="relay",
        relay_url="https://r",
        address="10.0.1.2",
        healthy=True,
        latest_handshake=1763856000,
        rx_bytes=123,
        tx_bytes=456,
        leader=True,
        last_heard=1763856001,
        policy=PeerPolicy(
            reaches_here=Ports(tcp=("8080",)),
            reachable_there=Ports(tcp=("5432", "6000-6010"), udp=("53",)),
            dropped=PolicyDrops(no_grant=7),
        ),
    )


def test_a_punched_peer_and_a_relayed_one_with_its_reason() -> None:
    punched = Peer.from_json(peer_json(2, path="punched"))
    assert punched.path == "punched" and punched.path_reason is None
    why = "no UDP address is known for the peer; the peer has published no address to try"
    relayed = Peer.from_json(peer_json(3, path="relay", pathReason=why))
    assert relayed.path_reason == why
    assert relayed.change_key() == Peer.from_json(peer_json(3, path="relay", pathReason="other")).change_key(), (
        "the reason is no change of the peer"
    )


def test_a_peer_on_a_peer_relay_names_the_seat_relaying() -> None:
    raw = {
        "tokenId": 2,
        "instanceId": "inst2",
        "overlayIp": "10.0.1.2",
        "wgPublicKey": None,
        "endpoint": None,
        "gatewayUrl": None,
        "connection": "wireguard",
        "path": "peer-relay",
        "relaySeat": 3,
        "address": "10.0.1.2",
        "healthy": True,
        "latestHandshake": None,
        "rxBytes": 0,
        "txBytes": 0,
    }
    p = Peer.from_json(raw)
    assert (p.path, p.relay_seat) == ("peer-relay", 3)
    assert Peer.from_json(peer_json(2)).relay_seat is None, "absent while not on a peer relay"
    with pytest.raises(ProtocolError, match="'relaySeat' = '3'"):
        Peer.from_json({**raw, "relaySeat": "3"})


def test_when_a_peer_was_last_heard_from() -> None:
    assert Peer.from_json(peer_json(2, lastHeard=1763856001)).last_heard == 1763856001
    assert Peer.from_json(peer_json(2, lastHeard=None)).last_heard is None
    assert Peer.from_json(peer_json(2, lastHeard=1)).change_key() == Peer.from_json(
        peer_json(2, lastHeard=2)
    ).change_key(), "its time is no change of the peer"


def test_peer_nulls_and_fields_of_older_agents() -> None:
    raw = peer_json(5, address=None, wgPublicKey=None, endpoint=None, path=None, latestHandshake=None)
    for newer in ("leader", "path", "relayUrl"):
        del raw[newer]
    raw.pop("pathReason", None)
    raw.pop("lastHeard", None)
    p = Peer.from_json(raw)
    assert (p.address, p.wg_public_key, p.endpoint, p.path, p.relay_url, p.latest_handshake) == (None,) * 6
    assert p.last_heard is None
    assert p.leader is False and p.healthy is False and p.connection == "unreachable"


def test_peers_in_token_order_and_addresses_without_nulls() -> None:
    peers = peers_from_json(
        [peer_json(4), peer_json(2, address=None), peer_json(3, address="https://gw.example")]
    )
    assert [p.token_id for p in peers] == [2, 3, 4]
    assert addresses(peers) == ["https://gw.example", "10.0.1.4"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({k: v for k, v in peer_json(2).items() if k != "tokenId"}, "no field 'tokenId'"),
        ({**peer_json(2), "tokenId": "2"}, "'tokenId' = '2', of the wrong type"),
        ({**peer_json(2), "rxBytes": True}, "'rxBytes' = True"),
        ({**peer_json(2), "overlayIp": None}, "'overlayIp' = None"),
        ([1], "not a JSON object"),
    ],
)
def test_bad_peer_names_the_field(raw: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Peer.from_json(raw)


def test_peer_list_must_be_an_array() -> None:
    with pytest.raises(ProtocolError, match="not a JSON array"):
        peers_from_json({"peers": []})


def test_status_nested_and_nulls() -> None:
    raw = status_json()
    raw["node"].update(
        tokenId=None, overlayIp=None, registered=False, registrationError="no seat\n  meshctl mint"
    )
    raw["chain"].update(head=None, lastProcessedBlock=None, lag=None, lastError="connection refused")
    raw["chain"]["new"] = 1
    raw["newTopLevel"] = [1, 2]
    s = Status.from_json(raw)
    assert s.mode == "wireguard" and s.backend == "userspace" and s.uptime_secs == 12
    assert s.node.token_id is None and s.node.overlay_ip is None and not s.node.registered
    assert s.node.registration_error == "no seat\n  meshctl mint"
    assert s.node.listen_port == 51820 and s.node.interface == "dsm0"
    assert s.chain.contract == "0x5fbdb2315678afecb367f032d93f642f64180aa3"
    assert s.chain.head is None and s.chain.last_error == "connection refused" and s.chain.chain_id == 31337


def test_chain_prefix_and_an_agent_that_has_not_read_it() -> None:
    raw = status_json()
    raw["chain"]["prefix"] = "10.1.0.0/16"
    assert Status.from_json(raw).chain.prefix == "10.1.0.0/16"
    del raw["chain"]["prefix"]
    assert Status.from_json(raw).chain.prefix is None
    raw["chain"]["prefix"] = None
    assert Status.from_json(raw).chain.prefix is None
    raw["chain"]["prefix"] = 24
    with pytest.raises(ProtocolError, match="status.chain has 'prefix' = 24, of the wrong type"):
        Status.from_json(raw)


def test_chain_subscribed_and_an_agent_older_than_it() -> None:
    raw = status_json()
    raw["chain"]["subscribed"] = True
    assert Status.from_json(raw).chain.subscribed is True
    raw["chain"]["subscribed"] = False
    assert Status.from_json(raw).chain.subscribed is False
    del raw["chain"]["subscribed"]
    assert Status.from_json(raw).chain.subscribed is False
    raw["chain"]["subscribed"] = "yes"
    with pytest.raises(ProtocolError, match="status.chain has 'subscribed' = 'yes', of the wrong type"):
        Status.from_json(raw)


def test_status_of_an_agent_without_registration_error() -> None:
    raw = status_json()
    del raw["node"]["registrationError"]
    raw["backend"] = None
    s = Status.from_json(raw)
    assert s.node.registration_error is None and s.backend is None


def test_status_missing_nested_object() -> None:
    raw = status_json()
    del raw["chain"]
    with pytest.raises(ProtocolError, match="status has no field 'chain'"):
        Status.from_json(raw)


def test_leader() -> None:
    assert Leader.from_json({**leader_json(2, term=7), "extra": 1}) == Leader(
        token_id=2,
        instance_id="inst2",
        overlay_ip="10.0.1.2",
        address="10.0.1.2",
        is_self=False,
        reachable=True,
        term=7,
        state="current",
        age_ms=412,
        lease_ms=None,
        healthy=True,
        reason=None,
        term_reason="elected",
    )
    me = Leader.from_json(leader_json(1, is_self=True))
    assert me.is_self and me.reachable is None and me.elected and me.lease_ms == 2100 and me.term == 1
    none = Leader.from_json(leader_json(None))
    assert none.token_id is None and not none.elected and not none.is_self and none.term == 0


def test_leader_named_but_not_leading_says_why() -> None:
    raw = leader_json(
        1,
        is_self=False,
        reachable=None,
        state="stale",
        ageMs=7200,
        healthy=False,
        reason="the chain view is 7.2 s old, older than the 2.5 s lease",
    )
    lead = Leader.from_json(raw)
    assert (lead.is_self, lead.state, lead.age_ms, lead.lease_ms, lead.healthy) == (
        False,
        "stale",
        7200,
        None,
        False,
    )
    assert lead.reason == "the chain view is 7.2 s old, older than the 2.5 s lease"
    assert Leader.from_json(leader_json(1, state="unknown", ageMs=None)).age_ms is None


def test_a_refused_leader_is_no_leader_and_named_apart() -> None:
    why = "the contract names seat 1 leader, but this node refuses its evidence, and votes it out (os-not-allowed)"
    lead = Leader.from_json(leader_json(None, refusedSeat=1, reason=why, term=4))
    assert (lead.token_id, lead.elected, lead.refused_seat, lead.term) == (None, False, 1, 4)
    assert lead.reason == why
    assert Leader.from_json(leader_json(2)).refused_seat is None


def test_a_leader_handing_off_and_how_its_term_began() -> None:
    # Seat 2, draining, hands term 2 off to seat 3.
    raw = snapshot("leaderHandingOff")
    lead = Leader.from_json(raw)
    assert (lead.term_reason, lead.draining, lead.handing_off_to) == ("elected", (2,), 3)
    after = Leader.from_json(leader_json(3, is_self=True, term=3, termReason="handoff"))
    assert (after.term_reason, after.draining, after.handing_off_to) == ("handoff", (), None)
    for newer in ("termReason", "draining", "handingOff"):
        del raw[newer]
    older = Leader.from_json(raw)
    assert (older.term_reason, older.draining, older.handing_off_to) == (None, (), None)
    with pytest.raises(ProtocolError, match="draining"):
        Leader.from_json(leader_json(1, draining=["3"]))


def test_leader_of_an_agent_without_leases() -> None:
    raw = leader_json(1, is_self=True)
    for newer in LEADER_LEASE_FIELDS:
        del raw[newer]
    lead = Leader.from_json(raw)
    assert lead.is_self and lead.token_id == 1
    # Not confirmed, since that agent does not say so; healthy, since it has no health signal.
    assert (lead.term, lead.state, lead.age_ms, lead.lease_ms, lead.healthy, lead.reason) == (
        None,
        "unknown",
        None,
        None,
        True,
        None,
    )
    # Positional construction, as code written before these fields does it, still works.
    assert Leader(None, None, None, None, False, None).state == "unknown"


def test_leader_nulls_where_allowed() -> None:
    raw = {**leader_json(None, ageMs=None, leaseMs=None, reason=None, state="unknown"), "term": None}
    lead = Leader.from_json(raw)
    assert (lead.term, lead.age_ms, lead.lease_ms, lead.reason, lead.state) == (None,) * 4 + ("unknown",)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"term": "3"}, "'term' = '3', of the wrong type"),
        ({"term": True}, "'term' = True, of the wrong type"),
        ({"term": 3.0}, "'term' = 3.0, of the wrong type"),
        ({"ageMs": "412"}, "'ageMs' = '412'"),
        ({"leaseMs": False}, "'leaseMs' = False"),
        ({"healthy": None}, "'healthy' = None"),
        ({"healthy": "yes"}, "'healthy' = 'yes'"),
        ({"reason": 5}, "'reason' = 5"),
        ({"state": None}, "'state' = None"),
        ({"state": 1}, "'state' = 1"),
        ({"state": "fresh"}, "'state' = 'fresh', not one of current, stale, unknown"),
        ({"state": "Current"}, "'state' = 'Current', not one of"),
        ({"isSelf": "true"}, "'isSelf' = 'true'"),
    ],
)
def test_bad_leader_names_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        Leader.from_json(leader_json(2, **changes))
    assert "the agent's leader" in str(info.value)


def test_health_every_field() -> None:
    raw = {
        "healthy": False,
        "reasons": ["the application reports itself unhealthy: postgres is down", "the check fails: 503"],
        "app": {"healthy": False, "reason": "postgres is down", "expiresInMs": 9500},
        "check": {"kind": "url", "healthy": False, "reason": "503"},
        "future": 1,
    }
    assert Health.from_json(raw) == Health(
        healthy=False,
        reasons=raw["reasons"],
        app=AppHealth(healthy=False, reason="postgres is down", expires_in_ms=9500),
        check=HealthCheck(kind="url", healthy=False, reason="503"),
    )


def test_health_before_any_report_and_without_a_check() -> None:
    h = Health.from_json({"healthy": True, "reasons": [], "app": None, "check": None})
    assert h == Health(True, [], None, None)
    report = {"healthy": True, "reason": None, "expiresInMs": None}
    assert Health.from_json({"healthy": True, "reasons": [], "app": report}).app == AppHealth(True, None, None)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"reasons": []}, "health has no field 'healthy'"),
        ({"healthy": True}, "health has no field 'reasons'"),
        ({"healthy": 1, "reasons": []}, "'healthy' = 1"),
        ({"healthy": False, "reasons": "down"}, "'reasons' = 'down', of the wrong type"),
        ({"healthy": False, "reasons": ["down", 3]}, "'reasons' = \\['down', 3\\], not a list of strings"),
        ({"healthy": True, "reasons": [], "app": []}, "'app' = \\[\\], of the wrong type"),
        ({"healthy": True, "reasons": [], "app": {"reason": None}}, "health.app has no field 'healthy'"),
        (
            {"healthy": True, "reasons": [], "app": {"healthy": True, "reason": None, "expiresInMs": "1"}},
            "health.app has 'expiresInMs' = '1'",
        ),
        ({"healthy": True, "reasons": [], "check": {"kind": "url", "healthy": "no"}}, "health.check has"),
        ("healthy", "health is not a JSON object"),
    ],
)
def test_bad_health_names_the_field(raw: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Health.from_json(raw)


def test_a_change_is_what_the_agent_calls_one() -> None:
    """The agent's definition (its hook and ``/v1/events`` follow it): counters and handshake times are
    no change; a path flip, a health change, a roam or leadership is, even with the same address."""
    base = Peer.from_json(peer_json(2))
    same = Peer.from_json({**peer_json(2), "rxBytes": 10_000, "latestHandshake": 1})
    assert same.change_key() == base.change_key()
    changes = [("path", "relay"), ("healthy", False), ("endpoint", "192.0.2.9:51820"), ("leader", True)]
    for field, value in changes:
        changed = Peer.from_json({**peer_json(2), field: value})
        assert changed.address == base.address
        assert changed.change_key() != base.change_key(), field
