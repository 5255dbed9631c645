"""This node as a peer relay, as the agent shows it: ``status.peerRelay``, read from the shared fixture
(sdk/fixtures/snapshot.json). A peer reached through one (``path`` ``"peer-relay"``, ``relaySeat``) is in
test_models."""

from __future__ import annotations

from typing import Any

import pytest

from dstack_p2p import PeerRelayStatus, ProtocolError, Status
from fake_agent import status_json


def test_the_status_shows_this_node_as_a_peer_relay() -> None:
    relay = Status.from_json(status_json()).peer_relay
    assert relay == PeerRelayStatus(
        offering=True,
        why="--relay-for-peers always",
        allocations=1,
        granted=3,
        forwarded_bytes=9437184,
        forwarded_datagrams=6912,
        refused={"peer-not-on-udp": 2},
        dropped={"stranger": 1},
        malformed=0,
    )
    assert relay is not None
    assert relay.refused["peer-not-on-udp"] == 2 and relay.dropped["stranger"] == 1
    assert relay.refused.get("full", 0) == 0


def test_no_peer_relay_on_the_kernel_backend_in_tls_mode_or_from_an_older_agent() -> None:
    raw = status_json()
    del raw["peerRelay"]
    assert Status.from_json(raw).peer_relay is None
    raw["peerRelay"] = None
    assert Status.from_json(raw).peer_relay is None
    # Positional construction, as code written before the field does it, still works.
    s = Status.from_json(raw)
    assert Status(s.version, s.mode, s.backend, s.node, s.chain, 1, 2, 1, s.policy).peer_relay is None


def test_fields_a_later_agent_may_leave_out_fall_back() -> None:
    raw = status_json()
    for field in ("refused", "dropped", "malformed"):
        del raw["peerRelay"][field]
    relay = Status.from_json(raw).peer_relay
    assert relay == PeerRelayStatus(
        offering=True,
        why="--relay-for-peers always",
        allocations=1,
        granted=3,
        forwarded_bytes=9437184,
        forwarded_datagrams=6912,
    )
    assert relay is not None and relay.refused == {} and relay.dropped == {} and relay.malformed == 0


def test_reasons_it_does_not_know_yet_are_kept() -> None:
    raw = status_json()
    raw["peerRelay"]["refused"] = {"full": 1, "some-later-reason": 4}
    relay = Status.from_json(raw).peer_relay
    assert relay is not None and relay.refused == {"full": 1, "some-later-reason": 4}


def test_the_counts_by_reason_are_read_only() -> None:
    counts = {"full": 1}
    relay = PeerRelayStatus(True, "--relay-for-peers always", 1, 1, 0, 0, refused=counts)
    counts["full"] = 2
    assert relay.refused == {"full": 1}, "a copy of what it was given"
    with pytest.raises(TypeError):
        relay.dropped["stranger"] = 1  # type: ignore[index]
    # Frozen and hashable, as the other models are.
    assert hash(relay) == hash(PeerRelayStatus(True, "--relay-for-peers always", 1, 1, 0, 0, {"full": 1}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"offering": "yes"}, "status.peerRelay has 'offering' = 'yes', of the wrong type"),
        ({"why": None}, "status.peerRelay has 'why' = None"),
        ({"allocations": True}, "status.peerRelay has 'allocations' = True"),
        ({"forwardedBytes": 1.5}, "status.peerRelay has 'forwardedBytes' = 1.5"),
        ({"refused": {"full": "2"}}, "status.peerRelay has 'refused' = \\{'full': '2'\\}, not a map of"),
        ({"dropped": []}, "status.peerRelay has 'dropped' = \\[\\], of the wrong type"),
        ({"malformed": None}, "status.peerRelay has 'malformed' = None"),
        ({"peerRelay": "on"}, "status has 'peerRelay' = 'on'"),
    ],
)
def test_a_bad_peer_relay_names_the_field(change: dict[str, Any], message: str) -> None:
    raw = status_json()
    if "peerRelay" in change:
        raw.update(change)
    else:
        raw["peerRelay"].update(change)
    with pytest.raises(ProtocolError, match=message):
        Status.from_json(raw)


@pytest.mark.parametrize(
    "field", ["offering", "why", "allocations", "granted", "forwardedBytes", "forwardedDatagrams"]
)
def test_a_field_it_needs_is_missing(field: str) -> None:
    raw = status_json()
    del raw["peerRelay"][field]
    with pytest.raises(ProtocolError, match=f"status.peerRelay has no field '{field}'"):
        Status.from_json(raw)
