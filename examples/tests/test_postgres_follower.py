"""The PostgreSQL recipe's follower (examples/postgres/follower.py): what `dstack_p2p.follow_leader` says,
fenced by the term, made into an intent, and the steps it takes towards it against stand-in servers."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import follower as worker
import pytest
import server
from decisions import PRIMARY, PROMOTE, REPLICA, Follow, Idle, Lead, Local, PeerState, Position
from fakes import AgentViews, FakeLeader, assert_stops_when_cancelled_as_woken, following
from postgres_cluster import A1, A2, A3, PASSWORD, eventually, fl, holds, leader


def follower(pg: Any = None, **kw: Any) -> Any:
    return worker.PostgresFollower(pg, lambda lead: (lead.overlay_ip, 5432), PASSWORD, **kw)


@pytest.mark.asyncio
async def test_a_follower_cancelled_as_a_leader_event_wakes_it_stops() -> None:
    await assert_stops_when_cancelled_as_woken(follower(), leader(2, 1))


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
        await eventually(lambda: holds(f.intent() == Lead(3)), 2, "led under term 3")
        agent.say(leader(2, 1, term=4))
        await eventually(lambda: holds(f.intent() == Follow(2, ("10.0.1.2", 5432), 4)), 2, "following seat 2")
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
        await eventually(lambda: holds(f.intent() == Lead(5)), 2, "led under term 5")
        # Named, current, not leading, no reason given: this node's own seat, never followed.
        agent.say(leader(1, 1, term=5, is_self=False))
        await eventually(lambda: holds(isinstance(f.intent(), Idle)), 2, "standing by")
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
        await eventually(lambda: holds(f.intent() == Lead(2)), 2, "led under term 2")
        action = await f.step()
    finally:
        helper.cancel()
        await asyncio.gather(helper, return_exceptions=True)
    assert action.kind == PROMOTE, action
    assert pg.promoted == 2, "the lease ran out while the peers were asked, and was not renewed before promoting"


@pytest.mark.asyncio
async def test_a_new_leader_does_not_ask_a_draining_member_but_still_counts_it() -> None:
    asked: list[Any] = []

    class Pg(SlowPeersPg):
        async def peer(self, addr: Any, token: Any = None) -> PeerState:
            asked.append(token)
            return await super().peer(addr, token)

    pg = Pg(answer_after=0.0)

    async def members() -> list[Any]:
        # Seat 1 hands off and is drained; seat 3 answers.
        return [(1, A1, True), (2, A2, False), (3, A3, False)]

    async def whoami() -> int:
        return 2

    f = follower(pg, members=members, whoami=whoami)
    f.node_token = 2
    peers, count = await f._gather()
    assert asked == [3], "the draining member is not asked"
    assert count == 3, "it still counts among the members"
    assert [p.token for p in peers] == [3]


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
        await eventually(lambda: holds(f.intent() == Lead(2)), 2, "led under term 2")
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
