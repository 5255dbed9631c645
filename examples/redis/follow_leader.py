#!/usr/bin/env python3
"""Point this node's Redis at the mesh's leader: the master on the leader's node, replicas elsewhere.

The cluster contract elects the leader and the mesh agents fail it over; this sidecar turns what the SDK's
`dstack_p2p.follow_leader` makes of this node's agent into Redis commands, demoting first so that two Redis
masters never coexist:

* promoted (this node leads)     -> REPLICAOF NO ONE           (keep the data, take writes); the SDK promotes
                                    only under a term no older than the highest it has seen
* follow node N (view current)   -> REPLICAOF 10.0.1.N <port>  (replicate it over the mesh)
* demoted                        -> REPLICAOF 127.0.0.1 1      (at once: a replica of nothing takes no
                                    writes until a leader is known)
* demoted by a hand-off          -> CLIENT PAUSE WRITE, then REPLICAOF 127.0.0.1 1 once the master has a
                                    replica and every replica, syncing ones included, has acknowledged the
                                    master's whole stream (at most HANDOFF_FLUSH seconds):
                                    the successor promotes only after the hand-off's block, so it holds every
                                    write the old master took. A clean switchover, not a failover's loss of
                                    the writes a replica had not received yet.

`is_self` holds only under the agent's lease, so a demotion comes with a lease that ran out, a stale or
unknown view, an unhealthy node, and another seat leading. While this node leads the SDK also renews the
lease from the agent (GET /v1/leader) and demotes it when the last lease it heard of runs out without
renewal: an agent that died or a lost event stream must not leave a master behind.

Every --check-interval it reads ROLE and applies again if Redis drifted (Redis restarted and forgot its
runtime REPLICAOF, or someone changed it), and demotes a master that should not be one.

    python follow_leader.py --redis-port 6379 [--api SOCKET_OR_URL] [--redis-cli redis-cli] [--report-health]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from dstack_p2p import Backoff, DStackP2PSDK, follow_leader, why_not_leading

log = logging.getLogger("follow-leader")

# Where a demoted Redis replicates from while no leader it may follow is known. Nothing listens on port 1
# of loopback, so it never syncs (it keeps its data), takes no writes (replica-read-only), and ROLE says
# "slave": unlike leaving a master as it is, this cannot make a second master, and unlike pointing it at a
# leader the view is unsure of, it cannot pull in a deposed master's writes.
PLACEHOLDER = ("127.0.0.1", 1)

#: The longest a master handing off waits, writes paused, for its replicas to acknowledge its whole stream.
HANDOFF_FLUSH = 2.0


async def within(seconds: float, aw: Awaitable[Any]) -> Any:
    """`aw`, or TimeoutError after `seconds`. Not asyncio.wait_for: before Python 3.12 (Debian's is 3.11) it can
    swallow a cancellation that comes just as `aw` completes, and a follower that is cancelled must stop."""
    async with asyncio.timeout(seconds):
        return await aw


def kill(proc: asyncio.subprocess.Process) -> None:
    """Kills `proc` unless it has ended. asyncio's kill() raises ProcessLookupError once the process has exited
    and its pipes have closed, which can come while its output is still being read: raised in an
    `except CancelledError`, it would replace the cancellation (the PostgreSQL recipe's follower, cancelled as
    `pg_ctl start` returned, went on running)."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


class _Master:
    """The decision "be the master" (REPLICAOF NO ONE)."""

    def __repr__(self) -> str:
        return "MASTER"


class _AnyReplica:
    """The decision "be a replica of something": keep the replica's master if it is one, else PLACEHOLDER."""

    def __repr__(self) -> str:
        return "ANY_REPLICA"


MASTER = _Master()
ANY_REPLICA = _AnyReplica()


def overlay_addr(leader: Any, port: int) -> tuple[str, int] | None:
    """Where the leader's Redis listens: its overlay address as the agent gives it, or None without one. Not
    one made up from the seat number: that holds only for the default prefix, and with no record of the
    leader's node that the agent believes there is no tunnel to it anyway."""
    return (leader.overlay_ip, port) if leader.overlay_ip else None


class RedisUnavailable(Exception):
    """Redis did not answer or refused the command; worth retrying."""


class RedisControl(Protocol):
    """What the follower needs of Redis; a target of None means "be the master"."""

    where: str

    async def replicaof(self, target: tuple[str, int] | None) -> None: ...
    async def role(self) -> tuple[str, tuple[str, int] | None]: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...
    async def flush_to_replicas(self, timeout: float) -> Flushed: ...
    async def unpause(self) -> None: ...


async def flush(run: Callable[..., Awaitable[list[Any]]], timeout: float) -> Flushed:
    """Pauses writes (for as long as the hand-off may take) and waits, at most `timeout`, until the master has
    a replica and every replica it has is online and has acknowledged its offset. `run` sends one command
    and returns its reply as a list.

    ROLE lists only the online replicas: one still in its first sync (a replica that just restarted, or was
    just pointed here) is missing from it, and becoming a replica now would cut it off without the writes
    it is being sent. INFO's count holds every replica, whatever its state."""
    await run("CLIENT", "PAUSE", str(int((timeout + 1) * 1000)), "WRITE")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        offset, acked = master_offsets(await run("ROLE"))
        flushed = Flushed(offset, acked, connected_replicas(await run("INFO", "replication")))
        if flushed.complete() or loop.time() >= deadline:
            return flushed
        await asyncio.sleep(0.02)


@dataclass(frozen=True)
class Flushed:
    """Where a hand-off's flush ended: the master's offset, the online replicas' acknowledged offsets, and
    how many replicas it has in all."""
    offset: int
    acked: list[int]
    connected: int

    def complete(self) -> bool:
        return (self.connected > 0 and len(self.acked) == self.connected
                and all(a >= self.offset for a in self.acked))


def master_offsets(reply: list[Any]) -> tuple[int, list[int]]:
    """A master's ROLE: its offset and each online replica's acknowledged one. redis-py nests the replicas
    (["master", 9, [["h", "p", "9"], ...]]); redis-cli prints them flat ("master", "9", "h", "p", "9", ...)."""
    if not reply or reply[0] != "master":
        raise RedisUnavailable(f"ROLE says {reply[:1]}, not master, while handing off")
    rest = reply[2:]
    if rest and isinstance(rest[0], list):
        rest = [field for replica in rest[0] for field in replica]
    return int(reply[1]), [int(rest[i + 2]) for i in range(0, len(rest) - 2, 3)]


def connected_replicas(reply: list[Any]) -> int:
    """INFO replication's `connected_slaves`: every replica, syncing or online. redis-py parses INFO into a
    dict; redis-cli prints its lines."""
    if reply and isinstance(reply[0], dict):
        fields = {k: str(v) for k, v in reply[0].items()}
    else:
        fields = dict(line.partition(":")[::2] for line in reply)
    if "connected_slaves" not in fields:
        raise RedisUnavailable("INFO replication has no connected_slaves line while handing off")
    return int(fields["connected_slaves"])


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

    async def ping(self) -> None:
        import redis

        try:
            await self._r.ping()
        except (redis.RedisError, OSError) as e:
            raise RedisUnavailable(f"{type(e).__name__}: {e}") from e

    async def close(self) -> None:
        await self._r.aclose()

    async def flush_to_replicas(self, timeout: float) -> Flushed:
        import redis

        async def run(*args: str) -> list[Any]:
            try:
                reply = await self._r.execute_command(*args)
            except (redis.RedisError, OSError) as e:
                raise RedisUnavailable(f"{type(e).__name__}: {e}") from e
            return list(reply) if isinstance(reply, list) else [reply]

        return await flush(run, timeout)

    async def unpause(self) -> None:
        import redis

        try:
            await self._r.execute_command("CLIENT", "UNPAUSE")
        except (redis.RedisError, OSError) as e:
            raise RedisUnavailable(f"{type(e).__name__}: {e}") from e


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
            out, err = await within(10, proc.communicate())
        except TimeoutError:
            kill(proc)
            await proc.wait()
            raise RedisUnavailable(f"{self.binary} {' '.join(args)} took over 10 s") from None
        except asyncio.CancelledError:
            # A caller's own timeout (the health PING's): no redis-cli left behind.
            kill(proc)
            raise
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

    async def ping(self) -> None:
        reply = await self._run("PING")
        if reply != ["PONG"]:
            raise RedisUnavailable(f"PING answered {' '.join(reply) or 'nothing'}")

    async def close(self) -> None:
        pass

    async def flush_to_replicas(self, timeout: float) -> Flushed:
        return await flush(self._run, timeout)

    async def unpause(self) -> None:
        await self._run("CLIENT", "UNPAUSE")


def parse_role(reply: list[Any]) -> tuple[str, tuple[str, int] | None]:
    """ROLE's reply: ["master", offset, [...]] or ["slave", host, port, state, offset]."""
    if not reply:
        raise RedisUnavailable("empty reply to ROLE")
    if reply[0] == "slave":
        return "replica", (str(reply[1]), int(reply[2]))
    return str(reply[0]), None


class LeaderFollower:
    """Applies what `dstack_p2p.follow_leader` says to Redis: `on_promote`, `on_demote` and `on_follow` are its
    callbacks (they only note what Redis should be), `run` the worker that makes Redis so and keeps it so.

    The helper decides: it promotes under a term no older than any seen, demotes when the lease ends (renewing
    it while this node leads, and standing down when the agent stops answering), and names the leader to
    follow once this node's view of it is current. A replica whose view turns unsure hears nothing and stays
    the replica it is: it takes no writes either way.
    """

    def __init__(self, redis: Any, leader_addr: Callable[[Any], tuple[str, int] | None], *,
                 check_interval: float = 10.0, backoff_max: float = 10.0) -> None:
        self.redis = redis
        self.leader_addr = leader_addr
        self.check_interval = check_interval
        self.backoff_max = backoff_max
        #: What Redis last accepted: MASTER, or the (host, port) it replicates; None until the first.
        self.applied: Any = None
        #: The leader whose command Redis last accepted (None after a demotion to PLACEHOLDER).
        self.applied_token: int | None = None
        #: The term Redis was last made the master under.
        self.term: int | None = None
        # What Redis should be (MASTER, a (host, port) to replicate, or ANY_REPLICA), the view that said so,
        # and why it is not the master, for the log. Before the agent has said anything, a Redis left a master
        # from before is demoted all the same.
        self._want: Any = ANY_REPLICA
        self._leader: Any = None
        self._why = "the agent has not said who leads yet"
        self._wake = asyncio.Event()
        self._next_check = 0.0  # when (loop time) ROLE is read next

    def on_promote(self, leader: Any) -> None:
        self._set(leader, MASTER, "")

    def on_demote(self, leader: Any) -> None:
        self._set(leader, ANY_REPLICA, why_not_leading(leader))

    def on_follow(self, leader: Any) -> None:
        addr = self.leader_addr(leader)
        if addr is not None:
            self._set(leader, addr, "")
        else:
            self._set(leader, ANY_REPLICA, f"node {leader.token_id} leads, but the agent names no overlay address "
                                           f"for it (it holds no record of that seat it believes: see `meshctl "
                                           f"status`)")

    def _set(self, leader: Any, want: Any, why: str) -> None:
        self._leader, self._want, self._why = leader, want, why
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        # A new decision cuts any wait short, a retry's backoff included.
        try:
            await within(max(seconds, 0.0), self._wake.wait())
        except TimeoutError:
            pass
        self._wake.clear()

    async def _apply(self, leader: Any, want: Any) -> None:
        if want is MASTER:
            await self.redis.replicaof(None)
            log.info("node %s (this node) leads under term %s: REPLICAOF NO ONE, Redis at %s is the master",
                     leader.token_id, leader.term, self.redis.where)
            self.applied, self.applied_token, self.term = MASTER, leader.token_id, leader.term
        elif want is ANY_REPLICA:
            successor = getattr(leader, "handing_off_to", None)
            paused = self.applied is MASTER and successor is not None
            if paused:
                f = await self.redis.flush_to_replicas(HANDOFF_FLUSH)
                log.log(logging.INFO if f.complete() else logging.WARNING,
                        "handing off to node %s: writes paused at offset %d; %d replica(s), the online ones "
                        "acknowledged %s%s", successor, f.offset, f.connected, f.acked,
                        "" if f.complete() else f" (not all within {HANDOFF_FLUSH} s: the successor may lack writes)")
            await self.redis.replicaof(PLACEHOLDER)
            if paused:
                # A replica now: writes are refused (READONLY) rather than held until the pause ends.
                await self.redis.unpause()
            log.warning("%s: REPLICAOF %s %d, Redis at %s takes no writes until a leader is known",
                        self._why, *PLACEHOLDER, self.redis.where)
            self.applied, self.applied_token = PLACEHOLDER, None
        else:
            await self.redis.replicaof(want)
            log.info("node %s leads (term %s): REPLICAOF %s %d, Redis at %s replicates it",
                     leader.token_id, leader.term, want[0], want[1], self.redis.where)
            self.applied, self.applied_token = want, leader.token_id

    async def _converge(self, leader: Any, want: Any, *, check: bool) -> None:
        """One command if Redis was told something else; else, with `check`, ROLE, and one command if it
        drifted."""
        if want is ANY_REPLICA:
            if self.applied is MASTER:
                # Demote first, without a round trip to ask: it is the master, or may be.
                await self._apply(leader, want)
                return
            if self.applied is None:
                # Not told anything yet: a replica (the sidecar restarted) keeps its master and its data.
                check = True
        elif want != self.applied:
            await self._apply(leader, want)
            return
        if not check:
            return
        role, following = await self.redis.role()
        if want is MASTER:
            if role == "master":
                return
            log.warning("Redis at %s is a %s of %s though this node leads; applying again",
                        self.redis.where, role, following)
        elif want is ANY_REPLICA:
            if role == "replica":
                if self.applied is None:
                    self.applied = following
                return
            log.warning("Redis at %s is a %s though this node does not lead (%s); demoting it",
                        self.redis.where, role, self._why)
        else:
            if role == "replica" and following == want:
                return
            log.warning("Redis at %s is %s, not a replica of %s:%d (node %s leads); applying again",
                        self.redis.where, role if following is None else f"a replica of {following}",
                        want[0], want[1], leader.token_id)
        await self._apply(leader, want)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(0.5, self.backoff_max)
        while True:
            # Cleared before reading what to do: a decision made while Redis is at it is seen next round.
            self._wake.clear()
            check = loop.time() >= self._next_check
            try:
                await self._converge(self._leader, self._want, check=check)
            except RedisUnavailable as e:
                delay = backoff.next()
                log.warning("Redis at %s: %s; retrying in %.1f s", self.redis.where, e, delay)
                await self._sleep(delay)
                continue
            backoff.reset()
            if check:
                self._next_check = loop.time() + self.check_interval
            await self._sleep(self._next_check - loop.time())


class HealthReporter:
    """Reports this node's health to the agent from Redis's: PING every `interval` seconds; unhealthy after
    `failures` failed PINGs in a row, healthy again after one that succeeds.

    Every report holds 3 intervals (ttl), so a sidecar that died or hangs makes its node unhealthy too: a
    node whose Redis nobody manages should not lead.
    """

    def __init__(self, redis: Any, sdk: Any, *, interval: float = 1.0, failures: int = 2) -> None:
        self.redis = redis
        self.sdk = sdk
        self.interval = interval
        self.failures = failures
        self.failed = 0
        self.healthy: bool | None = None  # what the agent was last told
        self._agent_failing = False

    async def check(self) -> tuple[bool, str | None]:
        """One PING: whether this node is healthy now, and why not."""
        try:
            # Bounded by the interval: a Redis that hangs is as unfit to lead as one that is down.
            await within(self.interval, self.redis.ping())
        except (RedisUnavailable, TimeoutError) as e:
            self.failed += 1
            why = str(e) or f"no answer within {self.interval:g} s"
            if self.failed < self.failures:
                log.info("Redis at %s did not answer PING (%s); unhealthy after %d in a row",
                         self.redis.where, why, self.failures)
                return True, None
            # One line of printable text, at most 200 characters: what the agent takes.
            text = f"Redis at {self.redis.where} failed {self.failed} PINGs in a row: {why}"
            reason = " ".join("".join(c if c.isprintable() else " " for c in text).split())
            return False, reason[:200]
        self.failed = 0
        return True, None

    async def report_once(self) -> bool:
        """Checks and reports; False when the agent refuses reports for good (then stop)."""
        healthy, reason = await self.check()
        try:
            await self.sdk.set_healthy(healthy, reason, ttl=3 * self.interval)
        except Exception as e:
            status = getattr(e, "status", None)
            if isinstance(status, int) and 400 <= status < 500:
                log.error("the mesh agent refuses health reports (%s); --report-health does nothing here", e)
                return False
            if not self._agent_failing:
                log.warning("could not report this node's health to the mesh agent (%s); the last report "
                            "lapses %g s after it was sent, which makes this node unhealthy", e, 3 * self.interval)
            self._agent_failing = True
            return True
        if self._agent_failing:
            log.info("reporting this node's health to the mesh agent again")
            self._agent_failing = False
        if healthy != self.healthy:
            if healthy:
                log.info("reported this node healthy to the mesh agent: Redis at %s answers", self.redis.where)
            else:
                log.warning("reported this node unhealthy to the mesh agent, so it does not lead: %s", reason)
            self.healthy = healthy
        return True

    async def run(self) -> None:
        while await self.report_once():
            await asyncio.sleep(self.interval)


async def amain(args: argparse.Namespace) -> int:
    password = os.environ.get("REDIS_PASSWORD") or None
    try:
        sdk = DStackP2PSDK(api=args.api)
    except ValueError as e:
        log.error("%s", e)
        return 2
    redis: Any = (RedisCli(args.redis_cli, args.redis_host, args.redis_port, password) if args.redis_cli
                  else RedisPy(args.redis_host, args.redis_port, password))
    leader_port = args.leader_port or args.redis_port

    def leader_addr(leader: Any) -> tuple[str, int] | None:
        return overlay_addr(leader, leader_port)

    follower = LeaderFollower(redis, leader_addr, check_interval=args.check_interval)
    log.info("following the mesh leader for Redis at %s (via %s)%s", redis.where,
             args.redis_cli or "redis-py", ", reporting its health" if args.report_health else "")
    tasks = [asyncio.create_task(follower.run()),
             asyncio.create_task(follow_leader(follower.on_promote, follower.on_demote,
                                               on_follow=follower.on_follow, sdk=sdk))]
    if args.report_health:
        tasks.append(asyncio.create_task(HealthReporter(redis, sdk).run()))
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
        if not stop.is_set():
            # The health reporter gave up (the agent takes no reports); the rest goes on.
            await stop.wait()
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
    p.add_argument("--report-health", action="store_true",
                   help="PING Redis every second and report this node unhealthy to the mesh agent after 2 "
                        "failures (healthy after a success; each report holds 3 s), so that a node whose "
                        "Redis is down stops leading. Off by default: an unhealthy node also casts no vote")
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
