"""follow_leader against real redis-servers on loopback ports (they fail, saying so, without redis-server).

The leader's address is mapped to 127.0.0.1 and the leader's Redis port, so replicas follow a real
master without leaving the machine.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytest
import pytest_asyncio

if not shutil.which("redis-server"):
    raise RuntimeError("redis-server is not installed: apt-get install redis-server (scripts/bootstrap does)")

import redis.asyncio as aioredis  # noqa: E402
from fakes import (AgentViews, FakeLeader, FakeSDK, assert_cancellation_comes_out,  # noqa: E402
                   assert_stops_when_cancelled_as_woken, following, programs_end_as_they_are_read)
from follow_leader import (HANDOFF_FLUSH, MASTER, PLACEHOLDER, HealthReporter, LeaderFollower, RedisCli,  # noqa: E402
                           RedisPy, overlay_addr)

pytestmark = pytest.mark.asyncio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: str | None = None

    def start(self) -> None:
        # A directory of its own: a replica writes the RDB it receives there, even with --save "", and a
        # Redis that starts loads whatever dump.rdb it finds there. A shared one hands the next test another
        # test's keys.
        self.dir = tempfile.mkdtemp(prefix="redis-test-")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--repl-diskless-sync-delay", "0", "--loglevel", "warning", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def client(self) -> Any:
        return aioredis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=2)


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except Exception as e:
            last = e
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout} s (last error: {last!r})")


def leader(token: int | None, me: int, term: int = 1, **view: Any) -> FakeLeader:
    """What node `me`'s agent says: seat `token` leads under `term`, this node under its lease if it is
    the one; `view` overrides any field (is_self, state, lease_ms, reason, ...)."""
    if token is None:
        return FakeLeader(None, None, None, None, False, None, term=term, **view)
    fields: dict[str, Any] = {"is_self": token == me, "term": term, **view}
    return FakeLeader(token, f"instance-{token}", f"10.0.1.{token}", f"10.0.1.{token}", **fields)


@pytest_asyncio.fixture
async def redises() -> Any:
    rs = {1: Redis(), 2: Redis()}
    for r in rs.values():
        r.start()
    try:
        yield rs
    finally:
        for r in rs.values():
            r.stop()


async def role(r: Redis) -> list[Any]:
    c = r.client()
    try:
        return await c.execute_command("ROLE")
    finally:
        await c.aclose()


@pytest.mark.parametrize("backend", ["redis-py", "redis-cli"])
async def test_follows_the_leader_and_fails_over(redises: dict[int, Redis], backend: str) -> None:
    def control(t: int) -> Any:
        port = redises[t].port
        return RedisPy("127.0.0.1", port) if backend == "redis-py" else RedisCli("redis-cli", "127.0.0.1", port)

    def leader_addr(lead: Any) -> tuple[str, int]:
        return "127.0.0.1", redises[lead.token_id].port

    followers = {t: LeaderFollower(control(t), leader_addr, check_interval=0.2, backoff_max=0.5) for t in (1, 2)}
    agents = {t: AgentViews(seat=t) for t in followers}
    tasks = [asyncio.create_task(f.run()) for f in followers.values()]
    tasks += [following(f, agents[t]) for t, f in followers.items()]
    try:
        for t in followers:
            agents[t].say(leader(1, t))

        async def replicates(t: int, of: int) -> bool:
            r = await role(redises[t])
            return r[0] == "slave" and int(r[2]) == redises[of].port and r[3] == "connected"

        async def following_1() -> bool:
            return await replicates(2, 1) and (await role(redises[1]))[0] == "master"

        await eventually(following_1)
        c1, c2 = redises[1].client(), redises[2].client()
        try:
            await c1.set("k", "from 1")
            await eventually(lambda: _equals(c2.get("k"), "from 1"))

            # Failover: node 2 leads now, under the next term. Its Redis keeps the data and takes writes;
            # node 1 follows it.
            for t in followers:
                agents[t].say(leader(2, t, term=2))
            # Both, together: for a moment node 1 may follow node 2 while node 2 still follows node 1.
            async def failed_over() -> bool:
                return await replicates(1, 2) and (await role(redises[2]))[0] == "master"

            await eventually(failed_over)
            await c2.set("k", "from 2")
            await eventually(lambda: _equals(c1.get("k"), "from 2"))
            # Redis may take a command before redis-cli's exit reaches the follower: wait for that too.
            async def both_applied() -> bool:
                return followers[1].applied_token == 2 and followers[2].applied_token == 2

            await eventually(both_applied)
        finally:
            await c1.aclose()
            await c2.aclose()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for f in followers.values():
            await f.redis.close()


async def _equals(value: Any, expected: Any) -> bool:
    return await value == expected


async def test_waits_for_redis_and_repairs_drift() -> None:
    master, late = Redis(), Redis()
    master.start()
    follower = LeaderFollower(RedisPy("127.0.0.1", late.port), lambda lead: ("127.0.0.1", master.port),
                              check_interval=0.2, backoff_max=0.3)
    agent = AgentViews(seat=2)
    tasks = [asyncio.create_task(follower.run()), following(follower, agent)]
    try:
        agent.say(leader(1, 2))
        await asyncio.sleep(0.5)  # a few refused attempts, backing off
        assert follower.applied_token is None
        late.start()

        async def follows() -> bool:
            r = await role(late)
            return r[0] == "slave" and int(r[2]) == master.port

        await eventually(follows)
        # Someone (or a Redis restart) made it a master again: the next check puts it back.
        c = late.client()
        try:
            await c.execute_command("REPLICAOF", "NO", "ONE")
        finally:
            await c.aclose()
        await eventually(follows)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await follower.redis.close()
        master.stop()
        late.stop()


# --- demote first, promote under a newer term --------------------------------------------------------


class Follower:
    """One LeaderFollower on a real Redis, node 1's, its worker running and dstack_p2p.follow_leader calling
    it as `say` has the agent say (`seat` and `renew` as AgentViews takes them)."""

    def __init__(self, redis: Redis, addr: Callable[[Any], tuple[str, int]] | None = None, *, seat: int | None = None,
                 renew: Callable[[], Any] | None = None, **kw: Any) -> None:
        self.redis = redis
        kw.setdefault("check_interval", 0.2)
        kw.setdefault("backoff_max", 0.3)
        control = kw.pop("control", None) or RedisPy("127.0.0.1", redis.port)
        self.f = LeaderFollower(control, addr or (lambda lead: ("127.0.0.1", 1)), **kw)
        self.agent = AgentViews(seat, renew)
        self.say = self.agent.say
        self.tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> Follower:
        self.tasks = [asyncio.create_task(self.f.run()), following(self.f, self.agent)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self.tasks:
            t.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.f.redis.close()
        for r in results:
            if not isinstance(r, asyncio.CancelledError):
                raise AssertionError(f"a task ended before it was cancelled: {r!r}")


async def role_of(r: Redis) -> tuple[str, str | None, int | None]:
    reply = await role(r)
    return (reply[0], reply[1], int(reply[2])) if reply[0] == "slave" else (reply[0], None, None)


async def is_role(r: Redis, expected: tuple[str, str | None, int | None]) -> bool:
    return await role_of(r) == expected


PLACEHELD = ("slave", *PLACEHOLDER)


async def test_a_leader_whose_lease_ends_demotes_to_the_placeholder(redises: dict[int, Redis]) -> None:
    r = redises[1]
    async with Follower(r, check_interval=10) as node:
        node.say(leader(1, 1, term=3))
        await eventually(lambda: is_role(r, ("master", None, None)))
        # The contract still names seat 1, but its lease ran out: no other leader to follow.
        node.say(leader(1, 1, term=3, is_self=False, state="stale", reason="the lease ran out"))
        # Well within the check interval: the event itself demotes it.
        await eventually(lambda: is_role(r, PLACEHELD), timeout=1.0)
        await eventually(lambda: _true(node.f.applied == PLACEHOLDER and node.f.applied_token is None))

        # Back under the same term after a brief lapse: promoted again.
        node.say(leader(1, 1, term=3))
        await eventually(lambda: is_role(r, ("master", None, None)), timeout=1.0)
        # The lead cleared: nobody leads, and this node does not either.
        node.say(leader(None, 1, term=4))
        await eventually(lambda: is_role(r, PLACEHELD), timeout=1.0)


@pytest.mark.parametrize("backend", ["redis-py", "redis-cli"])
# With a delay the replica is still waiting for its first sync when the hand-off comes: ROLE does not list
# it yet, and a master that becomes a replica then cuts it off before it has a single key.
@pytest.mark.parametrize("first_sync_delay", [0, 1], ids=["synced", "in_its_first_sync"])
async def test_a_master_handing_off_pauses_writes_until_its_replicas_have_its_stream(
        redises: dict[int, Redis], backend: str, first_sync_delay: int, caplog: pytest.LogCaptureFixture) -> None:
    master, replica = redises[1], redises[2]
    m = master.client()
    await m.config_set("repl-diskless-sync-delay", first_sync_delay)
    await m.aclose()
    r = replica.client()
    await r.execute_command("REPLICAOF", "127.0.0.1", str(master.port))
    await r.aclose()
    control = (RedisPy("127.0.0.1", master.port) if backend == "redis-py"
               else RedisCli("redis-cli", "127.0.0.1", master.port))
    caplog.set_level(logging.INFO, logger="follow-leader")
    async with Follower(master, check_interval=10, control=control) as node:
        node.say(leader(1, 1, term=1))
        # Made the master by the follower, not only a master from the start.
        await eventually(lambda: _true(node.f.applied is MASTER and node.f.term == 1))
        await eventually(lambda: is_role(replica, ("slave", "127.0.0.1", master.port)))
        c = master.client()
        for k in range(500):
            await c.set(f"k{k}", k)
        await c.aclose()
        node.say(leader(1, 1, term=1, is_self=False, handing_off_to=2,
                        reason="this node is handing its term to another seat"))
        await eventually(lambda: is_role(master, PLACEHELD), timeout=4.0)
    said = [m for m in caplog.messages if m.startswith("handing off to node 2")]
    assert said and "1 replica(s)" in said[0] and "not all" not in said[0], caplog.messages
    c = replica.client()
    assert await c.dbsize() == 500, "the successor holds every write the old master took"
    await c.aclose()
    with pytest.raises(Exception, match="read only"):
        w = master.client()
        try:
            await w.set("late", 1)
        finally:
            await w.aclose()


async def test_a_master_handing_off_with_no_replica_waits_its_bound_and_says_the_successor_may_lack_writes(
        redises: dict[int, Redis], caplog: pytest.LogCaptureFixture) -> None:
    master = redises[1]
    caplog.set_level(logging.INFO, logger="follow-leader")
    async with Follower(master, check_interval=10) as node:
        node.say(leader(1, 1, term=1))
        await eventually(lambda: _true(node.f.applied is MASTER))
        started = time.monotonic()
        node.say(leader(1, 1, term=1, is_self=False, handing_off_to=2, reason="handing its term to seat 2"))
        await eventually(lambda: is_role(master, PLACEHELD), timeout=HANDOFF_FLUSH + 3)
        waited = time.monotonic() - started
    assert waited >= HANDOFF_FLUSH, f"became a replica after {waited:.2f} s, before its bound"
    said = [r for r in caplog.records if r.getMessage().startswith("handing off to node 2")]
    assert said and said[0].levelno == logging.WARNING, caplog.messages
    assert "0 replica(s)" in said[0].getMessage() and "may lack writes" in said[0].getMessage()


async def test_a_leader_replaced_by_another_seat_replicates_it(redises: dict[int, Redis]) -> None:
    def addr(lead: Any) -> tuple[str, int]:
        return "127.0.0.1", redises[lead.token_id].port

    r = redises[1]
    async with Follower(r, addr, check_interval=10) as node:
        node.say(leader(1, 1, term=1))
        await eventually(lambda: is_role(r, ("master", None, None)))
        node.say(leader(2, 1, term=2))
        await eventually(lambda: is_role(r, ("slave", "127.0.0.1", redises[2].port)), timeout=1.0)
        await eventually(lambda: _true(node.f.applied_token == 2))


async def test_a_follower_cancelled_as_a_leader_event_wakes_it_stops() -> None:
    await assert_stops_when_cancelled_as_woken(LeaderFollower(object(), lambda lead: None), leader(2, 1))


async def test_redis_cli_cancelled_as_it_ends_raises_the_cancellation(monkeypatch: pytest.MonkeyPatch) -> None:
    programs_end_as_they_are_read(monkeypatch)
    await assert_cancellation_comes_out(RedisCli("redis-cli", "127.0.0.1", 1).ping)


async def test_a_leader_the_agent_gives_no_overlay_address_is_not_followed(redises: dict[int, Redis],
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    r = redises[1]
    async with Follower(r, lambda lead: overlay_addr(lead, redises[2].port), check_interval=10) as node:
        node.say(leader(1, 1, term=1))
        await eventually(lambda: is_role(r, ("master", None, None)))
        # Seat 300 of a /16 leads, and this node's agent believes no record of it: no address to follow.
        with caplog.at_level(logging.WARNING):
            node.say(FakeLeader(300, "instance-300", None, None, False, term=2))
            await eventually(lambda: is_role(r, PLACEHELD), timeout=1.0)
        assert any("names no overlay address" in m for m in caplog.messages), caplog.messages
        node.say(FakeLeader(300, "instance-300", "127.0.0.1", "127.0.0.1", False, term=2))
        await eventually(lambda: is_role(r, ("slave", "127.0.0.1", redises[2].port)), timeout=1.0)


async def test_a_master_with_an_unsure_view_of_another_leader_is_demoted_not_pointed_at_it(
        redises: dict[int, Redis]) -> None:
    r = redises[1]
    async with Follower(r, lambda lead: ("127.0.0.1", redises[2].port), check_interval=10) as node:
        node.say(leader(1, 1, term=1))
        await eventually(lambda: is_role(r, ("master", None, None)))
        # Seat 2 named, but this node's view is stale: it may be a deposed master by now.
        node.say(leader(2, 1, term=2, state="stale"))
        await eventually(lambda: is_role(r, PLACEHELD), timeout=1.0)
        # Confirmed: follow it.
        node.say(leader(2, 1, term=2))
        await eventually(lambda: is_role(r, ("slave", "127.0.0.1", redises[2].port)), timeout=1.0)
        # A replica whose view turns stale stays the replica it is: it takes no writes either way.
        node.say(leader(2, 1, term=2, state="unknown"))
        await asyncio.sleep(0.3)
        assert await role_of(r) == ("slave", "127.0.0.1", redises[2].port)


async def test_no_promotion_under_an_older_term_and_promotion_under_a_newer_one(
        redises: dict[int, Redis], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="follow-leader")
    r = redises[1]
    async with Follower(r, lambda lead: ("127.0.0.1", redises[2].port), check_interval=0.2) as node:
        node.say(leader(2, 1, term=5))
        await eventually(lambda: is_role(r, ("slave", "127.0.0.1", redises[2].port)))
        # An agent that says this node leads under term 4, after term 5 was seen: not a promotion.
        node.say(leader(1, 1, term=4))
        await asyncio.sleep(0.5)
        assert await role_of(r) == ("slave", "127.0.0.1", redises[2].port)
        assert any("older than term 5 already seen: not promoting" in m for m in caplog.messages)
        # A leader without a term (an agent older than terms) cannot be fenced either.
        node.say(leader(1, 1, term=None))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        assert (await role_of(r))[0] == "slave"
        assert any("gives no term" in m for m in caplog.messages)
        # Term 6, newer than any seen: promoted, and the log names the term.
        node.say(leader(1, 1, term=6))
        await eventually(lambda: is_role(r, ("master", None, None)), timeout=1.0)
        assert node.f.term == 6
        assert any("leads under term 6: REPLICAOF NO ONE" in m for m in caplog.messages)


async def test_the_role_check_demotes_a_stray_master(redises: dict[int, Redis]) -> None:
    r = redises[1]
    # Redis starts as a master (no replicaof in its configuration); before the agent has said a word,
    # it is demoted.
    assert await role_of(r) == ("master", None, None)
    async with Follower(r, check_interval=0.2) as node:
        await eventually(lambda: is_role(r, PLACEHELD), timeout=1.0)
        node.say(leader(None, 1, term=0))
        c = r.client()
        try:
            # Someone (or a restart that dropped the runtime REPLICAOF) made it a master again.
            await c.execute_command("REPLICAOF", "NO", "ONE")
        finally:
            await c.aclose()
        assert await role_of(r) == ("master", None, None)
        await eventually(lambda: is_role(r, PLACEHELD), timeout=2.0)


async def test_a_master_whose_lease_is_not_renewed_demotes_itself(redises: dict[int, Redis]) -> None:
    r = redises[1]
    answers: list[Any] = []

    async def renew() -> Any:
        if not answers:
            raise ConnectionRefusedError("the agent is gone")
        return answers[0]

    async with Follower(r, check_interval=10, seat=1, renew=renew) as node:
        # The agent answers, renewing a 400 ms lease again and again: Redis stays the master.
        answers.append(leader(1, 1, term=2, lease_ms=400))
        node.say(leader(1, 1, term=2, lease_ms=400))
        await eventually(lambda: is_role(r, ("master", None, None)))
        await asyncio.sleep(1.0)
        assert await role_of(r) == ("master", None, None)
        # The agent stops answering and no event comes (its stream is lost): the lease runs out.
        answers.clear()
        await eventually(lambda: is_role(r, PLACEHELD), timeout=1.0)
        assert node.f.applied_token is None
        # The agent is back, leading under the same term; its stream repeats nothing (the SDK calls back
        # only on a change), so the sidecar asks: promoted again.
        answers.append(leader(1, 1, term=2, lease_ms=400))
        await eventually(lambda: is_role(r, ("master", None, None)), timeout=2.0)


async def test_a_renewal_older_than_an_event_is_not_taken(redises: dict[int, Redis]) -> None:
    r = redises[1]
    asked = asyncio.Event()
    answer = asyncio.Event()

    async def renew() -> Any:
        asked.set()
        await answer.wait()
        # Served before the lease ended, answered after the event that says so.
        return leader(1, 1, term=2, lease_ms=2400)

    async with Follower(r, check_interval=10, seat=1, renew=renew) as node:
        node.say(leader(1, 1, term=2, lease_ms=2400))
        await eventually(lambda: is_role(r, ("master", None, None)))
        await asyncio.wait_for(asked.wait(), 2)
        asked.clear()
        answer.set()
        await asyncio.sleep(0.1)
        answer.clear()
        await asyncio.wait_for(asked.wait(), 2)
        node.say(leader(1, 1, term=2, is_self=False, reason="unhealthy: redis"))
        answer.set()
        await eventually(lambda: is_role(r, PLACEHELD), timeout=1.0)
        await asyncio.sleep(0.3)
        assert await role_of(r) == PLACEHELD
        assert node.f.applied_token is None


async def test_this_nodes_own_seat_is_never_followed(redises: dict[int, Redis]) -> None:
    r = redises[1]

    # Its own address, as the follower would be pointed at were seat 1 taken for another.
    async with Follower(r, lambda lead: ("127.0.0.1", r.port), check_interval=10, seat=1) as node:
        node.say(leader(1, 1, term=2))
        await eventually(lambda: is_role(r, ("master", None, None)))
        # Named, current, not leading, and (unlike the agent) no reason given: the seat tells.
        node.say(leader(1, 1, term=2, is_self=False))
        await eventually(lambda: is_role(r, PLACEHELD), timeout=1.0)
        assert node.f.applied_token is None


async def test_health_reports_follow_redis_pings(redises: dict[int, Redis]) -> None:
    r = redises[1]
    sdk = FakeSDK(1, [1, 2], 1)
    # A PING may take up to the interval: a second, so that a busy machine (CI runs the namespace scenarios
    # beside this) does not count a slow answer as a failure. A stopped Redis refuses at once.
    reporter = HealthReporter(RedisPy("127.0.0.1", r.port), sdk, interval=1.0)
    try:
        assert await reporter.report_once()
        assert sdk.health_reports == [(True, None, pytest.approx(3.0))]
        r.stop()
        # One failed PING is not enough, two are.
        assert await reporter.report_once()
        assert sdk.health_reports[-1] == (True, None, pytest.approx(3.0))
        assert await reporter.report_once()
        healthy, reason, ttl = sdk.health_reports[-1]
        assert not healthy and ttl == pytest.approx(3.0)
        assert reason is not None and reason.startswith(f"Redis at 127.0.0.1:{r.port} failed 2 PINGs in a row")
        assert len(reason) <= 200 and "\n" not in reason
        r.start()
        await eventually(lambda: _pong(r))
        assert await reporter.report_once()
        assert sdk.health_reports[-1] == (True, None, pytest.approx(3.0))
    finally:
        await reporter.redis.close()


async def _true(value: bool) -> bool:
    return value


async def _pong(r: Redis) -> bool:
    c = r.client()
    try:
        return bool(await c.ping())
    finally:
        await c.aclose()


async def test_health_reports_stop_when_the_agent_refuses_them(redises: dict[int, Redis]) -> None:
    class Refused(Exception):
        status = 405

    class OldAgent(FakeSDK):
        async def set_healthy(self, healthy: bool, reason: str | None = None, ttl: float | None = None) -> Any:
            self.health_reports.append((healthy, reason, ttl))
            raise Refused("the agent API is read-only: use GET")

    sdk = OldAgent(1, [1], 1)
    reporter = HealthReporter(RedisPy("127.0.0.1", redises[1].port), sdk, interval=0.05)
    try:
        await asyncio.wait_for(reporter.run(), 2)
    finally:
        await reporter.redis.close()
    assert len(sdk.health_reports) == 1


async def test_a_restarted_sidecar_leaves_a_replica_its_master(redises: dict[int, Redis]) -> None:
    r, master = redises[1], redises[2]
    c = r.client()
    try:
        await c.execute_command("REPLICAOF", "127.0.0.1", str(master.port))
    finally:
        await c.aclose()
    async with Follower(r, check_interval=10) as node:
        # Seat 2 leads, but this node's view is not confirmed yet: nothing to change on a replica.
        node.say(leader(2, 1, term=2, state="unknown"))
        await asyncio.sleep(0.4)
        assert await role_of(r) == ("slave", "127.0.0.1", master.port)
        assert node.f.applied == ("127.0.0.1", master.port)
