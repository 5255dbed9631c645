"""The PostgreSQL recipe's decisions (examples/postgres/decisions.py): what to do given this node's server, the
leader, the term and the other nodes' servers. They are pure functions, checked here over every combination
of a small domain against the rules that make a failover safe, and case by case.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import decisions
import pytest
from decisions import (BASEBACKUP, DESTRUCTIVE, INITDB, NONE, NOTHING, PRIMARY, PROMOTE, REPLICA, REPOINT, REWIND,
                       START_PRIMARY, START_REPLICA, STOP, STOP_FOR_REWIND, WAIT, WRITABLE, Follow, Idle, Lead, Local,
                       PeerState, Position)
from postgres_cluster import A1, A2, A3


POSITIONS = [None, Position(1, 100), Position(1, 200), Position(2, 50)]


def locals_() -> Iterator[Local]:
    yield Local(NONE)
    for data, running, term, upstream, streaming, position, stuck, rewind in itertools.product(
            (PRIMARY, REPLICA), (False, True), (None, 4, 5, 6), (None, A2, A3), (False, True), POSITIONS,
            (False, True), (False, True)):
        if streaming and not (running and data == REPLICA and upstream):
            continue
        if not running and position is None:
            continue  # a stopped data directory's control file always gives one
        yield Local(data, running, term, upstream, streaming, position, stuck, rewind)


LEADER_SERVERS: list[PeerState | None] = [
    None,
    PeerState(2, A2, False, error="connection refused"),
    PeerState(2, A2, True, False, None, Position(1, 150)),
    PeerState(2, A2, True, True, None, Position(2, 10)),
    PeerState(2, A2, True, True, 4, Position(2, 10)),
    PeerState(2, A2, True, True, 5, Position(2, 10)),
    PeerState(2, A2, True, True, 6, Position(3, 10)),
]

PEER_SETS: list[list[PeerState] | None] = [
    None,
    [],
    [PeerState(2, A2, False, error="timeout"), PeerState(3, A3, False, error="refused")],
    [PeerState(2, A2, True, False, None, Position(1, 150)), PeerState(3, A3, False, error="refused")],
    [PeerState(2, A2, True, False, None, Position(1, 150)), PeerState(3, A3, True, False, None, Position(2, 40))],
    [PeerState(2, A2, True, False, None, Position(1, 250)), PeerState(3, A3, True, False, None, Position(1, 90))],
    [PeerState(2, A2, True, True, 4, Position(1, 300)), PeerState(3, A3, True, False, None, Position(1, 90))],
]


def heard(local: Local, peers: list[PeerState]) -> int:
    return sum(p.answered and p.position is not None for p in peers) + (local.data == NONE or local.position is not None)


def check_rules(intent: Any, local: Local, action: Any, *, leader: PeerState | None = None,
                peers: list[PeerState] | None = None, members: int = 3, k: int = 1, bootstrap: int = 1) -> None:
    kind = action.kind
    assert action.why, f"no reason given for {action}"
    primary_up = local.running and local.data == PRIMARY
    leads_as_is = isinstance(intent, Lead) and local.term == intent.term
    # A running primary that is not the leader's of the term is stopped before anything else.
    if primary_up and not leads_as_is:
        assert kind == STOP, (intent, local, action)
    if primary_up and leads_as_is:
        assert kind == NOTHING
    # Only a leader, under its term, makes a server writable; and only from what it has, or a stopped primary.
    if kind in WRITABLE:
        assert isinstance(intent, Lead)
        assert not local.running or kind == PROMOTE
    if kind == START_PRIMARY:
        assert local.data == PRIMARY and not local.running
    if kind == INITDB:
        assert local.data == NONE and intent.term <= bootstrap
        assert not any(p.answered and p.position for p in peers or [])
    if kind == PROMOTE or (kind == START_PRIMARY and local.term != intent.term):
        # Promoting (or restarting a primary of an older term) needs enough answers that one of them holds
        # every acknowledged write, none of them further than this node, and no other primary up.
        assert peers is not None
        assert heard(local, peers) >= decisions.quorum(members, k), (local, peers, action)
        assert all(local.position >= p.position for p in peers if p.answered and p.position)
        assert not any(p.answered and p.primary for p in peers)
    if kind == PROMOTE:
        assert local.running and local.data == REPLICA
    # Streaming, rewinding or copying from a leader only once it is a primary under its term.
    if isinstance(intent, Follow) and (kind in DESTRUCTIVE or kind == REPOINT
                                       or (kind == START_REPLICA and action.addr)):
        assert action.addr == intent.addr
        assert leader is not None and leader.answered and leader.primary
        assert intent.term is None or (leader.term is not None and leader.term >= intent.term)
    # A new leader catches up only from the furthest replica, one further than itself.
    if isinstance(intent, Lead) and action.addr is not None:
        furthest = max((p for p in peers or [] if p.answered and p.position), key=lambda p: p.position)
        assert action.addr == furthest.addr
        assert local.position is None or furthest.position > local.position
    # Data is replaced only when there is none, a primary rejoins, or a replica got nowhere.
    if kind == REWIND:
        assert not local.running and (local.data == PRIMARY or local.needs_rewind)
    if kind == BASEBACKUP:
        assert local.data == NONE or (isinstance(intent, Lead) and local.stuck)
    # A replica is stopped only to be rewound, after --rejoin-timeout.
    if kind == STOP_FOR_REWIND:
        assert isinstance(intent, Follow) and local.stuck and local.data == REPLICA
    if kind == STOP:
        assert primary_up
    if isinstance(intent, Idle):
        assert kind in (STOP, NOTHING, START_REPLICA) and action.addr is None


def test_the_decisions_keep_the_rules_over_every_combination() -> None:
    count = 0
    for local in locals_():
        for intent in (Idle("the lease ran out"),):
            check_rules(intent, local, decisions.decide(intent, local))
            count += 1
        for intent in (Follow(2, A2, 5), Follow(2, A2, None)):
            for leader in LEADER_SERVERS:
                check_rules(intent, local, decisions.decide(intent, local, leader=leader), leader=leader)
                count += 1
        for term, peers, k, bootstrap in itertools.product((5,), PEER_SETS, (0, 1, 2), (1, 5)):
            intent = Lead(term)
            action = decisions.decide(intent, local, peers=peers, members=3, sync_standbys=k, bootstrap_term=bootstrap)
            check_rules(intent, local, action, peers=peers, members=3, k=k, bootstrap=bootstrap)
            count += 1
    assert count > 40_000


def decide(intent: Any, local: Local, **kw: Any) -> tuple[str, Any]:
    a = decisions.decide(intent, local, **kw)
    return a.kind, a.addr


LEADER2_READY = PeerState(2, A2, True, True, 5, Position(2, 10))
BEHIND = PeerState(3, A3, True, False, None, Position(1, 90))
AHEAD = PeerState(3, A3, True, False, None, Position(1, 300))


@pytest.mark.parametrize("intent, local, kw, expected", [
    # Idle: only a primary is touched.
    (Idle("stale"), Local(PRIMARY, True, 5), {}, (STOP, None)),
    (Idle("stale"), Local(REPLICA, True, None, A2), {}, (NOTHING, None)),
    (Idle("stale"), Local(REPLICA, False, position=Position(1, 1)), {}, (START_REPLICA, None)),
    (Idle("stale"), Local(PRIMARY, False, 5, position=Position(1, 1)), {}, (NOTHING, None)),
    (Idle("stale"), Local(NONE), {}, (NOTHING, None)),
    # Follow: wait for the leader's server to be the primary of its term, then stream, rewind or copy.
    (Follow(2, A2, 5), Local(PRIMARY, True, 4), {"leader": LEADER2_READY}, (STOP, None)),
    (Follow(2, A2, 5), Local(NONE), {"leader": PeerState(2, A2, True, False)}, (WAIT, None)),
    (Follow(2, A2, 5), Local(NONE), {"leader": PeerState(2, A2, True, True, 4)}, (WAIT, None)),
    (Follow(2, A2, 5), Local(REPLICA, False, position=Position(1, 1)), {"leader": None}, (START_REPLICA, None)),
    (Follow(2, A2, 5), Local(NONE), {"leader": LEADER2_READY}, (BASEBACKUP, A2)),
    (Follow(2, A2, 5), Local(PRIMARY, False, 4, position=Position(1, 1)), {"leader": LEADER2_READY}, (REWIND, A2)),
    (Follow(2, A2, 5), Local(REPLICA, False, position=Position(1, 1)), {"leader": LEADER2_READY},
     (START_REPLICA, A2)),
    (Follow(2, A2, 5), Local(REPLICA, False, position=Position(1, 1), needs_rewind=True),
     {"leader": LEADER2_READY}, (REWIND, A2)),
    (Follow(2, A2, 5), Local(REPLICA, True, None, A1), {"leader": LEADER2_READY}, (REPOINT, A2)),
    (Follow(2, A2, 5), Local(REPLICA, True, None, A2, True), {"leader": LEADER2_READY}, (NOTHING, None)),
    (Follow(2, A2, 5), Local(REPLICA, True, None, A2), {"leader": LEADER2_READY}, (WAIT, None)),
    (Follow(2, A2, 5), Local(REPLICA, True, None, A2, stuck=True), {"leader": LEADER2_READY},
     (STOP_FOR_REWIND, A2)),
    # Lead: the primary of the term stays; of another term it stops first.
    (Lead(5), Local(PRIMARY, True, 5), {}, (NOTHING, None)),
    (Lead(5), Local(PRIMARY, True, 4), {}, (STOP, None)),
    (Lead(5), Local(PRIMARY, False, 5, position=Position(1, 1)), {}, (START_PRIMARY, None)),
    # Three members, ANY 1: its own answer and one more.
    (Lead(5), Local(REPLICA, True, None, A1, position=Position(1, 200)),
     {"peers": [PeerState(3, A3, False, error="refused")], "members": 3}, (WAIT, None)),
    (Lead(5), Local(REPLICA, True, None, A1, position=Position(1, 200)),
     {"peers": [BEHIND], "members": 3}, (PROMOTE, None)),
    (Lead(5), Local(REPLICA, True, None, A1, position=Position(1, 200)),
     {"peers": [AHEAD], "members": 3}, (REPOINT, A3)),
    (Lead(5), Local(REPLICA, True, None, A3, position=Position(1, 200)),
     {"peers": [AHEAD], "members": 3}, (WAIT, None)),
    (Lead(5), Local(REPLICA, True, None, A3, position=Position(1, 200), stuck=True),
     {"peers": [AHEAD], "members": 3}, (BASEBACKUP, A3)),
    (Lead(5), Local(REPLICA, False, position=Position(1, 200)), {"peers": [AHEAD], "members": 3},
     (START_REPLICA, A3)),
    (Lead(5), Local(REPLICA, False, position=Position(1, 400)), {"peers": [AHEAD], "members": 3},
     (START_REPLICA, None)),
    # A newer timeline wins over a longer older one: the old primary's own history lost.
    (Lead(5), Local(PRIMARY, False, 3, position=Position(1, 900)),
     {"peers": [PeerState(3, A3, True, False, None, Position(2, 10))], "members": 3}, (START_REPLICA, A3)),
    (Lead(5), Local(PRIMARY, False, 3, position=Position(2, 900)),
     {"peers": [PeerState(3, A3, True, False, None, Position(2, 10))], "members": 3}, (START_PRIMARY, None)),
    (Lead(5), Local(NONE), {"peers": [AHEAD], "members": 3}, (BASEBACKUP, A3)),
    # Two members, ANY 1: every acknowledged write is on this replica itself.
    (Lead(5), Local(REPLICA, True, None, A1, position=Position(1, 1)), {"peers": [], "members": 2}, (PROMOTE, None)),
    # Another server still a primary: wait for its sidecar to stop it.
    (Lead(5), Local(REPLICA, True, None, A1, position=Position(1, 900)),
     {"peers": [PeerState(3, A3, True, True, 4, Position(1, 10))], "members": 3}, (WAIT, None)),
    # A new database only under the first term(s), and only when nobody has one.
    (Lead(1), Local(NONE), {"peers": [PeerState(2, A2, False, error="refused")], "members": 3}, (INITDB, None)),
    (Lead(2), Local(NONE), {"peers": [PeerState(2, A2, False, error="refused")], "members": 3}, (WAIT, None)),
    (Lead(2), Local(NONE), {"peers": [], "members": 1, "bootstrap_term": 0}, (WAIT, None)),
    (Lead(1), Local(NONE), {"peers": None, "members": 3}, (WAIT, None)),
    (Lead(1), Local(REPLICA, True, None, None), {"peers": [], "members": 1}, (WAIT, None)),
])
def test_decisions_case_by_case(intent: Any, local: Local, kw: dict[str, Any], expected: tuple[str, Any]) -> None:
    assert decide(intent, local, **kw) == expected


@pytest.mark.parametrize("members, k, need", [
    (1, 1, 1), (2, 1, 1), (3, 1, 2), (3, 2, 1), (5, 1, 4), (5, 2, 3), (5, 4, 1), (3, 0, 1), (3, 5, 1),
])
def test_the_quorum_intersects_every_acknowledged_write(members: int, k: int, need: int) -> None:
    assert decisions.quorum(members, k) == need
    if k == 0:
        return
    # Brute force: the old primary p and any k of the others hold a write; every `need` of the others that
    # answer include one of them.
    nodes = range(members)
    for p in nodes:
        others = [n for n in nodes if n != p]
        if len(others) < k:
            continue  # fewer standbys than ANY k asks for: no COMMIT returns, so nothing acknowledged is at stake
        for holders in itertools.combinations(others, k):
            for asked in itertools.combinations(others, min(need, len(others))):
                assert set(asked) & set(holders), (members, k, p, holders, asked)


def test_lsn_and_positions() -> None:
    for text in ("0/0", "0/4024AA0", "1/0", "FFFFFFFF/FFFFFFFF"):
        assert decisions.format_lsn(decisions.parse_lsn(text)) == text
    assert decisions.parse_lsn("1/0") == 1 << 32
    assert Position(2, 1) > Position(1, 10**9) > Position(1, 5)
    with pytest.raises(ValueError):
        decisions.parse_lsn("4024AA0")
