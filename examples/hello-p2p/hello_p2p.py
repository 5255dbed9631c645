#!/usr/bin/env python3
"""Hello, peers: the smallest app on a dstack-mesh cluster.

Each node serves who it is (GET /info) and, on GET /hello, calls every peer's /info over the mesh,
so one curl shows which peers this node can reach, by which address, and how fast.

    python hello_p2p.py --listen 0.0.0.0:8081 [--api SOCKET_OR_URL] [--peer-port 8081]
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import logging
import signal
import sys
import time
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web

log = logging.getLogger("hello-p2p")

_dumps = functools.partial(json.dumps, default=str)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=_dumps)


def peer_json(peer: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(peer) and not isinstance(peer, type):
        return dataclasses.asdict(peer)
    fields = ("token_id", "instance_id", "overlay_ip", "address", "healthy", "connection", "leader")
    return {f: getattr(peer, f) for f in fields if hasattr(peer, f)}


def peer_base(address: str, peer_port: int) -> str:
    """Base URL for a peer's address: an overlay IP gets the app's port; a gateway URL is used as is,
    since the gateway already maps its host name to the app's port inside the peer's CVM."""
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    return f"http://{address}:{peer_port}"


class HelloNode:
    def __init__(self, sdk: Any, peer_port: int, *, timeout: float = 2.0) -> None:
        self.sdk = sdk
        self.peer_port = peer_port
        self.timeout = timeout
        self._session: ClientSession | None = None

    async def start(self) -> None:
        self._session = ClientSession(timeout=ClientTimeout(total=self.timeout))

    async def close(self) -> None:
        if self._session:
            await self._session.close()

    def make_app(self) -> web.Application:
        app = web.Application()
        app.add_routes([
            web.get("/info", self.handle_info),
            web.get("/peers", self.handle_peers),
            web.get("/hello", self.handle_hello),
        ])
        return app

    async def handle_info(self, request: web.Request) -> web.Response:
        try:
            node = (await self.sdk.status()).node
        except Exception as e:
            return json_response({"error": f"the mesh agent did not answer: {e}"}, status=503)
        # camelCase, as the agent's API and this app's /hello name the same things.
        return json_response({
            "tokenId": node.token_id,
            "instanceId": node.instance_id,
            "overlayIp": node.overlay_ip,
            "message": f"hello from node {node.token_id}",
        })

    async def handle_peers(self, request: web.Request) -> web.Response:
        try:
            peers = await self.sdk.peers()
        except Exception as e:
            return json_response({"error": f"the mesh agent did not answer: {e}"}, status=503)
        return json_response([peer_json(p) for p in peers])

    async def _greet(self, peer: Any) -> dict[str, Any]:
        address = peer.address
        result: dict[str, Any] = {"tokenId": peer.token_id, "address": address}
        if not address:
            # The agent has neither a tunnel nor a gateway URL for it.
            return {**result, "ok": False, "error": "no address: the peer is unreachable", "ms": 0}
        url = peer_base(address, self.peer_port) + "/info"
        assert self._session is not None
        started = time.monotonic()
        try:
            async with self._session.get(url) as r:
                text = await r.text()
                status = r.status
        except (TimeoutError, ClientError, OSError) as e:
            ms = round((time.monotonic() - started) * 1000, 1)
            error = f"{type(e).__name__}: {e}" if str(e) else f"{type(e).__name__} after {self.timeout:g} s"
            return {**result, "ok": False, "error": error, "ms": ms}
        ms = round((time.monotonic() - started) * 1000, 1)
        try:
            reply: Any = json.loads(text)
        except ValueError:
            reply = text[:200]
        if status != 200:
            return {**result, "ok": False, "error": f"HTTP {status}", "reply": reply, "ms": ms}
        return {**result, "ok": True, "reply": reply, "ms": ms}

    async def handle_hello(self, request: web.Request) -> web.Response:
        try:
            peers = await self.sdk.peers()
        except Exception as e:
            return json_response({"error": f"the mesh agent did not answer: {e}"}, status=503)
        results = await asyncio.gather(*(self._greet(p) for p in peers))
        for r in results:
            log.info("hello to node %s at %s: %s (%.1f ms)", r["tokenId"], r["address"],
                     "ok" if r["ok"] else r["error"], r["ms"])
        return json_response(list(results))


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def amain(args: argparse.Namespace) -> int:
    from dstack_p2p import DStackP2PSDK  # here, so tests need not install it

    host, port = args.listen
    try:
        sdk = DStackP2PSDK(api=args.api)
    except ValueError as e:
        log.error("%s", e)
        return 2
    node = HelloNode(sdk, args.peer_port, timeout=args.timeout)
    await node.start()
    runner = web.AppRunner(node.make_app(), access_log=None)
    try:
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        log.info("listening on %s:%s", host, runner.addresses[0][1] if runner.addresses else port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
        return 0
    finally:
        await runner.cleanup()
        await node.close()
        await sdk.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Say hello to every peer of a dstack-mesh cluster.")
    p.add_argument("--listen", type=parse_hostport, default=("0.0.0.0", 8081), metavar="HOST:PORT",
                   help="where to serve the HTTP API (default 0.0.0.0:8081)")
    p.add_argument("--api", default=None, metavar="SOCKET_OR_URL",
                   help="the mesh agent's API: a unix socket path or http://127.0.0.1:PORT "
                        "(default: $DSTACK_MESH_API)")
    p.add_argument("--peer-port", type=int, default=8081,
                   help="the port the other nodes' hello-p2p listens on (default 8081)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each peer (default 2)")
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request to the agent at INFO: one line per /peers call would drown ours.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
