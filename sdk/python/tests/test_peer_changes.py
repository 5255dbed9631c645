"""The one definition of "a peer changed", checked against the cases the agent's own test writes
(sdk/fixtures/peer_changes.json, from ``Peer::change_key`` in mesh-api): this SDK's ``Peer.change_key`` must
agree with the agent's on every one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dstack_p2p import Peer

FIXTURE = Path(__file__).resolve().parents[3] / "sdk" / "fixtures" / "peer_changes.json"


def cases() -> list[dict[str, Any]]:
    doc = json.loads(FIXTURE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("cases"), list), f"{FIXTURE}: no list of cases"
    return doc["cases"]


def test_the_fixture_covers_both_answers() -> None:
    found = cases()
    assert len(found) >= 10, f"{FIXTURE} has {len(found)} cases; the agent's test writes at least 10"
    assert {c["changed"] for c in found} == {True, False}, f"{FIXTURE}: not both changed and unchanged cases"


@pytest.mark.parametrize("case", cases(), ids=lambda c: str(c["name"]))
def test_change_key_agrees_with_the_agent(case: dict[str, Any]) -> None:
    old, new = Peer.from_json(case["old"]), Peer.from_json(case["new"])
    changed = old.change_key() != new.change_key()
    assert changed == case["changed"], (
        f"{case['name']}: the agent says changed={case['changed']}, this SDK's change_key says {changed}"
    )
