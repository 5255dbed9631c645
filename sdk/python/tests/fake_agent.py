"""A stand-in for the agent's API: a real HTTP/1.1 server on a unix socket (or loopback TCP), written on raw
asyncio streams so the SDK's transport, chunked streaming and reconnection are exercised for real.

Run it by hand to smoke-test the live scripts:

    python tests/fake_agent.py /tmp/agent.sock [--registration-error TEXT] &
    export DSTACK_MESH_API=/tmp/agent.sock
    python tests/live/register_and_list.py --contract 0x5FbDB2315678afecb367f032d93F642f64180aa3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: What the agent's API serves: ``GET /v1/status``, ``/v1/peers`` and ``/v1/leader`` of node 1 of a three-seat
#: cluster that seat 2 leads, and other views of the leader. Written from the agent's own types by
#: crates/mesh-api/tests/snapshot.rs, and shared with the TypeScript SDK's and the examples' stand-ins: every
#: body this agent serves is a copy of it, adjusted, so that a field the agent renames or adds shows here.
SNAPSHOT_FILE = Path(__file__).resolve().parents[2] / "fixtures" / "snapshot.json"
SNAPSHOT: dict[str, Any] = json.loads(SNAPSHOT_FILE.read_text())

#: The fixture's contract as a user gives it, checksummed; the agent serves it in lower case.
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
assert SNAPSHOT["status"]["chain"]["contract"] == CONTRACT.lower(), SNAPSHOT_FILE


def snapshot(name: str) -> Any:
    """A copy of one body of the fixture (``status``, ``peers``, ``leader``, ``leaderSelf``,
    ``leaderHandingOff``, ``leaderUnknown``), to change at will."""
    return copy.deepcopy(SNAPSHOT[name])


def status_json() -> dict[str, Any]:
    """Node 1's status: seat 1, registered, following the chain."""
    return dict(snapshot("status"))


def _seat(body: dict[str, Any], token_id: int) -> dict[str, Any]:
    """``body`` (about seat 2) made about seat ``token_id``: who it is and where it is reached."""
    ip = f"10.0.1.{token_id}"
    body.update(tokenId=token_id, instanceId=f"inst{token_id}", overlayIp=ip, address=ip)
    return body


def peer_json(
    token_id: int, *, address: str | None = "", leader: bool = False, **extra: Any
) -> dict[str, Any]:
    """A peer over its tunnel, directly; ``address=None`` makes it unreachable, a URL puts it behind its
    gateway; ``extra`` overrides any field. Seat 2 of the fixture, moved to seat ``token_id``."""
    peer = _seat(snapshot("peers")[0], token_id)
    endpoint = f"192.0.2.{token_id}:51820"
    peer.update(endpoint=endpoint, candidates=[{**c, "address": endpoint} for c in peer["candidates"]])
    if address is None:
        peer.update(address=None, connection="unreachable", healthy=False)
    elif address != "":
        peer.update(address=address, connection="tls-gateway")
    peer["leader"] = leader
    peer.update(extra)
    return peer


def leader_json(
    token_id: int | None, *, is_self: bool = False, term: int | None = None, **extra: Any
) -> dict[str, Any]:
    """The leader as this agent serves it, with a current view; ``term`` defaults to the seat's number (0
    with no leader), ``extra`` overrides any field."""
    lead: dict[str, Any]
    if token_id is None:
        # No leader elected; the view current all the same, as after a leader left.
        lead = snapshot("leaderUnknown")
        lead.update(state="current", ageMs=SNAPSHOT["leader"]["ageMs"])
    else:
        lead = _seat(snapshot("leaderSelf" if is_self else "leader"), token_id)
    lead["term"] = term if term is not None else (token_id or 0)
    lead.update(extra)
    return lead


#: The fields of ``/v1/leader`` an agent older than leases and terms does not send.
LEADER_LEASE_FIELDS = ("term", "state", "ageMs", "leaseMs", "healthy", "reason")

#: What the agent refuses in a health report's reason.
MAX_REASON = 200


def _event(name: str, value: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(value)}\n\n".encode()


class FakeAgent:
    """The API's state is plain attributes; ``set_peers``/``set_leader`` also push events to watchers."""

    def __init__(self, socket_path: str | None = None) -> None:
        self.socket_path = socket_path
        self.url: str | None = None
        self.status: dict[str, Any] = status_json()
        self.peers: list[dict[str, Any]] = [peer_json(2), peer_json(3)]
        self.leader: dict[str, Any] = leader_json(2)
        #: The application's last health report as the agent holds it: {healthy, reason, ttlSecs}.
        self.app_report: dict[str, Any] | None = None
        #: The agent's own check, as /v1/health shows it ({kind, healthy, reason}), or None.
        self.check: dict[str, Any] | None = None
        #: The bodies of the POST /v1/health requests, parsed, in order.
        self.health_posts: list[Any] = []
        #: Refuse POST /v1/health as an agent older than it does (405, "read-only").
        self.read_only = False
        #: Paths answered with (status, error text) instead of their content.
        self.errors: dict[str, tuple[int, str]] = {}
        #: Paths answered 200 with this JSON instead of their content (for replies the SDK must refuse).
        self.bodies: dict[str, Any] = {}
        #: Called before answering /v1/status with the number of status requests so far.
        self.on_status: Callable[[int], None] | None = None
        #: Write each event in two chunks cut in the middle of a line, as a network may deliver it.
        self.split_events = False
        self.requests: list[str] = []
        self.events_connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._watchers: set[asyncio.Queue[bytes | None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._port = 0

    @property
    def api(self) -> str:
        return self.socket_path if self.socket_path is not None else str(self.url)

    async def start(self) -> FakeAgent:
        if self.socket_path is not None:
            self._server = await asyncio.start_unix_server(self._serve, path=self.socket_path)
        else:
            # Same port after a restart, as a restarted agent keeps its address.
            self._server = await asyncio.start_server(self._serve, host="127.0.0.1", port=self._port)
            self._port = self._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{self._port}"
        return self

    async def stop(self, *, graceful: bool = True) -> None:
        """Stops serving. ``graceful`` ends event streams cleanly; otherwise connections are cut."""
        if self._server is not None:
            self._server.close()
        streaming = bool(self._watchers)
        for q in list(self._watchers):
            q.put_nowait(None)
        if not graceful:
            for w in list(self._writers):
                w.transport.abort()
        if streaming:
            # Time for the streams' last chunk to go out.
            await asyncio.sleep(0.05)
        for w in list(self._writers):
            w.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)

    async def restart(self, *, down: float = 0.3, graceful: bool = True) -> None:
        await self.stop(graceful=graceful)
        await asyncio.sleep(down)
        await self.start()

    def set_peers(self, peers: list[dict[str, Any]]) -> None:
        self.peers = peers
        self.push(_event("peers", peers))

    def set_leader(self, leader: dict[str, Any]) -> None:
        self.leader = leader
        self.push(_event("leader", leader))

    def health_json(self) -> dict[str, Any]:
        reasons: list[str] = []
        app = None
        if self.app_report is not None:
            r = self.app_report
            ttl = r.get("ttlSecs")
            app = {
                "healthy": r["healthy"],
                "reason": r.get("reason"),
                "expiresInMs": int(ttl * 1000) if ttl is not None else None,
            }
            if not r["healthy"]:
                reasons.append(
                    f"the application reports itself unhealthy: {r.get('reason') or 'no reason given'}"
                )
        if self.check is not None and not self.check["healthy"]:
            reasons.append(f"the agent's check fails: {self.check['reason']}")
        return {"healthy": not reasons, "reasons": reasons, "app": app, "check": self.check}

    def _health_report(self, raw: bytes) -> tuple[int, Any]:
        """POST /v1/health as the agent judges it: 200 with the health, or 400 saying what is wrong."""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.health_posts.append(body)
        shape = 'the body must be a JSON object like {"healthy": false, "reason": "...", "ttlSecs": 10}'
        if not isinstance(body, dict) or not isinstance(body.get("healthy"), bool):
            return 400, {"error": shape}
        unknown = set(body) - {"healthy", "reason", "ttlSecs"}
        if unknown:
            return 400, {"error": f"{shape} (unknown field {sorted(unknown)[0]!r})"}
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            return 400, {"error": f'"reason" must be a string of at most {MAX_REASON} characters'}
        ttl = body.get("ttlSecs")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0):
            return 400, {"error": f'"ttlSecs" is {ttl}: give a number of seconds above 0'}
        self.app_report = body
        return 200, self.health_json()

    def push(self, raw: bytes) -> None:
        """Sends raw bytes to every event stream (for comments, unknown events and the like)."""
        for q in self._watchers:
            q.put_nowait(raw)

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Keep-alive, as the agent's hyper server does, so that the client's pool reuses connections.
        self._writers.add(writer)
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                head = request.decode().split("\r\n")
                method, path, _ = head[0].split(" ", 2)
                length = next(
                    (int(h.split(":", 1)[1]) for h in head[1:] if h.lower().startswith("content-length:")), 0
                )
                body = await reader.readexactly(length) if length else b""
                self.requests.append(path if method == "GET" else f"{method} {path}")
                if path in self.bodies and not (method == "POST" and self.read_only):
                    await self._reply(writer, 200, self.bodies[path])
                elif path == "/v1/health" and method == "POST" and not self.read_only:
                    if path in self.errors:
                        code, text = self.errors[path]
                        await self._reply(writer, code, {"error": text})
                    else:
                        await self._reply(writer, *self._health_report(body))
                elif path == "/v1/health" and method != "GET" and not self.read_only:
                    await self._reply(
                        writer,
                        405,
                        {"error": "/v1/health takes GET (the node's health) or POST (the application's report)"},
                    )
                elif method != "GET":
                    await self._reply(writer, 405, {"error": "the agent API is read-only: use GET"})
                elif path in self.errors:
                    code, text = self.errors[path]
                    await self._reply(writer, code, {"error": text})
                elif path == "/v1/status":
                    if self.on_status is not None:
                        self.on_status(self.requests.count("/v1/status"))
                    await self._reply(writer, 200, self.status)
                elif path == "/v1/peers":
                    await self._reply(writer, 200, self.peers)
                elif path == "/v1/leader":
                    await self._reply(writer, 200, self.leader)
                elif path == "/v1/health" and not self.read_only:
                    await self._reply(writer, 200, self.health_json())
                elif path == "/v1/events":
                    await self._stream(reader, writer)
                    return
                else:
                    await self._reply(writer, 404, {"error": f"no such path {path}"})
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, code: int, body: Any) -> None:
        data = json.dumps(body, indent=2).encode()
        head = f"HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
        writer.write(head.encode() + data)
        await writer.drain()

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.events_connections += 1
        q: asyncio.Queue[bytes | None] = asyncio.Queue()
        q.put_nowait(_event("peers", self.peers))
        q.put_nowait(_event("leader", self.leader))
        self._watchers.add(q)
        # The client going away shows as end of file on the request side.
        gone = asyncio.ensure_future(reader.read())
        try:
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            while True:
                got = asyncio.ensure_future(q.get())
                await asyncio.wait({got, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not got.done():
                    got.cancel()
                    return
                raw = got.result()
                if raw is None:
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    return
                pieces = [raw[: len(raw) // 2 + 1], raw[len(raw) // 2 + 1 :]] if self.split_events else [raw]
                for piece in pieces:
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                    if self.split_events:
                        await asyncio.sleep(0.01)
        finally:
            self._watchers.discard(q)
            gone.cancel()


class ThreadedAgent:
    """A FakeAgent on its own loop in a thread, for the blocking client's tests."""

    def __init__(self, socket_path: str) -> None:
        self.agent = FakeAgent(socket_path)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FakeAgent:
        self._thread.start()
        self.run(self.agent.start())
        return self.agent

    def __exit__(self, *exc: object) -> None:
        self.run(self.agent.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(5)

    def call(self, fn: Callable[[], object]) -> None:
        async def go() -> None:
            fn()

        self.run(go())


async def _main(path: str, registration_error: str | None) -> None:
    agent = FakeAgent(path)
    if registration_error is not None:
        agent.status["node"].update(registered=False, registrationError=registration_error)
    await agent.start()
    print(f"serving on {agent.api}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await agent.stop()


@contextlib.asynccontextmanager
async def running(coro: Coroutine[Any, Any, Any]) -> AsyncIterator[asyncio.Task[Any]]:
    """Runs ``coro`` (a monitor, say) as a task while the ``async with`` body runs, and cancels it after."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()


def wait_for(cond: Callable[[], bool]) -> Awaitable[None]:
    """Polls ``cond`` until true (bounded by the caller's wait_for)."""

    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    return poll()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="serve a fake agent API on a unix socket")
    parser.add_argument("socket", nargs="?", default="/tmp/dstack-p2p-fake.sock")
    parser.add_argument("--registration-error", help="serve a node that cannot register, for this reason")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.socket, args.registration_error))
