"""The counter's replication, with three (or four) nodes on loopback ports and a fake SDK per node.

The tests play the chain: they say who leads, on which nodes' views, and take nodes' HTTP servers
down and up again. A node whose server is down keeps its state, as a node cut off the network does.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import ClientSession, ClientTimeout, web

from counter import CounterNode
from fakes import FakeSDK, closed_port

pytestmark = pytest.mark.asyncio

PEER_TIMEOUT = 0.5


class Cluster:
    def __init__(self, tokens: tuple[int, ...] = (1, 2, 3), leader: int | None = 1,
                 members: tuple[int, ...] | None = None) -> None:
        self.tokens = tokens
        self.members = members or tokens  # members without a node here are unreachable peers
        self.initial_leader = leader
        # The contract's leader and term: the term grows by one at each change of leader.
        self.chain_leader = leader
        self.chain_term = 1 if leader is not None else 0
        self.ports: dict[int, int] = {}
        self.dead_port = closed_port()
        self.sdks: dict[int, FakeSDK] = {}
        self.nodes: dict[int, CounterNode] = {}
        self.runners: dict[int, web.AppRunner] = {}
        self.http: ClientSession | None = None

    def peer_url(self, token: int, overlay_ip: str | None) -> str:
        return f"http://127.0.0.1:{self.ports.get(token, self.dead_port)}"

    async def start(self) -> None:
        for t in self.tokens:
            self.sdks[t] = FakeSDK(t, list(self.members), self.initial_leader)
            self.nodes[t] = CounterNode(self.sdks[t], self.peer_url, peer_timeout=PEER_TIMEOUT)
            await self.up(t)
        self.http = ClientSession(timeout=ClientTimeout(total=5))
        for t in self.tokens:
            await self.nodes[t].start()

    async def up(self, t: int) -> None:
        runner = web.AppRunner(self.nodes[t].make_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.ports.get(t, 0)).start()
        self.ports[t] = runner.addresses[0][1]
        self.runners[t] = runner

    async def down(self, t: int) -> None:
        await self.runners.pop(t).cleanup()

    async def close(self) -> None:
        if self.http:
            await self.http.close()
        for runner in self.runners.values():
            await runner.cleanup()
        for node in self.nodes.values():
            await node.close()

    async def request(self, method: str, t: int, path: str, body: Any = None) -> tuple[int, Any]:
        assert self.http
        async with self.http.request(method, f"http://127.0.0.1:{self.ports[t]}{path}", json=body) as r:
            return r.status, await r.json(content_type=None)

    async def get(self, t: int, path: str) -> Any:
        status, body = await self.request("GET", t, path)
        assert status == 200, body
        return body

    async def post(self, t: int, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.request("POST", t, path, body)

    async def count(self, t: int) -> int:
        return (await self.get(t, "/counter"))["count"]

    async def set_leader(self, leader: int | None, on: tuple[int, ...] | None = None, **view: Any) -> None:
        """The contract names `leader` (a new term if it changed); the nodes `on` hear of it."""
        if leader != self.chain_leader:
            self.chain_leader, self.chain_term = leader, self.chain_term + 1
        for t in on or self.tokens:
            await self.sdks[t].set_leader(leader, term=self.chain_term, **view)

    async def wait_role(self, t: int, role: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.nodes[t]
            if status.role() == role:
                return await self.get(t, "/status") if t in self.runners else {}
            if time.monotonic() > deadline:
                raise AssertionError(f"node {t} is {status.role()!r}, not {role!r}, after {timeout} s")
            await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def cluster() -> Any:
    c = Cluster()
    await c.start()
    try:
        yield c
    finally:
        await c.close()


async def test_leader_replicates_to_followers(cluster: Cluster) -> None:
    await cluster.wait_role(1, "leader")
    for i in range(1, 4):
        assert await cluster.post(1, "/increment") == (200, {"count": i, "leader": 1})
    # Live followers are waited for, so they hold the count as soon as the client has its answer.
    assert [await cluster.count(t) for t in (1, 2, 3)] == [3, 3, 3]

    status = await cluster.get(2, "/status")
    assert status["role"] == "follower" and status["leader"] == 1 and status["token"] == 2
    assert status["members"] == [1, 2, 3] and status["cluster_size"] == 3 and status["majority"] == 2
    assert status["overlay_ip"] == "10.0.1.2" and status["count"] == 3
    assert (await cluster.get(1, "/status"))["role"] == "leader"
    members = await cluster.get(3, "/members")
    assert sorted(m["token_id"] for m in members) == [1, 2]
    assert (await cluster.get(3, "/health"))["ok"] is True
    replica = await cluster.get(3, "/replica")
    assert replica["count"] == 3 and replica["leader"] == 1 and replica["term"] >= 1


async def test_follower_forwards_to_the_leader(cluster: Cluster) -> None:
    await cluster.wait_role(1, "leader")
    assert await cluster.post(2, "/increment") == (200, {"count": 1, "leader": 1})
    assert await cluster.post(3, "/increment") == (200, {"count": 2, "leader": 1})
    assert [await cluster.count(t) for t in (1, 2, 3)] == [2, 2, 2]


async def test_a_majority_is_enough_and_needed(cluster: Cluster) -> None:
    await cluster.wait_role(1, "leader")
    await cluster.down(3)
    for i in range(1, 5):
        started = time.monotonic()
        assert await cluster.post(1, "/increment") == (200, {"count": i, "leader": 1})
        assert time.monotonic() - started < PEER_TIMEOUT + 0.5
    assert await cluster.count(2) == 4

    await cluster.down(2)
    status, body = await cluster.post(1, "/increment")
    assert status == 503
    assert "majority" in body["error"] and body["acks"] == 1 and body["cluster_size"] == 3


async def test_a_silent_peer_costs_at_most_the_timeout() -> None:
    # Node 4 accepts connections and never answers, as a node behind a black hole does.
    conns: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        await reader.read()

    hole = await asyncio.start_server(swallow, "127.0.0.1", 0)
    c = Cluster(tokens=(1, 2, 3), members=(1, 2, 3, 4))
    c.ports[4] = hole.sockets[0].getsockname()[1]
    await c.start()
    try:
        await c.wait_role(1, "leader")
        times = []
        for i in range(1, 6):
            started = time.monotonic()
            # 3 of 4 is the majority: every live node must ack, node 4 never does.
            assert await c.post(1, "/increment") == (200, {"count": i, "leader": 1})
            times.append(time.monotonic() - started)
        assert max(times) < PEER_TIMEOUT + 0.3, times
        # Node 4 timed out in the sync already: later increments do not wait for it at all.
        assert sum(times[1:]) / 4 < PEER_TIMEOUT / 2, times
    finally:
        await c.close()
        for w in conns:
            w.close()
        hole.close()


async def test_failover_keeps_every_acknowledged_increment(cluster: Cluster) -> None:
    await cluster.wait_role(1, "leader")
    await cluster.down(2)
    for i in range(1, 6):
        assert await cluster.post(1, "/increment") == (200, {"count": i, "leader": 1})
    await cluster.up(2)
    assert await cluster.count(2) == 0  # node 2 missed them all; node 3 has them

    # The leader dies; the chain moves the lead to node 2, which must take node 3's count.
    await cluster.down(1)
    await cluster.set_leader(2, on=(2, 3))
    status = await cluster.wait_role(2, "leader")
    assert status["count"] == 5 and status["leader"] == 2

    assert await cluster.post(3, "/increment") == (200, {"count": 6, "leader": 2})
    assert await cluster.post(2, "/increment") == (200, {"count": 7, "leader": 2})
    assert await cluster.count(3) == 7


async def test_increments_wait_for_the_new_leaders_sync(cluster: Cluster) -> None:
    await cluster.wait_role(1, "leader")
    for _ in range(2):
        assert (await cluster.post(1, "/increment"))[0] == 200
    await cluster.down(1)
    await cluster.down(3)
    await cluster.set_leader(2, on=(2, 3))
    # Alone, node 2 is no majority: it may not guess the count, so it does not serve.
    await asyncio.sleep(0.3)
    assert cluster.nodes[2].role() == "syncing"
    status, body = await cluster.post(2, "/increment")
    assert status == 503 and "syncing" in body["error"]

    await cluster.up(3)
    await cluster.wait_role(2, "leader")
    assert await cluster.post(2, "/increment") == (200, {"count": 3, "leader": 2})


async def test_stale_replicates_are_ignored_or_refused(cluster: Cluster) -> None:
    await cluster.wait_role(1, "leader")
    for _ in range(3):
        assert (await cluster.post(1, "/increment"))[0] == 200
    replica = await cluster.get(2, "/replica")
    # The mesh's first term, node 1's first round in it.
    assert (replica["term"], replica["round"], replica["leader"], replica["mesh_term"]) == (1, 1, 1, 1)

    # A late replicate of the current leader: acked, but the count does not go back.
    assert await cluster.post(2, "/replicate", {"count": 1, "term": 1, "round": 1, "leader": 1}) == \
        (200, {"count": 3, "applied": False})
    # One from an older round of the same term: refused, so its leader learns it was deposed.
    status, body = await cluster.post(2, "/replicate", {"count": 10, "term": 1, "round": 0, "leader": 1})
    assert status == 409 and (body["term"], body["round"], body["leader"]) == (1, 1, 1)
    assert "older than ballot [1, 1, 1]" in body["error"]
    status, body = await cluster.post(2, "/prepare", {"term": 1, "round": 1, "leader": 0})
    assert status == 409
    assert await cluster.count(2) == 3

    status, body = await cluster.post(2, "/replicate", {"count": "7", "term": 1, "round": 1, "leader": 1})
    assert status == 400 and "count" in body["error"]
    status, body = await cluster.post(2, "/replicate", {"count": 7, "term": 1, "leader": 1})
    assert status == 400 and "round" in body["error"]


async def test_a_write_of_an_older_mesh_term_is_refused_whatever_its_round(cluster: Cluster) -> None:
    await cluster.wait_role(1, "leader")
    assert (await cluster.post(1, "/increment"))[0] == 200
    # Older than the promise (1, 1, 1) by its mesh term, though its round and leader are higher.
    status, body = await cluster.post(2, "/replicate", {"count": 10, "term": 0, "round": 99, "leader": 3})
    assert status == 409 and body["term"] == 1
    # Node 2's agent reports that the chain moved on (node 3 leads, term 2); node 2 promised nothing new.
    await cluster.set_leader(3, on=(2,))
    assert (await cluster.get(2, "/replica"))["term"] == 1
    # A ballot above node 2's promise, but of a term its own agent says is over: refused.
    status, body = await cluster.post(2, "/replicate", {"count": 10, "term": 1, "round": 50, "leader": 3})
    assert status == 409 and body["term"] == 2
    assert "mesh term 1 is older than term 2, which this node's agent reports" in body["error"]
    status, _ = await cluster.post(2, "/prepare", {"term": 1, "round": 50, "leader": 3})
    assert status == 409
    assert await cluster.count(2) == 1

    # Node 1 still believes it leads under term 1; node 2's refusal keeps its increment unacknowledged,
    # though node 3 took it and two of three is a majority.
    status, body = await cluster.post(1, "/increment")
    assert status == 503 and "newer leader" in body["error"]
    assert await cluster.count(2) == 1


async def test_ballots_order_by_mesh_term_first(cluster: Cluster) -> None:
    await cluster.wait_role(1, "leader")
    assert await cluster.post(2, "/prepare", {"term": 1, "round": 5, "leader": 3}) == \
        (200, {"count": 0, "term": 1, "round": 5, "leader": 3})
    # A newer mesh term wins over any round and any token of an older one...
    status, _ = await cluster.post(2, "/prepare", {"term": 2, "round": 1, "leader": 1})
    assert status == 200
    # ...and a higher round of the older term loses to it.
    status, body = await cluster.post(2, "/replicate", {"count": 4, "term": 1, "round": 9, "leader": 3})
    assert status == 409 and (body["term"], body["round"], body["leader"]) == (2, 1, 1)
    replica = await cluster.get(2, "/replica")
    assert (replica["term"], replica["round"], replica["leader"]) == (2, 1, 1)


async def test_a_leader_elected_again_syncs_under_the_new_term(cluster: Cluster) -> None:
    await cluster.wait_role(1, "leader")
    assert await cluster.post(1, "/increment") == (200, {"count": 1, "leader": 1})
    # The contract cleared the lead and elected seat 1 again (terms 2 and 3); the agents report the
    # result alone, still naming node 1 and this node leading throughout.
    cluster.chain_term = 3
    await cluster.set_leader(1)
    await cluster.wait_role(1, "leader")

    async def ballot_moved() -> None:
        while (await cluster.get(2, "/replica"))["term"] != 3:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(ballot_moved(), 5)
    replica = await cluster.get(2, "/replica")
    assert (replica["term"], replica["round"], replica["leader"]) == (3, 1, 1)
    assert await cluster.post(3, "/increment") == (200, {"count": 2, "leader": 1})
    assert (await cluster.get(1, "/status"))["term"] == 3


async def test_a_leader_whose_lease_ends_stops_acknowledging(cluster: Cluster) -> None:
    await cluster.wait_role(1, "leader")
    for i in (1, 2):
        assert await cluster.post(1, "/increment") == (200, {"count": i, "leader": 1})

    # An increment is out when the lease ends: its replicates are slow to come back.
    node = cluster.nodes[1]
    call = node._call

    async def slow_call(peer: Any, path: str, body: dict[str, Any]) -> Any:
        if path == "/replicate":
            await asyncio.sleep(0.3)
        return await call(peer, path, body)

    node._call = slow_call  # type: ignore[method-assign]
    pending = asyncio.create_task(cluster.post(1, "/increment"))
    await asyncio.sleep(0.1)
    reason = "the chain view is 7.2 s old, older than the 2.5 s lease"
    # The contract still names node 1; its agent no longer says it leads.
    await cluster.set_leader(1, on=(1,), lease=False, state="stale", reason=reason)
    assert node.role() == "follower"
    status, body = await pending
    assert status == 503 and "stopped leading while count 3 was being replicated" in body["error"]
    node._call = call  # type: ignore[method-assign]

    # Nothing is acknowledged meanwhile, on node 1 or forwarded to it.
    status, body = await cluster.post(1, "/increment")
    assert status == 503 and "does not lead now" in body["error"] and reason in body["error"]
    status, body = await cluster.post(2, "/increment")
    assert status == 503 and body["leader"] == 1

    # The lease is back under the same term: a new round, from every count a majority holds.
    await cluster.set_leader(1, on=(1,))
    await cluster.wait_role(1, "leader")
    replica = await cluster.get(2, "/replica")
    assert (replica["term"], replica["round"], replica["leader"]) == (1, 2, 1)
    assert await cluster.post(2, "/increment") == (200, {"count": 4, "leader": 1})


async def test_an_unhealthy_leader_steps_down(cluster: Cluster) -> None:
    await cluster.wait_role(1, "leader")
    await cluster.set_leader(1, on=(1,), lease=False, healthy=False, reason="unhealthy: disk full")
    await cluster.wait_role(1, "follower", timeout=0.5)
    status, body = await cluster.post(1, "/increment")
    assert status == 503 and "unhealthy: disk full" in body["error"]


async def test_a_deposed_leader_acknowledges_nothing(cluster: Cluster) -> None:
    await cluster.wait_role(1, "leader")
    for _ in range(2):
        assert (await cluster.post(1, "/increment"))[0] == 200

    # Node 1 is cut off while the others fail over; its own chain view still names itself.
    await cluster.down(1)
    await cluster.set_leader(2, on=(2, 3))
    await cluster.wait_role(2, "leader")
    await cluster.up(1)
    assert cluster.nodes[1].role() == "leader"

    status, body = await cluster.post(1, "/increment")
    assert status == 503 and "newer leader" in body["error"]
    assert await cluster.count(2) == 2 and await cluster.count(3) == 2

    await cluster.set_leader(2, on=(1,))  # its view catches up
    await cluster.wait_role(1, "follower")
    # Node 1 holds its unacknowledged 3; the cluster moves past it rather than under it.
    assert await cluster.post(1, "/increment") == (200, {"count": 3, "leader": 2})
    assert [await cluster.count(t) for t in (1, 2, 3)] == [3, 3, 3]


async def test_no_leader_or_an_unreachable_one_is_a_clear_503() -> None:
    c = Cluster(leader=None)
    await c.start()
    try:
        status, body = await c.post(2, "/increment")
        assert status == 503 and "no leader" in body["error"]

        await c.set_leader(1, on=(2,))
        await c.down(1)
        status, body = await c.post(2, "/increment")
        assert status == 503 and "cannot be reached" in body["error"] and body["leader"] == 1
    finally:
        await c.close()


async def test_concurrent_clients_across_a_failover_lose_nothing(cluster: Cluster) -> None:
    await cluster.wait_role(1, "leader")
    acked: list[int] = []
    live = {1, 2, 3}

    async def client(k: int) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.5
        i = k
        while loop.time() < end:
            i += 1
            t = sorted(live)[i % len(live)]
            try:
                status, body = await cluster.post(t, "/increment")
            except Exception:  # the node went down under us: not acknowledged
                continue
            if status == 200:
                acked.append(body["count"])
            else:
                await asyncio.sleep(0.05)

    async def fail_over() -> None:
        await asyncio.sleep(0.5)
        live.discard(1)
        await cluster.down(1)
        await cluster.set_leader(2, on=(2, 3))

    await asyncio.gather(*(client(k) for k in range(4)), fail_over())
    await cluster.wait_role(2, "leader")
    final = await cluster.count(2)
    assert len(acked) > 10, acked
    # Every acknowledged increment has its own count, and the new leader holds all of them.
    assert len(set(acked)) == len(acked), sorted(acked)
    assert final >= max(acked)
    assert await cluster.post(3, "/increment") == (200, {"count": final + 1, "leader": 2})


async def eventually(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not within the time")
        await asyncio.sleep(0.01)


async def test_the_counter_reports_its_health_as_a_heartbeat() -> None:
    sdk = FakeSDK(1, [1], 1)
    node = CounterNode(sdk, lambda t, ip: "http://127.0.0.1:1", report_health=True, health_interval=0.05)
    await node.start()
    try:
        await eventually(lambda: len(sdk.health_reports) >= 3)
        # Healthy, each report holding three intervals: a counter that stops renewing lapses.
        assert all(r == (True, None, pytest.approx(0.15)) for r in sdk.health_reports), sdk.health_reports
    finally:
        await node.close()
    assert sdk.health_reports[-1] == (False, "the counter is stopped", None)


class AgentSaid(Exception):
    def __init__(self, status: int | None) -> None:
        super().__init__(f"the agent answered {status}")
        self.status = status


async def test_health_reports_stop_when_the_agent_refuses_them_and_go_on_through_outages(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="counter")
    answers: list[int | None] = []

    class Agent(FakeSDK):
        async def set_healthy(self, healthy: bool, reason: str | None = None, ttl: float | None = None) -> Any:
            self.health_reports.append((healthy, reason, ttl))
            if answers:
                raise AgentSaid(answers.pop(0))
            return None

    # Unreachable twice, then back: one warning, one line when it works again, and it never stops.
    answers[:] = [None, None]
    sdk = Agent(1, [1], 1)
    node = CounterNode(sdk, lambda t, ip: "http://127.0.0.1:1", report_health=True, health_interval=0.02)
    await node.start()
    try:
        await eventually(lambda: len(sdk.health_reports) >= 5)
    finally:
        await node.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "counter"]
    assert sum("could not report this counter's health" in m for m in messages) == 1
    assert sum("reporting this counter's health to the mesh agent again" in m for m in messages) == 1

    # An agent older than health reports (405): one try, a warning, no more, and none at the end.
    answers[:] = [405]
    sdk = Agent(1, [1], 1)
    node = CounterNode(sdk, lambda t, ip: "http://127.0.0.1:1", report_health=True, health_interval=0.02)
    await node.start()
    try:
        await eventually(lambda: len(sdk.health_reports) == 1)
        await asyncio.sleep(0.1)
    finally:
        await node.close()
    assert sdk.health_reports == [(True, None, pytest.approx(0.06))]
    assert any("refuses health reports (the agent answered 405)" in r.getMessage() for r in caplog.records)
