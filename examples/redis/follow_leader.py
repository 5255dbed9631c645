#!/usr/bin/env python3
"""Point this node's Redis at the mesh's leader: the master on the leader's node, replicas elsewhere.

The cluster contract elects the leader and the mesh agents fail it over; this sidecar turns what this
node's agent says into Redis commands, demoting first so that two Redis masters never coexist:

* this node leads (is_self)      -> REPLICAOF NO ONE           (promote: keep the data, take writes), but only
                                    under a term no older than the highest this sidecar has seen
* node N leads, view current     -> REPLICAOF 10.0.1.N <port>  (follow it over the mesh)
* anything else, Redis a master  -> REPLICAOF 127.0.0.1 1      (demote at once: a replica of nothing takes
                                    no writes until a leader is known)

`is_self` holds only under the agent's lease, so "anything else" covers a lease that ran out, a stale or
unknown view, an unhealthy node, and another seat leading. While Redis is the master the sidecar also
renews the lease from the agent (GET /v1/leader) and demotes Redis when the last lease it heard of runs
out without renewal: an agent that died or a lost event stream must not leave a master behind.

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
from typing import Any, Protocol

log = logging.getLogger("follow-leader")

# Where a demoted Redis replicates from while no leader it may follow is known. Nothing listens on port 1
# of loopback, so it never syncs (it keeps its data), takes no writes (replica-read-only), and ROLE says
# "slave": unlike leaving a master as it is, this cannot make a second master, and unlike pointing it at a
# leader the view is unsure of, it cannot pull in a deposed master's writes.
PLACEHOLDER = ("127.0.0.1", 1)


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


def parse_role(reply: list[Any]) -> tuple[str, tuple[str, int] | None]:
    """ROLE's reply: ["master", offset, [...]] or ["slave", host, port, state, offset]."""
    if not reply:
        raise RedisUnavailable("empty reply to ROLE")
    if reply[0] == "slave":
        return "replica", (str(reply[1]), int(reply[2]))
    return str(reply[0]), None


class LeaderFollower:
    """Applies the latest leader to Redis; `on_leader` is the SDK callback, `run` the worker.

    `renew`, when given, reads the leader again (the SDK's `leader`): while Redis is the master the worker
    calls it within each lease, so that the lease is renewed although the event stream only speaks on
    changes. `whoami` reads this node's seat (from the SDK's `status`), so that a lapsed lease of this
    node's own seat is not taken for another seat to follow.
    """

    def __init__(self, redis: Any, leader_addr: Callable[[Any], tuple[str, int] | None], *,
                 check_interval: float = 10.0, backoff_max: float = 10.0,
                 renew: Callable[[], Awaitable[Any]] | None = None,
                 whoami: Callable[[], Awaitable[int | None]] | None = None) -> None:
        self.redis = redis
        self.leader_addr = leader_addr
        self.check_interval = check_interval
        self.backoff_max = backoff_max
        self.renew = renew
        self.whoami = whoami
        #: What Redis last accepted: MASTER, or the (host, port) it replicates; None until the first.
        self.applied: Any = None
        #: The leader whose command Redis last accepted (None after a demotion to PLACEHOLDER).
        self.applied_token: int | None = None
        #: The highest fencing term any leader event carried: Redis is promoted under no older one.
        self.highest_term: int | None = None
        #: This node's seat, once known.
        self.node_token: int | None = None
        self._leader: Any = None
        # Until when (loop time) the last is_self this sidecar heard of holds, by its lease_ms.
        self._lease_until: float | None = None
        self._wake = asyncio.Event()
        self._events = 0  # leader events so far: a renewal answered after one is older than it
        self._next_check = 0.0  # when (loop time) ROLE is read next
        self._warned: set[str] = set()

    def on_leader(self, leader: Any) -> None:
        self._events += 1
        self._take(leader, asyncio.get_running_loop().time())
        self._wake.set()

    def _take(self, leader: Any, heard_at: float) -> None:
        self._leader = leader
        term = getattr(leader, "term", None)
        if isinstance(term, int) and (self.highest_term is None or term > self.highest_term):
            self.highest_term = term
        lease_ms = getattr(leader, "lease_ms", None)
        if leader.is_self and isinstance(lease_ms, int):
            self._lease_until = heard_at + lease_ms / 1000
        else:
            self._lease_until = None

    def _not_master_because(self, leader: Any, now: float) -> str | None:
        """Why this node's Redis may not be the master now; None when it should be."""
        if not leader.is_self:
            return "this node does not lead"
        if self._lease_until is not None and now >= self._lease_until:
            return ("the agent's last word that this node leads is older than its lease, and no renewal "
                    "came")
        term = getattr(leader, "term", None)
        if term is None:
            why = ("the agent says this node leads but gives no term (an agent older than this sidecar?): "
                   "without a term a promotion cannot be fenced")
            self._warn_once("no-term", f"{why}; Redis stays a replica")
            return why
        if self.highest_term is not None and term < self.highest_term:
            why = f"the agent says this node leads under term {term}, older than term {self.highest_term}"
            self._warn_once(f"old-term-{term}", f"{why} already seen: not promoting")
            return why
        return None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)

    def _is_this_node(self, leader: Any) -> bool:
        # The agent gives a reason exactly when this node is the seat named leader but does not lead.
        if leader.token_id is not None and leader.token_id == self.node_token:
            return True
        return getattr(leader, "reason", None) is not None

    def decide(self, leader: Any, now: float) -> Any:
        """MASTER, a (host, port) to replicate, or ANY_REPLICA."""
        if self._not_master_because(leader, now) is None:
            return MASTER
        if (leader.token_id is not None and getattr(leader, "state", "current") == "current"
                and not leader.is_self and not self._is_this_node(leader)):
            addr = self.leader_addr(leader)
            if addr is not None:
                return addr
        return ANY_REPLICA

    async def _sleep(self, seconds: float) -> None:
        # A leader change cuts any wait short, a retry's backoff included.
        try:
            await within(max(seconds, 0.0), self._wake.wait())
        except TimeoutError:
            pass
        self._wake.clear()

    def _why_not(self, leader: Any) -> str:
        if isinstance(leader, _NoLeaderYet):
            return "the agent has not said who leads yet"
        if leader.token_id is None:
            return "the cluster has no leader"
        if leader.is_self:
            return self._not_master_because(leader, asyncio.get_running_loop().time()) or "?"
        if self._is_this_node(leader):
            return f"this node is the seat named leader but does not lead ({leader.reason or 'no reason'})"
        if getattr(leader, "state", "current") == "current":
            return (f"node {leader.token_id} leads, but the agent names no overlay address for it (it holds no "
                    f"record of that seat it believes: see `meshctl status`)")
        return f"node {leader.token_id} leads, but this node's view of it is {getattr(leader, 'state', '?')}"

    async def _apply(self, leader: Any, want: Any) -> None:
        if want is MASTER:
            await self.redis.replicaof(None)
            log.info("node %s (this node) leads under term %s: REPLICAOF NO ONE, Redis at %s is the master",
                     leader.token_id, leader.term, self.redis.where)
            self.applied, self.applied_token = MASTER, leader.token_id
        elif want is ANY_REPLICA:
            await self.redis.replicaof(PLACEHOLDER)
            log.warning("%s: REPLICAOF %s %d, Redis at %s takes no writes until a leader is known",
                        self._why_not(leader), *PLACEHOLDER, self.redis.where)
            self.applied, self.applied_token = PLACEHOLDER, None
        else:
            await self.redis.replicaof(want)
            log.info("node %s leads (term %s): REPLICAOF %s %d, Redis at %s replicates it",
                     leader.token_id, getattr(leader, "term", None), want[0], want[1], self.redis.where)
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
                        self.redis.where, role, self._why_not(leader))
        else:
            if role == "replica" and following == want:
                return
            log.warning("Redis at %s is %s, not a replica of %s:%d (node %s leads); applying again",
                        self.redis.where, role if following is None else f"a replica of {following}",
                        want[0], want[1], leader.token_id)
        await self._apply(leader, want)

    async def _renew(self) -> None:
        """Reads the leader again while Redis is the master, so that its lease is known to hold."""
        if self.renew is None:
            return
        loop = asyncio.get_running_loop()
        # The lease counts from before the question: the agent's answer is at least that old.
        asked_at, events = loop.time(), self._events
        try:
            leader = await within(max(self._lease_left(asked_at), 0.5), self.renew())
        except Exception as e:
            log.warning("could not renew this node's lease with the agent (%s); Redis stays the master "
                        "for what is left of the lease, %.1f s", e, max(self._lease_left(asked_at), 0.0))
            return
        if self._events == events:
            # Not after an event that came meanwhile: the answer may predate it (a lease that just ended).
            self._take(leader, asked_at)

    def _lease_left(self, now: float) -> float:
        return float("inf") if self._lease_until is None else self._lease_until - now

    async def _learn_seat(self) -> None:
        if self.node_token is not None or self.whoami is None:
            return
        try:
            self.node_token = await self.whoami()
        except Exception as e:
            log.debug("could not read this node's seat from the agent: %s", e)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            # Before the agent has said anything, a Redis left a master from before is demoted all the same.
            leader = self._leader or _NoLeaderYet()
            if self.applied is MASTER or leader.is_self:
                await self._renew()
                leader = self._leader or leader
            if leader.token_id is not None and not leader.is_self:
                await self._learn_seat()
            now = loop.time()
            want = self.decide(leader, now)
            check = now >= self._next_check
            try:
                await self._converge(leader, want, check=check)
            except RedisUnavailable as e:
                log.warning("Redis at %s: %s; retrying in %.1f s", self.redis.where, e, delay)
                await self._sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = 0.5
            if check:
                self._next_check = loop.time() + self.check_interval
            wait = self._next_check - loop.time()
            if self.applied is MASTER:
                # Renew at a third of what is left, so that two answers can be lost before the lease ends.
                wait = min(wait, max(self._lease_left(loop.time()) / 3, 0.05))
            elif leader.is_self:
                # Said to lead, but not the master: its lease ran out unrenewed, say while the agent
                # restarted, whose stream then repeats nothing already said. Ask again soon.
                wait = min(wait, 1.0)
            await self._sleep(wait)


class _NoLeaderYet:
    """What the worker goes by before the agent has said anything."""

    token_id = None
    is_self = False
    term = None
    state = "unknown"
    reason = None


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


async def monitor(sdk: Any, callback: Callable[[Any], None]) -> None:
    delay = 1.0
    while True:
        try:
            await sdk.monitor_leader(callback)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the agent not up yet, or restarting: keep trying; Redis is demoted meanwhile
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

    def leader_addr(leader: Any) -> tuple[str, int] | None:
        return overlay_addr(leader, leader_port)

    async def whoami() -> int | None:
        return (await sdk.status()).node.token_id

    follower = LeaderFollower(redis, leader_addr, check_interval=args.check_interval, renew=sdk.leader,
                              whoami=whoami)
    log.info("following the mesh leader for Redis at %s (via %s)%s", redis.where,
             args.redis_cli or "redis-py", ", reporting its health" if args.report_health else "")
    tasks = [asyncio.create_task(follower.run()), asyncio.create_task(monitor(sdk, follower.on_leader))]
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
