"""The examples' command lines against the real dstack_p2p SDK and a fake agent per node.

Each node has its own loopback address 127.0.1.N standing in for its overlay IP 10.0.1.N, so the apps
reach their peers at "<overlay ip>:<peer port>" exactly as on the mesh.
"""
from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout

import dstack_p2p  # noqa: F401  (the SDK must be installed: pip install ./sdk/python)
from agent_stub import FakeAgent, overlay_ip  # noqa: E402
from procs import Proc, free_port, spawn  # noqa: E402

pytestmark = pytest.mark.asyncio


async def get(http: ClientSession, url: str) -> Any:
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await check()
            if value:
                return value
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.1)


async def test_counter_cli_fails_over_without_losing_counts() -> None:
    tokens = [1, 2, 3]
    agents = {t: await FakeAgent(t, tokens, leader=1).start() for t in tokens}
    port = free_port([overlay_ip(t) for t in tokens])
    procs: dict[int, Proc] = {}
    http = ClientSession(timeout=ClientTimeout(total=10))
    base = {t: f"http://{overlay_ip(t)}:{port}" for t in tokens}
    try:
        for t in tokens:
            procs[t] = await spawn(f"counter {t}", "counter/counter.py", "--listen", f"{overlay_ip(t)}:{port}",
                                   "--api", agents[t].url, "--peer-port", str(port), "--peer-timeout", "1")
        for t in tokens:
            line = await procs[t].wait_listening()
            # Timestamped, and naming the address as given.
            assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line), line
            assert line.endswith(f"listening on {overlay_ip(t)}:{port}"), line

        async def role_is(t: int, role: str) -> bool:
            return (await get(http, f"{base[t]}/status"))["role"] == role

        await wait_for(lambda: role_is(1, "leader"))
        acked = []
        for t in (1, 2, 3, 2):
            async with http.post(f"{base[t]}/increment") as r:
                assert r.status == 200, await r.text()
                body = await r.json()
                assert body["leader"] == 1
                acked.append(body["count"])
        assert acked == [1, 2, 3, 4]

        # The leader dies without a word; the chain (here, the agents) moves the lead to node 2.
        await procs[1].stop(9)
        for t in (2, 3):
            agents[t].set_leader(2)
        await wait_for(lambda: role_is(2, "leader"))
        assert (await get(http, f"{base[2]}/counter"))["count"] == 4
        async with http.post(f"{base[3]}/increment") as r:
            assert r.status == 200, await r.text()
            assert await r.json() == {"count": 5, "leader": 2}

        status = await get(http, f"{base[3]}/status")
        assert status["members"] == [1, 2, 3] and status["leader"] == 2 and status["count"] == 5
        members = await get(http, f"{base[3]}/members")
        assert [m["token_id"] for m in members] == [1, 2]
        assert (await get(http, f"{base[2]}/health"))["ok"] is True
        # Node 2 leads under the mesh's second term, the one its agent reported with the change.
        await logged(procs[2], lambda line: "leading mesh term 2 round" in line)
        # Each counter renews its health with the agent, each report holding three intervals.
        for t in tokens:
            assert {"healthy": True, "ttlSecs": 6.0} in agents[t].health_reports, agents[t].health_reports
    finally:
        await http.close()
        codes = {t: await p.stop() for t, p in procs.items()}
        for a in agents.values():
            await a.stop()
    assert codes[2] == 0 and codes[3] == 0, {t: p.log() for t, p in procs.items()}
    # Stopped, a counter tells its agent at once; killed, it cannot, and its last report lapses instead.
    for t in (2, 3):
        assert agents[t].health_reports[-1] == {"healthy": False, "reason": "the counter is stopped"}
    assert agents[1].health_reports[-1] == {"healthy": True, "ttlSecs": 6.0}


async def test_counter_cli_exits_when_the_agent_is_missing() -> None:
    port = free_port(["127.0.0.1"])
    # Nothing listens at --api: after the (short) registration wait it must say so and exit 1.
    proc = await spawn("counter", "counter/counter.py", "--listen", f"127.0.0.1:{port}",
                       "--api", f"http://127.0.0.1:{free_port(['127.0.0.1'])}", "--register-timeout", "1")
    code = await asyncio.wait_for(proc.proc.wait(), 15)
    await proc.stop()
    assert code == 1, proc.log()
    assert "could not register" in proc.log()


async def test_hello_cli_greets_every_peer() -> None:
    tokens = [1, 2, 3]
    agents = {t: await FakeAgent(t, tokens, leader=1).start() for t in tokens}
    port = free_port([overlay_ip(t) for t in tokens])
    procs: dict[int, Proc] = {}
    http = ClientSession(timeout=ClientTimeout(total=10))
    try:
        # Node 3 is never started: its greeting must fail, quickly, without spoiling the others.
        for t in (1, 2):
            procs[t] = await spawn(f"hello {t}", "hello-p2p/hello_p2p.py", "--listen", f"{overlay_ip(t)}:{port}",
                                   "--api", agents[t].url, "--peer-port", str(port))
        for p in procs.values():
            await p.wait_listening()
        info = await get(http, f"http://{overlay_ip(2)}:{port}/info")
        assert info["tokenId"] == 2 and info["overlayIp"] == overlay_ip(2) and info["instanceId"] == "inst2"
        peers = await get(http, f"http://{overlay_ip(1)}:{port}/peers")
        assert [p["token_id"] for p in peers] == [2, 3]

        hello = await get(http, f"http://{overlay_ip(1)}:{port}/hello")
        by_token = {h["tokenId"]: h for h in hello}
        assert by_token[2]["ok"] is True and by_token[2]["reply"]["tokenId"] == 2
        assert by_token[2]["address"] == overlay_ip(2) and by_token[2]["ms"] >= 0
        assert by_token[3]["ok"] is False and "error" in by_token[3]
    finally:
        await http.close()
        for p in procs.values():
            await p.stop()
        for a in agents.values():
            await a.stop()


async def test_follow_leader_cli_switches_redis() -> None:
    import shutil
    import subprocess
    import tempfile

    assert shutil.which("redis-server"), (
        "redis-server is not installed: apt-get install redis-server (scripts/bootstrap does)"
    )
    agent = await FakeAgent(1, [1, 2], leader=2).start()
    port = free_port([overlay_ip(1), overlay_ip(2)])
    # Node 2's Redis on its "overlay IP"; node 1's on loopback, where the sidecar reaches it.
    # --dir: a replica writes the RDB it receives there, even with --save "".
    servers = [subprocess.Popen(["redis-server", "--bind", ip, "--port", str(port), "--save", "", "--appendonly", "no",
                                 "--dir", tempfile.gettempdir()], stdout=subprocess.DEVNULL)
               for ip in ("127.0.0.1", overlay_ip(2))]
    proc = await spawn("follow_leader", "redis/follow_leader.py", "--redis-port", str(port), "--api", agent.url,
                       "--check-interval", "0.5", "--report-health")

    async def role() -> list[str]:
        out = await asyncio.create_subprocess_exec("redis-cli", "-p", str(port), "ROLE",
                                                   stdout=asyncio.subprocess.PIPE)
        text, _ = await out.communicate()
        return text.decode().split()

    try:
        await wait_for(lambda: _is(role(), lambda r: r[:3] == ["slave", overlay_ip(2), str(port)]))
        agent.set_leader(1)
        await wait_for(lambda: _is(role(), lambda r: r[0] == "master"))
        # Redis may take a command before the sidecar's line about it reaches us.
        await logged(proc, lambda line: "leads under term 2: REPLICAOF NO ONE" in line)
        assert any(f"REPLICAOF {overlay_ip(2)} {port}" in line for line in proc.lines), proc.log()
        # Its lease ends while the contract still names it: demoted at once, to a replica of nothing.
        agent.set_leader(1, lease=False, reason="the lease ran out")
        await wait_for(lambda: _is(role(), lambda r: r[:3] == ["slave", "127.0.0.1", "1"]), timeout=3)
        await logged(proc, lambda line: "REPLICAOF 127.0.0.1 1" in line and "the lease ran out" in line)
        # With --report-health, Redis answering PING keeps the node healthy, one report a second.
        assert {"healthy": True, "ttlSecs": 3.0} in agent.health_reports, agent.health_reports
    finally:
        assert await proc.stop() == 0, proc.log()
        await agent.stop()
        for s in servers:
            s.terminate()
            s.wait(5)


async def _is(value: Any, test: Any) -> bool:
    return bool(test(await value))


async def logged(proc: Proc, test: Any, timeout: float = 5.0) -> None:
    """Waits until a line of the app's output passes `test`; fails with its log otherwise."""
    async def seen() -> bool:
        return any(test(line) for line in proc.lines)

    try:
        await wait_for(seen, timeout)
    except AssertionError:
        raise AssertionError(f"not in the log of {proc.name}:\n{proc.log()}") from None
