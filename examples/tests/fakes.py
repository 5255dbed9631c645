"""A stand-in for dstack_p2p.DStackP2PSDK: one node's view of a cluster whose leader the test sets.

Each node gets its own FakeSDK, so a test can give one node a stale view of the leader, as a node
cut off from the chain would have, or take its lease away while the contract still names it.
"""
from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from types import SimpleNamespace
from collections.abc import Awaitable, Callable
from typing import Any

import pytest


@dataclass
class FakePeer:
    token_id: int
    instance_id: str
    overlay_ip: str
    address: str | None
    healthy: bool = True
    connection: str = "direct"
    leader: bool = False


@dataclass
class FakeLeader:
    token_id: int | None
    instance_id: str | None
    overlay_ip: str | None
    address: str | None
    is_self: bool
    reachable: bool | None = True
    term: int | None = 1
    state: str = "current"
    age_ms: int | None = 100
    lease_ms: int | None = None
    healthy: bool = True
    reason: str | None = None
    refused_seat: int | None = None
    handing_off_to: int | None = None
    term_reason: str | None = None


class AgentViews:
    """One node's agent as `dstack_p2p.follow_leader` reads it, saying what the test says: `say(view)` is a
    leader event; GET /v1/leader answers `renew()` when given, else the last view said; the status names
    seat `seat` (and fails without one, as an agent that cannot be asked)."""

    def __init__(self, seat: int | None = None, renew: Callable[[], Awaitable[Any]] | None = None) -> None:
        self.seat = seat
        self.renew = renew
        self.said: list[Any] = []
        self._listeners: list[Callable[[Any], Any]] = []

    def say(self, view: Any) -> None:
        self.said.append(view)
        for listener in list(self._listeners):
            listener(view)

    async def monitor_leader(self, callback: Callable[[Any], Any]) -> None:
        self._listeners.append(callback)
        try:
            # As the agent does: the current view first, then the changes.
            if self.said:
                callback(self.said[-1])
            await asyncio.Event().wait()
        finally:
            self._listeners.remove(callback)

    async def leader(self) -> Any:
        if self.renew is not None:
            return await self.renew()
        if not self.said:
            raise ConnectionRefusedError("the agent has said nothing yet")
        return self.said[-1]

    async def status(self) -> Any:
        if self.seat is None:
            raise ConnectionRefusedError("no status here")
        return SimpleNamespace(node=SimpleNamespace(token_id=self.seat))


def following(follower: Any, views: AgentViews) -> asyncio.Task[Any]:
    """`dstack_p2p.follow_leader` calling `follower`'s callbacks as `views` says, as the sidecar runs it."""
    from dstack_p2p import follow_leader

    return asyncio.create_task(follow_leader(follower.on_promote, follower.on_demote, on_follow=follower.on_follow,
                                             sdk=views))


async def assert_stops_when_cancelled_as_woken(follower: Any, event: Any) -> None:
    """A follower asleep, woken by a decision as it is cancelled, stops. asyncio.wait_for in Python 3.11
    returned instead of raising then: the follower went on, and a sidecar told to stop never did."""
    asleep = asyncio.create_task(follower._sleep(30))
    await asyncio.sleep(0.05)
    follower.on_demote(event)
    asleep.cancel()
    try:
        await asyncio.wait_for(asyncio.shield(asleep), 2)
    except asyncio.CancelledError:
        return
    raise AssertionError("the follower went on after it was cancelled")


class EndedProcess:
    """A program that has exited, its pipes closed, while its output is still being read: asyncio's kill()
    raises ProcessLookupError then, as it did when a follower was cancelled as `pg_ctl start` returned."""

    returncode = 0

    async def communicate(self) -> tuple[bytes, bytes]:
        await asyncio.Event().wait()
        raise AssertionError("never set")

    def kill(self) -> None:
        raise ProcessLookupError()

    async def wait(self) -> int:
        return 0


def programs_end_as_they_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every program the recipe runs from now on is an [`EndedProcess`]."""
    async def spawn(*args: Any, **kw: Any) -> EndedProcess:
        return EndedProcess()

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn)


async def assert_cancellation_comes_out(run: Callable[[], Awaitable[Any]]) -> None:
    """`run()`, cancelled while its program ends, raises the cancellation, not the kill's ProcessLookupError
    (an OSError, which a follower's loop takes for a failed program and goes on)."""
    task = asyncio.ensure_future(run())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _call(cb: Callable[..., Any], *args: Any) -> None:
    result = cb(*args)
    if inspect.isawaitable(result):
        await result


class FakeSDK:
    def __init__(self, token: int, tokens: list[int], leader: int | None,
                 address: Callable[[int], str | None] | None = None, term: int | None = None) -> None:
        self.token = token
        self.tokens = list(tokens)
        self.leader_token = leader
        # As the contract counts: one leader change (the election) made the first leader.
        self.term: int | None = term if term is not None else (1 if leader is not None else 0)
        # What the agent says beyond who leads: whether this node holds the lease, and so on.
        self.lease = True
        self.state = "current"
        self.healthy = True
        self.reason: str | None = None
        #: What the node reported with set_healthy, in order: (healthy, reason, ttl).
        self.health_reports: list[tuple[bool, str | None, float | None]] = []
        # The address the SDK reports for a peer; overlay IPs by default, as the real agent does
        # while the tunnel is up (the tests never connect to them: they map tokens to loopback).
        self.address = address or (lambda t: f"10.0.1.{t}")
        self._watchers: list[tuple[Callable[..., Any], Callable[..., Any] | None, bool]] = []
        self._leader_watchers: list[Callable[..., Any]] = []

    def _peer(self, t: int) -> FakePeer:
        return FakePeer(t, f"instance-{t}", f"10.0.1.{t}", self.address(t), leader=t == self.leader_token)

    def _leader(self) -> FakeLeader:
        t = self.leader_token
        extra = {"term": self.term, "state": self.state, "healthy": self.healthy, "reason": self.reason}
        if t is None:
            return FakeLeader(None, None, None, None, False, None, **extra)
        is_self = t == self.token and self.lease
        return FakeLeader(t, f"instance-{t}", f"10.0.1.{t}", self.address(t), is_self,
                          None if t == self.token else True, lease_ms=2000 if is_self else None, **extra)

    async def register(self, timeout: float = 120.0) -> bool:
        return True

    async def status(self) -> Any:
        return SimpleNamespace(node=SimpleNamespace(token_id=self.token, overlay_ip=f"10.0.1.{self.token}",
                                                    instance_id=f"instance-{self.token}"))

    async def peers(self) -> list[FakePeer]:
        return [self._peer(t) for t in self.tokens if t != self.token]

    async def get_peers(self) -> list[str]:
        return [p.address for p in await self.peers() if p.address]

    async def leader(self) -> FakeLeader:
        return self._leader()

    async def monitor_peers(self, callback: Callable[..., Any], *, on_leader: Callable[..., Any] | None = None,
                            detailed: bool = False) -> None:
        entry = (callback, on_leader, detailed)
        self._watchers.append(entry)
        try:
            peers = await self.peers()
            await _call(callback, peers if detailed else [p.address for p in peers])
            if on_leader:
                await _call(on_leader, self._leader())
            await asyncio.Event().wait()
        finally:
            self._watchers.remove(entry)

    async def monitor_leader(self, callback: Callable[..., Any]) -> None:
        self._leader_watchers.append(callback)
        try:
            await _call(callback, self._leader())
            await asyncio.Event().wait()
        finally:
            self._leader_watchers.remove(callback)

    async def set_healthy(self, healthy: bool, reason: str | None = None, ttl: float | None = None) -> Any:
        self.health_reports.append((healthy, reason, ttl))
        return SimpleNamespace(healthy=healthy, reasons=[] if healthy else [reason], app=None, check=None)

    async def set_leader(self, token: int | None, *, term: int | None = None, lease: bool = True,
                         state: str = "current", healthy: bool = True, reason: str | None = None) -> None:
        """What this node's agent says now. Without `term`, a new leader bumps it, as the contract does."""
        if term is None:
            term = (self.term or 0) + (token != self.leader_token)
        self.leader_token, self.term = token, term
        self.lease, self.state, self.healthy, self.reason = lease, state, healthy, reason
        await self._notify()

    async def _notify(self) -> None:
        for _, on_leader, _ in list(self._watchers):
            if on_leader:
                await _call(on_leader, self._leader())
        for cb in list(self._leader_watchers):
            await _call(cb, self._leader())

    async def set_members(self, tokens: list[int]) -> None:
        self.tokens = list(tokens)
        peers = await self.peers()
        for callback, _, detailed in list(self._watchers):
            await _call(callback, peers if detailed else [p.address for p in peers])

    async def aclose(self) -> None:
        pass


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
