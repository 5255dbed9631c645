"""The PostgreSQL recipe failing over real PostgreSQL servers on loopback, each node's follower driven by
`dstack_p2p.follow_leader` as the test has its agent speak: no acknowledged write lost, no primary left
running once its lease ends, none under an older term."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import follower as worker
import pytest
import pytest_asyncio
from decisions import START_PRIMARY
from fakes import AgentViews, following
from postgres_cluster import PASSWORD, Node, all_have, eventually, holds, leader, rows, stopped


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
        await eventually(lambda: all_have(n2, n3, [1]), 10, "the first row on both replicas")

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
        await eventually(lambda: stopped(n1), 5, "node 1's primary stopped")
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
        await eventually(lambda: all_have(n1, n3, list(range(1, 42))), 10, "node 2's write on nodes 1 and 3")
        assert (await n1.role()) == (False, "")
    finally:
        for r in f.values():
            await r.stop()


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
    await eventually(lambda: stopped(n1), 5, "node 1 stopped")
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
    await eventually(lambda: stopped(n1), 5, "node 1 stopped")
    await asyncio.sleep(1.0)
    assert await stopped(n1)
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
        await eventually(lambda: stopped(n1), 4, "node 1 stopped once its lease ran out")
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
        await eventually(lambda: holds(any("no empty one is made" in m for m in caplog.messages)), 15,
                         "the sidecar saying why it makes no database")
        assert not n1.pg.has_data()
    finally:
        await r.stop()


async def _role_is(node: Node, expected: tuple[bool, str]) -> bool:
    return await node.role() == expected
