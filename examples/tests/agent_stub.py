"""A stand-in for one node's mesh agent API (/v1/status, /v1/peers, /v1/leader, /v1/events, /v1/health) on
loopback, so the examples' command lines run against the real dstack_p2p SDK.

Overlay IPs are in 127.0.1.0/24 rather than 10.0.1.0/24: on Linux the whole 127/8 is loopback, so each
"node" gets its own address on this machine and the examples connect to their peers' overlay IPs as
they would on the mesh, without a packet leaving the host.

Every answer is a copy of what the agent's own types serve (sdk/fixtures/snapshot.json, written by
crates/mesh-api/tests/snapshot.rs and shared with the SDKs' stand-ins), adjusted to this node: a field the
agent renames or adds shows here too.
"""
from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

from aiohttp import web

SNAPSHOT_FILE = Path(__file__).resolve().parents[2] / "sdk" / "fixtures" / "snapshot.json"
SNAPSHOT: dict[str, Any] = json.loads(SNAPSHOT_FILE.read_text())
CONTRACT: str = SNAPSHOT["status"]["chain"]["contract"]


def snapshot(name: str) -> Any:
    """A copy of one body of the fixture (`status`, `peers`, `leader`, `leaderSelf`, `leaderUnknown`, ...)."""
    return copy.deepcopy(SNAPSHOT[name])


def overlay_ip(token: int) -> str:
    return f"127.0.1.{token}"


def seat(body: dict[str, Any], token: int) -> dict[str, Any]:
    """`body` of the fixture made about seat `token` (who it is, where it is reached) of this loopback mesh."""
    body.update(tokenId=token, instanceId=f"inst{token}", overlayIp=overlay_ip(token), address=overlay_ip(token))
    return body


class FakeAgent:
    def __init__(self, token: int, tokens: list[int], leader: int | None) -> None:
        self.token = token
        self.tokens = list(tokens)
        self.leader_token = leader
        # The contract's term: one leader change (the election) made the first leader.
        self.term = 1 if leader is not None else 0
        # Whether this node's lease holds, when it is the seat named leader.
        self.lease = True
        self.reason: str | None = None
        #: The bodies of POST /v1/health, in order.
        self.health_reports: list[Any] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Queue[bytes | None]] = set()

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = snapshot("status")
        status["node"].update(instanceId=f"inst{self.token}", tokenId=self.token, overlayIp=overlay_ip(self.token),
                              endpoint=None)
        others = len(self.tokens) - 1
        # Loopback stands in for the overlay: node N is 127.0.1.N.
        status["chain"]["prefix"] = "127.0.0.0/8"
        status.update(peersConfigured=others, peersHealthy=others)
        return status

    def peers(self) -> list[dict[str, Any]]:
        # Seat 2 of the fixture (over its tunnel, directly, healthy) as every other seat.
        peers = []
        for t in self.tokens:
            if t != self.token:
                peer = seat(snapshot("peers")[0], t)
                peer.update(endpoint=None, candidates=[], leader=t == self.leader_token)
                peers.append(peer)
        return peers

    def leader(self) -> dict[str, Any]:
        t = self.leader_token
        if t is None:
            lead = snapshot("leaderUnknown")
        else:
            is_self = t == self.token and self.lease and self.healthy()
            # Seat 2 as node 1 sees it, or as it sees itself, holding the lease.
            lead = seat(snapshot("leaderSelf" if is_self else "leader"), t)
            lead.update(isSelf=is_self, reachable=None if t == self.token else True,
                        leaseMs=2000 if is_self else None)
            if t == self.token and not is_self:
                lead["reason"] = self.reason or "unhealthy: the application reports itself unhealthy"
        lead.update(term=self.term, state="current", ageMs=50, healthy=self.healthy())
        return lead

    def healthy(self) -> bool:
        # The last report, without its ttl: these tests never outlive one.
        return not self.health_reports or bool(self.health_reports[-1].get("healthy"))

    def health(self) -> dict[str, Any]:
        last = self.health_reports[-1] if self.health_reports else None
        app = None if last is None else {"healthy": bool(last.get("healthy")), "reason": last.get("reason"),
                                         "expiresInMs": None}
        reasons = [] if self.healthy() else [f"the application reports itself unhealthy: {app and app['reason']}"]
        return {"healthy": self.healthy(), "reasons": reasons, "app": app, "check": None}

    def set_leader(self, token: int | None, *, lease: bool = True, reason: str | None = None) -> None:
        """The contract names `token` (a new term if it changed); `lease`: whether this node's holds."""
        if token != self.leader_token:
            self.term += 1
        self.leader_token, self.lease, self.reason = token, lease, reason
        self._push("peers", self.peers())
        self._push("leader", self.leader())

    async def _report(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("healthy"), bool):
            return web.json_response({"error": "the body must be a JSON object like {\"healthy\": false}"},
                                     status=400)
        was = self.leader()
        self.health_reports.append(body)
        if self.leader() != was:
            self._push("leader", self.leader())
        return web.json_response(self.health())

    def _push(self, name: str, value: Any) -> None:
        for q in self._streams:
            q.put_nowait(f"event: {name}\ndata: {json.dumps(value)}\n\n".encode())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        q: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._streams.add(q)
        try:
            # As the agent does: each kind's current value first, then changes.
            await response.write(f"event: peers\ndata: {json.dumps(self.peers())}\n\n".encode())
            await response.write(f"event: leader\ndata: {json.dumps(self.leader())}\n\n".encode())
            while (chunk := await q.get()) is not None:
                await response.write(chunk)
        except ConnectionError:
            pass  # the app went away (killed, or stopping): what a real agent shrugs off too
        finally:
            self._streams.discard(q)
        return response

    async def start(self) -> FakeAgent:
        app = web.Application()
        def serve(make: Any) -> Any:
            async def handler(request: web.Request) -> web.Response:
                return web.json_response(make())
            return handler

        app.add_routes([
            web.get("/v1/status", serve(self.status)),
            web.get("/v1/peers", serve(self.peers)),
            web.get("/v1/leader", serve(self.leader)),
            web.get("/v1/health", serve(self.health)),
            web.post("/v1/health", self._report),
            web.get("/v1/events", self._events),
        ])
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        for q in self._streams:
            q.put_nowait(None)
        if self._runner:
            await self._runner.cleanup()
