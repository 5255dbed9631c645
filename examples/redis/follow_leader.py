#!/usr/bin/env python3
"""Point this node's Redis at the mesh's leader: the master on the leader's node, replicas elsewhere.

The cluster contract elects the leader and the mesh agents fail it over; this sidecar only turns each
change into one Redis command:

* this node leads         -> REPLICAOF NO ONE            (promote: keep the data, take writes)
* node N leads            -> REPLICAOF 10.0.1.N <port>   (follow it over the mesh)

It acts when the leader's token changes, and otherwise only if Redis drifted from what it was told
(Redis restarted and forgot its runtime REPLICAOF), so a healthy replica never resyncs for nothing.

    python follow_leader.py --redis-port 6379 [--api SOCKET_OR_URL] [--redis-cli redis-cli]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("follow-leader")

class RedisUnavailable(Exception):
    """Redis did not answer or refused the command; worth retrying."""


class RedisControl(Protocol):
    """What the follower needs of Redis; a target of None means "be the master"."""

    where: str

    async def replicaof(self, target: tuple[str, int] | None) -> None: ...
    async def role(self) -> tuple[str, tuple[str, int] | None]: ...
    async def close(self) -> None: ...


class RedisPy:
    """Redis through redis-py's asyncio client."""

    def __init__(self, host: str, port: int, password: str | None = None) -> None:
        import redis.asyncio as aioredis

        self.where = f"{host}:{port}"
        self._r = aioredis.Redis(host=host, port=port, password=password, decode_responses=True,
                                 socket_timeout=5, socket_connect_timeout=5)

    async def replicaof(self, target: tuple[str, int] | None) -> None:
        import redis

        args = ("NO", "ONE") if target is None else (target[0], str(target[1]))
        try:
            await self._r.execute_command("REPLICAOF", *args)
        except (redis.RedisError, OSError) as e:
            raise RedisUnavailable(f"{type(e).__name__}: {e}") from e

    async def role(self) -> tuple[str, tuple[str, int] | None]:
        import redis

        try:
            reply = await self._r.execute_command("ROLE")
        except (redis.RedisError, OSError) as e:
            raise RedisUnavailable(f"{type(e).__name__}: {e}") from e
        return parse_role(list(reply))

    async def close(self) -> None:
        await self._r.aclose()


class RedisCli:
    """Redis through the redis-cli binary, for images that ship it but not the Python package."""

    def __init__(self, binary: str, host: str, port: int, password: str | None = None) -> None:
        self.binary = binary
        self.where = f"{host}:{port}"
        self._base = [binary, "-h", host, "-p", str(port)]
        # REDISCLI_AUTH rather than -a: the password stays out of the process list.
        self._env = {**os.environ, **({"REDISCLI_AUTH": password} if password else {})}

    async def _run(self, *args: str) -> list[str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._base, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=self._env)
        except OSError as e:
            raise RedisUnavailable(f"cannot run {self.binary}: {e}") from e
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RedisUnavailable(f"{self.binary} {' '.join(args)} took over 10 s") from None
        lines = out.decode(errors="replace").splitlines()
        # redis-cli exits 0 on an error reply and prints it; a failed connection exits 1.
        if proc.returncode != 0 or (lines and lines[0].startswith(("ERR", "NOAUTH", "WRONGPASS", "LOADING"))):
            text = (err.decode(errors="replace") + " ".join(lines)).strip()
            raise RedisUnavailable(text or f"{self.binary} exited {proc.returncode}")
        return lines

    async def replicaof(self, target: tuple[str, int] | None) -> None:
        await self._run("REPLICAOF", *(("NO", "ONE") if target is None else (target[0], str(target[1]))))

    async def role(self) -> tuple[str, tuple[str, int] | None]:
        return parse_role(await self._run("ROLE"))

    async def close(self) -> None:
        pass


def parse_role(reply: list[Any]) -> tuple[str, tuple[str, int] | None]:
    """ROLE's reply: ["master", offset, [...]] or ["slave", host, port, state, offset]."""
    if not reply:
        raise RedisUnavailable("empty reply to ROLE")
    if reply[0] == "slave":
        return "replica", (str(reply[1]), int(reply[2]))
    return str(reply[0]), None


class LeaderFollower:
    """Applies the latest leader to Redis; `on_leader` is the SDK callback, `run` the worker."""

    def __init__(self, redis: Any, leader_addr: Callable[[Any], tuple[str, int]], *,
                 check_interval: float = 10.0, backoff_max: float = 10.0) -> None:
        self.redis = redis
        self.leader_addr = leader_addr
        self.check_interval = check_interval
        self.backoff_max = backoff_max
        self.applied_token: int | None = None  # the leader whose command Redis last accepted
        self._leader: Any = None
        self._wake = asyncio.Event()

    def on_leader(self, leader: Any) -> None:
        self._leader = leader
        self._wake.set()

    def target(self, leader: Any) -> tuple[str, int] | None:
        return None if leader.is_self else self.leader_addr(leader)

    async def _sleep(self, seconds: float) -> None:
        # A leader change cuts any wait short, a retry's backoff included.
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _apply(self, leader: Any) -> None:
        target = self.target(leader)
        await self.redis.replicaof(target)
        if target is None:
            log.info("node %s (this node) leads: REPLICAOF NO ONE, Redis at %s is the master",
                     leader.token_id, self.redis.where)
        else:
            log.info("node %s leads: REPLICAOF %s %d, Redis at %s replicates it",
                     leader.token_id, target[0], target[1], self.redis.where)
        self.applied_token = leader.token_id

    async def _check(self, leader: Any) -> None:
        target = self.target(leader)
        role, following = await self.redis.role()
        if target is None and role != "master":
            log.warning("Redis at %s is a %s of %s though this node leads; applying again",
                        self.redis.where, role, following)
        elif target is not None and (role != "replica" or following != target):
            log.warning("Redis at %s is %s, not a replica of %s:%d (node %s leads); applying again",
                        self.redis.where, role if following is None else f"a replica of {following}",
                        target[0], target[1], leader.token_id)
        else:
            return
        await self._apply(leader)

    async def run(self) -> None:
        delay = 0.5
        warned_no_leader = False
        while True:
            leader = self._leader
            if leader is None:
                await self._sleep(self.check_interval)
                continue
            if leader.token_id is None:
                # Nothing better to point it at: keep serving whatever role it has.
                if not warned_no_leader:
                    log.warning("the cluster has no leader; leaving Redis at %s as it is", self.redis.where)
                    warned_no_leader = True
                await self._sleep(self.check_interval)
                continue
            warned_no_leader = False
            try:
                if leader.token_id != self.applied_token:
                    await self._apply(leader)
                else:
                    await self._check(leader)
            except RedisUnavailable as e:
                log.warning("Redis at %s: %s; retrying in %.1f s", self.redis.where, e, delay)
                await self._sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = 0.5
            await self._sleep(self.check_interval)


async def monitor(sdk: Any, callback: Callable[[Any], None]) -> None:
    delay = 1.0
    while True:
        try:
            await sdk.monitor_leader(callback)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the agent not up yet, or restarting: keep trying, Redis keeps its role
            log.warning("following the mesh leader failed (%s); retrying in %.0f s", e, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)


async def amain(args: argparse.Namespace) -> int:
    from dstack_p2p import DStackP2PSDK  # here, so tests need not install it

    password = os.environ.get("REDIS_PASSWORD") or None
    try:
        sdk = DStackP2PSDK(api=args.api)
    except ValueError as e:
        log.error("%s", e)
        return 2
    redis: Any = (RedisCli(args.redis_cli, args.redis_host, args.redis_port, password) if args.redis_cli
                  else RedisPy(args.redis_host, args.redis_port, password))
    leader_port = args.leader_port or args.redis_port

    def leader_addr(leader: Any) -> tuple[str, int]:
        return leader.overlay_ip or f"10.0.1.{leader.token_id}", leader_port

    follower = LeaderFollower(redis, leader_addr, check_interval=args.check_interval)
    log.info("following the mesh leader for Redis at %s (via %s)", redis.where,
             args.redis_cli or "redis-py")
    tasks = [asyncio.create_task(follower.run()), asyncio.create_task(monitor(sdk, follower.on_leader))]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        done, _ = await asyncio.wait([*tasks, asyncio.create_task(stop.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t in tasks and t.exception():
                raise t.exception()  # type: ignore[misc]
        log.info("shutting down; Redis keeps its current role")
        return 0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.close()
        await sdk.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Make this node's Redis the master when it leads the mesh, "
                                            "else a replica of the leader's.")
    p.add_argument("--redis-port", type=int, default=6379,
                   help="the port of this node's Redis, and of the leader's (default 6379)")
    p.add_argument("--redis-host", default="127.0.0.1", help="where this node's Redis is (default 127.0.0.1)")
    p.add_argument("--leader-port", type=int, default=None,
                   help="the port the leader's Redis listens on, if not --redis-port")
    p.add_argument("--api", default=None, metavar="SOCKET_OR_URL",
                   help="the mesh agent's API: a unix socket path or http://127.0.0.1:PORT "
                        "(default: $DSTACK_MESH_API)")
    p.add_argument("--redis-cli", default=None, metavar="PATH",
                   help="talk to Redis by running this redis-cli binary instead of through redis-py")
    p.add_argument("--check-interval", type=float, default=10.0,
                   help="seconds between checks that Redis still has the role it was given (default 10)")
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
