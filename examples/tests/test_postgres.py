"""The PostgreSQL recipe (examples/postgres/follow_leader.py).

The decisions (what to do given this node's server, the leader, the term and the other nodes' servers) are
pure functions, checked here over every combination of a small domain against the rules that make a
failover safe. The rest runs real PostgreSQL servers (Debian's, as the user postgres when the tests run as
root) on loopback: each "node" listens on its own 127.0.1.N, standing in for its overlay address 10.0.1.N,
so that the recipe's pg_hba.conf is used as it is, 127.0.0.0/8 standing in for the cluster's prefix. Those
tests fail, saying what to install, when PostgreSQL is missing.
"""
from __future__ import annotations

import asyncio
import importlib.util
import itertools
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from agent_stub import FakeAgent
from fakes import (AgentViews, FakeLeader, assert_cancellation_comes_out, assert_stops_when_cancelled_as_woken,
                   following, programs_end_as_they_are_read)
from procs import EXAMPLES, free_port, spawn

# The sidecar's modules, found beside it as when it runs; last on the path, since the Redis recipe's sidecar
# is also follow_leader.py, and loaded under a name of its own.
sys.path.append(str(EXAMPLES / "postgres"))
_spec = importlib.util.spec_from_file_location("pg_follow_leader", EXAMPLES / "postgres" / "follow_leader.py")
assert _spec and _spec.loader
fl = importlib.util.module_from_spec(_spec)
sys.modules["pg_follow_leader"] = fl
_spec.loader.exec_module(fl)

import decisions  # noqa: E402
import follower as worker  # noqa: E402
import server  # noqa: E402
from decisions import (  # noqa: E402
    BASEBACKUP, DESTRUCTIVE, INITDB, NONE, NOTHING, PRIMARY, PROMOTE, REPLICA, REPOINT, REWIND, START_PRIMARY,
    START_REPLICA, STOP, STOP_FOR_REWIND, WAIT, WRITABLE, Follow, Idle, Lead, Local, PeerState, Position,
)

PASSWORD = "correct horse battery staple"
# Loopback stands in for the cluster's overlay: the nodes listen on 127.0.1.N.
LOOPBACK_PREFIX = "127.0.0.0/8"
A1, A2, A3 = ("10.0.1.1", 5432), ("10.0.1.2", 5432), ("10.0.1.3", 5432)


# --- the decisions, exhaustively ------------------------------------------------------------------------------

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


# --- the agent's word, as an intent ----------------------------------------------------------------------------


def leader(token: int | None, me: int, term: int | None = 1, **view: Any) -> FakeLeader:
    """What node `me`'s agent says: seat `token` leads under `term`; `view` overrides any field."""
    if token is None:
        return FakeLeader(None, None, None, None, False, None, term=term, **view)
    fields: dict[str, Any] = {"is_self": token == me, "term": term, **view}
    return FakeLeader(token, f"instance-{token}", f"10.0.1.{token}", f"10.0.1.{token}", **fields)


def follower(pg: Any = None, **kw: Any) -> Any:
    return worker.PostgresFollower(pg, lambda lead: (lead.overlay_ip, 5432), PASSWORD, **kw)


@pytest.mark.asyncio
async def test_a_follower_cancelled_as_a_leader_event_wakes_it_stops() -> None:
    await assert_stops_when_cancelled_as_woken(follower(), leader(2, 1))


@pytest.mark.asyncio
async def test_a_program_that_ends_as_it_is_cancelled_or_times_out_is_not_an_os_error(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = server.Postgres(root / "data", bindir=Path("/nonexistent"), port=5432, socket_dir=root, password=PASSWORD,
                     run_as=RUN_AS)
    programs_end_as_they_are_read(monkeypatch)
    await assert_cancellation_comes_out(lambda: pg.run("pg_ctl", "start"))
    with pytest.raises(server.PgError, match="pg_ctl status took over 0.05 s"):
        await pg.run("pg_ctl", "status", timeout=0.05)


def test_intents_from_what_the_helper_says() -> None:
    f = follower()
    assert f.intent() == Idle("the agent has not said who leads yet")
    f.on_promote(leader(1, 1, term=3))
    assert f.intent() == Lead(3)
    f.on_demote(leader(2, 1, term=4))
    f.on_follow(leader(2, 1, term=4))
    assert f.intent() == Follow(2, ("10.0.1.2", 5432), 4)
    f.on_demote(leader(1, 1, term=5, is_self=False, reason="unhealthy: x"))
    assert f.intent() == Idle("this node is the seat named leader but does not lead (unhealthy: x)")
    f.on_demote(leader(None, 1, term=6))
    assert f.intent() == Idle("the cluster has no leader")
    # A leader the agent names no address for: the worker's step says so, and retries.
    bare = worker.PostgresFollower(None, lambda lead: fl.overlay_addr(lead, 5432), PASSWORD)
    bare.on_follow(FakeLeader(300, "instance-300", None, None, False, term=7))
    with pytest.raises(server.NotYet, match="no overlay address"):
        bare.intent()


@pytest.mark.asyncio
async def test_the_helper_fences_the_intents_by_the_term(caplog: pytest.LogCaptureFixture) -> None:
    f = follower()
    agent = AgentViews(seat=1)
    helper = following(f, agent)
    try:
        agent.say(leader(1, 1, term=3))
        await eventually(lambda: _true(f.intent() == Lead(3)), 2, "led under term 3")
        agent.say(leader(2, 1, term=4))
        await eventually(lambda: _true(f.intent() == Follow(2, ("10.0.1.2", 5432), 4)), 2, "following seat 2")
        # Said to lead under term 3 after term 4 was seen: no.
        agent.say(leader(1, 1, term=3))
        await asyncio.sleep(0.1)
        assert f.intent() == Follow(2, ("10.0.1.2", 5432), 4)
        assert any("older than term 4 already seen: not promoting" in m for m in caplog.messages)
        # No term at all: cannot be fenced.
        agent.say(leader(1, 1, term=None))
        await asyncio.sleep(0.1)
        assert f.intent() == Follow(2, ("10.0.1.2", 5432), 4)
        assert any("gives no term" in m for m in caplog.messages)
        agent.say(leader(1, 1, term=5))
        await eventually(lambda: _true(f.intent() == Lead(5)), 2, "led under term 5")
        # Named, current, not leading, no reason given: this node's own seat, never followed.
        agent.say(leader(1, 1, term=5, is_self=False))
        await eventually(lambda: _true(isinstance(f.intent(), Idle)), 2, "standing by")
    finally:
        helper.cancel()
        await asyncio.gather(helper, return_exceptions=True)


class SlowPeersPg:
    """A replica that holds the furthest WAL, whose peers take longer to answer than a lease lasts (a node
    that is cut off answers nothing until the connect timeout)."""

    where = "a stand-in server"

    def __init__(self, answer_after: float) -> None:
        self.answer_after = answer_after
        self.promoted: int | None = None

    async def observe(self) -> Local:
        return Local(REPLICA, True, None, A2, False, Position(1, 300))

    async def peer(self, addr: Any, token: Any = None) -> PeerState:
        await asyncio.sleep(self.answer_after)
        return PeerState(token, addr, True, False, None, Position(1, 200))

    async def promote(self, term: int, upstream: Any) -> None:
        self.promoted = term

    async def ensure_roles(self, password: str) -> None:
        pass


@pytest.mark.asyncio
async def test_a_leader_whose_peers_answer_slower_than_its_lease_renews_it_and_promotes() -> None:
    pg = SlowPeersPg(answer_after=0.3)

    async def members() -> list[tuple[int, tuple[str, int]]]:
        return [(1, A1), (2, A2), (3, A3)]

    async def renew() -> FakeLeader:
        return leader(1, 1, term=2, lease_ms=200)

    async def whoami() -> int:
        return 1

    f = follower(pg, members=members, whoami=whoami)
    agent = AgentViews(seat=1, renew=renew)
    helper = following(f, agent)
    try:
        agent.say(leader(1, 1, term=2, lease_ms=200))
        await eventually(lambda: _true(f.intent() == Lead(2)), 2, "led under term 2")
        action = await f.step()
    finally:
        helper.cancel()
        await asyncio.gather(helper, return_exceptions=True)
    assert action.kind == PROMOTE, action
    assert pg.promoted == 2, "the lease ran out while the peers were asked, and was not renewed before promoting"


@pytest.mark.asyncio
async def test_a_leader_whose_lease_runs_out_while_its_peers_are_asked_does_not_promote() -> None:
    pg = SlowPeersPg(answer_after=0.5)

    async def members() -> list[tuple[int, tuple[str, int]]]:
        return [(1, A1), (2, A2), (3, A3)]

    async def gone() -> FakeLeader:
        raise ConnectionRefusedError("the agent is gone")

    async def whoami() -> int:
        return 1

    f = follower(pg, members=members, whoami=whoami)
    agent = AgentViews(seat=1, renew=gone)
    helper = following(f, agent)
    try:
        agent.say(leader(1, 1, term=2, lease_ms=200))
        await eventually(lambda: _true(f.intent() == Lead(2)), 2, "led under term 2")
        action = await f.step()
    finally:
        helper.cancel()
        await asyncio.gather(helper, return_exceptions=True)
    assert action.kind == PROMOTE and pg.promoted is None, "promoted after its lease ran out"
    assert isinstance(f.intent(), Idle)


class RewindingPg:
    """A stopped former primary whose leader (seat 2) is a primary under term 2; its rewind is `rewind`."""

    where = "a stand-in server"

    def __init__(self, rewind: Callable[[Any], Any]) -> None:
        self._rewind = rewind
        self.copied_from: Any = None
        self.started = False

    async def observe(self) -> Local:
        return Local(PRIMARY, False, 1, None, position=Position(1, 300))

    async def peer(self, addr: Any, token: Any = None) -> PeerState:
        return PeerState(token, addr, True, True, 2, Position(2, 400))

    async def rewind(self, addr: Any) -> None:
        await self._rewind(addr)

    async def basebackup(self, addr: Any) -> None:
        self.copied_from = addr

    def install(self, *args: Any) -> None:
        pass

    async def start(self) -> None:
        self.started = True


def stand_in_postgres(root: Path, answers: dict[str, list[str]], ran: list[tuple[str, ...]]) -> Any:
    """A real `Postgres` whose queries get `answers` (by their first words) and whose programs only record
    that they ran."""
    pg = server.Postgres(root / "data", bindir=Path("/nonexistent"), port=5432, socket_dir=root, password=PASSWORD,
                     run_as=RUN_AS)

    async def sql(query: str, **kw: Any) -> list[str]:
        return next(row for start, row in answers.items() if query.startswith(start))

    async def run(program: str, *args: str, **kw: Any) -> Any:
        ran.append((program, *args))
        return server.Ran(0, "", "")

    pg.sql, pg.run = sql, run
    return pg


@pytest.mark.asyncio
async def test_a_rewind_waits_for_a_promoted_source_to_checkpoint_its_new_timeline(root: Path) -> None:
    # The source promoted to timeline 2 but its control file still says 1: pg_rewind would report "no
    # rewind required" and the old primary would start on timeline 1, past the fork, never to stream.
    ran: list[tuple[str, ...]] = []
    pg = stand_in_postgres(root, {server.Postgres.CHECKPOINT_TIMELINE_SQL: ["1", "2"]}, ran)
    with pytest.raises(server.NotYet, match="on timeline 2 but its last checkpoint is on timeline 1"):
        await pg.rewind(A2)
    assert ran == [], "pg_rewind ran against a source that had not checkpointed its promotion"

    pg = stand_in_postgres(root, {server.Postgres.CHECKPOINT_TIMELINE_SQL: ["2", "2"]}, ran)
    await pg.rewind(A2)
    assert [r[0] for r in ran] == ["pg_rewind"]


@pytest.mark.asyncio
async def test_a_promotion_checkpoints_before_anyone_rewinds_against_it(root: Path) -> None:
    ran: list[tuple[str, ...]] = []
    queries: list[str] = []
    pg = stand_in_postgres(root, {}, ran)

    async def sql(query: str, **kw: Any) -> list[str]:
        queries.append(query)
        if query.startswith("SELECT current_setting"):
            return ["7"]
        return ["t"] if query.startswith("SELECT pg_promote") else []

    pg.sql, pg.install = sql, lambda *a: None
    await pg.promote(7, None)
    promoted = next(i for i, q in enumerate(queries) if q.startswith("SELECT pg_promote"))
    assert "CHECKPOINT" in queries[promoted + 1:], queries


@pytest.mark.asyncio
async def test_an_old_primary_waits_for_its_leader_instead_of_copying_it_afresh() -> None:
    async def not_yet(addr: Any) -> None:
        raise server.NotYet("not checkpointed yet")

    pg = RewindingPg(not_yet)
    f = follower(pg)
    f.on_follow(leader(2, 1, term=2))
    with pytest.raises(server.NotYet):
        await f.step()
    assert pg.copied_from is None and not pg.started, "a source not ready yet is not a failed rewind"

    async def fails(addr: Any) -> None:
        raise server.PgError("pg_rewind: could not find common ancestor")

    pg = RewindingPg(fails)
    f = follower(pg)
    f.on_follow(leader(2, 1, term=2))
    await f.step()
    assert pg.copied_from == A2 and pg.started, "a rewind that fails falls back to a fresh copy"


# --- helpers --------------------------------------------------------------------------------------------------


def test_lsn_and_positions() -> None:
    for text in ("0/0", "0/4024AA0", "1/0", "FFFFFFFF/FFFFFFFF"):
        assert decisions.format_lsn(decisions.parse_lsn(text)) == text
    assert decisions.parse_lsn("1/0") == 1 << 32
    assert Position(2, 1) > Position(1, 10**9) > Position(1, 5)
    with pytest.raises(ValueError):
        decisions.parse_lsn("4024AA0")


def test_quoting_and_password_files() -> None:
    assert server.conf_quote("it's a \\ path") == "'it''s a \\\\ path'"
    assert server.conninfo_quote("it's") == "'it\\'s'"
    assert server.pgpass_line("replicator", "a:b\\c") == "*:*:*:replicator:a\\:b\\\\c\n"
    assert fl.check_password("s3cret!") == "s3cret!"
    for bad, words in ((None, "is not set"), ("", "is not set"), ("pässword", "printable ASCII"),
                       ("two\nlines", "printable ASCII")):
        with pytest.raises(ValueError, match=words):
            fl.check_password(bad)


def test_scram_verifier_matches_rfc_7677() -> None:
    # RFC 7677's example: password "pencil", this salt, 4096 iterations; its ServerSignature for the example
    # exchange follows from the ServerKey, which is what the verifier keeps.
    import base64
    import hashlib
    import hmac

    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    v = server.scram_verifier("pencil", salt)
    assert v.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    server_key = base64.b64decode(v.rsplit(":", 1)[1])
    auth = (b"n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    signature = hmac.new(server_key, auth, hashlib.sha256).digest()
    assert base64.b64encode(signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert "pencil" not in v


def test_controldata_is_parsed() -> None:
    c = server.parse_controldata("Database system identifier:           7711899932746272379\n"
                             "Latest checkpoint location:           0/4026450\n"
                             "Latest checkpoint's TimeLineID:       2\n")
    assert c["Database system identifier"] == "7711899932746272379"
    assert decisions.parse_lsn(c["Latest checkpoint location"]) == 0x4026450


def test_bad_options_are_refused_with_what_to_do(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for argv, words in (
        ([], "--data-dir"),
        (["--data-dir", "d", "--port", "70000"], "70000 is not a port"),
        (["--data-dir", "d", "--port", "x"], "'x' is not a port number"),
        (["--data-dir", "d", "--sync-standbys", "-1"], "-1 is negative"),
        (["--data-dir", "d", "--rejoin-timeout", "0"], "must be above 0"),
        (["--data-dir", "d", "--replication-user", "Robert'); DROP"], "not a plain PostgreSQL role name"),
    ):
        with pytest.raises(SystemExit) as e:
            fl.parser().parse_args(argv)
        assert e.value.code == 2
        assert words in capsys.readouterr().err
    good = ["--data-dir", str(tmp_path / "data"), "--socket-dir", str(tmp_path)]
    for argv, words in (
        (["--data-dir", str(tmp_path / "no" / "data")], "its parent"),
        ([*good, "--conf", str(tmp_path / "nope.conf")], "--conf"),
        (["--data-dir", str(tmp_path / "data"), "--socket-dir", str(tmp_path / "nope")], "--socket-dir"),
        ([*good, "--bindir", str(tmp_path)], "no pg_ctl there"),
        ([*good, "--run-as", "no-such-user-here"], "no such user"),
    ):
        with pytest.raises(ValueError, match=words):
            fl.build(fl.parser().parse_args(argv), PASSWORD)


# --- real PostgreSQL -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bindir() -> Path:
    try:
        return server.find_bindir()
    except ValueError as e:
        pytest.fail(f"{e} (scripts/bootstrap installs it)")


RUN_AS = "postgres" if os.geteuid() == 0 else None


class Node:
    """Node `token`'s PostgreSQL under `root`, on 127.0.1.<token>:<port>."""

    def __init__(self, root: Path, token: int, port: int, bindir: Path, hba: Path) -> None:
        self.token = token
        self.host = f"127.0.1.{token}"
        self.addr = (self.host, port)
        home = root / f"n{token}"
        self.run_dir = home / "run"
        for d in (home, self.run_dir):
            d.mkdir()
            if RUN_AS:
                shutil.chown(d, RUN_AS, RUN_AS)
        self.data = home / "data"
        self.port = port
        self.pg = server.Postgres(self.data, bindir=bindir, port=port, socket_dir=self.run_dir, password=PASSWORD,
                              listen_addresses=self.host, hba=hba, run_as=RUN_AS, app_name=f"node{token}",
                              copy_timeout=120)
        self.pg.mesh_prefix = LOOPBACK_PREFIX

    async def sql(self, query: str) -> list[str]:
        return await self.pg.sql(query)

    async def role(self) -> tuple[bool, str] | None:
        """(writable, term), None when it does not answer."""
        try:
            row = await self.sql("SELECT NOT pg_is_in_recovery(), "
                                 "coalesce(current_setting('dstack_mesh.term', true), '')")
        except server.PgError:
            return None
        return row[0] == "t", row[1]

    async def streams_from(self, other: Node) -> bool:
        try:
            row = await self.sql("SELECT status, sender_host FROM pg_stat_wal_receiver")
        except server.PgError:
            return False
        return row == ["streaming", other.host]

    async def stop(self) -> None:
        if self.pg.has_data() and await self.pg.is_running():
            await self.pg.run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-s", timeout=20)


@pytest.fixture
def root() -> Iterator[Path]:
    # Not pytest's tmp_path: PostgreSQL runs as postgres, which cannot enter root's 0700 directories.
    d = Path(tempfile.mkdtemp(prefix="pgmesh-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def hba() -> Path:
    """The recipe's own pg_hba.conf: each node's sidecar puts in the prefix its agent reports."""
    return EXAMPLES / "postgres" / "pg_hba.conf"


def test_pg_hba_admits_the_clusters_prefix_whatever_it_is(root: Path, hba: Path) -> None:
    pg = server.Postgres(root / "data", bindir=Path("/nonexistent"), port=5432, socket_dir=root, password=PASSWORD,
                     hba=hba, run_as=RUN_AS)
    (root / "data").mkdir()
    pg.mesh_prefix = "10.1.0.0/16"
    pg.install(decisions.REPLICA, ("10.1.1.44", 5432), None)
    rules = [line.split() for line in (root / "data" / "pg_hba.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert ["host", "replication", "replicator", "10.1.0.0/16", "scram-sha-256"] in rules
    assert ["host", "all", "all", "10.1.0.0/16", "scram-sha-256"] in rules
    # Nothing else from the mesh, and no rule left naming the default prefix or the mark.
    assert not [r for r in rules if r[0] == "host" and r[3].startswith("10.") and r[3] != "10.1.0.0/16"]
    assert server.PREFIX_MARK not in (root / "data" / "pg_hba.conf").read_text()


def test_no_server_is_set_up_before_the_agent_reports_the_prefix(root: Path, hba: Path) -> None:
    pg = server.Postgres(root / "data", bindir=Path("/nonexistent"), port=5432, socket_dir=root, password=PASSWORD,
                     hba=hba, run_as=RUN_AS)
    (root / "data").mkdir()
    with pytest.raises(server.NotYet, match=r"chain\.prefix"):
        pg.install(decisions.PRIMARY, None, 1)
    assert list((root / "data").iterdir()) == [], "install wrote files before it could write pg_hba.conf"


def test_a_leader_is_followed_at_the_overlay_address_the_agent_gives() -> None:
    assert fl.overlay_addr(FakeLeader(300, "i300", "10.1.1.44", "10.1.1.44", False), 5432) == ("10.1.1.44", 5432)
    with pytest.raises(server.NotYet, match="no overlay address"):
        fl.overlay_addr(FakeLeader(300, "i300", None, None, False), 5432)


@pytest_asyncio.fixture
async def cluster(root: Path, hba: Path, bindir: Path) -> Any:
    port = free_port([f"127.0.1.{t}" for t in (1, 2, 3)])
    nodes = {t: Node(root, t, port, bindir, hba) for t in (1, 2, 3)}
    try:
        yield nodes
    finally:
        for n in nodes.values():
            await n.stop()


async def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except Exception as e:
            last = e
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what} (last error: {last!r})")


class Running:
    """A PostgresFollower for a node, its worker running until stopped, and dstack_p2p.follow_leader calling it
    as `say` has the node's agent say (`renew`: what GET /v1/leader answers, as AgentViews takes it)."""

    def __init__(self, node: Node, members: list[Node], *, renew: Callable[[], Any] | None = None,
                 **kw: Any) -> None:
        async def all_members() -> list[tuple[int, tuple[str, int]]]:
            return [(m.token, m.addr) for m in members]

        async def whoami() -> int:
            return node.token

        kw.setdefault("check_interval", 0.3)
        kw.setdefault("rejoin_timeout", 8.0)
        self.f = worker.PostgresFollower(node.pg, lambda lead: (f"127.0.1.{lead.token_id}", node.port), PASSWORD,
                                         members=all_members, whoami=whoami, backoff_max=1.0, **kw)
        self.agent = AgentViews(node.token, renew)
        self.say = self.agent.say
        self.tasks = [asyncio.create_task(self.f.run()), following(self.f, self.agent)]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class RoleSampler:
    """Every node's (writable, term) every 100 ms, until stopped."""

    def __init__(self, nodes: dict[int, Node]) -> None:
        self.seen: list[tuple[float, int, tuple[bool, str] | None]] = []
        self.task = asyncio.create_task(self._run(nodes))

    async def _run(self, nodes: dict[int, Node]) -> None:
        while True:
            at = time.monotonic()
            roles = await asyncio.gather(*(n.role() for n in nodes.values()))
            self.seen.extend((at, t, r) for t, r in zip(nodes, roles))
            await asyncio.sleep(max(0.1 - (time.monotonic() - at), 0))

    async def stop(self) -> dict[str, set[int]]:
        """The nodes seen writable under each term."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        writable: dict[str, set[int]] = {}
        for _, token, role in self.seen:
            if role and role[0]:
                writable.setdefault(role[1], set()).add(token)
        return writable


async def rows(node: Node) -> list[int]:
    row = await node.pg.run("psql", "-X", "-A", "-t", "-h", str(node.run_dir), "-p", str(node.port), "-d",
                            "postgres", "-c", "SELECT id FROM t ORDER BY id")
    assert row.rc == 0, row.err
    return [int(x) for x in row.out.split()]


@pytest.mark.asyncio
async def test_bootstrap_then_failover_to_a_lagging_replica_loses_no_acknowledged_write(
        cluster: dict[int, Node], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="follow-leader")
    n1, n2, n3 = cluster[1], cluster[2], cluster[3]
    members = list(cluster.values())
    f = {t: Running(n, members) for t, n in cluster.items()}
    try:
        for t, r in f.items():
            r.say(leader(1, t, term=1))

        async def bootstrapped() -> bool:
            return (await n1.role() == (True, "1") and await n2.streams_from(n1) and await n3.streams_from(n1))

        await eventually(bootstrapped, 90, "node 1 a new primary under term 1, nodes 2 and 3 streaming from it")
        assert any("a new database" in m for m in caplog.messages)

        # A replica streams before the primary counts it as a synchronous standby: its walsender reports
        # 'async' until it has caught up.
        async def both_quorum() -> bool:
            row = await n1.sql("SELECT string_agg(sync_state, ',' ORDER BY sync_state) FROM pg_stat_replication")
            return row == ["quorum,quorum"]

        await eventually(both_quorum, 10, "both replicas synchronous standbys of node 1 (ANY 1)")
        await n1.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        await eventually(lambda: _all_have(n2, n3, [1]), 10, "the first row on both replicas")

        # Node 2 falls behind: its server (and sidecar) down. Rows 2..40 are acknowledged by node 3 alone.
        await f[2].stop()
        await n2.pg.stop()
        await n1.sql("INSERT INTO t SELECT generate_series(2, 40)")
        # Node 3 goes down too; node 1 commits one more row locally, which no replica acknowledges.
        await f[3].stop()
        await n3.pg.stop()
        await n1.sql("SET synchronous_commit = local; INSERT INTO t VALUES (999)")

        # Node 1's lease ends: its primary is stopped at once.
        sampler = RoleSampler(cluster)
        t0 = time.monotonic()
        f[1].say(leader(1, 1, term=1, is_self=False, state="stale", reason="the lease ran out"))
        await eventually(lambda: _stopped(n1), 5, "node 1's primary stopped")
        fenced = time.monotonic() - t0
        assert fenced < 3, f"node 1 stopped {fenced:.1f} s after its lease ended"

        # Seat 2 is elected under term 2; nodes 2 and 3 come back (their sidecars restarted).
        f[2], f[3] = Running(n2, members), Running(n3, members)
        for t, r in f.items():
            r.say(leader(2, t, term=2))

        # Node 1 holds a row past the fork, so it streams from node 2 only once rewound: a replica that has
        # gone past the fork may show 'streaming' for a moment before the startup process refuses the timeline.
        def rewound() -> bool:
            return any("rewound PostgreSQL" in m and "/n1/" in m for m in caplog.messages)

        async def failed_over() -> bool:
            return (await n2.role() == (True, "2") and await n3.streams_from(n2) and rewound()
                    and await n1.streams_from(n2))

        await eventually(failed_over, 90, "node 2 the primary under term 2, nodes 3 and 1 streaming from it")
        writable = await sampler.stop()
        assert all(len(nodes) == 1 for nodes in writable.values()), writable
        assert set(writable) <= {"1", "2"} and writable.get("2") == {2}, writable
        assert "" not in writable, "a writable server without a term"
        # Node 2 caught up from node 3, which had the rows it lacked, before it was promoted.
        assert any("node 3 (127.0.1.3:" in m and "got further" in m for m in caplog.messages)
        assert await rows(n2) == list(range(1, 41)), "an acknowledged row is missing on the new primary"
        # Node 1's unacknowledged row went with pg_rewind; node 1 is a replica of node 2's history.
        await n2.sql("INSERT INTO t VALUES (41)")
        await eventually(lambda: _all_have(n1, n3, list(range(1, 42))), 10, "node 2's write on nodes 1 and 3")
        assert (await n1.role()) == (False, "")
    finally:
        for r in f.values():
            await r.stop()


async def _all_have(a: Node, b: Node, expected: list[int]) -> bool:
    return await rows(a) == expected and await rows(b) == expected


async def _stopped(node: Node) -> bool:
    return not await node.pg.is_running()


@pytest_asyncio.fixture
async def single(cluster: dict[int, Node]) -> Any:
    """Node 1 alone: a one-member cluster."""
    n1 = cluster[1]
    r = Running(n1, [n1])
    try:
        yield n1, r
    finally:
        await r.stop()


@pytest.mark.asyncio
async def test_a_primary_whose_lease_ends_stops_and_its_waiting_commit_is_not_acknowledged(single: Any) -> None:
    n1, r = single
    r.say(leader(1, 1, term=1))
    await eventually(lambda: _role_is(n1, (True, "1")), 60, "node 1 the primary under term 1")
    await n1.sql("SET synchronous_commit = local; CREATE TABLE t (id int)")
    # No replica: ANY 1 holds this COMMIT until the server stops; the client must not see it succeed.
    waiting = asyncio.create_task(n1.pg.run("psql", "-X", "-h", str(n1.run_dir), "-p", str(n1.port), "-d",
                                            "postgres", "-c", "INSERT INTO t VALUES (1)", timeout=30))
    await asyncio.sleep(1.0)
    assert not waiting.done(), "the COMMIT returned without a synchronous standby"
    r.say(leader(1, 1, term=1, is_self=False, reason="the lease ran out"))
    ran = await asyncio.wait_for(waiting, 10)
    assert ran.rc != 0, "a COMMIT no replica acknowledged was reported a success"
    assert "might not have been replicated" in ran.err
    await eventually(lambda: _stopped(n1), 5, "node 1 stopped")
    # Back under the same term (a lapse of the lease): the same leadership, so the primary starts again.
    r.say(leader(1, 1, term=1))
    await eventually(lambda: _role_is(n1, (True, "1")), 30, "node 1 the primary again under term 1")
    assert r.f.last_action.kind == START_PRIMARY


@pytest.mark.asyncio
async def test_the_primary_runs_only_under_the_newest_term_it_was_given(single: Any) -> None:
    n1, r = single
    r.say(leader(1, 1, term=1))
    await eventually(lambda: _role_is(n1, (True, "1")), 60, "node 1 the primary under term 1")
    # Re-elected under term 3 (the agent missed term 2): stopped, checked, started again under term 3.
    r.say(leader(1, 1, term=3))
    await eventually(lambda: _role_is(n1, (True, "3")), 30, "node 1 the primary under term 3")
    # An agent that says term 2 after term 3: stopped, not made a primary of term 2.
    r.say(leader(1, 1, term=2))
    await eventually(lambda: _stopped(n1), 5, "node 1 stopped")
    await asyncio.sleep(1.0)
    assert await _stopped(n1)
    r.say(leader(1, 1, term=4))
    await eventually(lambda: _role_is(n1, (True, "4")), 30, "node 1 the primary under term 4")


@pytest.mark.asyncio
async def test_a_primary_whose_lease_is_not_renewed_stops(cluster: dict[int, Node]) -> None:
    n1 = cluster[1]
    answers: list[Any] = []

    async def renew() -> Any:
        if not answers:
            raise ConnectionRefusedError("the agent is gone")
        return answers[0]

    r = Running(n1, [n1], renew=renew)
    try:
        answers.append(leader(1, 1, term=1, lease_ms=1500))
        r.say(leader(1, 1, term=1, lease_ms=1500))
        await eventually(lambda: _role_is(n1, (True, "1")), 60, "node 1 the primary")
        await asyncio.sleep(2.0)  # renewed again and again
        assert await _role_is(n1, (True, "1"))
        answers.clear()  # the agent stops answering, and no event comes
        await eventually(lambda: _stopped(n1), 4, "node 1 stopped once its lease ran out")
    finally:
        await r.stop()


@pytest.mark.asyncio
async def test_no_new_database_after_the_first_term(cluster: dict[int, Node],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="follow-leader")
    n1 = cluster[1]
    r = Running(n1, list(cluster.values()))
    try:
        r.say(leader(1, 1, term=2))
        await eventually(lambda: _true(any("no empty one is made" in m for m in caplog.messages)), 15,
                         "the sidecar saying why it makes no database")
        assert not n1.pg.has_data()
    finally:
        await r.stop()


async def _role_is(node: Node, expected: tuple[bool, str]) -> bool:
    return await node.role() == expected


async def _true(value: bool) -> bool:
    return value


# --- the command line, against the real SDK and a stand-in agent per node --------------------------------------


@pytest.mark.asyncio
async def test_the_command_line_fails_over_with_the_agents(cluster: dict[int, Node], hba: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    agents = {t: await FakeAgent(t, [1, 2, 3], 1).start() for t in cluster}
    procs: dict[int, Any] = {}
    try:
        monkeypatch.setenv(fl.PASSWORD_ENV, PASSWORD)
        for t, n in cluster.items():
            procs[t] = await spawn(f"follow_leader {t}", "postgres/follow_leader.py", "--data-dir", str(n.data),
                                   "--port", str(n.port), "--listen-addresses", n.host, "--socket-dir",
                                   str(n.run_dir), "--hba", str(hba), "--api", agents[t].url,
                                   "--check-interval", "0.5", "--rejoin-timeout", "10")
        n1, n2, n3 = cluster[1], cluster[2], cluster[3]

        async def bootstrapped() -> bool:
            for p in procs.values():
                assert p.proc.returncode is None, p.log()
            return (await n1.role() == (True, "1") and await n2.streams_from(n1) and await n3.streams_from(n1))

        try:
            await eventually(bootstrapped, 90, "node 1 the primary, 2 and 3 its replicas")
        except AssertionError:
            raise AssertionError("\n".join(p.log() for p in procs.values())) from None
        assert any("following the mesh leader for PostgreSQL" in ln for ln in procs[1].lines)
        await n1.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        # The replication role's application_name is the node's seat, read from the agent.
        names = (await n1.sql("SELECT string_agg(application_name, ',' ORDER BY application_name) "
                              "FROM pg_stat_replication"))[0]
        assert names == "node2,node3"

        # Node 1's lease ends, then seat 2 is elected (term 2) as every agent sees it.
        agents[1].set_leader(1, lease=False, reason="the chain view is 7.2 s old, older than the 2.5 s lease")
        await eventually(lambda: _stopped(n1), 5, "node 1's primary stopped")
        for a in agents.values():
            a.set_leader(2)

        # Node 1 holds a row past the fork, so it streams from node 2 only once rewound: a replica that has
        # gone past the fork may show 'streaming' for a moment before the startup process refuses the timeline.
        def rewound() -> bool:
            return any("rewound PostgreSQL" in ln for ln in procs[1].lines)

        async def failed_over() -> bool:
            return (await n2.role() == (True, "2") and await n3.streams_from(n2) and rewound()
                    and await n1.streams_from(n2))

        try:
            await eventually(failed_over, 90, "node 2 the primary under term 2, 1 and 3 its replicas")
        except AssertionError:
            raise AssertionError("\n".join(p.log() for p in procs.values())) from None
        assert await rows(n2) == [1]
        await n2.sql("INSERT INTO t VALUES (2)")
        await eventually(lambda: _all_have(n1, n3, [1, 2]), 10, "node 2's write on 1 and 3")
        # No line of any log carries the password.
        for p in procs.values():
            assert not any(PASSWORD in ln for ln in p.lines)
        for n in cluster.values():
            assert PASSWORD not in n.pg.log_file.read_text(errors="replace")

        # Stopped, each sidecar stops its server with it: nothing is left unfenced.
        for t, p in procs.items():
            assert await p.stop(signal.SIGTERM) == 0, p.log()
            assert await _stopped(cluster[t]), f"node {t}'s PostgreSQL outlived its sidecar"
    finally:
        for p in procs.values():
            await p.stop()
        for a in agents.values():
            await a.stop()


@pytest.mark.asyncio
async def test_the_command_line_names_what_is_missing(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fl.PASSWORD_ENV, raising=False)
    p = await spawn("follow_leader", "postgres/follow_leader.py", "--data-dir", str(root / "data"),
                    "--socket-dir", str(root), "--api", "http://127.0.0.1:1")
    assert await asyncio.wait_for(p.proc.wait(), 20) == 2
    await p.stop()
    assert any(f"{fl.PASSWORD_ENV} is not set" in ln for ln in p.lines), p.log()
    monkeypatch.setenv(fl.PASSWORD_ENV, PASSWORD)
    p = await spawn("follow_leader", "postgres/follow_leader.py", "--data-dir", str(root / "no" / "data"),
                    "--socket-dir", str(root), "--api", "http://127.0.0.1:1")
    assert await asyncio.wait_for(p.proc.wait(), 20) == 2
    await p.stop()
    assert any("its parent" in ln and "does not exist" in ln for ln in p.lines), p.log()
