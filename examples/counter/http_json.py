"""The counter's HTTP JSON: answers, the 503s a client retries, and checks of a request's body."""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

from aiohttp import web

_dumps = functools.partial(json.dumps, default=str)


def json_response(body: Any, status: int = 200, **headers: str) -> web.Response:
    return web.json_response(body, status=status, dumps=_dumps, headers=headers or None)


def unavailable(error: str, **extra: Any) -> web.Response:
    # Retry-After: every 503 here is transient (a sync, a failover, a peer coming back).
    return json_response({"error": error, **extra}, status=503, **{"Retry-After": "1"})


def peer_json(peer: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(peer) and not isinstance(peer, type):
        return dataclasses.asdict(peer)
    if hasattr(peer, "model_dump"):
        return peer.model_dump()
    if isinstance(peer, dict):
        return dict(peer)
    fields = ("token_id", "instance_id", "overlay_ip", "address", "healthy", "connection", "leader")
    return {f: getattr(peer, f) for f in fields if hasattr(peer, f)}


def int_field(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    # bool is an int subclass; "true" as a count is a client bug, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise web.HTTPBadRequest(text=_dumps({"error": f"{key!r} must be a non-negative integer"}),
                                 content_type="application/json")
    return value


async def read_json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=_dumps({"error": "expected a JSON object"}),
                                 content_type="application/json")
    return body
