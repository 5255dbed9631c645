from __future__ import annotations

from typing import Any

import pytest

from dstack_p2p import Leader, Peer, ProtocolError, Status
from dstack_p2p.models import addresses, peers_from_json
from fake_agent import leader_json, peer_json, status_json


def test_peer_every_field_and_unknown_ones_ignored() -> None:
    raw = peer_json(2, leader=True, futureField={"x": 1}, path="relay", relayUrl="https://r")
    p = Peer.from_json(raw)
    assert p == Peer(
        token_id=2,
        instance_id="inst2",
        overlay_ip="10.0.1.2",
        wg_public_key="b" * 43 + "=",
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
    )


def test_peer_nulls_and_fields_of_older_agents() -> None:
    raw = peer_json(5, address=None, wgPublicKey=None, endpoint=None, path=None, latestHandshake=None)
    for newer in ("leader", "path", "relayUrl"):
        del raw[newer]
    p = Peer.from_json(raw)
    assert (p.address, p.wg_public_key, p.endpoint, p.path, p.relay_url, p.latest_handshake) == (None,) * 6
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
    assert s.chain.contract == "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    assert s.chain.head is None and s.chain.last_error == "connection refused" and s.chain.chain_id == 31337


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
    assert Leader.from_json({**leader_json(2), "extra": 1}) == Leader(
        token_id=2,
        instance_id="inst2",
        overlay_ip="10.0.1.2",
        address="10.0.1.2",
        is_self=False,
        reachable=True,
    )
    me = Leader.from_json(leader_json(1, is_self=True))
    assert me.is_self and me.reachable is None and me.elected
    none = Leader.from_json(leader_json(None))
    assert none == Leader(None, None, None, None, False, None) and not none.elected
