"""A stand-in for dstack_p2p.DStackP2PSDK: one node's view of a cluster whose leader the test sets.

Each node gets its own FakeSDK, so a test can give one node a stale view of the leader, as a node
cut off from the chain would have.
"""
from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from types import SimpleNamespace
from collections.abc import Callable
from typing import Any


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


async def _call(cb: Callable[..., Any], *args: Any) -> None:
    result = cb(*args)
    if inspect.isawaitable(result):
        await result


class FakeSDK:
    def __init__(self, token: int, tokens: list[int], leader: int | None,
                 address: Callable[[int], str | None] | None = None) -> None:
        self.token = token
        self.tokens = list(tokens)
        self.leader_token = leader
        # The address the SDK reports for a peer; overlay IPs by default, as the real agent does
        # while the tunnel is up (the tests never connect to them: they map tokens to loopback).
        self.address = address or (lambda t: f"10.0.1.{t}")
        self._watchers: list[tuple[Callable[..., Any], Callable[..., Any] | None, bool]] = []
        self._leader_watchers: list[Callable[..., Any]] = []

    def _peer(self, t: int) -> FakePeer:
        return FakePeer(t, f"instance-{t}", f"10.0.1.{t}", self.address(t), leader=t == self.leader_token)

    def _leader(self) -> FakeLeader:
        t = self.leader_token
        if t is None:
            return FakeLeader(None, None, None, None, False, None)
        return FakeLeader(t, f"instance-{t}", f"10.0.1.{t}", self.address(t), t == self.token)

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

    async def set_leader(self, token: int | None) -> None:
        self.leader_token = token
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
