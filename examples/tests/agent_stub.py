"""A stand-in for one node's mesh agent API (/v1/status, /v1/peers, /v1/leader, /v1/events, /v1/health) on
loopback, so the examples' command lines run against the real dstack_p2p SDK.

Overlay IPs are in 127.0.1.0/24 rather than 10.0.1.0/24: on Linux the whole 127/8 is loopback, so each
"node" gets its own address on this machine and the examples connect to their peers' overlay IPs as
they would on the mesh, without a packet leaving the host.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def overlay_ip(token: int) -> str:
    return f"127.0.1.{token}"


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
        return {
            "version": "0.1.0", "mode": "wireguard", "backend": "userspace",
            "node": {"instanceId": f"inst{self.token}", "appId": "0x" + "11" * 20, "tokenId": self.token,
                     "overlayIp": overlay_ip(self.token), "wgPublicKey": None, "interface": "dsm0",
                     "listenPort": 51820, "endpoint": None, "gatewayUrl": None, "registered": True,
                     "registrationError": None},
            "chain": {"contract": CONTRACT, "chainId": 31337, "rpcUrl": "http://127.0.0.1:8545", "head": 10,
                      "lastProcessedBlock": 10, "lag": 0, "fromCache": False, "lastError": None,
                      # Loopback stands in for the overlay: node N is 127.0.1.N.
                      "prefix": "127.0.0.0/8"},
            "uptimeSecs": 1, "peersConfigured": len(self.tokens) - 1, "peersHealthy": len(self.tokens) - 1,
        }

    def peers(self) -> list[dict[str, Any]]:
        return [{
            "tokenId": t, "instanceId": f"inst{t}", "overlayIp": overlay_ip(t), "wgPublicKey": None,
            "endpoint": None, "gatewayUrl": None, "connection": "wireguard", "path": "direct", "relayUrl": None,
            "address": overlay_ip(t), "healthy": True, "latestHandshake": None, "rxBytes": 0, "txBytes": 0,
            "leader": t == self.leader_token,
        } for t in self.tokens if t != self.token]

    def leader(self) -> dict[str, Any]:
        t = self.leader_token
        view = {"term": self.term, "state": "current", "ageMs": 50, "leaseMs": None, "healthy": self.healthy(),
                "reason": None}
        if t is None:
            return {"tokenId": None, "instanceId": None, "overlayIp": None, "address": None,
                    "isSelf": False, "reachable": None, **view}
        is_self = t == self.token and self.lease and self.healthy()
        if is_self:
            view["leaseMs"] = 2000
        elif t == self.token:
            view["reason"] = self.reason or "unhealthy: the application reports itself unhealthy"
        return {"tokenId": t, "instanceId": f"inst{t}", "overlayIp": overlay_ip(t), "address": overlay_ip(t),
                "isSelf": is_self, "reachable": None if t == self.token else True, **view}

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
