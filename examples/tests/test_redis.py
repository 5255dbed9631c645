"""follow_leader against real redis-servers on loopback ports (they fail, saying so, without redis-server).

The leader's address is mapped to 127.0.0.1 and the leader's Redis port, so replicas follow a real
master without leaving the machine.
"""
from __future__ import annotations

import asyncio
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
from fakes import FakeLeader  # noqa: E402
from follow_leader import LeaderFollower, RedisCli, RedisPy  # noqa: E402

pytestmark = pytest.mark.asyncio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            # --dir: a replica writes the RDB it receives there, even with --save "".
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--repl-diskless-sync-delay", "0", "--loglevel", "warning", "--dir", tempfile.gettempdir()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None

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


def leader(token: int, me: int) -> FakeLeader:
    return FakeLeader(token, f"instance-{token}", f"10.0.1.{token}", f"10.0.1.{token}", token == me)


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
    tasks = [asyncio.create_task(f.run()) for f in followers.values()]
    try:
        for t, f in followers.items():
            f.on_leader(leader(1, t))

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

            # Failover: node 2 leads now. Its Redis keeps the data and takes writes; node 1 follows it.
            for t, f in followers.items():
                f.on_leader(leader(2, t))
            # Both, together: for a moment node 1 may follow node 2 while node 2 still follows node 1.
            async def failed_over() -> bool:
                return await replicates(1, 2) and (await role(redises[2]))[0] == "master"

            await eventually(failed_over)
            await c2.set("k", "from 2")
            await eventually(lambda: _equals(c1.get("k"), "from 2"))
            assert followers[1].applied_token == 2 and followers[2].applied_token == 2
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
    task = asyncio.create_task(follower.run())
    try:
        follower.on_leader(leader(1, 2))
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
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await follower.redis.close()
        master.stop()
        late.stop()
