"""A stand-in for one node's mesh agent API (/v1/status, /v1/peers, /v1/leader, /v1/events) on loopback,
so the examples' command lines run against the real dstack_p2p SDK.

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
                      "lastProcessedBlock": 10, "lag": 0, "fromCache": False, "lastError": None},
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
        if t is None:
            return {"tokenId": None, "instanceId": None, "overlayIp": None, "address": None,
                    "isSelf": False, "reachable": None}
        return {"tokenId": t, "instanceId": f"inst{t}", "overlayIp": overlay_ip(t), "address": overlay_ip(t),
                "isSelf": t == self.token, "reachable": None if t == self.token else True}

    def set_leader(self, token: int | None) -> None:
        self.leader_token = token
        self._push("peers", self.peers())
        self._push("leader", self.leader())

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
